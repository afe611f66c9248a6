//! `coordination.k8s.io/v1` Leases: validation, create, replace, delete and list, with the
//! registry's rules (see the parent module's docs).

use serde_json::{json, Map, Value};

use super::http::Request;
use super::{conflict, not_found, now_unix, rfc3339, status, Key, State};

pub(super) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A label key (optional DNS-subdomain prefix, `/`, name of at most 63) and value (at most 63,
/// alphanumeric at both ends, `-_.` inside).
fn valid_label(k: &str, v: &str) -> bool {
    let name_ok = |n: &str| {
        n.len() <= 63
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && n.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
            && n.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
    };
    let key_ok = match k.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && !name.is_empty() && name_ok(name),
        None => !k.is_empty() && name_ok(k),
    };
    key_ok && name_ok(v)
}

fn validate(obj: &Value) -> Result<(), String> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if !is_dns_subdomain(name) {
        return Err(format!("metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"));
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            let v = v
                .as_str()
                .ok_or(format!("metadata.labels[{k}]: must be a string"))?;
            if !valid_label(k, v) {
                return Err(format!("metadata.labels: Invalid value: {k}={v}"));
            }
        }
    }
    if let Some(ann) = obj["metadata"]["annotations"].as_object() {
        if ann.values().any(|v| !v.is_string()) {
            return Err("metadata.annotations: values must be strings".into());
        }
    }
    Ok(())
}

pub(super) fn put_as_other(s: &mut State, ns: &str, mut obj: Value) {
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let key = (ns.to_string(), name);
    let (uid, created) = match s.leases.get(&key) {
        Some(cur) => (
            cur["metadata"]["uid"].clone(),
            cur["metadata"]["creationTimestamp"].clone(),
        ),
        None => (json!(s.next_uid()), json!(rfc3339(now_unix()))),
    };
    let rv = s.next_rv();
    obj["apiVersion"] = json!("coordination.k8s.io/v1");
    obj["kind"] = json!("Lease");
    let meta = obj["metadata"].as_object_mut().expect("metadata");
    meta.insert("namespace".into(), json!(ns));
    meta.insert("uid".into(), uid);
    meta.insert("resourceVersion".into(), json!(rv));
    meta.insert("creationTimestamp".into(), created);
    s.leases.insert(key, obj);
}

fn parse_body(req: &Request) -> Result<Value, (u16, Value)> {
    serde_json::from_slice(&req.body)
        .map_err(|e| status(400, "BadRequest", format!("invalid JSON body: {e}"), None))
}

pub(super) fn create(s: &mut State, ns: &str, req: &Request) -> (u16, Value) {
    let mut obj = match parse_body(req) {
        Ok(v) => v,
        Err(e) => return e,
    };
    if obj["kind"] != "Lease" || obj["apiVersion"] != "coordination.k8s.io/v1" {
        return status(
            400,
            "BadRequest",
            format!(
                "expected a coordination.k8s.io/v1 Lease, got {} {}",
                obj["apiVersion"], obj["kind"]
            ),
            None,
        );
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    if let Err(e) = validate(&obj) {
        return status(
            422,
            "Invalid",
            format!("Lease.coordination.k8s.io \"{name}\" is invalid: {e}"),
            Some(&name),
        );
    }
    match obj["metadata"]["namespace"].as_str() {
        Some(n) if n != ns => return status(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
            None,
        ),
        _ => {}
    }
    if obj["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|rv| !rv.is_empty())
    {
        return status(
            400,
            "BadRequest",
            "resourceVersion should not be set on objects to be created".into(),
            None,
        );
    }
    let key = (ns.to_string(), name.clone());
    if s.leases.contains_key(&key) {
        return status(
            409,
            "AlreadyExists",
            format!("leases.coordination.k8s.io \"{name}\" already exists"),
            Some(&name),
        );
    }
    let uid = s.next_uid();
    let rv = s.next_rv();
    let meta = obj["metadata"].as_object_mut().unwrap();
    meta.insert("namespace".into(), json!(ns));
    meta.insert("uid".into(), json!(uid));
    meta.insert("resourceVersion".into(), json!(rv));
    meta.insert("creationTimestamp".into(), json!(rfc3339(now_unix())));
    s.leases.insert(key, obj.clone());
    (201, obj)
}

pub(super) fn replace(s: &mut State, ns: &str, name: &str, req: &Request) -> (u16, Value) {
    let mut obj = match parse_body(req) {
        Ok(v) => v,
        Err(e) => return e,
    };
    if obj["metadata"]["name"].as_str() != Some(name) {
        return status(
            400,
            "BadRequest",
            "the name of the object does not match the name on the URL".into(),
            None,
        );
    }
    if let Err(e) = validate(&obj) {
        return status(
            422,
            "Invalid",
            format!("Lease.coordination.k8s.io \"{name}\" is invalid: {e}"),
            Some(name),
        );
    }
    let key = (ns.to_string(), name.to_string());
    let body_uid = obj["metadata"]["uid"]
        .as_str()
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    let Some(current) = s.leases.get(&key) else {
        // A uid in the body is a precondition, checked against the missing object's empty uid.
        if let Some(u) = body_uid {
            return conflict(
                name,
                format!("Precondition failed: UID in precondition: {u}, UID in object meta: "),
            );
        }
        // Leases allow create on update: the PUT creates the object (its resourceVersion ignored).
        let uid = s.next_uid();
        let rv = s.next_rv();
        obj["apiVersion"] = json!("coordination.k8s.io/v1");
        obj["kind"] = json!("Lease");
        let Some(meta) = obj["metadata"].as_object_mut() else {
            return status(400, "BadRequest", "no metadata".into(), None);
        };
        meta.insert("namespace".into(), json!(ns));
        meta.insert("uid".into(), json!(uid));
        meta.insert("resourceVersion".into(), json!(rv));
        meta.insert("creationTimestamp".into(), json!(rfc3339(now_unix())));
        s.leases.insert(key, obj.clone());
        return (201, obj);
    };
    let cur_rv = current["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let cur_uid = current["metadata"]["uid"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let created = current["metadata"]["creationTimestamp"].clone();
    match obj["metadata"]["uid"].as_str() {
        Some(u) if !u.is_empty() && u != cur_uid => {
            return conflict(
                name,
                format!(
                    "Precondition failed: UID in precondition: {u}, UID in object meta: {cur_uid}"
                ),
            )
        }
        _ => {}
    }
    match obj["metadata"]["resourceVersion"].as_str() {
        // Leases do not allow unconditional updates.
        None | Some("") => {
            return status(
                422,
                "Invalid",
                format!(
                    "leases.coordination.k8s.io \"{name}\" is invalid: metadata.resourceVersion: \
                     Invalid value: 0: must be specified for an update"
                ),
                Some(name),
            )
        }
        Some(rv) if rv != cur_rv => {
            return conflict(name, "the object has been modified; please apply your changes to the latest version and try again".into())
        }
        _ => {}
    }
    let rv = s.next_rv();
    let meta = obj["metadata"].as_object_mut().unwrap();
    meta.insert("namespace".into(), json!(ns));
    meta.insert("uid".into(), json!(cur_uid));
    meta.insert("resourceVersion".into(), json!(rv));
    meta.insert("creationTimestamp".into(), created);
    s.leases.insert(key, obj.clone());
    (200, obj)
}

pub(super) fn delete(s: &mut State, ns: &str, name: &str, req: &Request) -> (u16, Value) {
    let opts: Value = if req.body.is_empty() {
        json!({})
    } else {
        match parse_body(req) {
            Ok(v) => v,
            Err(e) => return e,
        }
    };
    let key = (ns.to_string(), name.to_string());
    let Some(current) = s.leases.get(&key) else {
        return not_found(name);
    };
    let pre = &opts["preconditions"];
    let cur_uid = current["metadata"]["uid"].as_str().unwrap_or("");
    let cur_rv = current["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("");
    if let Some(u) = pre["uid"].as_str() {
        if u != cur_uid {
            return conflict(
                name,
                format!(
                    "Precondition failed: UID in precondition: {u}, UID in object meta: {cur_uid}"
                ),
            );
        }
    }
    if let Some(rv) = pre["resourceVersion"].as_str() {
        if rv != cur_rv {
            return conflict(name, format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {cur_rv}"));
        }
    }
    s.next_rv();
    let obj = s.leases.remove(&key).unwrap_or_default();
    (200, obj)
}

/// Parses an equality-based selector into (key, op, value) terms; set-based ones are refused.
pub(super) fn parse_selector(sel: &str) -> Result<Vec<(String, &'static str, String)>, String> {
    let mut terms = Vec::new();
    for t in sel.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if t.contains(" in ") || t.contains(" notin ") || t.contains('(') {
            return Err(format!(
                "set-based selector {t:?} is not supported by the test double"
            ));
        }
        let term = if let Some((k, v)) = t.split_once("!=") {
            (k.trim().to_string(), "!=", v.trim().to_string())
        } else if let Some((k, v)) = t.split_once("==") {
            (k.trim().to_string(), "=", v.trim().to_string())
        } else if let Some((k, v)) = t.split_once('=') {
            (k.trim().to_string(), "=", v.trim().to_string())
        } else if let Some(k) = t.strip_prefix('!') {
            (k.trim().to_string(), "!", String::new())
        } else {
            (t.to_string(), "exists", String::new())
        };
        terms.push(term);
    }
    Ok(terms)
}

pub(super) fn matches(obj: &Value, terms: &[(String, &'static str, String)]) -> bool {
    let empty = Map::new();
    let labels = obj["metadata"]["labels"].as_object().unwrap_or(&empty);
    terms.iter().all(|(k, op, v)| {
        let have = labels.get(k).and_then(Value::as_str);
        match *op {
            "=" => have == Some(v.as_str()),
            "!=" => have != Some(v.as_str()),
            "!" => have.is_none(),
            _ => have.is_some(),
        }
    })
}

/// A LIST of Leases: label selector, `limit` and `continue` (the token is the last name served;
/// the real one is opaque), and metadata only when asked for (`as=PartialObjectMetadataList`).
pub(super) fn list_leases(s: &mut State, ns: &str, req: &Request) -> (u16, Value) {
    let terms = match parse_selector(req.query.get("labelSelector").map_or("", String::as_str)) {
        Ok(t) => t,
        Err(e) => return status(400, "BadRequest", e, None),
    };
    let limit = match req.query.get("limit").map(|l| l.parse::<usize>()) {
        None | Some(Ok(0)) => usize::MAX,
        Some(Ok(n)) => n,
        Some(Err(_)) => return status(400, "BadRequest", "limit: not a number".into(), None),
    };
    let after = req.query.get("continue").cloned().unwrap_or_default();
    let metadata_only = req.accept.contains("as=PartialObjectMetadataList");
    s.scanning = s.leases.keys().filter(|(n, _)| n == ns).count();
    let matching: Vec<(&Key, &Value)> = s
        .leases
        .iter()
        .filter(|((n, name), obj)| {
            n == ns && name.as_str() > after.as_str() && matches(obj, &terms)
        })
        .collect();
    let more = matching.len() > limit;
    let page: Vec<Value> = matching
        .iter()
        .take(limit)
        .map(|(_, obj)| {
            if metadata_only {
                json!({ "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                        "metadata": obj["metadata"] })
            } else {
                (*obj).clone()
            }
        })
        .collect();
    let token = more
        .then(|| {
            page.last()
                .and_then(|o| o["metadata"]["name"].as_str())
                .map(str::to_string)
        })
        .flatten();
    let kind = if metadata_only {
        "PartialObjectMetadataList"
    } else {
        "LeaseList"
    };
    s.lease_lists.push((kind.to_string(), page.len()));
    let api_version = if metadata_only {
        "meta.k8s.io/v1"
    } else {
        "coordination.k8s.io/v1"
    };
    let (code, mut v) = list(s, kind, api_version, page.iter());
    if let Some(t) = token {
        v["metadata"]["continue"] = json!(t);
    }
    (code, v)
}

/// A list answer: its items carry neither kind nor apiVersion, as a real list's do.
pub(super) fn list<'a>(
    s: &State,
    kind: &str,
    api_version: &str,
    objects: impl Iterator<Item = &'a Value>,
) -> (u16, Value) {
    let items: Vec<Value> = objects
        .map(|obj| {
            let mut o = obj.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    (
        200,
        json!({
            "kind": kind, "apiVersion": api_version,
            "metadata": { "resourceVersion": s.resource_version.to_string() }, "items": items
        }),
    )
}
