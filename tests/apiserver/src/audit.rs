//! What the double counts of the requests it serves (per verb, bytes, objects scanned), the
//! Events it accepts, and test controls that act on many objects at once.

use serde_json::Value;

use super::{lock, ApiServer, BTreeMap};

impl ApiServer {
    /// How many requests were served so far: a mark for [`ApiServer::verbs_since`].
    pub fn mark(&self) -> usize {
        lock(&self.state).log.len()
    }

    /// The requests served since `mark`, counted per Kubernetes verb (`list`, `get`, `create`,
    /// `update`, `patch`, `delete`), as the API server's audit log names them.
    pub fn verbs_since(&self, mark: usize) -> Verbs {
        let s = lock(&self.state);
        let mut v = Verbs::default();
        for (i, (method, path)) in s.log.iter().enumerate().skip(mark) {
            let path = path.split('?').next().unwrap_or(path);
            let collection =
                path.ends_with("/leases") || path.ends_with("/pods") || path.ends_with("/events");
            let verb = match (method.as_str(), collection) {
                ("GET", true) => "list",
                ("GET", false) => "get",
                ("POST", _) => "create",
                ("PUT", _) => "update",
                ("DELETE", _) => "delete",
                ("PATCH", _) => "patch",
                _ => "other",
            };
            *v.by_verb.entry(verb.to_string()).or_default() += 1;
            v.total += 1;
            v.bytes += s.sent.get(i).copied().unwrap_or(0);
            v.scanned += s.scanned.get(i).copied().unwrap_or(0);
        }
        v
    }

    /// Every Event created so far (`events.k8s.io/v1`, as last written).
    pub fn events(&self) -> Vec<Value> {
        lock(&self.state).events.clone()
    }

    /// Deletes every Lease of `namespace`, as deleting the namespace (or `kubectl delete leases
    /// --all`) does.
    pub fn delete_all_leases(&self, namespace: &str) {
        let mut s = lock(&self.state);
        s.next_rv();
        s.leases.retain(|(ns, _), _| ns != namespace);
    }

    /// The kind and item count of every Lease list page served so far.
    pub fn lease_lists(&self) -> Vec<(String, usize)> {
        lock(&self.state).lease_lists.clone()
    }
}

/// Requests counted per verb, and the response bytes they read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verbs {
    pub total: usize,
    pub by_verb: BTreeMap<String, usize>,
    /// Response bytes the client read.
    pub bytes: usize,
    /// Objects the server looked at to answer (a LIST reads every Lease of its namespace, whatever
    /// its label selector matches; a GET, create, replace or delete one).
    pub scanned: usize,
}

impl Verbs {
    pub fn of(&self, verb: &str) -> usize {
        self.by_verb.get(verb).copied().unwrap_or(0)
    }
}
