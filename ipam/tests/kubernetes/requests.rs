//! How many API requests each ADD and DEL of the kubernetes store costs, counted per verb by the
//! API server double. A regression (a LIST creeping back into ADD or DEL, an extra GET) fails here.
//!
//! Run: `cargo test -p iotlan-ipam --features kubernetes --test kubernetes requests`.

use crate::contract::{ip, ips, req};
use crate::kubefix::KubeFixture;
use crate::{contract, kubefix};
use iotlan_apiserver_double::Verbs;
use iotlan_ipam::store::kubernetes::objects;
use iotlan_ipam::{Attachment, Pool, Store};

/// Runs `op` and returns the requests it made, per verb.
fn counted<T>(f: &KubeFixture, op: impl FnOnce() -> T) -> (T, Verbs) {
    let mark = f.server.mark();
    let out = op();
    let v = f.server.verbs_since(mark);
    eprintln!("{}", show(&v));
    (out, v)
}

fn show(v: &Verbs) -> String {
    format!("{} requests {:?}", v.total, v.by_verb)
}

/// The pool of these tests: 150 addresses, the reservation of `v4_pool`.
fn pool() -> Pool {
    contract::pool(
        "iot",
        serde_json::json!({
            "type": "iotlan-ipam",
            "subnet": "192.168.20.0/24",
            "gateway": "192.168.20.1",
            "pool": ["192.168.20.100-192.168.20.249"],
            "reservations": { "home-assistant/home-assistant-0": "192.168.20.10" }
        }),
    )
}

/// Other pods' leases (a tenth of the pool) and stale identity records, so that a scan would show.
fn populate(f: &KubeFixture, s: &dyn Store) {
    let pool = pool();
    for i in 0..15 {
        s.allocate(&pool, &req(&format!("other/p{i}"), &format!("o{i}")))
            .unwrap();
    }
    for i in 0..30 {
        let id = objects::identity_object("iot", "iot", kubefix::NS, &format!("gone/web-{i}"), &[]);
        f.server
            .put_lease(kubefix::NS, serde_json::to_value(id).unwrap());
    }
}

#[test]
fn a_first_time_add_costs_at_most_three_requests_and_no_list() {
    let f = KubeFixture::new();
    let s = f.open();
    populate(&f, &s);
    let (got, v) = counted(&f, || s.allocate(&pool(), &req("media/jellyfin-0", "j1")));
    assert_eq!(got.unwrap().len(), 1);
    assert_eq!(v.of("list"), 0, "{}", show(&v));
    assert!(v.total <= 3, "{}", show(&v));
}

#[test]
fn a_sticky_restart_costs_at_most_three_requests_and_keeps_the_address() {
    let f = KubeFixture::new();
    let s = f.open();
    populate(&f, &s);
    let pool = pool();
    let first = s.allocate(&pool, &req("media/jellyfin-0", "j1")).unwrap();
    s.release_for("media/jellyfin-0", &Attachment::new("j1", "net1"))
        .unwrap();
    let (again, v) = counted(&f, || s.allocate(&pool, &req("media/jellyfin-0", "j2")));
    assert_eq!(ips(&again.unwrap()), ips(&first));
    assert_eq!(v.of("list"), 0, "{}", show(&v));
    assert!(v.total <= 3, "{}", show(&v));
}

#[test]
fn a_reserved_address_costs_at_most_three_requests() {
    let f = KubeFixture::new();
    let s = f.open();
    populate(&f, &s);
    let (got, v) = counted(&f, || {
        s.allocate(&pool(), &req("home-assistant/home-assistant-0", "h1"))
    });
    assert_eq!(ips(&got.unwrap()), vec![ip("192.168.20.10")]);
    assert_eq!(v.of("list"), 0, "{}", show(&v));
    assert!(v.total <= 3, "{}", show(&v));
}

#[test]
fn a_del_costs_at_most_two_requests_and_no_list() {
    let f = KubeFixture::new();
    let s = f.open();
    populate(&f, &s);
    s.allocate(&pool(), &req("media/jellyfin-0", "j1")).unwrap();
    let (freed, v) = counted(&f, || {
        s.release_for("media/jellyfin-0", &Attachment::new("j1", "net1"))
    });
    assert_eq!(freed.unwrap().len(), 1);
    assert_eq!(v.of("list"), 0, "{}", show(&v));
    assert!(v.total <= 2, "{}", show(&v));
    assert_eq!(v.of("delete"), 1, "{}", show(&v));
    // A repeated DEL (kubelet repeats them) frees nothing, at the same cost: its DELETE, still
    // conditional on the uid and resourceVersion recorded, answers 404.
    let (freed, v) = counted(&f, || {
        s.release_for("media/jellyfin-0", &Attachment::new("j1", "net1"))
    });
    assert!(freed.unwrap().is_empty());
    assert_eq!(v.of("list"), 0, "{}", show(&v));
    assert!(v.total <= 2, "{}", show(&v));
}

#[test]
fn a_held_first_candidate_costs_two_more_requests_never_a_list() {
    // Where the pod's first candidate is, from an empty store.
    let probe = KubeFixture::new();
    let first = probe
        .open()
        .allocate(&pool(), &req("media/jellyfin-0", "j0"))
        .unwrap();
    let f = KubeFixture::new();
    let s = f.open();
    s.allocate(
        &pool(),
        &contract::req_ip("other/x", "x1", &[&first[0].ip.to_string()]),
    )
    .unwrap();
    let (got, v) = counted(&f, || s.allocate(&pool(), &req("media/jellyfin-0", "j1")));
    assert_ne!(ips(&got.unwrap()), ips(&first));
    assert_eq!(v.of("list"), 0, "{}", show(&v));
    // The identity's object, the create that answers 409, the read of its holder, the create of
    // the next candidate, the identity's object written.
    assert_eq!(v.total, 5, "{}", show(&v));
}

#[test]
fn a_del_that_names_only_the_attachment_goes_by_name_on_the_granting_node() {
    // The CNI DEL of the plugin names the container and interface; the node-local record the ADD
    // wrote names the identity.
    let f = KubeFixture::new();
    let s = f.open();
    populate(&f, &s);
    s.allocate(&pool(), &req("media/jellyfin-0", "j1")).unwrap();
    let (freed, v) = counted(&f, || s.release(&Attachment::new("j1", "net1")));
    assert_eq!(freed.unwrap().len(), 1);
    assert_eq!(v.of("list"), 0, "{}", show(&v));
    assert!(v.total <= 2, "{}", show(&v));
}
