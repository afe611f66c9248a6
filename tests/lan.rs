//! iotlan on a simulated IoT LAN: every test builds its own switch, gateway, device, node and pod
//! namespaces, execs the plugin in the node exactly as kubelet/Multus do, and checks what a user
//! would check inside the pod: the address, the MAC, the link kind, the routes, the gateway, the
//! mDNS packet that arrived, and that nothing is left behind.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use iotlan_tests::*;
use serde_json::{json, Value};

mod common;
use common::*;

#[test]
fn pod_gets_reserved_address_mac_routes_gateway_and_mdns() {
    if !ready() {
        return;
    }
    let lan = Lan::new("basic");
    let pod = lan.pod("ha");
    let state = State::new();
    let c = conf(&state, json!({}));

    let result = add(&lan, &pod, "ctr-basic-1", &c).expect_ok();
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][0]["name"], "net1");
    assert_eq!(
        result["interfaces"][0]["sandbox"],
        pod.path().to_string_lossy().as_ref()
    );
    assert_eq!(result["ips"][0]["address"], format!("{HA_IP}/24"));
    assert_eq!(result["ips"][0]["gateway"], GATEWAY_IP);
    assert_eq!(result["ips"][0]["interface"], 0);
    assert!(
        result["ips"][0].get("version").is_none(),
        "1.0.0 results carry no ips[].version"
    );

    let net1 = link(&pod, "net1").expect("net1 exists in the pod");
    assert_eq!(net1.kind.as_deref(), Some("macvlan"));
    assert_eq!(net1.mac, result["interfaces"][0]["mac"].as_str().unwrap());
    assert!(
        is_locally_administered_unicast(&net1.mac),
        "derived MAC {} is local unicast",
        net1.mac
    );
    assert_ne!(net1.mac, lan.node.mac, "macvlan has its own MAC");
    assert!(net1.up);
    assert_eq!(
        ipv4_addrs(&pod, "net1"),
        vec![HA_IP.parse::<std::net::Ipv4Addr>().unwrap()]
    );

    let v4_routes = routes(&pod, false);
    assert!(
        v4_routes
            .iter()
            .any(|r| r.dst == "10.77.0.0/24" && r.dev.as_deref() == Some("net1")),
        "{v4_routes:?}"
    );
    assert!(
        v4_routes
            .iter()
            .any(|r| r.dst == "10.88.0.0/24" && r.gateway.as_deref() == Some(GATEWAY_IP)),
        "configured route via the gateway: {v4_routes:?}"
    );
    assert!(
        !v4_routes.iter().any(|r| r.dst == "default"),
        "never a default route via net1: {v4_routes:?}"
    );
    assert!(
        !routes(&pod, true).iter().any(|r| r.dst == "default"),
        "no IPv6 default route either"
    );

    assert!(ping(&pod, GATEWAY_IP), "the pod reaches the gateway");
    assert!(ping(&lan.device, HA_IP), "the IoT device reaches the pod");

    let listener = mdns_listen(&pod, "net1");
    mdns_send(&lan.device, b"_hap._tcp.local from a device");
    let (payload, from) = listener
        .recv(Duration::from_secs(3))
        .expect("mDNS multicast from the device reaches the pod");
    assert_eq!(payload, b"_hap._tcp.local from a device");
    assert_eq!(from.ip().to_string(), DEVICE_IP);

    let leases = state.leases();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].identity, "home-assistant/home-assistant-0");
    assert_eq!(leases[0].container_id, "ctr-basic-1");
    let remembered: Value = serde_json::from_slice(
        &std::fs::read(state.dir().join("_drivers").join("eth0.json"))
            .expect("driver memory written"),
    )
    .unwrap();
    assert_eq!(remembered["driver"], "macvlan");

    del(&lan, &pod, "ctr-basic-1", &c).expect_ok();
    assert!(link(&pod, "net1").is_none(), "DEL removes net1");
    assert!(state.leases().is_empty(), "DEL releases the lease");
    del(&lan, &pod, "ctr-basic-1", &c).expect_ok();

    // The same pod, restarted (new container ID): same MAC, same address.
    let again = add(&lan, &pod, "ctr-basic-2", &c).expect_ok();
    assert_eq!(
        again["interfaces"][0]["mac"],
        result["interfaces"][0]["mac"]
    );
    assert_eq!(again["ips"][0]["address"], result["ips"][0]["address"]);
    del(&lan, &pod, "ctr-basic-2", &c).expect_ok();
}

#[test]
fn pool_pods_get_distinct_sticky_addresses() {
    if !ready() {
        return;
    }
    let lan = Lan::new("pool");
    let state = State::new();
    let c = conf(&state, json!({}));
    let pods: Vec<Netns> = (0..3).map(|i| lan.pod(&format!("esp{i}"))).collect();
    let mut first = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let env = Env::new(&lan.node.ns, pod, &format!("ctr-pool-{i}"))
            .k8s("iot", &format!("esphome-{i}"));
        let r = cni(&iotlan_bin(), "ADD", &env, &c).expect_ok();
        let ip: IpAddr = r["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let IpAddr::V4(v4) = ip else {
            panic!("IPv4 expected")
        };
        assert!(
            (100..=150).contains(&v4.octets()[3]) && v4.octets()[3] != 101,
            "{ip} is in the pool, not excluded"
        );
        first.push(ip);
    }
    let mut unique = first.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "distinct addresses: {first:?}");
    for (i, pod) in pods.iter().enumerate() {
        let env = Env::new(&lan.node.ns, pod, &format!("ctr-pool-{i}"))
            .k8s("iot", &format!("esphome-{i}"));
        cni(&iotlan_bin(), "DEL", &env, &c).expect_ok();
    }
    // Re-added in reverse order with new container IDs: each pod gets its previous address back.
    for (i, pod) in pods.iter().enumerate().rev() {
        let env = Env::new(&lan.node.ns, pod, &format!("ctr-pool-again-{i}"))
            .k8s("iot", &format!("esphome-{i}"));
        let r = cni(&iotlan_bin(), "ADD", &env, &c).expect_ok();
        assert_eq!(
            r["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap(),
            first[i].to_string()
        );
        cni(&iotlan_bin(), "DEL", &env, &c).expect_ok();
    }
}

#[test]
fn result_shape_follows_the_requested_version() {
    if !ready() {
        return;
    }
    let lan = Lan::new("versions");
    let state = State::new();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let pod = lan.pod(&format!("v{}", version.replace('.', "")));
        let c = conf(&state, json!({ "cniVersion": version }));
        let r = add(&lan, &pod, "ctr-ver", &c).expect_ok();
        assert_eq!(r["cniVersion"], version);
        let has_family = r["ips"][0].get("version").is_some();
        assert_eq!(
            has_family,
            version.starts_with("0."),
            "{version}: ips[].version only before 1.0.0: {r}"
        );
        if has_family {
            assert_eq!(r["ips"][0]["version"], "4");
        }
        assert_eq!(
            r["interfaces"][0]["sandbox"],
            pod.path().to_string_lossy().as_ref()
        );
        del(&lan, &pod, "ctr-ver", &c).expect_ok();
    }
}

#[test]
fn version_answers_with_and_without_stdin() {
    if !require(Need::File("/usr/bin/env", "coreutils")) {
        return;
    }
    let env = Env {
        exec_netns: None,
        container_id: String::new(),
        netns: String::new(),
        ifname: String::new(),
        path: Vec::new(),
        args: String::new(),
        vars: Vec::new(),
        unset: Vec::new(),
    };
    for stdin in ["", r#"{"cniVersion":"0.4.0"}"#] {
        let out = cni(&iotlan_bin(), "VERSION", &env, stdin);
        let v = out.expect_ok();
        let supported: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(supported, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
        assert!(
            out.stderr.is_empty() || !out.stdout.contains("INFO"),
            "logs never on stdout"
        );
    }
}

#[test]
fn check_verifies_link_mac_addresses_and_routes() {
    if !ready() {
        return;
    }
    let lan = Lan::new("check");
    let pod = lan.pod("ha");
    let state = State::new();
    let c = conf(&state, json!({}));
    let result = add(&lan, &pod, "ctr-check", &c).expect_ok();
    let mut with_prev: Value = serde_json::from_str(&c).unwrap();
    with_prev["prevResult"] = result.clone();
    let check = |cfg: &Value| {
        cni(
            &iotlan_bin(),
            "CHECK",
            &Env::new(&lan.node.ns, &pod, "ctr-check").k8s(HA.0, HA.1),
            &cfg.to_string(),
        )
    };
    check(&with_prev).expect_ok();

    pod.ip(&["route", "del", "10.88.0.0/24"]);
    let err = check(&with_prev).expect_err(104);
    assert!(
        err["msg"].as_str().unwrap().contains("10.88.0.0/24"),
        "{err}"
    );
    pod.ip(&[
        "route",
        "add",
        "10.88.0.0/24",
        "via",
        GATEWAY_IP,
        "dev",
        "net1",
    ]);
    pod.ip(&["addr", "del", &format!("{HA_IP}/24"), "dev", "net1"]);
    let err = check(&with_prev).expect_err(104);
    assert!(err["msg"].as_str().unwrap().contains(HA_IP), "{err}");

    let mut old = with_prev.clone();
    old["cniVersion"] = json!("0.3.1");
    check(&old).expect_err(1);
    del(&lan, &pod, "ctr-check", &c).expect_ok();
}

#[test]
fn del_is_idempotent_with_empty_or_missing_netns() {
    if !ready() {
        return;
    }
    let lan = Lan::new("del");
    let state = State::new();
    let c = conf(&state, json!({}));
    {
        let pod0 = lan.pod("ctr");
        add(&lan, &pod0, "ctr-del", &c).expect_ok();
        // containerd's ctr sends DEL with an empty CNI_NETNS: the lease must still be released.
        let env = Env::new(&lan.node.ns, &pod0, "ctr-del")
            .k8s(HA.0, HA.1)
            .netns("");
        cni(&iotlan_bin(), "DEL", &env, &c).expect_ok();
        assert!(state.leases().is_empty());
        cni(&iotlan_bin(), "DEL", &env, &c).expect_ok();
        // ...and then the runtime tears the namespace (and the link in it) down.
    }
    let pod = lan.pod("ha");

    // A namespace that is already gone.
    let gone_path;
    {
        let pod2 = lan.pod("gone");
        add(&lan, &pod2, "ctr-gone", &c).expect_ok();
        gone_path = pod2.path();
    }
    let env = Env::new(&lan.node.ns, &pod, "ctr-gone")
        .k8s(HA.0, HA.1)
        .netns(&gone_path.to_string_lossy());
    cni(&iotlan_bin(), "DEL", &env, &c).expect_ok();
    assert!(
        state.leases().is_empty(),
        "lease of a pod whose netns vanished is released"
    );

    // A link that is gone.
    add(&lan, &pod, "ctr-del2", &c).expect_ok();
    pod.ip(&["link", "del", "net1"]);
    del(&lan, &pod, "ctr-del2", &c).expect_ok();
    assert!(state.leases().is_empty());
}

#[test]
fn runtime_config_ips_and_mac_are_applied_or_refused() {
    if !ready() {
        return;
    }
    let lan = Lan::new("rtcfg");
    let state = State::new();
    let pod = lan.pod("esp");
    let env = Env::new(&lan.node.ns, &pod, "ctr-rt").k8s("iot", "esphome-0");
    let c = conf(
        &state,
        json!({ "runtimeConfig": { "ips": ["10.77.0.120/24"], "mac": "c2:11:22:33:44:55" } }),
    );
    let r = cni(&iotlan_bin(), "ADD", &env, &c).expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.77.0.120/24");
    let net1 = link(&pod, "net1").unwrap();
    assert_eq!(net1.mac, "c2:11:22:33:44:55");
    assert_eq!(ipv4_addrs(&pod, "net1")[0].to_string(), "10.77.0.120");
    cni(&iotlan_bin(), "DEL", &env, &c).expect_ok();

    // Outside the pool and not reserved for this pod: refused, nothing left behind.
    for (ip, code) in [
        ("10.77.0.60/24", 112),
        (&format!("{HA_IP}/24") as &str, 112),
        ("10.99.0.5/24", 112),
    ] {
        let c = conf(&state, json!({ "runtimeConfig": { "ips": [ip] } }));
        let out = cni(&iotlan_bin(), "ADD", &env, &c);
        let err = out.expect_err(code);
        assert!(
            err["msg"]
                .as_str()
                .unwrap()
                .contains(ip.split('/').next().unwrap()),
            "{err}"
        );
        assert!(
            link(&pod, "net1").is_none(),
            "no link left after a refused ADD"
        );
        assert!(
            state.leases().is_empty(),
            "no lease left after a refused ADD"
        );
    }

    // A requested IP held by another pod names the holder.
    let other = lan.pod("other");
    let env_other = Env::new(&lan.node.ns, &other, "ctr-holder").k8s("iot", "esphome-9");
    let held = conf(
        &state,
        json!({ "runtimeConfig": { "ips": ["10.77.0.130/24"] } }),
    );
    cni(&iotlan_bin(), "ADD", &env_other, &held).expect_ok();
    let err = cni(&iotlan_bin(), "ADD", &env, &held).expect_err(111);
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("iot/esphome-9") && msg.contains("ctr-holder"),
        "conflict names the holder: {msg}"
    );
    assert!(link(&pod, "net1").is_none());
    cni(&iotlan_bin(), "DEL", &env_other, &held).expect_ok();
}

#[test]
fn bad_input_gets_the_right_error_and_leaves_nothing() {
    if !ready() {
        return;
    }
    let lan = Lan::new("errors");
    let state = State::new();
    let pod = lan.pod("ha");
    let good = conf(&state, json!({}));
    let base = || Env::new(&lan.node.ns, &pod, "ctr-err").k8s(HA.0, HA.1);
    let cases: Vec<(&str, Env, String, u64, &str)> = vec![
        (
            "malformed JSON",
            base(),
            "{\"cniVersion\": ".into(),
            6,
            "JSON",
        ),
        (
            "missing CNI_CONTAINERID",
            base().unset("CNI_CONTAINERID"),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "container ID with a slash",
            base().container_id("../../etc"),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "ifname over 15 bytes",
            base().ifname("net1234567890123"),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "ifname with a colon",
            base().ifname("net:1"),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "ifname with a space",
            base().ifname("net 1"),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "missing CNI_NETNS on ADD",
            base().unset("CNI_NETNS"),
            good.clone(),
            4,
            "CNI_NETNS",
        ),
        (
            "unsupported cniVersion",
            base(),
            conf(&state, json!({ "cniVersion": "0.2.0" })),
            1,
            "0.2.0",
        ),
        (
            "unknown master",
            base(),
            conf(&state, json!({ "master": "eth9" })),
            101,
            "eth9",
        ),
        (
            "ipvlan l3",
            base(),
            conf(&state, json!({ "driver": "ipvlan", "ipvlanMode": "l3" })),
            7,
            "multicast",
        ),
        (
            "mtu above the master's",
            base(),
            conf(&state, json!({ "mtu": 9000 })),
            7,
            "mtu",
        ),
        (
            "default route in ipam routes",
            base(),
            {
                let mut v: Value = serde_json::from_str(&good).unwrap();
                v["ipam"]["routes"] = json!([{ "dst": "0.0.0.0/0" }]);
                v.to_string()
            },
            7,
            "default",
        ),
    ];
    for (what, env, stdin, code, mention) in cases {
        let out = cni(&iotlan_bin(), "ADD", &env, &stdin);
        let err = out.expect_err(code);
        assert!(
            err["msg"].as_str().unwrap().contains(mention),
            "{what}: the message should mention {mention:?}: {err}"
        );
        assert!(
            !out.stdout.contains("DEBUG") && !out.stdout.contains("INFO"),
            "{what}: stdout is only the error"
        );
        assert!(
            links(&pod).iter().all(|l| l.name == "lo"),
            "{what}: no link left in the pod"
        );
        assert!(state.leases().is_empty(), "{what}: no lease left");
    }
}

#[test]
fn ipvlan_on_a_kernel_without_it_is_a_clear_error() {
    if !ready() {
        return;
    }
    if link_kind_available("ipvlan") {
        eprintln!("this kernel has ipvlan: the ipvlan paths are proven here and in vm-tests/");
    }
    let lan = Lan::new("noipvlan");
    let state = State::new();
    let pod = lan.pod("ha");
    let c = conf(&state, json!({ "driver": "ipvlan" }));
    let out = add(&lan, &pod, "ctr-ipv", &c);
    if link_kind_available("ipvlan") {
        out.expect_ok();
        assert_eq!(link(&pod, "net1").unwrap().kind.as_deref(), Some("ipvlan"));
        del(&lan, &pod, "ctr-ipv", &c).expect_ok();
        return;
    }
    let err = out.expect_err(100);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("ipvlan is not available"),
        "{err}"
    );
    assert!(links(&pod).iter().all(|l| l.name == "lo"));
    assert!(state.leases().is_empty());
}

#[test]
fn mac_limited_uplink_is_detected_by_the_probe() {
    if !ready() || !require(Need::Cmd("nft", "nftables")) {
        return;
    }
    let mut lan = Lan::new("maclimit");
    lan.restrict_to_node_macs();
    let state = State::new();
    let pod = lan.pod("ha");

    // Without the probe, a macvlan is created and is silently deaf: the gateway never hears it.
    let c = conf(&state, json!({ "driver": "macvlan" }));
    add(&lan, &pod, "ctr-ml", &c).expect_ok();
    assert!(
        !ping(&pod, GATEWAY_IP),
        "the uplink drops the macvlan's MAC"
    );
    assert!(lan.restricted_drops() > 0);
    del(&lan, &pod, "ctr-ml", &c).expect_ok();

    // With the probe and a fixed driver: no fallback possible, a clear error, nothing left.
    let c = conf(
        &state,
        json!({ "driver": "macvlan", "probe": { "gateway": true, "timeoutMs": 400 } }),
    );
    let err = add(&lan, &pod, "ctr-ml", &c).expect_err(102);
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.contains(GATEWAY_IP) && msg.contains("400 ms"), "{msg}");
    assert!(links(&pod).iter().all(|l| l.name == "lo"));
    assert!(state.leases().is_empty());

    // auto: the probe detects the drop and falls back to ipvlan (proven in vm-tests/); on a
    // kernel without ipvlan the fallback fails cleanly, naming both drivers.
    let c = conf(
        &state,
        json!({ "driver": "auto", "probe": { "gateway": true, "timeoutMs": 400 } }),
    );
    let out = add(&lan, &pod, "ctr-ml", &c);
    if link_kind_available("ipvlan") {
        out.expect_ok();
        assert_eq!(link(&pod, "net1").unwrap().kind.as_deref(), Some("ipvlan"));
        assert!(ping(&pod, GATEWAY_IP));
        del(&lan, &pod, "ctr-ml", &c).expect_ok();
    } else {
        let err = out.expect_err(102);
        let msg = err["msg"].as_str().unwrap();
        assert!(
            msg.contains("macvlan: gateway") && msg.contains("ipvlan is not available"),
            "{msg}"
        );
        assert!(
            out.stderr.contains("falling back"),
            "the fallback is logged: {}",
            out.stderr
        );
        assert!(links(&pod).iter().all(|l| l.name == "lo"));
        assert!(state.leases().is_empty());
    }
}

#[test]
fn probe_passes_on_an_open_lan() {
    if !ready() {
        return;
    }
    let lan = Lan::new("probeok");
    let state = State::new();
    let pod = lan.pod("ha");
    let c = conf(
        &state,
        json!({ "probe": { "gateway": true, "timeoutMs": 800 } }),
    );
    add(&lan, &pod, "ctr-probe", &c).expect_ok();
    assert_eq!(link(&pod, "net1").unwrap().kind.as_deref(), Some("macvlan"));
    assert!(ping(&pod, GATEWAY_IP));
    del(&lan, &pod, "ctr-probe", &c).expect_ok();
}

#[test]
fn gratuitous_arp_repoints_a_neighbour_at_once() {
    if !ready() {
        return;
    }
    let lan = Lan::new("garp");
    let state = State::new();
    let pod = lan.pod("ha");
    // The device still has the address cached at an old MAC (the pod ran elsewhere before).
    lan.device.ip(&[
        "neigh",
        "replace",
        HA_IP,
        "lladdr",
        "02:00:00:00:be:ef",
        "dev",
        "eth0",
        "nud",
        "stale",
    ]);
    let r = add(&lan, &pod, "ctr-garp", &conf(&state, json!({}))).expect_ok();
    let mac = r["interfaces"][0]["mac"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(2);
    let current = || {
        neighbours(&lan.device)
            .into_iter()
            .find(|n| n["dst"] == HA_IP)
            .and_then(|n| n["lladdr"].as_str().map(str::to_string))
    };
    while current().as_deref() != Some(&mac) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        current().as_deref(),
        Some(mac.as_str()),
        "the device's neighbour entry follows the announcement"
    );
    del(&lan, &pod, "ctr-garp", &conf(&state, json!({}))).expect_ok();
}

#[test]
fn dual_stack_ipv6_without_default_route_and_ra_policy() {
    if !ready() {
        return;
    }
    let lan = Lan::new("v6");
    let state = State::new();
    let pod = lan.pod("ha");
    let mut v: Value =
        serde_json::from_str(&conf(&state, json!({ "ipv6": { "acceptRA": true } }))).unwrap();
    v["ipam"]["ipv6"] =
        json!({ "subnet": "fd77::/64", "gateway": "fd77::1", "pool": ["fd77::100-fd77::1ff"] });
    v["ipam"]["reservations"]["home-assistant/home-assistant-0"] = json!([HA_IP, "fd77::10"]);
    let c = v.to_string();
    let r = add(&lan, &pod, "ctr-v6", &c).expect_ok();
    let addrs: Vec<&str> = r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["address"].as_str())
        .collect();
    assert_eq!(addrs, [format!("{HA_IP}/24").as_str(), "fd77::10/64"]);
    let in_pod = iotlan_tests::addrs(&pod, "net1");
    assert!(in_pod.iter().any(|a| a == "fd77::10/64"), "{in_pod:?}");
    assert!(!routes(&pod, true).iter().any(|r| r.dst == "default"));
    let sysctl = |k: &str| {
        String::from_utf8_lossy(
            &pod.exec("cat", &[format!("/proc/sys/net/ipv6/conf/net1/{k}")])
                .stdout,
        )
        .trim()
        .to_string()
    };
    assert_eq!(
        sysctl("accept_ra"),
        "2",
        "accepted also if the pod turns forwarding on"
    );
    assert_eq!(
        sysctl("accept_ra_defrtr"),
        "0",
        "RAs never install a default route unless asked"
    );
    del(&lan, &pod, "ctr-v6", &c).expect_ok();
    assert!(state.leases().is_empty());
}

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

/// Sends an mDNS packet from the device every 200 ms until `stop` is set.
fn announce_from_device(
    lan: &Lan,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let device = lan.device.path();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&device).expect("device netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter device");
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
        let _ = s.set_multicast_ttl_v4(255);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = s.send_to(b"_esphomelib._tcp.local", (MDNS_GROUP, MDNS_PORT));
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

fn doctor(lan: &Lan) -> Value {
    // Exit status 1 when no driver works; the JSON report is printed either way.
    let out = lan.node.ns.try_exec(
        &iotlan_bin().to_string_lossy(),
        &["doctor", "--json", "--seconds", "2", "--timeout-ms", "600"],
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    assert_eq!(
        out.status.success(),
        !report["recommendation"]["driver"].is_null(),
        "{report}"
    );
    report
}

#[test]
fn doctor_reports_what_works_and_leaves_nothing() {
    if !ready() {
        return;
    }
    let lan = Lan::new("doctor");
    let before = links(&lan.node.ns).len();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = announce_from_device(&lan, stop.clone());
    let report = doctor(&lan);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().expect("sender");
    assert_eq!(
        report["master"], NODE_IF,
        "master found by the default route: {report}"
    );
    assert_eq!(report["drivers"]["macvlan"]["created"], true, "{report}");
    assert_eq!(
        report["drivers"]["macvlan"]["gatewayAnswered"], true,
        "{report}"
    );
    assert_eq!(
        report["drivers"]["ipvlan"]["created"],
        link_kind_available("ipvlan"),
        "{report}"
    );
    let heard = report["multicast"]["received"]
        .as_array()
        .expect("received list");
    assert!(
        heard
            .iter()
            .any(|p| p["from"] == DEVICE_IP && p["protocol"] == "mdns"),
        "mDNS from the device: {report}"
    );
    assert_eq!(report["recommendation"]["driver"], "auto");
    assert_eq!(report["recommendation"]["config"]["ipam"]["subnet"], SUBNET);
    assert_eq!(
        links(&lan.node.ns).len(),
        before,
        "doctor leaves no link behind"
    );
}

#[test]
fn doctor_on_a_mac_limited_uplink_recommends_ipvlan_or_says_nothing_works() {
    if !ready() || !require(Need::Cmd("nft", "nftables")) {
        return;
    }
    let mut lan = Lan::new("doctorml");
    lan.restrict_to_node_macs();
    let report = doctor(&lan);
    assert_eq!(report["drivers"]["macvlan"]["created"], true, "{report}");
    assert_eq!(
        report["drivers"]["macvlan"]["gatewayAnswered"], false,
        "the uplink drops the macvlan MAC: {report}"
    );
    if link_kind_available("ipvlan") {
        assert_eq!(report["recommendation"]["driver"], "ipvlan", "{report}");
    } else {
        assert!(report["recommendation"]["driver"].is_null(), "{report}");
        assert!(
            report["recommendation"]["reason"]
                .as_str()
                .unwrap()
                .contains("neither"),
            "{report}"
        );
    }
}

#[test]
fn status_and_leases_show_holders_and_drivers() {
    if !ready() {
        return;
    }
    let lan = Lan::new("opcli");
    let state = State::new();
    let pod = lan.pod("ha");
    let c = conf(&state, json!({}));
    add(&lan, &pod, "ctr-opcli", &c).expect_ok();
    let cfg = state.dir().join("nad.json");
    std::fs::write(&cfg, &c).expect("write config");
    let dir = state.dir().to_string_lossy().to_string();
    let run = |args: &[&str]| lan.node.ns.exec(&iotlan_bin().to_string_lossy(), args);
    let status: Value = serde_json::from_slice(
        &run(&[
            "status",
            "--json",
            "--state-dir",
            &dir,
            "--config",
            &cfg.to_string_lossy(),
        ])
        .stdout,
    )
    .unwrap();
    let net = &status["networks"][0];
    assert_eq!(net["network"], "iot");
    assert_eq!(
        (
            net["held"].as_u64(),
            net["size"].as_u64(),
            net["free"].as_u64()
        ),
        (Some(1), Some(51), Some(50)),
        "50 in the pool plus the reservation: {status}"
    );
    assert_eq!(net["leases"][0]["ip"], HA_IP);
    assert_eq!(
        net["leases"][0]["identity"],
        "home-assistant/home-assistant-0"
    );
    assert_eq!(status["drivers"][0]["master"], NODE_IF);
    assert_eq!(status["drivers"][0]["driver"], "macvlan");
    let text = String::from_utf8_lossy(&run(&["leases", "--state-dir", &dir]).stdout).to_string();
    assert!(
        text.contains(HA_IP)
            && text.contains("home-assistant/home-assistant-0")
            && text.contains("ctr-opcli"),
        "{text}"
    );
    del(&lan, &pod, "ctr-opcli", &c).expect_ok();
}
