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

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::cni::env::Container;
use crate::cni::result::IpConfig;
use crate::config::{GcAttachment, HostShim, NetConf};
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::mac::Mac;
use crate::netlink::{ChildKind, Link, Netlink, NewChild};
use crate::rules::{RouteSpec, TABLE_MAIN};

/// The longest wait for another ADD or DEL on the same master's shim record.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the node has on one master.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub master: String,
    /// The shim link's name on the node.
    pub link: String,
    /// The kind it was made as: the pods' driver on this master.
    pub driver: Option<Driver>,
    /// The node the shim's lease and MAC are derived from ([`node_of`]).
    #[serde(default)]
    pub node: String,
    /// The shim's own addresses, per network.
    pub addresses: BTreeMap<String, Vec<IpAddr>>,
    /// Host routes to pods' net1 addresses through the shim.
    pub routes: Vec<PodRoute>,
}

/// One pod address the node routes through the shim, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRoute {
    pub ip: IpAddr,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

/// The shim link's name for `master`: `iot-<master>`, or `iot-<hash>` when that would not fit in 15 bytes.
pub fn link_name(master: &str) -> String {
    let name = format!("iot-{master}");
    if name.len() <= 15 {
        name
    } else {
        let h = iotlan_ipam::addr::fnv1a64(master.as_bytes());
        format!("iot-{:08x}", h as u32)
    }
}

/// The node's name ([`iotlan_ipam::node`]); on a machine without one (no host name, no agent), the
/// master's MAC, which is this node's alone on the LAN.
pub fn node_of(master: &Link) -> String {
    iotlan_ipam::node::default_name().unwrap_or_else(|| {
        let m = master.mac.unwrap_or_default();
        format!(
            "mac-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    })
}

/// The pool identity (and container ID) the shim's lease is held under: the node's, not a pod's.
pub fn identity(node: &str) -> String {
    format!("iotlan-shim.{node}")
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("_shim")
}

fn record_path(state_dir: &Path, master: &str) -> PathBuf {
    dir(state_dir).join(format!("{master}.json"))
}

/// Every shim record on this node; unreadable ones are logged and skipped.
pub fn records(state_dir: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir(state_dir)).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable shim record")
            }
        }
    }
    out.sort_by(|a, b| a.master.cmp(&b.master));
    out
}

/// The shim record of one master, under its lock.
struct Locked {
    path: PathBuf,
    record: Record,
    _lock: Flock<File>,
}

impl Locked {
    fn open(state_dir: &Path, master: &str) -> io::Result<Locked> {
        let path = record_path(state_dir, master);
        fs::create_dir_all(dir(state_dir))?;
        let lock_path = dir(state_dir).join(format!(".{master}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)?;
        let deadline = Instant::now() + LOCK_TIMEOUT;
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((_, e)) => {
                    return Err(io::Error::other(format!(
                        "cannot lock {}: {e}",
                        lock_path.display()
                    )))
                }
            }
        };
        let record = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "replacing an unreadable shim record");
                Record::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Record::default(),
            Err(e) => return Err(e),
        };
        Ok(Locked {
            path,
            record,
            _lock: lock,
        })
    }

    fn save(&self) -> io::Result<()> {
        crate::conflict::write_atomic(&self.path, &self.record, true)
    }
}

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
        let addresses = shim_addresses(conf, shim, ipam, &r.node, &r.link)?;
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
    for p in routable(&locked.record).filter(|p| p.network == conf.name) {
        ensure_route(&mut nl, &link, &locked.record, p.ip)?;
    }
    tracing::info!(shim = %link.name, master = %master.name,
        pods = ?pod_ips.iter().map(|i| i.address.ip().to_string()).collect::<Vec<_>>(),
        "hostShim: the node routes to the pod through its shim");
    Ok(())
}

/// This node's shim addresses for `conf`'s network: `hostShim.addresses[<node>]`, else the pool's
/// address for the node's identity (a reservation for `iotlan-shim.<node>` pins it).
fn shim_addresses(
    conf: &NetConf,
    shim: &HostShim,
    ipam: &Ipam,
    node: &str,
    link: &str,
) -> Result<Vec<IpAddr>> {
    if let Some(ip) = shim.addresses.get(node) {
        return Ok(vec![*ip]);
    }
    let id = identity(node);
    match ipam.node_addresses(&id, link)? {
        Some(ips) if !ips.is_empty() => Ok(ips),
        _ => Err(Error::InvalidConfig(format!(
            "hostShim: node {node} has no address: give it one in hostShim.addresses, or use \
             ipam.type iotlan-ipam, which allocates it from the pool under {id:?}; network {}",
            conf.name
        ))),
    }
}

/// The conflict check of the shim's new IPv4 addresses, from the shim (macvlan: its own MAC) or the
/// master (ipvlan: an answer comes to the master's MAC). A conflict is recorded like a pod's.
fn probe_new(
    conf: &NetConf,
    link: &Link,
    master: &Link,
    addresses: &[IpAddr],
    identity: &str,
) -> Result<()> {
    let Some(check) = &conf.conflict_check else {
        return Ok(());
    };
    let (index, own) = match link.kind.as_deref() {
        Some("ipvlan") => (master.index, master.mac.unwrap_or_default()),
        _ => (link.index, link.mac.unwrap_or_default()),
    };
    let sock = crate::packet::ArpSocket::open(index, own)
        .map_err(|e| Error::io(format!("cannot open an ARP socket on {}", link.name), e))?;
    for ip in addresses {
        let IpAddr::V4(v4) = ip else { continue };
        let answered =
            crate::conflict::probe(&sock, *v4, own, Duration::from_millis(check.timeout_ms))
                .map_err(|e| Error::io(format!("cannot probe {v4} from {}", link.name), e))?;
        if let Some(mac) = answered {
            let mac = Mac(mac).to_string();
            let seen = crate::conflict::Conflict {
                ip: *ip,
                mac: mac.clone(),
                seen_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                identity: identity.to_string(),
            };
            if let Err(e) = crate::conflict::record(&conf.state_dir, &conf.name, &seen) {
                tracing::warn!(error = %e, "could not record the conflict");
            }
            return Err(Error::AddressInUseOnLan {
                ip: *ip,
                mac,
                hint: "the pool skips it from now on; the next ADD gives the shim another address \
                       (or pin one: a reservation for the node's iotlan-shim identity)"
                    .into(),
            });
        }
    }
    Ok(())
}

fn ensure_link(
    nl: &mut Netlink,
    r: &Record,
    master: &Link,
    driver: Driver,
    mtu: Option<u32>,
) -> Result<Link> {
    if let Some(l) = nl
        .link_by_name(&r.link)
        .map_err(|e| Error::netlink(format!("cannot look up {}", r.link), e))?
    {
        if l.parent != Some(master.index) {
            return Err(Error::Link(format!(
                "{} exists but is not a child of {}: remove it or rename it",
                r.link, master.name
            )));
        }
        if !l.up {
            nl.set_up(l.index)
                .map_err(|e| Error::netlink(format!("cannot set {} up", l.name), e))?;
        }
        return Ok(l);
    }
    let kind = match r.driver.unwrap_or(driver) {
        Driver::Macvlan => ChildKind::Macvlan(netlink_packet_route::link::MacVlanMode::Bridge),
        Driver::Ipvlan => ChildKind::IpvlanL2,
    };
    nl.create_child(&NewChild {
        name: &r.link,
        master_index: master.index,
        kind,
        // The same MAC after every re-creation, so the router sees one client per node.
        mac: matches!(kind, ChildKind::Macvlan(_))
            .then(|| Mac::derived("iotlan-shim", &format!("{}/{}", r.node, master.name)).0),
        mtu,
        netns_fd: None,
    })
    .map_err(|e| {
        Error::netlink(
            format!("cannot create the shim {} on {}", r.link, master.name),
            e,
        )
    })?;
    let l = nl
        .link_by_name(&r.link)
        .map_err(|e| Error::netlink(format!("cannot look up {}", r.link), e))?
        .ok_or_else(|| Error::Link(format!("the new shim {} vanished", r.link)))?;
    nl.set_up(l.index)
        .map_err(|e| Error::netlink(format!("cannot set {} up", l.name), e))?;
    tracing::info!(shim = %l.name, master = %master.name, kind = ?kind, "hostShim: created the shim");
    Ok(l)
}

fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv6() {
        128
    } else {
        32
    }
}

fn ensure_addresses(nl: &mut Netlink, link: &Link, r: &Record) -> Result<()> {
    let have: Vec<IpAddr> = nl
        .addresses()
        .map_err(|e| Error::netlink("cannot read addresses", e))?
        .into_iter()
        .filter(|a| a.index == link.index)
        .map(|a| a.address.ip())
        .collect();
    for ip in r.addresses.values().flatten() {
        if have.contains(ip) {
            continue;
        }
        let net = IpNetwork::new(*ip, host_prefix(*ip))
            .map_err(|e| Error::InvalidConfig(format!("hostShim address {ip}: {e}")))?;
        match nl.add_address(link.index, net, true) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(Error::netlink(
                    format!("cannot add {net} to {}", link.name),
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// The host route to `pod` through the shim, with the shim's address of that family as its source.
fn route_spec(link: &Link, r: &Record, pod: IpAddr) -> Result<RouteSpec> {
    Ok(RouteSpec {
        dst: IpNetwork::new(pod, host_prefix(pod))
            .map_err(|e| Error::InvalidConfig(format!("address {pod}: {e}")))?,
        gateway: None,
        oif: link.index,
        table: TABLE_MAIN,
        prefsrc: r
            .addresses
            .values()
            .flatten()
            .find(|a| a.is_ipv6() == pod.is_ipv6())
            .copied(),
        multicast: false,
        metric: None,
    })
}

fn ensure_route(nl: &mut Netlink, link: &Link, r: &Record, pod: IpAddr) -> Result<()> {
    let spec = route_spec(link, r, pod)?;
    match nl.add_route_spec(&spec) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            let ours = nl
                .all_routes(pod.is_ipv6())
                .map_err(|e| Error::netlink("cannot read the node's routes", e))?
                .into_iter()
                .any(|t| t.table == TABLE_MAIN && t.dst == spec.dst && t.oif == Some(link.index));
            if !ours {
                tracing::warn!(dst = %spec.dst, shim = %link.name,
                    "hostShim: the node already has another route to this pod address; left as it is");
            }
            Ok(())
        }
        Err(e) => Err(Error::netlink(
            format!("cannot add the route {} dev {}", spec.dst, link.name),
            e,
        )),
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

/// The record's pod routes whose network gave the shim an address of their family: a host route
/// without a source address on the shim would leave with another interface's address.
fn routable(r: &Record) -> impl Iterator<Item = &PodRoute> {
    r.routes.iter().filter(|p| {
        r.addresses
            .get(&p.network)
            .is_some_and(|a| a.iter().any(|a| a.is_ipv6() == p.ip.is_ipv6()))
    })
}

fn remove_routes(r: &Record, gone: &[PodRoute]) -> Result<()> {
    let mut nl = Netlink::open().map_err(|e| Error::netlink("cannot open a netlink socket", e))?;
    let Some(link) = nl
        .link_by_name(&r.link)
        .map_err(|e| Error::netlink(format!("cannot look up {}", r.link), e))?
    else {
        return Ok(());
    };
    for p in gone {
        let spec = route_spec(&link, r, p.ip)?;
        match nl.delete_route(&spec) {
            Ok(()) => tracing::debug!(dst = %spec.dst, "hostShim: route removed"),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                return Err(Error::netlink(
                    format!("cannot remove the route {} dev {}", spec.dst, link.name),
                    e,
                ))
            }
        }
    }
    Ok(())
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
    pub shims: usize,
    pub routes: usize,
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
        for p in routable(rec) {
            ensure_route(&mut nl, &link, rec, p.ip)?;
            out.routes += 1;
        }
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
