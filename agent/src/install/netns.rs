//! What the agent judges by the node's pod network namespaces: whether a sandbox is gone (for the
//! re-assert pass), and the hostShim repair pass, which also forgets pods whose namespace is gone.
//!
//! A sandbox's namespace is the `CNI_NETNS` its runtime passed, a host path:
//! - containerd (CRI): `/var/run/netns/cni-<uuid>` (`pkg/netns/netns_linux.go`, under
//!   `/var/run/netns` unless `netns_mounts_under_state_dir` is set);
//! - CRI-O: `/var/run/netns/<uuid>`;
//! - podman: `/run/netns/netns-<uuid>`;
//! - `ctr run --cni` and cri-dockerd: `/proc/<pid>/ns/net`.
//!
//! On the host `/var/run` is a symbolic link to `/run`, but the agent sees only what the DaemonSet
//! mounts under the host root, so it mounts both `/run/netns` and `/var/run/netns` (the same
//! directory on the host) at `/host/run/netns` and `/host/var/run/netns`. A `/proc/<pid>/ns/net`
//! path proves nothing from a container without the host's PID namespace, and such a sandbox is
//! never judged gone; neither is one under a directory the agent cannot see.

use std::path::Path;

use super::{layout, Args, Hooks};

/// The directories runtimes create pod network namespaces in (host paths).
pub(super) use iotlan_ipam::paths::RUNTIME_NETNS_DIRS;

/// Whether a pod's network namespace (`CNI_NETNS`, a host path) is provably gone: its directory is
/// visible under the host root and the file is not there. A directory the agent cannot see proves
/// nothing.
pub(super) fn netns_gone(host_root: &Path) -> impl Fn(&str) -> bool + Send + 'static {
    let root = host_root.to_path_buf();
    move |netns: &str| match layout::resolve_in_root(&root, Path::new(netns)) {
        Ok(p) => p.parent().is_some_and(Path::is_dir) && !p.exists(),
        Err(_) => false,
    }
}

/// Warns once for each runtime netns directory the agent cannot see under the host root: the
/// sandboxes there can never be judged gone (a DaemonSet from before both were mounted).
pub(super) fn warn_unseen_dirs(host_root: &Path) {
    for dir in RUNTIME_NETNS_DIRS {
        let seen = layout::resolve_in_root(host_root, Path::new(dir)).is_ok_and(|p| p.is_dir());
        if !seen {
            tracing::warn!(
                "the host's {dir} is not visible at {}{dir}: a sandbox whose CNI_NETNS is under it \
                 (containerd and CRI-O use /var/run/netns, podman /run/netns) is never judged gone, so \
                 its Lease is re-asserted and its hostShim route kept; mount it read-only as the \
                 manifests' DaemonSet does",
                host_root.display()
            );
        }
    }
}

/// What one hostShim repair pass did (`iotlan::link::shim::repair`, lent by the binary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShimRepair {
    /// Shims with pods to serve, checked (and made again where missing).
    pub shims: usize,
    /// Pod routes that were missing and were put back.
    pub routes: usize,
    /// Record entries of pods whose namespace is gone, dropped with their routes.
    pub dropped: usize,
}

/// One hostShim repair pass over the plugin's records on the host (`stateDir`'s default).
pub(super) fn repair_host_shims(opts: &Args, hooks: &Hooks) {
    let state_dir = match layout::state_dir(&opts.host_root) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("hostShim repair: {e}");
            return;
        }
    };
    match (hooks.repair_host_shims)(&state_dir, &netns_gone(&opts.host_root)) {
        Ok(r) if r.shims == 0 && r.dropped == 0 => {
            tracing::debug!("hostShim repair: no shim to keep")
        }
        Ok(r) => tracing::info!(
            shims = r.shims,
            routes_restored = r.routes,
            dropped = r.dropped,
            "hostShim repair"
        ),
        Err(e) => tracing::warn!("hostShim repair: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Exactly what containerd's CRI plugin names a sandbox's namespace: `cni-` and 16 random bytes
    /// as `%x-%x-%x-%x-%x` of 4, 2, 2, 2 and 6 bytes (containerd v1.6.9 `pkg/netns/netns_linux.go`).
    const CONTAINERD: &str = "/var/run/netns/cni-1b2c3d4e-5f60-7a8b-9c0d-0e1f2a3b4c5d";
    const CONTAINERD_GONE: &str = "/var/run/netns/cni-7f1e2d3c-4b5a-6978-8091-a2b3c4d5e6f7";
    /// CRI-O's: a UUID under /var/run/netns.
    const CRIO: &str = "/var/run/netns/5c1e8d1a-93b2-4f6e-a0d7-2b8c9e4f1a36";
    /// podman's (CNI backend): `netns-<uuid>` under /run/netns.
    const PODMAN_GONE: &str = "/run/netns/netns-0e9f8a7b-6c5d-4e3f-2a1b-0c9d8e7f6a5b";

    fn file(root: &Path, host: &str) {
        fs::write(root.join(host.trim_start_matches('/')), b"").unwrap();
    }

    #[test]
    fn the_paths_runtimes_pass_are_judged_in_the_daemonsets_view() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        // The DaemonSet mounts the host's /run/netns at /host/run/netns and /var/run/netns (the
        // same directory, through the host's /var/run -> /run link) at /host/var/run/netns: one
        // directory seen at both paths, as this link inside the root shows it.
        fs::create_dir_all(root.join("run/netns")).unwrap();
        fs::create_dir_all(root.join("var/run")).unwrap();
        std::os::unix::fs::symlink("../../run/netns", root.join("var/run/netns")).unwrap();
        file(root, "/run/netns/cni-1b2c3d4e-5f60-7a8b-9c0d-0e1f2a3b4c5d");
        file(root, "/run/netns/5c1e8d1a-93b2-4f6e-a0d7-2b8c9e4f1a36");
        let gone = netns_gone(root);
        assert!(!gone(CONTAINERD), "a live containerd sandbox");
        assert!(!gone(CRIO), "a live CRI-O sandbox");
        assert!(gone(CONTAINERD_GONE), "a containerd sandbox that is gone");
        assert!(gone(PODMAN_GONE), "a podman sandbox that is gone");
        // `ctr run --cni` and cri-dockerd pass /proc/<pid>/ns/net: without the host's PID
        // namespace, nothing can be told about it.
        assert!(!gone("/proc/4242/ns/net"));
    }

    #[test]
    fn without_the_var_run_mount_a_containerd_path_proves_nothing() {
        // A DaemonSet from before: only /run/netns is mounted, and the host's /var/run link is
        // not in the view. The dead containerd sandbox cannot be told from a live one.
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("run/netns")).unwrap();
        let gone = netns_gone(root);
        assert!(!gone(CONTAINERD_GONE));
        assert!(gone(PODMAN_GONE));
    }
}
