//! Every default path iotlan uses on a node, in one place: the plugin's state, the CNI dirs of each
//! kind of node, where the node agent writes the plugin's kubeconfig and node name, and what a pod
//! is given by kubelet. The node agent, the plugin, the pool's stores and the operator CLI all read
//! them from here.

/// The plugin's state on a node: the file store's leases (`<dir>/<network>/`), the driver memory,
/// the conflict records, the hostShim records, the kubernetes store's node-local records.
pub const STATE_DIR: &str = "/var/lib/cni/iotlan";

/// kubeadm-style nodes: the CNI binary and config dirs.
pub const KUBEADM_BIN: &str = "/opt/cni/bin";
pub const KUBEADM_CONF: &str = "/etc/cni/net.d";
/// k3s since the October 2024 releases.
pub const K3S_BIN: &str = "/var/lib/rancher/k3s/data/cni";
/// k3s before the October 2024 releases.
pub const K3S_LEGACY_BIN: &str = "/var/lib/rancher/k3s/data/current/bin";
pub const K3S_CONF: &str = "/var/lib/rancher/k3s/agent/etc/cni/net.d";

/// The dir the node agent writes into, in each CNI config dir: the plugin's kubeconfig and the
/// node's name.
pub const AGENT_SUBDIR: &str = "iotlan.d";
/// The `iotlan.d` dirs of kubeadm's and k3s's CNI config dir, where the node agent writes.
pub const AGENT_DIRS: [&str; 2] = [
    "/etc/cni/net.d/iotlan.d",
    "/var/lib/rancher/k3s/agent/etc/cni/net.d/iotlan.d",
];
/// The kubeconfig the node agent writes for the plugin, in an agent dir.
pub const KUBECONFIG_FILE: &str = "iotlan.kubeconfig";
/// The node's Kubernetes name, as the node agent writes it in an agent dir.
pub const NODE_NAME_FILE: &str = "node-name";
/// The plugin's kubeconfigs, in the order they are tried: kubeadm's, then k3s's.
pub const KUBECONFIGS: [&str; 2] = [
    "/etc/cni/net.d/iotlan.d/iotlan.kubeconfig",
    "/var/lib/rancher/k3s/agent/etc/cni/net.d/iotlan.d/iotlan.kubeconfig",
];

/// Where kubelet mounts a pod's ServiceAccount token, CA and namespace.
pub const SERVICEACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Where the node agent's pod mounts the host's file system.
pub const HOST_ROOT: &str = "/host";
/// The host's state dir as the node agent's pod sees it.
pub const POD_STATE_DIR: &str = "/host/var/lib/cni/iotlan";
/// The node agent's health file, touched after every pass.
pub const HEALTH_FILE: &str = "/run/iotlan/healthy";
/// The runtimes' network namespace dirs on the host: podman's, and containerd's and CRI-O's
/// (`/var/run` is a link to `/run` on the host, but not in the agent's view of it).
pub const RUNTIME_NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_files_are_in_the_agent_dirs() {
        for (dir, conf) in AGENT_DIRS.iter().zip([KUBEADM_CONF, K3S_CONF]) {
            assert_eq!(*dir, format!("{conf}/{AGENT_SUBDIR}"));
        }
        for (kc, dir) in KUBECONFIGS.iter().zip(AGENT_DIRS) {
            assert_eq!(*kc, format!("{dir}/{KUBECONFIG_FILE}"));
        }
        assert_eq!(POD_STATE_DIR, format!("{HOST_ROOT}{STATE_DIR}"));
    }
}
