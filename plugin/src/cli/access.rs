//! Where the operator CLI runs, and so which kubeconfig and state dir it uses, the way every
//! Kubernetes tool decides: `--kubeconfig` first; in a pod, the pod's ServiceAccount (in-cluster);
//! on a node (the node agent's kubeconfig exists), the store's own default; elsewhere (a
//! workstation) `$KUBECONFIG`, then `~/.kube/config`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use iotlan_ipam::paths::{
    KUBECONFIGS as NODE_KUBECONFIGS, POD_STATE_DIR, SERVICEACCOUNT_DIR as SA_DIR,
};

/// The kubeconfig a kubernetes store is read through.
#[derive(Debug)]
pub enum Kubeconfig {
    /// `--kubeconfig`, `$KUBECONFIG` or `~/.kube/config`.
    File(PathBuf),
    /// The pod's ServiceAccount, as a kubeconfig in a private temp file (removed on drop) that
    /// refers to the token file, so nothing secret is copied.
    InCluster(tempfile_like::TempFile),
    /// On a node: the store's own setting or default (the node agent's kubeconfig).
    StoreDefault,
}

impl Kubeconfig {
    /// The file to put in the store's `kubeconfig`, or None to leave the config's own.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Kubeconfig::File(p) => Some(p),
            Kubeconfig::InCluster(t) => Some(t.path()),
            Kubeconfig::StoreDefault => None,
        }
    }
}

/// Whether this process runs in a Kubernetes pod with a ServiceAccount token.
pub fn in_pod() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && Path::new(SA_DIR).join("token").is_file()
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

/// Decides the kubeconfig (see the module doc).
pub fn kubeconfig(flag: Option<&Path>) -> Result<Kubeconfig> {
    if let Some(p) = flag {
        // The store takes absolute paths only; `--kubeconfig=./kc` means the one here.
        return std::path::absolute(p)
            .map(Kubeconfig::File)
            .map_err(|e| Error::io(format!("--kubeconfig {}", p.display()), e));
    }
    if in_pod() {
        return in_cluster().map(Kubeconfig::InCluster);
    }
    if NODE_KUBECONFIGS.iter().any(|p| Path::new(p).exists()) {
        return Ok(Kubeconfig::StoreDefault);
    }
    user_kubeconfig(
        std::env::var_os("KUBECONFIG").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
    .map(Kubeconfig::File)
    .ok_or_else(|| {
        Error::InvalidConfig(
            "no kubeconfig: not in a pod, not on a node with the iotlan agent's kubeconfig, and \
             neither $KUBECONFIG nor ~/.kube/config exists (give --kubeconfig)"
                .into(),
        )
    })
}

/// The first existing file of `$KUBECONFIG` (a colon-separated list), else `~/.kube/config`.
fn user_kubeconfig(
    kubeconfig: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    if let Some(list) = kubeconfig.filter(|v| !v.is_empty()) {
        return std::env::split_paths(list)
            .find(|p| p.is_file())
            .and_then(|p| std::path::absolute(p).ok());
    }
    home.map(|h| Path::new(h).join(".kube/config"))
        .filter(|p| p.is_file())
}

fn in_cluster() -> Result<tempfile_like::TempFile> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").unwrap_or_default();
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let namespace = std::fs::read_to_string(Path::new(SA_DIR).join("namespace"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let text = in_cluster_kubeconfig(&format!("https://{host}:{port}"), &namespace);
    tempfile_like::TempFile::create("iotlan-incluster.kubeconfig", text.as_bytes())
}

/// A kubeconfig for the pod's ServiceAccount (JSON is YAML).
fn in_cluster_kubeconfig(server: &str, namespace: &str) -> String {
    let mut context = serde_json::json!({ "cluster": "in-cluster", "user": "serviceaccount" });
    if !namespace.is_empty() {
        context["namespace"] = namespace.into();
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "in-cluster", "cluster": {
            "server": server, "certificate-authority": format!("{SA_DIR}/ca.crt") } }],
        "users": [{ "name": "serviceaccount", "user": { "tokenFile": format!("{SA_DIR}/token") } }],
        "contexts": [{ "name": "in-cluster", "context": context }],
        "current-context": "in-cluster",
    })
    .to_string()
}

/// A private (0600) temp file, removed on drop. (The `tempfile` crate is a dev-dependency only.)
pub mod tempfile_like {
    use super::*;

    #[derive(Debug)]
    pub struct TempFile(PathBuf);

    impl TempFile {
        pub fn create(name: &str, contents: &[u8]) -> Result<TempFile> {
            let path = std::env::temp_dir().join(format!("{}.{name}", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
            let file = TempFile(path);
            f.write_all(contents)
                .map_err(|e| Error::io(format!("cannot write {}", file.0.display()), e))?;
            Ok(file)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn kubeconfig_env_first_existing_entry_then_home() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&b, "x").expect("write");
        let list = std::env::join_paths([&a, &b]).expect("join");
        assert_eq!(user_kubeconfig(Some(&list), None), Some(b.clone()));
        // An empty KUBECONFIG is unset, as kubectl treats it.
        std::fs::create_dir_all(dir.path().join(".kube")).expect("mkdir");
        std::fs::write(dir.path().join(".kube/config"), "x").expect("write");
        assert_eq!(
            user_kubeconfig(Some(OsStr::new("")), Some(dir.path().as_os_str())),
            Some(dir.path().join(".kube/config"))
        );
        assert_eq!(
            user_kubeconfig(None, Some(OsStr::new("/nonexistent"))),
            None
        );
    }

    #[test]
    fn in_cluster_kubeconfig_refers_to_the_token_file() {
        let v: serde_json::Value = serde_json::from_str(&in_cluster_kubeconfig(
            "https://[fd00::1]:443",
            "iotlan-system",
        ))
        .expect("json");
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://[fd00::1]:443"
        );
        assert_eq!(
            v["users"][0]["user"]["tokenFile"],
            format!("{SA_DIR}/token")
        );
        assert_eq!(v["contexts"][0]["context"]["namespace"], "iotlan-system");
    }

    #[test]
    fn a_flag_wins() {
        let k = kubeconfig(Some(Path::new("/k"))).expect("flag");
        assert_eq!(k.path(), Some(Path::new("/k")));
    }
}
