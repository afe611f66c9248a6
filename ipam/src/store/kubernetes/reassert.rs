//! Re-asserting this node's Leases from what the node has: the node agent's answer to lost objects.
//!
//! A namespace deleted with the manifests (`kubectl delete -k`), an etcd restore or a manual
//! `kubectl delete leases` removes Lease objects while pods keep their addresses on the wire; the
//! next ADD would hand such an address out again. Every node agent, at start and in every pass,
//! reads the node-local records of the attachments the store granted on its node
//! ([`super::node_record`]; written on ADD, removed on DEL) and, for each of their leases:
//! - the address object exists and is the attachment's: nothing to do (1 GET);
//! - it is missing: it is created again as the record has it (an atomic create: a concurrent ADD
//!   elsewhere that took the address first wins, and is then a duplicate, below), and the
//!   identity's object lists the attachment again, so its DEL finds it by name;
//! - another attachment holds the address: one address is on two devices already. That is
//!   reported loudly (a Warning Event on the Lease's namespace, the agent's log, the report) and
//!   never resolved silently: neither object is changed.
//!
//! A missing address object whose identity's object still lists the attachment was freed on
//! purpose (the reconciler freed the Lease of a pod that is gone, whose DEL never came; a GC): a
//! loss takes the identity's object too. Its record is removed and nothing is recreated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use super::conn::Conn;
use super::node_record::{self, NodeRecord};
use super::settings::DEFAULT_TIMEOUT_MS;
use super::{objects, KubernetesStore};
use crate::allocator::Claims;
use crate::error::Error;
use crate::lease::{AllocRequest, Lease};

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
    /// Records that could not be read: (path, why).
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
        super::reconcile::write_freed(f, &self.recreated)?;
        write!(
            f,
            ", {} freed since (records removed), {} whose sandbox is gone (records removed), {} unreadable",
            self.released,
            self.sandbox_gone,
            self.unreadable.len()
        )?;
        for d in &self.duplicates {
            write!(f, "; {d}")?;
        }
        Ok(())
    }
}

/// Re-asserts the Leases of this node's attachments (module docs).
/// Whether a sandbox's network namespace (its path) is provably gone.
pub type NetnsGone = Box<dyn Fn(&str) -> bool + Send>;

pub struct Reasserter {
    kubeconfig: PathBuf,
    namespace: Option<String>,
    state_dir: PathBuf,
    netns_gone: Option<NetnsGone>,
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
        })
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
        let all = node_record::read_all(&self.state_dir).map_err(|e| {
            Error::io(
                "read directory",
                self.state_dir.join(node_record::RECORD_DIR),
                e,
            )
        })?;
        let mut by_network: BTreeMap<String, Vec<NodeRecord>> = BTreeMap::new();
        for (path, rec) in all {
            match rec {
                Ok(r) if self.sandbox_gone(&r) => {
                    report.sandbox_gone += 1;
                    if let Err(e) = std::fs::remove_file(&path) {
                        report
                            .unreadable
                            .push((path, format!("cannot remove: {e}")));
                    }
                }
                Ok(r) => by_network.entry(r.network.clone()).or_default().push(r),
                Err(why) => report.unreadable.push((path, why)),
            }
        }
        for (network, records) in by_network {
            let conn = Conn::open(&self.kubeconfig, Duration::from_millis(DEFAULT_TIMEOUT_MS))?;
            let ns = self
                .namespace
                .clone()
                .unwrap_or_else(|| conn.default_namespace.clone());
            let store = KubernetesStore::on(&network, &ns, conn, &self.state_dir);
            for rec in records {
                report.records += 1;
                store.reassert(&rec, &mut report)?;
            }
        }
        Ok(report)
    }
}

impl KubernetesStore {
    fn reassert(&self, rec: &NodeRecord, report: &mut ReassertReport) -> Result<(), Error> {
        let Some(first) = rec.leases.first() else {
            return Ok(());
        };
        let att = first.attachment();
        let mut txn = self.txn(&first.identity, &att);
        let mut recreated = false;
        for lease in &rec.leases {
            let holder = match self.get(lease.ip)? {
                Some(s) if s.lease.is_held_by(&att) => {
                    report.present += 1;
                    continue;
                }
                Some(s) => Some(s.lease),
                None => {
                    // Freed on purpose (the reconciler, GC, a DEL whose record outlived it): the
                    // identity's object still lists the attachment, which a loss would have taken
                    // with it. The record goes; nothing is recreated.
                    let rec = txn.parsed()?;
                    if rec
                        .attachment(&att)
                        .is_some_and(|e| e.addresses.iter().any(|a| a.ip == lease.ip))
                    {
                        report.released += 1;
                        node_record::remove(&self.state_dir, &self.network, &att);
                        continue;
                    }
                    txn.claim(lease, None)?
                }
            };
            match holder {
                None => {
                    tracing::warn!(network = %self.network, ip = %lease.ip, identity = %lease.identity,
                        container = %lease.container_id,
                        "recreated the missing Lease of an attachment on this node");
                    report.recreated.push((self.network.clone(), lease.clone()));
                    recreated = true;
                }
                Some(holder) => {
                    let d = Duplicate {
                        network: self.network.clone(),
                        ours: lease.clone(),
                        holder,
                    };
                    tracing::error!("{d}");
                    self.warn_event(&d);
                    report.duplicates.push(d);
                }
            }
        }
        if recreated {
            let req = AllocRequest {
                identity: first.identity.clone(),
                attachment: att,
                sandbox: first.sandbox.clone(),
                ..AllocRequest::default()
            };
            txn.finish(&req, &rec.leases)?;
        }
        Ok(())
    }

    /// A Warning Event on the address's Lease; a failure to post it is logged, never fatal.
    fn warn_event(&self, d: &Duplicate) {
        let events: Api<Event> = Api::namespaced(self.conn.client.clone(), &self.namespace);
        let name = self.name_of(d.ours.ip);
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
            reason: Some("DuplicateAddress".into()),
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
