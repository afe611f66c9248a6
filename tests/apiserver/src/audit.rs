//! What the double counts of the requests it serves (per verb, bytes, objects scanned), the
//! Events it accepts, and test controls that act on many objects at once.

use serde_json::{json, Value};

use super::http::Request;
use super::leases::{list, matches, parse_selector};
use super::{lock, now_unix, rfc3339, ApiServer, BTreeMap, State};

impl ApiServer {
    /// How many requests were served so far: a mark for [`ApiServer::verbs_since`].
    pub fn mark(&self) -> usize {
        lock(&self.state).log.len()
    }

    /// The requests served since `mark`, counted per Kubernetes verb (`list`, `get`, `create`,
    /// `update`, `delete`), as the API server's audit log names them.
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
                _ => "other",
            };
            *v.by_verb.entry(verb.to_string()).or_default() += 1;
            v.total += 1;
            v.bytes += s.sent.get(i).copied().unwrap_or(0);
            v.scanned += s.scanned.get(i).copied().unwrap_or(0);
        }
        v
    }

    /// Every Event created so far.
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

/// `POST /api/v1/namespaces/<ns>/events`: kept, named from `generateName`.
pub(super) fn create_event(s: &mut State, ns: &str, req: &Request) -> (u16, Value) {
    let Ok(mut ev) = serde_json::from_slice::<Value>(&req.body) else {
        return super::status(400, "BadRequest", "not a JSON object".into(), None);
    };
    let n = s.events.len();
    let prefix = ev["metadata"]["generateName"]
        .as_str()
        .unwrap_or("")
        .to_string();
    ev["metadata"]["name"] = json!(format!("{prefix}{n:05}"));
    ev["metadata"]["namespace"] = json!(ns);
    ev["metadata"]["uid"] = json!(s.next_uid());
    ev["metadata"]["resourceVersion"] = json!(s.next_rv());
    ev["metadata"]["creationTimestamp"] = json!(rfc3339(now_unix()));
    s.events.push(ev.clone());
    (201, ev)
}

/// `GET /api/v1/namespaces/<ns>/events`: the Events of `ns` matching the label selector, as an
/// `EventList` (no paging, no field selectors: refused, so a client relying on one fails loudly).
pub(super) fn list_events(s: &mut State, ns: &str, req: &Request) -> (u16, Value) {
    if req.query.contains_key("fieldSelector") {
        return super::status(
            400,
            "BadRequest",
            "field selectors on events are not supported by the test double".into(),
            None,
        );
    }
    let terms = match parse_selector(req.query.get("labelSelector").map_or("", String::as_str)) {
        Ok(t) => t,
        Err(e) => return super::status(400, "BadRequest", e, None),
    };
    s.scanning = s
        .events
        .iter()
        .filter(|e| e["metadata"]["namespace"] == ns)
        .count();
    let items: Vec<Value> = s
        .events
        .iter()
        .filter(|e| e["metadata"]["namespace"] == ns && matches(e, &terms))
        .cloned()
        .collect();
    list(s, "EventList", "v1", items.iter())
}
