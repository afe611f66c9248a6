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
//! [`crate::events::recent_duplicates`] reads those Events back (for `iotlan status`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use iotlan_ipam::store::kubernetes::node_record::{self, NodeRecord};
use iotlan_ipam::store::kubernetes::{
    Conn, KubernetesStore, Reasserted, Settings, DEFAULT_TIMEOUT_MS,
};
use iotlan_ipam::{Error, Lease};

use crate::events::EventPoster;

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
    /// Node-local records read: the ones re-asserted, whose sandbox is gone, and that did not parse.
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
            "{} node-local attachment records read: {} leases present, {} recreated",
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
        report.records = all.len();
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
            let events = EventPoster::new(conn, namespace, store.node().map(str::to_string));
            for rec in records {
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
