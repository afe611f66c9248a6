//! An upgrade from the Lease layout before attachments were recorded on the identity's object:
//! objects written by that layout (an address object per held address, an identity object with
//! only `iotlan/ips`) are read, released and stay sticky under the new code.
//!
//! Run: `cargo test -p iotlan-ipam --features kubernetes --test kubernetes upgrade`.

use crate::contract::{ip, ips, req, v4_pool};
use crate::kubefix::{lease, object, KubeFixture, NS};
use iotlan_ipam::store::kubernetes::objects;
use iotlan_ipam::{Attachment, Store};

const POD: &str = "media/jellyfin-0";

/// What the previous layout left for `POD` holding .203 in sandbox `j1` on this node.
fn old_layout(f: &KubeFixture) {
    let mut l = lease("192.168.20.203", POD, "j1");
    l.node = None;
    f.server.put_lease(NS, object(&l));
    let id = objects::identity_object("iot", "iot", NS, POD, &[ip("192.168.20.203")]);
    let id = serde_json::to_value(id).unwrap();
    assert!(id["metadata"]["annotations"]
        .get(objects::ANN_ATTACHMENTS)
        .is_none());
    f.server.put_lease(NS, id);
}

#[test]
fn an_old_layout_lease_is_found_by_its_retried_add_and_claims_nothing() {
    let f = KubeFixture::new();
    old_layout(&f);
    let s = f.open();
    let g = s
        .grant(&v4_pool(), &req(POD, "j1"), &iotlan_ipam::NeverGone)
        .unwrap();
    assert_eq!(ips(&g.leases), vec![ip("192.168.20.203")]);
    assert!(g.claimed.is_empty(), "{g:?}");
}

#[test]
fn an_old_layout_lease_is_released_by_name_and_stays_sticky() {
    let f = KubeFixture::new();
    old_layout(&f);
    let s = f.open();
    let freed = s.release_for(POD, &Attachment::new("j1", "net1")).unwrap();
    assert_eq!(ips(&freed), vec![ip("192.168.20.203")]);
    assert!(f
        .server
        .requests()
        .iter()
        .all(|(m, p)| !(m == "GET" && p.ends_with("/leases"))));
    // The pod's next sandbox gets the same address back.
    let again = s.allocate(&v4_pool(), &req(POD, "j2")).unwrap();
    assert_eq!(ips(&again), vec![ip("192.168.20.203")]);
    // And is released by name under the new layout.
    let freed = s.release_for(POD, &Attachment::new("j2", "net1")).unwrap();
    assert_eq!(ips(&freed), vec![ip("192.168.20.203")]);
}

#[test]
fn an_old_layout_lease_is_released_by_a_caller_without_the_identity() {
    let f = KubeFixture::new();
    old_layout(&f);
    let s = f.open();
    let freed = s.release(&Attachment::new("j1", "net1")).unwrap();
    assert_eq!(ips(&freed), vec![ip("192.168.20.203")]);
}
