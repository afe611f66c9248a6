//! Is an earlier sandbox of a pod still on the wire? The pool library asks this before it lets a new
//! sandbox of the same pod take an address over ([`iotlan_ipam::SandboxCheck`]); only this layer
//! knows namespaces and links.
//!
//! A sandbox on this node has left the wire when any of these holds:
//! - its lease was taken before the node last booted (a reboot ends every sandbox);
//! - its network namespace path no longer exists, or is no longer a namespace (the runtime
//!   unmounted it: what is left is an empty file);
//! - its namespace no longer has the lease's interface (a macvlan or ipvlan link) carrying the
//!   lease's address.
//!
//! Anything else, including a lease that recorded no namespace (written before namespaces were
//! recorded) and a namespace that cannot be inspected, counts as still on the wire: the ADD then
//! answers "try again later" and the old sandbox's DEL, or the node agent, frees the address.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::Path;

use iotlan_ipam::{Lease, SandboxCheck};

use crate::netlink::Netlink;
use crate::netns::Netns;
use crate::pod;

/// The check for sandboxes of this node.
pub struct OnThisNode {
    booted_unix: Option<u64>,
}

impl OnThisNode {
    pub fn new() -> OnThisNode {
        OnThisNode {
            booted_unix: boot_time(),
        }
    }
}

impl Default for OnThisNode {
    fn default() -> Self {
        OnThisNode::new()
    }
}

impl SandboxCheck for OnThisNode {
    fn is_gone(&self, holder: &Lease) -> bool {
        if self.booted_unix.is_some_and(|b| holder.created_unix < b) {
            tracing::info!(ip = %holder.ip, container = %holder.container_id,
                "the earlier sandbox's lease predates this node's boot: it is gone");
            return true;
        }
        let Some(path) = holder.sandbox.netns.as_deref() else {
            tracing::info!(ip = %holder.ip, container = %holder.container_id,
                "the earlier sandbox recorded no namespace: treating it as alive");
            return false;
        };
        let verdict = match namespace(Path::new(path)) {
            Namespace::Gone => true,
            Namespace::Unknown => false,
            Namespace::Open(ns) => carries(&ns, &holder.ifname, holder.ip) == Some(false),
        };
        tracing::info!(ip = %holder.ip, container = %holder.container_id, netns = path,
            gone = verdict, "checked the earlier sandbox of the same pod");
        verdict
    }
}

enum Namespace {
    Gone,
    Open(Netns),
    Unknown,
}

fn namespace(path: &Path) -> Namespace {
    match File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Namespace::Gone,
        // ESRCH: a /proc/<pid>/ns/net whose process has exited.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Namespace::Gone,
        Err(_) => Namespace::Unknown,
        Ok(file) => match nix::sys::statfs::fstatfs(file.as_fd()) {
            Ok(st) if st.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => {
                Namespace::Open(Netns::from_file(file))
            }
            // The runtime unmounted the namespace: the empty file it bound it to is all that is left.
            Ok(_) => Namespace::Gone,
            Err(_) => Namespace::Unknown,
        },
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
        .ok()
        .flatten()
    })
}

/// When this node booted, in seconds since the epoch (`btime` of /proc/stat).
fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(netns: Option<&str>, created_unix: u64) -> Lease {
        Lease {
            ip: "192.0.2.10".parse().unwrap(),
            identity: "ns/pod".into(),
            container_id: "old".into(),
            ifname: "net1".into(),
            node: None,
            created_unix,
            sandbox: iotlan_ipam::Sandbox {
                netns: netns.map(str::to_string),
                pod_uid: None,
            },
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn a_missing_or_unmounted_namespace_is_gone_an_unrecorded_one_is_not() {
        let check = OnThisNode::new();
        assert!(check.is_gone(&lease(Some("/nonexistent/netns/x"), now())));
        let plain = tempfile::NamedTempFile::new().unwrap();
        let path = plain.path().to_str().unwrap();
        assert!(
            check.is_gone(&lease(Some(path), now())),
            "a plain file is no namespace"
        );
        assert!(!check.is_gone(&lease(None, now())));
        assert!(check.is_gone(&lease(None, 0)), "taken before this boot");
    }

    #[test]
    fn a_live_namespace_without_the_link_is_gone() {
        // This process's own namespace has no macvlan "net1" carrying 192.0.2.10.
        let check = OnThisNode::new();
        assert!(check.is_gone(&lease(Some("/proc/self/ns/net"), now())));
    }
}
