//! Address arithmetic. Addresses of one family are handled as `u128` integers; a pool is a sorted set of
//! disjoint inclusive spans that can be indexed (`nth`) and walked from any index with wrap-around, so
//! neither a /16 nor an IPv6 /64 is ever expanded into a list.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

pub(crate) fn from_u128(family: Family, v: u128) -> IpAddr {
    match family {
        // Values of an IPv4 span always fit in 32 bits.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// An inclusive span of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Span {
    pub start: u128,
    pub end: u128,
}

impl Span {
    pub fn point(v: u128) -> Span {
        Span { start: v, end: v }
    }

    /// Number of addresses (saturating for the whole IPv6 space, which no pool may be).
    pub fn len(&self) -> u128 {
        (self.end - self.start).saturating_add(1)
    }

    pub fn contains(&self, v: u128) -> bool {
        self.start <= v && v <= self.end
    }

    pub fn overlaps(&self, other: &Span) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    pub fn of_network(net: &IpNetwork) -> Span {
        Span {
            start: to_u128(net.network()),
            end: to_u128(net.broadcast()),
        }
    }

    pub fn display(&self, family: Family) -> String {
        if self.start == self.end {
            from_u128(family, self.start).to_string()
        } else {
            format!(
                "{}-{}",
                from_u128(family, self.start),
                from_u128(family, self.end)
            )
        }
    }
}

/// Parses a pool or exclusion entry: `a.b.c.d`, `a.b.c.d-e.f.g.h` (inclusive) or a CIDR `a.b.c.d/n`.
pub(crate) fn parse_span(s: &str) -> Result<(Family, Span), String> {
    let s = s.trim();
    if s.contains('/') {
        let net = IpNetwork::from_str(s).map_err(|e| format!("{s:?} is not a CIDR block: {e}"))?;
        if net.ip() != net.network() {
            return Err(format!(
                "{s:?} has host bits set; the block is {}/{}",
                net.network(),
                net.prefix()
            ));
        }
        return Ok((Family::of(&net.ip()), Span::of_network(&net)));
    }
    if let Some((a, b)) = s.split_once('-') {
        let start = parse_ip(a.trim())?;
        let end = parse_ip(b.trim())?;
        if Family::of(&start) != Family::of(&end) {
            return Err(format!("{s:?} mixes IPv4 and IPv6"));
        }
        let span = Span {
            start: to_u128(start),
            end: to_u128(end),
        };
        if span.start > span.end {
            return Err(format!("{s:?} is reversed: {start} comes after {end}"));
        }
        return Ok((Family::of(&start), span));
    }
    let ip = parse_ip(s)?;
    Ok((Family::of(&ip), Span::point(to_u128(ip))))
}

/// Parses a CIDR block such as `192.168.20.0/24`; a bare address (no `/`) is refused.
pub(crate) fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    let s = s.trim();
    if !s.contains('/') {
        return Err(format!(
            "{s:?} is not a CIDR block such as 192.168.20.0/24 (the /prefix is missing)"
        ));
    }
    IpNetwork::from_str(s).map_err(|e| format!("{s:?} is not a CIDR block: {e}"))
}

pub(crate) fn parse_ip(s: &str) -> Result<IpAddr, String> {
    IpAddr::from_str(s).map_err(|_| format!("{s:?} is not an IP address"))
}

/// A sorted set of disjoint, non-adjacent spans with an index over them.
#[derive(Clone, Debug, Default)]
pub(crate) struct SpanSet {
    spans: Vec<Span>,
    /// `firsts[k]` is the index (within the set) of `spans[k].start`.
    firsts: Vec<u128>,
    total: u128,
}

impl SpanSet {
    pub fn new(mut spans: Vec<Span>) -> SpanSet {
        spans.sort();
        let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
        for s in spans {
            match merged.last_mut() {
                Some(last) if s.start <= last.end.saturating_add(1) => {
                    last.end = last.end.max(s.end);
                }
                _ => merged.push(s),
            }
        }
        let mut firsts = Vec::with_capacity(merged.len());
        let mut total: u128 = 0;
        for s in &merged {
            firsts.push(total);
            total = total.saturating_add(s.len());
        }
        SpanSet {
            spans: merged,
            firsts,
            total,
        }
    }

    /// The addresses of `self` that are not in `holes`.
    pub fn subtract(&self, holes: &SpanSet) -> SpanSet {
        let mut out = Vec::new();
        for s in &self.spans {
            let mut start = s.start;
            let mut done = false;
            // Holes that may overlap s, in order.
            let first = holes.spans.partition_point(|h| h.end < s.start);
            for h in &holes.spans[first..] {
                if h.start > s.end {
                    break;
                }
                if h.start > start {
                    out.push(Span {
                        start,
                        end: h.start - 1,
                    });
                }
                if h.end >= s.end {
                    done = true;
                    break;
                }
                start = start.max(h.end + 1);
            }
            if !done && start <= s.end {
                out.push(Span { start, end: s.end });
            }
        }
        SpanSet::new(out)
    }

    pub fn len(&self) -> u128 {
        self.total
    }

    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    pub fn contains(&self, v: u128) -> bool {
        let k = self.spans.partition_point(|s| s.end < v);
        self.spans.get(k).is_some_and(|s| s.contains(v))
    }

    /// The address at index `i` (`i < len`).
    pub fn nth(&self, i: u128) -> u128 {
        let k = self.firsts.partition_point(|&f| f <= i) - 1;
        self.spans[k].start + (i - self.firsts[k])
    }

    /// Walks every address of the set exactly once: index `first % len`, then onwards in strides of
    /// `stride` (made coprime with `len`, so the walk is a permutation), wrapping around.
    pub fn walk(&self, first: u128, stride: u128) -> impl Iterator<Item = u128> + '_ {
        let n = self.total;
        let (mut i, step) = if n == 0 {
            (0, 0)
        } else {
            (first % n, coprime(stride % n, n))
        };
        (0..n).map(move |_| {
            let v = self.nth(i);
            // i + step mod n, without overflow
            i = if i >= n - step {
                i - (n - step)
            } else {
                i + step
            };
            v
        })
    }
}

/// The first of `s`, `s + 1`, ... (wrapping to 1) that is coprime with `n`; 0 when `n` is 1.
fn coprime(s: u128, n: u128) -> u128 {
    if n <= 1 {
        return 0;
    }
    let mut s = s.max(1);
    while gcd(s, n) != 1 {
        s = if s + 1 >= n { 1 } else { s + 1 };
    }
    s
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// 64-bit FNV-1a: the stable hash from which an identity's starting slot in the pool is derived.
/// Written down here (offset basis 0xcbf29ce484222325, prime 0x100000001b3) so the slot never changes
/// between builds or Rust versions.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[(u128, u128)]) -> SpanSet {
        SpanSet::new(v.iter().map(|&(start, end)| Span { start, end }).collect())
    }

    #[test]
    fn merge_and_index() {
        let s = set(&[(10, 12), (13, 15), (20, 20), (11, 11)]);
        assert_eq!(s.spans(), &[Span { start: 10, end: 15 }, Span::point(20)]);
        assert_eq!(s.len(), 7);
        assert!(s.contains(15) && s.contains(20) && !s.contains(16) && !s.contains(9));
        let walk: Vec<u128> = s.walk(5, 1).collect();
        assert_eq!(walk, vec![15, 20, 10, 11, 12, 13, 14]);
        let walk: Vec<u128> = s.walk(12, 3).collect();
        assert_eq!(walk, vec![15, 11, 14, 10, 13, 20, 12]);
        assert_eq!(SpanSet::default().walk(3, 5).count(), 0);
        assert_eq!(set(&[(4, 4)]).walk(9, 9).collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn every_walk_is_a_permutation() {
        let base = set(&[(100, 159), (200, 200), (300, 339)]); // 101 addresses
        for last in [100u128, 101, 105, 111, 200, 339] {
            let s = base.subtract(&set(&[(last + 1, 400)]));
            for stride in [0u128, 1, 2, 3, 4, 6, 50, 99, 1 << 70] {
                for first in [0u128, 1, 7, 1 << 90] {
                    let mut w: Vec<u128> = s.walk(first, stride).collect();
                    assert_eq!(w.len() as u128, s.len());
                    w.sort();
                    w.dedup();
                    assert_eq!(
                        w.len() as u128,
                        s.len(),
                        "len={} stride={stride} first={first}",
                        s.len()
                    );
                }
            }
        }
    }

    #[test]
    fn subtract_holes() {
        let s = set(&[(0, 9), (20, 29)]);
        let holes = set(&[(0, 0), (5, 6), (9, 21), (29, 40)]);
        let d = s.subtract(&holes);
        assert_eq!(
            d.spans(),
            &[
                Span { start: 1, end: 4 },
                Span { start: 7, end: 8 },
                Span { start: 22, end: 28 }
            ]
        );
        assert_eq!(s.subtract(&set(&[(0, 100)])).len(), 0);
    }

    #[test]
    fn parse_entries() {
        let (f, s) = parse_span("192.168.20.200-192.168.20.239").unwrap();
        assert_eq!((f, s.len()), (Family::V4, 40));
        let (_, s) = parse_span("192.168.20.250/31").unwrap();
        assert_eq!(s.len(), 2);
        let (f, s) = parse_span("fd20::100-fd20::1ff").unwrap();
        assert_eq!((f, s.len()), (Family::V6, 256));
        assert!(parse_span("192.168.20.9-192.168.20.1")
            .unwrap_err()
            .contains("reversed"));
        assert!(parse_span("192.168.20.1/24")
            .unwrap_err()
            .contains("host bits"));
        assert!(parse_span("192.168.20.1-fd20::1").is_err());
        assert!(parse_span("nope").is_err());
    }

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }
}
