//! Discovery on the simulated IoT LAN, as Home Assistant needs it: multicast leaves through net1 by
//! default, replies to a client on another subnet leave through net1 (sourceRouting), and an address
//! a device already uses is never handed out (the RFC 5227 conflict check). Every pod here also has
//! a cluster interface `eth0` with the default route, as under Multus.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use iotlan_tests::*;
use serde_json::{json, Value};

use iotlan_tests::network::*;

/// `ip -j route get <dst>` in `ns` (with `from`), the first entry.
fn route_get(ns: &Netns, dst: &str, from: Option<&str>) -> Value {
    let mut args = vec!["-j", "route", "get", dst];
    if let Some(f) = from {
        args.extend(["from", f]);
    }
    let out = ns.ip(&args);
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j route get");
    v[0].clone()
}

fn check(lan: &Lan, pod: &Netns, cid: &str, c: &str, prev: &Value) -> CniOutput {
    let mut conf: Value = serde_json::from_str(c).expect("conf");
    conf["prevResult"] = prev.clone();
    cni(
        &iotlan_bin(),
        "CHECK",
        &Env::new(&lan.node.ns, pod, cid).k8s(HA.0, HA.1),
        &conf.to_string(),
    )
}

#[test]
fn multicast_leaves_through_net1_by_default_and_check_verifies_it() {
    if !ready() {
        return;
    }
    let lan = Lan::new("mcast");
    let pod = lan.pod("ha");
    cluster_eth0(&pod);
    let state = State::new();
    let c = conf(&state, json!({}));
    let result = add(&lan, &pod, "ctr-mcast-1", &c).expect_ok();

    // What Home Assistant's network integration and multicast libraries ask the kernel.
    for group in ["224.0.0.251", "239.255.255.250"] {
        let r = route_get(&pod, group, None);
        assert_eq!(r["dev"], "net1", "route to {group}: {r}");
        assert_eq!(r["prefsrc"], HA_IP, "source of the route to {group}: {r}");
    }
    // Never a default route through net1: the cluster keeps it.
    let defaults: Vec<_> = routes(&pod, false)
        .into_iter()
        .filter(|r| r.dst == "default")
        .collect();
    assert_eq!(defaults.len(), 1, "{defaults:?}");
    assert_eq!(defaults[0].dev.as_deref(), Some("eth0"));
    assert_eq!(route_get(&pod, "1.1.1.1", None)["dev"], "eth0");
    // A query sent without choosing an interface reaches the IoT device.
    assert!(
        mdns_roundtrip(&pod, &lan.device, "eth0", b"iotlan-discovery-query").is_some(),
        "the pod's mDNS query reached the device through net1"
    );

    check(&lan, &pod, "ctr-mcast-1", &c, &result).expect_ok();
    pod.ip(&["route", "del", "224.0.0.0/4", "dev", "net1"]);
    let err = check(&lan, &pod, "ctr-mcast-1", &c, &result).expect_err(104);
    assert!(
        err["msg"].as_str().unwrap().contains("224.0.0.0/4"),
        "{err}"
    );
    del(&lan, &pod, "ctr-mcast-1", &c).expect_ok();

    // Switched off (a second iotlan network in the same pod): the cluster interface keeps multicast.
    let off = conf(&state, json!({ "multicastRoutes": false }));
    let r2 = add(&lan, &pod, "ctr-mcast-2", &off).expect_ok();
    assert_eq!(route_get(&pod, "224.0.0.251", None)["dev"], "eth0");
    check(&lan, &pod, "ctr-mcast-2", &off, &r2).expect_ok();
    del(&lan, &pod, "ctr-mcast-2", &off).expect_ok();
}

#[test]
fn ipv6_multicast_leaves_through_net1_when_net1_has_ipv6() {
    if !ready() {
        return;
    }
    let lan = Lan::new("mcast6");
    lan.gateway
        .ip(&["-6", "addr", "add", "fd77::1/64", "dev", "eth0", "nodad"]);
    let pod = lan.pod("ha");
    cluster_eth0(&pod);
    let state = State::new();
    let mut ipam = ipam(&state);
    ipam["ipv6"] =
        json!({ "subnet": "fd77::/64", "gateway": "fd77::1", "pool": ["fd77::100-fd77::150"] });
    let c = conf(&state, json!({ "ipam": ipam }));
    let result = add(&lan, &pod, "ctr-mcast6-1", &c).expect_ok();
    let v6 = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i["address"].as_str().filter(|a| a.contains(':')))
        .expect("an IPv6 address")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    for group in ["ff02::fb", "ff05::c"] {
        let r = route_get(&pod, group, None);
        assert_eq!(r["dev"], "net1", "route to {group}: {r}");
        assert_eq!(
            r["prefsrc"],
            v6.as_str(),
            "source of the route to {group}: {r}"
        );
    }
    check(&lan, &pod, "ctr-mcast6-1", &c, &result).expect_ok();
    del(&lan, &pod, "ctr-mcast6-1", &c).expect_ok();
}

/// A client at 10.99.0.2 on a second subnet, behind the LAN's router (which forwards).
fn second_subnet(lan: &Lan) -> Netns {
    let client = Netns::new("iot-sbr-client");
    lan.gateway.ip(&[
        "link",
        "add",
        "eth1",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        client.name(),
    ]);
    lan.gateway
        .ip(&["addr", "add", "10.99.0.1/24", "dev", "eth1"]);
    lan.gateway.ip(&["link", "set", "eth1", "up"]);
    lan.gateway
        .exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
    client.ip(&["addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    client.ip(&["link", "set", "eth0", "up"]);
    client.ip(&["route", "add", "default", "via", "10.99.0.1"]);
    client
}

/// A TCP server on HA_IP:8123 in `pod` that answers one connection; then whether `client` got the
/// answer within a few seconds.
fn tcp_answered(pod: &Netns, client: &Netns) -> bool {
    let listener = in_netns(pod, || TcpListener::bind((HA_IP, 8123)).expect("bind 8123"));
    listener.set_nonblocking(false).expect("blocking");
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"home-assistant");
        }
    });
    let got = in_netns(client, || {
        let addr = format!("{HA_IP}:8123").parse().expect("addr");
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf == b"home-assistant"
    });
    if !got {
        // Unblock the server's accept.
        let _ = in_netns(pod, || TcpStream::connect((HA_IP, 8123)));
    }
    let _ = server.join();
    got
}

#[test]
fn replies_to_a_client_on_another_subnet_leave_through_net1_with_source_routing() {
    if !ready() {
        return;
    }
    let lan = Lan::new("sbr");
    let client = second_subnet(&lan);
    let state = State::new();

    // Without it: the reply takes the pod's default route (the cluster network) and is lost.
    let pod = lan.pod("ha-plain");
    cluster_eth0(&pod);
    let plain = conf(&state, json!({}));
    add(&lan, &pod, "ctr-sbr-1", &plain).expect_ok();
    assert_eq!(route_get(&pod, "10.99.0.2", Some(HA_IP))["dev"], "eth0");
    assert!(
        !tcp_answered(&pod, &client),
        "without sourceRouting the reply leaves via eth0"
    );
    del(&lan, &pod, "ctr-sbr-1", &plain).expect_ok();
    drop(pod);

    let pod = lan.pod("ha-sbr");
    cluster_eth0(&pod);
    let c = conf(&state, json!({ "sourceRouting": true }));
    let result = add(&lan, &pod, "ctr-sbr-2", &c).expect_ok();
    let r = route_get(&pod, "10.99.0.2", Some(HA_IP));
    assert_eq!(r["dev"], "net1", "{r}");
    assert_eq!(r["gateway"], GATEWAY_IP, "{r}");
    assert!(
        tcp_answered(&pod, &client),
        "the client on 10.99.0.0/24 got its answer"
    );
    // The main table keeps its one default route, via the cluster.
    let defaults: Vec<_> = routes(&pod, false)
        .into_iter()
        .filter(|r| r.dst == "default")
        .collect();
    assert_eq!(defaults.len(), 1, "{defaults:?}");
    assert_eq!(defaults[0].dev.as_deref(), Some("eth0"));
    assert_eq!(route_get(&pod, "10.99.0.2", None)["dev"], "eth0");
    check(&lan, &pod, "ctr-sbr-2", &c, &result).expect_ok();

    let rules = String::from_utf8_lossy(&pod.ip(&["rule", "show"]).stdout).to_string();
    assert!(
        rules.contains(&format!("from {HA_IP} lookup 100")),
        "{rules}"
    );
    del(&lan, &pod, "ctr-sbr-2", &c).expect_ok();
    let rules = String::from_utf8_lossy(&pod.ip(&["rule", "show"]).stdout).to_string();
    assert!(!rules.contains(HA_IP), "DEL removed the rule: {rules}");
    assert!(link(&pod, "net1").is_none());
}

/// The address the pod `ns/name` gets from an empty pool with no conflict: learnt in a throwaway
/// state directory (the first slot is derived from the identity).
fn first_slot(lan: &Lan, name: &str) -> String {
    let scratch = State::new();
    let pod = lan.pod("scratch");
    let c = conf(&scratch, json!({ "conflictCheck": { "enabled": false } }));
    let env = Env::new(&lan.node.ns, &pod, "ctr-scratch").k8s("home-assistant", name);
    let r = cni(&iotlan_bin(), "ADD", &env, &c).expect_ok();
    cni(&iotlan_bin(), "DEL", &env, &c).expect_ok();
    first_ip(&r)
}

#[test]
fn a_squatters_address_is_skipped_and_the_routers_entry_for_it_is_unchanged() {
    if !ready() {
        return;
    }
    let mut lan = Lan::new("squat");
    let squatted = first_slot(&lan, "esphome-0");
    let squatter = lan.add_node("squatter");
    let squatter_mac = squatter.mac.clone();
    squatter
        .ns
        .ip(&["addr", "add", &format!("{squatted}/24"), "dev", "eth0"]);
    assert!(ping(&lan.gateway, &squatted), "the squatter answers");
    assert_eq!(
        router_entry(&lan, &squatted).as_deref(),
        Some(squatter_mac.as_str())
    );

    let state = State::new();
    let c = conf(&state, json!({}));
    let pod = lan.pod("esphome");
    let env = Env::new(&lan.node.ns, &pod, "ctr-squat-1").k8s("home-assistant", "esphome-0");
    let r = cni(&iotlan_bin(), "ADD", &env, &c).expect_ok();
    let got = first_ip(&r).to_string();
    assert_ne!(got, squatted, "the squatted address was skipped");
    assert!(state.leases().iter().all(|l| l.ip.to_string() != squatted));
    assert!(ping(&lan.gateway, &got), "the pod answers at {got}");
    // The probe taught the router nothing: its entry still names the squatter.
    assert_eq!(
        router_entry(&lan, &squatted).as_deref(),
        Some(squatter_mac.as_str())
    );
    assert!(ping(&lan.gateway, &squatted), "the squatter still answers");
    let record: Value = serde_json::from_slice(
        &std::fs::read(
            state
                .dir()
                .join("_conflicts/iot")
                .join(format!("{squatted}.json")),
        )
        .expect("the conflict is recorded"),
    )
    .expect("conflict JSON");
    assert_eq!(record["mac"], squatter_mac.as_str());
    cni(&iotlan_bin(), "DEL", &env, &c).expect_ok();
}

#[test]
fn a_reserved_address_in_use_fails_naming_the_mac_and_leaves_nothing() {
    if !ready() {
        return;
    }
    let mut lan = Lan::new("squatres");
    let squatter = lan.add_node("squatter");
    let squatter_mac = squatter.mac.clone();
    squatter
        .ns
        .ip(&["addr", "add", &format!("{HA_IP}/24"), "dev", "eth0"]);
    assert!(ping(&lan.gateway, HA_IP));
    let state = State::new();
    let c = conf(
        &state,
        json!({ "probe": { "gateway": true, "timeoutMs": 800 } }),
    );
    let pod = lan.pod("ha");
    let err = add(&lan, &pod, "ctr-squatres-1", &c).expect_err(115);
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.contains(&squatter_mac) && msg.contains(HA_IP), "{msg}");
    assert!(link(&pod, "net1").is_none(), "no net1 left behind");
    assert!(
        state.leases().is_empty(),
        "the reservation's lease was reverted"
    );
    // Neither the conflict check nor the gateway probe (which never ran) moved the router's entry.
    assert_eq!(
        router_entry(&lan, HA_IP).as_deref(),
        Some(squatter_mac.as_str())
    );
    del(&lan, &pod, "ctr-squatres-1", &c).expect_ok();
}

#[test]
fn a_sticky_restart_is_not_probed_again_and_a_first_address_is() {
    if !ready() {
        return;
    }
    let lan = Lan::new("sticky");
    let state = State::new();
    let c = conf(&state, json!({}));
    let pod = lan.pod("ha1");
    let first = add(&lan, &pod, "ctr-sticky-1", &c);
    first.expect_ok();
    assert!(
        first.stderr.contains("conflict check"),
        "a first-time address is probed"
    );
    del(&lan, &pod, "ctr-sticky-1", &c).expect_ok();
    drop(pod);
    let pod = lan.pod("ha2");
    let again = add(&lan, &pod, "ctr-sticky-2", &c);
    let r = again.expect_ok();
    assert_eq!(r["ips"][0]["address"], format!("{HA_IP}/24"));
    assert!(
        !again.stderr.contains("conflict check"),
        "the same identity's address is not probed again: {}",
        again.stderr
    );
    del(&lan, &pod, "ctr-sticky-2", &c).expect_ok();
}

#[test]
fn ipv6_duplicate_address_detection_stays_on_and_finds_a_squatter() {
    if !ready() {
        return;
    }
    let mut lan = Lan::new("dad6");
    let squatter = lan.add_node("squatter6");
    squatter
        .ns
        .ip(&["-6", "addr", "add", "fd77::10/64", "dev", "eth0", "nodad"]);
    let pod = lan.pod("ha");
    let state = State::new();
    let mut ipam = ipam(&state);
    ipam["ipv6"] = json!({ "subnet": "fd77::/64", "pool": ["fd77::100-fd77::150"] });
    ipam["reservations"] = json!({ "home-assistant/home-assistant-0": [HA_IP, "fd77::10"] });
    let c = conf(&state, json!({ "ipam": ipam }));
    add(&lan, &pod, "ctr-dad6-1", &c).expect_ok();
    // The kernel's DAD (optimistic: the address was usable at once) marks the duplicate.
    let failed = (0..50).any(|_| {
        let out = pod.ip(&["-6", "addr", "show", "dev", "net1"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("fd77::10/64") && text.contains("dadfailed") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    assert!(failed, "DAD marks fd77::10 dadfailed on net1");
    del(&lan, &pod, "ctr-dad6-1", &c).expect_ok();
}
