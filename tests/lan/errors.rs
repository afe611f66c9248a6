//! Bad input on the simulated LAN: every malformed config, environment or missing kernel feature gets its CNI
//! error code and a message naming what to fix, and leaves nothing behind.

use iotlan_tests::*;
use serde_json::{json, Value};

use iotlan_tests::network::*;

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
