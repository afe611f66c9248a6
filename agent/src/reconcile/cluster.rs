//! The reconcile loop: frees leases whose pod no longer exists (or is another pod object of the
//! same name) once they have been seen so for longer than the grace, and prunes unused sticky
//! records. A node's hostShim address (identity `iotlan-shim.<node>`, [`iotlan_ipam::node::shim_node`])
//! is its node's: it is freed the same way once the Node object is gone (a node removed from the
//! cluster, a re-imaged Pi joining under a new name); a node that exists keeps it, Ready or not.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::Lease as KLease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::core::PartialObjectMeta;

use iotlan_ipam::store::kubernetes::{objects, Conn, DEFAULT_TIMEOUT_MS};
use iotlan_ipam::{Error, Lease};

use super::orphan::{self, LivePods, PodState};

/// What one reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Address objects looked at (all networks in the namespace).
    pub checked: usize,
    /// Leases freed because their pod no longer exists: (network, lease).
    pub freed: Vec<(String, Lease)>,
    /// Leases of missing (or replaced) pods newly seen so this pass: marked missing since now.
    pub marked: usize,
    /// Leases of missing (or replaced) pods kept because they have been missing for less than the
    /// grace period.
    pub young: usize,
    /// Leases whose identity is a bare container ID (no pod to look up): never touched.
    pub podless: usize,
    /// Sticky identity records newly seen unused (no address held, no pod): marked this pass.
    pub identities_marked: usize,
    /// Sticky identity records deleted after being unused for the retention: (network, identity).
    pub identities_pruned: Vec<(String, String)>,
}

impl std::fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} leases checked, {} freed",
            self.checked,
            self.freed.len()
        )?;
        write_freed(f, &self.freed)?;
        write!(
            f,
            ", {} of missing pods newly marked, {} within the grace period, {} without a pod identity; \
             sticky records: {} newly unused, {} pruned",
            self.marked,
            self.young,
            self.podless,
            self.identities_marked,
            self.identities_pruned.len()
        )
    }
}

/// ` [network ip of identity (container)]` for each freed lease.
pub(crate) fn write_freed(
    f: &mut std::fmt::Formatter<'_>,
    freed: &[(String, Lease)],
) -> std::fmt::Result {
    for (net, l) in freed {
        write!(
            f,
            " [{net} {} of {} ({})]",
            l.ip, l.identity, l.container_id
        )?;
    }
    Ok(())
}

/// The pods of a metadata list, by namespace/name, with their UIDs.
pub(crate) fn live_pods(items: &[PartialObjectMeta<Pod>]) -> LivePods {
    LivePods::new(items.iter().filter_map(|p| {
        Some((
            p.metadata.namespace.as_deref()?,
            p.metadata.name.as_deref()?,
            p.metadata.uid.as_deref(),
        ))
    }))
}

/// Frees leases whose pod no longer exists (or was replaced by another pod of the same name):
/// the safety net for DELs that never came (a node
/// that died, a runtime that lost its state). Run by the DaemonSet on every node; deletes are
/// conditional, so several reconcilers never free more than once, and never free a lease that
/// changed hands.
pub struct Reconciler {
    kubeconfig: PathBuf,
    namespace: Option<String>,
    grace: Duration,
    identity_retention: Option<Duration>,
}

/// A listed object: metadata only.
type Meta = PartialObjectMeta<KLease>;

/// How many objects one page of the reconciler's LIST carries.
pub const LIST_PAGE: u32 = 500;

/// Lists every object iotlan manages in the namespace (all networks, both kinds): one LIST, of
/// metadata only (names, labels, annotations, uid, resourceVersion: all the records are), in pages
/// of [`LIST_PAGE`] (`limit` and `continue`), so a large namespace never comes in one answer.
/// Returns the address objects and the identity objects.
fn list_managed(conn: &Conn, api: &Api<KLease>) -> Result<(Vec<Meta>, Vec<Meta>), Error> {
    let sel = format!("{}={}", objects::MANAGED_BY, objects::MANAGER);
    let mut params = ListParams::default().labels(&sel).limit(LIST_PAGE);
    let (mut addresses, mut identities) = (Vec::new(), Vec::new());
    loop {
        let page = conn.run("list leases", api.list_metadata(&params))?;
        for m in page.items {
            let kind = m
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(objects::LABEL_KIND))
                .cloned();
            match kind.as_deref() {
                Some(objects::KIND_ADDRESS) => addresses.push(m),
                Some(objects::KIND_IDENTITY) => identities.push(m),
                _ => {}
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok((addresses, identities)),
        }
    }
}

/// The lease an address object's metadata records, and the whole object as the store wrote it
/// (for a conditional write of a mark: the listed metadata, with uid and resourceVersion, and the
/// spec rebuilt from the lease).
fn address_of(network: &str, meta: &Meta) -> Result<(Lease, KLease), String> {
    let obj = KLease {
        metadata: meta.metadata.clone(),
        spec: None,
    };
    let lease = objects::lease_of(network, &obj)?;
    let netkey = objects::network_key(network);
    let spec = objects::address_object(network, &netkey, "", &lease).spec;
    Ok((lease, KLease { spec, ..obj }))
}

/// An identity object from its metadata (its spec is only the identity as holder).
fn identity_of(meta: &Meta) -> KLease {
    let holder = meta
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(objects::ANN_IDENTITY))
        .cloned();
    KLease {
        metadata: meta.metadata.clone(),
        spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: holder,
            ..Default::default()
        }),
    }
}

/// Deletes exactly the object as it was listed: not if it changed or was recreated since.
fn exactly(obj: &KLease) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.metadata.uid.clone(),
            resource_version: obj.metadata.resource_version.clone(),
        }),
        ..DeleteParams::default()
    }
}

/// `obj` with the Unix-time mark `key` set to `at`, or removed for `None`. Keeps the listed uid
/// and resourceVersion, so the write is conditional on the object being unchanged.
fn with_mark(obj: &KLease, key: &str, at: Option<u64>) -> KLease {
    let mut marked = obj.clone();
    let annotations = marked
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    match at {
        Some(t) => annotations.insert(key.to_string(), t.to_string()),
        None => annotations.remove(key),
    };
    marked
}

/// Whether the nodes of hostShim leases exist, asked once per node and pass (`get` on nodes).
struct ShimNodes {
    api: Api<Node>,
    exists: HashMap<String, bool>,
}

impl ShimNodes {
    /// The state of a hostShim lease's owner (`None`: `identity` is not a hostShim's): `Missing`
    /// once its Node object is gone, else `Live`. A NotReady node keeps its address: it may come
    /// back, and the address must not go to a pod meanwhile.
    fn state(&mut self, conn: &Conn, identity: &str) -> Result<Option<PodState>, Error> {
        let Some(node) = iotlan_ipam::node::shim_node(identity) else {
            return Ok(None);
        };
        let exists = match self.exists.get(node) {
            Some(e) => *e,
            None => {
                let e = conn
                    .run(&format!("get node {node}"), self.api.get_opt(node))?
                    .is_some();
                self.exists.insert(node.to_string(), e);
                e
            }
        };
        Ok(Some(if exists {
            PodState::Live
        } else {
            PodState::Missing
        }))
    }
}

/// How long an unused sticky identity record is kept by default: 30 days.
pub const DEFAULT_IDENTITY_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

impl Reconciler {
    /// `namespace` of the Lease objects defaults to the kubeconfig context's namespace. A lease is
    /// freed only once its pod has been seen missing (no pod of that name, or another pod object
    /// of that name than the one the lease recorded) for longer than `grace`, counted from the
    /// `iotlan/missing-since-unix` mark the first pass that saw it so writes on its object
    /// ([`super::orphan`]); a pod seen again clears the mark. The kubeconfig is read again on every pass, so a
    /// rotated token is picked up; `new` checks that it can be read now.
    pub fn new(
        kubeconfig: &Path,
        namespace: Option<&str>,
        grace: Duration,
    ) -> Result<Reconciler, Error> {
        Conn::open(kubeconfig, Duration::from_millis(DEFAULT_TIMEOUT_MS))?;
        Ok(Reconciler {
            kubeconfig: kubeconfig.to_path_buf(),
            namespace: namespace.map(str::to_string),
            grace,
            identity_retention: Some(DEFAULT_IDENTITY_RETENTION),
        })
    }

    /// How long a sticky identity record (an identity's latest addresses) may stay unused (no
    /// address held, and no pod, for pod identities) before it is deleted; `None` keeps them all.
    /// Without this, every pod name ever seen (a Deployment's pods get new ones on every rollout)
    /// would leave an object behind for good.
    pub fn with_identity_retention(mut self, retention: Option<Duration>) -> Reconciler {
        self.identity_retention = retention;
        self
    }

    /// One pass. Lists the leases first, then the pods: a pod always exists in the API before its
    /// sandbox (and so its lease) is created, so a lease in the first list whose pod is missing
    /// from the later one really lost its pod.
    pub fn run_once(&mut self) -> Result<ReconcileReport, Error> {
        let conn = Conn::open(&self.kubeconfig, Duration::from_millis(DEFAULT_TIMEOUT_MS))?;
        let ns = self
            .namespace
            .clone()
            .unwrap_or_else(|| conn.default_namespace().to_string());
        let leases_api: Api<KLease> = Api::namespaced(conn.client().clone(), &ns);
        let pods_api: Api<Pod> = Api::all(conn.client().clone());
        let (addresses, identities) = list_managed(&conn, &leases_api)?;
        // Names and UIDs are all it needs: metadata only, a fraction of the full Pod objects.
        let pods = conn.run("list pods", pods_api.list_metadata(&ListParams::default()))?;
        let live = live_pods(&pods.items);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut report = ReconcileReport {
            checked: addresses.len(),
            ..ReconcileReport::default()
        };
        let mut nodes = ShimNodes {
            api: Api::all(conn.client().clone()),
            exists: HashMap::new(),
        };
        for obj in &addresses {
            self.judge_address(&conn, &leases_api, obj, &live, &mut nodes, now, &mut report)?;
        }
        if let Some(retention) = self.identity_retention {
            self.prune_identities(
                &conn,
                &leases_api,
                (&addresses, identities),
                &live,
                now,
                retention,
                &mut report,
            )?;
        }
        Ok(report)
    }

    /// One address object: freed when its pod has been missing (or replaced by another pod of
    /// the same name) for longer than the grace, counted from the `missing-since` mark the first
    /// pass that saw it so wrote; the mark goes when the pod is seen again. Every write is
    /// conditional on the object as listed, so a takeover in between wins.
    #[allow(clippy::too_many_arguments)]
    fn judge_address(
        &self,
        conn: &Conn,
        api: &Api<KLease>,
        meta: &Meta,
        live: &LivePods,
        nodes: &mut ShimNodes,
        now: u64,
        report: &mut ReconcileReport,
    ) -> Result<(), Error> {
        let ann = meta.metadata.annotations.clone().unwrap_or_default();
        let Some(network) = ann.get(objects::ANN_NETWORK) else {
            return Ok(());
        };
        let Ok((lease, obj)) = address_of(network, meta) else {
            return Ok(());
        };
        let obj = &obj;
        let state = match nodes.state(conn, &lease.identity)? {
            Some(state) => state,
            None => live.state(&lease),
        };
        let since = ann
            .get(objects::ANN_MISSING_SINCE)
            .and_then(|s| s.parse::<u64>().ok());
        let name = obj.metadata.name.clone().unwrap_or_default();
        let outcome = match (state, since) {
            (PodState::Podless, _) => {
                report.podless += 1;
                return Ok(());
            }
            (PodState::Live, None) => return Ok(()),
            (PodState::Live, Some(_)) | (_, None) => {
                let marked = state.is_orphaned();
                if marked {
                    report.marked += 1;
                }
                let obj = with_mark(obj, objects::ANN_MISSING_SINCE, marked.then_some(now));
                conn.run(
                    &format!("replace lease {name}"),
                    api.replace(&name, &PostParams::default(), &obj),
                )
                .map(|_| ())
            }
            (_, Some(t)) if !orphan::due(t, now, self.grace) => {
                report.young += 1;
                return Ok(());
            }
            (_, Some(_)) => {
                let r = conn.run(
                    &format!("delete lease {name}"),
                    api.delete(&name, &exactly(obj)),
                );
                if r.is_ok() {
                    tracing::info!(network = %network, ip = %lease.ip, identity = %lease.identity,
                        container = %lease.container_id, pod = ?state,
                        "freed the lease of a pod (or a removed node's hostShim) that no longer exists");
                    report.freed.push((network.clone(), lease));
                }
                r.map(|_| ())
            }
        };
        match outcome {
            Ok(()) => Ok(()),
            // Changed or gone since the list: the next pass judges what it is now.
            Err(e) if e.is(404) || e.is(409) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sticky identity records: one unused (no address held; for a pod identity, no pod) is marked
    /// with the time it was first seen so, and deleted once it has been unused for `retention`.
    /// One in use again loses its mark. Every write is conditional on the resourceVersion listed,
    /// so an ADD that rewrote the record in between wins.
    #[allow(clippy::too_many_arguments)]
    fn prune_identities(
        &self,
        conn: &Conn,
        api: &Api<KLease>,
        (addresses, records): (&[Meta], Vec<Meta>),
        live: &LivePods,
        now: u64,
        retention: Duration,
        report: &mut ReconcileReport,
    ) -> Result<(), Error> {
        let freed: std::collections::HashSet<(&str, IpAddr)> = report
            .freed
            .iter()
            .map(|(net, l)| (net.as_str(), l.ip))
            .collect();
        let in_use: std::collections::HashSet<(String, String)> = addresses
            .iter()
            .filter_map(|obj| {
                let ann = obj.metadata.annotations.as_ref()?;
                let network = ann.get(objects::ANN_NETWORK)?;
                let (lease, _) = address_of(network, obj).ok()?;
                (!freed.contains(&(network.as_str(), lease.ip)))
                    .then(|| (network.clone(), lease.identity))
            })
            .collect();
        for meta in records {
            let obj = identity_of(&meta);
            let ann = obj.metadata.annotations.clone().unwrap_or_default();
            let (Some(network), Some(identity)) = (
                ann.get(objects::ANN_NETWORK),
                ann.get(objects::ANN_IDENTITY),
            ) else {
                continue;
            };
            let used =
                in_use.contains(&(network.clone(), identity.clone())) || live.has_pod(identity);
            let since = ann
                .get(objects::ANN_UNUSED_SINCE)
                .and_then(|s| s.parse::<u64>().ok());
            let name = obj.metadata.name.clone().unwrap_or_default();
            let outcome = match (used, since) {
                (true, None) => continue,
                (false, Some(t)) if now.saturating_sub(t) < retention.as_secs() => continue,
                (false, Some(_)) => {
                    let dp = exactly(&obj);
                    let r = conn.run(&format!("delete lease {name}"), api.delete(&name, &dp));
                    if r.is_ok() {
                        tracing::info!(%network, %identity, "pruned an unused sticky identity record");
                        report
                            .identities_pruned
                            .push((network.clone(), identity.clone()));
                    }
                    r.map(|_| ())
                }
                (used, _) => {
                    if !used {
                        report.identities_marked += 1;
                    }
                    let marked = with_mark(&obj, objects::ANN_UNUSED_SINCE, (!used).then_some(now));
                    conn.run(
                        &format!("replace lease {name}"),
                        api.replace(&name, &PostParams::default(), &marked),
                    )
                    .map(|_| ())
                }
            };
            match outcome {
                Ok(()) => {}
                Err(e) if e.is(404) || e.is(409) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
