//! Finding the node's LAN interface (the master) and reading what matters about it.

use std::path::Path;

use iotlan_ipam::{Avoid, AvoidReason};
use ipnetwork::IpNetwork;

use crate::config::NetConf;
use crate::error::{Error, Result};
use crate::net::netlink::{Addr, Link, Netlink};

/// The configured master, or the interface with an address in the pool's subnet, or the
/// default-route interface.
pub fn resolve(nl: &mut Netlink, conf: &NetConf) -> Result<Link> {
    resolve_with(nl, conf.master.as_deref(), &conf.ipam_subnets())
}

/// [`resolve`] from a master name and the subnets to look for.
pub fn resolve_with(nl: &mut Netlink, master: Option<&str>, subnets: &[IpNetwork]) -> Result<Link> {
    resolve_keeping(nl, master, subnets, &mut None)
}

/// [`resolve_with`] that keeps in `dump` the node's addresses when it listed them (no master
/// configured: found by subnet), for [`node_addresses_from`].
pub fn resolve_keeping(
    nl: &mut Netlink,
    master: Option<&str>,
    subnets: &[IpNetwork],
    dump: &mut Option<Vec<Addr>>,
) -> Result<Link> {
    let ctx = |e| Error::netlink("cannot list the node's interfaces", e);
    if let Some(name) = master {
        return match nl.link_by_name(name).map_err(ctx)? {
            Some(link) => Ok(link),
            None => Err(Error::Master(format!(
                "master {name:?} does not exist on node {}; interfaces here: {}",
                hostname(),
                names(nl)
            ))),
        };
    }
    if !subnets.is_empty() {
        let addrs = dump.insert(nl.addresses().map_err(ctx)?);
        if let Some(a) = addrs
            .iter()
            .find(|a| subnets.iter().any(|s| s.contains(a.address.ip())))
        {
            if let Some(link) = nl.link_by_index(a.index).map_err(ctx)? {
                tracing::debug!(master = %link.name, address = %a.address, "master found by subnet");
                return Ok(link);
            }
        }
    }
    for v6 in [false, true] {
        let routes = nl.routes(v6).map_err(ctx)?;
        if let Some(oif) = routes
            .iter()
            .find(|r| r.dst.prefix() == 0)
            .and_then(|r| r.oif)
        {
            if let Some(link) = nl.link_by_index(oif).map_err(ctx)? {
                tracing::debug!(master = %link.name, "master found by default route");
                return Ok(link);
            }
        }
    }
    let subnets: Vec<String> = subnets.iter().map(ToString::to_string).collect();
    Err(Error::Master(format!(
        "no \"master\" configured and none found on node {}: no interface has an address in {} and there is \
         no default route; set \"master\" to the node's LAN interface (interfaces here: {})",
        hostname(),
        if subnets.is_empty() { "the ipam subnet".to_string() } else { subnets.join(", ") },
        names(nl)
    )))
}

/// The node's own addresses in `subnets`, each with the interface that carries it (the master, the
/// host shim, any other): the pool must never hand them out. A macvlan child cannot hear its
/// parent, so no conflict probe would find the master's address in use; and a pod given it takes
/// the router's entry for it, so the node loses its LAN until the pod goes.
pub fn node_addresses(
    nl: &mut Netlink,
    master: Option<&Link>,
    subnets: &[IpNetwork],
) -> Result<Vec<Avoid>> {
    node_addresses_from(nl, master, subnets, None)
}

/// [`node_addresses`] from the address list `dump` when there is one (see [`resolve_keeping`]).
pub fn node_addresses_from(
    nl: &mut Netlink,
    master: Option<&Link>,
    subnets: &[IpNetwork],
    dump: Option<Vec<Addr>>,
) -> Result<Vec<Avoid>> {
    let ctx = |e| Error::netlink("cannot list the node's addresses", e);
    let addrs = match dump {
        Some(addrs) => addrs,
        None => nl.addresses().map_err(ctx)?,
    };
    let mut out = Vec::new();
    for a in addrs {
        let ip = a.address.ip();
        if !subnets.iter().any(|s| s.contains(ip)) {
            continue;
        }
        let interface = match master {
            Some(m) if m.index == a.index => m.name.clone(),
            _ => nl
                .link_by_index(a.index)
                .map_err(ctx)?
                .map_or_else(|| format!("interface {}", a.index), |l| l.name),
        };
        out.push(Avoid {
            ip,
            why: AvoidReason::NodeAddress { interface },
        });
    }
    Ok(out)
}

/// The IPv4 default route's gateway and interface, if there is one.
pub fn default_gateway(nl: &mut Netlink) -> Result<Option<(std::net::IpAddr, u32)>> {
    let routes = nl
        .routes(false)
        .map_err(|e| Error::netlink("cannot read the node's routes", e))?;
    Ok(routes
        .iter()
        .find(|r| r.dst.prefix() == 0)
        .and_then(|r| Some((r.gateway?, r.oif?))))
}

/// True for Wi-Fi interfaces, where access points drop frames from MACs other than the station's.
pub fn is_wireless(name: &str) -> bool {
    let dev = Path::new("/sys/class/net").join(name);
    dev.join("wireless").exists() || dev.join("phy80211").exists()
}

fn names(nl: &mut Netlink) -> String {
    match nl.links() {
        Ok(links) => links
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n != "lo")
            .collect::<Vec<_>>()
            .join(", "),
        Err(_) => "(unknown)".into(),
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "(unknown)".into())
}
