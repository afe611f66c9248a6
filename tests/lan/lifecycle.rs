//! One address, one pod, on the simulated LAN: the lifecycle paths kubelet, Multus and runtimes
//! really take. Each test reproduces a defect measured on an earlier main and asserts what a user
//! would check: the address inside each pod's namespace, the leases, and what the next pod gets.

use std::net::IpAddr;

use iotlan_tests::*;
use serde_json::{json, Value};

use iotlan_tests::network::*;

const ESP: (&str, &str) = ("iot", "esphome-0");

fn esp_env(lan: &Lan, pod: &Netns, cid: &str) -> Env {
    Env::new(&lan.node.ns, pod, cid).k8s(ESP.0, ESP.1)
}

fn net1_ip(pod: &Netns) -> Option<IpAddr> {
    ipv4_addrs(pod, "net1").first().map(|a| IpAddr::V4(*a))
}

fn holders(state: &State) -> Vec<(String, String)> {
    state
        .leases()
        .iter()
        .map(|l| (l.ip.to_string(), l.container_id.clone()))
        .collect()
}

/// Defect 1: a pod (a StatefulSet's, same name) is ADDed again on the node while its previous sandbox
/// still runs. The new ADD must neither take the address from the live sandbox nor release it on its
/// way out: it answers 11 and the address stays on exactly one device.
#[test]
fn a_restart_while_the_old_sandbox_lives_never_puts_the_address_on_two_pods() {
    if !ready() {
        return;
    }
    let lan = Lan::new("restart");
    let state = State::new();
    let c = conf(&state, json!({}));
    let old = lan.pod("esp-old");
    cni(&iotlan_bin(), "ADD", &esp_env(&lan, &old, "ctr-old"), &c).expect_ok();
    let ip = net1_ip(&old).expect("the first sandbox has its address");

    let new = lan.pod("esp-new");
    let err = cni(&iotlan_bin(), "ADD", &esp_env(&lan, &new, "ctr-new"), &c).expect_err(11);
    let msg = err["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("ctr-old") && msg.contains(&ip.to_string()),
        "names the live sandbox: {msg}"
    );
    assert!(link(&new, "net1").is_none(), "the new sandbox got no link");
    assert_eq!(net1_ip(&old), Some(ip), "the old sandbox keeps its address");
    assert_eq!(
        holders(&state),
        vec![(ip.to_string(), "ctr-old".to_string())]
    );
    // The next pod that asks for that address is refused: it is held.
    let other = lan.pod("other");
    let want = conf(
        &state,
        json!({ "runtimeConfig": { "ips": [format!("{ip}/24")] } }),
    );
    cni(
        &iotlan_bin(),
        "ADD",
        &Env::new(&lan.node.ns, &other, "ctr-other").k8s("iot", "other-0"),
        &want,
    )
    .expect_err(111);

    // The old sandbox goes away without a DEL (a lost DEL, Multus thick dropping its error): the
    // namespace is gone, so the address may move to the new sandbox, and stays sticky.
    drop(old);
    let r = cni(&iotlan_bin(), "ADD", &esp_env(&lan, &new, "ctr-new"), &c).expect_ok();
    assert_eq!(net1_ip(&new), Some(ip), "{r}");
    assert_eq!(
        holders(&state),
        vec![(ip.to_string(), "ctr-new".to_string())]
    );
    // The old container's late DEL finds the address no longer its own and leaves it alone.
    cni(
        &iotlan_bin(),
        "DEL",
        &esp_env(&lan, &new, "ctr-old").netns(""),
        &c,
    )
    .expect_ok();
    assert_eq!(
        holders(&state),
        vec![(ip.to_string(), "ctr-new".to_string())]
    );
    assert_eq!(net1_ip(&new), Some(ip));
}

/// Defect 1, the rollback: an ADD that took over an address (old sandbox gone) and then failed puts
/// the old lease back instead of freeing the address.
#[test]
fn a_failed_add_after_a_takeover_puts_the_old_lease_back() {
    if !ready() {
        return;
    }
    let lan = Lan::new("rollback");
    let state = State::new();
    let c = conf(&state, json!({}));
    let old = lan.pod("esp-old");
    cni(&iotlan_bin(), "ADD", &esp_env(&lan, &old, "ctr-old"), &c).expect_ok();
    let ip = net1_ip(&old).expect("address");
    drop(old);
    // The new sandbox already has a net1 of its own (not ours): the ADD fails with 103 after the
    // allocation took the address over.
    let new = lan.pod("esp-new");
    new.ip(&[
        "link", "add", "net1", "type", "veth", "peer", "name", "peer1",
    ]);
    cni(&iotlan_bin(), "ADD", &esp_env(&lan, &new, "ctr-new"), &c).expect_err(103);
    assert_eq!(
        holders(&state),
        vec![(ip.to_string(), "ctr-old".to_string())],
        "the taken-over lease is back with its old holder, never free"
    );
    assert_eq!(
        link(&new, "net1").and_then(|l| l.kind).as_deref(),
        Some("veth")
    );
}

/// Defect 2: a runtime retries ADD for the same container and ifname (after a timeout). The retry
/// fails with 103 and must leave the working net1 and its lease alone.
#[test]
fn a_repeated_add_leaves_the_working_attachment_alone() {
    if !ready() {
        return;
    }
    let lan = Lan::new("again");
    let state = State::new();
    let pod = lan.pod("ha");
    let c = conf(&state, json!({}));
    let first = add(&lan, &pod, "ctr-ha", &c).expect_ok();
    let before = link(&pod, "net1").expect("net1");
    add(&lan, &pod, "ctr-ha", &c).expect_err(103);
    let after = link(&pod, "net1").expect("net1 survives the retried ADD");
    assert_eq!((after.mac, after.kind), (before.mac, before.kind));
    assert_eq!(
        ipv4_addrs(&pod, "net1"),
        vec![HA_IP.parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(
        holders(&state),
        vec![(HA_IP.to_string(), "ctr-ha".to_string())]
    );
    let mut check: Value = serde_json::from_str(&c).unwrap();
    check["prevResult"] = first;
    cni(
        &iotlan_bin(),
        "CHECK",
        &Env::new(&lan.node.ns, &pod, "ctr-ha").k8s(HA.0, HA.1),
        &check.to_string(),
    )
    .expect_ok();
    del(&lan, &pod, "ctr-ha", &c).expect_ok();
    assert!(state.leases().is_empty());
}

/// Defect 3: DEL reads only what it needs. A config ADD would refuse today, or a CNI_NETNS that is
/// not a namespace, still frees the lease, so the pod never sticks in Terminating.
#[test]
fn del_with_a_changed_config_or_a_non_namespace_netns_still_frees_the_address() {
    if !ready() {
        return;
    }
    let lan = Lan::new("lenient");
    let state = State::new();
    let pod = lan.pod("ha");
    let c = conf(&state, json!({}));
    add(&lan, &pod, "ctr-a", &c).expect_ok();
    let changed = conf(
        &state,
        json!({ "driver": "macvlan-fancy", "mtu": "big", "announce": { "count": -1 } }),
    );
    del(&lan, &pod, "ctr-a", &changed).expect_ok();
    assert!(link(&pod, "net1").is_none(), "the link is gone");
    assert!(state.leases().is_empty(), "the lease is free");

    // The runtime unmounted the sandbox's namespace and left the file it was bound to.
    let gone = lan.pod("ha-gone");
    add(&lan, &gone, "ctr-b", &c).expect_ok();
    drop(gone);
    let not_a_netns = tempfile::NamedTempFile::new().expect("temp file");
    let path = not_a_netns.path().to_str().expect("utf-8 path");
    cni(
        &iotlan_bin(),
        "DEL",
        &Env::new(&lan.node.ns, &pod, "ctr-b")
            .k8s(HA.0, HA.1)
            .netns(path),
        &c,
    )
    .expect_ok();
    assert!(state.leases().is_empty(), "the lease is free");
    // The next pod gets the reserved address again.
    let next = lan.pod("ha2");
    add(&lan, &next, "ctr-c", &c).expect_ok();
    assert_eq!(
        ipv4_addrs(&next, "net1"),
        vec![HA_IP.parse::<std::net::Ipv4Addr>().unwrap()]
    );
}

/// DEL with the cluster store and an unreachable API server takes the link off at once; only the
/// release is left for the runtime's retry (code 11).
#[test]
fn del_with_an_unreachable_cluster_store_still_removes_the_link() {
    if !ready() {
        return;
    }
    let lan = Lan::new("unreach");
    let state = State::new();
    let pod = lan.pod("ha");
    add(&lan, &pod, "ctr-a", &conf(&state, json!({}))).expect_ok();
    let kubeconfig = state.dir().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"http://127.0.0.1:9\"}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    )
    .expect("kubeconfig");
    let mut cluster: Value = serde_json::from_str(&conf(&state, json!({}))).unwrap();
    cluster["ipam"]["store"] =
        json!({ "kind": "kubernetes", "kubeconfig": kubeconfig, "timeoutMs": 500 });
    del(&lan, &pod, "ctr-a", &cluster.to_string()).expect_err(11);
    assert!(link(&pod, "net1").is_none(), "the link came off anyway");
}

/// Defect 4: every wait in the config has a bound, and every path is absolute; a refused config
/// leaves nothing behind.
#[test]
fn config_waits_are_bounded_and_paths_absolute() {
    if !ready() {
        return;
    }
    let lan = Lan::new("bounds");
    let state = State::new();
    let pod = lan.pod("ha");
    let cwd = tempfile::tempdir().expect("cwd");
    for (extra, field) in [
        (
            json!({ "announce": { "count": 1_000_000, "intervalMs": 1_000_000 } }),
            "announce.count",
        ),
        (
            json!({ "announce": { "count": 3, "intervalMs": 1_000_000 } }),
            "announce.intervalMs",
        ),
        (
            json!({ "probe": { "gateway": true, "timeoutMs": 3_600_000 } }),
            "probe.timeoutMs",
        ),
        (json!({ "stateDir": "trace" }), "stateDir"),
        (json!({ "logFile": "iotlan.log" }), "logFile"),
    ] {
        let out = cni(
            &iotlan_bin(),
            "ADD",
            &Env::new(&lan.node.ns, &pod, "ctr-b")
                .k8s(HA.0, HA.1)
                .var("PWD", cwd.path().to_str().unwrap_or("/")),
            &conf(&state, extra.clone()),
        );
        let err = out.expect_err(7);
        assert!(
            err["msg"].as_str().unwrap_or_default().contains(field),
            "{extra}: {err}"
        );
        assert!(link(&pod, "net1").is_none(), "{extra}: no link");
        assert!(state.leases().is_empty(), "{extra}: no lease");
    }
    for (store, field) in [
        (
            json!({ "kind": "file", "dir": "relative/dir" }),
            "store.dir",
        ),
        (
            json!({ "kind": "file", "dir": state.dir(), "lockTimeoutMs": 86_400_000 }),
            "store.lockTimeoutMs",
        ),
    ] {
        let mut c: Value = serde_json::from_str(&conf(&state, json!({}))).unwrap();
        c["ipam"]["store"] = store;
        let err = add(&lan, &pod, "ctr-b", &c.to_string()).expect_err(7);
        assert!(
            err["msg"].as_str().unwrap_or_default().contains(field),
            "{err}"
        );
        assert!(link(&pod, "net1").is_none());
    }
    assert!(!std::path::Path::new("trace").exists() && !std::path::Path::new("relative").exists());
}

/// Defect 5: the lease records the Kubernetes node name (here as Multus thick passes it), not the
/// host name, which `--hostname-override` and cloned Pi images make wrong.
#[test]
fn leases_record_the_kubernetes_node_name() {
    if !ready() {
        return;
    }
    let lan = Lan::new("nodename");
    let state = State::new();
    let pod = lan.pod("ha");
    let c = conf(&state, json!({}));
    cni(
        &iotlan_bin(),
        "ADD",
        &Env::new(&lan.node.ns, &pod, "ctr-a")
            .k8s(HA.0, HA.1)
            .var("MULTUS_NODE_NAME", "pi-radio-1"),
        &c,
    )
    .expect_ok();
    let leases = state.leases();
    assert_eq!(leases[0].node.as_deref(), Some("pi-radio-1"));
    let pod_uid = k8s_args(HA.0, HA.1, "ctr-a");
    assert!(
        leases[0]
            .sandbox
            .pod_uid
            .as_deref()
            .is_some_and(|u| pod_uid.contains(u)),
        "the pod UID is recorded: {:?}",
        leases[0].sandbox
    );
    assert_eq!(
        leases[0].sandbox.netns.as_deref(),
        Some(pod.path().to_str().unwrap_or_default())
    );
    del(&lan, &pod, "ctr-a", &c).expect_ok();
}

/// Two attachments of one network in one pod (`net1`, `net2`) get their own MAC and address; `net1`
/// keeps the MAC and address it had before second interfaces were keyed apart.
#[test]
fn two_interfaces_of_one_network_get_their_own_mac_and_address() {
    if !ready() {
        return;
    }
    let lan = Lan::new("twoif");
    let state = State::new();
    let pod = lan.pod("ha");
    let c = conf(&state, json!({}));
    add(&lan, &pod, "ctr-a", &c).expect_ok();
    let env2 = Env::new(&lan.node.ns, &pod, "ctr-a")
        .k8s(HA.0, HA.1)
        .ifname("net2");
    cni(&iotlan_bin(), "ADD", &env2, &c).expect_ok();
    let (n1, n2) = (link(&pod, "net1").unwrap(), link(&pod, "net2").unwrap());
    assert_ne!(n1.mac, n2.mac);
    assert_eq!(
        ipv4_addrs(&pod, "net1"),
        vec![HA_IP.parse::<std::net::Ipv4Addr>().unwrap()],
        "net1 keeps the reservation"
    );
    let a2 = ipv4_addrs(&pod, "net2");
    assert_eq!(a2.len(), 1);
    assert_ne!(a2[0].to_string(), HA_IP);
    // net2's address is sticky under its own identity.
    cni(&iotlan_bin(), "DEL", &env2, &c).expect_ok();
    cni(&iotlan_bin(), "ADD", &env2, &c).expect_ok();
    assert_eq!(ipv4_addrs(&pod, "net2"), a2);
    let ids: Vec<String> = state.leases().iter().map(|l| l.identity.clone()).collect();
    assert!(
        ids.contains(&"home-assistant/home-assistant-0@net2".to_string()),
        "{ids:?}"
    );
}

/// A dual-stack pool whose IPv4 half is exhausted cannot serve an ADD: STATUS says so.
#[test]
fn status_fails_when_one_family_of_a_dual_stack_pool_is_exhausted() {
    if !ready() {
        return;
    }
    let lan = Lan::new("dsstatus");
    let state = State::new();
    let pod = lan.pod("esp");
    let mut c: Value =
        serde_json::from_str(&conf(&state, json!({ "cniVersion": "1.1.0" }))).unwrap();
    c["ipam"]["pool"] = json!(["10.77.0.100"]);
    c["ipam"]["reservations"] = json!({});
    c["ipam"]["ipv6"] = json!({ "subnet": "fd77::/64", "pool": ["fd77::100-fd77::1ff"] });
    let c = c.to_string();
    let node_env = || Env::new(&lan.node.ns, &pod, "unused");
    cni(&iotlan_bin(), "STATUS", &node_env(), &c).expect_ok();
    cni(&iotlan_bin(), "ADD", &esp_env(&lan, &pod, "ctr-a"), &c).expect_ok();
    let err = cni(&iotlan_bin(), "STATUS", &node_env(), &c).expect_err(50);
    assert!(
        err["msg"].as_str().unwrap_or_default().contains("IPv4"),
        "{err}"
    );
}
