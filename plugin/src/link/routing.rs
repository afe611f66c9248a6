//! Routes and rules in the pod beyond net1's subnet, for discovery:
//! - multicast through net1 (`multicastRoutes`, on by default): `224.0.0.0/4` in the main table with
//!   net1's address as preferred source, and for IPv6 `ff00::/8` in the local table ahead of the
//!   other interfaces'. Home Assistant's network integration enables the adapter that holds the
//!   source address of the route to 224.0.0.251, and many multicast libraries pick their outgoing
//!   interface the same way;
//! - source-based routing (`sourceRouting`), as the reference `sbr` plugin does: a table of net1's
//!   own (subnet, `ipam.routes`, multicast, default via the IoT gateway) and a rule `from <net1's
//!   address> lookup <table>`, so that replies to a client on another subnet leave through net1.
//!   The main table's default route is never touched.
//!
//! Routes go with the link when it is deleted; rules do not, so DEL removes iotlan's rules (marked
//! with [`PROTO_IOTLAN`]) whose source is one of the link's addresses. Runs inside the pod.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::cni::result::{IpConfig, Route};
use crate::error::{Error, Result};
use crate::net::netlink::{Link, Netlink};
use crate::net::rules::{RouteSpec, Rule, PROTO_IOTLAN, TABLE_LOCAL, TABLE_MAIN};

/// Metric of the IPv6 multicast route in the local table: ahead of the kernel's own (256) per link.
const V6_MULTICAST_METRIC: u32 = 64;
/// The first table number source routing uses (as `sbr` does); the first unused one from here.
pub const FIRST_TABLE: u32 = 100;

pub fn multicast_v4() -> IpNetwork {
    IpNetwork::new(IpAddr::from([224, 0, 0, 0]), 4).unwrap_or_else(|_| unreachable_net())
}

pub fn multicast_v6() -> IpNetwork {
    IpNetwork::new(IpAddr::from([0xff00, 0, 0, 0, 0, 0, 0, 0]), 8)
        .unwrap_or_else(|_| unreachable_net())
}

fn unreachable_net() -> IpNetwork {
    IpNetwork::V4(ipnetwork::Ipv4Network::from(
        std::net::Ipv4Addr::UNSPECIFIED,
    ))
}

fn first_of(ips: &[IpConfig], v6: bool) -> Option<&IpConfig> {
    ips.iter().find(|i| i.address.is_ipv6() == v6)
}

/// The multicast routes ADD installs for the families net1 has, in (table, dst, metric) form.
fn multicast_specs(link: &Link, ips: &[IpConfig], table: Option<u32>) -> Vec<RouteSpec> {
    let mut out = Vec::new();
    if let Some(v4) = first_of(ips, false) {
        out.push(RouteSpec {
            dst: multicast_v4(),
            gateway: None,
            oif: link.index,
            table: table.unwrap_or(TABLE_MAIN),
            prefsrc: Some(v4.address.ip()),
            multicast: false,
            metric: None,
        });
    }
    if let Some(v6) = first_of(ips, true) {
        out.push(RouteSpec {
            dst: multicast_v6(),
            gateway: None,
            oif: link.index,
            table: table.unwrap_or(TABLE_LOCAL),
            prefsrc: Some(v6.address.ip()),
            multicast: true,
            metric: Some(V6_MULTICAST_METRIC),
        });
    }
    out
}

fn add(nl: &mut Netlink, spec: &RouteSpec, ifname: &str) -> Result<()> {
    match nl.add_route_spec(spec) {
        Ok(()) => Ok(()),
        // An IPv6 address whose duplicate address detection failed (or is still tentative) is no
        // valid preferred source: the route goes in without it, and the kernel picks the source.
        Err(e)
            if e.raw_os_error() == Some(libc::EINVAL)
                && spec.dst.is_ipv6()
                && spec.prefsrc.is_some() =>
        {
            tracing::warn!(dst = %spec.dst, ifname, "net1's IPv6 address cannot be the preferred source (DAD failed?); adding the route without one");
            add(
                nl,
                &RouteSpec {
                    prefsrc: None,
                    ..spec.clone()
                },
                ifname,
            )
        }
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            tracing::warn!(dst = %spec.dst, table = spec.table, ifname,
                "the pod already has this route (a second iotlan network? set multicastRoutes: false on it); keeping it");
            Ok(())
        }
        Err(e) => Err(Error::netlink(
            format!(
                "cannot add route {} table {} via {ifname}",
                spec.dst, spec.table
            ),
            e,
        )),
    }
}

/// ADD: multicast through `link`, for each family it has an address of.
pub fn add_multicast(nl: &mut Netlink, link: &Link, ips: &[IpConfig]) -> Result<()> {
    for spec in multicast_specs(link, ips, None) {
        add(nl, &spec, &link.name)?;
    }
    Ok(())
}

/// CHECK: the multicast routes through `link` are there; a message when one is missing.
pub fn check_multicast(nl: &mut Netlink, link: &Link, ips: &[IpConfig]) -> Result<Option<String>> {
    for want in multicast_specs(link, ips, None) {
        let v6 = want.dst.is_ipv6();
        let have = nl
            .all_routes(v6)
            .map_err(|e| Error::netlink("cannot read the pod's routes", e))?;
        if !have
            .iter()
            .any(|r| r.dst == want.dst && r.table == want.table && r.oif == Some(link.index))
        {
            let holder = have
                .iter()
                .find(|r| r.dst == want.dst && r.table == want.table)
                .map(|r| format!(" (it goes via interface index {:?})", r.oif))
                .unwrap_or_default();
            return Ok(Some(format!(
                "multicast route {} via {} is missing{holder}; with multicastRoutes: false iotlan adds none",
                want.dst, link.name
            )));
        }
    }
    Ok(None)
}

/// ADD: net1's own table and a rule per address that sends its traffic there.
/// `routes` are the result's routes (the `ipam.routes`); `multicast` adds the multicast routes too.
pub fn add_source_routing(
    nl: &mut Netlink,
    link: &Link,
    ips: &[IpConfig],
    routes: &[Route],
    multicast: bool,
) -> Result<u32> {
    let table = free_table(nl)?;
    for ip in ips {
        let v6 = ip.address.is_ipv6();
        let subnet = IpNetwork::new(ip.address.network(), ip.address.prefix())
            .map_err(|e| Error::InvalidConfig(format!("address {}: {e}", ip.address)))?;
        let mut specs = vec![RouteSpec {
            dst: subnet,
            gateway: None,
            oif: link.index,
            table,
            prefsrc: Some(ip.address.ip()),
            multicast: false,
            metric: None,
        }];
        for r in routes.iter().filter(|r| r.dst.is_ipv6() == v6) {
            specs.push(RouteSpec {
                dst: r.dst,
                gateway: r.gw.or(ip.gateway),
                oif: link.index,
                table,
                prefsrc: None,
                multicast: false,
                metric: None,
            });
        }
        if let Some(gw) = ip.gateway {
            specs.push(RouteSpec {
                dst: IpNetwork::new(if v6 { any6() } else { any4() }, 0)
                    .map_err(|e| Error::InvalidConfig(e.to_string()))?,
                gateway: Some(gw),
                oif: link.index,
                table,
                prefsrc: None,
                multicast: false,
                metric: None,
            });
        } else {
            tracing::warn!(address = %ip.address, "sourceRouting: no gateway for this address; its table has only the subnet");
        }
        for spec in &specs {
            add(nl, spec, &link.name)?;
        }
        let host = IpNetwork::new(ip.address.ip(), if v6 { 128 } else { 32 })
            .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        nl.add_rule(host, table).map_err(|e| {
            Error::netlink(format!("cannot add rule from {host} lookup {table}"), e)
        })?;
    }
    if multicast {
        for spec in multicast_specs(link, ips, Some(table)) {
            add(nl, &spec, &link.name)?;
        }
    }
    Ok(table)
}

/// iotlan's rules whose source is one of `addresses`.
fn our_rules(nl: &mut Netlink, addresses: &[IpAddr]) -> Result<Vec<Rule>> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let rules = nl
            .rules(v6)
            .map_err(|e| Error::netlink("cannot read the pod's rules", e))?;
        out.extend(rules.into_iter().filter(|r| {
            r.protocol == PROTO_IOTLAN && r.src.is_some_and(|s| addresses.contains(&s.ip()))
        }));
    }
    Ok(out)
}

/// CHECK: every address has its rule, and the rule's table has a default route via `link` when the
/// address has a gateway.
pub fn check_source_routing(
    nl: &mut Netlink,
    link: &Link,
    ips: &[IpConfig],
) -> Result<Option<String>> {
    for ip in ips {
        let rules = our_rules(nl, &[ip.address.ip()])?;
        let Some(rule) = rules.first() else {
            return Ok(Some(format!(
                "sourceRouting: the rule from {} is missing",
                ip.address.ip()
            )));
        };
        if ip.gateway.is_some() {
            let routes = nl
                .all_routes(ip.address.is_ipv6())
                .map_err(|e| Error::netlink("cannot read the pod's routes", e))?;
            if !routes
                .iter()
                .any(|r| r.table == rule.table && r.dst.prefix() == 0 && r.oif == Some(link.index))
            {
                return Ok(Some(format!(
                    "sourceRouting: table {} has no default route via {}",
                    rule.table, link.name
                )));
            }
        }
    }
    Ok(None)
}

/// DEL: removes iotlan's rules for the link's addresses (its routes go with the link). Best effort:
/// a rule left in a namespace that is torn down anyway must not keep the pod Terminating.
pub fn remove_source_routing(nl: &mut Netlink, link: &Link) {
    let addresses: Vec<IpAddr> = match nl.addresses() {
        Ok(a) => a
            .into_iter()
            .filter(|a| a.index == link.index)
            .map(|a| a.address.ip())
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the pod's addresses: leaving its rules");
            return;
        }
    };
    match our_rules(nl, &addresses) {
        Ok(rules) => {
            for r in rules {
                if let Err(e) = nl.delete_rule(&r) {
                    tracing::warn!(src = ?r.src, table = r.table, error = %e, "cannot remove a source-routing rule");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the pod's rules"),
    }
}

/// The first table number from [`FIRST_TABLE`] that no rule and no route of the pod uses.
fn free_table(nl: &mut Netlink) -> Result<u32> {
    let mut used = Vec::new();
    for v6 in [false, true] {
        used.extend(
            nl.rules(v6)
                .map_err(|e| Error::netlink("cannot read the pod's rules", e))?
                .into_iter()
                .map(|r| r.table),
        );
        used.extend(
            nl.all_routes(v6)
                .map_err(|e| Error::netlink("cannot read the pod's routes", e))?
                .into_iter()
                .map(|r| r.table),
        );
    }
    (FIRST_TABLE..TABLE_MAIN - 2)
        .find(|t| !used.contains(t))
        .ok_or_else(|| Error::Link("sourceRouting: no free routing table in the pod".into()))
}

fn any4() -> IpAddr {
    IpAddr::from([0u8; 4])
}

fn any6() -> IpAddr {
    IpAddr::from([0u16; 8])
}
