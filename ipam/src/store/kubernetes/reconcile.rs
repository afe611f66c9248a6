//! The reconcile loop: frees leases whose pod no longer exists, and prunes unused sticky records.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::Lease as KLease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};

use super::conn::Conn;
use super::objects;
use super::settings::DEFAULT_TIMEOUT_MS;
use crate::error::Error;
use crate::lease::Lease;

/// What one reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Address objects looked at (all networks in the namespace).
    pub checked: usize,
    /// Leases freed because their pod no longer exists: (network, lease).
    pub freed: Vec<(String, Lease)>,
    /// Leases of missing pods kept because they are younger than the grace period.
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
        for (net, l) in &self.freed {
            write!(
                f,
                " [{net} {} of {} ({})]",
                l.ip, l.identity, l.container_id
            )?;
        }
        write!(
            f,
            ", {} of missing pods within the grace period, {} without a pod identity; \
             sticky records: {} newly unused, {} pruned",
            self.young,
            self.podless,
            self.identities_marked,
            self.identities_pruned.len()
        )
    }
}

/// Frees leases whose pod no longer exists: the safety net for DELs that never came (a node
/// that died, a runtime that lost its state). Run by the DaemonSet on every node; deletes are
/// conditional, so several reconcilers never free more than once, and never free a lease that
/// changed hands.
pub struct Reconciler {
    kubeconfig: PathBuf,
    namespace: Option<String>,
    grace: Duration,
    identity_retention: Option<Duration>,
}

/// The label selector of every object of `kind` (all networks) that iotlan manages.
fn kind_selector(kind: &str) -> String {
    format!(
        "{}={},{}={kind}",
        objects::MANAGED_BY,
        objects::MANAGER,
        objects::LABEL_KIND
    )
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

/// How long an unused sticky identity record is kept by default: 30 days.
pub const DEFAULT_IDENTITY_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

impl Reconciler {
    /// `namespace` of the Lease objects defaults to the kubeconfig context's namespace. A lease
    /// younger than `grace` is never freed, whatever the pod list says: its pod may still be
    /// starting, or the list may predate it. The kubeconfig is read again on every pass, so a
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
            .unwrap_or_else(|| conn.default_namespace.clone());
        let leases_api: Api<KLease> = Api::namespaced(conn.client.clone(), &ns);
        let pods_api: Api<Pod> = Api::all(conn.client.clone());
        let sel = kind_selector(objects::KIND_ADDRESS);
        let leases = conn.run(
            "list leases",
            leases_api.list(&ListParams::default().labels(&sel)),
        )?;
        // Names are all it needs: metadata only, a fraction of the full Pod objects.
        let pods = conn.run("list pods", pods_api.list_metadata(&ListParams::default()))?;
        let live: std::collections::HashSet<String> = pods
            .items
            .iter()
            .filter_map(|p| {
                Some(format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref()?,
                    p.metadata.name.as_deref()?
                ))
            })
            .collect();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut report = ReconcileReport {
            checked: leases.items.len(),
            ..ReconcileReport::default()
        };
        for obj in &leases.items {
            let ann = obj.metadata.annotations.clone().unwrap_or_default();
            let Some(network) = ann.get(objects::ANN_NETWORK) else {
                continue;
            };
            let Ok(lease) = objects::lease_of(network, obj) else {
                continue;
            };
            if !lease.identity.contains('/') {
                report.podless += 1;
                continue;
            }
            if live.contains(&lease.identity) {
                continue;
            }
            // The server's creation time, else the allocating node's record of it. (Either is
            // another clock than ours: the grace period also covers clock skew.)
            let created = obj
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| u64::try_from(t.0.as_second()).ok())
                .unwrap_or(lease.created_unix);
            if now.saturating_sub(created) < self.grace.as_secs() {
                report.young += 1;
                continue;
            }
            let name = obj.metadata.name.clone().unwrap_or_default();
            let dp = exactly(obj);
            match conn.run(
                &format!("delete lease {name}"),
                leases_api.delete(&name, &dp),
            ) {
                Ok(_) => {
                    tracing::info!(network = %network, ip = %lease.ip, identity = %lease.identity,
                        container = %lease.container_id, "freed the lease of a pod that no longer exists");
                    report.freed.push((network.clone(), lease));
                }
                Err(e) if e.is(404) || e.is(409) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(retention) = self.identity_retention {
            self.prune_identities(
                &conn,
                &leases_api,
                &leases.items,
                &live,
                now,
                retention,
                &mut report,
            )?;
        }
        Ok(report)
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
        addresses: &[KLease],
        live: &std::collections::HashSet<String>,
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
                let lease = objects::lease_of(network, obj).ok()?;
                (!freed.contains(&(network.as_str(), lease.ip)))
                    .then(|| (network.clone(), lease.identity))
            })
            .collect();
        let sel = kind_selector(objects::KIND_IDENTITY);
        let records = conn.run("list leases", api.list(&ListParams::default().labels(&sel)))?;
        for obj in records.items {
            let ann = obj.metadata.annotations.clone().unwrap_or_default();
            let (Some(network), Some(identity)) = (
                ann.get(objects::ANN_NETWORK),
                ann.get(objects::ANN_IDENTITY),
            ) else {
                continue;
            };
            let used =
                in_use.contains(&(network.clone(), identity.clone())) || live.contains(identity);
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
                    let mut marked = obj.clone();
                    let annotations = marked
                        .metadata
                        .annotations
                        .get_or_insert_with(Default::default);
                    if used {
                        annotations.remove(objects::ANN_UNUSED_SINCE);
                    } else {
                        annotations.insert(objects::ANN_UNUSED_SINCE.to_string(), now.to_string());
                        report.identities_marked += 1;
                    }
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
