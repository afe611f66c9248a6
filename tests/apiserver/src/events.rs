//! `events.k8s.io/v1` Events, namespaced, as the API server serves them to a client of that group
//! (the event registry, `pkg/apis/core/validation/events.go` for a request of version
//! events.k8s.io/v1, and the group's field label conversion, `pkg/apis/events/v1/conversion.go`):
//!
//! - create (POST), named or from `generateName`, with the strict validation of that version:
//!   `eventTime`, `reportingController` (a qualified name), `reportingInstance`, `action` and
//!   `reason` required (at most 128 characters each), `note` at most 1 kB, `type` `Normal` or
//!   `Warning`, the deprecated core fields (`deprecatedCount`, `deprecatedFirstTimestamp`,
//!   `deprecatedLastTimestamp`, `deprecatedSource`) unset, a `series` counting at least 2 with its
//!   `lastObservedTime`, and a `regarding.namespace` unless the Event is in `default` or
//!   `kube-system`: else 422 `Invalid`; an existing name is 409 `AlreadyExists`;
//! - list with a label selector and a field selector on the fields the group converts (`reason`,
//!   `type`, `reportingController`, `regarding.*`, `metadata.name`, `metadata.namespace`,
//!   `source`); another field is 400 `BadRequest`, as the real conversion refuses it;
//! - merge PATCH (`application/merge-patch+json`; other patch types are 415 here), under a
//!   `metadata.resourceVersion` in the patch as a precondition, with the update validation of that
//!   version: only `series` (and metadata) may change; another field changed is 422 `Invalid`
//!   ("field is immutable"); `eventTime` is compared as sent (the client sends back what it created).

use serde_json::{json, Map, Value};

use super::http::Request;
use super::leases::{is_dns_subdomain, list, matches, parse_selector};
use super::{now_unix, rfc3339, State};

/// Fields an update may not change, as their JSON names.
const IMMUTABLE: [&str; 13] = [
    "regarding",
    "reason",
    "note",
    "deprecatedSource",
    "deprecatedFirstTimestamp",
    "deprecatedLastTimestamp",
    "deprecatedCount",
    "type",
    "eventTime",
    "action",
    "related",
    "reportingController",
    "reportingInstance",
];

/// The field selectors the group supports, and where each is in the object.
const FIELDS: [(&str, &[&str]); 13] = [
    ("reason", &["reason"]),
    ("type", &["type"]),
    ("reportingController", &["reportingController"]),
    ("source", &["deprecatedSource", "component"]),
    ("regarding.kind", &["regarding", "kind"]),
    ("regarding.namespace", &["regarding", "namespace"]),
    ("regarding.name", &["regarding", "name"]),
    ("regarding.uid", &["regarding", "uid"]),
    ("regarding.apiVersion", &["regarding", "apiVersion"]),
    (
        "regarding.resourceVersion",
        &["regarding", "resourceVersion"],
    ),
    ("regarding.fieldPath", &["regarding", "fieldPath"]),
    ("metadata.namespace", &["metadata", "namespace"]),
    ("metadata.name", &["metadata", "name"]),
];

fn status(code: u16, reason: &str, message: String, name: Option<&str>) -> (u16, Value) {
    let (code, mut v) = super::status(code, reason, message, None);
    if let Some(n) = name {
        v["details"] = json!({ "name": n, "group": "events.k8s.io", "kind": "events" });
    }
    (code, v)
}

fn invalid(name: &str, errors: &[String]) -> (u16, Value) {
    status(
        422,
        "Invalid",
        format!(
            "Event.events.k8s.io \"{name}\" is invalid: [{}]",
            errors.join(", ")
        ),
        Some(name),
    )
}

fn not_found(name: &str) -> (u16, Value) {
    status(
        404,
        "NotFound",
        format!("events.events.k8s.io \"{name}\" not found"),
        Some(name),
    )
}

fn text<'a>(ev: &'a Value, field: &str) -> &'a str {
    ev[field].as_str().unwrap_or("")
}

fn set(ev: &Value, field: &str) -> bool {
    !ev[field].is_null()
}

/// A qualified name: an optional DNS-subdomain prefix and `/`, then at most 63 alphanumerics,
/// `-`, `_` or `.`, alphanumeric at both ends.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain)
        && !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// What every Event written through events.k8s.io/v1 must be (the "legacy" checks of an Event
/// with an `eventTime`).
fn validate_fields(ev: &Value, ns: &str, errors: &mut Vec<String>) {
    let regarding_ns = ev["regarding"]["namespace"].as_str().unwrap_or("");
    if regarding_ns.is_empty() && ns != "default" && ns != "kube-system" {
        errors.push(format!(
            "regarding.namespace: Invalid value: {regarding_ns:?}: does not match event.namespace"
        ));
    }
    let controller = text(ev, "reportingController");
    if controller.is_empty() {
        errors.push("reportingController: Required value".into());
    } else if !is_qualified_name(controller) {
        errors.push(format!(
            "reportingController: Invalid value: {controller:?}: must be a qualified name"
        ));
    }
    for (field, limit) in [("reportingInstance", 128), ("action", 128), ("reason", 128)] {
        let v = text(ev, field);
        if v.is_empty() {
            errors.push(format!("{field}: Required value"));
        } else if v.len() > limit {
            errors.push(format!(
                "{field}: Invalid value: \"\": can have at most {limit} characters"
            ));
        }
    }
    if text(ev, "note").len() > 1024 {
        errors.push("note: Invalid value: \"\": can have at most 1024 characters".into());
    }
}

fn validate_series(ev: &Value, errors: &mut Vec<String>) {
    let series = &ev["series"];
    if series.is_null() {
        return;
    }
    if series["count"].as_i64().unwrap_or(0) < 2 {
        errors.push(format!(
            "series.count: Invalid value: \"\": should be at least 2, got {}",
            series["count"]
        ));
    }
    if series["lastObservedTime"].as_str().unwrap_or("").is_empty() {
        errors.push("series.lastObservedTime: Required value".into());
    }
}

/// `POST /apis/events.k8s.io/v1/namespaces/<ns>/events`.
pub(super) fn create(s: &mut State, ns: &str, req: &Request) -> (u16, Value) {
    let Ok(mut ev) = serde_json::from_slice::<Value>(&req.body) else {
        return status(400, "BadRequest", "not a JSON object".into(), None);
    };
    if !ev.is_object() {
        return status(400, "BadRequest", "not a JSON object".into(), None);
    }
    match ev["metadata"]["namespace"].as_str() {
        Some(theirs) if theirs != ns => return status(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
            None,
        ),
        _ => ev["metadata"]["namespace"] = json!(ns),
    }
    if ev["metadata"]["name"].as_str().unwrap_or("").is_empty() {
        match ev["metadata"]["generateName"].as_str() {
            Some(prefix) if !prefix.is_empty() => {
                let name = format!("{prefix}{:05x}", s.events.len());
                ev["metadata"]["name"] = json!(name);
            }
            _ => {
                return invalid(
                    "",
                    &["metadata.name: Required value: name or generateName is required".into()],
                )
            }
        }
    }
    let name = ev["metadata"]["name"].as_str().unwrap_or("").to_string();
    let mut errors = Vec::new();
    if !is_dns_subdomain(&name) {
        errors.push(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
        ));
    }
    if !set(&ev, "eventTime") {
        errors.push("eventTime: Required value".into());
    }
    if !matches!(text(&ev, "type"), "Normal" | "Warning") {
        errors.push(format!(
            "type: Invalid value: \"\": has invalid value: {}",
            text(&ev, "type")
        ));
    }
    for field in [
        "deprecatedFirstTimestamp",
        "deprecatedLastTimestamp",
        "deprecatedCount",
        "deprecatedSource",
    ] {
        if set(&ev, field) {
            errors.push(format!("{field}: Invalid value: \"\": needs to be unset"));
        }
    }
    validate_fields(&ev, ns, &mut errors);
    validate_series(&ev, &mut errors);
    if !errors.is_empty() {
        return invalid(&name, &errors);
    }
    if position(s, ns, &name).is_some() {
        return status(
            409,
            "AlreadyExists",
            format!("events.events.k8s.io \"{name}\" already exists"),
            Some(&name),
        );
    }
    ev["apiVersion"] = json!("events.k8s.io/v1");
    ev["kind"] = json!("Event");
    ev["metadata"]["uid"] = json!(s.next_uid());
    ev["metadata"]["resourceVersion"] = json!(s.next_rv());
    ev["metadata"]["creationTimestamp"] = json!(rfc3339(now_unix()));
    s.events.push(ev.clone());
    (201, ev)
}

fn position(s: &State, ns: &str, name: &str) -> Option<usize> {
    s.events
        .iter()
        .position(|e| e["metadata"]["namespace"] == ns && e["metadata"]["name"] == name)
}

/// The value of field selector `key` in `ev` ("" when unset), or `None` for a field the group does
/// not select on.
fn field(ev: &Value, key: &str) -> Option<String> {
    let (_, path) = FIELDS.iter().find(|(k, _)| *k == key)?;
    let v = path.iter().fold(ev, |v, p| &v[*p]);
    Some(match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// `GET /apis/events.k8s.io/v1/namespaces/<ns>/events`: label and field selectors, no paging.
pub(super) fn list_events(s: &mut State, ns: &str, req: &Request) -> (u16, Value) {
    let labels = match parse_selector(req.query.get("labelSelector").map_or("", String::as_str)) {
        Ok(t) => t,
        Err(e) => return status(400, "BadRequest", e, None),
    };
    let fields = match parse_selector(req.query.get("fieldSelector").map_or("", String::as_str)) {
        Ok(t) => t,
        Err(e) => return status(400, "BadRequest", e, None),
    };
    for (k, op, _) in &fields {
        if !matches!(*op, "=" | "!=") {
            return status(
                400,
                "BadRequest",
                format!("invalid field selector: {k}: an operator is required"),
                None,
            );
        }
        if field(&Value::Null, k).is_none() {
            return status(
                400,
                "BadRequest",
                format!("field label not supported: {k}"),
                None,
            );
        }
    }
    let in_ns: Vec<&Value> = s
        .events
        .iter()
        .filter(|e| e["metadata"]["namespace"] == ns)
        .collect();
    let items: Vec<Value> = in_ns
        .iter()
        .filter(|e| matches(e, &labels))
        .filter(|e| {
            fields.iter().all(|(k, op, want)| {
                let have = field(e, k).unwrap_or_default();
                (have == *want) == (*op == "=")
            })
        })
        .map(|e| (*e).clone())
        .collect();
    s.scanning = in_ns.len();
    list(s, "EventList", "events.k8s.io/v1", items.iter())
}

/// RFC 7386: `patch` merged into `target`.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// `PATCH /apis/events.k8s.io/v1/namespaces/<ns>/events/<name>` (merge patch).
pub(super) fn patch(s: &mut State, ns: &str, name: &str, req: &Request) -> (u16, Value) {
    if !req.content_type.starts_with("application/merge-patch+json") {
        return status(
            415,
            "UnsupportedMediaType",
            format!(
                "the test double speaks merge patch only, not {:?}",
                req.content_type
            ),
            None,
        );
    }
    let Ok(p) = serde_json::from_slice::<Value>(&req.body) else {
        return status(400, "BadRequest", "not a JSON object".into(), None);
    };
    let Some(i) = position(s, ns, name) else {
        return not_found(name);
    };
    let old = s.events[i].clone();
    if let Some(rv) = p["metadata"]["resourceVersion"].as_str() {
        if old["metadata"]["resourceVersion"] != rv {
            return status(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on events.events.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                ),
                Some(name),
            );
        }
    }
    let mut new = old.clone();
    merge(&mut new, &p);
    if new["metadata"]["name"] != name {
        return status(
            400,
            "BadRequest",
            format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                new["metadata"]["name"]
            ),
            None,
        );
    }
    if new["metadata"]["namespace"] != ns {
        return status(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
            None,
        );
    }
    let mut errors = Vec::new();
    for f in ["uid", "creationTimestamp"] {
        if new["metadata"][f] != old["metadata"][f] {
            errors.push(format!(
                "metadata.{f}: Invalid value: {}: field is immutable",
                new["metadata"][f]
            ));
        }
    }
    validate_fields(&new, ns, &mut errors);
    if new["series"] != old["series"] {
        validate_series(&new, &mut errors);
    }
    for f in IMMUTABLE {
        if new[f] != old[f] {
            errors.push(format!("{f}: Invalid value: \"\": field is immutable"));
        }
    }
    if !errors.is_empty() {
        return invalid(name, &errors);
    }
    new["metadata"]["resourceVersion"] = json!(s.next_rv());
    s.events[i] = new.clone();
    (200, new)
}
