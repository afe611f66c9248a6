//! The `kubernetes` store against the API server test double (the iotlan-apiserver-double crate, tests/apiserver): the shared
//! store contract (support/contract.rs, the same suite the file store passes), then the cases only
//! a lock-free, networked store has: lost races, conditional deletes, an unreachable or refusing
//! API server, the objects it writes. The reconcile loop is the node agent's (agent/tests/agent/reconcile.rs).
//!
//! Run: `cargo test -p iotlan-ipam --features kubernetes --test kubernetes store::`.

use crate::{apiserver, contract};
use iotlan_apiserver_double::tls;

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::Path;

use crate::contract::{ip, ips, req, req_ip, v4_pool};
use iotlan_ipam::store::kubernetes::{objects, KubernetesStore};
use iotlan_ipam::{Attachment, Error, Lease, Store};
use serde_json::{json, Value};

use crate::kubefix::{lease, name, object, store_config, Gone, KubeFixture, NS, TOKEN};

store_contract_tests!(kubernetes, Box::new(super::KubeFixture::new()));

#[test]
fn each_address_is_one_lease_object_and_the_identity_is_remembered() {
    let f = KubeFixture::new();
    let s = f.open();
    let got = s
        .allocate(&v4_pool(), &req("home-assistant/home-assistant-0", "c1"))
        .unwrap();
    assert_eq!(ips(&got), vec![ip("192.168.20.100")]);
    let objs = f.server.leases(NS);
    let addr = objs
        .iter()
        .find(|o| o["metadata"]["name"] == "iot.192-168-20-100")
        .expect("address object");
    assert_eq!(
        addr["spec"]["holderIdentity"],
        "home-assistant/home-assistant-0"
    );
    assert_eq!(addr["metadata"]["labels"]["iotlan/kind"], "address");
    assert_eq!(
        addr["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "iotlan"
    );
    assert_eq!(addr["metadata"]["annotations"]["iotlan/container-id"], "c1");
    assert_eq!(addr["metadata"]["annotations"]["iotlan/ifname"], "net1");
    let id = objs
        .iter()
        .find(|o| o["metadata"]["labels"]["iotlan/kind"] == "identity")
        .expect("identity object");
    assert_eq!(
        id["metadata"]["annotations"]["iotlan/ips"],
        "192.168.20.100"
    );
    assert_eq!(objs.len(), 2, "{objs:#?}");
    // DEL removes the address object and keeps the identity's record.
    s.release(&Attachment::new("c1", "net1")).unwrap();
    let objs = f.server.leases(NS);
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0]["metadata"]["labels"]["iotlan/kind"], "identity");
}

#[test]
fn no_lock_and_no_shared_object_is_written() {
    let f = KubeFixture::new();
    let s = f.open();
    let pool = v4_pool();
    s.allocate(&pool, &req("ns/a", "a")).unwrap();
    let before = f.server.requests().len();
    let got = s.allocate(&pool, &req("ns/b", "b")).unwrap();
    // An ADD writes only its own address object and its identity's record.
    let allowed: HashSet<String> = [
        name(&got[0].ip.to_string()),
        objects::identity_name("iot", "ns/b"),
    ]
    .into_iter()
    .collect();
    let prefix = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases");
    for (method, path) in &f.server.requests()[before..] {
        if method == "GET" {
            continue;
        }
        let target = path
            .strip_prefix(&prefix)
            .unwrap_or(path)
            .trim_start_matches('/');
        let target = if target.is_empty() && method == "POST" {
            "(create)"
        } else {
            target
        };
        assert!(
            method == "POST" || allowed.contains(target),
            "{method} {path} writes an object that is not this ADD's"
        );
    }
    let writes = f.server.requests()[before..]
        .iter()
        .filter(|(m, _)| m != "GET")
        .count();
    assert_eq!(
        writes, 2,
        "one create of the address, one of the identity record"
    );
}

#[test]
fn a_lost_create_race_moves_on_to_the_next_candidate() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let slot = pool
        .candidates(iotlan_ipam::Family::V4, "ns/racer")
        .next()
        .unwrap();
    // Another node creates the slot's object between our read (free) and our create.
    let other = lease(&slot.to_string(), "ns/winner", "w1");
    f.server
        .interfere("POST", NS, &name(&slot.to_string()), object(&other));
    let s = f.open();
    let got = s.allocate(&pool, &req("ns/racer", "r1")).unwrap();
    assert_ne!(
        got[0].ip, slot,
        "took an address another node had just created"
    );
    let all = s.leases().unwrap();
    assert_eq!(
        all.iter()
            .find(|l| l.ip == slot)
            .map(|l| l.identity.as_str()),
        Some("ns/winner")
    );
    assert_eq!(all.len(), 2);
    contract::assert_consistent(&pool, &s);
}

#[test]
fn a_lost_race_for_a_requested_ip_names_the_holder() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let want = "192.168.20.207";
    f.server.interfere(
        "POST",
        NS,
        &name(want),
        object(&lease(want, "media/jellyfin-0", "jf")),
    );
    let s = f.open();
    let e = s
        .allocate(&pool, &req_ip("ns/b", "b", &[want]))
        .unwrap_err();
    match &e {
        Error::Conflict {
            ip: got,
            holder_identity,
            holder_container,
            ..
        } => {
            assert_eq!(*got, ip(want));
            assert_eq!(
                (holder_identity.as_str(), holder_container.as_str()),
                ("media/jellyfin-0", "jf")
            );
        }
        other => panic!("expected a conflict naming the holder, got {other}"),
    }
    assert!(e.to_string().contains("media/jellyfin-0"), "{e}");
    assert!(!e.is_retryable());
}

#[test]
fn many_nodes_racing_for_one_address_one_wins_the_others_see_the_holder() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let want = "192.168.20.203";
    let results: Vec<Result<Vec<Lease>, Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let s = f.open();
                let pool = &pool;
                scope.spawn(move || {
                    s.allocate(
                        pool,
                        &req_ip(&format!("ns/n{i}"), &format!("n{i}"), &[want]),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<&Vec<Lease>> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = &winners[0][0];
    for r in &results {
        if let Err(e) = r {
            match e {
                Error::Conflict {
                    holder_identity,
                    holder_container,
                    ..
                } => {
                    assert_eq!(holder_identity, &winner.identity);
                    assert_eq!(holder_container, &winner.container_id);
                }
                other => panic!("expected a conflict, got {other}"),
            }
        }
    }
    assert_eq!(f.open().leases().unwrap().len(), 1);
}

#[test]
fn racing_nodes_on_a_small_pool_never_share_an_address() {
    let f = KubeFixture::new();
    let pool = v4_pool(); // 10 searchable addresses
    let results: Vec<Result<Vec<Lease>, Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let s = f.open();
                let pool = &pool;
                scope.spawn(move || s.allocate(pool, &req(&format!("ns/p{i}"), &format!("p{i}"))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = HashSet::new();
    let mut exhausted = 0;
    for r in &results {
        match r {
            Ok(l) => assert!(seen.insert(l[0].ip), "{} handed out twice", l[0].ip),
            Err(Error::Exhausted { .. }) => exhausted += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((seen.len(), exhausted), (10, 6));
    contract::assert_consistent(&pool, &f.open());
}

#[test]
fn release_never_deletes_an_object_that_changed_hands() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let s = f.open();
    let got = s.allocate(&pool, &req("ns/web-0", "old")).unwrap();
    let addr = got[0].ip.to_string();
    // Between our list and our delete, a new sandbox of the pod takes the address over.
    let newer = Lease {
        container_id: "new".into(),
        ..got[0].clone()
    };
    f.server
        .interfere("DELETE", NS, &name(&addr), object(&newer));
    assert!(s
        .release(&Attachment::new("old", "net1"))
        .unwrap()
        .is_empty());
    assert_eq!(
        s.find(&Attachment::new("new", "net1")).unwrap(),
        vec![newer]
    );
    // The delete carried the precondition: the double refused it with 409, nothing was removed.
    assert_eq!(s.leases().unwrap().len(), 1);
}

#[test]
fn release_of_an_object_deleted_meanwhile_is_idempotent() {
    let f = KubeFixture::new();
    let s = f.open();
    let got = s.allocate(&v4_pool(), &req("ns/a", "a")).unwrap();
    f.server
        .interfere("DELETE", NS, &name(&got[0].ip.to_string()), Value::Null);
    assert!(s.release(&Attachment::new("a", "net1")).unwrap().is_empty());
    assert!(s.leases().unwrap().is_empty());
}

#[test]
fn a_takeover_loses_to_a_concurrent_change_and_reports_it() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let s = f.open().with_node(Some("node-a".into()));
    s.allocate(&pool, &req("home-assistant/home-assistant-0", "old"))
        .unwrap();
    // The pod is recreated, but just before our replace another sandbox of it on this node took over.
    let mut other = lease("192.168.20.100", "home-assistant/home-assistant-0", "other");
    other.node = Some("node-a".into());
    f.server
        .interfere("PUT", NS, &name("192.168.20.100"), object(&other));
    // The old sandboxes on this node have left the wire (what the CNI layer's check tells).
    let got = s
        .grant(&pool, &req("home-assistant/home-assistant-0", "new"), &Gone)
        .unwrap()
        .leases;
    // It retries against the current holder (a stale sandbox of the same pod) and takes over.
    assert_eq!(ips(&got), vec![ip("192.168.20.100")]);
    assert_eq!(s.find(&Attachment::new("new", "net1")).unwrap().len(), 1);
    assert!(s
        .find(&Attachment::new("other", "net1"))
        .unwrap()
        .is_empty());
    assert_eq!(s.leases().unwrap().len(), 1);
}

#[test]
fn an_unreachable_api_server_is_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc");
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    apiserver::write_kubeconfig(&kc, &format!("http://127.0.0.1:{port}"), NS, TOKEN);
    let s = KubernetesStore::open("iot", &store_config(&kc, json!({ "timeoutMs": 2000 }))).unwrap();
    let e = s.allocate(&v4_pool(), &req("ns/a", "a")).unwrap_err();
    assert!(
        matches!(e, Error::Unavailable { .. }) && e.is_retryable(),
        "{e}"
    );
    assert!(e.to_string().contains("unreachable"), "{e}");
    let e = s.release(&Attachment::new("a", "net1")).unwrap_err();
    assert!(e.is_retryable(), "{e}");

    // A server that accepts and never answers: bounded by timeoutMs, then retryable.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    apiserver::write_kubeconfig(
        &kc,
        &format!("http://{}", silent.local_addr().unwrap()),
        NS,
        TOKEN,
    );
    let s = KubernetesStore::open("iot", &store_config(&kc, json!({ "timeoutMs": 300 }))).unwrap();
    let e = s.leases().unwrap_err();
    assert!(
        e.is_retryable() && e.to_string().contains("unreachable"),
        "{e}"
    );
    drop(silent);
}

#[test]
fn a_refused_token_is_retryable_and_says_why() {
    let f = KubeFixture::new();
    f.server.set_token(Some("rotated"));
    let s = f.open();
    let e = s.allocate(&v4_pool(), &req("ns/a", "a")).unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(
        e.to_string().contains("401") && e.to_string().contains("token"),
        "{e}"
    );
}

#[test]
fn missing_kubeconfig_and_bad_keys() {
    let e = KubernetesStore::open(
        "iot",
        &store_config(Path::new("/nonexistent/iotlan.kubeconfig"), json!({})),
    )
    .unwrap_err();
    assert!(
        e.is_retryable() && e.to_string().contains("/nonexistent/iotlan.kubeconfig"),
        "{e}"
    );
    let f = KubeFixture::new();
    for (extra, field) in [
        (json!({ "namespaces": "x" }), "store.namespaces"),
        (json!({ "namespace": "Not_A_Namespace" }), "store.namespace"),
        (json!({ "timeoutMs": 0 }), "store.timeoutMs"),
        (json!({ "kubeconfig": "relative/path" }), "store.kubeconfig"),
    ] {
        let e = KubernetesStore::open("iot", &store_config(&f.kubeconfig, extra)).unwrap_err();
        match &e {
            Error::InvalidConfig { field: got, .. } => assert_eq!(got, field, "{e}"),
            other => panic!("expected InvalidConfig for {field}, got {other}"),
        }
    }
}

#[test]
fn networks_are_kept_apart() {
    let f = KubeFixture::new();
    let a = KubernetesStore::open("iot", &f.config()).unwrap();
    let b = KubernetesStore::open("cameras", &f.config()).unwrap();
    let pool_b = contract::pool(
        "cameras",
        json!({ "subnet": "192.168.20.0/24", "pool": ["192.168.20.200-192.168.20.209"] }),
    );
    let la = a
        .allocate(&v4_pool(), &req_ip("ns/x", "x", &["192.168.20.207"]))
        .unwrap();
    let lb = b
        .allocate(&pool_b, &req_ip("ns/x", "x", &["192.168.20.207"]))
        .unwrap();
    // Same identity, same container, same address range: two networks, two leases.
    assert_eq!(la[0].ip, lb[0].ip);
    assert_eq!(a.leases().unwrap(), la);
    assert_eq!(b.leases().unwrap(), lb);
    assert_eq!(b.release(&Attachment::new("x", "net1")).unwrap(), lb);
    assert_eq!(a.leases().unwrap(), la);
}

#[test]
fn a_forbidden_store_says_to_check_rbac() {
    let f = KubeFixture::new();
    f.server.forbid("/leases");
    let e = f
        .open()
        .allocate(&v4_pool(), &req("ns/a", "a"))
        .unwrap_err();
    assert!(e.is_retryable() && e.to_string().contains("RBAC"), "{e}");
}

#[test]
fn over_tls_trusting_only_the_kubeconfig_ca() {
    if !tls::openssl_available() {
        return;
    }
    let f = KubeFixture::new();
    let dir = tempfile::tempdir().unwrap();
    let front = tls::TlsFront::start(f.server.handle(), dir.path());
    let kc = dir.path().join("kc");
    tls::write_tls_kubeconfig(&kc, &front.url(), &front.ca_pem, NS, TOKEN);
    let s = KubernetesStore::open("iot", &store_config(&kc, json!({}))).unwrap();
    let got = s.allocate(&v4_pool(), &req("ns/tls", "t")).unwrap();
    assert_eq!(s.leases().unwrap(), got);
    assert_eq!(s.release(&Attachment::new("t", "net1")).unwrap(), got);

    // A CA that did not sign the server's certificate: the connection is refused, retryably.
    let other = tempfile::tempdir().unwrap();
    tls::make_certs(other.path());
    let wrong_ca = std::fs::read_to_string(other.path().join("ca.pem")).unwrap();
    tls::write_tls_kubeconfig(&kc, &front.url(), &wrong_ca, NS, TOKEN);
    let s = KubernetesStore::open("iot", &store_config(&kc, json!({}))).unwrap();
    let e = s.leases().unwrap_err();
    assert!(
        e.is_retryable() && e.to_string().contains("unreachable"),
        "{e}"
    );
    assert!(e.to_string().contains("certificate"), "{e}");
    assert!(f
        .server
        .leases(NS)
        .iter()
        .all(|o| o["metadata"]["labels"]["iotlan/kind"] != "address"));
}

#[test]
fn gc_of_one_node_never_frees_another_nodes_leases() {
    let f = KubeFixture::new();
    let pool = v4_pool();
    let a = f.open().with_node(Some("node-a".into()));
    let b = f.open().with_node(Some("node-b".into()));
    let a1 = a.allocate(&pool, &req("ns/a1", "a1")).unwrap();
    let a2 = a.allocate(&pool, &req("ns/a2", "a2")).unwrap();
    let b1 = b.allocate(&pool, &req("ns/b1", "b1")).unwrap();
    assert_eq!(a1[0].node.as_deref(), Some("node-a"));
    // Node a's runtime knows only a1: a2 goes, b1 (node b's pod) stays.
    let freed = a.gc(&[Attachment::new("a1", "net1")]).unwrap();
    assert_eq!(freed, a2);
    let mut left = a.leases().unwrap();
    left.sort_by_key(|l| l.container_id.clone());
    assert_eq!(left, [a1, b1.clone()].concat());
    // Node b's GC with nothing valid frees only its own.
    assert_eq!(b.gc(&[]).unwrap(), b1);
    assert_eq!(a.leases().unwrap().len(), 1);
}
