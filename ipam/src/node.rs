//! The name of the node this process runs on, as the leases record it.
//!
//! The Kubernetes node name is the identity to record: kubelet may run with `--hostname-override`,
//! and cloned Raspberry Pi images share a host name. The node agent (`iotlan install`) writes the
//! node name it is given (`NODE_NAME`, from the downward API) into [`NODE_NAME_FILE`] beside the
//! plugin's kubeconfig; Multus thick runs delegates with `MULTUS_NODE_NAME` set. The host name is
//! only the fallback (podman, ctr, a node without the agent).

use std::path::Path;

/// The file the node agent writes, in each CNI config dir's `iotlan.d/`.
pub use crate::paths::NODE_NAME_FILE;

/// The `iotlan.d` dirs of kubeadm's and k3s's CNI config dir, where the node agent writes.
pub use crate::paths::AGENT_DIRS;

/// This node's name: the agent's file in the first of `dirs` that has one, else `MULTUS_NODE_NAME`,
/// else the host name.
pub fn local_name(dirs: &[&Path]) -> Option<String> {
    dirs.iter()
        .find_map(|d| read_name(&d.join(NODE_NAME_FILE)))
        .or_else(|| std::env::var("MULTUS_NODE_NAME").ok().filter(|n| valid(n)))
        .or_else(host_name)
}

/// [`local_name`] with the agent's default dirs.
pub fn default_name() -> Option<String> {
    let dirs: Vec<&Path> = AGENT_DIRS.iter().map(Path::new).collect();
    local_name(&dirs)
}

fn read_name(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let name = text.trim();
    if valid(name) {
        Some(name.to_string())
    } else {
        tracing::warn!(path = %path.display(), "ignoring a node-name file that holds no node name");
        None
    }
}

fn host_name() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|n| valid(n))
}

/// The start of the pool identity a node's hostShim address is held under: `iotlan-shim.<node>`.
pub const SHIM_IDENTITY_PREFIX: &str = "iotlan-shim.";

/// The identity a node's hostShim address is held under.
pub fn shim_identity(node: &str) -> String {
    format!("{SHIM_IDENTITY_PREFIX}{node}")
}

/// The node of a hostShim identity (`iotlan-shim.<node>`), or `None` for any other identity.
pub fn shim_node(identity: &str) -> Option<&str> {
    identity
        .strip_prefix(SHIM_IDENTITY_PREFIX)
        .filter(|n| valid(n))
}

/// A Kubernetes node name: a DNS subdomain (at most 253 bytes of lowercase alphanumerics, '-', '.').
pub fn valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_file_wins_over_the_host_name() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::create_dir_all(&agent).unwrap();
        std::fs::write(agent.join(NODE_NAME_FILE), "pi-radio-1\n").unwrap();
        let missing = dir.path().join("missing");
        assert_eq!(
            local_name(&[&missing, &agent]).as_deref(),
            Some("pi-radio-1")
        );
        std::fs::write(agent.join(NODE_NAME_FILE), "Not A Node Name").unwrap();
        // A file that holds no node name is ignored: the fallbacks decide.
        assert_eq!(local_name(&[&agent]), local_name(&[]));
    }

    #[test]
    fn node_names_are_dns_subdomains() {
        assert!(valid("node-1.lan"));
        assert!(!valid(""));
        assert!(!valid("Node"));
        assert!(!valid("-a"));
        assert!(!valid(&"a".repeat(254)));
    }
}
