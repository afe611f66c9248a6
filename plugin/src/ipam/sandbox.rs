//! Is an earlier sandbox of a pod still on the wire? The pool library asks this before it lets a new
//! sandbox of the same pod take an address over ([`iotlan_ipam::SandboxCheck`]); only this layer
//! knows namespaces and links.
//!
//! A sandbox on this node has left the wire when any of these holds:
//! - its lease was taken in another boot of the node: the lease records the kernel's boot ID
//!   (`/proc/sys/kernel/random/boot_id`), and a reboot ends every sandbox. Lease times are never
//!   compared with the boot time: a Raspberry Pi without a real-time clock steps its clock after
//!   boot, so a lease taken before the step looks older than the boot;
//! - its network namespace path no longer exists, or is no longer a namespace (the runtime
//!   unmounted it: what is left is an empty file);
//! - its namespace no longer has the lease's interface (a macvlan or ipvlan link) carrying the
//!   lease's address.
//!
//! Anything else, including a lease that recorded no namespace (written before namespaces were
//! recorded) and a namespace that cannot be inspected, counts as still on the wire: the ADD then
//! answers "try again later" and the old sandbox's DEL, or the node agent, frees the address.

use std::net::IpAddr;
use std::path::Path;

use iotlan_ipam::{Lease, SandboxCheck};

use crate::link::pod;
use crate::net::netlink::Netlink;
use crate::net::netns::{Judged, Netns};

/// Where the kernel tells this boot's ID.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// This boot of the node, as the kernel names it (a random UUID per boot).
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string(BOOT_ID)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The check for sandboxes of this node.
pub struct OnThisNode {
    boot_id: Option<String>,
}

impl OnThisNode {
    pub fn new() -> OnThisNode {
        OnThisNode { boot_id: boot_id() }
    }

    /// This boot's ID, as read once by [`OnThisNode::new`] (a new lease records it).
    pub fn boot_id(&self) -> Option<&str> {
        self.boot_id.as_deref()
    }
}

impl Default for OnThisNode {
    fn default() -> Self {
        OnThisNode::new()
    }
}

impl SandboxCheck for OnThisNode {
    fn is_gone(&self, holder: &Lease) -> bool {
        if let (Some(now), Some(then)) = (&self.boot_id, &holder.sandbox.boot_id) {
            if now != then {
                tracing::info!(ip = %holder.ip, container = %holder.container_id,
                    "the earlier sandbox's lease was taken in another boot of this node: it is gone");
                return true;
            }
        }
        let Some(path) = holder.sandbox.netns.as_deref() else {
            tracing::info!(ip = %holder.ip, container = %holder.container_id,
                "the earlier sandbox recorded no namespace: treating it as alive");
            return false;
        };
        let verdict = match Netns::judge(Path::new(path)) {
            Judged::Gone => true,
            Judged::Unknown(_) => false,
            Judged::Open(ns) => carries(&ns, &holder.ifname, holder.ip) == Some(false),
        };
        tracing::info!(ip = %holder.ip, container = %holder.container_id, netns = path,
            gone = verdict, "checked the earlier sandbox of the same pod");
        verdict
    }
}

/// Whether `ns` has a macvlan or ipvlan `ifname` carrying `ip`; `None` when it cannot be told.
fn carries(ns: &Netns, ifname: &str, ip: IpAddr) -> Option<bool> {
    std::thread::scope(|s| {
        s.spawn(|| -> Option<bool> {
            ns.enter_for_this_thread().ok()?;
            let mut nl = Netlink::open().ok()?;
            let Some(link) = pod::find_ours(&mut nl, ifname).ok()? else {
                return Some(false);
            };
            let addrs = nl.addresses().ok()?;
            Some(
                addrs
                    .iter()
                    .any(|a| a.index == link.index && a.address.ip() == ip),
            )
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(netns: Option<&str>, boot_id: Option<&str>) -> Lease {
        Lease {
            ip: "192.0.2.10".parse().unwrap(),
            identity: "ns/pod".into(),
            container_id: "old".into(),
            ifname: "net1".into(),
            node: None,
            created_unix: 1,
            sandbox: iotlan_ipam::Sandbox {
                netns: netns.map(str::to_string),
                pod_uid: None,
                boot_id: boot_id.map(str::to_string),
            },
        }
    }

    #[test]
    fn a_missing_or_unmounted_namespace_is_gone_an_unrecorded_one_is_not() {
        let check = OnThisNode::new();
        let this_boot = boot_id();
        let this_boot = this_boot.as_deref();
        assert!(check.is_gone(&lease(Some("/nonexistent/netns/x"), this_boot)));
        let plain = tempfile::NamedTempFile::new().unwrap();
        let path = plain.path().to_str().unwrap();
        assert!(
            check.is_gone(&lease(Some(path), this_boot)),
            "a plain file is no namespace"
        );
        assert!(!check.is_gone(&lease(None, this_boot)));
        assert!(
            !check.is_gone(&lease(None, None)),
            "an old lease, no evidence"
        );
        assert!(
            check.is_gone(&lease(None, Some("00000000-another-boot"))),
            "taken in another boot"
        );
    }

    #[test]
    fn a_live_namespace_without_the_link_is_gone() {
        // This process's own namespace has no macvlan "net1" carrying 192.0.2.10.
        let check = OnThisNode::new();
        assert!(check.is_gone(&lease(Some("/proc/self/ns/net"), boot_id().as_deref())));
    }
}
