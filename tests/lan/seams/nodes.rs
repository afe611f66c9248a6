//! Time and other nodes: a stepped clock, a takeover across nodes while the old sandbox still answers,
//! and each node address answered by its own MAC with the host shim.

use super::*;

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

    // The old sandbox is gone (the node is powered off): the address moves. The kernel tears a
    // deleted namespace's links down asynchronously, so the old device may answer for a moment
    // after `ip netns del` returns; kubelet retries a failed ADD, and so does this, for a bounded
    // while: 11 (try again later) until the old device is silent, then the takeover.
    drop(old);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let out = cni(&iotlan_bin(), "ADD", &on_b, &conf_b);
        if out.ok() || Instant::now() > until {
            out.expect_ok();
            break;
        }
        out.expect_err(11);
        std::thread::sleep(Duration::from_millis(200));
    }
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
