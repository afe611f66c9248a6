//! DEL: the pod's addresses come off the wire first, so that they can be handed out again at once;
//! then the link is deleted while the lease is released (deleting a link waits ~15 ms for an RCU
//! grace period, the lease release waits on the disk or the API server: the two overlap).
//!
//! DEL is lenient, as runtimes need it to be: kubelet retries a failing DEL forever and the pod
//! stays Terminating. So:
//! - it reads only what it needs of the configuration ([`DelConf`]): a key ADD would refuse today
//!   does not stop it;
//! - the link comes off using only `CNI_NETNS` and `CNI_IFNAME`; an empty `CNI_NETNS`, a namespace
//!   that is gone or is provably no network namespace any more, and a link that is gone all mean
//!   "nothing to delete". A namespace that cannot be opened for any other reason (EMFILE, EPERM, an
//!   LSM's denial) fails the DEL, so the runtime retries while the address stays held;
//! - `ipam.store` is read leniently ([`StoreConfig::lenient`]): a value ADD would refuse today is
//!   read, clamped or defaulted, never a reason to keep the lease;
//! - the store is opened only after the link part started, and its failure (an unreachable API
//!   server) never keeps the link: DEL then fails with the store's error, the runtime retries, and
//!   the retry only has the release left to do.
//! - iotlan's source-routing rules for the link's addresses are removed whatever the config says now
//!   (best effort: the namespace's teardown takes them anyway);
//! - Idempotent.

use std::sync::mpsc;

use iotlan_ipam::{Attachment as PoolAttachment, StoreConfig};

use crate::cni::env::{Container, Env};
use crate::config::DelConf;
use crate::error::{Error, Result};
use crate::ipam::IN_PROCESS_TYPE;
use crate::link::pod;
use crate::net::netlink::Netlink;
use crate::net::netns::{Judged, Netns};

pub fn run(env: &Env, conf: &DelConf, ctr: &Container) -> Result<()> {
    let pod_ns = match ctr.netns.as_deref().map(|path| (path, Netns::judge(path))) {
        None => None,
        Some((path, Judged::Gone)) => {
            tracing::debug!(netns = %path.display(), "the pod's namespace is gone: no link to delete");
            None
        }
        Some((_, Judged::Open(ns))) => Some(ns),
        // It may still carry the link and its address: releasing now could hand the address to
        // another pod while this one answers for it. The runtime retries DEL.
        Some((path, Judged::Unknown(e))) => {
            return Err(Error::io(
                format!(
                    "cannot open the pod's network namespace {} (DEL is retried; the address stays \
                     held until its link is known to be gone)",
                    path.display()
                ),
                e,
            ))
        }
    };
    let Some(pod_ns) = pod_ns else {
        return release(env, conf, ctr);
    };
    let (withdrawn, addresses_off) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        // Only this worker enters the pod's namespace; it ends there.
        let unlink = s.spawn(move || -> Result<bool> {
            match pod_ns.enter_for_this_thread() {
                Ok(()) => {}
                // A namespace of another kind: provably no network namespace, nothing of ours.
                Err(nix::Error::EINVAL) => {
                    tracing::warn!("CNI_NETNS is not a network namespace: no link to delete");
                    let _ = withdrawn.send(());
                    return Ok(false);
                }
                Err(e) => {
                    return Err(Error::io(
                        "cannot enter the pod's network namespace (DEL is retried)",
                        e.into(),
                    ))
                }
            }
            let mut nl = Netlink::open()
                .map_err(|e| Error::netlink("cannot open a netlink socket in the pod", e))?;
            let link = pod::find_ours(&mut nl, &ctr.ifname)?;
            if let Some(link) = &link {
                // Rules outlive the link (its routes do not): iotlan's go while the addresses
                // still say which are this link's.
                crate::link::routing::remove_source_routing(&mut nl, link);
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
        let released = addresses_off.recv().ok().map(|_| release(env, conf, ctr));
        // A panic there is this process's (the release build aborts on it).
        let unlinked = unlink
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        tracing::debug!(ifname = %ctr.ifname, removed = unlinked, "link");
        released.unwrap_or(Ok(()))
    })
}

/// Releases what the attachment holds in its network's pool (or through the delegated plugin).
pub fn release(env: &Env, conf: &DelConf, ctr: &Container) -> Result<()> {
    // The node's host routes to the pod (hostShim), whatever the config says now.
    crate::link::shim::detach(&conf.state_dir, &ctr.container_id, &ctr.ifname);
    let (Some(name), Some(ipam_type)) = (&conf.name, &conf.ipam_type) else {
        tracing::error!(container = %ctr.container_id, ifname = %ctr.ifname,
            "DEL's configuration names no network or ipam.type: nothing can be released \
             (the node agent's reconcile frees a lease left so)");
        return Ok(());
    };
    if ipam_type != IN_PROCESS_TYPE {
        crate::ipam::delegate(env, ipam_type)?.del_raw(&conf.raw)?;
    } else {
        let store_cfg = conf
            .ipam
            .get("store")
            .map_or_else(StoreConfig::default, StoreConfig::lenient);
        let store = iotlan_ipam::open_store_to_release(name, &store_cfg)?;
        let att = PoolAttachment::new(ctr.container_id.clone(), ctr.ifname.clone());
        for l in store.release(&att)? {
            tracing::info!(ip = %l.ip, identity = %l.identity, "released");
        }
    }
    tracing::info!(container = %ctr.container_id, ifname = %ctr.ifname, "deleted");
    Ok(())
}
