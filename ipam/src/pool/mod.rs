//! A validated pool: the configuration turned into address sets that the allocator walks.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::addr::{fnv1a64, from_u128, parse_cidr, parse_ip, to_u128, Family, Span, SpanSet};
use crate::config::{PoolConfig, RouteConfig};
use crate::error::Error;
use crate::lease::{Allocation, Assigned, Dns, Lease, Route};
use crate::names;

mod family;

use family::FamilyPool;

/// A validated pool of one network: one or two families, reservations, routes and DNS.
#[derive(Clone, Debug)]
pub struct Pool {
    network: String,
    families: Vec<FamilyPool>,
    /// identity -> its reserved addresses (at most one per family)
    reservations: BTreeMap<String, Vec<IpAddr>>,
    /// reserved address -> identity
    reserved: BTreeMap<IpAddr, String>,
    routes: Vec<(IpNetwork, Option<IpAddr>)>,
    dns: Dns,
}

impl Pool {
    /// Validates `cfg` for the network `network` (the CNI config's `name`, which also names the store
    /// directory). Every error names the offending field.
    pub fn new(network: &str, cfg: &PoolConfig) -> Result<Pool, Error> {
        names::validate_network(network)?;
        let mut families = vec![FamilyPool::new(
            "",
            None,
            &cfg.subnet,
            cfg.gateway.as_deref(),
            cfg.pool.as_deref(),
            &cfg.exclude,
        )?];
        if let Some(v6) = &cfg.ipv6 {
            if families[0].family != Family::V4 {
                return Err(Error::config(
                    "ipv6",
                    "only allowed when the top-level subnet is IPv4 (it makes the pool dual-stack)",
                ));
            }
            let fp = FamilyPool::new(
                "ipv6.",
                Some(Family::V6),
                &v6.subnet,
                v6.gateway.as_deref(),
                v6.pool.as_deref(),
                &v6.exclude,
            )?;
            families.push(fp);
        }

        let mut reservations: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        let mut reserved: BTreeMap<IpAddr, String> = BTreeMap::new();
        for (identity, value) in &cfg.reservations {
            let field = format!("reservations[{identity:?}]");
            names::validate_identity(identity).map_err(|e| Error::config(&field, e.to_string()))?;
            let addrs = value.addresses();
            if addrs.is_empty() {
                return Err(Error::config(field, "no address given"));
            }
            let mut ips: Vec<IpAddr> = Vec::new();
            for a in addrs {
                let ip = parse_ip(a.trim()).map_err(|e| Error::config(&field, e))?;
                let fam = Family::of(&ip);
                let Some(fp) = families.iter_mut().find(|f| f.family == fam) else {
                    return Err(Error::config(
                        field,
                        format!("{ip}: no {fam} subnet is configured"),
                    ));
                };
                if let Some(why) = fp.forbidden(ip) {
                    return Err(Error::config(field, format!("{ip}: {why}")));
                }
                if ips.iter().any(|o| Family::of(o) == fam) {
                    return Err(Error::config(
                        field,
                        format!("{ip}: a second {fam} address (one per family)"),
                    ));
                }
                if let Some(other) = reserved.get(&ip) {
                    return Err(Error::config(
                        field,
                        format!("{ip} is also reserved for {other}"),
                    ));
                }
                fp.reserved += 1;
                reserved.insert(ip, identity.clone());
                ips.push(ip);
            }
            reservations.insert(identity.clone(), ips);
        }
        for fp in &mut families {
            let taken: Vec<Span> = reserved
                .keys()
                .filter(|ip| Family::of(ip) == fp.family)
                .map(|ip| Span::point(to_u128(*ip)))
                .collect();
            fp.search = fp.search.subtract(&SpanSet::new(taken));
        }

        let mut routes = Vec::new();
        for (i, r) in cfg.routes.iter().enumerate() {
            routes.push(validate_route(i, r, &families)?);
        }

        let mut nameservers = Vec::new();
        for (i, ns) in cfg.dns.nameservers.iter().enumerate() {
            let ip = parse_ip(ns.trim())
                .map_err(|e| Error::config(format!("dns.nameservers[{i}]"), e))?;
            nameservers.push(ip.to_string());
        }
        let dns = Dns {
            nameservers,
            domain: cfg.dns.domain.clone().filter(|d| !d.trim().is_empty()),
            search: cfg.dns.search.clone(),
            options: cfg.dns.options.clone(),
        };

        Ok(Pool {
            network: network.to_string(),
            families,
            reservations,
            reserved,
            routes,
            dns,
        })
    }

    /// The network name this pool belongs to.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The families of this pool: one, or IPv4 then IPv6 when dual-stack.
    pub fn families(&self) -> Vec<Family> {
        self.families.iter().map(|f| f.family).collect()
    }

    /// The subnet of `family`, if the pool has that family.
    pub fn subnet(&self, family: Family) -> Option<IpNetwork> {
        self.family(family).map(|f| f.subnet)
    }

    /// How many addresses the pool can hand out, all families together: the ranges less exclusions,
    /// gateway, network and broadcast addresses, plus reserved addresses outside the ranges.
    pub fn size(&self) -> u64 {
        self.families
            .iter()
            .map(|f| self.family_size(f.family))
            .fold(0u64, u64::saturating_add)
    }

    /// [`Pool::size`] for one family.
    pub fn family_size(&self, family: Family) -> u64 {
        self.family(family).map_or(0, |f| {
            u64::try_from(f.search.len().saturating_add(f.reserved)).unwrap_or(u64::MAX)
        })
    }

    /// The first family with no free address left, given the current leases: an ADD needs one
    /// address of every family, so a dual-stack pool whose IPv4 half is full serves no ADD.
    pub fn exhausted_family(&self, leases: &[Lease]) -> Option<Family> {
        self.families().into_iter().find(|&fam| {
            let held = leases
                .iter()
                .filter(|l| Family::of(&l.ip) == fam)
                .filter(|l| self.check_assignable(l.ip, &l.identity).is_ok())
                .count() as u64;
            self.family_size(fam) <= held
        })
    }

    /// How many addresses are still free, given the current leases.
    pub fn free(&self, leases: &[Lease]) -> u64 {
        let held = leases
            .iter()
            .filter(|l| self.check_assignable(l.ip, &l.identity).is_ok())
            .count() as u64;
        self.size().saturating_sub(held)
    }

    /// The address reserved for `identity` in `family`, if any.
    pub fn reservation(&self, identity: &str, family: Family) -> Option<IpAddr> {
        self.reservations
            .get(identity)
            .and_then(|ips| ips.iter().copied().find(|ip| Family::of(ip) == family))
    }

    /// The identity `ip` is reserved for, if any.
    pub fn reserved_for(&self, ip: IpAddr) -> Option<&str> {
        self.reserved.get(&ip).map(String::as_str)
    }

    /// Whether `ip` may be handed to `identity`: inside a configured subnet, not excluded, not the gateway,
    /// network or broadcast address, not reserved for another identity, and inside the pool ranges unless
    /// it is reserved for this identity. The error says why not.
    pub fn check_assignable(&self, ip: IpAddr, identity: &str) -> Result<(), Error> {
        let not = |why: String| Error::NotAllowed { ip, why };
        let fam = Family::of(&ip);
        let Some(fp) = self.family(fam) else {
            return Err(not(format!("pool {} has no {fam} subnet", self.network)));
        };
        if let Some(why) = fp.forbidden(ip) {
            return Err(not(why));
        }
        match self.reserved.get(&ip) {
            Some(owner) if owner == identity => Ok(()),
            Some(owner) => Err(not(format!("it is reserved for {owner}"))),
            None if fp.ranges.contains(to_u128(ip)) => Ok(()),
            None => Err(not(format!(
                "it is outside the pool ranges of {}",
                fp.describe()
            ))),
        }
    }

    /// The slot an identity's search starts from: FNV-1a 64 of the identity's UTF-8 bytes, modulo the
    /// number of searchable addresses. Stable across builds, so a pod tends to get the same address even
    /// after its store is lost.
    pub fn slot(&self, family: Family, identity: &str) -> u128 {
        let n = self.family(family).map_or(0, |f| f.search.len());
        if n == 0 {
            0
        } else {
            u128::from(fnv1a64(identity.as_bytes())) % n
        }
    }

    /// The stride of an identity's search: FNV-1a 64 of the identity's bytes followed by a 0xff byte
    /// (never part of UTF-8), modulo the number of searchable addresses, then the next value coprime with
    /// it. Probing in identity-specific strides (double hashing) instead of one by one keeps occupied
    /// addresses from forming long runs, so a search in a 90 % full /16 costs about what it costs in a
    /// 90 % full /24 (about 10 probes on average).
    pub fn stride(&self, family: Family, identity: &str) -> u128 {
        let mut bytes = identity.as_bytes().to_vec();
        bytes.push(0xff);
        let n = self.family(family).map_or(1, |f| f.search.len().max(1));
        u128::from(fnv1a64(&bytes)) % n
    }

    /// The addresses the search may hand out to `identity` in `family`, in the order to try them: from
    /// [`Pool::slot`], in strides of [`Pool::stride`], each address once. Reserved addresses are never
    /// among them.
    pub fn candidates<'a>(
        &'a self,
        family: Family,
        identity: &str,
    ) -> impl Iterator<Item = IpAddr> + 'a {
        let slot = self.slot(family, identity);
        let stride = self.stride(family, identity);
        self.family(family).into_iter().flat_map(move |f| {
            f.search
                .walk(slot, stride)
                .map(move |v| from_u128(family, v))
        })
    }

    /// The error for a family with nothing left.
    pub fn exhausted(&self, family: Family) -> Error {
        Error::Exhausted {
            pool: self.family(family).map_or_else(
                || self.network.clone(),
                |f| format!("{} {}", self.network, f.describe()),
            ),
            family,
            size: self.family_size(family),
        }
    }

    /// What the CNI result carries for these leases: each address with its subnet's prefix and gateway,
    /// the configured routes of the families present (gateway filled in), and DNS.
    pub fn allocation(&self, leases: &[Lease]) -> Allocation {
        let mut sorted: Vec<&Lease> = leases.iter().collect();
        sorted.sort_by_key(|l| (Family::of(&l.ip), l.ip));
        let mut addresses = Vec::new();
        let mut present = Vec::new();
        for l in sorted {
            let fam = Family::of(&l.ip);
            let Some(fp) = self.family(fam) else { continue };
            let Ok(address) = IpNetwork::new(l.ip, fp.subnet.prefix()) else {
                continue;
            };
            addresses.push(Assigned {
                address,
                gateway: fp.gateway,
            });
            present.push(fam);
        }
        let routes = self
            .routes
            .iter()
            .filter(|(dst, _)| present.contains(&Family::of(&dst.ip())))
            .map(|(dst, gw)| Route {
                dst: *dst,
                gw: gw.or_else(|| self.family(Family::of(&dst.ip())).and_then(|f| f.gateway)),
            })
            .collect();
        Allocation {
            addresses,
            routes,
            dns: self.dns.clone(),
        }
    }

    fn family(&self, family: Family) -> Option<&FamilyPool> {
        self.families.iter().find(|f| f.family == family)
    }
}

fn validate_route(
    i: usize,
    r: &RouteConfig,
    families: &[FamilyPool],
) -> Result<(IpNetwork, Option<IpAddr>), Error> {
    let field = format!("routes[{i}].dst");
    let dst = parse_cidr(&r.dst).map_err(|e| Error::config(&field, e))?;
    if dst.prefix() == 0 {
        return Err(Error::config(
            field,
            format!(
                "{dst} is a default route; iotlan never installs a default route via this network \
                 (the pod's default route stays on its primary interface); list specific destinations"
            ),
        ));
    }
    if dst.ip() != dst.network() {
        return Err(Error::config(
            field,
            format!(
                "{dst} has host bits set; the block is {}/{}",
                dst.network(),
                dst.prefix()
            ),
        ));
    }
    let fam = Family::of(&dst.ip());
    let Some(fp) = families.iter().find(|f| f.family == fam) else {
        return Err(Error::config(
            field,
            format!("{dst}: no {fam} subnet is configured"),
        ));
    };
    let gw = match r.gw.as_deref().map(str::trim).filter(|g| !g.is_empty()) {
        None => None,
        Some(g) => {
            let field = format!("routes[{i}].gw");
            let ip = parse_ip(g).map_err(|e| Error::config(&field, e))?;
            if !fp.subnet.contains(ip) {
                return Err(Error::config(
                    field,
                    format!("{ip} is not on-link: it must be inside {}", fp.subnet),
                ));
            }
            Some(ip)
        }
    };
    Ok((dst, gw))
}
