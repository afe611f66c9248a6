//! What the simulated-LAN suites share: the pool config of network `iot`, its state directory, and
//! ADD/DEL as kubelet/Multus exec them for Home Assistant's pod.

use std::path::Path;

use crate::*;
use serde_json::{json, Value};

pub const HA: (&str, &str) = ("home-assistant", "home-assistant-0");
pub const HA_IP: &str = "10.77.0.10";

pub fn ready() -> bool {
    require_all(LAN_NEEDS)
        && require(Need::File(
            "/usr/lib/cni/macvlan",
            "apt-get install containernetworking-plugins",
        ))
}

/// A per-test state directory for the pool store and the driver memory.
pub struct State(pub tempfile::TempDir);

impl Default for State {
    fn default() -> State {
        State::new()
    }
}

impl State {
    pub fn new() -> State {
        State(
            tempfile::Builder::new()
                .prefix("iotlan-lan-")
                .tempdir()
                .expect("temp dir"),
        )
    }
    pub fn dir(&self) -> &Path {
        self.0.path()
    }
    /// The leases of network `iot`, read through the pool library as the operator CLI does.
    pub fn leases(&self) -> Vec<iotlan_ipam::Lease> {
        let cfg: iotlan_ipam::PoolConfig = serde_json::from_value(ipam(self)).expect("pool config");
        let pool = iotlan_ipam::Pool::new("iot", &cfg).expect("pool");
        iotlan_ipam::open_store("iot", &cfg.store, &pool)
            .expect("store")
            .leases()
            .expect("leases")
    }
}

pub fn ipam(state: &State) -> Value {
    json!({
        "type": "iotlan-ipam",
        "subnet": SUBNET,
        "gateway": GATEWAY_IP,
        "pool": ["10.77.0.100-10.77.0.150"],
        "exclude": ["10.77.0.101"],
        "reservations": { "home-assistant/home-assistant-0": HA_IP },
        "routes": [{ "dst": "10.88.0.0/24" }],
        "store": { "kind": "file", "dir": state.dir() }
    })
}

/// The network config as a NAD would carry it, with `extra` merged over the top level.
pub fn conf(state: &State, extra: Value) -> String {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "iot",
        "type": "iotlan",
        "stateDir": state.dir(),
        "logLevel": "debug",
        "capabilities": { "ips": true, "mac": true },
        "ipam": ipam(state),
    });
    if let (Some(base), Some(over)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in over {
            base.insert(k.clone(), v.clone());
        }
    }
    c.to_string()
}

pub fn add(lan: &Lan, pod: &Netns, cid: &str, conf: &str) -> CniOutput {
    cni(
        &iotlan_bin(),
        "ADD",
        &Env::new(&lan.node.ns, pod, cid).k8s(HA.0, HA.1),
        conf,
    )
}

pub fn del(lan: &Lan, pod: &Netns, cid: &str, conf: &str) -> CniOutput {
    cni(
        &iotlan_bin(),
        "DEL",
        &Env::new(&lan.node.ns, pod, cid).k8s(HA.0, HA.1),
        conf,
    )
}

/// The first address of an ADD result, without its prefix.
pub fn first_ip(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address in {result}"))
        .to_string()
}

/// The neighbour entry (MAC) the LAN's router has for `ip`.
pub fn router_entry(lan: &Lan, ip: &str) -> Option<String> {
    neighbours(&lan.gateway)
        .into_iter()
        .find(|n| n["dst"] == ip)
        .and_then(|n| n["lladdr"].as_str().map(str::to_string))
}

/// Whether this kernel can make `kind` links (ipvlan is missing on the CI host's kernel).
pub fn link_kind_available(kind: &str) -> bool {
    let ns = Netns::new("iot-kind");
    ns.ip(&["link", "add", "k0", "type", "veth", "peer", "name", "k1"]);
    ns.try_exec("ip", &["link", "add", "c0", "link", "k0", "type", kind])
        .status
        .success()
}

pub fn is_locally_administered_unicast(mac: &str) -> bool {
    u8::from_str_radix(&mac[..2], 16).is_ok_and(|b| b & 0x03 == 0x02)
}

/// The cluster network's side of a pod: `eth0` with 10.42.0.5/24 and the default route via
/// 10.42.0.1, whose peer leads nowhere (what leaves by it never reaches the IoT LAN).
pub fn cluster_eth0(pod: &Netns) {
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "cni0",
    ]);
    pod.ip(&["addr", "add", "10.42.0.5/24", "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["link", "set", "cni0", "up"]);
    pod.ip(&["route", "add", "default", "via", "10.42.0.1", "dev", "eth0"]);
}
