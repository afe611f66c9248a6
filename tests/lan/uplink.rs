//! The LAN side of an attachment: the gateway probe on a MAC-limited and an open uplink, gratuitous ARP
//! repointing a neighbour, and dual stack without a default route.

use std::time::{Duration, Instant};

use iotlan_tests::*;
use serde_json::{json, Value};

use iotlan_tests::network::*;

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
