//! Over 500 lines: one concern, the kubernetes store's reconcile pass, one case a test.
//!
//! The reconcile loop of the kubernetes store against the API server double: leases of pods that
//! are gone, or replaced by another pod object of the same name, are marked missing on the first
//! pass that sees them so and freed only once they have been missing for longer than the grace;
//! sticky identity records unused for the retention are pruned.
//!
//! Run: `cargo test -p iotlan-agent --test agent reconcile`.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iotlan_agent::reconcile::Reconciler;
use iotlan_ipam::store::kubernetes::objects;
use iotlan_ipam::{AllocRequest, Attachment, Lease, Store};
use serde_json::Value;

use crate::fixture::{self, ips, name, object, req, req_uid, v4_pool, KubeFixture, NS};

fn reconciler(f: &KubeFixture, grace_secs: u64) -> Reconciler {
    Reconciler::new(&f.kubeconfig, Some(NS), Duration::from_secs(grace_secs)).unwrap()
}

/// The sticky identity objects of the network `iot`: identity -> annotations.
fn identity_records(f: &KubeFixture) -> std::collections::BTreeMap<String, Value> {
    f.server
        .leases(NS)
        .into_iter()
        .filter(|o| o["metadata"]["labels"][objects::LABEL_KIND] == objects::KIND_IDENTITY)
        .map(|o| {
            let ann = o["metadata"]["annotations"].clone();
            (
                ann[objects::ANN_IDENTITY]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                ann,
            )
        })
        .collect()
}

#[test]
fn reconcile_prunes_sticky_records_unused_for_the_retention() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let s = f.open();
    f.server.add_pod("ns", "alive");
    f.server.add_pod("ns", "holding");
    for (id, cid) in [
        ("ns/alive", "a"),
        ("ns/gone", "g"),
        ("ns/holding", "h"),
        ("0123abcd", "0123abcd"),
    ] {
        s.allocate(&pool, &req(id, cid)).unwrap();
    }
    // DELs: "alive" still has its pod, "gone" and the container identity have nothing left.
    for cid in ["a", "g", "0123abcd"] {
        s.release(&Attachment::new(cid, "net1")).unwrap();
    }
    assert_eq!(identity_records(&f).len(), 4);
    let reconcile = |retention: Option<Duration>| {
        reconciler(&f, 300)
            .with_identity_retention(retention)
            .run_once()
            .unwrap()
    };

    // Retention off: nothing is marked or pruned.
    let report = reconcile(None);
    assert_eq!(
        (report.identities_marked, report.identities_pruned.len()),
        (0, 0)
    );

    // First pass: the two unused records are marked with the time they were first seen unused.
    let report = reconcile(Some(Duration::from_secs(3600)));
    assert_eq!(report.identities_marked, 2, "{report}");
    let records = identity_records(&f);
    for id in ["ns/gone", "0123abcd"] {
        assert!(
            records[id][objects::ANN_UNUSED_SINCE].is_string(),
            "{id}: {}",
            records[id]
        );
    }
    for id in ["ns/alive", "ns/holding"] {
        assert!(
            records[id][objects::ANN_UNUSED_SINCE].is_null(),
            "{id}: {}",
            records[id]
        );
    }
    // Within the retention they stay, and are not marked again.
    let report = reconcile(Some(Duration::from_secs(3600)));
    assert_eq!(
        (report.identities_marked, report.identities_pruned.len()),
        (0, 0)
    );

    // The container comes back (podman restart keeps its ID): in use again, the mark goes, and its
    // sticky address is still there.
    let back = s.allocate(&pool, &req("0123abcd", "0123abcd")).unwrap();
    reconcile(Some(Duration::from_secs(3600)));
    assert!(identity_records(&f)["0123abcd"][objects::ANN_UNUSED_SINCE].is_null());

    // Past the retention (zero here), the unused record of the deleted pod is pruned, and only it.
    let report = reconcile(Some(Duration::ZERO));
    assert_eq!(
        report.identities_pruned,
        vec![("iot".to_string(), "ns/gone".to_string())],
        "{report}"
    );
    let records = identity_records(&f);
    assert_eq!(
        records.keys().map(String::as_str).collect::<Vec<_>>(),
        ["0123abcd", "ns/alive", "ns/holding"]
    );
    assert_eq!(s.find(&Attachment::new("0123abcd", "net1")).unwrap(), back);
    // The pruned identity allocates again normally and is remembered again.
    s.allocate(&pool, &req("ns/gone", "g2")).unwrap();
    assert!(identity_records(&f).contains_key("ns/gone"));
}

#[test]
fn reconcile_fails_loudly_when_pods_cannot_be_listed() {
    let f = KubeFixture::new();
    let s = f.open();
    let got = s.allocate(&v4_pool(), &req("ns/a", "a")).unwrap();
    f.server.backdate(NS, &name(&got[0].ip.to_string()), 3600);
    // No RBAC for pods: an empty pod list must never be assumed.
    f.server.forbid("/pods");
    let e = reconciler(&f, 0).run_once().unwrap_err();
    assert!(e.is_retryable() && e.to_string().contains("403"), "{e}");
    assert_eq!(s.leases().unwrap(), got);
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The `missing-since` mark of the address object of `lease`, if any.
fn mark(f: &KubeFixture, lease: &Lease) -> Option<u64> {
    let n = name(&lease.ip.to_string());
    f.server
        .leases(NS)
        .into_iter()
        .find(|o| o["metadata"]["name"] == n.as_str())
        .and_then(|o| {
            o["metadata"]["annotations"][objects::ANN_MISSING_SINCE]
                .as_str()
                .map(str::to_string)
        })
        .and_then(|t| t.parse().ok())
}

/// Moves the `missing-since` mark of `lease` `secs` into the past (as if that much time had passed).
fn age_mark(f: &KubeFixture, lease: &Lease, secs: u64) {
    let t = mark(f, lease).expect("a missing-since mark");
    f.server.annotate(
        NS,
        &name(&lease.ip.to_string()),
        objects::ANN_MISSING_SINCE,
        &(t - secs).to_string(),
    );
}

fn held(s: &dyn Store) -> Vec<IpAddr> {
    s.leases().unwrap().iter().map(|l| l.ip).collect()
}

#[test]
fn reconcile_frees_leases_of_deleted_pods_once_missing_for_the_grace() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let s = f.open();
    f.server.add_pod("ns", "alive");
    f.server.add_pod("ns", "gone");
    let alive = s.allocate(&pool, &req("ns/alive", "a")).unwrap();
    let second = AllocRequest {
        attachment: Attachment::new("a", "net2"),
        ..req("ns/alive@net2", "a")
    };
    let second = s.allocate(&pool, &second).unwrap(); // its second interface
    let gone = s.allocate(&pool, &req("ns/gone", "g")).unwrap();
    let podless = s.allocate(&pool, &req("0123abcd", "0123abcd")).unwrap(); // ctr/podman: no pod
    f.server.delete_pod("ns", "gone");

    // First pass: the lease of the deleted pod is marked missing, nothing is freed.
    let report = reconciler(&f, 300).run_once().unwrap();
    assert!(report.freed.is_empty(), "{report}");
    assert_eq!(
        (report.checked, report.marked, report.podless),
        (4, 1, 1),
        "{report}"
    );
    let t = mark(&f, &gone[0]).expect("marked");
    assert!(t.abs_diff(now()) < 60, "{t}");
    for l in [&alive, &second, &podless] {
        assert_eq!(mark(&f, &l[0]), None);
    }
    // Within the grace it stays, and its mark is kept (not moved forward).
    let report = reconciler(&f, 300).run_once().unwrap();
    assert_eq!(
        (report.freed.len(), report.marked, report.young),
        (0, 0, 1),
        "{report}"
    );
    assert_eq!(mark(&f, &gone[0]), Some(t));
    // Missing for longer than the grace: freed, and only it.
    age_mark(&f, &gone[0], 301);
    let report = reconciler(&f, 300).run_once().unwrap();
    assert_eq!(
        report.freed,
        vec![("iot".to_string(), gone[0].clone())],
        "{report}"
    );
    let left = held(&s);
    assert_eq!(left.len(), 3);
    for l in [&alive, &second, &podless] {
        assert!(left.contains(&l[0].ip));
    }
    // A second reconciler (another node) finds nothing more to free.
    assert!(reconciler(&f, 300).run_once().unwrap().freed.is_empty());
    // Every pass listed pod metadata only, never whole Pod objects.
    let lists = f.server.pod_lists();
    assert_eq!(lists.len(), 4);
    assert!(
        lists.iter().all(|k| k == "PartialObjectMetadataList"),
        "{lists:?}"
    );
}

#[test]
fn a_pod_recreated_under_its_name_frees_the_old_pods_lease_after_the_grace() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let s = f.open();
    let uid1 = f.server.add_pod("ha", "home-assistant-0");
    let old = s
        .allocate(&pool, &req_uid("ha/home-assistant-0", "old", &uid1))
        .unwrap();
    // The StatefulSet recreates the pod; the old sandbox's DEL never came.
    f.server.delete_pod("ha", "home-assistant-0");
    let uid2 = f.server.add_pod("ha", "home-assistant-0");
    assert_ne!(uid1, uid2);

    let report = reconciler(&f, 300).run_once().unwrap();
    assert_eq!((report.freed.len(), report.marked), (0, 1), "{report}");
    assert!(mark(&f, &old[0]).is_some());
    // The new pod's ADD must wait meanwhile: the old sandbox may still carry the address.
    assert!(s
        .allocate(&pool, &req_uid("ha/home-assistant-0", "new", &uid2))
        .is_err());
    age_mark(&f, &old[0], 301);
    let report = reconciler(&f, 300).run_once().unwrap();
    assert_eq!(
        report.freed,
        vec![("iot".to_string(), old[0].clone())],
        "{report}"
    );
    // What the next pod gets: the same (sticky) address.
    let new = s
        .allocate(&pool, &req_uid("ha/home-assistant-0", "new", &uid2))
        .unwrap();
    assert_eq!(ips(&new), ips(&old));
    // The new pod's lease is its pod's: the next pass leaves it unmarked.
    let report = reconciler(&f, 0).run_once().unwrap();
    assert_eq!((report.freed.len(), report.marked), (0, 0), "{report}");
    assert_eq!(mark(&f, &new[0]), None);
}

#[test]
fn a_pod_seen_again_loses_its_mark_and_keeps_its_address() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let s = f.open();
    let uid = f.server.add_pod("ns", "web-0");
    let by_uid = s.allocate(&pool, &req_uid("ns/web-0", "w", &uid)).unwrap();
    f.server.add_pod("ns", "legacy-0");
    let legacy = s.allocate(&pool, &req("ns/legacy-0", "l")).unwrap(); // no UID recorded
                                                                       // A pod list that briefly lacks both pods (as if served from a stale cache).
    let mut pods = vec![];
    for (ns, n) in [("ns", "web-0"), ("ns", "legacy-0")] {
        pods.push(f.server.take_pod(ns, n));
    }
    assert_eq!(reconciler(&f, 300).run_once().unwrap().marked, 2);
    for p in pods {
        f.server.restore_pod(p);
    }
    let report = reconciler(&f, 300).run_once().unwrap();
    assert_eq!((report.marked, report.young), (0, 0), "{report}");
    for l in [&by_uid, &legacy] {
        assert_eq!(mark(&f, &l[0]), None);
    }
    // Long after, with the pods still there, nothing is freed.
    assert!(reconciler(&f, 0).run_once().unwrap().freed.is_empty());
    assert_eq!(held(&s).len(), 2);
}

#[test]
fn a_lease_without_a_uid_is_judged_by_name() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let s = f.open();
    f.server.add_pod("ns", "legacy-0");
    let l = s.allocate(&pool, &req("ns/legacy-0", "l")).unwrap();
    // Recreated under its name: a lease that recorded no UID cannot tell, and stays.
    f.server.delete_pod("ns", "legacy-0");
    f.server.add_pod("ns", "legacy-0");
    let report = reconciler(&f, 0).run_once().unwrap();
    assert_eq!((report.marked, report.freed.len()), (0, 0), "{report}");
    // Gone by name: marked, then freed once past the grace (zero here).
    f.server.delete_pod("ns", "legacy-0");
    assert_eq!(reconciler(&f, 0).run_once().unwrap().marked, 1);
    let report = reconciler(&f, 0).run_once().unwrap();
    assert_eq!(
        report.freed,
        vec![("iot".to_string(), l[0].clone())],
        "{report}"
    );
}

#[test]
fn reconcile_never_frees_a_lease_that_changed_under_it() {
    let f = KubeFixture::new();
    let s = f.open();
    let got = s.allocate(&v4_pool(), &req("ns/web-0", "old")).unwrap();
    let addr = got[0].ip.to_string();
    assert_eq!(reconciler(&f, 60).run_once().unwrap().marked, 1);
    age_mark(&f, &got[0], 3600);
    // Between the reconciler's list and its delete, the recreated pod takes the address over.
    let newer = Lease {
        container_id: "new".into(),
        ..got[0].clone()
    };
    f.server
        .interfere("DELETE", NS, &name(&addr), object(&newer));
    let report = reconciler(&f, 60).run_once().unwrap();
    assert!(report.freed.is_empty(), "{report}");
    assert_eq!(
        s.find(&Attachment::new("new", "net1")).unwrap(),
        vec![newer]
    );
    // Between the list and the mark, likewise: the mark is not written over the new holder.
    let f = KubeFixture::new();
    let s = f.open();
    let got = s.allocate(&v4_pool(), &req("ns/web-0", "old")).unwrap();
    let newer = Lease {
        container_id: "new".into(),
        ..got[0].clone()
    };
    f.server.interfere("PUT", NS, &name(&addr), object(&newer));
    let report = reconciler(&f, 60).run_once().unwrap();
    assert_eq!(report.marked, 1, "{report}");
    assert_eq!(mark(&f, &got[0]), None);
    assert_eq!(
        s.find(&Attachment::new("new", "net1")).unwrap(),
        vec![newer]
    );
}

/// The reconciler is the only scan, and a bounded one: one LIST of Leases per pass, metadata only,
/// in pages of 500 (`limit`, `continue`), then it judges every object of every page.
#[test]
fn reconcile_lists_once_per_pass_in_metadata_pages() {
    let f = KubeFixture::new();
    // 1,100 address objects of pods that are gone, and 100 stale sticky records.
    for i in 0..1100u32 {
        let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a14_0000 + i));
        let mut l = fixture::lease("10.20.0.1", &format!("gone/p-{i}"), &format!("c{i}"));
        l.ip = ip;
        f.server.put_lease(NS, object(&l));
    }
    for i in 0..100 {
        let id = objects::identity_object("iot", "iot", NS, &format!("gone/web-{i}"), &[]);
        f.server.put_lease(NS, serde_json::to_value(id).unwrap());
    }
    let before = f.server.lease_lists().len();
    let report = reconciler(&f, 300).run_once().unwrap();
    assert_eq!(report.checked, 1100, "{report}");
    assert_eq!(report.marked, 1100, "{report}");
    assert_eq!(report.identities_marked, 100, "{report}");
    let pages: Vec<(String, usize)> = f.server.lease_lists()[before..].to_vec();
    let kinds: Vec<&str> = pages.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["PartialObjectMetadataList"; 3], "{pages:?}");
    assert_eq!(
        pages.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    // The marks went onto the objects, which kept their specs (written back whole).
    let objs = f.server.leases(NS);
    let marked = objs
        .iter()
        .filter(|o| o["metadata"]["annotations"][objects::ANN_MISSING_SINCE].is_string())
        .filter(|o| o["spec"]["holderIdentity"].is_string())
        .count();
    assert_eq!(marked, 1100);
}

/// The ADD of a node's hostShim address, as the plugin asks for it (`plugin/src/link/shim`): identity and
/// container ID `iotlan-shim.<node>`, on the shim link.
fn shim_req(node: &str) -> AllocRequest {
    let id = iotlan_ipam::node::shim_identity(node);
    AllocRequest {
        attachment: Attachment::new(&id, "iot-eth0"),
        ..req(&id, &id)
    }
}

#[test]
fn the_hostshim_address_of_a_removed_node_is_freed_after_the_grace_and_a_notready_node_keeps_its() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let s = f.open();
    f.server.put_node("pi-ready", "True", 60);
    // NotReady for a day: the node may come back, its shim with the same address.
    f.server.put_node("pi-down", "Unknown", 86_400);
    f.server.put_node("pi-old", "True", 60);
    let ready = s.allocate(&pool, &shim_req("pi-ready")).unwrap();
    let down = s.allocate(&pool, &shim_req("pi-down")).unwrap();
    let old = s.allocate(&pool, &shim_req("pi-old")).unwrap();
    // pi-old is re-imaged and joins under another name: `kubectl delete node pi-old`.
    f.server.delete_node("pi-old");

    let report = reconciler(&f, 300).run_once().unwrap();
    assert_eq!((report.marked, report.freed.len()), (1, 0), "{report}");
    assert!(mark(&f, &old[0]).is_some());
    assert_eq!(mark(&f, &ready[0]), None);
    assert_eq!(mark(&f, &down[0]), None);
    age_mark(&f, &old[0], 301);
    let report = reconciler(&f, 300).run_once().unwrap();
    assert_eq!(
        report.freed,
        vec![("iot".to_string(), old[0].clone())],
        "{report}"
    );
    let left = held(&s);
    assert!(
        left.contains(&ready[0].ip) && left.contains(&down[0].ip) && !left.contains(&old[0].ip)
    );
    // The freed address goes to the next ADD that lands on its slot; a pod gets one of the pool.
    assert!(s.allocate(&pool, &req("ns/esphome-0", "e")).is_ok());

    // A node deleted and back (same name) within the grace keeps its address, and loses its mark.
    f.server.delete_node("pi-ready");
    reconciler(&f, 300).run_once().unwrap();
    assert!(mark(&f, &ready[0]).is_some());
    f.server.put_node("pi-ready", "True", 5);
    reconciler(&f, 300).run_once().unwrap();
    assert_eq!(mark(&f, &ready[0]), None);
    assert!(held(&s).contains(&ready[0].ip));
}

#[test]
fn a_reconciler_mark_never_brings_back_a_lease_deleted_meanwhile() {
    let f = KubeFixture::new();
    let s = f.open();
    let got = s.allocate(&v4_pool(), &req("ns/gone-0", "g")).unwrap();
    let n = name(&got[0].ip.to_string());
    // Its DEL lands between the reconciler's list and its missing-since mark (a PUT).
    f.server.interfere("PUT", NS, &n, Value::Null);
    Reconciler::new(&f.kubeconfig, Some(NS), Duration::from_secs(300))
        .unwrap()
        .run_once()
        .unwrap();
    assert!(f
        .server
        .leases(NS)
        .iter()
        .all(|o| o["metadata"]["name"] != n.as_str()));
    assert!(s.leases().unwrap().is_empty());
}

/// The shipped RBAC, as the double enforces it, covers every request of the reconcile pass: the
/// leases' metadata LIST, the pods' LIST, the hostShim nodes' GET, marks (PUT) and frees (DELETE) of
/// address and identity objects.
#[test]
fn everything_the_reconciler_does_is_within_the_shipped_rbac() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let a = f.open().with_node(Some("node-a".into()));
    f.server.add_pod("ns", "web-0");
    a.allocate(&pool, &req("ns/web-0", "web"))
        .expect("a live pod's lease");
    a.allocate(&pool, &req("ns/gone-0", "gone"))
        .expect("a gone pod's lease");
    a.allocate(
        &pool,
        &req(&iotlan_ipam::node::shim_identity("node-gone"), "shim"),
    )
    .expect("a removed node's hostShim lease");
    a.release(&Attachment::new("web", "net1")).unwrap();
    let r = Reconciler::new(&f.kubeconfig, Some(NS), Duration::ZERO).unwrap();
    let mut r = r.with_identity_retention(Some(Duration::ZERO));
    // Marks, then frees and marks the records unused, then prunes them (web-0's stays: its pod is
    // there).
    let first = r.run_once().unwrap();
    let second = r.run_once().unwrap();
    let third = r.run_once().unwrap();
    assert!(f.server.denied().is_empty(), "{:?}", f.server.denied());
    assert_eq!(
        (
            first.marked,
            second.freed.len(),
            third.identities_pruned.len()
        ),
        (2, 2, 2),
        "{first}; {second}; {third}"
    );
}
