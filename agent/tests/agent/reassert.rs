//! The node agent rebuilds its node's Leases from the node-local records of attachments after the
//! objects are lost (the namespace deleted with the manifests, an etcd restore, `kubectl delete
//! leases`), and reports an address held by another attachment as a duplicate, never resolving it.
//!
//! Run: `cargo test -p iotlan-agent --test agent reassert`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use iotlan_agent::events::recent_duplicates;
use iotlan_agent::reassert::Reasserter;
use iotlan_ipam::{Attachment, Store};

use crate::fixture::{self, ips, req, v4_pool, KubeFixture, NS};

/// (address, container) of every address object.
fn held(f: &KubeFixture) -> BTreeSet<(String, String)> {
    f.server
        .leases(NS)
        .iter()
        .filter(|o| o["metadata"]["labels"]["iotlan/kind"] == "address")
        .map(|o| {
            let a = &o["metadata"]["annotations"];
            (
                a["iotlan/ip"].as_str().unwrap_or("").to_string(),
                a["iotlan/container-id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn reassert(f: &KubeFixture) -> iotlan_agent::reassert::ReassertReport {
    Reasserter::new(&f.kubeconfig, Some(NS), &f.state_dir)
        .unwrap()
        .run_once()
        .unwrap()
}

#[test]
fn one_pass_after_every_object_is_deleted_gives_each_live_attachment_its_lease_back() {
    let f = KubeFixture::new();
    let s = f.open();
    let pool = v4_pool();
    let a = s.allocate(&pool, &req("ha/zigbee2mqtt-0", "a1")).unwrap();
    let b = s.allocate(&pool, &req("ha/esphome-dash-0", "b1")).unwrap();
    let gone = s.allocate(&pool, &req("ha/gone-0", "g1")).unwrap();
    s.release_for("ha/gone-0", &Attachment::new("g1", "net1"))
        .unwrap();
    let before = held(&f);
    assert_eq!(before.len(), 2);

    f.server.delete_all_leases(NS);
    assert!(f.server.leases(NS).is_empty());
    let report = reassert(&f);
    assert_eq!(report.recreated.len(), 2, "{report}");
    assert!(report.duplicates.is_empty(), "{report}");
    assert_eq!(
        held(&f),
        before,
        "exactly the live attachments hold their addresses again"
    );

    // The next ADD gets a free address: none of the live ones (the released one may come back).
    let c = s.allocate(&pool, &req("ha/new-0", "c1")).unwrap();
    let taken: BTreeSet<IpAddr> = ips(&a).into_iter().chain(ips(&b)).collect();
    assert!(!taken.contains(&c[0].ip), "{c:?} reuses a live address");
    let _ = gone;
    // A re-asserted attachment's DEL finds it by name again.
    let freed = s
        .release_for("ha/zigbee2mqtt-0", &Attachment::new("a1", "net1"))
        .unwrap();
    assert_eq!(ips(&freed), ips(&a));
    // A second pass finds everything in place and recreates nothing.
    let again = reassert(&f);
    assert!(again.recreated.is_empty(), "{again}");
    assert_eq!(again.present, 2, "{again}");
}

#[test]
fn an_address_taken_by_another_attachment_meanwhile_is_reported_as_a_duplicate() {
    let f = KubeFixture::new();
    let s = f.open();
    let pool = v4_pool();
    let a = s.allocate(&pool, &req("ha/zigbee2mqtt-0", "a1")).unwrap();
    f.server.delete_all_leases(NS);
    // Before any agent pass, a new pod asks for exactly that address (the defect of a reinstall).
    let ip = a[0].ip.to_string();
    let other = s
        .allocate(&pool, &fixture::req_ip("ha/other-0", "o1", &[&ip]))
        .unwrap();
    assert_eq!(ips(&other), ips(&a));

    let report = reassert(&f);
    assert_eq!(report.duplicates.len(), 1, "{report}");
    let d = &report.duplicates[0];
    assert_eq!(
        (d.ours.container_id.as_str(), d.holder.container_id.as_str()),
        ("a1", "o1")
    );
    assert!(report.to_string().contains("DUPLICATE ADDRESS"), "{report}");
    // Reported as a Warning Event on the Lease, and not resolved: the other pod keeps the object.
    let events = f.server.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["reason"], "DuplicateAddress");
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(events[0]["regarding"]["kind"], "Lease");
    assert_eq!(events[0]["regarding"]["name"], fixture::name(&ip).as_str());
    assert_eq!(events[0]["regarding"]["namespace"], NS);
    assert_eq!(events[0]["reportingController"], "iotlan");
    assert_eq!(held(&f), BTreeSet::from([(ip.clone(), "o1".to_string())]));

    // Read back for `iotlan status`: one report per duplicate, however many passes posted it.
    reassert(&f);
    let store = f.open();
    let got = recent_duplicates(store.conn(), NS, "iot").unwrap();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].ip, Some(a[0].ip));
    assert_eq!(got[0].lease, fixture::name(&ip));
    assert_eq!((got[0].count, got[0].events), (2, 2));
    assert!(got[0].message.contains("DUPLICATE ADDRESS"), "{got:#?}");
    assert!(got[0].last_unix.is_some(), "{got:#?}");
    assert!(recent_duplicates(store.conn(), NS, "other")
        .unwrap()
        .is_empty());
    assert!(f.server.denied().is_empty(), "{:?}", f.server.denied());
}

#[test]
fn del_removes_the_node_record_and_nothing_is_reasserted_for_it() {
    let f = KubeFixture::new();
    let s = f.open();
    s.allocate(&v4_pool(), &req("ha/zigbee2mqtt-0", "a1"))
        .unwrap();
    s.release_for("ha/zigbee2mqtt-0", &Attachment::new("a1", "net1"))
        .unwrap();
    let report = reassert(&f);
    assert_eq!(report.records, 0, "{report}");
    assert!(held(&f).is_empty());
}

#[test]
fn a_lease_freed_on_purpose_is_not_brought_back_and_its_record_goes() {
    // The reconciler (or another node) frees the Lease of a pod whose DEL never came here: the
    // identity's object still lists the attachment, so this is no loss.
    let f = KubeFixture::new();
    let s = f.open();
    s.allocate(&v4_pool(), &req("ha/zigbee2mqtt-0", "a1"))
        .unwrap();
    let elsewhere = iotlan_ipam::store::kubernetes::KubernetesStore::open(
        "iot",
        &fixture::store_config(
            &f.kubeconfig,
            serde_json::json!({ "stateDir": f.state_dir.join("elsewhere") }),
        ),
    )
    .unwrap();
    elsewhere
        .release_for("ha/zigbee2mqtt-0", &Attachment::new("a1", "net1"))
        .unwrap();
    let report = reassert(&f);
    assert_eq!(report.released, 1, "{report}");
    assert!(report.recreated.is_empty(), "{report}");
    assert!(held(&f).is_empty());
    assert_eq!(reassert(&f).records, 0, "the record is gone");
}

#[test]
fn a_record_whose_sandbox_namespace_is_gone_is_not_reasserted_and_goes() {
    let f = KubeFixture::new();
    let s = f.open();
    let pool = v4_pool();
    let netns = tempfile::tempdir().unwrap();
    let alive = netns.path().join("cni-alive");
    std::fs::write(&alive, b"").unwrap();
    let dead = netns.path().join("cni-dead");
    let with_netns = |identity: &str, cid: &str, path: &std::path::Path| {
        let mut r = req(identity, cid);
        r.sandbox.netns = Some(path.display().to_string());
        s.allocate(&pool, &r).unwrap()
    };
    let a = with_netns("ha/zigbee2mqtt-0", "a1", &alive);
    // The sandbox died with the node's reboot, and its DEL never came.
    with_netns("ha/esphome-0", "e1", &dead);
    f.server.delete_all_leases(NS);

    let report = Reasserter::new(&f.kubeconfig, Some(NS), &f.state_dir)
        .unwrap()
        .with_netns_check(|p| !std::path::Path::new(p).exists())
        .run_once()
        .unwrap();
    assert_eq!(report.sandbox_gone, 1, "{report}");
    assert_eq!(report.recreated.len(), 1, "{report}");
    // Every record read is counted, whatever became of it (the log line's first number).
    assert_eq!(report.records, 2, "{report}");
    assert!(
        report
            .to_string()
            .starts_with("2 node-local attachment records read: 0 leases present, 1 recreated"),
        "{report}"
    );
    assert_eq!(
        held(&f),
        BTreeSet::from([(a[0].ip.to_string(), "a1".to_string())]),
        "only the sandbox that is still there holds its address again"
    );
    // Its record is gone: the next pass has one record left.
    assert_eq!(reassert(&f).records, 1);
}

#[test]
fn an_empty_record_left_by_a_power_cut_is_removed_with_one_warning_not_reported_on_every_pass() {
    let f = KubeFixture::new();
    let s = f.open();
    let pool = v4_pool();
    s.allocate(&pool, &req("ha/zigbee2mqtt-0", "a1")).unwrap();
    // A build that wrote records without fsync, and a power cut: the renamed file is empty, or
    // holds the start of its JSON.
    let dir = f
        .state_dir
        .join(iotlan_ipam::store::kubernetes::node_record::RECORD_DIR);
    let empty = dir.join("iot.0123456789abcdef.json");
    let garbled = dir.join("iot.fedcba9876543210.json");
    std::fs::write(&empty, b"").unwrap();
    std::fs::write(&garbled, b"{\"network\":\"iot\",\"lea").unwrap();
    // And the temp file of an older build's writer killed mid-write, two minutes ago.
    let temp = dir.join(".tmp-0123456789abcdef-4242");
    std::fs::write(&temp, b"{").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&temp)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(120))
        .unwrap();

    let first = reassert(&f);
    assert_eq!((first.records, first.discarded), (3, 2), "{first}");
    assert!(first.unreadable.is_empty(), "{first}");
    assert!(!empty.exists() && !garbled.exists() && !temp.exists());
    let second = reassert(&f);
    assert_eq!((second.records, second.discarded), (1, 0), "{second}");
    assert!(second.unreadable.is_empty(), "{second}");
    assert!(second.to_string().contains("0 unreadable"), "{second}");
}
