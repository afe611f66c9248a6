//! `hostShim` on the simulated IoT LAN: the node reaches its pods' net1 addresses through one shim
//! link on the master (a macvlan child cannot talk to its parent), DEL takes only the pod's route,
//! GC keeps the shim's address, and the node agent puts the shim back after it was lost.

use std::path::{Path, PathBuf};

use iotlan_tests::*;
use serde_json::{json, Value};

use iotlan_apiserver_double::yaml;
use iotlan_tests::network::*;

const SHIM: &str = "iot-eth0";
const POOL: (u8, u8) = (100, 150);

/// `ip -j route get <dst>` on the node.
fn node_route(lan: &Lan, dst: &str) -> Value {
    let out = lan.node.ns.ip(&["-j", "route", "get", dst]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j route get");
    v[0].clone()
}

/// The shim link on the node (`ip -d -j addr show`), if it exists.
fn shim_link(lan: &Lan) -> Option<Value> {
    let out = lan
        .node
        .ns
        .try_exec("ip", &["-d", "-j", "addr", "show", "dev", SHIM]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v[0].clone())
}

/// The shim's IPv4 addresses with their prefix lengths.
fn shim_addresses(link: &Value) -> Vec<(String, u64)> {
    link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["family"] == "inet")
        .map(|a| {
            (
                a["local"].as_str().unwrap_or_default().to_string(),
                a["prefixlen"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn in_pool(ip: &str) -> bool {
    ip.strip_prefix("10.77.0.")
        .and_then(|h| h.parse::<u8>().ok())
        .is_some_and(|h| (POOL.0..=POOL.1).contains(&h))
}

/// The runtimes' netns dirs the shipped DaemonSet mounts into the agent's view: (host path, path in
/// the agent's container), read from `manifests/iotlan/base/daemonset.yaml`.
fn daemonset_netns_mounts() -> Vec<(PathBuf, PathBuf)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/iotlan/base/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("the shipped DaemonSet");
    let docs = yaml::parse_documents(&text);
    let spec = &docs[0]["spec"]["template"]["spec"];
    let host_path = |name: &Value| {
        spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == *name)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .map(PathBuf::from)
    };
    spec["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["readOnly"] == "true")
        .filter_map(|m| Some((host_path(&m["name"])?, m["mountPath"].as_str()?.into())))
        .filter(|(host, _): &(PathBuf, PathBuf)| host.ends_with("netns"))
        .collect()
}

/// The shim's lease: the node's, held under `iotlan-shim.<node>` on the shim link.
fn shim_lease(state: &State) -> Option<iotlan_ipam::Lease> {
    state
        .leases()
        .into_iter()
        .find(|l| l.identity.starts_with("iotlan-shim.") && l.ifname == SHIM)
}

fn add_pod(lan: &Lan, pod: &Netns, cid: &str, name: &str, c: &str) -> Value {
    cni(
        &iotlan_bin(),
        "ADD",
        &Env::new(&lan.node.ns, pod, cid).k8s(HA.0, name),
        c,
    )
    .expect_ok()
}

#[test]
fn the_node_reaches_its_pod_only_through_the_shim_and_del_takes_only_the_pods_route() {
    if !ready() {
        return;
    }
    let lan = Lan::new("shim");
    let state = State::new();

    // Without the shim, the node cannot reach its own macvlan child: the control.
    let pod = lan.pod("ha");
    let plain = conf(&state, json!({}));
    add(&lan, &pod, "ctr-shim-0", &plain).expect_ok();
    assert!(
        !ping(&lan.node.ns, HA_IP),
        "the node reached its macvlan pod without a shim: the control is broken"
    );
    del(&lan, &pod, "ctr-shim-0", &plain).expect_ok();

    let c = conf(&state, json!({ "hostShim": true }));
    let r = add(&lan, &pod, "ctr-shim-1", &c).expect_ok();
    assert_eq!(r["ips"][0]["address"], format!("{HA_IP}/24"));
    let link = shim_link(&lan).expect("the shim iot-eth0 exists on the node");
    assert_eq!(link["linkinfo"]["info_kind"], "macvlan", "{link}");
    assert_eq!(link["linkinfo"]["info_data"]["mode"], "bridge", "{link}");
    let addrs = shim_addresses(&link);
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    let (shim_ip, prefix) = addrs[0].clone();
    assert_eq!(
        prefix, 32,
        "a host address: no subnet route through the shim"
    );
    assert!(in_pool(&shim_ip) && shim_ip != HA_IP, "{shim_ip}");
    let lease = shim_lease(&state).expect("the shim's address is leased from the pool");
    assert_eq!(lease.ip.to_string(), shim_ip);

    let route = node_route(&lan, HA_IP);
    assert_eq!(route["dev"], SHIM, "{route}");
    assert_eq!(route["prefsrc"], shim_ip.as_str(), "{route}");
    // The rest of the subnet still goes out of the master.
    assert_eq!(node_route(&lan, DEVICE_IP)["dev"], "eth0");
    assert!(ping(&lan.node.ns, HA_IP), "the node pings its pod's net1");
    assert!(ping(&lan.device, HA_IP), "the LAN still reaches the pod");

    // The operator sees the shim, its address and the pod it routes.
    let status = std::process::Command::new(iotlan_bin())
        .args(["status", "--state-dir"])
        .arg(state.dir())
        .output()
        .expect("iotlan status");
    let text = String::from_utf8_lossy(&status.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("eth0 ") && l.contains(SHIM))
        .unwrap_or_else(|| panic!("no shim row in:\n{text}"));
    assert!(
        row.contains("macvlan") && row.contains(&shim_ip) && row.contains(HA_IP),
        "{row}"
    );

    // GC with only the pod listed keeps the shim's lease: it is the node's.
    let mut gc: Value = serde_json::from_str(&c).expect("conf");
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": "ctr-shim-1", "ifname": "net1" }]);
    cni(
        &iotlan_bin(),
        "GC",
        &Env::new(&lan.node.ns, &pod, "ctr-shim-1"),
        &gc.to_string(),
    )
    .expect_ok();
    assert_eq!(
        shim_lease(&state).map(|l| l.ip.to_string()),
        Some(shim_ip.clone())
    );

    // DEL with a config that no longer mentions the shim: the pod's route goes, the shim stays.
    del(&lan, &pod, "ctr-shim-1", &plain).expect_ok();
    assert_eq!(node_route(&lan, HA_IP)["dev"], "eth0");
    let link = shim_link(&lan).expect("the shim stays after DEL");
    assert_eq!(shim_addresses(&link), vec![(shim_ip.clone(), 32)]);
    assert!(shim_lease(&state).is_some());
    assert!(
        !state.leases().iter().any(|l| l.ip.to_string() == HA_IP),
        "the pod's lease was released"
    );

    // The next pod gets its route back through the same shim address.
    let pod2 = lan.pod("ha2");
    add(&lan, &pod2, "ctr-shim-2", &c).expect_ok();
    assert_eq!(node_route(&lan, HA_IP)["prefsrc"], shim_ip.as_str());
    assert!(ping(&lan.node.ns, HA_IP));
    del(&lan, &pod2, "ctr-shim-2", &c).expect_ok();
}

#[test]
fn a_shim_address_given_per_node_is_used_and_a_non_bridge_macvlan_is_refused() {
    if !ready() {
        return;
    }
    let lan = Lan::new("shimaddr");
    let state = State::new();
    let pod = lan.pod("ha");
    let c = conf(
        &state,
        json!({ "hostShim": { "addresses": { "lan-node-a": "10.77.0.240" } } }),
    );
    let env = Env::new(&lan.node.ns, &pod, "ctr-shimaddr")
        .k8s(HA.0, HA.1)
        .var("MULTUS_NODE_NAME", "lan-node-a");
    cni(&iotlan_bin(), "ADD", &env, &c).expect_ok();
    let link = shim_link(&lan).expect("shim");
    // The agent's node-name file, where a test host has one, names this node otherwise.
    if !Path::new("/etc/cni/net.d/iotlan.d/node-name").exists() {
        assert_eq!(shim_addresses(&link), vec![("10.77.0.240".to_string(), 32)]);
        assert!(
            shim_lease(&state).is_none(),
            "a given address takes no pool lease"
        );
    }
    assert!(ping(&lan.node.ns, HA_IP));
    cni(&iotlan_bin(), "DEL", &env, &c).expect_ok();

    let bad = conf(
        &state,
        json!({ "hostShim": true, "macvlanMode": "private" }),
    );
    let e = add(&lan, &pod, "ctr-shimaddr-2", &bad).expect_err(7);
    assert!(
        e["msg"].as_str().unwrap_or_default().contains("bridge"),
        "{e}"
    );
    let bad = conf(&state, json!({ "hostShim": { "address": "10.77.0.240" } }));
    let e = add(&lan, &pod, "ctr-shimaddr-3", &bad).expect_err(7);
    assert!(
        e["msg"].as_str().unwrap_or_default().contains("hostShim"),
        "{e}"
    );
}

#[test]
fn the_node_agent_repairs_a_lost_shim_and_forgets_pods_whose_namespace_is_gone() {
    if !ready() {
        return;
    }
    let lan = Lan::new("shimfix");
    let state = State::new();
    // The agent reads the records at <host root>/var/lib/cni/iotlan.
    let root = state.dir().join("host");
    let state_dir = root.join("var/lib/cni/iotlan");
    for d in ["etc/cni/net.d", "opt/cni/bin", "run/netns", "scratch"] {
        std::fs::create_dir_all(root.join(d)).expect("host dirs");
    }
    let c = conf(&state, json!({ "hostShim": true, "stateDir": state_dir }));
    let ha = lan.pod("ha");
    add(&lan, &ha, "ctr-fix-1", &c).expect_ok();
    // esphome's sandbox is containerd's (CRI): CNI_NETNS=/var/run/netns/<name>, through the host's
    // /var/run -> /run link.
    let esphome = lan.pod("esphome");
    let esphome_netns = format!("/var/run/netns/{}", esphome.name());
    let r = cni(
        &iotlan_bin(),
        "ADD",
        &Env::new(&lan.node.ns, &esphome, "ctr-fix-2")
            .k8s(HA.0, "esphome-0")
            .netns(&esphome_netns),
        &c,
    )
    .expect_ok();
    let esphome_ip = first_ip(&r);
    assert!(ping(&lan.node.ns, &esphome_ip));

    // The shim is lost (a re-plugged NIC, a network manager), and esphome's sandbox dies without a DEL.
    lan.node.ns.ip(&["link", "del", SHIM]);
    assert!(!ping(&lan.node.ns, HA_IP));
    drop(esphome);

    // The agent sees the runtimes' netns dirs as the shipped DaemonSet mounts them under its host root.
    let mounts: Vec<(PathBuf, PathBuf)> = daemonset_netns_mounts()
        .into_iter()
        .map(|(host, inner)| {
            let under = inner.strip_prefix("/host").expect("mounted under /host");
            let dst = root.join(under.strip_prefix("/").unwrap_or(under));
            std::fs::create_dir_all(&dst).expect("mount point");
            (host, dst)
        })
        .collect();
    let binds: Vec<(&Path, &Path)> = mounts
        .iter()
        .map(|(h, d)| (h.as_path(), d.as_path()))
        .collect();
    let out = on_node(
        &lan.node.ns,
        &root.join("scratch"),
        &binds,
        &iotlan_bin().to_string_lossy(),
    )
    .args(["install", "--once", "--host-shims", "--no-kubeconfig"])
    .arg(format!("--host-root={}", root.display()))
    .args(["--flavor=kubeadm", "--node-name=lan-node-a"])
    .arg(format!(
        "--source-dir={}",
        iotlan_bin().parent().expect("bin dir").display()
    ))
    .output()
    .expect("run the agent");
    assert!(
        out.status.success(),
        "agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let link = shim_link(&lan).expect("the agent recreated the shim");
    let lease = shim_lease(&state).expect("shim lease");
    assert_eq!(
        shim_addresses(&link),
        vec![(lease.ip.to_string(), 32)],
        "with the same address"
    );
    assert_eq!(node_route(&lan, HA_IP)["dev"], SHIM);
    assert!(ping(&lan.node.ns, HA_IP), "the node reaches HA again");
    assert_ne!(
        node_route(&lan, &esphome_ip)["dev"],
        SHIM,
        "no route kept for a pod whose namespace is gone"
    );
    let record = std::fs::read_to_string(state_dir.join("_shim/eth0.json")).expect("record");
    assert!(
        record.contains("ctr-fix-1") && !record.contains("ctr-fix-2"),
        "{record}"
    );

    // The late DEL of the dead sandbox still succeeds, and HA's own DEL takes its route.
    let gone = lan.pod("gone");
    cni(
        &iotlan_bin(),
        "DEL",
        &Env::new(&lan.node.ns, &gone, "ctr-fix-2")
            .k8s(HA.0, "esphome-0")
            .netns("/run/netns/iotlan-gone"),
        &c,
    )
    .expect_ok();
    del(&lan, &ha, "ctr-fix-1", &c).expect_ok();
    assert_eq!(node_route(&lan, HA_IP)["dev"], "eth0");
}

#[test]
fn a_shim_address_a_device_already_uses_is_never_put_on_the_shim() {
    if !ready() {
        return;
    }
    // The shim's first address from an empty pool, learnt in a throwaway state.
    let squatted = {
        let lan = Lan::new("shimslot");
        let scratch = State::new();
        let pod = lan.pod("ha");
        let c = conf(&scratch, json!({ "hostShim": true }));
        add(&lan, &pod, "ctr-slot", &c).expect_ok();
        let ip = shim_lease(&scratch).expect("shim lease").ip.to_string();
        del(&lan, &pod, "ctr-slot", &c).expect_ok();
        ip
    };
    let lan = Lan::new("shimsquat");
    let state = State::new();
    lan.device
        .ip(&["addr", "add", &format!("{squatted}/24"), "dev", "eth0"]);
    assert!(
        ping(&lan.gateway, &squatted),
        "the device answers for {squatted}"
    );
    let device_mac = router_entry(&lan, &squatted).expect("the router knows the device");

    let c = conf(&state, json!({ "hostShim": true }));
    let ha = lan.pod("ha");
    add(&lan, &ha, "ctr-squat-1", &c).expect_ok();
    // The pod works; the shim did not take the device's address, and the pool skips it.
    let link = shim_link(&lan).expect("the shim link exists");
    assert!(
        !shim_addresses(&link).iter().any(|(ip, _)| *ip == squatted),
        "{link}"
    );
    assert!(
        shim_lease(&state).is_none(),
        "the conflicting lease was released"
    );
    let recorded =
        std::fs::read_to_string(state.dir().join(format!("_conflicts/iot/{squatted}.json")))
            .expect("the conflict is recorded");
    assert!(recorded.contains(&device_mac), "{recorded}");

    // The next ADD gives the shim another address, and the node reaches both pods through it.
    let esphome = lan.pod("esphome");
    let r = add_pod(&lan, &esphome, "ctr-squat-2", "esphome-0", &c);
    let link = shim_link(&lan).expect("shim");
    let addrs = shim_addresses(&link);
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    assert_ne!(addrs[0].0, squatted);
    let esphome_ip = first_ip(&r);
    assert!(ping(&lan.node.ns, &esphome_ip));
    assert!(
        ping(&lan.node.ns, HA_IP),
        "the pod that came while the shim had no address is routed now too"
    );
    // The router's entry for the device's address never moved.
    assert!(ping(&lan.gateway, &squatted));
    assert_eq!(router_entry(&lan, &squatted), Some(device_mac));
    del(&lan, &esphome, "ctr-squat-2", &c).expect_ok();
    del(&lan, &ha, "ctr-squat-1", &c).expect_ok();
}
