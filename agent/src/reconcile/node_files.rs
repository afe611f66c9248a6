//! The node agent's reconcile loop for the *file* store: frees leases on this node whose pod is not
//! on this node any more.
//!
//! Multus forwards CNI GC only to the cluster network, never to a NetworkAttachmentDefinition's
//! plugin, and Multus thick drops a delegate's DEL error: a file-store lease whose DEL never came
//! would stay for good. The node agent knows its node, and the API server knows which pods are on
//! it. Each pass lists the leases of every network under the state dir first, then the pods bound
//! to this node (`spec.nodeName`, metadata only), and judges each lease as the cluster
//! reconciler does ([`super::orphan`]): a lease whose pod is not on this node, or is there as
//! another pod object (another UID), is marked missing, and freed (as DEL frees it) once it has
//! been missing for longer than the grace. The marks are kept in memory across passes: an agent
//! restart starts them again, which only delays a release.
//!
//! Each pass also applies the sticky identity records' retention ([`FileStoreReconciler::
//! with_identity_retention`]): the file store prunes records unused for that long only in CNI GC,
//! which Multus never forwards, so without the agent every pod name ever seen on the node (a
//! Deployment's pods get new ones on every rollout) would leave a record for good.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use iotlan_ipam::store::kubernetes::{Conn, DEFAULT_TIMEOUT_MS};
use iotlan_ipam::{Error, FileStore, Lease, Store};

use super::orphan::{self, LivePods, PodState};

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileReconcileReport {
    /// Network dirs looked at.
    pub networks: usize,
    /// Leases looked at.
    pub checked: usize,
    /// Leases freed: (network, lease).
    pub freed: Vec<(String, Lease)>,
    /// Leases of pods not on this node, newly seen so this pass.
    pub marked: usize,
    /// Leases of pods not on this node, missing for less than the grace.
    pub young: usize,
    /// Leases of a bare container ID (no pod to look up): never touched.
    pub podless: usize,
}

impl std::fmt::Display for FileReconcileReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} file-store leases in {} networks checked, {} freed",
            self.checked,
            self.networks,
            self.freed.len()
        )?;
        super::cluster::write_freed(f, &self.freed)?;
        write!(
            f,
            ", {} of pods not on this node newly marked, {} within the grace period, {} without a pod identity",
            self.marked, self.young, self.podless
        )
    }
}

/// The lease a mark is for: a new sandbox taking the address gets a mark of its own.
type MarkKey = (String, IpAddr, String, String);

/// Reconciles the file stores under one state dir against the pods of one node.
pub struct FileStoreReconciler {
    kubeconfig: PathBuf,
    node: String,
    state_dir: PathBuf,
    grace: Duration,
    lock_timeout: Duration,
    missing_since: HashMap<MarkKey, u64>,
    identity_retention: Option<Duration>,
}

/// How young a lease the retention's pass leaves alone although it was not in its snapshot: one
/// an ADD made while the pass ran (see [`FileStoreReconciler::apply_retention`]).
const RETENTION_SNAPSHOT_GRACE: Duration = Duration::from_secs(3600);

impl FileStoreReconciler {
    /// `state_dir` holds one file-store dir per network (`store.dir`, default
    /// `/var/lib/cni/iotlan`); `node` is this node's Kubernetes name. The kubeconfig is read again
    /// on every pass (a rotated token is picked up); `new` checks that it can be read now.
    pub fn new(
        kubeconfig: &Path,
        node: &str,
        state_dir: &Path,
        grace: Duration,
    ) -> Result<FileStoreReconciler, Error> {
        if !iotlan_ipam::node::valid(node) {
            return Err(Error::config(
                "node",
                format!("{node:?} is not a Kubernetes node name"),
            ));
        }
        Conn::open(kubeconfig, Duration::from_millis(DEFAULT_TIMEOUT_MS))?;
        Ok(FileStoreReconciler {
            kubeconfig: kubeconfig.to_path_buf(),
            node: node.to_string(),
            state_dir: state_dir.to_path_buf(),
            grace,
            lock_timeout: Duration::from_millis(iotlan_ipam::config::DEFAULT_LOCK_TIMEOUT_MS),
            missing_since: HashMap::new(),
            identity_retention: None,
        })
    }

    /// Deletes a sticky identity record (an identity's latest addresses) that has held no address
    /// for `retention`, in every network dir, on every pass; `None` (the default) keeps them all.
    pub fn with_identity_retention(mut self, retention: Option<Duration>) -> FileStoreReconciler {
        self.identity_retention = retention;
        self
    }

    /// The file store's own retention, run as its GC runs it: a GC whose valid attachments are
    /// every lease's of a snapshot taken just before, so that it frees no lease. A lease an ADD
    /// made after the snapshot is younger than [`RETENTION_SNAPSHOT_GRACE`], which GC leaves alone.
    /// Needs no API server. A failure is logged per network and never stops the pass.
    fn apply_retention(&self, stores: &[(String, FileStore)]) {
        let Some(retention) = self.identity_retention else {
            return;
        };
        for (network, store) in stores {
            let result = store.leases().and_then(|leases| {
                let valid: Vec<_> = leases.iter().map(Lease::attachment).collect();
                store
                    .clone()
                    .with_identity_retention(Some(retention))
                    .with_gc_grace(RETENTION_SNAPSHOT_GRACE)
                    .gc(&valid)
            });
            match result {
                Ok(freed) if freed.is_empty() => {}
                Ok(freed) => tracing::warn!(network = %network, freed = freed.len(),
                    "the identity retention's pass freed leases it should have kept"),
                Err(e) => tracing::warn!(network = %network, error = %e,
                    "could not apply the sticky identity records' retention"),
            }
        }
    }

    /// One pass (see the module docs). A state dir that does not exist yet has nothing to free.
    pub fn run_once(&mut self) -> Result<FileReconcileReport, Error> {
        let mut report = FileReconcileReport::default();
        let stores = self.stores()?;
        report.networks = stores.len();
        // First: it needs no API server, so a pass that cannot list the pods still does it.
        self.apply_retention(&stores);
        // The leases first, then the pods: a pod is bound to its node before its sandbox (and so
        // its lease) exists, so a lease in the first list whose pod is missing from the later one
        // really lost it.
        let mut snapshot = Vec::new();
        for (network, store) in &stores {
            for l in store.leases()? {
                snapshot.push((network.clone(), l));
            }
        }
        report.checked = snapshot.len();
        let live = self.pods_on_node()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut marks = HashMap::new();
        for (network, lease) in snapshot {
            let state = live.state(&lease);
            match state {
                PodState::Podless => report.podless += 1,
                PodState::Live => {}
                PodState::Missing | PodState::Replaced => {
                    let key = (
                        network.clone(),
                        lease.ip,
                        lease.container_id.clone(),
                        lease.ifname.clone(),
                    );
                    let since = self.missing_since.get(&key).copied();
                    let Some(since) = since else {
                        report.marked += 1;
                        marks.insert(key, now);
                        continue;
                    };
                    if !orphan::due(since, now, self.grace) {
                        report.young += 1;
                        marks.insert(key, since);
                        continue;
                    }
                    let Some((_, store)) = stores.iter().find(|(n, _)| *n == network) else {
                        continue;
                    };
                    // As DEL frees it: only what this attachment still holds.
                    for freed in store.release(&lease.attachment())? {
                        tracing::info!(network = %network, ip = %freed.ip, identity = %freed.identity,
                            container = %freed.container_id, pod = ?state,
                            "freed a file-store lease of a pod no longer on this node");
                        report.freed.push((network.clone(), freed));
                    }
                }
            }
        }
        // Marks of leases gone, or whose pod is back, go.
        self.missing_since = marks;
        Ok(report)
    }

    /// The file store of every network dir under the state dir, by network name.
    fn stores(&self) -> Result<Vec<(String, FileStore)>, Error> {
        let entries = match std::fs::read_dir(&self.state_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read directory", &self.state_dir, e)),
        };
        let mut stores = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read directory", &self.state_dir, e))?;
            let Ok(network) = entry.file_name().into_string() else {
                continue;
            };
            if !entry.path().is_dir() || iotlan_ipam::names::validate_network(&network).is_err() {
                continue;
            }
            stores.push((network, FileStore::open(&entry.path(), self.lock_timeout)?));
        }
        stores.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(stores)
    }

    fn pods_on_node(&self) -> Result<LivePods, Error> {
        let conn = Conn::open(&self.kubeconfig, Duration::from_millis(DEFAULT_TIMEOUT_MS))?;
        let pods: Api<Pod> = Api::all(conn.client().clone());
        let params = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
        let list = conn.run(
            &format!("list pods on node {}", self.node),
            pods.list_metadata(&params),
        )?;
        Ok(super::cluster::live_pods(&list.items))
    }
}
