//! The `kubernetes` store: the pool of a whole cluster, kept in the API server.
//!
//! Every held address is one `coordination.k8s.io/v1` Lease object named after the network and
//! the address (layout in [`objects`]). ADD and DEL find what they need by name, never by a LIST:
//! 3 requests for an ADD, 2 for a DEL ([`Store::release_for`]) in the common cases, whatever the
//! number of objects in the namespace (`txn.rs`). Only the reconciler, CNI GC and the operator's
//! listing scan. Claiming an address is creating its object: the API
//! server's create is atomic and answers 409 AlreadyExists when the object exists, so two
//! nodes can never hold one address, and a lost race just moves the search on to the next
//! candidate. There is no cluster-wide lock and no read-modify-write of a shared pool object.
//! Release deletes with a precondition on the object's uid and resourceVersion, so it never
//! removes an object that changed hands in the meantime (a new sandbox of the same pod taking
//! the address over replaces the object under a resourceVersion precondition).
//!
//! Leases record the node (host name) that allocated them. CNI GC comes from one node's runtime and
//! frees only that node's leases; the node agent's reconcile loop (`iotlan_agent::reconcile`) frees leases of
//! pods that no longer exist (or were recreated under the same name, by pod UID) once they have
//! been seen missing for longer than its grace, whatever their node.
//!
//! Why Leases and not a CRD: the type is built in (nothing to install cluster-wide before the
//! first pod can start, no CRD version upgrades), RBAC can be limited to `leases` in one
//! namespace, `spec.holderIdentity` shows the pod in `kubectl get leases`, and no controller
//! acts on Leases outside `kube-node-lease`. Leader election also uses Leases; ours carry the
//! `app.kubernetes.io/managed-by=iotlan` label in their own namespace and no duration, so they
//! are never mistaken for an election lock.
//!
//! Configuration: the `ipam.store` keys of this kind are the variants of [`StoreKey`]; what each means
//! is in the README's configuration reference (`ipam.store`), checked against them by a test.
//!
//! An address held by an earlier sandbox of the same pod on *another* node is taken over only when
//! that node is lost (`nodes.rs`): its Node object is gone, or its `Ready` condition has not been
//! `True` for longer than `nodeLossGraceSeconds` (Kubernetes' contract: a node NotReady past its
//! grace is presumed gone). Otherwise the ADD fails with [`Error::StillInUse`] (CNI code 11) and
//! kubelet retries. Asking needs `get` on `nodes` (a ClusterRole); a refused or failed question is
//! [`Error::Unavailable`], never "lost".
//!
//! The store API is synchronous; each store owns a small current-thread tokio runtime. An API
//! server that cannot be reached, times out, or answers 5xx/429/401/403 gives
//! [`Error::Unavailable`] (retryable, CNI code 11).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease as KLease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};

use crate::allocator::{self, Claims, Grant, SandboxCheck};
use crate::config::StoreConfig;
use crate::error::Error;
use crate::lease::{AllocRequest, Attachment, Lease};
use crate::pool::Pool;
use crate::store::Store;

mod conn;
mod error;
pub mod node_record;
mod nodes;
pub mod objects;
mod recreate;
mod settings;
mod txn;

pub use conn::{ApiError, Conn};
pub use recreate::Reasserted;
pub use settings::{
    Key as StoreKey, Settings, DEFAULT_KUBECONFIGS, DEFAULT_NAMESPACE,
    DEFAULT_NODE_LOSS_GRACE_SECONDS, DEFAULT_TIMEOUT_MS, NODE_LOSS_GRACE_SECONDS,
};

/// The kubernetes store of one network.
pub struct KubernetesStore {
    network: String,
    netkey: String,
    namespace: String,
    node: Option<String>,
    gc_grace: Duration,
    node_loss_grace: Duration,
    state_dir: PathBuf,
    conn: Conn,
    api: Api<KLease>,
    nodes: Api<Node>,
}

impl std::fmt::Debug for KubernetesStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesStore")
            .field("network", &self.network)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// An object we read or wrote, with what a conditional write or delete needs.
#[derive(Debug, Clone)]
struct Seen {
    lease: Lease,
    uid: String,
    resource_version: String,
}

impl KubernetesStore {
    /// Opens the store of `network` as `cfg` describes (see the module docs for the keys).
    /// Nothing is sent to the API server until the first operation.
    pub fn open(network: &str, cfg: &StoreConfig) -> Result<KubernetesStore, Error> {
        KubernetesStore::with_settings(network, Settings::from_config(cfg)?)
    }

    /// Opens the store of `network` with `settings` read already (leniently, for DEL).
    pub fn with_settings(network: &str, settings: Settings) -> Result<KubernetesStore, Error> {
        let kubeconfig = settings.kubeconfig_path()?;
        let conn = Conn::open(&kubeconfig, settings.timeout)?;
        // The node agent writes the node name beside the kubeconfig it writes.
        let beside: Vec<&Path> = kubeconfig.parent().into_iter().collect();
        let node = crate::node::local_name(&beside).or_else(crate::node::default_name);
        Ok(KubernetesStore::with_conn(network, settings, conn).with_node(node))
    }

    /// The store of `network` on the API server `config` describes (`kube::Config::infer`,
    /// `Config::incluster`, a kubeconfig read by the caller), as `settings` describe it but for the
    /// kubeconfig. Nothing is sent to the API server until the first operation.
    pub fn connect(
        network: &str,
        settings: Settings,
        config: kube::Config,
    ) -> Result<KubernetesStore, Error> {
        let conn = Conn::new(config, settings.timeout)?;
        Ok(KubernetesStore::with_conn(network, settings, conn))
    }

    /// The store of `network` over an open connection, as `settings` describe it (its kubeconfig
    /// and timeout are the connection's). The node recorded in new leases is `MULTUS_NODE_NAME`,
    /// else the host name ([`crate::node::local_name`]), unless [`Self::with_node`] says.
    pub fn with_conn(network: &str, settings: Settings, conn: Conn) -> KubernetesStore {
        KubernetesStore {
            network: network.to_string(),
            netkey: objects::network_key(network),
            node: crate::node::local_name(&[]),
            gc_grace: Duration::ZERO,
            node_loss_grace: settings.node_loss_grace,
            state_dir: settings.state_dir,
            api: Api::namespaced(conn.client().clone(), &settings.namespace),
            nodes: Api::all(conn.client().clone()),
            namespace: settings.namespace,
            conn,
        }
    }

    /// The node recorded in new leases and whose leases GC may free: by default the name the node
    /// agent wrote beside the kubeconfig ([`crate::node`]), else the host name.
    pub fn with_node(mut self, node: Option<String>) -> KubernetesStore {
        self.node = node;
        self
    }

    /// The connection to the API server, for requests beside the store's (the node agents'
    /// Events about this network).
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// The namespace of the Lease objects.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The node recorded in new leases, and whose leases GC may free.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// GC leaves leases younger than `grace` alone (their ADD may still be in flight).
    pub fn with_gc_grace(mut self, grace: Duration) -> KubernetesStore {
        self.gc_grace = grace;
        self
    }

    fn name_of(&self, ip: IpAddr) -> String {
        objects::address_name(&self.netkey, ip)
    }

    fn corrupt(&self, name: &str, why: String) -> Error {
        Error::Corrupt {
            path: PathBuf::from(format!(
                "leases.coordination.k8s.io/{}/{name}",
                self.namespace
            )),
            reason: format!("{why} (fix or delete the object)"),
        }
    }

    fn seen(&self, obj: &KLease) -> Result<Seen, Error> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let lease =
            objects::lease_of(&self.network, obj).map_err(|why| self.corrupt(&name, why))?;
        Ok(Seen {
            lease,
            uid: obj.metadata.uid.clone().unwrap_or_default(),
            resource_version: obj.metadata.resource_version.clone().unwrap_or_default(),
        })
    }

    fn get(&self, ip: IpAddr) -> Result<Option<Seen>, Error> {
        let name = self.name_of(ip);
        let obj = self
            .conn
            .run(&format!("get lease {name}"), self.api.get_opt(&name))?;
        obj.map(|o| self.seen(&o)).transpose()
    }

    /// Address objects of this network matching `extra` label terms.
    fn list(&self, extra: &[(&str, &str)]) -> Result<Vec<Seen>, Error> {
        let sel = objects::selector(&self.netkey, objects::KIND_ADDRESS, extra);
        let list = self.conn.run(
            "list leases",
            self.api.list(&ListParams::default().labels(&sel)),
        )?;
        let mut out = list
            .items
            .iter()
            .map(|o| self.seen(o))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|s| s.lease.ip);
        Ok(out)
    }

    fn held_by(&self, att: &Attachment) -> Result<Vec<Seen>, Error> {
        let h = objects::attachment_hash(att);
        let mut v = self.list(&[(objects::LABEL_ATTACHMENT, &h)])?;
        v.retain(|s| s.lease.is_held_by(att));
        Ok(v)
    }

    /// Deletes the object of `s` only while it is still exactly `s`. Returns whether it did.
    fn delete_exact(&self, s: &Seen) -> Result<bool, Error> {
        let name = self.name_of(s.lease.ip);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(s.uid.clone()),
                resource_version: Some(s.resource_version.clone()),
            }),
            ..DeleteParams::default()
        };
        match self
            .conn
            .run(&format!("delete lease {name}"), self.api.delete(&name, &dp))
        {
            Ok(_) => Ok(true),
            // Gone already, or changed hands (precondition failed): not ours to delete.
            Err(e) if e.is(404) || e.is(409) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the address object `a` an identity's object recorded for `att`, under the uid and
    /// resourceVersion recorded; when it changed since, reads it and deletes it only if it is still
    /// the attachment's. Returns the freed lease.
    fn delete_recorded(
        &self,
        identity: &str,
        att: &Attachment,
        a: &objects::AddressRef,
    ) -> Result<Option<Lease>, Error> {
        let name = self.name_of(a.ip);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(a.uid.clone()),
                resource_version: Some(a.rv.clone()),
            }),
            ..DeleteParams::default()
        };
        match self
            .conn
            .run(&format!("delete lease {name}"), self.api.delete(&name, &dp))
        {
            Ok(either) => Ok(Some(match either.left() {
                Some(obj) => self.seen(&obj)?.lease,
                // An API server that answers with a Status: the lease as recorded.
                None => Lease {
                    ip: a.ip,
                    identity: identity.to_string(),
                    container_id: att.container_id.clone(),
                    ifname: att.ifname.clone(),
                    node: self.node.clone(),
                    created_unix: 0,
                    sandbox: Default::default(),
                },
            })),
            Err(e) if e.is(404) => Ok(None),
            Err(e) if e.is(409) => match self.get(a.ip)? {
                Some(now) if now.lease.is_held_by(att) && self.delete_exact(&now)? => {
                    Ok(Some(now.lease))
                }
                _ => Ok(None),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// DEL by a label-selector LIST of the attachment's address objects (no identity known).
    fn release_listed(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        let held = self.held_by(att)?;
        node_record::remove(&self.state_dir, &self.network, att);
        self.free_all(held)
    }

    /// Frees every lease in `seen` that still is what we saw; returns the freed ones.
    fn free_all(&self, seen: Vec<Seen>) -> Result<Vec<Lease>, Error> {
        let mut freed = Vec::new();
        for s in seen {
            if self.delete_exact(&s)? {
                freed.push(s.lease);
            } else if let Some(now) = self.get(s.lease.ip)? {
                // It changed: delete it only if it is still the same attachment's (a rewrite
                // of our own object), never someone else's.
                if now.lease.is_held_by(&s.lease.attachment()) && self.delete_exact(&now)? {
                    freed.push(now.lease);
                }
            }
        }
        Ok(freed)
    }
}

impl KubernetesStore {
    /// After a takeover was undone: the identity object lists the earlier sandbox's attachment
    /// again (the takeover's grant dropped its entry), so that its DEL, and a retried ADD of it,
    /// find its addresses by name instead of counting them as new claims.
    fn restore_entries(&self, grant: &Grant) -> Result<(), Error> {
        let mut put_back: Vec<(Attachment, Vec<Lease>)> = Vec::new();
        for old in grant.claimed.iter().filter_map(|c| c.replaced.as_ref()) {
            match put_back.iter_mut().find(|(a, _)| old.is_held_by(a)) {
                Some((_, leases)) => leases.push(old.clone()),
                None => put_back.push((old.attachment(), vec![old.clone()])),
            }
        }
        for (att, leases) in put_back {
            let identity = leases[0].identity.clone();
            let names = txn::Names::default();
            let mut txn = self.txn(&names, &identity, &att);
            let mut current = Vec::new();
            for l in &leases {
                // Only what the undo really put back.
                if txn.holder(l.ip)?.is_some_and(|now| now == *l) {
                    current.push(l.clone());
                }
            }
            if current.is_empty() {
                continue;
            }
            let req = AllocRequest {
                identity,
                attachment: att,
                ..AllocRequest::default()
            };
            allocator::Claims::finish(&mut txn, &req, &current)?;
        }
        Ok(())
    }
}

impl Store for KubernetesStore {
    fn grant(
        &self,
        pool: &Pool,
        req: &AllocRequest,
        check: &dyn SandboxCheck,
    ) -> Result<Grant, Error> {
        let names = txn::Names::default();
        let mut txn = self.txn(&names, &req.identity, &req.attachment);
        let grant = allocator::allocate(pool, req, self.node.as_deref(), &mut txn, check)?;
        node_record::save(&self.state_dir, &self.network, &grant.leases);
        Ok(grant)
    }

    fn revert(&self, grant: &Grant) -> Result<(), Error> {
        let (identity, att) = grant
            .claimed
            .first()
            .map(|c| (c.lease.identity.clone(), c.lease.attachment()))
            .unwrap_or_else(|| (String::new(), Attachment::new("", "")));
        let names = txn::Names::default();
        let mut txn = self.txn(&names, &identity, &att);
        // Read what each claimed object is now: only what is still exactly our claim is undone.
        for c in &grant.claimed {
            txn.holder(c.lease.ip)?;
        }
        let kept: Vec<Lease> = grant
            .leases
            .iter()
            .filter(|l| !grant.claimed.iter().any(|c| c.lease.ip == l.ip))
            .cloned()
            .collect();
        match kept.is_empty() {
            true => node_record::remove(&self.state_dir, &self.network, &att),
            false => node_record::save(&self.state_dir, &self.network, &kept),
        }
        txn.abandon(&grant.claimed)?;
        self.restore_entries(grant)
    }

    /// By name when this node's record of the attachment names its identity (the node that
    /// granted it, where its DEL runs): as [`Store::release_for`]. Else (a record lost, or a
    /// caller on another node) by a label-selector LIST of the attachment's address objects.
    fn release(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        att.validate()?;
        // On the node that granted it, the node-local record names the identity: by name, then.
        if let Some(identity) = node_record::identity_of(&self.state_dir, &self.network, att) {
            return self.release_for(&identity, att);
        }
        self.release_listed(att)
    }

    /// By name: the identity's object lists the attachment's address objects with the uid and
    /// resourceVersion they were created with, and each is deleted under those preconditions
    /// (1 GET and 1 DELETE per address). One that changed since (a reconciler's mark, a takeover)
    /// is read again and deleted only if still the attachment's. An identity object that does not
    /// list the attachment (written before attachments were recorded) names the identity's latest
    /// addresses: those the attachment holds are freed. Without any identity object (an identity
    /// other than the ADD's, or objects lost) it falls back to a search (a label-selector LIST).
    fn release_for(&self, identity: &str, att: &Attachment) -> Result<Vec<Lease>, Error> {
        att.validate()?;
        let name = objects::identity_name(&self.netkey, identity);
        let obj = self
            .conn
            .run(&format!("get lease {name}"), self.api.get_opt(&name))?;
        let Some(obj) = obj else {
            // No record of the identity at all: not this store's ADD (another identity than the
            // ADD's), or its objects were lost. The only case that searches.
            return self.release_listed(att);
        };
        node_record::remove(&self.state_dir, &self.network, att);
        let rec = objects::IdentityRecord::of(&self.network, identity, &obj);
        let mut freed = Vec::new();
        match rec.attachment(att) {
            Some(entry) => {
                for a in &entry.addresses {
                    if let Some(l) = self.delete_recorded(identity, att, a)? {
                        freed.push(l);
                    }
                }
            }
            None => {
                let mut held = Vec::new();
                for ip in &rec.ips {
                    if let Some(s) = self.get(*ip)?.filter(|s| s.lease.is_held_by(att)) {
                        held.push(s);
                    }
                }
                freed = self.free_all(held)?;
            }
        }
        Ok(freed)
    }

    fn find(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        att.validate()?;
        Ok(self.held_by(att)?.into_iter().map(|s| s.lease).collect())
    }

    /// CNI GC comes from one node's runtime, which knows only its own containers: it frees this
    /// node's leases that are not in `valid`, never another node's (those are that node's GC's, and
    /// the reconcile loop's, to free).
    fn gc(&self, valid: &[Attachment]) -> Result<Vec<Lease>, Error> {
        let stale: Vec<Seen> = self
            .list(&[])?
            .into_iter()
            .filter(|s| s.lease.node.is_some() && s.lease.node == self.node)
            .filter(|s| !valid.iter().any(|a| s.lease.is_held_by(a)))
            .filter(|s| !super::too_young(&s.lease, self.gc_grace))
            .collect();
        let freed = self.free_all(stale)?;
        for l in &freed {
            node_record::remove(&self.state_dir, &self.network, &l.attachment());
        }
        Ok(freed)
    }

    fn leases(&self) -> Result<Vec<Lease>, Error> {
        Ok(self.list(&[])?.into_iter().map(|s| s.lease).collect())
    }
}
