//! The node-local record of what the host shim on one master carries (`<stateDir>/_shim/<master>.json`),
//! read and written under that master's lock, and the names the shim goes by.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::driver::Driver;
use crate::netlink::Link;

/// The longest wait for another ADD or DEL on the same master's shim record.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the node has on one master.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub master: String,
    /// The shim link's name on the node.
    pub link: String,
    /// The kind it was made as: the pods' driver on this master.
    pub driver: Option<Driver>,
    /// The node the shim's lease and MAC are derived from ([`node_of`]).
    #[serde(default)]
    pub node: String,
    /// The shim's own addresses, per network.
    pub addresses: BTreeMap<String, Vec<IpAddr>>,
    /// Host routes to pods' net1 addresses through the shim.
    pub routes: Vec<PodRoute>,
}

/// One pod address the node routes through the shim, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRoute {
    pub ip: IpAddr,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

/// The shim link's name for `master`: `iot-<master>`, or `iot-<hash>` when that would not fit in 15 bytes.
pub fn link_name(master: &str) -> String {
    let name = format!("iot-{master}");
    if name.len() <= 15 {
        name
    } else {
        let h = iotlan_ipam::addr::fnv1a64(master.as_bytes());
        format!("iot-{:08x}", h as u32)
    }
}

/// The node's name ([`iotlan_ipam::node`]); on a machine without one (no host name, no agent), the
/// master's MAC, which is this node's alone on the LAN.
pub fn node_of(master: &Link) -> String {
    iotlan_ipam::node::default_name().unwrap_or_else(|| {
        let m = master.mac.unwrap_or_default();
        format!(
            "mac-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    })
}

/// The pool identity (and container ID) the shim's lease is held under: the node's, not a pod's.
pub fn identity(node: &str) -> String {
    iotlan_ipam::node::shim_identity(node)
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("_shim")
}

fn record_path(state_dir: &Path, master: &str) -> PathBuf {
    dir(state_dir).join(format!("{master}.json"))
}

/// Every shim record on this node; unreadable ones are logged and skipped.
pub fn records(state_dir: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir(state_dir)).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable shim record")
            }
        }
    }
    out.sort_by(|a, b| a.master.cmp(&b.master));
    out
}

/// The shim record of one master, under its lock.
pub(super) struct Locked {
    path: PathBuf,
    pub(super) record: Record,
    _lock: Flock<File>,
}

impl Locked {
    pub(super) fn open(state_dir: &Path, master: &str) -> io::Result<Locked> {
        let path = record_path(state_dir, master);
        fs::create_dir_all(dir(state_dir))?;
        let lock_path = dir(state_dir).join(format!(".{master}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)?;
        let deadline = Instant::now() + LOCK_TIMEOUT;
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((_, e)) => {
                    return Err(io::Error::other(format!(
                        "cannot lock {}: {e}",
                        lock_path.display()
                    )))
                }
            }
        };
        let record = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "replacing an unreadable shim record");
                Record::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Record::default(),
            Err(e) => return Err(e),
        };
        Ok(Locked {
            path,
            record,
            _lock: lock,
        })
    }

    pub(super) fn save(&self) -> io::Result<()> {
        crate::conflict::write_atomic(&self.path, &self.record, true)
    }
}
