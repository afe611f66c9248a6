//! The operator CLI against a cluster store, where a user runs it: from a workstation (only the
//! user's `KUBECONFIG` or `--kubeconfig`) and from the iotlan DaemonSet's pod (in-cluster: the pod's
//! ServiceAccount at its fixed path and KUBERNETES_SERVICE_HOST/PORT, over TLS with the
//! ServiceAccount's CA). The API server is the test double (tests/apiserver (the iotlan-apiserver-double crate)); the
//! leases come from `iotlan-ipam` ADDs exec'd as a CNI runtime does.
//!
//! Run: `cargo test -p iotlan --test cli`. The pod case needs root (a private mount namespace puts
//! the ServiceAccount at /var/run/secrets/kubernetes.io/serviceaccount) and the openssl command;
//! without them it prints SKIP (and fails under CI=true).
#![cfg(feature = "kubernetes")]

use iotlan_apiserver_double as apiserver;
use iotlan_apiserver_double::rbac;
use iotlan_apiserver_double::tls;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const IOTLAN: &str = env!("CARGO_BIN_EXE_iotlan");
const IPAM: &str = env!("CARGO_BIN_EXE_iotlan-ipam");
const NS: &str = "iotlan-system";
const NODE_KUBECONFIG: &str = "/etc/cni/net.d/iotlan.d/iotlan.kubeconfig";

/// A NAD config with the kubernetes store and no kubeconfig of its own, as users write them.
fn config() -> Value {
    json!({
        "cniVersion": "1.1.0", "name": "iot", "type": "iotlan",
        "ipam": { "type": "iotlan-ipam", "subnet": "192.168.20.0/24", "gateway": "192.168.20.1",
                  "pool": ["192.168.20.210-192.168.20.239"],
                  "store": { "kind": "kubernetes", "namespace": NS, "timeoutMs": 5000 } }
    })
}

fn skip(why: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("requirement missing under CI=true: {why}");
    }
    eprintln!("SKIP: {why}");
    false
}

/// `iotlan-ipam` ADD for pod `ns/name` through `kubeconfig`; returns the address.
fn add(kubeconfig: &Path, cid: &str, pod: &str) -> String {
    add_asking(kubeconfig, cid, pod, None)
}

/// The node-local records of the ADDs through `kubeconfig` (the store's `stateDir`): beside it,
/// never the host's.
fn state_dir(kubeconfig: &Path) -> PathBuf {
    kubeconfig.parent().unwrap().join("state")
}

/// [`add`], asking for `ip` (`runtimeConfig.ips`) when given.
fn add_asking(kubeconfig: &Path, cid: &str, pod: &str, ip: Option<&str>) -> String {
    let (ns, name) = pod.split_once('/').unwrap();
    let mut conf = config();
    conf["ipam"]["store"]["kubeconfig"] = json!(kubeconfig);
    conf["ipam"]["store"]["stateDir"] = json!(state_dir(kubeconfig));
    if let Some(ip) = ip {
        conf["runtimeConfig"] = json!({ "ips": [format!("{ip}/24")] });
    }
    let mut child = Command::new(IPAM)
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/var/run/netns/does-not-matter")
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "ADD {pod}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let result: Value = serde_json::from_slice(&o.stdout).unwrap();
    let address = result["ips"][0]["address"].as_str().unwrap_or("");
    address.split('/').next().unwrap_or("").to_string()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The lease rows of `leases` output: (address, pod, container).
fn rows(o: &Output) -> Vec<(String, String, String)> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with("192.168.20."))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

/// A workstation: this machine must not be a node (no agent kubeconfig), or the node's would win.
fn on_a_workstation() -> bool {
    !Path::new(NODE_KUBECONFIG).exists()
        || skip(&format!(
            "{NODE_KUBECONFIG} exists: this machine is a node, not a workstation"
        ))
}

#[test]
fn from_a_workstation_with_kubeconfig_env_or_flag() {
    if !on_a_workstation() {
        return;
    }
    let server = apiserver::ApiServer::start();
    server.set_token(Some("tok"));
    let dir = tempfile::tempdir().unwrap();
    let kc = server.kubeconfig(dir.path(), NS, "tok");
    add(&kc, "c-ha", "home-assistant/home-assistant-0");
    add(&kc, "c-esp", "iot/esphome-0");
    let conf = dir.path().join("nad.json");
    std::fs::write(&conf, config().to_string()).unwrap();

    // kubectl's habit: KUBECONFIG names the cluster; HOME has no ~/.kube.
    let o = Command::new(IOTLAN)
        .env_clear()
        .env("KUBECONFIG", &kc)
        .env("HOME", dir.path())
        .args(["leases", &format!("--config={}", conf.display())])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let r = rows(&o);
    assert_eq!(r.len(), 2, "{}", text(&o));
    let pods: Vec<&str> = r.iter().map(|(_, p, _)| p.as_str()).collect();
    assert!(
        pods.contains(&"home-assistant/home-assistant-0") && pods.contains(&"iot/esphome-0"),
        "{}",
        text(&o)
    );
    assert!(r.iter().any(|(_, _, c)| c == "c-ha"), "{}", text(&o));

    // `--kubeconfig` (also relative to the working directory), as `kubectl iotlan`, config on stdin.
    let link = dir.path().join("kubectl-iotlan");
    std::os::unix::fs::symlink(IOTLAN, &link).unwrap();
    let mut child = Command::new(&link)
        .env_clear()
        .env("HOME", dir.path())
        .current_dir(dir.path())
        .args(["status", "--config", "-", "--kubeconfig"])
        .arg(kc.file_name().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config().to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("network iot: 2 held, 28 free of 30"),
        "{}",
        text(&o)
    );

    // Neither: the error says what to give, instead of naming a node path.
    let o = Command::new(IOTLAN)
        .env_clear()
        .env("HOME", dir.path())
        .args(["leases", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--kubeconfig"),
        "{}",
        text(&o)
    );
}

#[test]
fn from_the_daemonsets_pod_with_its_serviceaccount() {
    if !nix::unistd::geteuid().is_root() {
        skip("needs root: a private mount namespace for the pod's ServiceAccount path");
        return;
    }
    if !tls::openssl_available() {
        skip("the openssl command is missing (certificates for the TLS front)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = apiserver::ApiServer::start();
    server.set_token(Some("sa-token"));
    let front = tls::TlsFront::start(server.handle(), dir.path());
    // The leases exist already (made by the plugin on some node, through its own kubeconfig).
    let kc = server.kubeconfig(dir.path(), NS, "sa-token");
    add(&kc, "c-ha", "home-assistant/home-assistant-0");

    // The pod's ServiceAccount files, mounted where kubelet mounts them, in a private mount namespace.
    let sa: PathBuf = dir.path().join("sa");
    std::fs::create_dir(&sa).unwrap();
    std::fs::write(sa.join("token"), "sa-token").unwrap();
    std::fs::write(sa.join("ca.crt"), &front.ca_pem).unwrap();
    std::fs::write(sa.join("namespace"), NS).unwrap();
    let port = front.url().rsplit(':').next().unwrap().to_string();
    let script = format!(
        "set -e; mount --make-rprivate /; mount -t tmpfs tmpfs /run; \
         mkdir -p /run/secrets/kubernetes.io/serviceaccount; \
         mount --bind {sa} /run/secrets/kubernetes.io/serviceaccount; \
         exec {IOTLAN} leases --config -",
        sa = sa.display()
    );
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", &port)
        .env("NODE_NAME", "pi-1")
        .env("HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config().to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let r = rows(&o);
    assert_eq!(r.len(), 1, "{}", text(&o));
    assert_eq!(r[0].1, "home-assistant/home-assistant-0", "{}", text(&o));
    // (The double answers 401 without the ServiceAccount's token, and TLS was verified with its CA.)
    // The node is the DaemonSet's NODE_NAME, not the pod's host name.
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("node pi-1\n"),
        "{}",
        text(&o)
    );
}

/// The node agent's re-assert pass finds an address its node's pod carries held by another pod in
/// the store (the Leases were lost, and a new pod asked for that address before the agent ran): a
/// duplicate, posted as a `DuplicateAddress` Event. `iotlan status` shows it, as a table and in the
/// JSON, reading the Events as the shipped ServiceAccount may.
#[test]
fn status_shows_the_duplicate_address_the_reassert_pass_reported() {
    let server = apiserver::ApiServer::start();
    server.set_token(Some("tok"));
    server.enforce(rbac::shipped_rules());
    let dir = tempfile::tempdir().unwrap();
    let kc = server.kubeconfig(dir.path(), NS, "tok");
    let ip = add(&kc, "c-z2m", "home-assistant/zigbee2mqtt-0");
    server.delete_all_leases(NS);
    assert_eq!(
        add_asking(&kc, "c-other", "iot/other-0", Some(&ip)),
        ip,
        "the new pod got the address the first one still carries"
    );
    let report = iotlan_agent::reassert::Reasserter::new(&kc, Some(NS), &state_dir(&kc))
        .unwrap()
        .run_once()
        .unwrap();
    assert_eq!(report.duplicates.len(), 1, "{report}");
    assert_eq!(server.events().len(), 1);

    let conf = dir.path().join("nad.json");
    std::fs::write(&conf, config().to_string()).unwrap();
    let status = |json: bool| {
        let mut c = Command::new(IOTLAN);
        c.env_clear()
            .env("HOME", dir.path())
            .env("NODE_NAME", "pi-1")
            .arg("status")
            .arg(format!("--config={}", conf.display()))
            .arg(format!("--kubeconfig={}", kc.display()))
            .arg(format!("--state-dir={}", state_dir(&kc).display()));
        if json {
            c.arg("--json");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        o
    };

    let o = status(false);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("DUPLICATE ADDRESSES reported by the node agents (DuplicateAddress Events in iotlan-system):"),
        "{}",
        text(&o)
    );
    let lease = format!("iot.{}", ip.replace('.', "-"));
    let row = out
        .lines()
        .find(|l| l.starts_with(&ip) && l.contains(&lease))
        .unwrap_or_else(|| panic!("no duplicate row for {ip}: {}", text(&o)));
    let f: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&f[..3], [ip.as_str(), lease.as_str(), "1"], "{row}");
    assert!(
        row.contains("DUPLICATE ADDRESS") && row.contains("c-z2m") && row.contains("c-other"),
        "{row}"
    );
    // This node's conflict records were readable (none), which is not the same as unknown.
    assert!(out.contains("conflicts on node pi-1: none"), "{}", text(&o));

    let v: Value = serde_json::from_slice(&status(true).stdout).unwrap();
    let d = &v["networks"][0]["duplicates"];
    assert_eq!(d.as_array().map(Vec::len), Some(1), "{v:#}");
    assert_eq!(d[0]["ip"], ip.as_str());
    assert_eq!(d[0]["lease"], lease.as_str());
    assert_eq!(d[0]["reason"], "DuplicateAddress");
    assert_eq!(d[0]["count"], 1);
    assert!(d[0]["lastUnix"].as_u64().is_some(), "{v:#}");
    assert!(
        d[0]["message"].as_str().unwrap_or("").contains("c-other"),
        "{v:#}"
    );
    assert_eq!(v["networks"][0]["conflicts"], json!([]), "{v:#}");
    assert!(server.denied().is_empty(), "{:?}", server.denied());

    // Events that cannot be read (RBAC without `list` on events): the leases are still shown, and
    // the duplicates are said to be unknown, never "none".
    server.forbid("/events");
    let o = status(false);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("network iot: 1 held"), "{}", text(&o));
    assert!(
        out.contains("duplicate addresses: unknown: cannot list the DuplicateAddress Events")
            && out.contains("403")
            && !out.contains("none reported"),
        "{}",
        text(&o)
    );
    let v: Value = serde_json::from_slice(&status(true).stdout).unwrap();
    assert!(v["networks"][0]["duplicates"].is_null(), "{v:#}");
    assert!(
        v["networks"][0]["duplicatesError"]
            .as_str()
            .is_some_and(|e| e.contains("403")),
        "{v:#}"
    );
}

/// A NAD whose config is a conflist (iotlan, then tuning): `validate`, `leases --config` and
/// `status --config -` read the iotlan plugin in it, as the manifests' README tells users to.
#[test]
fn status_and_leases_read_a_conflist_nad() {
    let dir = tempfile::tempdir().unwrap();
    let mut plugin = config();
    plugin["ipam"]["store"] = json!({ "kind": "file", "dir": dir.path().join("store") });
    let conflist = json!({
        "cniVersion": "1.0.0", "name": "iot",
        "plugins": [
            { "type": "iotlan", "ipam": plugin["ipam"].clone() },
            { "type": "tuning", "sysctl": { "net.ipv4.conf.net1.arp_notify": "1" } }
        ]
    });
    let path = dir.path().join("nad.json");
    std::fs::write(&path, conflist.to_string()).unwrap();
    // One lease, as the IPAM plugin grants it.
    let mut child = Command::new(IPAM)
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c-ha")
        .env("CNI_NETNS", "/var/run/netns/does-not-matter")
        .env("CNI_IFNAME", "net1")
        .env(
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=home-assistant;K8S_POD_NAME=home-assistant-0",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut one = plugin.clone();
    one["name"] = json!("iot");
    one["cniVersion"] = json!("1.0.0");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(one.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));

    let o = Command::new(IOTLAN)
        .args(["validate"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new(IOTLAN)
        .args(["leases", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let r = rows(&o);
    assert_eq!(r.len(), 1, "{}", text(&o));
    assert_eq!(r[0].1, "home-assistant/home-assistant-0", "{}", text(&o));
    let mut child = Command::new(IOTLAN)
        .args(["status", "--config", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conflist.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("network iot: 1 held, 29 free of 30"),
        "{}",
        text(&o)
    );
}
