//! Over 500 lines: one contract suite, every store runs every case.
//!
//! The store contract: the behaviour every [`Store`] must show, whatever keeps its state.
//!
//! A store's test file includes this module and instantiates the suite with a [`Fixture`]:
//!
//! ```ignore
//! #[path = "support/contract.rs"]
//! mod contract;
//! contract::store_contract_tests!(my_store, || Box::new(MyFixture::new()));
//! ```
//!
//! Every call of [`Fixture::store`] must return a new handle on the same state (another process or
//! node, as far as the store can tell), so the concurrency case exercises the store's own exclusion.
//!
//! Over 500 lines on purpose: the suite is one list, each case a function and the macro below that
//! instantiates every case for a store; split, a case could be added without its instantiation. It is
//! included by path by several test binaries (tests/store, tests/kubernetes, the node agent's), each
//! using a different part of it: hence `allow(dead_code)`.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use iotlan_ipam::{AllocRequest, Attachment, Error, Lease, Pool, PoolConfig, Store};

/// A fresh, empty store and a way to open more handles on it.
pub trait Fixture: Send + Sync {
    fn store(&self) -> Box<dyn Store>;
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn pool(network: &str, json: serde_json::Value) -> Pool {
    let cfg: PoolConfig = serde_json::from_value(json).unwrap();
    Pool::new(network, &cfg).unwrap()
}

pub fn req(identity: &str, cid: &str) -> AllocRequest {
    AllocRequest {
        identity: identity.to_string(),
        attachment: Attachment::new(cid, "net1"),
        requested: vec![],
        ..AllocRequest::default()
    }
}

pub fn req_ip(identity: &str, cid: &str, requested: &[&str]) -> AllocRequest {
    AllocRequest {
        requested: requested.iter().map(|s| ip(s)).collect(),
        ..req(identity, cid)
    }
}

pub fn ips(leases: &[Lease]) -> Vec<IpAddr> {
    leases.iter().map(|l| l.ip).collect()
}

/// A small IPv4 pool: 12 addresses, .205 excluded, a reservation inside and one outside the ranges.
pub fn v4_pool() -> Pool {
    pool(
        "iot",
        serde_json::json!({
            "type": "iotlan-ipam",
            "subnet": "192.168.20.0/24",
            "gateway": "192.168.20.1",
            "pool": ["192.168.20.200-192.168.20.209", "192.168.20.250/31"],
            "exclude": ["192.168.20.205"],
            "reservations": {
                "home-assistant/home-assistant-0": "192.168.20.100",
                "iot/esphome-0": "192.168.20.201"
            },
            "routes": [{ "dst": "192.168.30.0/24" }]
        }),
    )
}

pub fn dual_pool() -> Pool {
    pool(
        "iot",
        serde_json::json!({
            "subnet": "192.168.20.0/24",
            "gateway": "192.168.20.1",
            "pool": ["192.168.20.200-192.168.20.239"],
            "ipv6": { "subnet": "fd20::/64", "gateway": "fd20::1", "pool": ["fd20::100-fd20::1ff"] },
            "reservations": { "iot/esphome-0": ["192.168.20.101", "fd20::101"],
                              "iot/v6only-0": "fd20::102" }
        }),
    )
}

/// Asserts the invariants that hold after any sequence of operations.
pub fn assert_consistent(pool: &Pool, store: &dyn Store) {
    let leases = store.leases().unwrap();
    let mut seen = HashSet::new();
    for l in &leases {
        assert!(seen.insert(l.ip), "{} is held twice: {leases:?}", l.ip);
        if let Some(owner) = pool.reserved_for(l.ip) {
            assert_eq!(
                owner, l.identity,
                "reserved {} handed to {}",
                l.ip, l.identity
            );
        }
        assert!(
            pool.check_assignable(l.ip, &l.identity).is_ok(),
            "{} should never have been handed to {}",
            l.ip,
            l.identity
        );
    }
}

pub fn reservation_wins(f: &dyn Fixture) {
    let pool = v4_pool();
    let s = f.store();
    let l = s
        .allocate(&pool, &req("home-assistant/home-assistant-0", "c1"))
        .unwrap();
    assert_eq!(ips(&l), vec![ip("192.168.20.100")]);
    assert_eq!(l[0].identity, "home-assistant/home-assistant-0");
    assert_eq!(
        (l[0].container_id.as_str(), l[0].ifname.as_str()),
        ("c1", "net1")
    );
    // The reserved address inside the pool is never handed to anyone else.
    for i in 0..9 {
        match s.allocate(&pool, &req(&format!("ns/other-{i}"), &format!("o{i}"))) {
            Ok(l) => assert_ne!(l[0].ip, ip("192.168.20.201")),
            Err(Error::Exhausted { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let l = s.allocate(&pool, &req("iot/esphome-0", "c2")).unwrap();
    assert_eq!(ips(&l), vec![ip("192.168.20.201")]);
    assert_consistent(&pool, &*s);
}

pub fn requested_ip(f: &dyn Fixture) {
    let pool = v4_pool();
    let s = f.store();
    let l = s
        .allocate(&pool, &req_ip("ns/a", "a", &["192.168.20.207"]))
        .unwrap();
    assert_eq!(ips(&l), vec![ip("192.168.20.207")]);

    let held = s
        .allocate(&pool, &req_ip("ns/b", "b", &["192.168.20.207"]))
        .unwrap_err();
    match held {
        Error::Conflict {
            ip: got,
            ref holder_identity,
            ref holder_container,
            ..
        } => {
            assert_eq!(got, ip("192.168.20.207"));
            assert_eq!(
                (holder_identity.as_str(), holder_container.as_str()),
                ("ns/a", "a")
            );
            assert!(held.to_string().contains("ns/a"), "{held}");
        }
        other => panic!("expected a conflict, got {other}"),
    }
    for (bad, why) in [
        ("192.168.21.5", "outside the subnet"),
        ("192.168.20.50", "outside the pool"),
        ("192.168.20.205", "excluded"),
        ("192.168.20.1", "gateway"),
        ("192.168.20.201", "reserved for iot/esphome-0"),
        ("192.168.20.255", "broadcast"),
        ("fd20::5", "no IPv6"),
    ] {
        match s.allocate(&pool, &req_ip("ns/c", "c", &[bad])) {
            Err(e @ Error::NotAllowed { .. }) => {
                assert!(e.to_string().contains(why), "{bad}: {e}")
            }
            other => panic!("{bad}: expected NotAllowed, got {other:?}"),
        }
    }
    assert!(s.find(&Attachment::new("c", "net1")).unwrap().is_empty());
    // A reserved address may be requested by its own identity, also outside the ranges.
    let l = s
        .allocate(
            &pool,
            &req_ip("home-assistant/home-assistant-0", "h", &["192.168.20.100"]),
        )
        .unwrap();
    assert_eq!(ips(&l), vec![ip("192.168.20.100")]);
    // A request that differs from the identity's reservation is refused, not ignored.
    let e = s
        .allocate(&pool, &req_ip("iot/esphome-0", "e", &["192.168.20.202"]))
        .unwrap_err();
    assert!(matches!(e, Error::NotAllowed { .. }), "{e}");
    assert_consistent(&pool, &*s);
}

pub fn sticky_after_release(f: &dyn Fixture) {
    let pool = v4_pool();
    let s = f.store();
    let first = s.allocate(&pool, &req("media/jellyfin-0", "j1")).unwrap();
    // Someone else takes the hash slot's neighbourhood while jellyfin is away.
    assert_eq!(s.release(&Attachment::new("j1", "net1")).unwrap(), first);
    let again = s.allocate(&pool, &req("media/jellyfin-0", "j2")).unwrap();
    assert_eq!(ips(&again), ips(&first));
    assert_eq!(again[0].container_id, "j2");
    // Its previous address stays sticky even when other pods came and went in between.
    s.release(&Attachment::new("j2", "net1")).unwrap();
    for i in 0..4 {
        s.allocate(&pool, &req(&format!("ns/p{i}"), &format!("p{i}")))
            .unwrap();
    }
    let third = s.allocate(&pool, &req("media/jellyfin-0", "j3")).unwrap();
    if !s
        .leases()
        .unwrap()
        .iter()
        .any(|l| l.ip == first[0].ip && l.container_id != "j3")
    {
        assert_eq!(ips(&third), ips(&first));
    }
    assert_consistent(&pool, &*s);
}

pub fn hash_slot_is_stable(f: &dyn Fixture) {
    let pool = v4_pool();
    // The first free address from the identity's slot, in an empty store: the same on every store.
    let expected = pool.candidates(iotlan_ipam::Family::V4, "ns/slot").next();
    let s = f.store();
    let l = s.allocate(&pool, &req("ns/slot", "s1")).unwrap();
    assert_eq!(Some(l[0].ip), expected);
}

pub fn idempotent_add_and_del(f: &dyn Fixture) {
    let pool = dual_pool();
    let s = f.store();
    let a = s.allocate(&pool, &req("ns/a", "a")).unwrap();
    assert_eq!(a.len(), 2);
    let again = s.allocate(&pool, &req("ns/a", "a")).unwrap();
    assert_eq!(ips(&again), ips(&a));
    assert_eq!(s.leases().unwrap().len(), 2);
    assert_eq!(s.find(&Attachment::new("a", "net1")).unwrap(), a);
    let freed = s.release(&Attachment::new("a", "net1")).unwrap();
    assert_eq!(ips(&freed), ips(&a));
    assert!(s.release(&Attachment::new("a", "net1")).unwrap().is_empty());
    assert!(s
        .release(&Attachment::new("never", "net1"))
        .unwrap()
        .is_empty());
    assert!(s.leases().unwrap().is_empty());
}

pub fn second_interface_gets_its_own_address(f: &dyn Fixture) {
    let pool = v4_pool();
    let s = f.store();
    let a = s.allocate(&pool, &req("ns/multi", "m")).unwrap();
    let mut r = req("ns/multi", "m");
    r.attachment.ifname = "net2".into();
    let b = s.allocate(&pool, &r).unwrap();
    assert_ne!(a[0].ip, b[0].ip);
    assert_eq!(s.release(&Attachment::new("m", "net1")).unwrap(), a);
    assert_eq!(s.find(&Attachment::new("m", "net2")).unwrap(), b);
}

pub fn gc_frees_exactly_the_invalid(f: &dyn Fixture) {
    let pool = v4_pool();
    let s = f.store();
    let mut all = Vec::new();
    for i in 0..6 {
        all.extend(
            s.allocate(&pool, &req(&format!("ns/g{i}"), &format!("g{i}")))
                .unwrap(),
        );
    }
    let valid = vec![Attachment::new("g1", "net1"), Attachment::new("g4", "net1")];
    let freed = s.gc(&valid).unwrap();
    let freed_ids: BTreeSet<String> = freed.iter().map(|l| l.container_id.clone()).collect();
    assert_eq!(
        freed_ids,
        ["g0", "g2", "g3", "g5"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let left: BTreeSet<String> = s
        .leases()
        .unwrap()
        .iter()
        .map(|l| l.container_id.clone())
        .collect();
    assert_eq!(left, ["g1", "g4"].iter().map(|s| s.to_string()).collect());
    assert!(s.gc(&valid).unwrap().is_empty());
    assert!(s.find(&Attachment::new("g0", "net1")).unwrap().is_empty());
}

pub fn exhaustion_names_pool_and_size(f: &dyn Fixture) {
    let pool = v4_pool();
    let s = f.store();
    // 12 addresses in the ranges, less .205 (excluded) and .201 (reserved): 10 searchable.
    let mut got = BTreeSet::new();
    for i in 0..10 {
        let l = s
            .allocate(&pool, &req(&format!("ns/x{i}"), &format!("x{i}")))
            .unwrap();
        got.insert(l[0].ip);
    }
    let expected: BTreeSet<IpAddr> = [
        "200", "202", "203", "204", "206", "207", "208", "209", "250", "251",
    ]
    .iter()
    .map(|h| ip(&format!("192.168.20.{h}")))
    .collect();
    assert_eq!(got, expected);
    let e = s.allocate(&pool, &req("ns/late", "late")).unwrap_err();
    match &e {
        Error::Exhausted {
            pool: name, size, ..
        } => {
            assert!(
                name.contains("iot") && name.contains("192.168.20.0/24"),
                "{e}"
            );
            assert_eq!(*size, 12); // 10 searchable + the two reserved addresses
        }
        other => panic!("expected Exhausted, got {other}"),
    }
    // Reservations still work when the pool is exhausted.
    let l = s
        .allocate(&pool, &req("home-assistant/home-assistant-0", "h"))
        .unwrap();
    assert_eq!(ips(&l), vec![ip("192.168.20.100")]);
    s.release(&Attachment::new("x3", "net1")).unwrap();
    s.allocate(&pool, &req("ns/late", "late")).unwrap();
    assert_consistent(&pool, &*s);
}

pub fn dual_stack(f: &dyn Fixture) {
    let pool = dual_pool();
    let s = f.store();
    let l = s.allocate(&pool, &req("iot/esphome-0", "e")).unwrap();
    assert_eq!(ips(&l), vec![ip("192.168.20.101"), ip("fd20::101")]);
    // A reservation of one family; the other family comes from the pool.
    let l = s.allocate(&pool, &req("iot/v6only-0", "v")).unwrap();
    assert!(l[0].ip.is_ipv4() && l[1].ip == ip("fd20::102"), "{l:?}");
    let l = s
        .allocate(&pool, &req_ip("ns/r", "r", &["fd20::1a0"]))
        .unwrap();
    assert!(l[0].ip.is_ipv4() && l[1].ip == ip("fd20::1a0"), "{l:?}");
    let alloc = pool.allocation(&l);
    assert_eq!(alloc.addresses.len(), 2);
    assert_eq!(alloc.addresses[1].address.prefix(), 64);
    assert_eq!(alloc.addresses[1].gateway, Some(ip("fd20::1")));
    let e = s
        .allocate(&pool, &req_ip("ns/two", "t", &["fd20::1a1", "fd20::1a2"]))
        .unwrap_err();
    assert!(matches!(e, Error::NotAllowed { .. }), "{e}");
    assert_consistent(&pool, &*s);
}

pub fn ipv6_only(f: &dyn Fixture) {
    let pool = pool(
        "iot6",
        serde_json::json!({
            "subnet": "fd30::/64", "gateway": "fd30::1",
            "pool": ["fd30::2-fd30::ff"], "exclude": ["fd30::10-fd30::1f"]
        }),
    );
    let s = f.store();
    let mut seen = HashSet::new();
    for i in 0..300 {
        match s.allocate(&pool, &req(&format!("ns/v{i}"), &format!("v{i}"))) {
            Ok(l) => {
                assert_eq!(l.len(), 1);
                let v = l[0].ip;
                assert!(seen.insert(v));
                assert!(v != ip("fd30::") && v != ip("fd30::1"), "{v}");
                let last = match v {
                    IpAddr::V6(a) => a.octets()[15],
                    IpAddr::V4(_) => panic!("v4 from a v6 pool"),
                };
                assert!(!(0x10..=0x1f).contains(&last), "{v} is excluded");
            }
            Err(Error::Exhausted { size, .. }) => {
                // ::2 to ::ff is 254 addresses, less 16 excluded.
                assert_eq!(size, 238);
                assert_eq!(seen.len(), 238);
                return;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("never exhausted");
}

pub fn stale_sandbox_is_taken_over(f: &dyn Fixture) {
    /// The CNI layer's verdict: the old sandbox's link is gone.
    struct Gone;
    impl iotlan_ipam::SandboxCheck for Gone {
        fn is_gone(&self, _: &iotlan_ipam::Lease) -> bool {
            true
        }
    }
    let pool = v4_pool();
    let s = f.store();
    let old = s
        .allocate(&pool, &req("home-assistant/home-assistant-0", "old"))
        .unwrap();
    // The pod is recreated while the old sandbox may still be up: nothing is taken over.
    match s.allocate(&pool, &req("home-assistant/home-assistant-0", "new")) {
        Err(iotlan_ipam::Error::StillInUse { holder, .. }) => {
            assert_eq!(holder.container_id, "old")
        }
        other => panic!("expected StillInUse, got {other:?}"),
    }
    assert_eq!(s.find(&Attachment::new("old", "net1")).unwrap(), old);
    // The old sandbox is gone (its DEL did not come): the new one takes the address over.
    let new = s
        .grant(&pool, &req("home-assistant/home-assistant-0", "new"), &Gone)
        .unwrap()
        .leases;
    assert_eq!(ips(&new), ips(&old));
    assert_eq!(new[0].container_id, "new");
    // The late DEL of the old sandbox must not free the new sandbox's address.
    assert!(s
        .release(&Attachment::new("old", "net1"))
        .unwrap()
        .is_empty());
    assert_eq!(s.find(&Attachment::new("new", "net1")).unwrap(), new);
    // A pool address of a recreated pod is taken over as well (sticky).
    let a = s.allocate(&pool, &req("ns/web-0", "w1")).unwrap();
    let b = s.grant(&pool, &req("ns/web-0", "w2"), &Gone).unwrap();
    assert_eq!(ips(&a), ips(&b.leases));
    // Reverting that grant puts the old lease back, never frees the address.
    s.revert(&b).unwrap();
    assert_eq!(s.find(&Attachment::new("w1", "net1")).unwrap(), a);
    assert!(s.find(&Attachment::new("w2", "net1")).unwrap().is_empty());
    assert_eq!(s.leases().unwrap().len(), 2);
    assert_consistent(&pool, &*s);
}

pub fn bad_names_are_refused(f: &dyn Fixture) {
    let pool = v4_pool();
    let s = f.store();
    for (cid, ifname) in [
        ("../etc", "net1"),
        ("ok", "a/b"),
        ("ok", "x:y"),
        ("", "net1"),
    ] {
        let mut r = req("ns/a", cid);
        r.attachment.ifname = ifname.to_string();
        let e = s.allocate(&pool, &r).unwrap_err();
        assert!(
            matches!(e, Error::InvalidName { .. }),
            "{cid} {ifname}: {e}"
        );
        let e = s.release(&r.attachment).unwrap_err();
        assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    }
    let e = s.allocate(&pool, &req("../../x", "ok")).unwrap_err();
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    assert!(s.leases().unwrap().is_empty());
}

/// Threads with their own handles allocate at once: every address distinct, every lease found.
pub fn concurrent_allocations(f: &dyn Fixture) {
    let pool = pool(
        "iot",
        serde_json::json!({ "subnet": "10.20.0.0/16", "pool": ["10.20.1.0-10.20.1.255"] }),
    );
    let results: Vec<Vec<Lease>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let store = f.store();
                let pool = &pool;
                scope.spawn(move || {
                    (0..25)
                        .map(|i| {
                            store
                                .allocate(pool, &req(&format!("ns/t{t}-{i}"), &format!("t{t}-{i}")))
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut seen = HashSet::new();
    for l in results.iter().flatten() {
        assert!(seen.insert(l.ip), "{} handed out twice", l.ip);
    }
    assert_eq!(seen.len(), 200);
    let s = f.store();
    assert_eq!(s.leases().unwrap().len(), 200);
    assert_consistent(&pool, &*s);
}

/// Instantiates every contract case as a `#[test]` in a module named `$name`.
#[macro_export]
macro_rules! store_contract_tests {
    ($name:ident, $fixture:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn fixture() -> Box<dyn $crate::contract::Fixture> {
                $fixture
            }
            #[test]
            fn reservation_wins() {
                $crate::contract::reservation_wins(&*fixture());
            }
            #[test]
            fn requested_ip() {
                $crate::contract::requested_ip(&*fixture());
            }
            #[test]
            fn sticky_after_release() {
                $crate::contract::sticky_after_release(&*fixture());
            }
            #[test]
            fn hash_slot_is_stable() {
                $crate::contract::hash_slot_is_stable(&*fixture());
            }
            #[test]
            fn idempotent_add_and_del() {
                $crate::contract::idempotent_add_and_del(&*fixture());
            }
            #[test]
            fn second_interface_gets_its_own_address() {
                $crate::contract::second_interface_gets_its_own_address(&*fixture());
            }
            #[test]
            fn gc_frees_exactly_the_invalid() {
                $crate::contract::gc_frees_exactly_the_invalid(&*fixture());
            }
            #[test]
            fn exhaustion_names_pool_and_size() {
                $crate::contract::exhaustion_names_pool_and_size(&*fixture());
            }
            #[test]
            fn dual_stack() {
                $crate::contract::dual_stack(&*fixture());
            }
            #[test]
            fn ipv6_only() {
                $crate::contract::ipv6_only(&*fixture());
            }
            #[test]
            fn stale_sandbox_is_taken_over() {
                $crate::contract::stale_sandbox_is_taken_over(&*fixture());
            }
            #[test]
            fn bad_names_are_refused() {
                $crate::contract::bad_names_are_refused(&*fixture());
            }
            #[test]
            fn concurrent_allocations() {
                $crate::contract::concurrent_allocations(&*fixture());
            }
        }
    };
}
