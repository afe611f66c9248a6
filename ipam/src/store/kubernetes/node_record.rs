//! The node-local record of the attachments the kubernetes store granted on this node.
//!
//! The Lease objects are the cluster's record of who holds what, but they can be lost while pods
//! keep their addresses: `kubectl delete -k` of the manifests deletes their namespace, an etcd
//! restore rolls them back, `kubectl delete leases` removes them. The node is the truth of what is
//! on the wire, so every successful ADD on a node also writes a small file there (the leases it was
//! granted), and DEL (or an ADD undone) removes it:
//!
//! ```text
//! <state dir>/.kubernetes-attachments/<net>.<hash of container ID/ifname>.json
//! ```
//!
//! The node agent re-asserts the Lease objects of these records (`iotlan_agent::reassert`, through [`super::KubernetesStore::reassert`]). Writing
//! or removing a record never fails the operation: a failure is logged, and costs only that the
//! attachment cannot be re-asserted. The state dir is `store.stateDir` (default
//! [`crate::config::DEFAULT_STORE_DIR`], where the node agent's state mount is); the directory name
//! starts with a dot, which no network name does, so the file store's directories never meet it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::objects;
use crate::lease::{Attachment, Lease};

/// The records' directory under the state dir.
pub const RECORD_DIR: &str = ".kubernetes-attachments";

/// The prefix of the temp files builds before [`crate::durable`] wrote records through.
pub const LEGACY_TEMP_PREFIX: &str = ".tmp-";

/// One attachment's leases on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub network: String,
    pub leases: Vec<Lease>,
}

/// Where the record of `att` of `network` lives.
pub fn path_of(state_dir: &Path, network: &str, att: &Attachment) -> PathBuf {
    state_dir.join(RECORD_DIR).join(format!(
        "{}.{}.json",
        objects::network_key(network),
        objects::attachment_hash(att)
    ))
}

/// Writes the record of `leases` (one attachment's), atomically and durably
/// ([`crate::durable::write_atomic`]). Best effort: logs a failure.
pub fn save(state_dir: &Path, network: &str, leases: &[Lease]) {
    let Some(first) = leases.first() else {
        return;
    };
    let path = path_of(state_dir, network, &first.attachment());
    let rec = NodeRecord {
        network: network.to_string(),
        leases: leases.to_vec(),
    };
    // Durably: an empty record after a power cut would be unreadable (and its attachment could
    // not be re-asserted).
    let write = || -> std::io::Result<()> {
        let json = serde_json::to_vec(&rec).map_err(std::io::Error::other)?;
        crate::durable::write_atomic(&path, &json, 0o644)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), error = %e,
            "could not write the node-local record of the attachment (the node agent cannot re-assert its leases)");
    }
}

/// Removes the record of `att` of `network`. Best effort: logs a failure.
pub fn remove(state_dir: &Path, network: &str, att: &Attachment) {
    let path = path_of(state_dir, network, att);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e,
            "could not remove the node-local record of the attachment"),
    }
}

/// The identity `att` of `network` was granted for, as this node's record has it.
pub fn identity_of(state_dir: &Path, network: &str, att: &Attachment) -> Option<String> {
    let bytes = std::fs::read(path_of(state_dir, network, att)).ok()?;
    let rec: NodeRecord = serde_json::from_slice(&bytes).ok()?;
    rec.leases
        .into_iter()
        .find(|l| l.is_held_by(att))
        .map(|l| l.identity)
}

/// Removes the record at `path` that did not parse (`why`), with one warning, unless it was
/// replaced since it was read (its inode `ino` differs: a new ADD wrote it). An empty or garbled
/// record carries nothing to re-assert: one left by a build that wrote without fsync, cut short by a
/// power cut. Returns why it could not be removed, if it could not.
pub fn discard_unreadable(path: &Path, ino: u64, why: &str) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.ino() == ino => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot look at it: {e}")),
    }
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), reason = %why,
                "removed an unreadable node-local record (left by a power cut or an older build); \
                 its attachment, if it still exists, cannot be re-asserted until its next ADD");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{why}; cannot remove it: {e}")),
    }
}

/// One record file as read.
#[derive(Debug)]
pub struct ReadRecord {
    pub path: PathBuf,
    /// Its inode when it was read (see [`discard_unreadable`]).
    pub ino: u64,
    /// The record, or why it does not parse.
    pub record: Result<NodeRecord, String>,
}

/// Every record under `state_dir`, in path order.
pub fn read_all(state_dir: &Path) -> std::io::Result<Vec<ReadRecord>> {
    use std::os::unix::fs::MetadataExt;
    let dir = state_dir.join(RECORD_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let ino = std::fs::symlink_metadata(&path).map_or(0, |m| m.ino());
        let rec = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<NodeRecord>(&b).map_err(|e| e.to_string()));
        out.push(ReadRecord {
            path,
            ino,
            record: rec,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}
