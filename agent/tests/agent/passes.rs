//! What the node agent's passes do on the node, run as the DaemonSet runs it: the real
//! `iotlan install` on a fake node ([`crate::host::Host`]) against the API server double.
//! - Multus never forwards CNI GC to a NAD's plugin, so the file store's sticky identity records
//!   would grow for good: the agent applies `--identity-retention` on its node.
//! - A duplicate address the agent finds is posted as an Event that names the Kubernetes node
//!   (`NODE_NAME`), not the agent pod's host name.
//!
//! Run: `cargo test -p iotlan-agent --test agent passes`. Needs no root.

use iotlan_apiserver_double as apiserver;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iotlan_ipam::store::kubernetes::KubernetesStore;
use iotlan_ipam::{AllocRequest, Attachment, FileStore, Pool, PoolConfig, Store, StoreConfig};
use serde_json::json;

use crate::host::{wait_for, Daemon, Flavor, Host};

const NODE: &str = "pi-radio-1";
const DAY: u64 = 86_400;

fn pool() -> Pool {
    let cfg: PoolConfig = serde_json::from_value(json!({
        "subnet": "192.168.20.0/24", "pool": ["192.168.20.200-192.168.20.239"],
    }))
    .unwrap();
    Pool::new("iot", &cfg).unwrap()
}

fn req(identity: &str, cid: &str) -> AllocRequest {
    AllocRequest {
        identity: identity.into(),
        attachment: Attachment::new(cid, "net1"),
        ..AllocRequest::default()
    }
}

/// Moves a file-store record's time (its link's mtime) `secs` into the past.
fn age_record(path: &Path, secs: u64) {
    let t = SystemTime::now() - Duration::from_secs(secs);
    let ts = nix::sys::time::TimeSpec::from(t.duration_since(UNIX_EPOCH).unwrap());
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// The agent as the DaemonSet runs it on `NODE`, one pass a second.
fn agent(h: &Host, api: &str, extra: &[&str]) -> Daemon {
    let mut args = vec![
        "--interval",
        "1",
        "--api-server",
        api,
        "--reconcile-interval",
        "1",
    ];
    args.extend_from_slice(extra);
    let child = h
        .command(&args)
        .env("NODE_NAME", NODE)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Daemon(Some(child))
}

#[test]
fn the_agent_deletes_file_store_identity_records_unused_for_the_retention() {
    let server = apiserver::ApiServer::start();
    server.set_token(Some("token-1"));
    let h = Host::new(Flavor::K3s);
    let dir = h.root().join("var/lib/cni/iotlan/iot");
    let iot = FileStore::open(&dir, Duration::from_secs(5)).unwrap();
    let pool = pool();
    // Pods of a Deployment, long gone (their DELs came: only the sticky records are left) ...
    for (pod, cid) in [
        ("home/music-7c9d-x2k4p", "m1"),
        ("home/music-7c9d-q8w3z", "m2"),
    ] {
        iot.allocate(&pool, &req(pod, cid)).unwrap();
        iot.release(&Attachment::new(cid, "net1")).unwrap();
    }
    // ... one deleted yesterday, and a pod that runs and holds its address since long ago.
    iot.allocate(&pool, &req("home/piper-0", "p1")).unwrap();
    iot.release(&Attachment::new("p1", "net1")).unwrap();
    let held = iot.allocate(&pool, &req("home/esphome-0", "e1")).unwrap();
    server.add_pod_on("home", "esphome-0", Some(NODE));
    let record = |pod: &str| dir.join(format!("identity:{}", pod.replace('/', ":")));
    // Records are symbolic links whose target is the JSON: present is the link itself.
    let present = |pod: &str| std::fs::symlink_metadata(record(pod)).is_ok();
    for pod in [
        "home/music-7c9d-x2k4p",
        "home/music-7c9d-q8w3z",
        "home/esphome-0",
    ] {
        age_record(&record(pod), 40 * DAY);
    }
    age_record(&record("home/piper-0"), DAY);
    for pod in [
        "home/music-7c9d-x2k4p",
        "home/music-7c9d-q8w3z",
        "home/piper-0",
        "home/esphome-0",
    ] {
        assert!(present(pod), "{pod}: no record");
    }

    let daemon = agent(&h, &server.url(), &["--reconcile-grace", "600"]);
    wait_for(30, "the records unused for 30 days to be deleted", || {
        !present("home/music-7c9d-x2k4p") && !present("home/music-7c9d-q8w3z")
    });
    let o = daemon.terminate();
    let log = crate::host::stderr(&o);
    assert!(o.status.success(), "{log}");
    assert!(present("home/piper-0"), "used a day ago: kept");
    assert!(present("home/esphome-0"), "its pod holds an address: kept");
    assert_eq!(iot.leases().unwrap(), held, "no lease freed");
}

#[test]
fn a_duplicate_address_event_names_the_kubernetes_node() {
    let server = apiserver::ApiServer::start();
    server.set_token(Some("token-1"));
    let h = Host::new(Flavor::Kubeadm);
    let state = h.root().join("var/lib/cni/iotlan");
    // The plugin on this node, with its own kubeconfig: it records its attachments in the state dir.
    let kc = h.root().join("plugin.kubeconfig");
    apiserver::write_kubeconfig(&kc, &server.url(), "iotlan-system", "token-1");
    let cfg: StoreConfig = serde_json::from_value(json!({
        "kind": "kubernetes", "namespace": "iotlan-system", "kubeconfig": kc, "stateDir": state,
    }))
    .unwrap();
    let store = KubernetesStore::open("iot", &cfg).unwrap();
    let pool = pool();
    let ours = store
        .allocate(&pool, &req("ha/zigbee2mqtt-0", "a1"))
        .unwrap();
    // The Leases are lost, and another pod is given the same address before the agent's pass.
    server.delete_all_leases("iotlan-system");
    let other = AllocRequest {
        requested: vec![ours[0].ip],
        ..req("ha/other-0", "o1")
    };
    store.allocate(&pool, &other).unwrap();

    let daemon = agent(&h, &server.url(), &["--reconcile-grace", "600"]);
    wait_for(30, "a DuplicateAddress Event", || {
        server
            .events()
            .iter()
            .any(|e| e["reason"] == "DuplicateAddress")
    });
    let log = crate::host::stderr(&daemon.terminate());
    let ev = server
        .events()
        .into_iter()
        .find(|e| e["reason"] == "DuplicateAddress")
        .unwrap();
    assert_eq!(ev["reportingInstance"], NODE, "{ev}\n{log}");
    assert_eq!(ev["regarding"]["kind"], "Lease", "{ev}");
}
