//! Property tests: random sequences of ADD (with and without requested IPs), DEL and GC, with random
//! identities, recreated pods and second interfaces, against the file store and the in-memory store.
//!
//! After every operation the store's state is compared with an independent model of the semantics:
//! no address held twice; reservations honoured and never handed to another identity; exclusions, the
//! gateway, network and broadcast addresses never handed out; the identity's previous address reused
//! (sticky); otherwise the first free address from the identity's hash slot; errors only when the model
//! says so, leaving the state unchanged; DEL and GC free exactly what they should.

use crate::contract;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use iotlan_ipam::{
    AllocRequest, Attachment, Avoid, AvoidReason, Error, Family, FileStore, Lease, MemoryStore,
    Pool, Store,
};
use proptest::prelude::*;

const IDENTITIES: &[&str] = &[
    "home-assistant/home-assistant-0", // reserved .100 (outside the ranges)
    "iot/esphome-0",                   // reserved .201 (inside the ranges) and fd20::101
    "media/jellyfin-0",
    "media/music-assistant-0",
    "iot/zigbee2mqtt-0",
    "iot/mosquitto-0",
    "c0ffee00",
    "default/web-1",
];

fn v4_pool() -> Pool {
    contract::pool(
        "iot",
        serde_json::json!({
            "subnet": "192.168.20.0/24", "gateway": "192.168.20.1",
            "pool": ["192.168.20.200-192.168.20.207", "192.168.20.250/31"],
            "exclude": ["192.168.20.203"],
            "reservations": { IDENTITIES[0]: "192.168.20.100", IDENTITIES[1]: "192.168.20.201" }
        }),
    )
}

fn dual_pool() -> Pool {
    contract::pool(
        "iot",
        serde_json::json!({
            "subnet": "192.168.20.0/24", "gateway": "192.168.20.1",
            "pool": ["192.168.20.200-192.168.20.207"],
            "exclude": ["192.168.20.203"],
            "ipv6": { "subnet": "fd20::/64", "gateway": "fd20::1",
                      "pool": ["fd20::100-fd20::104"], "exclude": ["fd20::102"] },
            "reservations": { IDENTITIES[0]: "192.168.20.100",
                              IDENTITIES[1]: ["192.168.20.201", "fd20::101"] }
        }),
    )
}

/// Addresses a request may name: in the pool, excluded, the gateway, reserved, outside the ranges or
/// the subnet.
const REQUESTABLE_V4: &[&str] = &[
    "192.168.20.200",
    NODE_V4,
    "192.168.20.202",
    "192.168.20.203",
    "192.168.20.1",
    "192.168.20.100",
    "192.168.20.201",
    "192.168.20.50",
    "192.168.21.9",
    "192.168.20.251",
];
/// The node's own address on the LAN, inside the pool ranges: never a pod's.
const NODE_V4: &str = "192.168.20.205";

const REQUESTABLE_V6: &[&str] = &["fd20::100", "fd20::101", "fd20::102", "fd20::1", "fd20::5"];

#[derive(Clone, Debug)]
enum Op {
    /// container index (its identity is fixed by the index), ifname index, requested v4 / v6
    Add(usize, usize, Option<usize>, Option<usize>),
    Del(usize, usize),
    /// keep-mask over container indexes (ifnames of a kept container are all valid)
    Gc(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..12usize, 0..3usize, prop::option::weighted(0.25, 0..REQUESTABLE_V4.len()),
              prop::option::weighted(0.2, 0..REQUESTABLE_V6.len()))
            .prop_map(|(c, i, r4, r6)| Op::Add(c, i, r4, r6)),
        3 => (0..12usize, 0..3usize).prop_map(|(c, i)| Op::Del(c, i)),
        1 => any::<u16>().prop_map(Op::Gc),
    ]
}

/// Interface names a pod's attachment may have: the order of its networks sets them.
const IFNAMES: [&str; 3] = ["net1", "net2", "iot0"];

fn att(c: usize, i: usize) -> Attachment {
    Attachment::new(format!("ctr{c:02}"), IFNAMES[i])
}

/// Container c belongs to identity c % 8: containers c and c + 8 are two sandboxes of one pod.
fn identity(c: usize) -> &'static str {
    IDENTITIES[c % IDENTITIES.len()]
}

fn by_ip(leases: &[Lease]) -> BTreeMap<IpAddr, Lease> {
    leases.iter().map(|l| (l.ip, l.clone())).collect()
}

/// What the model expects from an ADD: the addresses, or the kind of error.
#[derive(Debug, PartialEq)]
enum Expect {
    Ips(Vec<IpAddr>),
    Exhausted,
    Conflict,
    NotAllowed,
    /// An earlier sandbox of the same pod holds the address, and nothing says it has left the wire.
    StillInUse,
}

/// The model's ADD: the expectation, and the key the leases are held under (the pod; its own key
/// for a second attachment of the same sandbox; a per-interface key an earlier build left, which the
/// pod keeps while it has no reservation and no addresses of its own).
fn model_add(
    pool: &Pool,
    held: &BTreeMap<IpAddr, Lease>,
    last: &BTreeMap<String, Vec<IpAddr>>,
    req: &AllocRequest,
) -> (Expect, String) {
    let per_interface = format!("{}@{}", req.identity, req.attachment.ifname);
    let reserved = pool
        .families()
        .into_iter()
        .any(|f| pool.reservation(&req.identity, f).is_some());
    let legacy = req.identity.contains('/')
        && req.attachment.ifname != "net1"
        && !reserved
        && req.requested.is_empty()
        && last.get(&req.identity).is_none_or(|v| v.is_empty())
        && last.get(&per_interface).is_some_and(|v| !v.is_empty());
    // A retried ADD: the attachment's leases have their key already.
    let held_key = held
        .values()
        .find(|l| l.is_held_by(&req.attachment))
        .map(|l| l.identity.clone());
    let key = match held_key {
        Some(k) => k,
        None if legacy => per_interface.clone(),
        None => req.identity.clone(),
    };
    let keyed = AllocRequest {
        identity: key.clone(),
        ..req.clone()
    };
    match model_add_as(pool, held, last, &keyed, true) {
        Some(e) => (e, key),
        None => {
            let second = AllocRequest {
                identity: per_interface.clone(),
                ..req.clone()
            };
            let e = model_add_as(pool, held, last, &second, false).unwrap_or(Expect::Conflict);
            (e, per_interface)
        }
    }
}

/// The allocation under `req.identity`; `None` when a claim meets another interface of the same
/// sandbox under that key (and `may_rekey`): the attachment needs a key of its own.
fn model_add_as(
    pool: &Pool,
    held: &BTreeMap<IpAddr, Lease>,
    last: &BTreeMap<String, Vec<IpAddr>>,
    req: &AllocRequest,
    may_rekey: bool,
) -> Option<Expect> {
    let mine: Vec<&Lease> = held
        .values()
        .filter(|l| l.is_held_by(&req.attachment))
        .collect();
    let families = pool.families();
    // Requests of a family the pool lacks, or two of one family.
    for r in &req.requested {
        if !families.contains(&Family::of(r)) {
            return Some(Expect::NotAllowed);
        }
    }
    for l in &mine {
        if req
            .requested
            .iter()
            .any(|r| Family::of(r) == Family::of(&l.ip) && *r != l.ip)
        {
            return Some(Expect::NotAllowed);
        }
    }
    let node: IpAddr = NODE_V4.parse().unwrap();
    let stale_self =
        |l: &Lease| l.identity == req.identity && l.container_id != req.attachment.container_id;
    let sibling = |l: &Lease| {
        may_rekey
            && l.identity == req.identity
            && l.container_id == req.attachment.container_id
            && l.ifname != req.attachment.ifname
    };
    // Refusals of the request come first, for every family, before anything is claimed.
    let mut plan = Vec::new();
    for fam in families {
        if mine.iter().any(|l| Family::of(&l.ip) == fam) {
            plan.push((fam, None, true));
            continue;
        }
        let want = req.requested.iter().copied().find(|r| Family::of(r) == fam);
        let fixed = match (pool.reservation(&req.identity, fam), want) {
            (Some(r), Some(w)) if r != w => return Some(Expect::NotAllowed),
            (Some(r), _) => Some(r),
            (None, Some(w)) => {
                if pool.check_assignable(w, &req.identity).is_err() {
                    return Some(Expect::NotAllowed);
                }
                Some(w)
            }
            (None, None) => None,
        };
        if fixed == Some(node) {
            return Some(Expect::NotAllowed);
        }
        plan.push((fam, fixed, false));
    }
    let mut out = Vec::new();
    for (fam, fixed, kept) in plan {
        if kept {
            let l = mine.iter().find(|l| Family::of(&l.ip) == fam);
            out.extend(l.map(|l| l.ip));
            continue;
        }
        if let Some(ip) = fixed {
            match held.get(&ip) {
                // An earlier sandbox of this pod that may still be up: never taken over blindly.
                Some(h) if stale_self(h) => return Some(Expect::StillInUse),
                Some(h) if sibling(h) => return None,
                Some(_) => return Some(Expect::Conflict),
                None => out.push(ip),
            }
            continue;
        }
        let sticky = last
            .get(&req.identity)
            .into_iter()
            .flatten()
            .copied()
            .filter(|ip| *ip != node)
            .find(|ip| Family::of(ip) == fam && pool.check_assignable(*ip, &req.identity).is_ok());
        if let Some(ip) = sticky {
            match held.get(&ip) {
                None => {
                    out.push(ip);
                    continue;
                }
                Some(h) if stale_self(h) => return Some(Expect::StillInUse),
                Some(h) if sibling(h) => return None,
                Some(_) => {}
            }
        }
        match pool
            .candidates(fam, &req.identity)
            .find(|ip| *ip != node && !held.contains_key(ip))
        {
            Some(ip) => out.push(ip),
            None => return Some(Expect::Exhausted),
        }
    }
    Some(Expect::Ips(out))
}

fn run(pool: &Pool, store: &dyn Store, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut last: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for op in ops {
        let before = by_ip(&store.leases().unwrap());
        match op {
            Op::Add(c, i, r4, r6) => {
                let mut requested = Vec::new();
                if let Some(k) = r4 {
                    requested.push(REQUESTABLE_V4[*k].parse().unwrap());
                }
                if let Some(k) = r6 {
                    requested.push(REQUESTABLE_V6[*k].parse().unwrap());
                }
                let req = AllocRequest {
                    identity: identity(*c).to_string(),
                    attachment: att(*c, *i),
                    requested,
                    avoid: vec![Avoid {
                        ip: NODE_V4.parse().unwrap(),
                        why: AvoidReason::NodeAddress {
                            interface: "eth0".into(),
                        },
                    }],
                    ..AllocRequest::default()
                };
                let (expect, key) = model_add(pool, &before, &last, &req);
                let got = store.allocate(pool, &req);
                let after = by_ip(&store.leases().unwrap());
                match (&expect, got) {
                    (Expect::Ips(want), Ok(leases)) => {
                        let ips: Vec<IpAddr> = leases.iter().map(|l| l.ip).collect();
                        prop_assert_eq!(&ips, want, "{:?}", op);
                        prop_assert_eq!(store.find(&req.attachment).unwrap(), leases.clone());
                        for l in &leases {
                            prop_assert_eq!(&l.identity, &key);
                            prop_assert_eq!(after.get(&l.ip), Some(l));
                        }
                        // Nothing else changed, except stale leases of this pod that were taken over.
                        for (ip, l) in &before {
                            if !ips.contains(ip) {
                                prop_assert_eq!(after.get(ip), Some(l));
                            }
                        }
                        prop_assert_eq!(
                            after.len(),
                            before.len() + ips.iter().filter(|ip| !before.contains_key(ip)).count()
                        );
                        last.insert(key, ips);
                    }
                    (Expect::Exhausted, Err(Error::Exhausted { .. }))
                    | (Expect::Conflict, Err(Error::Conflict { .. }))
                    | (Expect::StillInUse, Err(Error::StillInUse { .. }))
                    | (Expect::NotAllowed, Err(Error::NotAllowed { .. })) => {
                        prop_assert_eq!(&after, &before, "a failed ADD changed the store");
                    }
                    (e, g) => prop_assert!(false, "{:?}: model {:?}, store {:?}", op, e, g),
                }
            }
            Op::Del(c, i) => {
                let a = att(*c, *i);
                let expect: Vec<Lease> = before
                    .values()
                    .filter(|l| l.is_held_by(&a))
                    .cloned()
                    .collect();
                let freed = store.release(&a).unwrap();
                prop_assert_eq!(&freed, &expect);
                let after = by_ip(&store.leases().unwrap());
                let mut want = before.clone();
                for l in &freed {
                    want.remove(&l.ip);
                }
                prop_assert_eq!(after, want);
                prop_assert!(store.find(&a).unwrap().is_empty());
            }
            Op::Gc(mask) => {
                let valid: Vec<Attachment> = (0..12)
                    .filter(|c| mask & (1 << c) != 0)
                    .flat_map(|c| [att(c, 0), att(c, 1), att(c, 2)])
                    .collect();
                let valid_set: BTreeSet<&Attachment> = valid.iter().collect();
                let mut freed = store.gc(&valid).unwrap();
                freed.sort_by_key(|l| l.ip);
                let expect: Vec<Lease> = before
                    .values()
                    .filter(|l| !valid_set.contains(&l.attachment()))
                    .cloned()
                    .collect();
                prop_assert_eq!(&freed, &expect);
                let after = store.leases().unwrap();
                prop_assert!(after.iter().all(|l| valid_set.contains(&l.attachment())));
                prop_assert_eq!(after.len(), before.len() - freed.len());
            }
        }
        contract::assert_consistent(pool, store);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn memory_store_v4(ops in prop::collection::vec(op(), 1..60)) {
        run(&v4_pool(), &MemoryStore::new(), &ops)?;
    }

    #[test]
    fn memory_store_dual_stack(ops in prop::collection::vec(op(), 1..60)) {
        run(&dual_pool(), &MemoryStore::new(), &ops)?;
    }
}

proptest! {
    // Each operation fsyncs: fewer cases, same generator.
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn file_store_v4(ops in prop::collection::vec(op(), 1..50)) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(&dir.path().join("iot"), Duration::from_secs(10)).unwrap();
        run(&v4_pool(), &store, &ops)?;
    }

    #[test]
    fn file_store_dual_stack(ops in prop::collection::vec(op(), 1..50)) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(&dir.path().join("iot"), Duration::from_secs(10)).unwrap();
        run(&dual_pool(), &store, &ops)?;
    }
}
