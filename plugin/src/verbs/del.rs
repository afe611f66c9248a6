//! DEL: the link first (so the address leaves the wire before it can be handed out again), then
//! the addresses. Idempotent, and succeeds with an empty CNI_NETNS, a namespace that is gone, or a
//! link that is gone.

use crate::cni::env::{Attachment, Env};
use crate::config::NetConf;
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::netlink::Netlink;
use crate::netns::Netns;
use crate::pod;

pub fn run(env: &Env, conf: &NetConf, att: &Attachment) -> Result<()> {
    if let Some(path) = &att.netns {
        match Netns::open(path) {
            Ok(Some(pod_ns)) => {
                let home = Netns::current()?;
                let removed = pod_ns.run(&home, || -> Result<bool> {
                    let mut nl = Netlink::open().map_err(|e| {
                        Error::netlink("cannot open a netlink socket in the pod", e)
                    })?;
                    pod::remove(&mut nl, &att.ifname)
                })??;
                tracing::debug!(ifname = %att.ifname, removed, "link");
            }
            Ok(None) => {
                tracing::debug!(netns = %path.display(), "the pod's namespace is gone: no link to delete")
            }
            // Not a namespace any more (e.g. the bind mount was replaced): nothing of ours to delete.
            Err(e) => {
                tracing::warn!(netns = %path.display(), error = %e, "cannot open the pod's namespace")
            }
        }
    }
    Ipam::for_config(env, conf)?.del(conf, att)?;
    tracing::info!(container = %att.container_id, ifname = %att.ifname, "deleted");
    Ok(())
}
