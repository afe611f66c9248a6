//! The node-local record of what the host shim on one master carries (`<stateDir>/_shim/<master>.json`),
//! read and written under that master's lock, and the names the shim goes by.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use iotlan_ipam::durable::{self, LockMode};
use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};

use crate::link::Driver;
use crate::net::netlink::Link;

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

/// Every shim record on this node. One that does not parse (empty or garbled: a power cut, an older
/// build that wrote without fsync) is removed under its master's lock, with one warning: it holds
/// nothing to repair from, and would otherwise be reported on every pass.
pub fn records(state_dir: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir(state_dir)).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        match read(&path) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(e) => match path.file_stem().and_then(|m| m.to_str()) {
                Some(master) => discard_unreadable(state_dir, master),
                None => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable shim record")
                }
            },
        }
    }
    out.sort_by(|a, b| a.master.cmp(&b.master));
    out
}

/// The record at `path`: `None` when there is none; an error when it does not parse.
fn read(path: &Path) -> io::Result<Option<Record>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes `master`'s record if it still does not parse once its lock is held (a writer may have
/// replaced it meanwhile), with one warning.
fn discard_unreadable(state_dir: &Path, master: &str) {
    let removed = Locked::lock(state_dir, master).and_then(|_lock| {
        let path = record_path(state_dir, master);
        match read(&path) {
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                fs::remove_file(&path)?;
                tracing::warn!(path = %path.display(), error = %e,
                    "removed an unreadable hostShim record (left by a power cut or an older build); \
                     the next ADD on this master records the shim again");
                Ok(())
            }
            _ => Ok(()),
        }
    });
    if let Err(e) = removed {
        tracing::warn!(master, error = %e, "ignoring an unreadable hostShim record");
    }
}

/// The shim record of one master, under its lock.
pub(super) struct Locked {
    path: PathBuf,
    pub(super) record: Record,
    _lock: Flock<File>,
}

impl Locked {
    pub(super) fn open(state_dir: &Path, master: &str) -> io::Result<Locked> {
        let lock = Locked::lock(state_dir, master)?;
        let path = record_path(state_dir, master);
        let record = match read(&path) {
            Ok(r) => r.unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::warn!(path = %path.display(), error = %e, "replacing an unreadable shim record");
                Record::default()
            }
            Err(e) => return Err(e),
        };
        Ok(Locked {
            path,
            record,
            _lock: lock,
        })
    }

    /// Takes `master`'s record lock, waiting up to [`LOCK_TIMEOUT`].
    fn lock(state_dir: &Path, master: &str) -> io::Result<Flock<File>> {
        fs::create_dir_all(dir(state_dir))?;
        let lock_path = dir(state_dir).join(format!(".{master}.lock"));
        durable::lock(&lock_path, LockMode::Exclusive, LOCK_TIMEOUT)
            .map_err(|e| io::Error::other(format!("cannot lock {}: {e}", lock_path.display())))
    }

    /// Writes the record durably: an empty record after a power cut would lose the shim.
    pub(super) fn save(&self) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(&self.record).map_err(io::Error::other)?;
        iotlan_ipam::durable::write_atomic(&self.path, &json, 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_record_left_by_a_power_cut_is_removed_once_not_reported_on_every_pass() {
        let d = tempfile::tempdir().unwrap();
        let mut l = Locked::open(d.path(), "eth0").unwrap();
        l.record.master = "eth0".into();
        l.record.link = link_name("eth0");
        l.save().unwrap();
        drop(l);
        // What a build that wrote without fsync could leave after a power cut: the rename made it,
        // the data did not.
        let empty = record_path(d.path(), "eth1");
        fs::write(&empty, b"").unwrap();
        let garbled = record_path(d.path(), "wlan0");
        fs::write(&garbled, b"{\"master\": \"wlan0\", \"li").unwrap();
        let rs = records(d.path());
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].master, "eth0");
        assert!(
            !empty.exists() && !garbled.exists(),
            "removed on the first pass"
        );
        // The readable one is untouched, and written durably (no temp file left).
        assert_eq!(records(d.path()).len(), 1);
        let names: Vec<String> = fs::read_dir(dir(d.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert_eq!(names, vec!["eth0.json".to_string()]);
    }
}
