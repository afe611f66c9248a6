//! One family's part of a pool: its subnet, gateway, ranges and exclusions validated into the address
//! sets the allocator walks.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::addr::{parse_cidr, parse_ip, parse_span, to_u128, Family, Span, SpanSet};
use crate::error::Error;

#[derive(Clone, Debug)]
pub(super) struct FamilyPool {
    pub(super) family: Family,
    pub(super) subnet: IpNetwork,
    pub(super) gateway: Option<IpAddr>,
    /// The configured ranges, as given.
    pub(super) ranges: SpanSet,
    /// Excluded addresses plus the gateway, the network address and (IPv4) the broadcast address.
    pub(super) never: SpanSet,
    /// What the search hands out: ranges less `never` less every reserved address.
    pub(super) search: SpanSet,
    /// Reserved addresses of this family.
    pub(super) reserved: u128,
}

impl FamilyPool {
    pub(super) fn new(
        prefix: &str,
        expect: Option<Family>,
        subnet: &str,
        gateway: Option<&str>,
        pool: Option<&[String]>,
        exclude: &[String],
    ) -> Result<FamilyPool, Error> {
        let field = |name: &str| format!("{prefix}{name}");
        if subnet.trim().is_empty() {
            return Err(Error::config(
                field("subnet"),
                "required: the LAN's subnet, e.g. 192.168.20.0/24",
            ));
        }
        let net = parse_cidr(subnet).map_err(|e| Error::config(field("subnet"), e))?;
        if net.ip() != net.network() {
            return Err(Error::config(
                field("subnet"),
                format!(
                    "{subnet:?} has host bits set; the subnet is {}/{}",
                    net.network(),
                    net.prefix()
                ),
            ));
        }
        let family = Family::of(&net.ip());
        if let Some(want) = expect.filter(|f| *f != family) {
            return Err(Error::config(
                field("subnet"),
                format!("{net} is not {want}"),
            ));
        }
        let max_prefix = match family {
            Family::V4 => 30,
            Family::V6 => 126,
        };
        if net.prefix() == 0 || net.prefix() > max_prefix {
            return Err(Error::config(
                field("subnet"),
                format!(
                    "prefix /{} is out of range (1 to {max_prefix})",
                    net.prefix()
                ),
            ));
        }
        let whole = Span::of_network(&net);
        let in_subnet = |s: &Span| whole.start <= s.start && s.end <= whole.end;

        let gateway = match gateway.map(str::trim).filter(|g| !g.is_empty()) {
            None => None,
            Some(g) => {
                let ip = parse_ip(g).map_err(|e| Error::config(field("gateway"), e))?;
                let v = to_u128(ip);
                if Family::of(&ip) != family || !whole.contains(v) {
                    return Err(Error::config(
                        field("gateway"),
                        format!("{ip} is outside the subnet {net}"),
                    ));
                }
                if v == whole.start || (family == Family::V4 && v == whole.end) {
                    return Err(Error::config(
                        field("gateway"),
                        format!("{ip} is the network or broadcast address of {net}"),
                    ));
                }
                Some(ip)
            }
        };

        let Some(pool) = pool else {
            return Err(Error::config(
                field("pool"),
                "required: the ranges iotlan may hand out, outside your router's DHCP range \
                 (use [] when only reservations are handed out)",
            ));
        };
        let mut ranges: Vec<Span> = Vec::new();
        for (i, entry) in pool.iter().enumerate() {
            let f = field(&format!("pool[{i}]"));
            let (fam, span) = parse_span(entry).map_err(|e| Error::config(&f, e))?;
            if fam != family || !in_subnet(&span) {
                return Err(Error::config(
                    f,
                    format!("{entry:?} is outside the subnet {net}"),
                ));
            }
            if let Some(gw) = gateway {
                if span.contains(to_u128(gw)) {
                    return Err(Error::config(
                        f,
                        format!("{entry:?} contains the gateway {gw}; split the range around it"),
                    ));
                }
            }
            if let Some(j) = ranges.iter().position(|r| r.overlaps(&span)) {
                return Err(Error::config(
                    f,
                    format!("{entry:?} overlaps {prefix}pool[{j}]"),
                ));
            }
            ranges.push(span);
        }

        let mut never: Vec<Span> = Vec::new();
        for (i, entry) in exclude.iter().enumerate() {
            let f = field(&format!("exclude[{i}]"));
            let (fam, span) = parse_span(entry).map_err(|e| Error::config(&f, e))?;
            if fam != family || !in_subnet(&span) {
                return Err(Error::config(
                    f,
                    format!("{entry:?} is outside the subnet {net}"),
                ));
            }
            never.push(span);
        }
        never.push(Span::point(whole.start));
        if family == Family::V4 {
            never.push(Span::point(whole.end));
        }
        if let Some(gw) = gateway {
            never.push(Span::point(to_u128(gw)));
        }
        let ranges = SpanSet::new(ranges);
        let never = SpanSet::new(never);
        let search = ranges.subtract(&never);
        Ok(FamilyPool {
            family,
            subnet: net,
            gateway,
            ranges,
            never,
            search,
            reserved: 0,
        })
    }

    /// Why `ip` (of this family) may never be handed out, if so.
    pub(super) fn forbidden(&self, ip: IpAddr) -> Option<String> {
        let v = to_u128(ip);
        let whole = Span::of_network(&self.subnet);
        if !whole.contains(v) {
            return Some(format!("it is outside the subnet {}", self.subnet));
        }
        if v == whole.start {
            return Some(format!("it is the network address of {}", self.subnet));
        }
        if self.family == Family::V4 && v == whole.end {
            return Some(format!("it is the broadcast address of {}", self.subnet));
        }
        if self.gateway == Some(ip) {
            return Some("it is the gateway".to_string());
        }
        if self.never.contains(v) {
            return Some("it is excluded (ipam exclude)".to_string());
        }
        None
    }

    pub(super) fn describe(&self) -> String {
        let ranges: Vec<String> = self
            .ranges
            .spans()
            .iter()
            .map(|s| s.display(self.family))
            .collect();
        format!("{} [{}]", self.subnet, ranges.join(", "))
    }
}
