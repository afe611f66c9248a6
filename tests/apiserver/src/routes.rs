//! What the double answers: a request authenticated, authorised (RBAC), staged races applied, then
//! routed by method and path to the Lease registry (leases.rs), the TokenRequest (tokens.rs), the
//! events.k8s.io Events (events.rs), or the nodes and pods a test put in; anything else is a 404 Status.

use std::sync::Mutex;

use serde_json::{json, Value};

use super::authz::{attributes, forbidden_message};
use super::http::Request;
use super::leases::{create, delete, list, list_leases, put_as_other, replace};
use super::{events, lock, tokens, State};

pub(super) fn status(code: u16, reason: &str, message: String, name: Option<&str>) -> (u16, Value) {
    let mut v = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    });
    if let Some(n) = name {
        v["details"] = json!({ "name": n, "group": "coordination.k8s.io", "kind": "leases" });
    }
    (code, v)
}

pub(super) fn not_found(name: &str) -> (u16, Value) {
    status(
        404,
        "NotFound",
        format!("leases.coordination.k8s.io \"{name}\" not found"),
        Some(name),
    )
}

pub(super) fn conflict(name: &str, why: String) -> (u16, Value) {
    status(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": {why}"),
        Some(name),
    )
}

pub(super) fn handle(state: &Mutex<State>, req: &Request) -> (u16, Value) {
    let mut s = lock(state);
    let (code, body) = handle_in(&mut s, req);
    // Counted under the same lock as the log entry, so the two stay in step.
    let bytes = body.to_string().len();
    s.sent.push(bytes);
    let scanned = std::mem::take(&mut s.scanning);
    s.scanned.push(scanned);
    (code, body)
}

fn handle_in(s: &mut State, req: &Request) -> (u16, Value) {
    s.log.push((req.method.clone(), req.path.clone()));
    if let Err(refused) = tokens::authenticate(s, req) {
        return refused;
    }
    if s.forbidden.iter().any(|p| req.path.contains(p.as_str())) {
        return status(
            403,
            "Forbidden",
            format!("forbidden: cannot {} {}", req.method, req.path),
            None,
        );
    }
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    if let Some(rules) = &s.rbac {
        let attrs = attributes(&req.method, &segs, &req.query);
        if !attrs
            .as_ref()
            .is_some_and(|a| rules.iter().any(|r| r.allows(a)))
        {
            s.denied.push((req.method.clone(), req.path.clone()));
            return status(
                403,
                "Forbidden",
                forbidden_message(attrs.as_ref(), req),
                None,
            );
        }
    }
    // The Lease a request addresses: by URL, or for a create by the name in its body.
    let target = match segs.as_slice() {
        ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name] => {
            Some((ns.to_string(), name.to_string()))
        }
        ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases"]
            if req.method == "POST" =>
        {
            serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|b| {
                    b["metadata"]["name"]
                        .as_str()
                        .map(|n| (ns.to_string(), n.to_string()))
                })
        }
        _ => None,
    };
    if let Some((ns, name)) = target {
        let ns = ns.as_str();
        let key = (req.method.clone(), (ns.to_string(), name));
        if let Some(obj) = s.interfere.remove(&key) {
            if obj.is_null() {
                s.next_rv();
                s.leases.remove(&key.1);
            } else {
                put_as_other(s, ns, obj);
            }
        }
    }
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases"]) => {
            list_leases(s, ns, req)
        }
        ("POST", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases"]) => {
            create(s, ns, req)
        }
        ("GET", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name]) => {
            match s.leases.get(&(ns.to_string(), name.to_string())) {
                Some(obj) => (200, obj.clone()),
                None => not_found(name),
            }
        }
        ("PUT", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name]) => {
            replace(s, ns, name, req)
        }
        ("DELETE", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name]) => {
            delete(s, ns, name, req)
        }
        ("GET", ["api", "v1", "nodes", name]) => match s.nodes.get(*name) {
            Some(node) => (200, node.clone()),
            None => {
                let (code, mut v) =
                    status(404, "NotFound", format!("nodes \"{name}\" not found"), None);
                v["details"] = json!({ "name": name, "kind": "nodes" });
                (code, v)
            }
        },
        ("POST", ["api", "v1", "namespaces", ns, "serviceaccounts", name, "token"]) => {
            tokens::create_token(s, ns, name, req)
        }
        ("POST", ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"]) => {
            events::create(s, ns, req)
        }
        ("GET", ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"]) => {
            events::list_events(s, ns, req)
        }
        ("PATCH", ["apis", "events.k8s.io", "v1", "namespaces", ns, "events", name]) => {
            events::patch(s, ns, name, req)
        }
        ("GET", ["api", "v1", "pods"]) => list_pods(s, None, req),
        ("GET", ["api", "v1", "namespaces", ns, "pods"]) => list_pods(s, Some(ns), req),
        _ => status(
            404,
            "NotFound",
            format!(
                "the server could not find the requested resource ({} {})",
                req.method, req.path
            ),
            None,
        ),
    }
}

fn list_pods(s: &mut State, ns: Option<&str>, req: &Request) -> (u16, Value) {
    let metadata_only = req.accept.contains("as=PartialObjectMetadataList");
    // Field selectors: `spec.nodeName` (what the node agent uses), as the pod registry supports it.
    let mut on_node: Option<String> = None;
    for term in req
        .query
        .get("fieldSelector")
        .map_or("", String::as_str)
        .split(',')
        .filter(|t| !t.is_empty())
    {
        let (k, v) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .unwrap_or((term, ""));
        if k != "spec.nodeName" {
            return status(
                400,
                "BadRequest",
                format!("field label not supported by the test double: {k}"),
                None,
            );
        }
        on_node = Some(v.to_string());
    }
    let items: Vec<Value> = s
        .pods
        .iter()
        .filter(|((n, _), _)| ns.is_none_or(|want| n == want))
        .filter(|(_, p)| {
            on_node
                .as_deref()
                .is_none_or(|want| p["spec"]["nodeName"].as_str().unwrap_or("") == want)
        })
        .map(|(_, p)| {
            if metadata_only {
                json!({ "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                        "metadata": p["metadata"] })
            } else {
                p.clone()
            }
        })
        .collect();
    let (kind, api_version) = if metadata_only {
        ("PartialObjectMetadataList", "meta.k8s.io/v1")
    } else {
        ("PodList", "v1")
    };
    s.pod_lists.push(kind.to_string());
    list(s, kind, api_version, items.iter())
}
