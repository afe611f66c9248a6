//! Re-asserting this node's Leases from what the node has: the node agent's answer to lost objects.
//!
//! A namespace deleted with the manifests (`kubectl delete -k`), an etcd restore or a manual
//! `kubectl delete leases` removes Lease objects while pods keep their addresses on the wire; the
//! next ADD would hand such an address out again. Every node agent, at start and in every pass,
//! reads the node-local records of the attachments the store granted on its node
//! ([`node_record`]; written on ADD, removed on DEL) and has the store recreate what is
//! missing of them ([`KubernetesStore::reassert`]). An address another attachment holds in the
//! store is on two devices already: that is reported loudly (a Warning Event on the Lease's
//! namespace, the agent's log, the report) and never resolved silently: neither object is
//! changed. A record of a sandbox whose network namespace is gone, and one whose leases were freed
//! on purpose since, is removed.
//!
//! [`recent_duplicates`] reads those Events back (for `iotlan status`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use serde::Serialize;

use iotlan_ipam::store::kubernetes::node_record::{self, NodeRecord};
use iotlan_ipam::store::kubernetes::{
    objects, Conn, KubernetesStore, Reasserted, Settings, DEFAULT_TIMEOUT_MS,
};
use iotlan_ipam::{Error, Lease, StoreConfig};

/// The reason of the Warning Event a duplicate address is reported with
/// (`kubectl get events --field-selector reason=DuplicateAddress`).
pub const DUPLICATE_REASON: &str = "DuplicateAddress";

/// An address held on this node's wire by one attachment (the record) and in the store by another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub network: String,
    /// The attachment on this node, as its record has it.
    pub ours: Lease,
    /// What the Lease object says instead.
    pub holder: Lease,
}

impl std::fmt::Display for Duplicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DUPLICATE ADDRESS {} on network {}: container {} ({}) carries it on this node, and the \
             store has it held by container {} ({}) on node {}",
            self.ours.ip,
            self.network,
            self.ours.container_id,
            self.ours.identity,
            self.holder.container_id,
            self.holder.identity,
            self.holder.node.as_deref().unwrap_or("?")
        )
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReassertReport {
    /// Node-local records read.
    pub records: usize,
    /// Leases whose object was there and the attachment's.
    pub present: usize,
    /// Leases whose object was missing and was created again: (network, lease).
    pub recreated: Vec<(String, Lease)>,
    /// Addresses another attachment holds in the store.
    pub duplicates: Vec<Duplicate>,
    /// Leases freed on purpose since their record was written (the identity's object still lists
    /// the attachment): their records are removed, nothing is recreated.
    pub released: usize,
    /// Records whose sandbox's network namespace is gone (the caller's check): its links went with
    /// it, so nothing is on the wire to re-assert; the records are removed.
    pub sandbox_gone: usize,
    /// Records that did not parse (empty or garbled: a power cut, an older build), removed with a
    /// warning.
    pub discarded: usize,
    /// Records that could not be read, nor removed: (path, why).
    pub unreadable: Vec<(PathBuf, String)>,
}

impl std::fmt::Display for ReassertReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} node-local attachment records: {} leases present, {} recreated",
            self.records,
            self.present,
            self.recreated.len()
        )?;
        crate::reconcile::cluster::write_freed(f, &self.recreated)?;
        write!(
            f,
            ", {} freed since (records removed), {} whose sandbox is gone (records removed), {} \
             unreadable removed, {} unreadable",
            self.released,
            self.sandbox_gone,
            self.discarded,
            self.unreadable.len()
        )?;
        for d in &self.duplicates {
            write!(f, "; {d}")?;
        }
        Ok(())
    }
}

/// Whether a sandbox's network namespace (its path) is provably gone.
pub type NetnsGone = Box<dyn Fn(&str) -> bool + Send>;

/// Re-asserts the Leases of this node's attachments (module docs).
pub struct Reasserter {
    kubeconfig: PathBuf,
    namespace: Option<String>,
    state_dir: PathBuf,
    netns_gone: Option<NetnsGone>,
    node: Option<String>,
}

impl Reasserter {
    /// `namespace` defaults to the kubeconfig context's; `state_dir` is where the plugin writes
    /// its records (`store.stateDir`). The kubeconfig is read again on every pass.
    pub fn new(
        kubeconfig: &Path,
        namespace: Option<&str>,
        state_dir: &Path,
    ) -> Result<Reasserter, Error> {
        Conn::open(kubeconfig, Duration::from_millis(DEFAULT_TIMEOUT_MS))?;
        Ok(Reasserter {
            kubeconfig: kubeconfig.to_path_buf(),
            namespace: namespace.map(str::to_string),
            state_dir: state_dir.to_path_buf(),
            netns_gone: None,
            node: None,
        })
    }

    /// This node's Kubernetes name (the agent's `NODE_NAME`): the node its duplicate-address
    /// Events name, and that recreated Leases record. Without it, the name the plugin would use
    /// ([`iotlan_ipam::node`]), which in the agent's pod is the pod's host name, not the node's.
    pub fn with_node(mut self, node: Option<String>) -> Reasserter {
        self.node = node;
        self
    }

    /// What the node really has: `netns_gone(path)` says whether a sandbox's network namespace
    /// (`CNI_NETNS`, as the leases record it) is provably gone. A record of such a sandbox is not
    /// re-asserted but removed. Without it every record is trusted.
    pub fn with_netns_check(
        mut self,
        netns_gone: impl Fn(&str) -> bool + Send + 'static,
    ) -> Reasserter {
        self.netns_gone = Some(Box::new(netns_gone));
        self
    }

    fn sandbox_gone(&self, rec: &NodeRecord) -> bool {
        let Some(gone) = &self.netns_gone else {
            return false;
        };
        rec.leases
            .iter()
            .find_map(|l| l.sandbox.netns.as_deref())
            .is_some_and(gone)
    }

    /// One pass over every record.
    pub fn run_once(&mut self) -> Result<ReassertReport, Error> {
        let mut report = ReassertReport::default();
        // What a plugin killed mid-write left (and the temp files of builds before the durable write).
        let records_dir = self.state_dir.join(node_record::RECORD_DIR);
        for prefix in [
            iotlan_ipam::durable::TEMP_PREFIX,
            node_record::LEGACY_TEMP_PREFIX,
        ] {
            iotlan_ipam::durable::remove_stale_temps(&records_dir, prefix);
        }
        let all = node_record::read_all(&self.state_dir)
            .map_err(|e| Error::io("read directory", &records_dir, e))?;
        let mut by_network: BTreeMap<String, Vec<NodeRecord>> = BTreeMap::new();
        for node_record::ReadRecord { path, ino, record } in all {
            match record {
                Ok(r) if self.sandbox_gone(&r) => {
                    report.sandbox_gone += 1;
                    if let Err(e) = std::fs::remove_file(&path) {
                        report
                            .unreadable
                            .push((path, format!("cannot remove: {e}")));
                    }
                }
                Ok(r) => by_network.entry(r.network.clone()).or_default().push(r),
                // Nothing in it to re-assert: removed once, with a warning, not reported forever.
                Err(why) => match node_record::discard_unreadable(&path, ino, &why) {
                    Ok(()) => report.discarded += 1,
                    Err(why) => report.unreadable.push((path, why)),
                },
            }
        }
        for (network, records) in by_network {
            let conn = Conn::open(&self.kubeconfig, Duration::from_millis(DEFAULT_TIMEOUT_MS))?;
            let namespace = self
                .namespace
                .clone()
                .unwrap_or_else(|| conn.default_namespace().to_string());
            let settings = Settings {
                namespace: namespace.clone(),
                state_dir: self.state_dir.clone(),
                ..Settings::default()
            };
            let mut store = KubernetesStore::with_conn(&network, settings, conn.clone());
            if let Some(node) = &self.node {
                store = store.with_node(Some(node.clone()));
            }
            let events = EventPoster {
                conn,
                namespace,
                node: store.node().map(str::to_string),
            };
            for rec in records {
                report.records += 1;
                self.reassert(&store, &events, &rec, &mut report)?;
            }
        }
        Ok(report)
    }

    /// One record: what the store made of each of its leases, reported; a duplicate posted as an
    /// Event; a record of leases freed since removed.
    fn reassert(
        &self,
        store: &KubernetesStore,
        events: &EventPoster,
        rec: &NodeRecord,
        report: &mut ReassertReport,
    ) -> Result<(), Error> {
        let outcomes = store.reassert(&rec.leases)?;
        for (lease, outcome) in rec.leases.iter().zip(outcomes) {
            match outcome {
                Reasserted::Present => report.present += 1,
                Reasserted::Released => {
                    report.released += 1;
                    node_record::remove(&self.state_dir, &rec.network, &lease.attachment());
                }
                Reasserted::Recreated => {
                    tracing::warn!(network = %rec.network, ip = %lease.ip, identity = %lease.identity,
                        container = %lease.container_id,
                        "recreated the missing Lease of an attachment on this node");
                    report.recreated.push((rec.network.clone(), lease.clone()));
                }
                Reasserted::HeldBy(holder) => {
                    let d = Duplicate {
                        network: rec.network.clone(),
                        ours: lease.clone(),
                        holder,
                    };
                    tracing::error!("{d}");
                    events.warn(&d);
                    report.duplicates.push(d);
                }
            }
        }
        Ok(())
    }
}

/// Posts the duplicate-address Events of one namespace, as this node.
struct EventPoster {
    conn: Conn,
    namespace: String,
    node: Option<String>,
}

impl EventPoster {
    /// A Warning Event on the address's Lease; a failure to post it is logged, never fatal.
    fn warn(&self, d: &Duplicate) {
        let events: Api<Event> = Api::namespaced(self.conn.client().clone(), &self.namespace);
        let name = objects::address_name(&objects::network_key(&d.network), d.ours.ip);
        let now = Timestamp::now();
        let ev = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    objects::MANAGED_BY.to_string(),
                    objects::MANAGER.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("coordination.k8s.io/v1".into()),
                kind: Some("Lease".into()),
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                ..ObjectReference::default()
            },
            reason: Some(DUPLICATE_REASON.into()),
            message: Some(d.to_string()),
            type_: Some("Warning".into()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some("iotlan".into()),
            reporting_instance: self.node.clone(),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("iotlan".into()),
                host: self.node.clone(),
            }),
            ..Event::default()
        };
        if let Err(e) = self
            .conn
            .run("create event", events.create(&PostParams::default(), &ev))
        {
            tracing::warn!(error = %e.into_error(), "could not post the duplicate-address Event");
        }
    }
}

/// A duplicate address as the node agents reported it: the `DuplicateAddress` Events on one
/// address's Lease with one message (every re-assert pass that finds it posts one), taken together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DuplicateReport {
    pub network: String,
    /// The address, from the Lease's name (None when the name is not one of ours).
    pub ip: Option<IpAddr>,
    /// The Events' namespace (the Leases').
    pub namespace: String,
    /// The Events' involved object: the address's Lease.
    pub lease: String,
    pub reason: String,
    pub message: String,
    /// How many times it was reported: the Events' counts, summed.
    pub count: u64,
    /// How many Event objects that took.
    pub events: usize,
    pub first_unix: Option<u64>,
    pub last_unix: Option<u64>,
    /// The nodes whose agents reported it.
    pub nodes: Vec<String>,
}

/// The duplicate addresses of `network` the node agents reported as Events in the store's
/// namespace (as `cfg` gives it; the API server keeps Events for an hour by default), the latest
/// first. One LIST of the Events labelled `app.kubernetes.io/managed-by=iotlan` (RBAC: `list` on
/// `events` there).
pub fn recent_duplicates(network: &str, cfg: &StoreConfig) -> Result<Vec<DuplicateReport>, Error> {
    let settings = Settings::from_config(cfg)?;
    let conn = Conn::open(&settings.kubeconfig_path()?, settings.timeout)?;
    let events: Api<Event> = Api::namespaced(conn.client().clone(), &settings.namespace);
    let sel = format!("{}={}", objects::MANAGED_BY, objects::MANAGER);
    let list = conn.run(
        "list events",
        events.list(&ListParams::default().labels(&sel)),
    )?;
    Ok(duplicates_of(network, &settings.namespace, &list.items))
}

/// The [`DuplicateReport`]s of `network` among `events`.
fn duplicates_of(network: &str, namespace: &str, events: &[Event]) -> Vec<DuplicateReport> {
    let prefix = format!("{}.", objects::network_key(network));
    let mut by: BTreeMap<(String, String), DuplicateReport> = BTreeMap::new();
    for ev in events {
        let o = &ev.involved_object;
        let Some(lease) = o.name.as_deref().filter(|n| n.starts_with(&prefix)) else {
            continue;
        };
        if ev.reason.as_deref() != Some(DUPLICATE_REASON) || o.kind.as_deref() != Some("Lease") {
            continue;
        }
        let message = ev.message.clone().unwrap_or_default();
        let last = [
            ev.last_timestamp.as_ref().map(|t| t.0),
            ev.event_time.as_ref().map(|t| t.0),
            ev.metadata.creation_timestamp.as_ref().map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .filter_map(|t| u64::try_from(t.as_second()).ok())
        .max();
        let first = ev
            .first_timestamp
            .as_ref()
            .and_then(|t| u64::try_from(t.0.as_second()).ok())
            .or(last);
        let node = ev
            .reporting_instance
            .clone()
            .or_else(|| ev.source.as_ref().and_then(|s| s.host.clone()))
            .filter(|n| !n.is_empty());
        let r = by
            .entry((lease.to_string(), message.clone()))
            .or_insert_with(|| DuplicateReport {
                network: network.to_string(),
                ip: ip_of_key(&lease[prefix.len()..]),
                namespace: namespace.to_string(),
                lease: lease.to_string(),
                reason: DUPLICATE_REASON.to_string(),
                message,
                count: 0,
                events: 0,
                first_unix: None,
                last_unix: None,
                nodes: Vec::new(),
            });
        r.count += u64::try_from(ev.count.unwrap_or(1)).unwrap_or(1).max(1);
        r.events += 1;
        r.first_unix = r.first_unix.into_iter().chain(first).min();
        r.last_unix = r.last_unix.into_iter().chain(last).max();
        if let Some(n) = node.filter(|n| !r.nodes.contains(n)) {
            r.nodes.push(n);
        }
    }
    let mut out: Vec<DuplicateReport> = by.into_values().collect();
    out.sort_by(|a, b| b.last_unix.cmp(&a.last_unix).then(a.ip.cmp(&b.ip)));
    out
}

/// The address of an address object's name after `<net>.` ([`objects::ip_key`] backwards).
fn ip_of_key(key: &str) -> Option<IpAddr> {
    let parts: Vec<&str> = key.split('-').collect();
    match parts.len() {
        4 => {
            let mut o = [0u8; 4];
            for (d, p) in o.iter_mut().zip(&parts) {
                *d = p.parse().ok()?;
            }
            Some(IpAddr::V4(Ipv4Addr::from(o)))
        }
        8 => {
            let mut g = [0u16; 8];
            for (d, p) in g.iter_mut().zip(&parts) {
                *d = u16::from_str_radix(p, 16).ok()?;
            }
            Some(IpAddr::V6(Ipv6Addr::from(g)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(lease: &str, message: &str, count: i32, last: i64, node: &str) -> Event {
        Event {
            involved_object: ObjectReference {
                kind: Some("Lease".into()),
                name: Some(lease.into()),
                ..ObjectReference::default()
            },
            reason: Some(DUPLICATE_REASON.into()),
            message: Some(message.into()),
            count: Some(count),
            last_timestamp: Timestamp::from_second(last).ok().map(Time),
            reporting_instance: Some(node.into()),
            ..Event::default()
        }
    }

    #[test]
    fn events_of_one_duplicate_are_taken_together_and_other_networks_left_out() {
        let v6 = "fd00-0000-0000-0000-0000-0000-0000-0064";
        let events = [
            event(
                "iot.192-168-20-210",
                "DUPLICATE ADDRESS a",
                1,
                1_000,
                "pi-1",
            ),
            event(
                "iot.192-168-20-210",
                "DUPLICATE ADDRESS a",
                2,
                1_060,
                "pi-2",
            ),
            event(&format!("iot.{v6}"), "DUPLICATE ADDRESS b", 1, 900, "pi-1"),
            event("iot-2.192-168-20-210", "other network", 1, 2_000, "pi-1"),
            Event {
                reason: Some("Other".into()),
                ..event("iot.192-168-20-211", "not a duplicate", 1, 2_000, "pi-1")
            },
        ];
        let got = duplicates_of("iot", "iotlan-system", &events);
        assert_eq!(got.len(), 2, "{got:#?}");
        assert_eq!(got[0].ip, Some("192.168.20.210".parse().unwrap()));
        assert_eq!((got[0].count, got[0].events), (3, 2));
        assert_eq!(
            (got[0].first_unix, got[0].last_unix),
            (Some(1_000), Some(1_060))
        );
        assert_eq!(got[0].nodes, ["pi-1", "pi-2"]);
        assert_eq!(got[1].ip, Some("fd00::64".parse().unwrap()));
        assert_eq!(ip_of_key("x-y"), None);
    }
}
