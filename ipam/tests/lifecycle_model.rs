//! The lifecycle model: random sequences of what kubelet, Multus and runtimes really do to one node's
//! pods, against the file store, the memory store and the Kubernetes store (through the API server
//! double), with the CNI layer's rules modelled on top: an ADD grants addresses and brings a link up,
//! or fails after its grant and reverts it, or is killed (-9) between the two; DEL takes the link off
//! the wire and releases (or is lost, as Multus thick drops a DEL's error); a sandbox dies without
//! DEL; a pod restarts under the same name with or without its old sandbox alive; a retried ADD of
//! the same attachment fails with 103 and reverts; GC lists the live sandboxes.
//!
//! One oracle after every step: no address is on two live links, and every live link's address is
//! held by exactly its own attachment. A reverted grant leaves the store exactly as it was.

#[cfg(feature = "kubernetes")]
#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/contract.rs"]
mod contract;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use iotlan_ipam::{
    AllocRequest, Attachment, Error, FileStore, Lease, MemoryStore, Pool, SandboxCheck, Store,
};
use proptest::prelude::*;

/// The pods: one with a reservation, three from the pool (which has room for two more).
const IDENTITIES: &[&str] = &[
    "ha/home-assistant-0",
    "iot/esphome-0",
    "iot/z2m-0",
    "media/jf-0",
];

fn pool() -> Pool {
    contract::pool(
        "iot",
        serde_json::json!({
            "subnet": "192.168.20.0/24", "gateway": "192.168.20.1",
            "pool": ["192.168.20.200-192.168.20.203"],
            "reservations": { IDENTITIES[0]: "192.168.20.100" }
        }),
    )
}

#[derive(Clone, Debug)]
enum Add {
    /// The link comes up.
    Up,
    /// The link part fails after the grant (MAC in use, netlink error): the grant is reverted.
    FailsAfterGrant,
    /// The process is killed between the grant and the link: nothing is undone.
    Killed,
}

#[derive(Clone, Debug)]
enum Op {
    /// A new sandbox of pod `k` (a first start, or a restart under the same name).
    NewSandbox(usize, Add),
    /// The runtime retries ADD for a sandbox that is up: 103, reverted.
    RetryAdd(usize),
    /// DEL of sandbox `i` (of all ever made); `lost`: the release never reaches the store.
    Del(usize, bool),
    /// Sandbox `i` dies without a DEL (its namespace is gone).
    Dies(usize),
    /// CNI GC with the live sandboxes as valid.
    Gc,
}

fn op() -> impl Strategy<Value = Op> {
    let add = prop_oneof![
        4 => Just(Add::Up),
        1 => Just(Add::FailsAfterGrant),
        1 => Just(Add::Killed)
    ];
    prop_oneof![
        5 => (0..IDENTITIES.len(), add).prop_map(|(k, a)| Op::NewSandbox(k, a)),
        1 => (0..8usize).prop_map(Op::RetryAdd),
        3 => (0..8usize, proptest::bool::weighted(0.2)).prop_map(|(i, l)| Op::Del(i, l)),
        1 => (0..8usize).prop_map(Op::Dies),
        1 => Just(Op::Gc),
    ]
}

/// One sandbox ever made: its attachment, its pod, and its link's addresses while on the wire.
struct Sandbox {
    att: Attachment,
    identity: String,
    on_wire: Option<Vec<IpAddr>>,
    exists: bool,
}

/// The node's wire as the CNI layer's check sees it: a sandbox is gone when its link is.
struct Wire<'a>(&'a [Sandbox]);

impl SandboxCheck for Wire<'_> {
    fn is_gone(&self, holder: &Lease) -> bool {
        !self
            .0
            .iter()
            .any(|s| s.on_wire.is_some() && s.att == holder.attachment())
    }
}

fn by_ip(store: &dyn Store) -> BTreeMap<IpAddr, Lease> {
    store
        .leases()
        .unwrap()
        .into_iter()
        .map(|l| (l.ip, l))
        .collect()
}

fn run(store: &dyn Store, ops: &[Op]) -> Result<(), TestCaseError> {
    let pool = pool();
    let mut sandboxes: Vec<Sandbox> = Vec::new();
    for (n, op) in ops.iter().enumerate() {
        match op {
            Op::NewSandbox(k, outcome) => {
                let identity = IDENTITIES[*k].to_string();
                let att = Attachment::new(format!("c{n}"), "net1");
                let req = AllocRequest {
                    identity: identity.clone(),
                    attachment: att.clone(),
                    ..AllocRequest::default()
                };
                let before = by_ip(store);
                let granted = store.grant(&pool, &req, &Wire(&sandboxes));
                let on_wire = match (granted, outcome) {
                    (Ok(g), Add::Up) => Some(g.leases.iter().map(|l| l.ip).collect()),
                    (Ok(g), Add::FailsAfterGrant) => {
                        store.revert(&g).unwrap();
                        prop_assert_eq!(&by_ip(store), &before, "a revert restores the store");
                        None
                    }
                    (Ok(_), Add::Killed) => None,
                    (Err(Error::StillInUse { holder, .. }), _) => {
                        let live = sandboxes
                            .iter()
                            .any(|s| s.on_wire.is_some() && s.att == holder.attachment());
                        prop_assert!(live, "StillInUse names a live sandbox");
                        prop_assert_eq!(&by_ip(store), &before);
                        None
                    }
                    (Err(Error::Exhausted { .. }), _) => {
                        prop_assert_eq!(&by_ip(store), &before);
                        None
                    }
                    (Err(e), _) => return Err(TestCaseError::fail(format!("{op:?}: {e}"))),
                };
                sandboxes.push(Sandbox {
                    att,
                    identity,
                    on_wire,
                    exists: true,
                });
            }
            Op::RetryAdd(i) => {
                let Some(s) = sandboxes.get(*i).filter(|s| s.on_wire.is_some()) else {
                    continue;
                };
                let req = AllocRequest {
                    identity: s.identity.clone(),
                    attachment: s.att.clone(),
                    ..AllocRequest::default()
                };
                let before = by_ip(store);
                let g = store.grant(&pool, &req, &Wire(&sandboxes)).unwrap();
                prop_assert!(g.claimed.is_empty(), "a retried ADD claims nothing new");
                store.revert(&g).unwrap();
                prop_assert_eq!(&by_ip(store), &before, "the retry's 103 harms nothing");
            }
            Op::Del(i, lost) => {
                let Some(s) = sandboxes.get_mut(*i) else {
                    continue;
                };
                s.on_wire = None;
                s.exists = false;
                if !lost {
                    // As the CNI layer does: by the identity the ADD was granted for.
                    store.release_for(&s.identity, &s.att).unwrap();
                }
            }
            Op::Dies(i) => {
                if let Some(s) = sandboxes.get_mut(*i) {
                    s.on_wire = None;
                    s.exists = false;
                }
            }
            Op::Gc => {
                let valid: Vec<Attachment> = sandboxes
                    .iter()
                    .filter(|s| s.exists)
                    .map(|s| s.att.clone())
                    .collect();
                store.gc(&valid).unwrap();
            }
        }
        // The oracle.
        let held = by_ip(store);
        let mut on_wire: BTreeSet<IpAddr> = BTreeSet::new();
        for s in sandboxes.iter().filter(|s| s.on_wire.is_some()) {
            for ip in s.on_wire.iter().flatten() {
                prop_assert!(
                    on_wire.insert(*ip),
                    "{ip} is on two live links after {op:?}"
                );
                let holder = held.get(ip).map(Lease::attachment);
                prop_assert_eq!(
                    holder.as_ref(),
                    Some(&s.att),
                    "{} on the wire of {} is held by {:?} after {:?}",
                    ip,
                    s.att,
                    holder,
                    op
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn lifecycle_file_store(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(&dir.path().join("iot"), Duration::from_secs(5)).unwrap();
        run(&store, &ops)?;
    }

    #[test]
    fn lifecycle_memory_store(ops in proptest::collection::vec(op(), 1..40)) {
        run(&MemoryStore::new(), &ops)?;
    }
}

#[cfg(feature = "kubernetes")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn lifecycle_kubernetes_store(ops in proptest::collection::vec(op(), 1..30)) {
        let server = apiserver::ApiServer::start();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = server.kubeconfig(dir.path(), "default", "t");
        server.set_token(Some("t"));
        let cfg: iotlan_ipam::StoreConfig = serde_json::from_value(serde_json::json!({
            "kind": "kubernetes", "namespace": "iotlan-system", "kubeconfig": kubeconfig,
            "gcGraceSeconds": 0, "stateDir": dir.path().join("state")
        }))
        .unwrap();
        let store = iotlan_ipam::open_store("iot", &cfg, &pool()).unwrap();
        run(&*store, &ops)?;
    }
}
