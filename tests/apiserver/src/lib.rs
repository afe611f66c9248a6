//! A small, honest test double of the Kubernetes API server, for the `kubernetes` store.
//!
//! It speaks HTTP/1.1 (keep-alive, Content-Length bodies) on 127.0.0.1 and serves exactly the
//! calls the store and the reconcile loop make, with the API server's semantics for them:
//!
//! - `coordination.k8s.io/v1` Leases, namespaced: create (POST), get, list with a label
//!   selector (`k=v`, `k==v`, `k!=v`, `k`, `!k`), replace (PUT) and delete;
//! - create of an existing name: 409 `AlreadyExists`; get/delete of a missing one: 404
//!   `NotFound`; a name that is not a DNS subdomain or a bad label: 422 `Invalid`;
//! - every write bumps one global `resourceVersion`; create sets `uid` and
//!   `creationTimestamp`, which replace keeps;
//! - replace (PUT) as the real registry does it for Leases (`pkg/registry/coordination/lease/
//!   strategy.go`: `AllowCreateOnUpdate` true, `AllowUnconditionalUpdate` false; the generic
//!   store's `Update`): a `metadata.uid` in the body is a precondition, so another uid, or any uid
//!   when the object is missing, is 409 `Conflict`; a missing object without one is created (201);
//!   on an existing object, no `metadata.resourceVersion` is 422 `Invalid` ("must be specified
//!   for an update") and a stale one is 409 `Conflict`;
//! - delete with `preconditions` (uid, resourceVersion) that do not match: 409 `Conflict`;
//! - `events.k8s.io/v1` Events, namespaced (what kube's events Recorder posts): create, list with
//!   a label and a field selector, and the merge PATCH that adds to an Event's series, with that
//!   version's validation (apiserver/events.rs);
//! - `GET /api/v1/nodes/{name}`: the nodes a test put in (with a `Ready` condition), else 404;
//! - `GET /api/v1/pods` and `/api/v1/namespaces/{ns}/pods` list the pods a test put in, as a
//!   `PartialObjectMetadataList` when the client's `Accept` asks for one (`as=...;g=meta.k8s.io`);
//! - `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token` (TokenRequest) issues tokens
//!   bound to the ServiceAccount, with an expiry (apiserver/tokens.rs);
//! - with a token set, or any token issued, a request without a valid `Authorization: Bearer`
//!   token gets 401: a static token ([`ApiServer::set_token`]) always passes; an issued one only
//!   while its ServiceAccount exists, its pod (for a pod-bound, projected one) exists, and it has
//!   not expired, as the real ServiceAccount token authenticator judges them (apiserver/tokens.rs);
//! - with RBAC rules set ([`ApiServer::enforce`], e.g. the shipped ones from rbac.rs), a
//!   request none of them allows gets 403, judged on verb, API group, resource, subresource,
//!   resource name and namespace as the RBAC authorizer does.
//!
//! Each request runs under one mutex, so every single-object operation is atomic, as etcd's
//! transactions make them on a real server. Anything else gets a 404 or 400 Status, so a
//! client call the double does not know fails loudly instead of passing by accident.
//!
//! Lease lists page (`limit`, `continue`) and serve metadata only when asked. Not modelled:
//! watches, patches but the Events' merge patch, field selectors other than pods' `spec.nodeName` and
//! the Events' fields, set-based selectors, admission,
//! managedFields, generation, TLS (the double speaks plain HTTP; the store's TLS path is the
//! kube crate's), and the apiserver's watch cache (a real list may be served slightly stale
//! from it; ours is always current).

pub mod rbac;
pub mod tls;
pub mod yaml;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

mod audit;
mod authz;
mod events;
mod http;
mod leases;
mod routes;
mod tokens;

#[allow(unused_imports)]
pub use audit::Verbs;
pub use authz::RbacRule;
use http::{serve, serve_stream};
use leases::put_as_other;
use routes::{conflict, handle, not_found, status};
#[allow(unused_imports)]
pub use tokens::{MIN_EXPIRATION_SECONDS, PROJECTED_EXPIRATION_SECONDS};

type Key = (String, String); // (namespace, name)

#[derive(Default)]
struct State {
    resource_version: u64,
    uid_seq: u64,
    leases: BTreeMap<Key, Value>,
    pods: BTreeMap<Key, Value>,
    /// Nodes (cluster-scoped), by name.
    nodes: BTreeMap<String, Value>,
    token: Option<String>,
    /// (method, path) of every request, in order.
    log: Vec<(String, String)>,
    /// Bytes of every response body, in the order of `log`.
    sent: Vec<usize>,
    /// Objects every request looked at to answer (a LIST: all in its namespace), as `log`.
    scanned: Vec<usize>,
    /// Objects the current request's LIST looked at.
    scanning: usize,
    /// Races to stage: before the next `METHOD` on a Lease name, another client writes this
    /// object there (or deletes it, for `Value::Null`).
    interfere: BTreeMap<(String, Key), Value>,
    /// Path parts answered with 403.
    forbidden: Vec<String>,
    /// With rules set, every request they do not allow is 403 (RBAC), and logged here.
    rbac: Option<Vec<RbacRule>>,
    denied: Vec<(String, String)>,
    /// The kind of every pod list served (`PodList` or `PartialObjectMetadataList`).
    pod_lists: Vec<String>,
    /// The kind and item count of every Lease list (page) served.
    lease_lists: Vec<(String, usize)>,
    /// Events created, in order.
    events: Vec<Value>,
    /// ServiceAccounts, by (namespace, name).
    service_accounts: BTreeMap<Key, Value>,
    /// Every token issued (projected or by a TokenRequest), and what it stands for.
    credentials: BTreeMap<String, tokens::Credential>,
    token_seq: u64,
    /// Seconds the token clock is ahead of real time.
    token_clock_offset: u64,
    /// `--service-account-max-token-expiration`, when set.
    max_token_seconds: Option<u64>,
    /// The body of every TokenRequest granted.
    token_requests: Vec<Value>,
    /// (method, path, why) of every request answered 401.
    unauthorized: Vec<(String, String, String)>,
}

/// A running double. Stops when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ApiServer {
    pub fn start() -> ApiServer {
        ApiServer::start_with(TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
    }

    /// Serves on `listener`: one bound elsewhere than on this process's loopback (inside a test
    /// LAN's namespace, so that plugins run in the nodes' namespaces reach it).
    pub fn start_with(listener: TcpListener) -> ApiServer {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (state, stop) = (state.clone(), stop.clone());
                    std::thread::spawn(move || serve(conn, &state, &stop));
                }
            })
        };
        ApiServer {
            addr,
            state,
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requires `Authorization: Bearer <token>` from now on (`None`: no authentication).
    pub fn set_token(&self, token: Option<&str>) {
        lock(&self.state).token = token.map(str::to_string);
    }

    /// Writes a kubeconfig for this server into `dir` and returns its path.
    pub fn kubeconfig(&self, dir: &Path, namespace: &str, token: &str) -> PathBuf {
        let path = dir.join(format!("kubeconfig-{}", self.addr.port()));
        write_kubeconfig(&path, &self.url(), namespace, token);
        path
    }

    /// From now on, answers 403 Forbidden to every request that none of `rules` allows, as the
    /// API server's RBAC authorizer does for a ServiceAccount bound to exactly these rules.
    pub fn enforce(&self, rules: Vec<RbacRule>) {
        lock(&self.state).rbac = Some(rules);
    }

    /// Every (method, path) refused by [`ApiServer::enforce`]'s rules so far.
    pub fn denied(&self) -> Vec<(String, String)> {
        lock(&self.state).denied.clone()
    }

    /// Answers 403 Forbidden to every request whose path contains `part` (missing RBAC).
    pub fn forbid(&self, part: &str) {
        lock(&self.state).forbidden.push(part.to_string());
    }

    /// Puts a pod and returns its UID (a pod recreated under the same name gets a new one).
    pub fn add_pod(&self, namespace: &str, name: &str) -> String {
        self.add_pod_on(namespace, name, None)
    }

    /// [`ApiServer::add_pod`], bound to `node` (its `spec.nodeName`) when given.
    pub fn add_pod_on(&self, namespace: &str, name: &str, node: Option<&str>) -> String {
        let mut s = lock(&self.state);
        let uid = s.next_uid();
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": namespace, "uid": uid,
                          "creationTimestamp": rfc3339(now_unix()) },
            "spec": { "containers": [{ "name": "c", "image": "scratch" }] }
        });
        let mut pod = pod;
        if let Some(n) = node {
            pod["spec"]["nodeName"] = json!(n);
        }
        s.next_rv();
        s.pods
            .insert((namespace.to_string(), name.to_string()), pod);
        uid
    }

    /// Puts node `name` with its `Ready` condition `ready` ("True", "False" or "Unknown") last
    /// changed `since_secs` ago, as the node controller keeps it.
    pub fn put_node(&self, name: &str, ready: &str, since_secs: u64) {
        let mut s = lock(&self.state);
        let uid = s.next_uid();
        let rv = s.next_rv();
        let since = rfc3339(now_unix().saturating_sub(since_secs));
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": name, "uid": uid, "resourceVersion": rv,
                          "creationTimestamp": rfc3339(now_unix().saturating_sub(since_secs + 60)) },
            "status": { "conditions": [
                { "type": "MemoryPressure", "status": "False", "lastTransitionTime": since,
                  "lastHeartbeatTime": since, "reason": "KubeletHasSufficientMemory", "message": "" },
                { "type": "Ready", "status": ready, "lastTransitionTime": since,
                  "lastHeartbeatTime": since, "reason": "KubeletReady", "message": "" }
            ] }
        });
        s.nodes.insert(name.to_string(), node);
    }

    pub fn delete_node(&self, name: &str) {
        let mut s = lock(&self.state);
        s.next_rv();
        s.nodes.remove(name);
    }

    /// The kind of every pod list served so far.
    pub fn pod_lists(&self) -> Vec<String> {
        lock(&self.state).pod_lists.clone()
    }

    /// Takes a pod out of the pod list (to put it back later with [`ApiServer::restore_pod`]).
    pub fn take_pod(&self, namespace: &str, name: &str) -> Value {
        lock(&self.state)
            .pods
            .remove(&(namespace.to_string(), name.to_string()))
            .unwrap_or(Value::Null)
    }

    /// Puts back a pod [`ApiServer::take_pod`] took, the same object (same UID).
    pub fn restore_pod(&self, pod: Value) {
        let (Some(ns), Some(name)) = (
            pod["metadata"]["namespace"].as_str(),
            pod["metadata"]["name"].as_str(),
        ) else {
            return;
        };
        let key = (ns.to_string(), name.to_string());
        lock(&self.state).pods.insert(key, pod);
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) {
        lock(&self.state)
            .pods
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// The Lease objects of `namespace`, as stored.
    pub fn leases(&self, namespace: &str) -> Vec<Value> {
        lock(&self.state)
            .leases
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Moves a Lease's creationTimestamp `secs` into the past (for grace-period tests).
    pub fn backdate(&self, namespace: &str, name: &str, secs: u64) {
        let mut s = lock(&self.state);
        if let Some(obj) = s.leases.get_mut(&(namespace.to_string(), name.to_string())) {
            obj["metadata"]["creationTimestamp"] = json!(rfc3339(now_unix().saturating_sub(secs)));
        }
    }

    /// Sets annotation `key` of Lease `namespace/name` to `value`, as another client would (a
    /// replace: the resourceVersion changes).
    pub fn annotate(&self, namespace: &str, name: &str, key: &str, value: &str) {
        let mut s = lock(&self.state);
        let rv = s.next_rv();
        if let Some(obj) = s.leases.get_mut(&(namespace.to_string(), name.to_string())) {
            obj["metadata"]["annotations"][key] = json!(value);
            obj["metadata"]["resourceVersion"] = json!(rv);
        }
    }

    /// Stages a race: just before the next `method` request on Lease `namespace/name` is
    /// handled, another client puts `obj` there (a create, or a replace that bumps the
    /// resourceVersion and keeps the uid), or deletes the object when `obj` is null.
    pub fn interfere(&self, method: &str, namespace: &str, name: &str, obj: Value) {
        lock(&self.state).interfere.insert(
            (
                method.to_string(),
                (namespace.to_string(), name.to_string()),
            ),
            obj,
        );
    }

    /// Puts a Lease object as another client would (a create, or a replace keeping the uid).
    pub fn put_lease(&self, namespace: &str, obj: Value) {
        put_as_other(&mut lock(&self.state), namespace, obj);
    }

    /// A handle that serves more connections on this server's state, over any stream (a TLS front
    /// uses it from its own threads).
    pub fn handle(&self) -> Handle {
        Handle {
            state: self.state.clone(),
            stop: self.stop.clone(),
        }
    }

    /// Every (method, path) served so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        lock(&self.state).log.clone()
    }
}

/// Serves connections on an [`ApiServer`]'s state.
#[derive(Clone)]
pub struct Handle {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Handle {
    pub fn serve_connection<S: Read + Write>(&self, conn: S) {
        serve_stream(conn, &self.state, &self.stop);
    }
}

/// Writes a token-authenticated kubeconfig for `server` to `path`.
pub fn write_kubeconfig(path: &Path, server: &str, namespace: &str, token: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: \"{server}\"\n\
         users:\n- name: u\n  user:\n    token: \"{token}\"\ncontexts:\n- name: c\n  context:\n    \
         cluster: double\n    user: u\n    namespace: \"{namespace}\"\ncurrent-context: c\n"
    );
    std::fs::write(path, text).unwrap();
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop; a listener in a namespace this process cannot reach is left to
        // the end of the process.
        let woken =
            TcpStream::connect_timeout(&self.addr, std::time::Duration::from_secs(1)).is_ok();
        if let Some(t) = self.accept.take() {
            if woken {
                let _ = t.join();
            }
        }
    }
}

impl State {
    fn next_rv(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn next_uid(&mut self) -> String {
        self.uid_seq += 1;
        let salt = (u64::from(std::process::id()) << 20) ^ (now_nanos() as u64 & 0xfffff);
        format!("{:08x}-0000-4000-8000-{:012x}", salt as u32, self.uid_seq)
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (proleptic Gregorian, days-from-civil inverse).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
