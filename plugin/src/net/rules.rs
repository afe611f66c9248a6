//! The rtnetlink requests beyond the main table's plain routes: routes with a table, a type, a
//! preferred source and a metric (multicast through net1, the source-routing table), and policy
//! rules. iotlan marks what it adds with its own protocol number, [`PROTO_IOTLAN`], so that DEL and
//! CHECK recognise it and never touch a route or rule somebody else made.

use std::io;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::net::netlink::{family, ip_of, route_address, Netlink};

/// The protocol number (`ip route ... proto 73`, `ip rule ... protocol 73`) of iotlan's routes and rules.
pub const PROTO_IOTLAN: u8 = 73;
/// The kernel's local table, where IPv6 multicast routes live.
pub const TABLE_LOCAL: u32 = 255;
pub const TABLE_MAIN: u32 = 254;

/// A route to add.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub table: u32,
    /// `RTA_PREFSRC`: the source address a socket gets for this destination.
    pub prefsrc: Option<IpAddr>,
    pub multicast: bool,
    pub metric: Option<u32>,
}

/// A route as read back, from any table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRoute {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub prefsrc: Option<IpAddr>,
    pub multicast: bool,
}

/// A policy rule as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub v6: bool,
    pub src: Option<IpNetwork>,
    pub table: u32,
    pub priority: Option<u32>,
    pub protocol: u8,
}

impl Netlink {
    pub fn add_route_spec(&mut self, r: &RouteSpec) -> io::Result<()> {
        self.exchange(
            RouteNetlinkMessage::NewRoute(route_message(r)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Deletes the route `r` describes (ESRCH when there is none).
    pub fn delete_route(&mut self, r: &RouteSpec) -> io::Result<()> {
        self.exchange(RouteNetlinkMessage::DelRoute(route_message(r)), 0)
            .map(drop)
    }

    /// Every route of one family, in every table.
    pub fn all_routes(&mut self, v6: bool) -> io::Result<Vec<TableRoute>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = af(v6);
        let replies = self.exchange(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    return None;
                };
                let mut out = TableRoute {
                    dst: IpNetwork::new(any(v6), 0).ok()?,
                    gateway: None,
                    oif: None,
                    table: u32::from(r.header.table),
                    prefsrc: None,
                    multicast: r.header.kind == RouteType::Multicast,
                };
                let mut dst = any(v6);
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Destination(d) => dst = ip_of(d).unwrap_or(dst),
                        RouteAttribute::Gateway(g) => out.gateway = ip_of(g),
                        RouteAttribute::Oif(i) => out.oif = Some(*i),
                        RouteAttribute::Table(t) => out.table = *t,
                        RouteAttribute::PrefSource(s) => out.prefsrc = ip_of(s),
                        _ => {}
                    }
                }
                out.dst = IpNetwork::new(dst, r.header.destination_prefix_length).ok()?;
                Some(out)
            })
            .collect())
    }

    /// Adds `from <src> lookup <table>`, marked as iotlan's.
    pub fn add_rule(&mut self, src: IpNetwork, table: u32) -> io::Result<()> {
        let mut msg = RuleMessage::default();
        msg.header.family = family(src.ip());
        msg.header.src_len = src.prefix();
        msg.header.action = RuleAction::ToTable;
        msg.attributes.push(RuleAttribute::Source(src.ip()));
        msg.attributes.push(RuleAttribute::Table(table));
        msg.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::from(PROTO_IOTLAN)));
        self.exchange(RouteNetlinkMessage::NewRule(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    pub fn rules(&mut self, v6: bool) -> io::Result<Vec<Rule>> {
        let mut msg = RuleMessage::default();
        msg.header.family = af(v6);
        let replies = self.exchange(RouteNetlinkMessage::GetRule(msg), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| {
                let RouteNetlinkMessage::NewRule(r) = m else {
                    return None;
                };
                let mut rule = Rule {
                    v6,
                    src: None,
                    table: u32::from(r.header.table),
                    priority: None,
                    protocol: 0,
                };
                for a in &r.attributes {
                    match a {
                        RuleAttribute::Source(ip) => {
                            rule.src = IpNetwork::new(*ip, r.header.src_len).ok()
                        }
                        RuleAttribute::Table(t) => rule.table = *t,
                        RuleAttribute::Priority(p) => rule.priority = Some(*p),
                        RuleAttribute::Protocol(p) => rule.protocol = u8::from(*p),
                        _ => {}
                    }
                }
                Some(rule)
            })
            .collect())
    }

    pub fn delete_rule(&mut self, rule: &Rule) -> io::Result<()> {
        let mut msg = RuleMessage::default();
        msg.header.family = af(rule.v6);
        msg.header.action = RuleAction::ToTable;
        if let Some(src) = rule.src {
            msg.header.src_len = src.prefix();
            msg.attributes.push(RuleAttribute::Source(src.ip()));
        }
        msg.attributes.push(RuleAttribute::Table(rule.table));
        if let Some(p) = rule.priority {
            msg.attributes.push(RuleAttribute::Priority(p));
        }
        self.exchange(RouteNetlinkMessage::DelRule(msg), 0)
            .map(drop)
    }
}

/// The rtnetlink message of a route iotlan adds (and deletes), marked with [`PROTO_IOTLAN`].
fn route_message(r: &RouteSpec) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(r.dst.ip());
    msg.header.destination_prefix_length = r.dst.prefix();
    msg.header.table = if r.table < 256 {
        r.table as u8
    } else {
        RouteHeader::RT_TABLE_UNSPEC
    };
    msg.header.protocol = RouteProtocol::from(PROTO_IOTLAN);
    msg.header.scope = if r.gateway.is_some() || r.multicast {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    msg.header.kind = if r.multicast {
        RouteType::Multicast
    } else {
        RouteType::Unicast
    };
    msg.attributes
        .push(RouteAttribute::Destination(route_address(r.dst.network())));
    if let Some(gw) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(route_address(gw)));
    }
    if let Some(src) = r.prefsrc {
        msg.attributes
            .push(RouteAttribute::PrefSource(route_address(src)));
    }
    if let Some(m) = r.metric {
        msg.attributes.push(RouteAttribute::Priority(m));
    }
    msg.attributes.push(RouteAttribute::Table(r.table));
    msg.attributes.push(RouteAttribute::Oif(r.oif));
    msg
}

fn af(v6: bool) -> AddressFamily {
    if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn any(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from([0u16; 8])
    } else {
        IpAddr::from([0u8; 4])
    }
}
