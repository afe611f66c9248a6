//! The `kubernetes` store: the pool of a whole cluster, kept in the API server.
//!
//! Every held address is one `coordination.k8s.io/v1` Lease object named after the network and
//! the address (layout in [`objects`]). Claiming an address is creating its object: the API
//! server's create is atomic and answers 409 AlreadyExists when the object exists, so two
//! nodes can never hold one address, and a lost race just moves the search on to the next
//! candidate. There is no cluster-wide lock and no read-modify-write of a shared pool object.
//! Release deletes with a precondition on the object's uid and resourceVersion, so it never
//! removes an object that changed hands in the meantime (a new sandbox of the same pod taking
//! the address over replaces the object under a resourceVersion precondition).
//!
//! Leases record the node (host name) that allocated them. CNI GC comes from one node's runtime and
//! frees only that node's leases; the DaemonSet's reconcile loop ([`Reconciler`]) frees leases of
//! pods that no longer exist, whatever their node.
//!
//! Why Leases and not a CRD: the type is built in (nothing to install cluster-wide before the
//! first pod can start, no CRD version upgrades), RBAC can be limited to `leases` in one
//! namespace, `spec.holderIdentity` shows the pod in `kubectl get leases`, and no controller
//! acts on Leases outside `kube-node-lease`. Leader election also uses Leases; ours carry the
//! `app.kubernetes.io/managed-by=iotlan` label in their own namespace and no duration, so they
//! are never mistaken for an election lock.
//!
//! Configuration (the `ipam.store` object):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `kind` | | `"kubernetes"` |
//! | `namespace` | `iotlan-system` | where the Lease objects live |
//! | `kubeconfig` | `/etc/cni/net.d/iotlan.d/iotlan.kubeconfig`, else k3s's `/var/lib/rancher/k3s/agent/etc/cni/net.d/iotlan.d/iotlan.kubeconfig` | written by `iotlan install` |
//! | `timeoutMs` | 10000 | connect and per-request timeout |
//!
//! The store API is synchronous; each store owns a small current-thread tokio runtime. An API
//! server that cannot be reached, times out, or answers 5xx/429/401/403 gives
//! [`Error::Unavailable`] (retryable, CNI code 11).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::Lease as KLease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::allocator::{self, Claimed, Claims, Grant, SandboxCheck};
use crate::config::StoreConfig;
use crate::error::Error;
use crate::lease::{AllocRequest, Attachment, Lease};
use crate::pool::Pool;
use crate::store::Store;

pub mod objects;

/// Where the Lease objects live when `store.namespace` is not given.
pub const DEFAULT_NAMESPACE: &str = "iotlan-system";
/// The kubeconfigs tried, in order, when `store.kubeconfig` is not given: kubeadm's and k3s's CNI
/// config dir, where `iotlan install` writes it.
pub const DEFAULT_KUBECONFIGS: [&str; 2] = [
    "/etc/cni/net.d/iotlan.d/iotlan.kubeconfig",
    "/var/lib/rancher/k3s/agent/etc/cni/net.d/iotlan.d/iotlan.kubeconfig",
];
/// Connect and per-request timeout when `store.timeoutMs` is not given.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// How often a claim is retried when its object changes hands between our read and our write.
const RACE_RETRIES: usize = 5;

/// The `store` keys this kind reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub namespace: String,
    pub kubeconfig: Option<PathBuf>,
    pub timeout: Duration,
}

impl Settings {
    /// Reads the kubernetes keys of `cfg`; unknown keys are an error naming them.
    pub fn from_config(cfg: &StoreConfig) -> Result<Settings, Error> {
        let mut s = Settings {
            namespace: DEFAULT_NAMESPACE.to_string(),
            kubeconfig: None,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
        };
        for (key, value) in &cfg.extra {
            let field = format!("store.{key}");
            match key.as_str() {
                "namespace" => {
                    let ns = value.as_str().ok_or_else(|| Error::config(&field, "must be a string"))?;
                    if !is_dns_label(ns) {
                        return Err(Error::config(&field, format!("{ns:?} is not a namespace name (a DNS label)")));
                    }
                    s.namespace = ns.to_string();
                }
                "kubeconfig" => {
                    let p = value.as_str().ok_or_else(|| Error::config(&field, "must be a string"))?;
                    if !Path::new(p).is_absolute() {
                        return Err(Error::config(&field, "must be an absolute path"));
                    }
                    s.kubeconfig = Some(PathBuf::from(p));
                }
                "timeoutMs" => {
                    let ms = value
                        .as_u64()
                        .filter(|ms| *ms > 0)
                        .ok_or_else(|| Error::config(&field, "must be a positive integer"))?;
                    s.timeout = Duration::from_millis(ms);
                }
                _ => {
                    return Err(Error::config(
                        &field,
                        "unknown key for the kubernetes store (known: namespace, kubeconfig, timeoutMs)",
                    ))
                }
            }
        }
        Ok(s)
    }

    /// The kubeconfig to use: the configured one, else the first default that exists.
    fn kubeconfig_path(&self) -> Result<PathBuf, Error> {
        if let Some(p) = &self.kubeconfig {
            return Ok(p.clone());
        }
        DEFAULT_KUBECONFIGS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| Error::Unavailable {
                reason: format!(
                    "no kubeconfig at {} or {}; it is written by the iotlan DaemonSet (`iotlan install`): is it running on this node?",
                    DEFAULT_KUBECONFIGS[0], DEFAULT_KUBECONFIGS[1]
                ),
            })
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A connection to the API server: a current-thread runtime and a client bound to it.
struct Conn {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    /// The namespace of the kubeconfig's context, if it names one.
    default_namespace: String,
    timeout: Duration,
}

impl Conn {
    fn open(kubeconfig: &Path, timeout: Duration) -> Result<Conn, Error> {
        let unavailable = |what: String| Error::Unavailable { reason: what };
        let kc = Kubeconfig::read_from(kubeconfig)
            .map_err(|e| unavailable(format!("kubeconfig {}: {e}", kubeconfig.display())))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| unavailable(format!("cannot start the API client's runtime: {e}")))?;
        let mut config = rt
            .block_on(kube::Config::from_custom_kubeconfig(
                kc,
                &KubeConfigOptions::default(),
            ))
            .map_err(|e| unavailable(format!("kubeconfig {}: {e}", kubeconfig.display())))?;
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        let default_namespace = config.default_namespace.clone();
        // The client spawns its request buffer onto the runtime it is created in.
        let client = {
            let _guard = rt.enter();
            kube::Client::try_from(config).map_err(|e| {
                unavailable(format!("API client from {}: {e}", kubeconfig.display()))
            })?
        };
        Ok(Conn {
            rt,
            client,
            default_namespace,
            timeout,
        })
    }

    /// Runs one request to completion, bounded by the timeout.
    fn run<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ApiError> {
        let bounded =
            async { tokio::time::timeout(self.timeout + Duration::from_secs(1), fut).await };
        match self.rt.block_on(bounded) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(kube::Error::Api(status))) => Err(ApiError::Status {
                what: what.to_string(),
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            }),
            Ok(Err(e @ kube::Error::SerdeError(_))) => Err(ApiError::BadAnswer {
                what: what.to_string(),
                message: with_causes(&e),
            }),
            Ok(Err(e)) => Err(ApiError::Transport {
                what: what.to_string(),
                message: with_causes(&e),
            }),
            Err(_) => Err(ApiError::Transport {
                what: what.to_string(),
                message: format!("no answer within {} ms", self.timeout.as_millis()),
            }),
        }
    }
}

/// `e` and its causes, `: `-separated (a TLS failure is only named deep in the chain).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_text = c.to_string();
        if !s.contains(&c_text) {
            s.push_str(": ");
            s.push_str(&c_text);
        }
        cur = c.source();
    }
    s
}

/// A failed API request, before it becomes an [`Error`].
#[derive(Debug)]
enum ApiError {
    Status {
        what: String,
        code: u16,
        reason: String,
        message: String,
    },
    Transport {
        what: String,
        message: String,
    },
    /// A 2xx answer that is not the API object asked for (not an API server, or a proxy page).
    BadAnswer {
        what: String,
        message: String,
    },
}

impl ApiError {
    fn is(&self, want: u16) -> bool {
        matches!(self, ApiError::Status { code, .. } if *code == want)
    }

    fn into_error(self) -> Error {
        let reason = match self {
            ApiError::Status {
                what,
                code,
                reason,
                message,
            } => {
                let hint = match code {
                    401 => " (the kubeconfig's token may have expired: is the iotlan DaemonSet running?)",
                    403 => " (check the iotlan RBAC: leases in the store's namespace)",
                    _ => "",
                };
                format!("API server: {what}: {code} {reason}: {message}{hint}")
            }
            ApiError::Transport { what, message } => {
                format!("API server unreachable: {what}: {message}")
            }
            ApiError::BadAnswer { what, message } => {
                format!("API server gave an unexpected answer: {what}: {message}")
            }
        };
        Error::Unavailable { reason }
    }
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Error {
        e.into_error()
    }
}

/// The kubernetes store of one network.
pub struct KubernetesStore {
    network: String,
    netkey: String,
    namespace: String,
    node: Option<String>,
    gc_grace: Duration,
    conn: Conn,
    api: Api<KLease>,
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
        let settings = Settings::from_config(cfg)?;
        let kubeconfig = settings.kubeconfig_path()?;
        let conn = Conn::open(&kubeconfig, settings.timeout)?;
        let api = Api::namespaced(conn.client.clone(), &settings.namespace);
        // The node agent writes the node name beside the kubeconfig it writes.
        let beside: Vec<&Path> = kubeconfig.parent().into_iter().collect();
        let node = crate::node::local_name(&beside).or_else(crate::node::default_name);
        Ok(KubernetesStore {
            network: network.to_string(),
            netkey: objects::network_key(network),
            namespace: settings.namespace,
            node,
            gc_grace: Duration::ZERO,
            conn,
            api,
        })
    }

    /// The node recorded in new leases and whose leases GC may free: by default the name the node
    /// agent wrote beside the kubeconfig ([`crate::node`]), else the host name.
    pub fn with_node(mut self, node: Option<String>) -> KubernetesStore {
        self.node = node;
        self
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

/// How many candidates the search probes one GET at a time before it lists the network's
/// address objects once instead (a nearly full pool would otherwise cost a GET per held address).
const PROBES_BEFORE_LIST: usize = 8;

/// One allocation against the API server: what it read and created, for conditional writes.
struct Txn<'a> {
    store: &'a KubernetesStore,
    seen: HashMap<IpAddr, Seen>,
    probes: usize,
    /// Addresses held when the search listed them. Only a hint: the create decides.
    held: Option<HashSet<IpAddr>>,
}

impl Txn<'_> {
    fn create(&mut self, lease: &Lease) -> Result<Option<Lease>, Error> {
        let s = self.store;
        let obj = objects::address_object(&s.network, &s.netkey, &s.namespace, lease);
        let name = s.name_of(lease.ip);
        for _ in 0..RACE_RETRIES {
            match s.conn.run(
                &format!("create lease {name}"),
                s.api.create(&PostParams::default(), &obj),
            ) {
                Ok(created) => {
                    let seen = s.seen(&created)?;
                    self.seen.insert(lease.ip, seen);
                    return Ok(None);
                }
                Err(e) if e.is(409) => match s.get(lease.ip)? {
                    Some(holder) => {
                        let h = holder.lease.clone();
                        self.seen.insert(lease.ip, holder);
                        return Ok(Some(h));
                    }
                    None => continue, // released between our create and our get: try again
                },
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable {
            reason: format!("{} changed hands repeatedly while being claimed", lease.ip),
        })
    }

    /// Replaces the object of `old` (a stale sandbox of the same pod) with `lease`, only while
    /// it is still exactly `old`.
    fn take_over(&mut self, lease: &Lease, old: &Lease) -> Result<Option<Lease>, Error> {
        let s = self.store;
        let current = match self.seen.get(&lease.ip) {
            Some(c) if c.lease == *old => c.clone(),
            _ => match s.get(lease.ip)? {
                Some(c) if c.lease == *old => c,
                Some(c) => return Ok(Some(c.lease)),
                None => return self.create(lease),
            },
        };
        let name = s.name_of(lease.ip);
        let mut obj = objects::address_object(&s.network, &s.netkey, &s.namespace, lease);
        obj.metadata.uid = Some(current.uid.clone());
        obj.metadata.resource_version = Some(current.resource_version.clone());
        match s.conn.run(
            &format!("replace lease {name}"),
            s.api.replace(&name, &PostParams::default(), &obj),
        ) {
            Ok(replaced) => {
                let seen = s.seen(&replaced)?;
                self.seen.insert(lease.ip, seen);
                Ok(None)
            }
            Err(e) if e.is(409) || e.is(404) => match s.get(lease.ip)? {
                Some(h) => {
                    let l = h.lease.clone();
                    self.seen.insert(lease.ip, h);
                    Ok(Some(l))
                }
                None => self.create(lease),
            },
            Err(e) => Err(e.into()),
        }
    }
}

impl Claims for Txn<'_> {
    fn held_by(&mut self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        let held = self.store.held_by(att)?;
        let leases = held.iter().map(|s| s.lease.clone()).collect();
        for s in held {
            self.seen.insert(s.lease.ip, s);
        }
        Ok(leases)
    }

    fn previous(&mut self, identity: &str) -> Result<Vec<IpAddr>, Error> {
        let s = self.store;
        let name = objects::identity_name(&s.netkey, identity);
        let obj = s
            .conn
            .run(&format!("get lease {name}"), s.api.get_opt(&name))?;
        Ok(obj
            .map(|o| objects::identity_ips(&s.network, identity, &o))
            .unwrap_or_default())
    }

    fn holder(&mut self, ip: IpAddr) -> Result<Option<Lease>, Error> {
        match self.store.get(ip)? {
            Some(s) => {
                let l = s.lease.clone();
                self.seen.insert(ip, s);
                Ok(Some(l))
            }
            None => {
                self.seen.remove(&ip);
                Ok(None)
            }
        }
    }

    fn is_free(&mut self, ip: IpAddr) -> Result<bool, Error> {
        if self.held.is_none() && self.probes >= PROBES_BEFORE_LIST {
            let all = self.store.list(&[])?;
            self.held = Some(all.iter().map(|s| s.lease.ip).collect());
        }
        match &self.held {
            Some(held) => Ok(!held.contains(&ip)),
            None => {
                self.probes += 1;
                Ok(self.holder(ip)?.is_none())
            }
        }
    }

    fn claim(&mut self, lease: &Lease, replacing: Option<&Lease>) -> Result<Option<Lease>, Error> {
        match replacing {
            None => self.create(lease),
            Some(old) => self.take_over(lease, old),
        }
    }

    fn finish(&mut self, req: &AllocRequest, leases: &[Lease]) -> Result<(), Error> {
        let s = self.store;
        let ips: Vec<IpAddr> = leases.iter().map(|l| l.ip).collect();
        let name = objects::identity_name(&s.netkey, &req.identity);
        let want =
            objects::identity_object(&s.network, &s.netkey, &s.namespace, &req.identity, &ips);
        // Last writer wins: the record is only a hint for the next allocation of this identity.
        for _ in 0..RACE_RETRIES {
            let current = s
                .conn
                .run(&format!("get lease {name}"), s.api.get_opt(&name))?;
            let result = match current {
                None => s.conn.run(
                    &format!("create lease {name}"),
                    s.api.create(&PostParams::default(), &want),
                ),
                Some(cur) => {
                    if objects::identity_ips(&s.network, &req.identity, &cur) == ips {
                        return Ok(());
                    }
                    let mut obj = want.clone();
                    obj.metadata.resource_version = cur.metadata.resource_version.clone();
                    s.conn.run(
                        &format!("replace lease {name}"),
                        s.api.replace(&name, &PostParams::default(), &obj),
                    )
                }
            };
            match result {
                Ok(_) => return Ok(()),
                Err(e) if e.is(409) || e.is(404) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable {
            reason: format!("lease {name} changed repeatedly while being written"),
        })
    }

    fn abandon(&mut self, claimed: &[Claimed]) -> Result<(), Error> {
        let s = self.store;
        let mut first_err = None;
        for c in claimed {
            // Only what is still exactly our claim is undone (conditional on its resourceVersion).
            let Some(ours) = self
                .seen
                .get(&c.lease.ip)
                .filter(|x| x.lease == c.lease)
                .cloned()
            else {
                continue;
            };
            let result = match &c.replaced {
                None => s.delete_exact(&ours).map(|_| ()),
                Some(old) => {
                    let name = s.name_of(old.ip);
                    let mut obj = objects::address_object(&s.network, &s.netkey, &s.namespace, old);
                    obj.metadata.uid = Some(ours.uid.clone());
                    obj.metadata.resource_version = Some(ours.resource_version.clone());
                    match s.conn.run(
                        &format!("replace lease {name}"),
                        s.api.replace(&name, &PostParams::default(), &obj),
                    ) {
                        Ok(_) => Ok(()),
                        Err(e) if e.is(409) || e.is(404) => Ok(()),
                        Err(e) => Err(e.into()),
                    }
                }
            };
            if let Err(e) = result {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl KubernetesStore {
    fn txn(&self) -> Txn<'_> {
        Txn {
            store: self,
            seen: HashMap::new(),
            probes: 0,
            held: None,
        }
    }
}

impl Store for KubernetesStore {
    fn grant(
        &self,
        pool: &Pool,
        req: &AllocRequest,
        check: &dyn SandboxCheck,
    ) -> Result<Grant, Error> {
        allocator::allocate(pool, req, self.node.as_deref(), &mut self.txn(), check)
    }

    fn revert(&self, grant: &Grant) -> Result<(), Error> {
        let mut txn = self.txn();
        // Read what each claimed object is now: only what is still exactly our claim is undone.
        for c in &grant.claimed {
            txn.holder(c.lease.ip)?;
        }
        txn.abandon(&grant.claimed)
    }

    fn release(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        att.validate()?;
        let held = self.held_by(att)?;
        self.free_all(held)
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
        self.free_all(stale)
    }

    fn leases(&self) -> Result<Vec<Lease>, Error> {
        Ok(self.list(&[])?.into_iter().map(|s| s.lease).collect())
    }
}

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
