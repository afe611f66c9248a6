//! The lifecycle model: random sequences of what kubelet, Multus and runtimes really do to the pods of
//! a cluster's nodes, against the file store, the memory store and the Kubernetes store (through the
//! API server double), with the CNI layer's rules modelled on top:
//! - an ADD grants addresses and brings a link up, or fails after its grant and reverts it, or is
//!   killed (-9) between the two; its interface is whatever the order of the pod's networks made it
//!   (`net1`, `net2`, `iot0`), and a sandbox may attach the same network twice;
//! - DEL takes the link off the wire and releases (or is lost, as Multus thick drops a DEL's error);
//! - a sandbox dies without DEL; a pod restarts under the same name, on its node or another, with or
//!   without its old sandbox alive; a retried ADD of the same attachment fails with 103 and reverts;
//! - a node loses its kubelet (NotReady past the grace) while its sandboxes still run, or comes back;
//!   a takeover across nodes is undone while the old sandbox still answers on the LAN (the CNI
//!   layer's probe from the master);
//! - the node agent is gone long enough for the plugin's token to die (the API server answers 401),
//!   and comes back with a fresh one: meanwhile every ADD, DEL and GC of the Kubernetes store fails
//!   with "unavailable" (CNI code 11, which the runtime retries) and changes nothing, and a DEL's
//!   link is gone while its lease stays held, as when Multus thick drops the error (the file and
//!   memory stores need no token);
//! - each sandbox's network namespace is the path its runtime passes as `CNI_NETNS`: podman's
//!   `/run/netns/…` or containerd's and CRI-O's `/var/run/netns/…` (on the host a link to `/run`);
//!   the leases record it, and "is the old sandbox gone?" is judged by that recorded path through
//!   the link, as the plugin and the node agent judge it;
//! - GC lists the live sandboxes.
//!
//! One oracle after every step: no address is on two live links, every live link's address is held
//! by exactly its own attachment, and under the key of its pod (or, for a second attachment of the
//! network in one sandbox, a key of its own), so that a reservation applies whatever the interface
//! is called. A reverted grant leaves the store exactly as it was.
//!
//! `MODEL_NO_PROBE=1` leaves the CNI layer's probe before a takeover across nodes out: the oracle
//! then finds an address on two live links (the control that shows the model can fail).
//! `MODEL_NO_VAR_RUN=1` judges a recorded `/var/run/netns/…` path without the link to `/run` (the
//! node agent's view before it mounted both names): a live containerd sandbox is then judged gone
//! and its address taken over while it is on the wire.

use crate::contract;
#[cfg(feature = "kubernetes")]
use iotlan_apiserver_double as apiserver;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use iotlan_ipam::{
    AllocRequest, Attachment, Error, FileStore, Lease, MemoryStore, Pool, Sandbox, SandboxCheck,
    Store,
};
use proptest::prelude::*;

/// The pods: one with a reservation, three from the pool (which has room for two more).
const IDENTITIES: &[&str] = &[
    "ha/home-assistant-0",
    "iot/esphome-0",
    "iot/z2m-0",
    "media/jf-0",
];
const RESERVED: &str = "192.168.20.100";
/// The names a pod's attachment of the network may get.
const IFNAMES: &[&str] = &["net1", "net2", "iot0"];
/// The directories a runtime's `CNI_NETNS` is in: podman's, and containerd's and CRI-O's (the host's
/// `/var/run` is a link to `/run`).
const NETNS_DIRS: &[&str] = &["/run/netns", "/var/run/netns"];
/// The nodes (the file and memory stores are one node's).
#[cfg(feature = "kubernetes")]
const NODES: &[&str] = &["node-a", "node-b"];

fn pool() -> Pool {
    contract::pool(
        "iot",
        serde_json::json!({
            "subnet": "192.168.20.0/24", "gateway": "192.168.20.1",
            "pool": ["192.168.20.200-192.168.20.203"],
            "reservations": { IDENTITIES[0]: RESERVED }
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
    /// A new sandbox of pod `k` on node `n`, its attachment named `IFNAMES[i]` (a first start, or a
    /// restart under the same name), its namespace in `NETNS_DIRS[d]`.
    NewSandbox(usize, usize, usize, usize, Add),
    /// Attachment `a`'s sandbox attaches the network once more, as `IFNAMES[i]`.
    AttachAgain(usize, usize),
    /// The runtime retries ADD for an attachment that is up: 103, reverted.
    RetryAdd(usize),
    /// DEL of attachment `a` (of all ever made); `lost`: the release never reaches the store.
    Del(usize, bool),
    /// Attachment `a`'s sandbox dies without a DEL (its namespace is gone).
    Dies(usize),
    /// Node `n` loses its kubelet: NotReady long past the grace; its sandboxes run on.
    NodeLost(usize),
    /// Node `n` is Ready again.
    NodeBack(usize),
    /// The plugin's token dies (the agent is gone past its lifetime): the API server answers 401.
    TokenDead,
    /// An agent runs again: the plugin's token is valid.
    TokenBack,
    /// CNI GC with the live sandboxes as valid.
    Gc,
}

fn op(nodes: usize) -> impl Strategy<Value = Op> {
    let add = prop_oneof![
        4 => Just(Add::Up),
        1 => Just(Add::FailsAfterGrant),
        1 => Just(Add::Killed)
    ];
    let node_ops = if nodes > 1 { 1 } else { 0 };
    prop_oneof![
        5 => (0..IDENTITIES.len(), 0..nodes, 0..IFNAMES.len(), 0..NETNS_DIRS.len(), add)
            .prop_map(|(k, n, i, d, a)| Op::NewSandbox(k, n, i, d, a)),
        1 => (0..8usize, 0..IFNAMES.len()).prop_map(|(a, i)| Op::AttachAgain(a, i)),
        1 => (0..8usize).prop_map(Op::RetryAdd),
        3 => (0..8usize, proptest::bool::weighted(0.2)).prop_map(|(a, l)| Op::Del(a, l)),
        1 => (0..8usize).prop_map(Op::Dies),
        node_ops => (0..nodes).prop_map(Op::NodeLost),
        node_ops => (0..nodes).prop_map(Op::NodeBack),
        1 => Just(Op::TokenDead),
        1 => Just(Op::TokenBack),
        1 => Just(Op::Gc),
    ]
}

/// One attachment ever made: its sandbox's container, its interface, its pod and node, and its
/// link's addresses while on the wire.
struct Attached {
    att: Attachment,
    identity: String,
    node: usize,
    /// `CNI_NETNS` as the runtime passed it.
    netns: String,
    on_wire: Option<Vec<IpAddr>>,
    exists: bool,
}

/// The LAN and the nodes' namespaces as the CNI layer sees them.
struct Wire<'a>(&'a [Attached]);

/// A `CNI_NETNS` path as the host resolves it: `/var/run` is a link to `/run`.
fn on_host(netns: &str) -> String {
    match netns.strip_prefix("/var/run/") {
        Some(rest) => format!("/run/{rest}"),
        None => netns.to_string(),
    }
}

impl Wire<'_> {
    /// The holder's link answers on the LAN (the probe from the master hears it).
    fn answers(&self, holder: &Lease) -> bool {
        self.0
            .iter()
            .any(|s| s.on_wire.is_some() && s.att == holder.attachment())
    }

    /// The namespace the holder's lease records still exists: some attachment of a sandbox in it
    /// has not been deleted, whichever name the runtime gave the path.
    fn netns_exists(&self, holder: &Lease) -> bool {
        let Some(recorded) = holder.sandbox.netns.as_deref() else {
            return false;
        };
        // The judge's view of the host: through the /var/run link, unless the control says not.
        let judged = if std::env::var_os("MODEL_NO_VAR_RUN").is_some() {
            recorded.to_string()
        } else {
            on_host(recorded)
        };
        self.0
            .iter()
            .any(|s| s.exists && on_host(&s.netns) == judged)
    }
}

impl SandboxCheck for Wire<'_> {
    /// Gone when the namespace its lease records is, as the plugin's `Netns::judge` and the node
    /// agent's view of the host judge it: by that path alone (a store that lost or changed it would
    /// have a live sandbox judged gone, and its address handed to a second link).
    fn is_gone(&self, holder: &Lease) -> bool {
        !self.netns_exists(holder)
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

/// The stores of one run: one per node (the same cluster state behind them), and the hook that sets
/// a node's `Ready` condition.
struct Cluster<'a> {
    stores: Vec<&'a dyn Store>,
    set_ready: &'a dyn Fn(usize, bool),
    /// Makes the plugin's token valid or dead; None for the stores that need none.
    set_token: Option<&'a dyn Fn(bool)>,
}

/// Whether the plugin's token is dead, and the oracle's way in meanwhile.
struct Token<'a> {
    dead: bool,
    set: Option<&'a dyn Fn(bool)>,
}

impl Token<'_> {
    /// What the store holds, read as the test's observer (with a valid token, then as before).
    fn held(&self, store: &dyn Store) -> BTreeMap<IpAddr, Lease> {
        match (self.dead, self.set) {
            (true, Some(set)) => {
                set(true);
                let held = by_ip(store);
                set(false);
                held
            }
            _ => by_ip(store),
        }
    }

    /// Whether a store operation must fail as unavailable.
    fn refuses(&self) -> bool {
        self.dead && self.set.is_some()
    }
}

/// An operation refused while the token is dead: "unavailable" (CNI code 11), nothing else.
fn unavailable<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) -> Result<(), TestCaseError> {
    match r {
        Err(Error::Unavailable { .. }) => Ok(()),
        other => Err(TestCaseError::fail(format!(
            "{what} with a dead token: {other:?}, not unavailable"
        ))),
    }
}

/// One ADD as the CNI layer runs it: the grant, then (a takeover of an address from a sandbox on
/// another node) the probe from the master, which hears the old sandbox while it runs: the ADD is
/// then undone with 11. Returns the granted leases when the link came up.
fn add(
    store: &dyn Store,
    pool: &Pool,
    req: &AllocRequest,
    outcome: &Add,
    wire: &Wire,
    token: &Token,
) -> Result<Option<Vec<Lease>>, TestCaseError> {
    let before = token.held(store);
    if token.refuses() {
        unavailable(store.grant(pool, req, wire), "ADD")?;
        prop_assert_eq!(&token.held(store), &before, "a refused ADD changes nothing");
        return Ok(None);
    }
    let g = match store.grant(pool, req, wire) {
        Ok(g) => g,
        Err(Error::StillInUse { holder, .. }) => {
            prop_assert!(
                wire.netns_exists(&holder) || wire.answers(&holder) || holder.node.is_some(),
                "StillInUse names a live sandbox, or one on a node not known to be lost"
            );
            prop_assert_eq!(&by_ip(store), &before);
            return Ok(None);
        }
        Err(Error::Exhausted { .. }) => {
            prop_assert_eq!(&by_ip(store), &before);
            return Ok(None);
        }
        Err(e) => return Err(TestCaseError::fail(format!("ADD {}: {e}", req.attachment))),
    };
    let probing = std::env::var_os("MODEL_NO_PROBE").is_none();
    let old_answers = probing
        && g.claimed.iter().any(|c| {
            c.replaced
                .as_ref()
                .is_some_and(|old| old.node != c.lease.node && wire.answers(old))
        });
    match outcome {
        _ if old_answers => {
            store.revert(&g).unwrap();
            prop_assert_eq!(&by_ip(store), &before, "a revert restores the store");
            Ok(None)
        }
        Add::Up => Ok(Some(g.leases)),
        Add::FailsAfterGrant => {
            store.revert(&g).unwrap();
            prop_assert_eq!(&by_ip(store), &before, "a revert restores the store");
            Ok(None)
        }
        Add::Killed => Ok(None),
    }
}

fn run(cluster: &Cluster, ops: &[Op]) -> Result<(), TestCaseError> {
    let pool = pool();
    let mut all: Vec<Attached> = Vec::new();
    let mut keys: BTreeMap<Attachment, String> = BTreeMap::new();
    let mut token = Token {
        dead: false,
        set: cluster.set_token,
    };
    for (n, op) in ops.iter().enumerate() {
        match op {
            Op::NewSandbox(k, node, i, d, outcome) => {
                let node = node % cluster.stores.len();
                let identity = IDENTITIES[*k].to_string();
                let att = Attachment::new(format!("c{n}"), IFNAMES[*i]);
                let netns = format!("{}/cni-c{n}", NETNS_DIRS[*d]);
                let req = AllocRequest {
                    identity: identity.clone(),
                    attachment: att.clone(),
                    sandbox: Sandbox {
                        netns: Some(netns.clone()),
                        ..Sandbox::default()
                    },
                    ..AllocRequest::default()
                };
                let up = add(
                    cluster.stores[node],
                    &pool,
                    &req,
                    outcome,
                    &Wire(&all),
                    &token,
                )?;
                if let Some(l) = up.as_ref().and_then(|l| l.first()) {
                    keys.insert(att.clone(), l.identity.clone());
                }
                all.push(Attached {
                    att,
                    identity,
                    node,
                    netns,
                    on_wire: up.map(|l| l.iter().map(|l| l.ip).collect()),
                    exists: true,
                });
            }
            Op::AttachAgain(a, i) => {
                let Some(s) = all.get(*a).filter(|s| s.on_wire.is_some()) else {
                    continue;
                };
                let att = Attachment::new(s.att.container_id.clone(), IFNAMES[*i]);
                if all.iter().any(|x| x.att == att) {
                    continue;
                }
                let (identity, node, netns) = (s.identity.clone(), s.node, s.netns.clone());
                let req = AllocRequest {
                    identity: identity.clone(),
                    attachment: att.clone(),
                    sandbox: Sandbox {
                        netns: Some(netns.clone()),
                        ..Sandbox::default()
                    },
                    ..AllocRequest::default()
                };
                let up = add(
                    cluster.stores[node],
                    &pool,
                    &req,
                    &Add::Up,
                    &Wire(&all),
                    &token,
                )?;
                if let Some(l) = up.as_ref().and_then(|l| l.first()) {
                    keys.insert(att.clone(), l.identity.clone());
                }
                all.push(Attached {
                    att,
                    identity,
                    node,
                    netns,
                    on_wire: up.map(|l| l.iter().map(|l| l.ip).collect()),
                    exists: true,
                });
            }
            Op::RetryAdd(a) => {
                let Some(s) = all.get(*a).filter(|s| s.on_wire.is_some()) else {
                    continue;
                };
                let store = cluster.stores[s.node];
                let req = AllocRequest {
                    identity: s.identity.clone(),
                    attachment: s.att.clone(),
                    sandbox: Sandbox {
                        netns: Some(s.netns.clone()),
                        ..Sandbox::default()
                    },
                    ..AllocRequest::default()
                };
                if token.refuses() {
                    unavailable(store.grant(&pool, &req, &Wire(&all)), "a retried ADD")?;
                    continue;
                }
                let before = by_ip(store);
                let g = store.grant(&pool, &req, &Wire(&all)).unwrap();
                prop_assert!(g.claimed.is_empty(), "a retried ADD claims nothing new");
                prop_assert_eq!(
                    g.leases.first().map(|l| &l.identity),
                    keys.get(&s.att),
                    "a retried ADD keeps its key"
                );
                store.revert(&g).unwrap();
                prop_assert_eq!(&by_ip(store), &before, "the retry's 103 harms nothing");
            }
            Op::Del(a, lost) => {
                let Some(s) = all.get_mut(*a) else {
                    continue;
                };
                s.on_wire = None;
                s.exists = false;
                if token.refuses() {
                    // The link is gone first; the release is refused and the error reaches a
                    // runtime that retries, or Multus thick, which drops it: held until GC or the
                    // agent's reconcile (modelled as lost).
                    unavailable(cluster.stores[s.node].release(&s.att), "DEL")?;
                } else if !lost {
                    // As the CNI layer's DEL does: by the attachment alone.
                    cluster.stores[s.node].release(&s.att).unwrap();
                }
            }
            Op::Dies(a) => {
                let Some(cid) = all.get(*a).map(|s| s.att.container_id.clone()) else {
                    continue;
                };
                for s in all.iter_mut().filter(|s| s.att.container_id == cid) {
                    s.on_wire = None;
                    s.exists = false;
                }
            }
            Op::NodeLost(node) => (cluster.set_ready)(*node, false),
            Op::NodeBack(node) => (cluster.set_ready)(*node, true),
            Op::TokenDead | Op::TokenBack => {
                token.dead = matches!(op, Op::TokenDead);
                if let Some(set) = cluster.set_token {
                    set(!token.dead);
                }
            }
            Op::Gc if token.refuses() => {
                for store in &cluster.stores {
                    unavailable(store.gc(&[]), "GC")?;
                }
            }
            Op::Gc => {
                // Each node's runtime lists its own live sandboxes.
                for (node, store) in cluster.stores.iter().enumerate() {
                    let valid: Vec<Attachment> = all
                        .iter()
                        .filter(|s| s.exists && s.node == node)
                        .map(|s| s.att.clone())
                        .collect();
                    store.gc(&valid).unwrap();
                }
            }
        }
        // The oracle.
        let held = token.held(cluster.stores[0]);
        let mut on_wire: BTreeSet<IpAddr> = BTreeSet::new();
        let mut keys_of_sandbox: BTreeSet<(String, String)> = BTreeSet::new();
        for s in all.iter().filter(|s| s.on_wire.is_some()) {
            for ip in s.on_wire.iter().flatten() {
                prop_assert!(
                    on_wire.insert(*ip),
                    "{ip} is on two live links after {op:?}"
                );
                let holder = held.get(ip);
                let holder_att = holder.map(Lease::attachment);
                prop_assert_eq!(
                    holder_att.as_ref(),
                    Some(&s.att),
                    "{} on the wire of {} is held by {:?} after {:?}",
                    ip,
                    s.att,
                    holder,
                    op
                );
            }
            let key = keys.get(&s.att).cloned().unwrap_or_default();
            let own = format!("{}@{}", s.identity, s.att.ifname);
            prop_assert!(
                key == s.identity || key == own,
                "{} is keyed {key}, neither its pod nor its own interface's",
                s.att
            );
            prop_assert!(
                keys_of_sandbox.insert((s.att.container_id.clone(), key.clone())),
                "two attachments of sandbox {} share the key {key}",
                s.att.container_id
            );
            if key == IDENTITIES[0] {
                let reserved: IpAddr = RESERVED.parse().unwrap();
                prop_assert_eq!(
                    s.on_wire.as_deref(),
                    Some(&[reserved][..]),
                    "the reservation applies to {} whatever its interface's name",
                    s.att
                );
            }
        }
    }
    Ok(())
}

fn one_node(store: &dyn Store) -> Cluster<'_> {
    Cluster {
        stores: vec![store],
        set_ready: &|_, _| {},
        set_token: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn lifecycle_file_store(ops in proptest::collection::vec(op(1), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(&dir.path().join("iot"), Duration::from_secs(5)).unwrap();
        run(&one_node(&store), &ops)?;
    }

    #[test]
    fn lifecycle_memory_store(ops in proptest::collection::vec(op(1), 1..40)) {
        run(&one_node(&MemoryStore::new()), &ops)?;
    }
}

#[cfg(feature = "kubernetes")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Two nodes on one cluster store: each node's store records its own node name, as the node
    /// agent's node-name file makes the plugin do.
    #[test]
    fn lifecycle_kubernetes_store(ops in proptest::collection::vec(op(NODES.len()), 1..30)) {
        let server = apiserver::ApiServer::start();
        server.set_token(Some("t"));
        let dir = tempfile::tempdir().unwrap();
        let stores: Vec<Box<dyn Store>> = NODES
            .iter()
            .map(|node| {
                server.put_node(node, "True", 600);
                let d = dir.path().join(node);
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join("node-name"), format!("{node}\n")).unwrap();
                let kubeconfig = server.kubeconfig(&d, "default", "t");
                let cfg: iotlan_ipam::StoreConfig = serde_json::from_value(serde_json::json!({
                    "kind": "kubernetes", "namespace": "iotlan-system", "kubeconfig": kubeconfig,
                    "gcGraceSeconds": 0, "nodeLossGraceSeconds": 30, "stateDir": d.join("state")
                }))
                .unwrap();
                iotlan_ipam::open_store("iot", &cfg, &pool()).unwrap()
            })
            .collect();
        let set_ready = |node: usize, ready: bool| {
            let (status, since) = if ready { ("True", 0) } else { ("Unknown", 3600) };
            server.put_node(NODES[node], status, since);
        };
        let set_token = |valid: bool| server.set_token(Some(if valid { "t" } else { "expired" }));
        let cluster = Cluster {
            stores: stores.iter().map(|s| &**s as &dyn Store).collect(),
            set_ready: &set_ready,
            set_token: Some(&set_token),
        };
        run(&cluster, &ops)?;
    }
}
