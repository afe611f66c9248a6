//! DEL: the pod's addresses come off the wire first, so that they can be handed out again at once;
//! then the link is deleted while the lease is released (deleting a link waits ~15 ms for an RCU
//! grace period, the lease release waits on the disk: the two overlap). Idempotent, and succeeds with
//! an empty CNI_NETNS, a namespace that is gone, or a link that is gone.

use std::sync::mpsc;

use crate::cni::env::{Attachment, Env};
use crate::config::NetConf;
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::netlink::Netlink;
use crate::netns::Netns;
use crate::pod;

pub fn run(env: &Env, conf: &NetConf, att: &Attachment) -> Result<()> {
    let ipam = Ipam::for_config(env, conf)?;
    let pod_ns = match &att.netns {
        None => None,
        Some(path) => match Netns::open(path) {
            Ok(ns) => {
                if ns.is_none() {
                    tracing::debug!(netns = %path.display(), "the pod's namespace is gone: no link to delete");
                }
                ns
            }
            // Not a namespace any more (e.g. the bind mount was replaced): nothing of ours to delete.
            Err(e) => {
                tracing::warn!(netns = %path.display(), error = %e, "cannot open the pod's namespace");
                None
            }
        },
    };
    let Some(pod_ns) = pod_ns else {
        return release(&ipam, conf, att);
    };
    let (withdrawn, addresses_off) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        // Only this worker enters the pod's namespace; it ends there.
        let unlink = s.spawn(move || -> Result<bool> {
            pod_ns.enter_for_this_thread()?;
            let mut nl = Netlink::open()
                .map_err(|e| Error::netlink("cannot open a netlink socket in the pod", e))?;
            let link = pod::find_ours(&mut nl, &att.ifname)?;
            if let Some(link) = &link {
                pod::withdraw_addresses(&mut nl, link)?;
            }
            let _ = withdrawn.send(());
            match link {
                Some(link) => pod::delete(&mut nl, &link).map(|_| true),
                None => Ok(false),
            }
        });
        // The lease is released only once its addresses are off the wire; if the worker failed
        // before that, the lease stays and the runtime retries DEL.
        let released = addresses_off.recv().ok().map(|_| release(&ipam, conf, att));
        let unlinked = unlink
            .join()
            .map_err(|_| Error::Link("the link deletion thread panicked".into()))??;
        tracing::debug!(ifname = %att.ifname, removed = unlinked, "link");
        released.unwrap_or(Ok(()))
    })
}

fn release(ipam: &Ipam, conf: &NetConf, att: &Attachment) -> Result<()> {
    ipam.del(conf, att)?;
    tracing::info!(container = %att.container_id, ifname = %att.ifname, "deleted");
    Ok(())
}
