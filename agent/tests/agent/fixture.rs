//! The API server double with a kubernetes store on it, and the pool, requests and leases the
//! passes' tests allocate and judge.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use iotlan_apiserver_double::{rbac, ApiServer};
use iotlan_ipam::store::kubernetes::{objects, KubernetesStore};
use iotlan_ipam::{AllocRequest, Attachment, Lease, Pool, PoolConfig, Sandbox, StoreConfig};
use serde_json::{json, Value};

pub const NS: &str = "iotlan-system";
pub const TOKEN: &str = "t0ken";

pub struct KubeFixture {
    pub server: ApiServer,
    _dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    /// The store's `stateDir`: where the node-local records of attachments go.
    pub state_dir: PathBuf,
}

impl KubeFixture {
    pub fn new() -> KubeFixture {
        let server = ApiServer::start();
        server.set_token(Some(TOKEN));
        // Everything runs as the shipped ServiceAccount may: anything else is 403.
        server.enforce(rbac::shipped_rules());
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = server.kubeconfig(dir.path(), "default", TOKEN);
        let state_dir = dir.path().join("state");
        KubeFixture {
            server,
            _dir: dir,
            kubeconfig,
            state_dir,
        }
    }

    /// GC frees leases of any age here.
    pub fn config(&self) -> StoreConfig {
        store_config(
            &self.kubeconfig,
            json!({ "gcGraceSeconds": 0, "stateDir": self.state_dir }),
        )
    }

    pub fn open(&self) -> KubernetesStore {
        KubernetesStore::open("iot", &self.config()).unwrap()
    }
}

pub fn store_config(kubeconfig: &Path, extra: Value) -> StoreConfig {
    // Node-local records beside the kubeconfig (a test's temporary dir), never in the host's.
    let state = kubeconfig
        .parent()
        .unwrap_or(Path::new("/nonexistent"))
        .join("state");
    let mut v = json!({ "kind": "kubernetes", "namespace": NS, "kubeconfig": kubeconfig, "stateDir": state });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn ips(leases: &[Lease]) -> Vec<IpAddr> {
    leases.iter().map(|l| l.ip).collect()
}

/// A small IPv4 pool: 12 addresses, .205 excluded, a reservation inside and one outside the ranges.
pub fn v4_pool() -> Pool {
    let cfg: PoolConfig = serde_json::from_value(json!({
        "type": "iotlan-ipam",
        "subnet": "192.168.20.0/24",
        "gateway": "192.168.20.1",
        "pool": ["192.168.20.200-192.168.20.209", "192.168.20.250/31"],
        "exclude": ["192.168.20.205"],
        "reservations": {
            "home-assistant/home-assistant-0": "192.168.20.100",
            "iot/esphome-0": "192.168.20.201"
        },
        "routes": [{ "dst": "192.168.30.0/24" }]
    }))
    .unwrap();
    Pool::new("iot", &cfg).unwrap()
}

pub fn req(identity: &str, cid: &str) -> AllocRequest {
    AllocRequest {
        identity: identity.to_string(),
        attachment: Attachment::new(cid, "net1"),
        requested: vec![],
        ..AllocRequest::default()
    }
}

pub fn req_ip(identity: &str, cid: &str, requested: &[&str]) -> AllocRequest {
    AllocRequest {
        requested: requested.iter().map(|s| ip(s)).collect(),
        ..req(identity, cid)
    }
}

/// An ADD of pod `identity` whose pod object has `uid`, as the CNI layer records it.
pub fn req_uid(identity: &str, cid: &str, uid: &str) -> AllocRequest {
    AllocRequest {
        sandbox: Sandbox {
            netns: None,
            pod_uid: Some(uid.to_string()),
            boot_id: None,
        },
        ..req(identity, cid)
    }
}

pub fn lease(ip_: &str, identity: &str, cid: &str) -> Lease {
    Lease {
        ip: ip(ip_),
        identity: identity.into(),
        container_id: cid.into(),
        ifname: "net1".into(),
        node: Some("other-node".into()),
        created_unix: 1_700_000_000,
        sandbox: Default::default(),
    }
}

pub fn object(l: &Lease) -> Value {
    serde_json::to_value(objects::address_object("iot", "iot", NS, l)).unwrap()
}

pub fn name(ip_: &str) -> String {
    objects::address_name("iot", ip(ip_))
}
