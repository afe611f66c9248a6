//! Where iotlan meets what is outside its process, on the simulated LAN: the order of a pod's
//! networks, the node's own address, what DEL is handed, a clock that steps, and the host shim's ARP
//! answers. Each test reproduces a defect measured on an earlier main and asserts what a user sees:
//! the address and MAC inside the pod, what the next pod gets, the DEL's exit code, what the
//! router's neighbour table and ARP replies say.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use iotlan_tests::*;
use serde_json::{json, Value};

use iotlan_tests::network::*;

use iotlan_apiserver_double as apiserver;

const ESP: (&str, &str) = ("iot", "esphome-0");

fn env_as(lan: &Lan, pod: &Netns, cid: &str, who: (&str, &str), ifname: &str) -> Env {
    Env::new(&lan.node.ns, pod, cid)
        .k8s(who.0, who.1)
        .ifname(ifname)
}

fn only_ip(pod: &Netns, ifname: &str) -> Ipv4Addr {
    let a = ipv4_addrs(pod, ifname);
    assert_eq!(a.len(), 1, "{ifname} has one address: {a:?}");
    a[0]
}

fn mac_of(pod: &Netns, ifname: &str) -> String {
    link(pod, ifname)
        .unwrap_or_else(|| panic!("{ifname} exists"))
        .mac
}

/// Item 2: the pod's identity does not depend on its interface name. A pod whose annotation lists
/// another network first gets iotlan's attachment as `net2` (or a name the user chose, `iot0`):
/// it keeps its reservation and its MAC, and a pool pod keeps its sticky address and MAC.
#[test]
fn a_pods_address_and_mac_do_not_depend_on_its_interface_name() {
    if !ready() {
        return;
    }
    let lan = Lan::new("ifname");
    let state = State::new();
    let c = conf(&state, json!({}));
    let mut seen: Vec<(String, Ipv4Addr, String)> = Vec::new();
    for (i, ifname) in ["net1", "net2", "iot0"].iter().enumerate() {
        let pod = lan.pod(&format!("ha{i}"));
        let cid = format!("ctr-ha-{i}");
        let e = env_as(&lan, &pod, &cid, HA, ifname);
        cni(&iotlan_bin(), "ADD", &e, &c).expect_ok();
        seen.push((
            ifname.to_string(),
            only_ip(&pod, ifname),
            mac_of(&pod, ifname),
        ));
        cni(&iotlan_bin(), "DEL", &e, &c).expect_ok();
    }
    for (ifname, ip, mac) in &seen {
        assert_eq!(
            ip.to_string(),
            HA_IP,
            "{ifname}: the reservation applies: {seen:?}"
        );
        assert_eq!(mac, &seen[0].2, "{ifname}: the same MAC: {seen:?}");
    }

    // A pool pod: its sticky address and MAC follow it from net1 to net2.
    let first = lan.pod("esp1");
    let e1 = env_as(&lan, &first, "ctr-esp-1", ESP, "net1");
    cni(&iotlan_bin(), "ADD", &e1, &c).expect_ok();
    let (ip1, mac1) = (only_ip(&first, "net1"), mac_of(&first, "net1"));
    cni(&iotlan_bin(), "DEL", &e1, &c).expect_ok();
    let second = lan.pod("esp2");
    let e2 = env_as(&lan, &second, "ctr-esp-2", ESP, "net2");
    cni(&iotlan_bin(), "ADD", &e2, &c).expect_ok();
    assert_eq!(only_ip(&second, "net2"), ip1, "sticky across the rename");
    assert_eq!(
        mac_of(&second, "net2"),
        mac1,
        "the same MAC across the rename"
    );
    let ids: Vec<String> = state.leases().iter().map(|l| l.identity.clone()).collect();
    assert_eq!(ids, vec!["iot/esphome-0".to_string()]);
}

/// A home that ran an earlier build with iotlan's attachment as `net2` holds that pod's address
/// under `namespace/name@net2`. After the upgrade the pod keeps that address and its MAC.
#[test]
fn an_address_an_earlier_build_keyed_by_the_interface_name_is_kept() {
    if !ready() {
        return;
    }
    let lan = Lan::new("legacy");
    let state = State::new();
    let c = conf(&state, json!({}));
    // What the earlier build left: a released lease, remembered for the identity `ns/name@net2`.
    let cfg: iotlan_ipam::PoolConfig = serde_json::from_value(ipam(&state)).unwrap();
    let pool = iotlan_ipam::Pool::new("iot", &cfg).unwrap();
    let store = iotlan_ipam::open_store("iot", &cfg.store, &pool).unwrap();
    let legacy = "iot/esphome-0@net2";
    let req = iotlan_ipam::AllocRequest {
        identity: legacy.into(),
        attachment: iotlan_ipam::Attachment::new("ctr-old", "net2"),
        ..Default::default()
    };
    let held = store.allocate(&pool, &req).unwrap()[0].ip;
    store.release(&req.attachment).unwrap();

    let pod = lan.pod("esp");
    cni(
        &iotlan_bin(),
        "ADD",
        &env_as(&lan, &pod, "ctr-new", ESP, "net2"),
        &c,
    )
    .expect_ok();
    assert_eq!(
        IpAddr::V4(only_ip(&pod, "net2")),
        held,
        "the address is kept"
    );
    assert_eq!(
        mac_of(&pod, "net2"),
        iotlan::link::mac::Mac::derived("iot", legacy).to_string(),
        "the MAC is kept"
    );
}

/// Item 3: the node's own LAN address is never handed to a pod. A macvlan child cannot hear its
/// parent, so no probe finds it: the pool skips it, a reservation of it is refused with a clear
/// error, and the router keeps reaching the node.
#[test]
fn the_nodes_own_address_is_never_handed_out() {
    if !ready() {
        return;
    }
    let lan = Lan::new("nodeaddr");
    let state = State::new();
    let node_mac = lan.node.mac.clone();
    let mut cv: Value = serde_json::from_str(&conf(&state, json!({}))).unwrap();
    // The pool covers the node's own address (10.77.0.3) and one more.
    cv["ipam"]["pool"] = json!(["10.77.0.3-10.77.0.4"]);
    cv["ipam"]["exclude"] = json!([]);
    let c = cv.to_string();
    let pod = lan.pod("esp");
    cni(
        &iotlan_bin(),
        "ADD",
        &env_as(&lan, &pod, "ctr-esp", ESP, "net1"),
        &c,
    )
    .expect_ok();
    assert_eq!(only_ip(&pod, "net1").to_string(), "10.77.0.4");
    // The pool has nothing else: the next pod is refused, never given the node's address.
    let other = lan.pod("other");
    let err = cni(
        &iotlan_bin(),
        "ADD",
        &env_as(&lan, &other, "ctr-o", ("iot", "other-0"), "net1"),
        &c,
    )
    .expect_err(110);
    assert!(link(&other, "net1").is_none(), "{err}");
    assert!(ping(&lan.gateway, NODE_IP), "the router reaches the node");
    assert_eq!(
        router_entry(&lan, NODE_IP).as_deref(),
        Some(node_mac.as_str()),
        "the router's entry for the node's address is the node's MAC"
    );

    // A reservation of the node's address is refused, naming it, and leaves nothing behind.
    cv["ipam"]["reservations"] = json!({ "home-assistant/home-assistant-0": NODE_IP });
    cv["ipam"]["pool"] = json!(["10.77.0.100-10.77.0.110"]);
    let ha = lan.pod("ha");
    let err = cni(
        &iotlan_bin(),
        "ADD",
        &env_as(&lan, &ha, "ctr-ha", HA, "net1"),
        &cv.to_string(),
    )
    .expect_err(112);
    let msg = err["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains(NODE_IP) && msg.contains("node's own address") && msg.contains("eth0"),
        "{msg}"
    );
    assert!(link(&ha, "net1").is_none(), "no link is left");
    assert_eq!(
        router_entry(&lan, NODE_IP).as_deref(),
        Some(node_mac.as_str())
    );
}

/// Item 3, the shim: an address given to the node's shim per node (`hostShim.addresses`, not
/// leased from the pool) is the node's too, and never a pod's.
#[test]
fn a_shim_address_given_per_node_is_never_a_pods() {
    if !ready() {
        return;
    }
    let lan = Lan::new("shimaddr");
    let state = State::new();
    // The node's name as the plugin reads it: the agent's file where this host has one.
    let node = std::fs::read_to_string("/etc/cni/net.d/iotlan.d/node-name")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "lan-node-a".to_string());
    let mut cv: Value = serde_json::from_str(&conf(
        &state,
        json!({ "hostShim": { "addresses": { node.clone(): "10.77.0.100" } } }),
    ))
    .unwrap();
    cv["ipam"]["pool"] = json!(["10.77.0.100-10.77.0.101"]);
    cv["ipam"]["exclude"] = json!([]);
    let c = cv.to_string();
    let first = lan.pod("one");
    cni(
        &iotlan_bin(),
        "ADD",
        &env_as(&lan, &first, "ctr-1", ESP, "net1").var("MULTUS_NODE_NAME", &node),
        &c,
    )
    .expect_ok();
    assert_eq!(
        ipv4_addrs(&lan.node.ns, "iot-eth0"),
        vec!["10.77.0.100".parse::<Ipv4Addr>().unwrap()],
        "the shim has its given address"
    );
    let second = lan.pod("two");
    let out = cni(
        &iotlan_bin(),
        "ADD",
        &env_as(&lan, &second, "ctr-2", ("iot", "other-0"), "net1").var("MULTUS_NODE_NAME", &node),
        &c,
    );
    let got: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|p| ipv4_addrs(p, "net1"))
        .map(|a| a.to_string())
        .collect();
    assert!(
        !got.contains(&"10.77.0.100".to_string()),
        "the shim's address was handed to a pod: {got:?} ({:?})",
        out.ok()
    );
}

mod del;
mod nodes;
