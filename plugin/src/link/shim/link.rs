//! The kernel side of the host shim: the link on the master, its host addresses, the pods' host
//! routes through it, and the conflict check of a new shim address. Runs in the node's namespace.

use std::net::IpAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;

use super::record::{PodRoute, Record};
use crate::config::NetConf;
use crate::error::{Error, Result};
use crate::link::mac::Mac;
use crate::link::Driver;
use crate::net::netlink::{ChildKind, Link, Netlink, NewChild};
use crate::net::rules::{RouteSpec, TABLE_MAIN};

/// The conflict check of the shim's new IPv4 addresses, from the shim (macvlan: its own MAC) or the
/// master (ipvlan: an answer comes to the master's MAC). A conflict is recorded like a pod's.
pub(super) fn probe_new(
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
    let sock = crate::net::packet::ArpSocket::open(index, own)
        .map_err(|e| Error::io(format!("cannot open an ARP socket on {}", link.name), e))?;
    for ip in addresses {
        let IpAddr::V4(v4) = ip else { continue };
        let answered =
            crate::ipam::conflict::probe(&sock, *v4, own, Duration::from_millis(check.timeout_ms))
                .map_err(|e| Error::io(format!("cannot probe {v4} from {}", link.name), e))?;
        if let Some(mac) = answered {
            let mac = Mac(mac).to_string();
            crate::ipam::conflict::note(&conf.state_dir, &conf.name, *ip, &mac, identity);
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

/// The shim on `master`, made when missing (of the record's kind), up, and answering ARP only for
/// its own address ([`answer_own_addresses`]).
pub(super) fn ensure_link(
    nl: &mut Netlink,
    r: &Record,
    master: &Link,
    driver: Driver,
    mtu: Option<u32>,
) -> Result<Link> {
    let link = ensure_child(nl, r, master, driver, mtu)?;
    answer_own_addresses(&link, master)?;
    Ok(link)
}

/// Each of the node's addresses is answered by its own MAC: the shim answers ARP only for the
/// shim's address, and (a macvlan shim, which has a MAC of its own) the master only for the
/// master's (`arp_ignore` 1 on both; an ipvlan shim shares the master's MAC, so the master is left
/// as it is). Without it both MACs answer for both addresses, and the router's entry for the
/// shim's address can end up on the NIC. A stricter setting already there is kept.
fn answer_own_addresses(shim: &Link, master: &Link) -> Result<()> {
    let mut ifnames = vec![&shim.name];
    if shim.kind.as_deref() != Some("ipvlan") {
        ifnames.push(&master.name);
    }
    for ifname in ifnames {
        match crate::net::sysctl::arp_answers_own_addresses_only(ifname) {
            Ok(true) => {
                tracing::info!(%ifname, "hostShim: ARP answered only for the interface's own addresses (arp_ignore=1)")
            }
            Ok(false) => {}
            Err(e) => {
                return Err(Error::io(
                    format!("cannot set net.ipv4.conf.{ifname}.arp_ignore"),
                    e,
                ))
            }
        }
    }
    Ok(())
}

fn ensure_child(
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

pub(super) fn ensure_addresses(nl: &mut Netlink, link: &Link, r: &Record) -> Result<()> {
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

/// Each of `pods` has its host route through the shim: the node's routes are read once, and only the
/// missing ones are added (a route to the address through another link is somebody else's: left as
/// it is, with a warning). Returns how many were added.
pub(super) fn ensure_routes(
    nl: &mut Netlink,
    link: &Link,
    r: &Record,
    pods: impl IntoIterator<Item = IpAddr>,
) -> Result<usize> {
    let mut have: Vec<crate::net::rules::TableRoute> = Vec::new();
    for v6 in [false, true] {
        have.extend(
            nl.all_routes(v6)
                .map_err(|e| Error::netlink("cannot read the node's routes", e))?
                .into_iter()
                .filter(|t| t.table == TABLE_MAIN),
        );
    }
    let mut added = 0;
    for pod in pods {
        let spec = route_spec(link, r, pod)?;
        match have.iter().find(|t| t.dst == spec.dst) {
            Some(t) if t.oif == Some(link.index) => continue,
            Some(_) => {
                tracing::warn!(dst = %spec.dst, shim = %link.name,
                    "hostShim: the node already has another route to this pod address; left as it is");
                continue;
            }
            None => {}
        }
        match nl.add_route_spec(&spec) {
            Ok(()) => added += 1,
            // Added meanwhile (another ADD on this master holds no lock on the kernel's table).
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(Error::netlink(
                    format!("cannot add the route {} dev {}", spec.dst, link.name),
                    e,
                ))
            }
        }
    }
    Ok(added)
}

/// The record's pod routes whose network gave the shim an address of their family: a host route
/// without a source address on the shim would leave with another interface's address.
pub(super) fn routable(r: &Record) -> impl Iterator<Item = &PodRoute> {
    r.routes.iter().filter(|p| {
        r.addresses
            .get(&p.network)
            .is_some_and(|a| a.iter().any(|a| a.is_ipv6() == p.ip.is_ipv6()))
    })
}

pub(super) fn remove_routes(r: &Record, gone: &[PodRoute]) -> Result<()> {
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
