//! Where the operator CLI runs, and so which cluster access and state dir it uses, the way every
//! Kubernetes tool decides: `--kubeconfig` first; in a pod, the pod's ServiceAccount
//! ([`kube::Config::incluster`]); on a node (the node agent's kubeconfig exists), the store's own
//! setting or default (the node agent's kubeconfig); elsewhere (a workstation) the user's
//! ([`kube::Config::infer`]: `$KUBECONFIG`, then `~/.kube/config`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use iotlan_ipam::paths::{KUBECONFIGS as NODE_KUBECONFIGS, POD_STATE_DIR, SERVICEACCOUNT_DIR};

/// How a kubernetes store reaches its API server.
#[cfg(feature = "kubernetes")]
#[derive(Debug, Clone)]
pub enum Cluster {
    /// As this configuration says: `--kubeconfig`, the pod's ServiceAccount, or the user's.
    Config(Box<kube::Config>),
    /// On a node: the store's own `kubeconfig`, or its default (the node agent's).
    StoreDefault,
}

/// Whether this process runs in a Kubernetes pod with a ServiceAccount token.
pub fn in_pod() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && Path::new(SERVICEACCOUNT_DIR).join("token").is_file()
}

/// The Kubernetes node this runs on: `NODE_NAME` (the iotlan DaemonSet sets it from the downward
/// API; in a pod the host name is the pod's), else the host name.
pub fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(crate::link::master::hostname)
}

/// The state dir when none is given: the host's, under /host, in the DaemonSet's pod.
pub fn default_state_dir() -> PathBuf {
    if in_pod() && Path::new(POD_STATE_DIR).is_dir() {
        PathBuf::from(POD_STATE_DIR)
    } else {
        PathBuf::from(crate::config::DEFAULT_STATE_DIR)
    }
}

/// Decides how to reach the cluster (see the module doc); `kubeconfig` is `--kubeconfig`.
#[cfg(feature = "kubernetes")]
pub fn cluster(kubeconfig: Option<&Path>) -> Result<Cluster> {
    use kube::config::{KubeConfigOptions, Kubeconfig};

    let unavailable = |why: String| Error::from(iotlan_ipam::Error::Unavailable { reason: why });
    if kubeconfig.is_none() && !in_pod() && NODE_KUBECONFIGS.iter().any(|p| Path::new(p).exists()) {
        return Ok(Cluster::StoreDefault);
    }
    if kubeconfig.is_none() && in_pod() {
        return kube::Config::incluster()
            .map(|c| Cluster::Config(Box::new(c)))
            .map_err(|e| unavailable(format!("the pod's ServiceAccount: {e}")));
    }
    // Reading a kubeconfig may run its exec credential plugin: on a runtime of its own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the API client's runtime", e))?;
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| unavailable(format!("--kubeconfig {}: {e}", path.display())))?;
            rt.block_on(kube::Config::from_custom_kubeconfig(
                kc,
                &KubeConfigOptions::default(),
            ))
            .map_err(|e| unavailable(format!("--kubeconfig {}: {e}", path.display())))?
        }
        None => rt.block_on(kube::Config::infer()).map_err(|e| {
            Error::InvalidConfig(format!(
                "no kubeconfig: not in a pod, not on a node with the iotlan agent's kubeconfig, and \
                 none from $KUBECONFIG or ~/.kube/config (give --kubeconfig): {e}"
            ))
        })?,
    };
    Ok(Cluster::Config(Box::new(config)))
}

#[cfg(all(test, feature = "kubernetes"))]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_flag_is_read_as_kube_reads_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kc = dir.path().join("kc");
        std::fs::write(
            &kc,
            r#"{"apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://[fd00::1]:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "iot"}}],
                "current-context": "x"}"#,
        )
        .expect("write");
        let Cluster::Config(c) = cluster(Some(&kc)).expect("read") else {
            panic!("the flag wins");
        };
        assert_eq!(c.cluster_url.to_string(), "https://[fd00::1]:6443/");
        assert_eq!(c.default_namespace, "iot");
        let e = cluster(Some(&dir.path().join("missing"))).expect_err("no such file");
        assert!(e.to_string().contains("--kubeconfig"), "{e}");
    }
}
