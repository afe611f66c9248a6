//! Where the addresses come from: delegated IPAM plugins (undone on failure), a failed allocation,
//! STATUS and GC, iotlan-ipam under Debian's macvlan, and the master and MTU found by default.

use std::path::PathBuf;

use iotlan_tests::*;
use serde_json::{json, Value};

use iotlan_tests::network::*;

#[test]
fn delegated_ipam_static_and_host_local_work_and_are_undone_on_failure() {
    if !ready()
        || !require(Need::File(
            "/usr/lib/cni/host-local",
            "apt-get install containernetworking-plugins",
        ))
    {
        return;
    }
    let lan = Lan::new("deleg");
    let state = State::new();
    let pod = lan.pod("ha");
    let static_conf = conf(
        &state,
        json!({ "ipam": { "type": "static", "addresses": [{ "address": "10.77.0.44/24", "gateway": GATEWAY_IP }] } }),
    );
    let r = add(&lan, &pod, "ctr-static", &static_conf).expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.77.0.44/24");
    assert_eq!(ipv4_addrs(&pod, "net1")[0].to_string(), "10.77.0.44");
    assert!(ping(&pod, GATEWAY_IP));
    del(&lan, &pod, "ctr-static", &static_conf).expect_ok();

    let hl_dir = state.dir().join("host-local");
    let hl = |extra: Value| {
        let mut v: Value = serde_json::from_str(&conf(&state, extra)).unwrap();
        v["ipam"] = json!({ "type": "host-local", "dataDir": hl_dir, "ranges": [[{ "subnet": SUBNET, "rangeStart": "10.77.0.200", "rangeEnd": "10.77.0.210", "gateway": GATEWAY_IP }]] });
        v.to_string()
    };
    let r = add(&lan, &pod, "ctr-hl", &hl(json!({}))).expect_ok();
    let ip = first_ip(&r);
    assert!(
        hl_dir.join("iot").join(&ip).exists(),
        "host-local recorded its lease"
    );
    del(&lan, &pod, "ctr-hl", &hl(json!({}))).expect_ok();
    assert!(
        !hl_dir.join("iot").join(&ip).exists(),
        "DEL reached host-local"
    );

    // A failure after the delegated allocation (no ipvlan here, or an unknown master) calls DEL on it.
    let failing = hl(json!({ "master": "eth9" }));
    add(&lan, &pod, "ctr-hl2", &failing).expect_err(101);
    let held: Vec<PathBuf> = std::fs::read_dir(hl_dir.join("iot"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("10."))
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        held.is_empty(),
        "the delegated lease was released after the failure: {held:?}"
    );
}

/// The link is created while the addresses are allocated: when the allocation fails, the ADD reports
/// the allocation's error and the link it already made is gone.
#[test]
fn a_failed_allocation_reports_its_error_and_leaves_no_link() {
    if !ready() {
        return;
    }
    let lan = Lan::new("allocfail");
    let state = State::new();
    let mut one = ipam(&state);
    one["pool"] = json!(["10.77.0.60-10.77.0.60"]);
    one["exclude"] = json!([]);
    let c = conf(&state, json!({ "ipam": one }));
    let first = lan.pod("first");
    let r = cni(
        &iotlan_bin(),
        "ADD",
        &Env::new(&lan.node.ns, &first, "ctr-first").k8s("iot", "first"),
        &c,
    )
    .expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.77.0.60/24");

    let second = lan.pod("second");
    let err = cni(
        &iotlan_bin(),
        "ADD",
        &Env::new(&lan.node.ns, &second, "ctr-second").k8s("iot", "second"),
        &c,
    )
    .expect_err(110);
    let msg = err["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("iot"), "the error names the pool: {msg}");
    let names: Vec<String> = links(&second).into_iter().map(|l| l.name).collect();
    assert_eq!(names, ["lo"], "links left in the pod after the failed ADD");
    // The pod that holds the address is untouched.
    assert_eq!(ipv4_addrs(&first, "net1")[0].to_string(), "10.77.0.60");

    // The same with a delegated plugin that fails (Debian's static, given no valid address).
    let bad = conf(
        &state,
        json!({ "ipam": { "type": "static", "addresses": [{ "address": "10.77.0.300/24" }] } }),
    );
    let out = add(&lan, &second, "ctr-second", &bad);
    assert!(!out.ok(), "static accepted 10.77.0.300: {}", out.stdout);
    let names: Vec<String> = links(&second).into_iter().map(|l| l.name).collect();
    assert_eq!(names, ["lo"], "links left after the delegated failure");
}

#[test]
fn status_and_gc() {
    if !ready() {
        return;
    }
    let lan = Lan::new("statusgc");
    let state = State::new();
    let pod = lan.pod("ha");
    let c = conf(&state, json!({ "cniVersion": "1.1.0" }));
    add(&lan, &pod, "ctr-gc-keep", &c).expect_ok();
    let other = lan.pod("esp");
    let env_other = Env::new(&lan.node.ns, &other, "ctr-gc-stale").k8s("iot", "esphome-0");
    cni(&iotlan_bin(), "ADD", &env_other, &c).expect_ok();
    assert_eq!(state.leases().len(), 2);

    let node_env = || Env::new(&lan.node.ns, &pod, "unused");
    cni(&iotlan_bin(), "STATUS", &node_env(), &c).expect_ok();
    cni(
        &iotlan_bin(),
        "STATUS",
        &node_env(),
        &conf(&state, json!({ "cniVersion": "1.1.0", "master": "eth9" })),
    )
    .expect_err(50);
    cni(
        &iotlan_bin(),
        "STATUS",
        &node_env(),
        &conf(&state, json!({ "cniVersion": "1.0.0" })),
    )
    .expect_err(1);

    let mut gc: Value = serde_json::from_str(&c).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": "ctr-gc-keep", "ifname": "net1" }]);
    // By default GC spares leases younger than a minute: their ADD may still be in flight.
    cni(&iotlan_bin(), "GC", &node_env(), &gc.to_string()).expect_ok();
    assert_eq!(state.leases().len(), 2, "young leases are spared");
    gc["ipam"]["store"]["gcGraceSeconds"] = json!(0);
    cni(&iotlan_bin(), "GC", &node_env(), &gc.to_string()).expect_ok();
    let left = state.leases();
    assert_eq!(
        left.len(),
        1,
        "GC keeps exactly the valid attachment: {left:?}"
    );
    assert_eq!(left[0].container_id, "ctr-gc-keep");

    let mut old_key: Value = serde_json::from_str(&c).unwrap();
    old_key["cni.dev/attachments"] = json!([]);
    old_key["ipam"]["store"]["gcGraceSeconds"] = json!(0);
    cni(&iotlan_bin(), "GC", &node_env(), &old_key.to_string()).expect_ok();
    assert!(
        state.leases().is_empty(),
        "the older cni.dev/attachments key is accepted"
    );
    del(&lan, &pod, "ctr-gc-keep", &c).expect_ok();
}

#[test]
fn iotlan_ipam_under_debian_macvlan() {
    if !ready() {
        return;
    }
    let lan = Lan::new("ipamref");
    let state = State::new();
    let pod = lan.pod("ha");
    let c = json!({ "cniVersion": "1.0.0", "name": "iot", "type": "macvlan", "master": NODE_IF, "mode": "bridge", "ipam": ipam(&state) }).to_string();
    let mut env = Env::new(&lan.node.ns, &pod, "ctr-ref").k8s(HA.0, HA.1);
    env.path = vec![plugin_bin_dir(), reference_plugin_dir()];
    let r = cni(&reference_plugin_dir().join("macvlan"), "ADD", &env, &c).expect_ok();
    assert_eq!(r["ips"][0]["address"], format!("{HA_IP}/24"));
    assert_eq!(ipv4_addrs(&pod, "net1")[0].to_string(), HA_IP);
    assert!(ping(&pod, GATEWAY_IP));
    assert_eq!(state.leases().len(), 1);
    cni(&reference_plugin_dir().join("macvlan"), "DEL", &env, &c).expect_ok();
    assert!(state.leases().is_empty());
}

#[test]
fn mtu_and_master_autodetection_by_default_route() {
    if !ready() {
        return;
    }
    let lan = Lan::new("mtu");
    let state = State::new();
    let pod = lan.pod("ha");
    // No address of the node is in this pool's subnet: the master is found by the default route.
    let mut v: Value = serde_json::from_str(&conf(&state, json!({ "mtu": 1400 }))).unwrap();
    v["ipam"] = json!({ "type": "static", "addresses": [{ "address": "10.66.0.5/24" }] });
    let r = add(&lan, &pod, "ctr-mtu", &v.to_string()).expect_ok();
    assert_eq!(r["interfaces"][0]["mtu"], 1400);
    let net1 = link(&pod, "net1").unwrap();
    assert_eq!(net1.mtu, 1400);
    assert_eq!(net1.kind.as_deref(), Some("macvlan"));
    del(&lan, &pod, "ctr-mtu", &v.to_string()).expect_ok();
}
