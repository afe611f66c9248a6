//! `hostShim`: the node reaches its pods' net1 addresses.
//!
//! A macvlan child cannot talk to its parent (Multus issue #226), and neither can an ipvlan child, so
//! the node cannot reach a pod's net1 address through the master. iotlan keeps one *shim* link per
//! master in the node's namespace, of the same kind as the pods' links (a bridge-mode macvlan, or an
//! ipvlan L2), which the pods' links do reach. It carries the node's own address on the IoT LAN (a
//! host address, /32 or /128, so it adds no subnet route), and each pod's net1 address gets a host
//! route through it on ADD, removed on DEL.
//!
//! What the node has is recorded in `<stateDir>/_shim/<master>.json` (the link's kind, its
//! addresses per network, and the pod routes with the attachment each belongs to), so that DEL needs
//! no configuration, GC keeps the shim's lease, and the node agent (`iotlan install --host-shims`)
//! puts the link, its addresses and the routes back when they are gone (a reboot, a network manager
//! that flushes foreign routes, a re-plugged USB NIC).
//!
//! The shim never fails an ADD: the pod's net1 works without it. A shim step that fails is logged,
//! and the agent's next pass repairs it.

mod link;
mod record;

use std::net::IpAddr;
use std::path::Path;

use iotlan_ipam::{Avoid, AvoidReason};

use crate::cni::env::Container;
use crate::cni::result::IpConfig;
use crate::config::{GcAttachment, HostShim, NetConf};
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::link::Driver;
use crate::net::netlink::{Link, Netlink};
use link::{ensure_addresses, ensure_link, ensure_routes, probe_new, remove_routes, routable};
use record::Locked;
pub use record::{identity, link_name, node_of, records, PodRoute, Record};

/// ADD, after the pod's link works: the shim exists on `master` with this network's address, and
/// each of `pod_ips` has its host route through it. Never fails the ADD: a failure is logged, and
/// the node agent repairs it.
pub fn attach(
    conf: &NetConf,
    shim: &HostShim,
    ipam: &Ipam,
    ctr: &Container,
    master: &Link,
    driver: Driver,
    pod_ips: &[IpConfig],
) {
    if let Err(e) = try_attach(conf, shim, ipam, ctr, master, driver, pod_ips) {
        tracing::error!(master = %master.name, error = %e,
            "hostShim: the node cannot reach this pod's net1 address yet (the node agent retries)");
    }
}

fn try_attach(
    conf: &NetConf,
    shim: &HostShim,
    ipam: &Ipam,
    ctr: &Container,
    master: &Link,
    driver: Driver,
    pod_ips: &[IpConfig],
) -> Result<()> {
    let mut locked = Locked::open(&conf.state_dir, &master.name)
        .map_err(|e| Error::io("cannot open the hostShim record", e))?;
    let r = &mut locked.record;
    r.master = master.name.clone();
    r.link = link_name(&master.name);
    if r.driver.is_none() {
        r.driver = Some(driver);
    }
    if r.node.is_empty() {
        r.node = node_of(master);
    }
    for ip in pod_ips {
        let route = PodRoute {
            ip: ip.address.ip(),
            network: conf.name.clone(),
            container_id: ctr.container_id.clone(),
            ifname: ctr.ifname.clone(),
            netns: ctr.netns.as_ref().map(|p| p.display().to_string()),
        };
        // An earlier holder of this address on this node (its DEL never came) hands the route on.
        r.routes.retain(|x| x.ip != route.ip);
        r.routes.push(route);
    }
    // Recorded first: whatever the rest leaves undone, a later ADD or the agent finishes from it.
    locked
        .save()
        .map_err(|e| Error::io("cannot write the hostShim record", e))?;
    let mut nl = Netlink::open().map_err(|e| Error::netlink("cannot open a netlink socket", e))?;
    let r = &mut locked.record;
    if r.addresses.get(&conf.name).is_none_or(|a| a.is_empty()) {
        // The node's other addresses are not the shim's to take (its own, should it have some
        // left from an earlier record, are).
        // Nor an address a LAN device answered for lately.
        let mut avoid: Vec<Avoid> = crate::link::master::node_addresses(
            &mut nl,
            Some(master),
            &conf.ipam_subnets(),
        )?
        .into_iter()
        .filter(
            |a| !matches!(&a.why, AvoidReason::NodeAddress { interface } if *interface == r.link),
        )
        .collect();
        avoid.extend(
            crate::ipam::conflict::recent(&conf.state_dir, &conf.name)
                .into_iter()
                .map(|c| Avoid {
                    ip: c.ip,
                    why: AvoidReason::InUseOnLan,
                }),
        );
        let addresses = shim_addresses(conf, shim, ipam, &r.node, &r.link, &avoid)?;
        if conf.conflict_check.is_some() {
            // A first address is probed as the pods' are (RFC 5227), from the shim before it has
            // any: a device that already uses it keeps it, the pool skips it, and the next ADD
            // takes another one.
            let link = ensure_link(&mut nl, r, master, driver, conf.mtu)?;
            if let Err(e) = probe_new(conf, &link, master, &addresses, &identity(&r.node)) {
                if let Err(undo) = ipam.release_node(&identity(&r.node), &r.link) {
                    tracing::warn!(error = %undo, "hostShim: cannot release the conflicting address");
                }
                return Err(e);
            }
        }
        r.addresses.insert(conf.name.clone(), addresses);
        locked
            .save()
            .map_err(|e| Error::io("cannot write the hostShim record", e))?;
    }
    let link = ensure_link(&mut nl, &locked.record, master, driver, conf.mtu)?;
    ensure_addresses(&mut nl, &link, &locked.record)?;
    // Every pod of this network the record lists: one that came while the shim had no address yet
    // gets its route now too.
    let rec = &locked.record;
    let pods = routable(rec)
        .filter(|p| p.network == conf.name)
        .map(|p| p.ip);
    ensure_routes(&mut nl, &link, rec, pods)?;
    tracing::info!(shim = %link.name, master = %master.name,
        pods = ?pod_ips.iter().map(|i| i.address.ip().to_string()).collect::<Vec<_>>(),
        "hostShim: the node routes to the pod through its shim");
    Ok(())
}

/// The address `hostShim.addresses` gives this node's shim on `master`: the node's, never a pod's,
/// also before the shim carries it.
pub fn given_address(shim: &HostShim, master: &Link) -> Option<Avoid> {
    if shim.addresses.is_empty() {
        return None;
    }
    let ip = *shim.addresses.get(&node_of(master))?;
    Some(Avoid {
        ip,
        why: AvoidReason::NodeAddress {
            interface: link_name(&master.name),
        },
    })
}

/// This node's shim addresses for `conf`'s network: `hostShim.addresses[<node>]`, else the pool's
/// address for the node's identity (a reservation for `iotlan-shim.<node>` pins it).
fn shim_addresses(
    conf: &NetConf,
    shim: &HostShim,
    ipam: &Ipam,
    node: &str,
    link: &str,
    avoid: &[Avoid],
) -> Result<Vec<IpAddr>> {
    if let Some(ip) = shim.addresses.get(node) {
        return Ok(vec![*ip]);
    }
    let id = identity(node);
    match ipam.node_addresses(&id, link, avoid)? {
        Some(ips) if !ips.is_empty() => Ok(ips),
        _ => Err(Error::InvalidConfig(format!(
            "hostShim: node {node} has no address: give it one in hostShim.addresses, or use \
             ipam.type iotlan-ipam, which allocates it from the pool under {id:?}; network {}",
            conf.name
        ))),
    }
}

/// DEL (lenient, whatever the config says now): the attachment's host routes come off, and its
/// entries leave the records. The shim and its address stay: they are the node's. Best effort.
pub fn detach(state_dir: &Path, container_id: &str, ifname: &str) {
    for r in records(state_dir) {
        if !r
            .routes
            .iter()
            .any(|x| x.container_id == container_id && x.ifname == ifname)
        {
            continue;
        }
        let mut locked = match Locked::open(state_dir, &r.master) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(master = %r.master, error = %e, "hostShim: cannot update the record");
                continue;
            }
        };
        let (gone, kept): (Vec<PodRoute>, Vec<PodRoute>) =
            std::mem::take(&mut locked.record.routes)
                .into_iter()
                .partition(|x| x.container_id == container_id && x.ifname == ifname);
        locked.record.routes = kept;
        if let Err(e) = locked.save() {
            tracing::warn!(master = %r.master, error = %e, "hostShim: cannot write the record");
        }
        if let Err(e) = remove_routes(&locked.record, &gone) {
            tracing::warn!(master = %r.master, error = %e, "hostShim: cannot remove the pod's routes");
        }
    }
}

/// GC: the shim's leases of `network` on this node are no container's, and stay.
pub fn gc_keep(state_dir: &Path, network: &str) -> Vec<GcAttachment> {
    records(state_dir)
        .into_iter()
        .filter(|r| r.addresses.contains_key(network) && !r.node.is_empty())
        .map(|r| GcAttachment {
            container_id: identity(&r.node),
            ifname: r.link,
        })
        .collect()
}

/// What one repair pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repair {
    /// Shims with pods to serve, checked (and made again where missing).
    pub shims: usize,
    /// Pod routes that were missing and were put back.
    pub routes: usize,
    /// Record entries of pods whose namespace is gone, dropped with their routes.
    pub dropped: usize,
}

/// The node agent's pass: every shim with pods to serve has its link, addresses and routes again.
/// An entry whose pod namespace is provably gone (`netns_gone`) is dropped from the record and its
/// route removed. Runs in the node's network namespace.
pub fn repair(state_dir: &Path, netns_gone: &dyn Fn(&str) -> bool) -> Result<Repair> {
    let mut out = Repair::default();
    let mut nl = Netlink::open().map_err(|e| Error::netlink("cannot open a netlink socket", e))?;
    for r in records(state_dir) {
        let mut locked = Locked::open(state_dir, &r.master)
            .map_err(|e| Error::io("cannot open the hostShim record", e))?;
        let (gone, kept): (Vec<PodRoute>, Vec<PodRoute>) =
            std::mem::take(&mut locked.record.routes)
                .into_iter()
                .partition(|x| x.netns.as_deref().is_some_and(netns_gone));
        locked.record.routes = kept;
        if !gone.is_empty() {
            out.dropped += gone.len();
            locked
                .save()
                .map_err(|e| Error::io("cannot write the hostShim record", e))?;
            if let Err(e) = remove_routes(&locked.record, &gone) {
                tracing::warn!(master = %r.master, error = %e, "hostShim: cannot remove stale routes");
            }
        }
        let rec = &locked.record;
        if rec.routes.is_empty() {
            continue;
        }
        let Some(master) = nl
            .link_by_name(&rec.master)
            .map_err(|e| Error::netlink(format!("cannot look up {}", rec.master), e))?
        else {
            tracing::warn!(master = %rec.master, "hostShim: the master is gone; nothing to repair on it");
            continue;
        };
        let driver = rec.driver.unwrap_or(Driver::Macvlan);
        let link = ensure_link(&mut nl, rec, &master, driver, None)?;
        ensure_addresses(&mut nl, &link, rec)?;
        out.routes += ensure_routes(&mut nl, &link, rec, routable(rec).map(|p| p.ip))?;
        out.shims += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_fit_and_are_ours() {
        assert_eq!(link_name("eth0"), "iot-eth0");
        assert_eq!(link_name("enp3s0"), "iot-enp3s0");
        let long = link_name("enx00e04c680001");
        assert!(long.len() <= 15 && long.starts_with("iot-"), "{long}");
        assert_ne!(long, link_name("enx00e04c680002"));
        assert!(iotlan_ipam::names::validate_container_id(&identity("pi-4.lan")).is_ok());
        assert!(iotlan_ipam::names::validate_identity(&identity("pi-4.lan")).is_ok());
    }

    #[test]
    fn records_round_trip_and_detach_forgets_only_its_attachment() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Locked::open(dir.path(), "eth0").unwrap();
        l.record.master = "eth0".into();
        l.record.link = link_name("eth0");
        l.record.driver = Some(Driver::Macvlan);
        l.record
            .addresses
            .insert("iot".into(), vec!["10.77.0.250".parse().unwrap()]);
        for (ip, cid) in [("10.77.0.10", "a"), ("10.77.0.11", "b")] {
            l.record.routes.push(PodRoute {
                ip: ip.parse().unwrap(),
                network: "iot".into(),
                container_id: cid.into(),
                ifname: "net1".into(),
                netns: None,
            });
        }
        l.save().unwrap();
        drop(l);
        // No shim link exists here: the route removal finds nothing and the record still updates.
        detach(dir.path(), "a", "net1");
        let rs = records(dir.path());
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].routes.len(), 1);
        assert_eq!(rs[0].routes[0].container_id, "b");
        assert_eq!(
            rs[0].addresses["iot"],
            vec!["10.77.0.250".parse::<IpAddr>().unwrap()]
        );
    }
}
