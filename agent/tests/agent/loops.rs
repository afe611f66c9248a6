//! The node agent's reconcile loops as the DaemonSet runs them: the real `iotlan install` daemon
//! on a fake host ([`crate::host::Host`]) against the API server double, freeing the leases of pods
//! that are gone (the kubernetes store) or no longer on its node (the file store).
//!
//! Run: `cargo test -p iotlan-agent --test agent loops`. Needs nothing but a Unix host (no root).

use iotlan_apiserver_double as apiserver;

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use crate::host::*;

#[test]
fn the_reconcile_loop_frees_leases_of_deleted_pods() {
    use iotlan_ipam::store::kubernetes::KubernetesStore;
    use iotlan_ipam::{AllocRequest, Attachment, Pool, PoolConfig, Store, StoreConfig};

    let server = apiserver::ApiServer::start();
    server.set_token(Some("token-1"));
    let h = Host::new(Flavor::Kubeadm);
    let kc = h.root().join("etc/cni/net.d/iotlan.d/iotlan.kubeconfig");
    let api = server.url();
    let daemon = h.daemon(&[
        "--api-server",
        &api,
        "--reconcile-interval",
        "1",
        "--reconcile-grace",
        "600",
    ]);
    wait_for(20, "the kubeconfig", || kc.exists());

    // The plugin's store, through the kubeconfig the installer wrote (the double checks the token).
    let cfg: PoolConfig = serde_json::from_value(serde_json::json!({
        "subnet": "192.168.20.0/24", "pool": ["192.168.20.200-192.168.20.239"],
    }))
    .unwrap();
    let pool = Pool::new("iot", &cfg).unwrap();
    let store_cfg: StoreConfig = serde_json::from_value(serde_json::json!({
        "kind": "kubernetes", "kubeconfig": kc,
        "stateDir": kc.parent().map(|d| d.join("state")),
    }))
    .unwrap();
    let store = KubernetesStore::open("iot", &store_cfg).unwrap();
    let add = |pod: &str, cid: &str| {
        store
            .allocate(
                &pool,
                &AllocRequest {
                    identity: format!("home/{pod}"),
                    attachment: Attachment::new(cid, "net1"),
                    requested: vec![],
                    ..AllocRequest::default()
                },
            )
            .unwrap()
    };
    server.add_pod("home", "esphome-0");
    let alive = add("esphome-0", "c1");
    let gone = add("jellyfin-0", "c2");
    let starting = add("music-0", "c3");
    // Once the loop has seen a lease's pod missing, its mark is moved an hour back, past the
    // grace, as if that much time had passed.
    let age_mark = |ip: std::net::IpAddr| {
        use iotlan_ipam::store::kubernetes::objects;
        let name = objects::address_name("iot", ip);
        let mark = || {
            server
                .leases("iotlan-system")
                .into_iter()
                .find(|o| o["metadata"]["name"] == name.as_str())
                .and_then(|o| {
                    o["metadata"]["annotations"][objects::ANN_MISSING_SINCE]
                        .as_str()
                        .and_then(|t| t.parse::<u64>().ok())
                })
        };
        wait_for(30, "the lease of the missing pod to be marked", || {
            mark().is_some()
        });
        let t = mark().unwrap_or_default().saturating_sub(3600);
        server.annotate(
            "iotlan-system",
            &name,
            objects::ANN_MISSING_SINCE,
            &t.to_string(),
        );
    };
    age_mark(gone[0].ip);

    wait_for(
        30,
        "the reconcile loop to free the lease of the deleted pod",
        || store.leases().unwrap().len() == 2,
    );
    let left: Vec<_> = store.leases().unwrap().into_iter().map(|l| l.ip).collect();
    assert!(
        left.contains(&alive[0].ip) && left.contains(&starting[0].ip),
        "{left:?}"
    );
    assert!(!left.contains(&gone[0].ip));
    // The deleted pod's sticky identity record is kept, marked as unused since now (default
    // retention: 30 days).
    wait_for(
        30,
        "the sticky record of the deleted pod to be marked unused",
        || {
            server.leases("iotlan-system").iter().any(|o| {
                let ann = &o["metadata"]["annotations"];
                ann["iotlan/identity"] == "home/jellyfin-0"
                    && ann["iotlan/unused-since-unix"].is_string()
            })
        },
    );

    // The token rotates on the API server and in the ServiceAccount: the loop keeps working.
    server.set_token(Some("token-2"));
    h.write_serviceaccount("token-2", CA_PEM);
    wait_for(20, "the rotated kubeconfig", || {
        fs::read_to_string(&kc)
            .unwrap_or_default()
            .contains("\"token-2\"")
    });
    let store = KubernetesStore::open("iot", &store_cfg).unwrap();
    server.delete_pod("home", "esphome-0");
    age_mark(alive[0].ip);
    wait_for(30, "the reconcile loop, with the new token", || {
        store.leases().unwrap().len() == 1
    });
    let o = daemon.terminate();
    let log = stderr(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("freed"), "{log}");
}

#[test]
fn the_agent_frees_file_store_leases_of_pods_no_longer_on_its_node() {
    use iotlan_ipam::{AllocRequest, Attachment, FileStore, Pool, PoolConfig, Store};

    let server = apiserver::ApiServer::start();
    server.set_token(Some("token-1"));
    let h = Host::new(Flavor::K3s);
    // The plugin's file store on this host, as the NAD's `"store": {"kind": "file"}` keeps it.
    let iot = FileStore::open(
        &h.root().join("var/lib/cni/iotlan/iot"),
        Duration::from_secs(5),
    )
    .unwrap();
    let cfg: PoolConfig = serde_json::from_value(serde_json::json!({
        "subnet": "192.168.20.0/24", "pool": ["192.168.20.200-192.168.20.239"],
    }))
    .unwrap();
    let pool = Pool::new("iot", &cfg).unwrap();
    let add = |pod: &str, cid: &str| {
        iot.allocate(
            &pool,
            &AllocRequest {
                identity: format!("home/{pod}"),
                attachment: Attachment::new(cid, "net1"),
                ..AllocRequest::default()
            },
        )
        .unwrap()
    };
    server.add_pod_on("home", "esphome-0", Some("pi-radio-1"));
    server.add_pod_on("home", "jellyfin-0", Some("other-node"));
    let here = add("esphome-0", "c1");
    add("jellyfin-0", "c2"); // its DEL never came; the pod now runs elsewhere
    add("music-0", "c3"); // deleted pod

    let api = server.url();
    let mut cmd = h.command(&[
        "--interval",
        "1",
        "--api-server",
        &api,
        "--reconcile-interval",
        "1",
        "--reconcile-grace",
        "0",
    ]);
    let child = cmd
        .env("NODE_NAME", "pi-radio-1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let daemon = Daemon(Some(child));
    // The pass that first sees them missing marks them; the next one frees them.
    wait_for(
        30,
        "the file-store leases of the pods not on this node to be freed",
        || iot.leases().unwrap().len() == 1,
    );
    assert_eq!(iot.leases().unwrap(), here);
    let o = daemon.terminate();
    let log = stderr(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("no longer on this node"), "{log}");
}
