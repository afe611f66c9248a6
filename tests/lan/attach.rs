//! A pod's attachment on the simulated LAN: the reserved address, the MAC, the routes, the gateway and
//! the mDNS packet inside the pod; pool addresses distinct and sticky; the result's shape per CNI
//! version; VERSION, CHECK and an idempotent DEL; runtimeConfig's requests applied or refused.

use std::net::IpAddr;
use std::time::Duration;

use iotlan_tests::*;
use serde_json::{json, Value};

use iotlan_tests::network::*;

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
