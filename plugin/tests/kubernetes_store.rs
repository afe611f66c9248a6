//! The `iotlan-ipam` binary with `"store": {"kind": "kubernetes"}`, exec'd as a CNI runtime does,
//! against the API server test double (tests/apiserver (the iotlan-apiserver-double crate)): two "nodes" share the pool,
//! DEL frees, GC frees what is not valid, and an unreachable API server is CNI code 11.
//!
//! Run: `cargo test -p iotlan --test kubernetes_store`. Needs no root (IPAM touches no netns).
#![cfg(feature = "kubernetes")]

use iotlan_apiserver_double as apiserver;
#[path = "support/cni.rs"]
mod cni;
use iotlan_apiserver_double::rbac;

use std::path::Path;
use std::process::Output;

use serde_json::{json, Value};

const NS: &str = "iotlan-system";

fn config(kubeconfig: &Path, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": "iot",
        "type": "iotlan-ipam",
        "ipam": {
            "type": "iotlan-ipam",
            "subnet": "192.168.20.0/24",
            "gateway": "192.168.20.1",
            "pool": ["192.168.20.210-192.168.20.239"],
            "reservations": { "home-assistant/home-assistant-0": "192.168.20.205" },
            "store": { "kind": "kubernetes", "namespace": NS, "kubeconfig": kubeconfig, "timeoutMs": 2000,
                       "stateDir": kubeconfig.parent().map(|d| d.join("state")) }
        }
    });
    if let Some(o) = extra.as_object() {
        for (k, v) in o {
            c[k] = v.clone();
        }
    }
    c
}

fn cni(cmd: &str, conf: &Value, cid: &str, pod: &str) -> Output {
    cni::exec(cmd, conf, cid, pod)
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn address(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    json_out(o)["ips"][0]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_ipam_plugin_shares_one_pool_through_the_api() {
    let server = apiserver::ApiServer::start();
    server.set_token(Some("tok"));
    server.enforce(rbac::shipped_rules());
    let dir = tempfile::tempdir().unwrap();
    let kc = server.kubeconfig(dir.path(), NS, "tok");
    let conf = config(&kc, json!({}));

    assert_eq!(
        address(&cni("ADD", &conf, "ha1", "home-assistant/home-assistant-0")),
        "192.168.20.205/24"
    );
    let a = address(&cni("ADD", &conf, "c1", "iot/esphome-0"));
    let b = address(&cni("ADD", &conf, "c2", "media/jellyfin-0"));
    assert_ne!(a, b);
    // The reservation is held by an API object: another sandbox asking for it is refused, naming the holder.
    let mut req = conf.clone();
    req["runtimeConfig"] = json!({ "ips": ["192.168.20.205/24"] });
    let o = cni("ADD", &req, "x1", "ns/intruder-0");
    assert!(!o.status.success());
    let err = json_out(&o);
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or("")
            .contains("home-assistant/home-assistant-0")
            || err["details"]
                .as_str()
                .unwrap_or("")
                .contains("home-assistant/home-assistant-0"),
        "{err}"
    );

    // DEL frees the object, is idempotent; the pod comes back to the same address (sticky).
    assert!(cni("DEL", &conf, "c1", "iot/esphome-0").status.success());
    assert!(cni("DEL", &conf, "c1", "iot/esphome-0").status.success());
    assert_eq!(address(&cni("ADD", &conf, "c1b", "iot/esphome-0")), a);

    // GC (CNI 1.1) frees every lease not listed as valid (of any age, here).
    let mut gc = conf.clone();
    gc["ipam"]["store"]["gcGraceSeconds"] = json!(0);
    gc["cni.dev/valid-attachments"] = json!([
        { "containerID": "ha1", "ifname": "net1" },
        { "containerID": "c1b", "ifname": "net1" }
    ]);
    let o = cni("GC", &gc, "gc", "ns/gc");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let held: Vec<String> = server
        .leases(NS)
        .iter()
        .filter(|l| l["metadata"]["labels"]["iotlan/kind"] == "address")
        .map(|l| {
            l["metadata"]["annotations"]["iotlan/container-id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(held.contains(&"ha1".to_string()) && held.contains(&"c1b".to_string()));
}

#[test]
fn an_unreachable_api_server_is_cni_code_11() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kc = dir.path().join("kc");
    apiserver::write_kubeconfig(&kc, &format!("http://127.0.0.1:{port}"), NS, "tok");
    for cmd in ["ADD", "DEL"] {
        let o = cni(cmd, &config(&kc, json!({})), "c1", "ns/p-0");
        assert!(!o.status.success(), "{cmd} succeeded without an API server");
        let err = json_out(&o);
        assert_eq!(err["code"], 11, "{cmd}: {err}");
    }
    // No kubeconfig yet (the DaemonSet has not run on this node): also try-again-later.
    let o = cni(
        "ADD",
        &config(&dir.path().join("missing"), json!({})),
        "c1",
        "ns/p-0",
    );
    assert_eq!(json_out(&o)["code"], 11);
}

/// A kubeconfig for `server` in its own dir with the node agent's `node-name` file beside it: the
/// plugin run with it records `node` in its leases.
fn node_kubeconfig(server: &apiserver::ApiServer, root: &Path, node: &str) -> std::path::PathBuf {
    let dir = root.join(node).join("iotlan.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("node-name"), format!("{node}\n")).unwrap();
    server.kubeconfig(&dir, NS, "tok")
}

#[test]
fn a_pod_recreated_on_another_node_waits_for_the_old_node_to_be_lost() {
    let server = apiserver::ApiServer::start();
    server.set_token(Some("tok"));
    server.enforce(rbac::shipped_rules());
    let root = tempfile::tempdir().unwrap();
    let on_b = config(&node_kubeconfig(&server, root.path(), "node-b"), json!({}));
    let on_a = config(&node_kubeconfig(&server, root.path(), "node-a"), json!({}));
    let pod = "iot/esphome-0";
    let old = address(&cni("ADD", &on_b, "old", pod));
    let node_of = |cid: &str| -> Vec<String> {
        server
            .leases(NS)
            .iter()
            .filter(|l| l["metadata"]["annotations"]["iotlan/container-id"] == cid)
            .map(|l| {
                l["metadata"]["annotations"]["iotlan/node"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    assert_eq!(node_of("old"), ["node-b"]);

    // Node B is Ready: its sandbox may still carry the address. Try again later (code 11).
    server.put_node("node-b", "True", 3600);
    let o = cni("ADD", &on_a, "new", pod);
    assert!(!o.status.success());
    let err = json_out(&o);
    assert_eq!(err["code"], 11, "{err}");
    assert!(err.to_string().contains("node-b"), "{err}");
    assert_eq!(node_of("old"), ["node-b"]);
    assert!(node_of("new").is_empty());

    // Node B went NotReady more than the grace ago: lost. The pod's new sandbox gets its address.
    server.put_node("node-b", "Unknown", 600);
    assert_eq!(address(&cni("ADD", &on_a, "new", pod)), old);
    assert_eq!(node_of("new"), ["node-a"]);
    assert!(node_of("old").is_empty());
    // The old sandbox's DEL, when node B comes back, leaves the new one's address alone.
    assert!(cni("DEL", &on_b, "old", pod).status.success());
    assert_eq!(node_of("new"), ["node-a"]);
}
