//! What the agent judges by the node's pod network namespaces: whether a sandbox is gone (for the
//! re-assert pass), and the hostShim repair pass, which also forgets pods whose namespace is gone.

use std::path::Path;

use super::{layout, Options};

/// Whether a pod's network namespace (`CNI_NETNS`, a host path) is provably gone: its directory is
/// visible under the host root (the DaemonSet mounts `/run/netns`) and the file is not there. A
/// directory the agent cannot see proves nothing.
pub(super) fn netns_gone(host_root: &Path) -> impl Fn(&str) -> bool + Send + 'static {
    let root = host_root.to_path_buf();
    move |netns: &str| match layout::resolve_in_root(&root, Path::new(netns)) {
        Ok(p) => p.parent().is_some_and(Path::is_dir) && !p.exists(),
        Err(_) => false,
    }
}

/// One hostShim repair pass over the plugin's records on the host (`stateDir`'s default).
pub(super) fn repair_host_shims(opts: &Options) {
    let state_dir = match layout::resolve_in_root(
        &opts.host_root,
        Path::new(iotlan::config::DEFAULT_STATE_DIR),
    ) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("hostShim repair: {e}");
            return;
        }
    };
    match iotlan::shim::repair(&state_dir, &netns_gone(&opts.host_root)) {
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
