//! A pod recreated on another node while its earlier sandbox's lease is still held (a StatefulSet
//! pod force-deleted off a partitioned node): the kubernetes store takes the address over only when
//! the old node is lost (gone, or NotReady past `store.nodeLossGraceSeconds`), against the API
//! server double's Nodes.
//!
//! Run: `cargo test -p iotlan-ipam --features kubernetes --test kubernetes node_loss`.

use crate::contract::{ip, ips, req, v4_pool};
use iotlan_ipam::store::kubernetes::KubernetesStore;
use iotlan_ipam::{Attachment, Error, Lease, NeverGone, Store};
use serde_json::json;

use crate::kubefix::{store_config, KubeFixture};

const POD: &str = "home-assistant/home-assistant-0";

/// Node B holds the pod's address under its old sandbox; node A is where the pod now starts.
struct TwoNodes {
    f: KubeFixture,
    a: KubernetesStore,
    b: KubernetesStore,
    old: Vec<Lease>,
}

fn two_nodes() -> TwoNodes {
    let f = KubeFixture::new();
    let a = f.open().with_node(Some("node-a".into()));
    let b = f.open().with_node(Some("node-b".into()));
    let old = b.allocate(&v4_pool(), &req(POD, "old")).unwrap();
    assert_eq!(old[0].node.as_deref(), Some("node-b"));
    TwoNodes { f, a, b, old }
}

impl TwoNodes {
    /// The ADD of the pod's new sandbox on node A. Node A's own check never lets an address go:
    /// only node B's loss may.
    fn add_on_a(&self) -> Result<Vec<Lease>, Error> {
        Ok(self
            .a
            .grant(&v4_pool(), &req(POD, "new"), &NeverGone)?
            .leases)
    }

    /// The old sandbox still holds the address, and the new one holds nothing.
    fn assert_untouched(&self) {
        assert_eq!(
            self.b.find(&Attachment::new("old", "net1")).unwrap(),
            self.old
        );
        assert!(self
            .a
            .find(&Attachment::new("new", "net1"))
            .unwrap()
            .is_empty());
        assert_eq!(self.a.leases().unwrap().len(), 1);
    }

    /// The new sandbox on node A holds the old address, and nothing else holds it.
    fn assert_taken_over(&self, got: &[Lease]) {
        assert_eq!(ips(got), ips(&self.old));
        assert_eq!(got[0].node.as_deref(), Some("node-a"));
        assert_eq!(got[0].container_id, "new");
        let all = self.a.leases().unwrap();
        assert_eq!(all, got);
        // The old sandbox's late DEL frees nothing of the new one.
        assert!(self
            .b
            .release(&Attachment::new("old", "net1"))
            .unwrap()
            .is_empty());
        assert_eq!(self.a.find(&Attachment::new("new", "net1")).unwrap(), got);
    }
}

fn assert_still_in_use(e: Error) {
    assert!(e.is_retryable(), "{e}");
    let Error::StillInUse { holder, why } = e else {
        panic!("expected StillInUse, got {e}");
    };
    assert_eq!(holder.ip, ip("192.168.20.100"));
    assert_eq!(holder.container_id, "old");
    assert_eq!(holder.node.as_deref(), Some("node-b"));
    assert!(why.contains("node-b"), "{why}");
}

#[test]
fn a_ready_node_keeps_its_sandboxs_address() {
    let t = two_nodes();
    t.f.server.put_node("node-b", "True", 3600);
    assert_still_in_use(t.add_on_a().unwrap_err());
    t.assert_untouched();
    // It asked the API server about node B.
    assert!(t
        .f
        .server
        .requests()
        .iter()
        .any(|(m, p)| m == "GET" && p == "/api/v1/nodes/node-b"));
}

#[test]
fn a_node_not_ready_within_the_grace_keeps_its_sandboxs_address() {
    let t = two_nodes();
    t.f.server.put_node("node-b", "False", 120);
    assert_still_in_use(t.add_on_a().unwrap_err());
    t.f.server.put_node("node-b", "Unknown", 299);
    assert_still_in_use(t.add_on_a().unwrap_err());
    t.assert_untouched();
}

#[test]
fn a_node_not_ready_past_the_grace_is_lost_and_the_address_moves() {
    let t = two_nodes();
    t.f.server.put_node("node-b", "Unknown", 301);
    let got = t.add_on_a().unwrap();
    t.assert_taken_over(&got);
}

#[test]
fn a_deleted_node_is_lost_and_the_address_moves() {
    let t = two_nodes();
    t.f.server.put_node("node-b", "True", 3600);
    assert_still_in_use(t.add_on_a().unwrap_err());
    t.f.server.delete_node("node-b");
    let got = t.add_on_a().unwrap();
    t.assert_taken_over(&got);
}

#[test]
fn the_grace_is_configurable() {
    let f = KubeFixture::new();
    let open = |node: &str, grace: u64| {
        let cfg = store_config(&f.kubeconfig, json!({ "nodeLossGraceSeconds": grace }));
        KubernetesStore::open("iot", &cfg)
            .unwrap()
            .with_node(Some(node.into()))
    };
    let old = open("node-b", 60)
        .allocate(&v4_pool(), &req(POD, "old"))
        .unwrap();
    f.server.put_node("node-b", "False", 90);
    // Past a 60 s grace, within the default 300 s.
    let e = open("node-a", 300)
        .grant(&v4_pool(), &req(POD, "new"), &NeverGone)
        .unwrap_err();
    assert!(matches!(e, Error::StillInUse { .. }), "{e}");
    let got = open("node-a", 60)
        .grant(&v4_pool(), &req(POD, "new"), &NeverGone)
        .unwrap()
        .leases;
    assert_eq!(ips(&got), ips(&old));
}

#[test]
fn the_grace_is_bounded() {
    let f = KubeFixture::new();
    for bad in [json!(29), json!(86_401), json!(-1), json!("300")] {
        let cfg = store_config(&f.kubeconfig, json!({ "nodeLossGraceSeconds": bad }));
        let e = KubernetesStore::open("iot", &cfg).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "store.nodeLossGraceSeconds"),
            "{e}"
        );
    }
    for good in [30, 86_400] {
        let cfg = store_config(&f.kubeconfig, json!({ "nodeLossGraceSeconds": good }));
        assert!(KubernetesStore::open("iot", &cfg).is_ok());
    }
}

#[test]
fn a_node_that_cannot_be_asked_about_is_never_lost() {
    let t = two_nodes();
    // No RBAC for nodes: the question is refused. Retryable, and the address stays.
    t.f.server.forbid("/api/v1/nodes");
    let e = t.add_on_a().unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let Error::Unavailable { reason } = &e else {
        panic!("expected Unavailable, got {e}");
    };
    assert!(
        reason.contains("403") && reason.contains("nodes"),
        "{reason}"
    );
    t.assert_untouched();
}
