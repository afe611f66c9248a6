//! What the kubernetes store tests share: a fixture around the API server double, the store's
//! config for it, and leases and objects as another client would write them. Included by path by
//! tests/kubernetes and the node agent's test binaries, each using a part of it (`allow(dead_code)`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use iotlan_ipam::store::kubernetes::{objects, KubernetesStore};
use iotlan_ipam::{open_store, AllocRequest, Lease, Sandbox, SandboxCheck, Store, StoreConfig};
use serde_json::{json, Value};

use super::apiserver::ApiServer;
use super::contract::{self, ip, v4_pool};
use super::rbac;

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

    /// GC frees leases of any age here (the contract's GC cases run right after their ADDs).
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

impl contract::Fixture for KubeFixture {
    fn store(&self) -> Box<dyn Store> {
        // Through open_store, as the plugin opens it; every handle has its own client.
        let pool = v4_pool();
        open_store("iot", &self.config(), &pool).unwrap()
    }
}

/// The CNI layer's verdict that every earlier sandbox on this node has left the wire.
pub struct Gone;

impl SandboxCheck for Gone {
    fn is_gone(&self, _: &Lease) -> bool {
        true
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

/// An ADD of pod `identity` whose pod object has `uid`, as the CNI layer records it.
pub fn req_uid(identity: &str, cid: &str, uid: &str) -> AllocRequest {
    AllocRequest {
        sandbox: Sandbox {
            netns: None,
            pod_uid: Some(uid.to_string()),
            boot_id: None,
        },
        ..contract::req(identity, cid)
    }
}
