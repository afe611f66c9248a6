//! The API server double keeps the real server's rules for Leases that the store relies on, and
//! the store relies on no rule the real server lacks. From `pkg/registry/coordination/lease/
//! strategy.go` (`AllowCreateOnUpdate` true, `AllowUnconditionalUpdate` false) and the generic
//! registry's `Update`:
//! - a PUT of a missing Lease creates it, unless its body names a `metadata.uid` (a precondition
//!   that a missing object fails: 409);
//! - a PUT of an existing Lease without `metadata.resourceVersion` is 422 Invalid.
//!
//! So a conditional write of the store (uid and resourceVersion as read) never brings back an
//! object deleted in between.
//!
//! Run: `cargo test -p iotlan-ipam --features kubernetes --test kubernetes api_rules`.

use crate::kubefix;
use iotlan_apiserver_double::rbac;

use crate::contract::{ips, req, v4_pool};
use iotlan_ipam::store::kubernetes::objects;
use iotlan_ipam::{Attachment, Store};
use serde_json::{json, Value};

use crate::kubefix::{lease, name, object, Gone, KubeFixture, NS, TOKEN};

fn path(name: &str) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{name}")
}

fn stored(f: &KubeFixture, name: &str) -> Option<Value> {
    f.server
        .leases(NS)
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
}

#[test]
fn a_put_of_a_missing_lease_creates_it_unless_it_names_a_uid() {
    let f = KubeFixture::new();
    let l = lease("192.168.20.7", "ns/a", "c1");
    let n = name("192.168.20.7");
    let mut body = object(&l);
    body["apiVersion"] = json!("coordination.k8s.io/v1");
    body["kind"] = json!("Lease");

    // With a uid (what every conditional write of the store carries): 409, nothing created.
    let mut with_uid = body.clone();
    with_uid["metadata"]["uid"] = json!("0b5c6a7e-0000-4000-8000-000000000001");
    with_uid["metadata"]["resourceVersion"] = json!("7");
    let (code, status) = f.server.raw(TOKEN, "PUT", &path(&n), Some(&with_uid));
    assert_eq!(
        (code, status["reason"].as_str()),
        (409, Some("Conflict")),
        "{status}"
    );
    assert!(stored(&f, &n).is_none());

    // Without one: created, with a uid and resourceVersion of the server's.
    let (code, created) = f.server.raw(TOKEN, "PUT", &path(&n), Some(&body));
    assert_eq!(code, 201, "{created}");
    let obj = stored(&f, &n).expect("created by the PUT");
    assert!(obj["metadata"]["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty()));
    assert_eq!(obj["metadata"]["annotations"][objects::ANN_CONTAINER], "c1");
}

#[test]
fn a_put_without_a_resource_version_is_refused() {
    let f = KubeFixture::new();
    let s = f.open();
    let got = s.allocate(&v4_pool(), &req("ns/a", "c1")).unwrap();
    let n = name(&got[0].ip.to_string());
    let current = stored(&f, &n).unwrap();
    let mut body = current.clone();
    body["metadata"]["annotations"][objects::ANN_CONTAINER] = json!("intruder");

    let mut unconditional = body.clone();
    unconditional["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let (code, status) = f.server.raw(TOKEN, "PUT", &path(&n), Some(&unconditional));
    assert_eq!(
        (code, status["reason"].as_str()),
        (422, Some("Invalid")),
        "{status}"
    );
    assert!(status["message"]
        .as_str()
        .unwrap_or("")
        .contains("must be specified for an update"));

    let mut stale = body.clone();
    let rv: u64 = current["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap();
    stale["metadata"]["resourceVersion"] = json!((rv + 1000).to_string());
    let (code, _) = f.server.raw(TOKEN, "PUT", &path(&n), Some(&stale));
    assert_eq!(code, 409);
    // Neither write changed who holds the address.
    assert_eq!(s.find(&Attachment::new("c1", "net1")).unwrap(), got);

    // With the resourceVersion read: replaced.
    let (code, _) = f.server.raw(TOKEN, "PUT", &path(&n), Some(&body));
    assert_eq!(code, 200);
    assert!(s.find(&Attachment::new("c1", "net1")).unwrap().is_empty());
}

#[test]
fn a_takeover_of_a_lease_deleted_meanwhile_creates_a_fresh_one_never_resurrects() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let s = f.open().with_node(Some("node-a".into()));
    let old = s.allocate(&pool, &req("ha/ha-0", "old")).unwrap();
    let n = name(&old[0].ip.to_string());
    let old_uid = stored(&f, &n).unwrap()["metadata"]["uid"].clone();
    // The old sandbox's DEL lands just before the new sandbox's takeover (a PUT with the old uid).
    f.server.interfere("PUT", NS, &n, Value::Null);
    let got = s
        .grant(&pool, &req("ha/ha-0", "new"), &Gone)
        .unwrap()
        .leases;
    assert_eq!(ips(&got), ips(&old));
    let obj = stored(&f, &n).unwrap();
    assert_ne!(obj["metadata"]["uid"], old_uid, "a new object, by create");
    assert_eq!(
        obj["metadata"]["annotations"][objects::ANN_CONTAINER],
        "new"
    );
    assert_eq!(s.leases().unwrap().len(), 1);
}

#[test]
fn putting_back_a_taken_over_lease_never_resurrects_one_deleted_meanwhile() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let s = f.open().with_node(Some("node-a".into()));
    s.allocate(&pool, &req("ha/ha-0", "old")).unwrap();
    let grant = s.grant(&pool, &req("ha/ha-0", "new"), &Gone).unwrap();
    assert_eq!(grant.claimed.len(), 1);
    let n = name(&grant.leases[0].ip.to_string());
    // The new sandbox's ADD fails later, and its own DEL lands before the revert's PUT.
    f.server.interfere("PUT", NS, &n, Value::Null);
    s.revert(&grant).unwrap();
    assert!(
        stored(&f, &n).is_none(),
        "the revert brought an object back"
    );
    assert!(s.leases().unwrap().is_empty());
}

/// The shipped RBAC, as the double enforces it: exactly what the store, the node-loss check,
/// the reconcile loop and the re-assert pass (its duplicate-address Event, which
/// `iotlan status` lists back) use, and nothing more.
/// (API group, resource, verb, namespace, resource names) of every permission a rule grants.
type Grant = (String, String, String, Option<String>, Vec<String>);

#[test]
fn the_shipped_rbac_is_exactly_what_the_store_and_the_agent_need() {
    let mut got: Vec<Grant> = rbac::shipped_rules()
        .into_iter()
        .flat_map(|r| {
            let mut v = Vec::new();
            for g in &r.api_groups {
                for res in &r.resources {
                    for verb in &r.verbs {
                        v.push((
                            g.clone(),
                            res.clone(),
                            verb.clone(),
                            r.namespace.clone(),
                            r.resource_names.clone(),
                        ));
                    }
                }
            }
            v
        })
        .collect();
    got.sort();
    let ns = Some(NS.to_string());
    let any: &[&str] = &[];
    let mut want: Vec<Grant> = [
        ("coordination.k8s.io", "leases", "create", ns.clone(), any),
        ("coordination.k8s.io", "leases", "delete", ns.clone(), any),
        ("coordination.k8s.io", "leases", "get", ns.clone(), any),
        ("coordination.k8s.io", "leases", "list", ns.clone(), any),
        ("coordination.k8s.io", "leases", "update", ns.clone(), any),
        ("events.k8s.io", "events", "create", ns.clone(), any),
        ("events.k8s.io", "events", "list", ns.clone(), any),
        ("events.k8s.io", "events", "patch", ns.clone(), any),
        ("", "nodes", "get", None, any),
        ("", "pods", "list", None, any),
        // The agent's TokenRequest for the plugin's kubeconfig: its own ServiceAccount only.
        (
            "",
            "serviceaccounts/token",
            "create",
            ns.clone(),
            &["iotlan"],
        ),
    ]
    .into_iter()
    .map(|(g, r, v, n, names)| {
        (
            g.to_string(),
            r.to_string(),
            v.to_string(),
            n,
            names.iter().map(|s| s.to_string()).collect(),
        )
    })
    .collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn token_requests_are_allowed_for_the_iotlan_serviceaccount_only() {
    let f = KubeFixture::new();
    f.server.create_service_account(NS, "iotlan");
    f.server.create_service_account(NS, "other");
    let body = json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                       "spec": { "expirationSeconds": 86400 } });
    let path = |sa: &str| format!("/api/v1/namespaces/{NS}/serviceaccounts/{sa}/token");
    let (code, other) = f.server.raw(TOKEN, "POST", &path("other"), Some(&body));
    assert_eq!(code, 403, "{other}");
    assert!(
        other["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot create resource \"serviceaccounts/token\""),
        "{other}"
    );
    let (code, got) = f.server.raw(TOKEN, "POST", &path("iotlan"), Some(&body));
    assert_eq!(code, 201, "{got}");
    let token = got["status"]["token"]
        .as_str()
        .expect("a token")
        .to_string();
    // Too short a lifetime is refused, as the real API server refuses it (under 10 minutes).
    let mut short = body.clone();
    short["spec"]["expirationSeconds"] = json!(599);
    let (code, invalid) = f.server.raw(TOKEN, "POST", &path("iotlan"), Some(&short));
    assert_eq!(code, 422, "{invalid}");
    // The issued token authenticates, until it expires, or until its ServiceAccount is deleted.
    let get = |t: &str| f.server.raw(t, "GET", "/api/v1/nodes/node-a", None).0;
    assert_eq!(get(&token), 404);
    f.server.advance_token_clock(86_399);
    assert_eq!(get(&token), 404);
    f.server.advance_token_clock(1);
    assert_eq!(get(&token), 401);
    let (_, fresh) = f.server.raw(TOKEN, "POST", &path("iotlan"), Some(&body));
    let fresh = fresh["status"]["token"]
        .as_str()
        .expect("a token")
        .to_string();
    assert_eq!(get(&fresh), 404);
    f.server.delete_service_account(NS, "iotlan");
    assert_eq!(get(&fresh), 401);
}

#[test]
fn a_pods_projected_token_is_refused_once_its_pod_is_deleted() {
    let f = KubeFixture::new();
    f.server.create_service_account(NS, "iotlan");
    f.server.add_pod(NS, "iotlan-abcde");
    let token = f.server.projected_token(NS, "iotlan", "iotlan-abcde");
    let get = |t: &str| f.server.raw(t, "GET", "/api/v1/nodes/node-a", None).0;
    assert_eq!(get(&token), 404);
    // Recreated under the same name (another uid): still refused.
    f.server.delete_pod(NS, "iotlan-abcde");
    assert_eq!(get(&token), 401);
    f.server.add_pod(NS, "iotlan-abcde");
    assert_eq!(get(&token), 401);
    let why = f.server.unauthorized();
    assert!(
        why.iter()
            .any(|(_, _, w)| w.contains("pod iotlan-system/iotlan-abcde")),
        "{why:?}"
    );
}

#[test]
fn the_double_refuses_what_the_shipped_rbac_does_not_grant() {
    let f = KubeFixture::new();
    let refused = [
        ("GET", "/api/v1/nodes".to_string()),
        ("DELETE", "/api/v1/nodes/node-a".to_string()),
        (
            "GET",
            "/api/v1/namespaces/kube-system/secrets/x".to_string(),
        ),
        (
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases".to_string(),
        ),
        (
            "DELETE",
            format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"),
        ),
        (
            "GET",
            format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases?watch=true"),
        ),
    ];
    for (method, p) in &refused {
        let (code, status) = f.server.raw(TOKEN, method, p, None);
        assert_eq!(code, 403, "{method} {p}: {status}");
    }
    // A store in a namespace the Role does not cover is refused, and says to check RBAC.
    let cfg = kubefix::store_config(&f.kubeconfig, json!({ "namespace": "elsewhere" }));
    let e = iotlan_ipam::store::kubernetes::KubernetesStore::open("iot", &cfg)
        .unwrap()
        .allocate(&v4_pool(), &req("ns/a", "a"))
        .unwrap_err();
    assert!(
        e.to_string().contains("403") && e.to_string().contains("RBAC"),
        "{e}"
    );
    // Allowed: reading a node.
    let (code, _) = f.server.raw(TOKEN, "GET", "/api/v1/nodes/node-a", None);
    assert_eq!(code, 404);
}

#[test]
fn everything_the_store_does_is_within_the_shipped_rbac() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let a = f.open().with_node(Some("node-a".into()));
    let b = f.open().with_node(Some("node-b".into()));
    f.server.add_pod("ns", "web-0");
    let old = b.allocate(&pool, &req("ns/web-0", "old")).unwrap();
    f.server.put_node("node-b", "Unknown", 3600);
    let got = a.grant(&pool, &req("ns/web-0", "new"), &Gone).unwrap();
    assert_eq!(ips(&got.leases), ips(&old));
    a.revert(&got).unwrap();
    a.gc(&[]).unwrap();
    b.release(&Attachment::new("old", "net1")).unwrap();
    assert!(f.server.denied().is_empty(), "{:?}", f.server.denied());
    assert!(f.server.requests().len() > 10);
}

/// `events.k8s.io/v1` Events as the real API server takes them from a client of that version
/// (what kube's events Recorder posts, and `iotlan status` lists): the strict create validation,
/// field selectors the group converts, and a merge PATCH that may change only the series.
#[test]
fn events_keep_the_events_k8s_io_v1_rules() {
    let f = KubeFixture::new();
    let events = format!("/apis/events.k8s.io/v1/namespaces/{NS}/events");
    let ev = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": { "name": "iot.192-168-20-7.1", "namespace": NS },
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "type": "Warning", "reason": "DuplicateAddress", "action": "Reassert",
        "note": "DUPLICATE ADDRESS", "reportingController": "iotlan", "reportingInstance": "pi-1",
        "regarding": { "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "name": "iot.192-168-20-7", "namespace": NS }
    });
    // What only a core v1 Event may carry, or what this version requires, missing: 422.
    for (field, value) in [
        ("deprecatedCount", json!(1)),
        ("deprecatedSource", json!({ "host": "pi-1" })),
        ("reportingInstance", Value::Null),
        ("eventTime", Value::Null),
        ("note", json!("x".repeat(1025))),
        (
            "series",
            json!({ "count": 1, "lastObservedTime": "2026-01-01T00:00:00.000000Z" }),
        ),
    ] {
        let mut bad = ev.clone();
        bad[field] = value;
        let (code, got) = f.server.raw(TOKEN, "POST", &events, Some(&bad));
        assert_eq!(code, 422, "{field}: {got}");
    }
    let (code, got) = f.server.raw(TOKEN, "POST", &events, Some(&ev));
    assert_eq!(code, 201, "{got}");
    let (code, _) = f.server.raw(TOKEN, "POST", &events, Some(&ev));
    assert_eq!(code, 409, "a second create of one name");

    // Listed by the fields the group converts; another field is refused.
    let list = |sel: &str| {
        f.server
            .raw(TOKEN, "GET", &format!("{events}?fieldSelector={sel}"), None)
    };
    let (code, got) = list("reason%3DDuplicateAddress,reportingController%3Diotlan");
    assert_eq!(
        (code, got["items"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{got}"
    );
    let (_, got) = list("reason%3DOther");
    assert_eq!(got["items"].as_array().map(Vec::len), Some(0), "{got}");
    let (code, got) = list("note%3Dx");
    assert_eq!(code, 400, "{got}");

    // A recurrence adds to the series; the note (and every other field) is immutable.
    let one = format!("{events}/iot.192-168-20-7.1");
    let series =
        json!({ "series": { "count": 2, "lastObservedTime": "2026-01-01T00:01:00.000000Z" } });
    let (code, got) = f.server.raw(TOKEN, "PATCH", &one, Some(&series));
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["series"]["count"], 2);
    let (code, got) = f
        .server
        .raw(TOKEN, "PATCH", &one, Some(&json!({ "note": "other" })));
    assert_eq!(code, 422, "{got}");
    let bad =
        json!({ "series": { "count": 1, "lastObservedTime": "2026-01-01T00:02:00.000000Z" } });
    let (code, got) = f.server.raw(TOKEN, "PATCH", &one, Some(&bad));
    assert_eq!(code, 422, "{got}");
    let missing = format!("{events}/iot.192-168-20-8.1");
    assert_eq!(f.server.raw(TOKEN, "PATCH", &missing, Some(&series)).0, 404);
    // Core v1 Events are not what the agent posts: the shipped RBAC no longer grants them.
    let core = format!("/api/v1/namespaces/{NS}/events");
    assert_eq!(f.server.raw(TOKEN, "GET", &core, None).0, 403);
}
