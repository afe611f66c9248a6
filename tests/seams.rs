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

mod common;
use common::*;

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

/// Item 4: DEL reads `ipam.store` leniently. A value ADD would refuse (a string where a number
/// belongs, a number out of range, a key a newer build knew) must not keep the lease held and the
/// pod in Terminating.
#[test]
fn del_reads_the_store_settings_leniently() {
    if !ready() {
        return;
    }
    let lan = Lan::new("delstore");
    let state = State::new();
    let c = conf(&state, json!({}));
    for (i, store_extra) in [
        json!({ "lockTimeoutMs": "10000" }),
        json!({ "lockTimeoutMs": 999_999_999u64, "gcGraceSeconds": -1 }),
        json!({ "identityRetentionDays": "30", "dir": 42 }),
    ]
    .iter()
    .enumerate()
    {
        let pod = lan.pod(&format!("ha{i}"));
        let cid = format!("ctr-{i}");
        add(&lan, &pod, &cid, &c).expect_ok();
        let mut changed: Value = serde_json::from_str(&c).unwrap();
        for (k, v) in store_extra.as_object().unwrap() {
            if k == "dir" {
                continue;
            }
            changed["ipam"]["store"][k] = v.clone();
        }
        del(&lan, &pod, &cid, &changed.to_string()).expect_ok();
        assert!(
            link(&pod, "net1").is_none(),
            "{store_extra}: the link is gone"
        );
        assert!(
            state.leases().is_empty(),
            "{store_extra}: the lease is free"
        );
    }

    // The kubernetes store: a key this build does not know (a downgrade) is ignored, so DEL goes
    // as far as the API server (unreachable here: 11, retried), never 7.
    let pod = lan.pod("k8s");
    add(&lan, &pod, "ctr-k", &c).expect_ok();
    let kubeconfig = state.dir().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"http://127.0.0.1:9\"}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    )
    .expect("kubeconfig");
    let mut cluster: Value = serde_json::from_str(&c).unwrap();
    cluster["ipam"]["store"] = json!({
        "kind": "kubernetes", "kubeconfig": kubeconfig, "timeoutMs": "500",
        "leaseDurationSeconds": 30, "nodeLossGraceSeconds": 5
    });
    let err = del(&lan, &pod, "ctr-k", &cluster.to_string()).expect_err(11);
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("API server unreachable"),
        "{err}"
    );
    assert!(link(&pod, "net1").is_none());
}

/// Item 4: only a netns that is gone (ENOENT) or provably no network namespace means "no link".
/// Any other failure to open it fails the DEL, so the runtime retries, and the lease stays held
/// while the link may still carry the address.
#[test]
fn del_fails_when_the_netns_cannot_be_opened_and_keeps_the_lease() {
    if !ready() {
        return;
    }
    let lan = Lan::new("delnetns");
    let state = State::new();
    let pod = lan.pod("ha");
    let c = conf(&state, json!({}));
    add(&lan, &pod, "ctr-a", &c).expect_ok();
    // A path that cannot be opened for a reason other than "not there": a symlink loop (ELOOP),
    // standing for EMFILE, EPERM or an LSM's denial.
    let dir = tempfile::tempdir().unwrap();
    let looped = dir.path().join("netns");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let e = Env::new(&lan.node.ns, &pod, "ctr-a")
        .k8s(HA.0, HA.1)
        .netns(looped.to_str().unwrap());
    let err = cni(&iotlan_bin(), "DEL", &e, &c).expect_err(5);
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains(looped.to_str().unwrap()),
        "names the path: {err}"
    );
    assert_eq!(state.leases().len(), 1, "the lease is still held");
    assert_eq!(only_ip(&pod, "net1").to_string(), HA_IP);
    // The retry with the real path succeeds.
    del(&lan, &pod, "ctr-a", &c).expect_ok();
    assert!(state.leases().is_empty());
}

/// Item 4: a corrupt file-store record never fails DEL forever. DEL skips it loudly, frees what it
/// can, and `iotlan leases` names the record.
#[test]
fn a_corrupt_store_record_does_not_stick_del() {
    if !ready() {
        return;
    }
    let lan = Lan::new("corrupt");
    let state = State::new();
    let c = conf(&state, json!({}));
    let net = state.dir().join("iot");

    // The attachment's index is garbage: DEL still finds and frees its address.
    let pod = lan.pod("ha");
    add(&lan, &pod, "ctr-a", &c).expect_ok();
    let index = net.join("attachment:ctr-a:net1");
    std::fs::remove_file(&index).unwrap();
    std::fs::write(&index, b"{garbage").unwrap();
    for _ in 0..2 {
        del(&lan, &pod, "ctr-a", &c).expect_ok();
    }
    assert!(link(&pod, "net1").is_none());
    let out = leases_cli(&state);
    assert!(out.contains("attachment:ctr-a:net1"), "{out}");
    assert!(!out.contains(HA_IP), "the address is free: {out}");

    // The lease record itself is garbage: DEL succeeds, the address stays held (nobody else may
    // get it while the record cannot be read), and `iotlan leases` names the record.
    std::fs::remove_file(&index).unwrap();
    let esp = lan.pod("esp");
    cni(
        &iotlan_bin(),
        "ADD",
        &env_as(&lan, &esp, "ctr-e", ESP, "net1"),
        &c,
    )
    .expect_ok();
    let ip = only_ip(&esp, "net1");
    let rec = net.join(format!("ip:{ip}"));
    std::fs::remove_file(&rec).unwrap();
    std::os::unix::fs::symlink("{not json", &rec).unwrap();
    cni(
        &iotlan_bin(),
        "DEL",
        &env_as(&lan, &esp, "ctr-e", ESP, "net1"),
        &c,
    )
    .expect_ok();
    assert!(link(&esp, "net1").is_none());
    let out = leases_cli(&state);
    assert!(out.contains(&format!("ip:{ip}")), "{out}");
}

fn leases_cli(state: &State) -> String {
    let out = std::process::Command::new(iotlan_bin())
        .args(["leases", "--state-dir"])
        .arg(state.dir())
        .output()
        .expect("iotlan leases");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Item 6: "the earlier sandbox is gone" never rests on comparing lease times with the boot time.
/// A Raspberry Pi without a real-time clock steps its clock after boot, so a lease taken before the
/// step looks older than the boot: the sandbox holding it is alive, and a new sandbox of the same
/// pod must wait (11) instead of taking the address onto a second device.
#[test]
fn a_stepped_clock_never_lets_a_live_sandboxs_address_go() {
    if !ready() {
        return;
    }
    let lan = Lan::new("clock");
    let state = State::new();
    let c = conf(&state, json!({}));
    let old = lan.pod("old");
    add(&lan, &old, "ctr-old", &c).expect_ok();
    // The lease as written before the clock stepped forward: "1970".
    let rec = state.dir().join("iot").join(format!("ip:{HA_IP}"));
    let mut lease: Value =
        serde_json::from_str(std::fs::read_link(&rec).unwrap().to_str().unwrap()).unwrap();
    lease["createdUnix"] = json!(1);
    std::fs::remove_file(&rec).unwrap();
    std::os::unix::fs::symlink(lease.to_string(), &rec).unwrap();

    // The new sandbox asks for another MAC (podman's MAC=, or an ipvlan link, which has the
    // master's): only the sandbox check stands between the address and a second device.
    let new = lan.pod("new");
    let e = Env::new(&lan.node.ns, &new, "ctr-new")
        .k8s(HA.0, HA.1)
        .args(&format!(
            "{};MAC=02:42:00:00:00:01",
            k8s_args(HA.0, HA.1, "ctr-new")
        ));
    cni(&iotlan_bin(), "ADD", &e, &c).expect_err(11);
    assert!(link(&new, "net1").is_none());
    assert_eq!(only_ip(&old, "net1").to_string(), HA_IP);
}

/// A node's view of the cluster store: its kubeconfig to `server`, the node-name file the agent
/// writes beside it, and its own state directory.
fn node_store(state: &State, server: &apiserver::ApiServer, node: &str) -> (PathBuf, PathBuf) {
    let dir = state.dir().join(node);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("node-name"), format!("{node}\n")).unwrap();
    (
        server.kubeconfig(&dir, "iotlan-system", "tok"),
        dir.join("state"),
    )
}

fn cluster_conf(state: &State, kubeconfig: &Path, state_dir: &Path) -> String {
    let mut c: Value = serde_json::from_str(&conf(state, json!({}))).unwrap();
    c["ipam"]["store"] = json!({
        "kind": "kubernetes", "kubeconfig": kubeconfig, "stateDir": state_dir, "timeoutMs": 5000
    });
    c.to_string()
}

/// Item 6, across nodes: the cluster store lets a force-deleted pod's address move to its new
/// sandbox on another node once the old node counts as lost (NotReady past its grace). A node that
/// lost only its kubelet still runs the old sandbox, with the same address and the same derived
/// MAC. Before the takeover the new node probes from its NIC, which hears a device with the pod's
/// own MAC: while anything answers, the ADD waits (11) and the old lease stays.
#[test]
fn a_takeover_across_nodes_waits_while_the_old_sandbox_still_answers() {
    if !ready() {
        return;
    }
    let mut lan = Lan::new("takeover");
    lan.add_node("b");
    // The API server on the router's address, where both nodes reach it.
    let listener = in_netns(&lan.gateway, || {
        TcpListener::bind(format!("{GATEWAY_IP}:0")).expect("bind on the router")
    });
    let server = apiserver::ApiServer::start_with(listener);
    let state = State::new();
    let (kc_a, dir_a) = node_store(&state, &server, "node-a");
    let (kc_b, dir_b) = node_store(&state, &server, "node-b");
    server.put_node("node-a", "True", 600);
    server.put_node("node-b", "True", 600);

    let old = lan.pod("old");
    let on_a = Env::new(&lan.node.ns, &old, "ctr-a").k8s(HA.0, HA.1);
    cni(
        &iotlan_bin(),
        "ADD",
        &on_a,
        &cluster_conf(&state, &kc_a, &dir_a),
    )
    .expect_ok();
    assert_eq!(only_ip(&old, "net1").to_string(), HA_IP);

    // Node a's kubelet stops; the node controller marks it NotReady, long past the grace. Its
    // sandbox still runs. The pod is force-deleted and comes back on node b.
    server.put_node("node-a", "Unknown", 3600);
    let new = lan.pod("new");
    let on_b = Env::new(&lan.extra_nodes[0].ns, &new, "ctr-b").k8s(HA.0, HA.1);
    let conf_b = cluster_conf(&state, &kc_b, &dir_b);
    let err = cni(&iotlan_bin(), "ADD", &on_b, &conf_b).expect_err(11);
    let msg = err["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains(HA_IP) && msg.contains("still answers"),
        "{msg}"
    );
    assert!(
        link(&new, "net1").is_none(),
        "no second device with the address"
    );
    assert_eq!(only_ip(&old, "net1").to_string(), HA_IP);
    let holders: Vec<String> = server
        .leases("iotlan-system")
        .iter()
        .filter(|l| l["metadata"]["annotations"]["iotlan/ip"] == HA_IP)
        .map(|l| l["metadata"]["annotations"]["iotlan/container-id"].to_string())
        .collect();
    assert_eq!(
        holders,
        vec!["\"ctr-a\"".to_string()],
        "the old lease is put back"
    );

    // The old sandbox is gone (the node is powered off): the address moves.
    drop(old);
    cni(&iotlan_bin(), "ADD", &on_b, &conf_b).expect_ok();
    assert_eq!(only_ip(&new, "net1").to_string(), HA_IP);
}

/// Sends one ARP request for `target` from the router and collects the MACs that answer.
fn arp_answers(lan: &Lan, target: &str) -> Vec<String> {
    let target: Ipv4Addr = target.parse().unwrap();
    let gw = link(&lan.gateway, "eth0").expect("router eth0");
    in_netns(&lan.gateway, move || {
        let mac = parse_mac(&gw.mac);
        let index = gw.raw["ifindex"].as_u64().expect("ifindex") as u32;
        let sock = iotlan::net::packet::ArpSocket::open(index, mac).expect("arp socket");
        sock.send_request(GATEWAY_IP.parse().unwrap(), target)
            .expect("send");
        let until = Instant::now() + Duration::from_millis(400);
        let mut macs = Vec::new();
        while let Some(m) = sock.wait_reply(target, until).expect("recv") {
            let m = iotlan::link::mac::Mac(m).to_string();
            if !macs.contains(&m) {
                macs.push(m);
            }
        }
        macs
    })
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, b) in s.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(b, 16).unwrap_or(0);
    }
    m
}

/// Item 7: with hostShim on, each of the node's addresses is answered by its own MAC only: the
/// node's by the NIC, the shim's by the shim. Otherwise the router may map the shim's address to
/// the NIC (or the node's to the shim) and flip between them.
#[test]
fn each_node_address_is_answered_by_its_own_mac_with_the_shim() {
    if !ready() {
        return;
    }
    let lan = Lan::new("shimarp");
    let state = State::new();
    let c = conf(&state, json!({ "hostShim": true }));
    let pod = lan.pod("ha");
    add(&lan, &pod, "ctr-a", &c).expect_ok();
    let shim = link(&lan.node.ns, "iot-eth0").expect("the shim exists");
    let shim_ip = ipv4_addrs(&lan.node.ns, "iot-eth0")[0].to_string();
    assert_eq!(
        arp_answers(&lan, NODE_IP),
        vec![lan.node.mac.clone()],
        "the node's address is answered by the NIC only"
    );
    assert_eq!(
        arp_answers(&lan, &shim_ip),
        vec![shim.mac.clone()],
        "the shim's address is answered by the shim only"
    );
    assert!(ping(&lan.gateway, NODE_IP));
    assert!(ping(&lan.gateway, &shim_ip));
}
