//! The node agent's reconcile loop for the file store (`FileStoreReconciler`): leases on this node
//! whose pod is not on this node any more (gone, moved, or recreated as another pod object) are
//! freed once missing for longer than the grace; pods on this node keep theirs. Pods come from the
//! API server double under the shipped RBAC.
//!
//! Run: `cargo test -p iotlan-agent --test agent node_files`.

use std::path::Path;
use std::time::Duration;

use iotlan_agent::reconcile::FileStoreReconciler;
use iotlan_ipam::{Attachment, FileStore, Lease, Store};

use crate::fixture::{ips, req, req_uid, v4_pool, KubeFixture};

fn store(state: &Path, network: &str) -> FileStore {
    FileStore::open(&state.join(network), Duration::from_secs(5)).unwrap()
}

fn holders(s: &FileStore) -> Vec<String> {
    let mut v: Vec<String> = s
        .leases()
        .unwrap()
        .into_iter()
        .map(|l| l.container_id)
        .collect();
    v.sort();
    v
}

#[test]
fn leases_of_pods_no_longer_on_this_node_are_freed_after_the_grace() {
    let f = KubeFixture::new();
    let state = tempfile::tempdir().unwrap();
    let pool = v4_pool();
    let iot = store(state.path(), "iot");
    let on_a = f
        .server
        .add_pod_on("ha", "home-assistant-0", Some("node-a"));
    let moved = f.server.add_pod_on("media", "jellyfin-0", Some("node-b"));
    let old_uid = f.server.add_pod_on("iot", "esphome-0", Some("node-a"));
    let kept = iot
        .allocate(&pool, &req_uid("ha/home-assistant-0", "ha", &on_a))
        .unwrap();
    iot.allocate(&pool, &req_uid("media/jellyfin-0", "jf", &moved))
        .unwrap();
    let esphome = iot
        .allocate(&pool, &req_uid("iot/esphome-0", "esp-old", &old_uid))
        .unwrap();
    iot.allocate(&pool, &req("ns/gone-0", "gone")).unwrap(); // no pod, no UID (older lease)
    iot.allocate(&pool, &req("0123abcd", "0123abcd")).unwrap(); // podman: no pod to look up
                                                                // The StatefulSet recreated esphome-0 on this node; the old sandbox's DEL never came.
    f.server.delete_pod("iot", "esphome-0");
    let new_uid = f.server.add_pod_on("iot", "esphome-0", Some("node-a"));
    // A second network's store on the same node.
    let lab = store(state.path(), "lab");
    lab.allocate(&pool, &req("ns/gone-0", "gone")).unwrap();

    // Within the grace: marked, then kept.
    let mut slow = FileStoreReconciler::new(
        &f.kubeconfig,
        "node-a",
        state.path(),
        Duration::from_secs(300),
    )
    .unwrap();
    let r = slow.run_once().unwrap();
    assert_eq!(
        (r.networks, r.checked, r.marked, r.podless),
        (2, 6, 4, 1),
        "{r}"
    );
    let r = slow.run_once().unwrap();
    assert_eq!((r.marked, r.young, r.freed.len()), (0, 4, 0), "{r}");
    assert_eq!(holders(&iot).len(), 5);

    // Past the grace (zero here, on the pass after the one that marked them): freed, as DEL would.
    let mut fast =
        FileStoreReconciler::new(&f.kubeconfig, "node-a", state.path(), Duration::ZERO).unwrap();
    assert!(fast.run_once().unwrap().freed.is_empty());
    let r = fast.run_once().unwrap();
    assert_eq!(r.freed.len(), 4, "{r}");
    assert_eq!(holders(&iot), ["0123abcd", "ha"]);
    assert!(holders(&lab).is_empty());
    assert_eq!(iot.find(&Attachment::new("ha", "net1")).unwrap(), kept);
    // What the recreated pod's new sandbox gets: its (sticky) address, free now.
    let got = iot
        .allocate(&pool, &req_uid("iot/esphome-0", "esp-new", &new_uid))
        .unwrap();
    assert_eq!(ips(&got), ips(&esphome));
    // And the next pass leaves it alone: its pod is on this node with that UID.
    assert!(fast.run_once().unwrap().freed.is_empty());
    assert_eq!(iot.find(&Attachment::new("esp-new", "net1")).unwrap(), got);
    assert!(f.server.denied().is_empty(), "{:?}", f.server.denied());
}

#[test]
fn a_pod_seen_again_on_this_node_loses_its_mark() {
    let f = KubeFixture::new();
    let state = tempfile::tempdir().unwrap();
    let iot = store(state.path(), "iot");
    let l: Vec<Lease> = iot.allocate(&v4_pool(), &req("ns/web-0", "w")).unwrap();
    let mut r =
        FileStoreReconciler::new(&f.kubeconfig, "node-a", state.path(), Duration::ZERO).unwrap();
    // Not on this node (yet, as far as a stale list goes): marked.
    assert_eq!(r.run_once().unwrap().marked, 1);
    // Seen on this node: kept, and the mark goes.
    f.server.add_pod_on("ns", "web-0", Some("node-a"));
    assert!(r.run_once().unwrap().freed.is_empty());
    // Gone again: marked anew, not freed on the strength of the old mark.
    f.server.delete_pod("ns", "web-0");
    let report = r.run_once().unwrap();
    assert_eq!((report.marked, report.freed.len()), (1, 0), "{report}");
    assert_eq!(iot.leases().unwrap(), l);
}

#[test]
fn nothing_to_do_without_a_state_dir_and_a_refused_pod_list_frees_nothing() {
    let f = KubeFixture::new();
    let state = tempfile::tempdir().unwrap();
    let missing = state.path().join("not-yet");
    let mut r =
        FileStoreReconciler::new(&f.kubeconfig, "node-a", &missing, Duration::ZERO).unwrap();
    assert_eq!(r.run_once().unwrap().networks, 0);
    assert!(!missing.exists());

    let iot = store(state.path(), "iot");
    let l = iot.allocate(&v4_pool(), &req("ns/web-0", "w")).unwrap();
    f.server.forbid("/pods");
    let mut r =
        FileStoreReconciler::new(&f.kubeconfig, "node-a", state.path(), Duration::ZERO).unwrap();
    for _ in 0..2 {
        let e = r.run_once().unwrap_err();
        assert!(e.is_retryable() && e.to_string().contains("403"), "{e}");
    }
    assert_eq!(iot.leases().unwrap(), l);
    assert!(
        FileStoreReconciler::new(&f.kubeconfig, "Not A Node", state.path(), Duration::ZERO)
            .is_err()
    );
}
