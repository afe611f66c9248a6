//! The operator CLI on the simulated LAN: `iotlan doctor` on an open and a MAC-limited uplink, and
//! `iotlan status` / `leases` naming holders and drivers.

use std::time::Duration;

use iotlan_tests::*;
use serde_json::{json, Value};

use iotlan_tests::network::*;

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
