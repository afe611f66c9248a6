//! The node name for the plugin: `<conf dir>/iotlan.d/node-name`.
//!
//! Leases record the node that holds them, and the Kubernetes node name is the one to record
//! (kubelet may run with `--hostname-override`, cloned Raspberry Pi images share a host name). The
//! plugin runs on the host with no downward API, so the agent writes the name it is given
//! (`--node-name`, else `NODE_NAME`, which the DaemonSet sets from `spec.nodeName`) where the plugin
//! reads it first ([`iotlan_ipam::node`]). Written atomically (0644), and only when it differs.

use std::path::{Path, PathBuf};

use super::files::{self, FileError};

/// The environment variable the DaemonSet sets from the downward API.
pub const ENV: &str = "NODE_NAME";

#[derive(Debug, thiserror::Error)]
pub enum NodeNameError {
    #[error(
        "node name {name:?} (from {source_of}) is not a Kubernetes node name (a DNS subdomain)"
    )]
    Invalid {
        name: String,
        source_of: &'static str,
    },
    #[error(transparent)]
    File(#[from] FileError),
}

/// The node name to write: `flag` (from `--node-name`), else `$NODE_NAME`; `None` when neither is
/// set (the plugin then falls back to `MULTUS_NODE_NAME` or the host name).
pub fn choose(flag: Option<&str>) -> Result<Option<String>, NodeNameError> {
    let (name, source_of) = match flag {
        Some(f) => (f.to_string(), "--node-name"),
        None => match std::env::var(ENV) {
            Ok(v) if !v.trim().is_empty() => (v.trim().to_string(), ENV),
            _ => return Ok(None),
        },
    };
    if !iotlan_ipam::node::valid(&name) {
        return Err(NodeNameError::Invalid { name, source_of });
    }
    Ok(Some(name))
}

/// Where the plugin reads it, under the conf dir `conf_dir` (a path in this container's view).
pub fn path(conf_dir: &Path) -> PathBuf {
    conf_dir
        .join(iotlan_ipam::paths::AGENT_SUBDIR)
        .join(iotlan_ipam::paths::NODE_NAME_FILE)
}

/// Writes `name` to `<conf_dir>/iotlan.d/node-name` unless it already holds it. Returns whether it
/// wrote.
pub fn write(conf_dir: &Path, name: &str) -> Result<bool, NodeNameError> {
    // The dir also holds the kubeconfig: kept private (0700), as the kubeconfig's writer keeps it.
    Ok(files::replace_if_changed(
        &path(conf_dir),
        format!("{name}\n").as_bytes(),
        0o644,
        0o700,
    )?)
}
