//! The plugin's credentials outlive the node agent's pod.
//!
//! The real `iotlan install` runs as the DaemonSet's pod on a fake node ([`crate::host::Host`]), with the
//! token kubelet projects into that pod: bound to the pod, so the API server (the double,
//! tests/apiserver/src/tokens.rs, as the real one) refuses it once the pod object is
//! deleted. The plugin (`iotlan-ipam`, exec'd as a runtime does) reaches the API server with the
//! kubeconfig the agent wrote. After the agent's pod is deleted and the agent is gone (an uninstall,
//! an upgrade whose image never arrives, a rollout), the plugin's DEL and ADD must still work, for
//! the token's lifetime; after that they fail with code 11 and say what to do.
//!
//! Run: `cargo test -p iotlan-agent --test agent credentials`. Needs no root.

use iotlan_apiserver_double as apiserver;
use iotlan_apiserver_double::rbac;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use serde_json::{json, Value};

use crate::host::{read_kubeconfig, wait_for, Daemon, Flavor, Host, CA_PEM};
use apiserver::{ApiServer, RbacRule};

const NS: &str = "iotlan-system";
const SA: &str = "iotlan";
/// The agent's pod, as the DaemonSet names it.
const AGENT_POD: &str = "iotlan-x7k2p";
const DAY: u64 = 86_400;

/// A cluster with the iotlan ServiceAccount and the agent's pod on node-a, and that node.
struct Node {
    server: ApiServer,
    host: Host,
    /// The token kubelet projected into the agent's pod.
    projected: String,
    state: tempfile::TempDir,
}

impl Node {
    fn new(rules: Vec<RbacRule>) -> Node {
        let server = ApiServer::start();
        server.enforce(rules);
        server.create_service_account(NS, SA);
        server.add_pod_on(NS, AGENT_POD, Some("node-a"));
        let projected = server.projected_token(NS, SA, AGENT_POD);
        let host = Host::new(Flavor::Kubeadm);
        host.write_serviceaccount(&projected, CA_PEM);
        Node {
            server,
            host,
            projected,
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// kubelet rotates the agent pod's projected token.
    fn rotate(&mut self) {
        self.projected = self.server.projected_token(NS, SA, AGENT_POD);
        self.host.write_serviceaccount(&self.projected, CA_PEM);
    }

    /// The host path the agent writes the plugin's kubeconfig to, under the fake host root.
    fn kubeconfig(&self) -> PathBuf {
        self.host
            .root()
            .join("etc/cni/net.d/iotlan.d/iotlan.kubeconfig")
    }

    /// The token the kubeconfig carries now.
    /// The token of the plugin's kubeconfig, as kube reads it; `None` before the agent wrote one.
    fn plugin_token(&self) -> Option<String> {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).ok()?;
        let user = serde_json::to_value(kc.auth_infos.first()?.auth_info.clone()?).ok()?;
        user["token"].as_str().map(str::to_string)
    }

    fn agent(&self) -> Daemon {
        let api = self.server.url();
        let mut cmd = self.host.command(&[
            "--interval",
            "1",
            "--api-server",
            &api,
            "--reconcile-interval",
            "0",
        ]);
        let child = cmd
            .env("NODE_NAME", "node-a")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Daemon(Some(child))
    }

    /// The plugin's NAD config: the kubernetes store through the agent's kubeconfig.
    fn conf(&self) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "iot",
            "type": "iotlan-ipam",
            "ipam": {
                "type": "iotlan-ipam",
                "subnet": "192.168.20.0/24",
                "pool": ["192.168.20.210-192.168.20.239"],
                "store": { "kind": "kubernetes", "namespace": NS, "kubeconfig": self.kubeconfig(),
                           "timeoutMs": 2000, "stateDir": self.state.path() }
            }
        })
    }

    /// Execs `iotlan-ipam` as the runtime does on this node.
    fn cni(&self, cmd: &str, cid: &str, pod: &str) -> Output {
        crate::bins::exec_ipam(cmd, &self.conf(), cid, pod)
    }
}

fn ok(o: &Output, what: &str) -> Value {
    assert!(
        o.status.success(),
        "{what}: exit {:?}\nstdout {}\nstderr {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

fn address(o: &Output, what: &str) -> String {
    ok(o, what)["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no address"))
        .to_string()
}

fn lease_ips(server: &ApiServer) -> Vec<String> {
    let mut ips: Vec<String> = server
        .leases(NS)
        .iter()
        .filter(|o| o["metadata"]["labels"]["iotlan/kind"] == "address")
        .filter_map(|o| {
            o["metadata"]["annotations"]["iotlan/ip"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    ips.sort();
    ips
}

/// The shipped rules without `create` on `serviceaccounts/token`: the RBAC of an install from
/// before the agent asked for tokens.
fn rules_without_token_requests() -> Vec<RbacRule> {
    rbac::shipped_rules()
        .into_iter()
        .filter(|r| !r.resources.iter().any(|x| x == "serviceaccounts/token"))
        .collect()
}

fn log_of(daemon: Daemon) -> String {
    let o = daemon.terminate();
    let log = crate::host::stderr(&o);
    assert!(o.status.success(), "{log}");
    log
}

#[test]
fn the_plugin_keeps_working_for_the_tokens_lifetime_after_the_agents_pod_is_deleted() {
    let node = Node::new(rbac::shipped_rules());
    let daemon = node.agent();
    wait_for(20, "the agent to write the plugin's kubeconfig", || {
        node.plugin_token().is_some()
    });
    let esphome = address(&node.cni("ADD", "c1", "home/esphome-0"), "ADD esphome");
    let leases_before = lease_ips(&node.server);

    // `kubectl delete -k manifests/iotlan/base`: the agent's pod is deleted and the agent stops.
    node.server.delete_pod(NS, AGENT_POD);
    let log = log_of(daemon);
    // Its own, pod-bound token is refused from now on, as on a real API server.
    let (code, _) = node
        .server
        .raw(&node.projected, "GET", "/api/v1/nodes/node-a", None);
    assert_eq!(code, 401, "the agent pod's token outlived its pod");

    // The plugin on the node still frees what a pod going away held, and serves a new pod.
    ok(
        &node.cni("DEL", "c1", "home/esphome-0"),
        "DEL without the agent",
    );
    assert_eq!(
        lease_ips(&node.server).len(),
        leases_before.len() - 1,
        "the DEL freed esphome's {esphome}"
    );
    address(
        &node.cni("ADD", "c2", "home/jellyfin-0"),
        "ADD without the agent",
    );

    // What the agent asked for: a token of its ServiceAccount, bound to nothing else, for 24 h.
    let requests = node.server.token_requests();
    assert!(!requests.is_empty(), "no TokenRequest was made\n{log}");
    for r in &requests {
        assert!(r["spec"]["boundObjectRef"].is_null(), "{r}");
        assert_eq!(r["spec"]["expirationSeconds"], DAY, "{r}");
    }

    // Nearly a day later, the token still works ...
    node.server.advance_token_clock(DAY - 300);
    address(
        &node.cni("ADD", "c3", "home/music-0"),
        "ADD 23 h 55 min later",
    );
    // ... and once it has expired, the plugin fails with "try again later" and says what to do.
    node.server.advance_token_clock(600);
    let o = node.cni("ADD", "c4", "home/piper-0");
    assert!(!o.status.success());
    let err: Value = serde_json::from_slice(&o.stdout).expect("a CNI error on stdout");
    assert_eq!(err["code"], 11, "{err}");
    let msg = err["msg"].as_str().unwrap_or_default();
    for part in [
        "401",
        "expired",
        "iotlan agent",
        "kubectl -n iotlan-system get pods",
    ] {
        assert!(msg.contains(part), "{part:?} missing from {msg:?}");
    }
}

#[test]
fn a_refused_token_request_falls_back_to_the_pods_token_and_says_so_on_every_pass() {
    let node = Node::new(rules_without_token_requests());
    let daemon = node.agent();
    wait_for(20, "the agent to write the plugin's kubeconfig", || {
        node.plugin_token().is_some()
    });
    // Until the RBAC allows it, the plugin has the agent pod's own token: it works while the pod lives.
    assert_eq!(
        node.plugin_token().as_deref(),
        Some(node.projected.as_str())
    );
    address(&node.cni("ADD", "c1", "home/esphome-0"), "ADD");
    let refused = |s: &ApiServer| {
        s.denied()
            .iter()
            .filter(|(m, p)| m == "POST" && p.ends_with("/serviceaccounts/iotlan/token"))
            .count()
    };
    wait_for(20, "three refused TokenRequests", || {
        refused(&node.server) >= 3
    });

    // The RBAC is brought up to date (`kubectl apply -k manifests/iotlan/namespace`): the next
    // pass gets a token of the ServiceAccount.
    node.server.enforce(rbac::shipped_rules());
    wait_for(20, "a token from the TokenRequest API", || {
        node.plugin_token()
            .is_some_and(|t| t != node.projected && !t.is_empty())
    });
    let log = log_of(daemon);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .filter(|l| l.contains("serviceaccounts/token"))
        .collect();
    assert!(warnings.len() >= 3, "one warning per pass:\n{log}");
    for part in ["403", "this pod's own token", "manifests/iotlan/namespace"] {
        assert!(
            warnings[0].contains(part),
            "{part:?} missing: {}",
            warnings[0]
        );
    }
}

#[test]
fn the_token_is_renewed_and_a_failed_renewal_keeps_a_token_that_is_still_valid() {
    let mut node = Node::new(rbac::shipped_rules());
    // The API server caps tokens at an hour (--service-account-max-token-expiration): the agent
    // goes by the expiry it was granted, not the one it asked for.
    node.server.set_max_token_seconds(Some(3600));
    let daemon = node.agent();
    wait_for(20, "the first token", || {
        node.plugin_token().is_some_and(|t| t != node.projected)
    });
    let first = node.plugin_token().unwrap();
    let k = read_kubeconfig(&node.kubeconfig());
    let expires = k
        .expires_unix
        .unwrap_or_else(|| panic!("no expiry recorded in\n{}", k.text));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expires.abs_diff(now + 3600) < 120,
        "recorded expiry {expires}, now {now}"
    );

    // kubelet rotates the agent's own token (as it does hourly, and on a signing-key rotation):
    // the agent renews the plugin's at once.
    node.rotate();
    wait_for(20, "a renewed token", || {
        node.plugin_token().is_some_and(|t| t != first)
    });
    let renewed = node.plugin_token().unwrap();
    assert_ne!(renewed, node.projected);

    // The RBAC no longer allows it: a renewal fails, and the plugin keeps the token it has, which
    // outlives the agent's pod, instead of the pod's own.
    node.server.enforce(rules_without_token_requests());
    node.rotate();
    let denied_before = node.server.denied().len();
    wait_for(20, "a refused renewal", || {
        node.server.denied().len() > denied_before + 1
    });
    assert_eq!(node.plugin_token().as_deref(), Some(renewed.as_str()));
    let log = log_of(daemon);
    assert!(
        log.lines()
            .any(|l| l.contains("serviceaccounts/token") && l.contains("keeps the token")),
        "{log}"
    );

    // A restarted agent, still refused, keeps it too (the kubeconfig records its expiry).
    let denied_before = node.server.denied().len();
    let daemon = node.agent();
    wait_for(20, "the restarted agent's refused request", || {
        node.server.denied().len() > denied_before + 1
    });
    assert_eq!(node.plugin_token().as_deref(), Some(renewed.as_str()));
    drop(log_of(daemon));
}

#[test]
fn deleting_the_daemonsets_kustomization_keeps_the_serviceaccount_and_the_plugins_token() {
    // What `kubectl delete -k manifests/iotlan/base` (and k3s) deletes: nothing of namespace/.
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/iotlan/base");
    let kust = std::fs::read_to_string(base.join("kustomization.yaml")).unwrap();
    let docs = rbac::parse_documents(&kust);
    for res in docs[0]["resources"].as_array().expect("resources") {
        let file = res.as_str().unwrap();
        let text = std::fs::read_to_string(base.join(file)).unwrap_or_default();
        assert!(
            !text.contains("kind: ServiceAccount"),
            "{file}: a ServiceAccount deleted with the DaemonSet revokes the plugin's token"
        );
    }
    let rbac_text = std::fs::read_to_string(rbac::rbac_yaml()).unwrap();
    assert!(rbac::parse_documents(&rbac_text)
        .iter()
        .any(|d| d["kind"] == "ServiceAccount" && d["metadata"]["name"] == SA));
}
