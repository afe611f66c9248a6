//! The driver that worked per master, remembered on the node in `<stateDir>/_drivers/<master>.json`
//! (network names cannot start with '_', so this never collides with a pool directory).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Driver;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub driver: Driver,
    /// Why this driver was chosen (the failure that ruled the other out, or "worked first").
    pub reason: String,
    pub since_unix: u64,
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("_drivers")
}

fn file(state_dir: &Path, master: &str) -> PathBuf {
    dir(state_dir).join(format!("{master}.json"))
}

/// The remembered choice for `master`; a missing or unreadable file means none.
pub fn load(state_dir: &Path, master: &str) -> Option<Remembered> {
    let bytes = fs::read(file(state_dir, master)).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(master, error = %e, "ignoring unreadable driver memory");
            None
        }
    }
}

/// Every remembered choice on this node, by master.
pub fn all(state_dir: &Path) -> Vec<(String, Remembered)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir(state_dir)).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(master) = name.strip_suffix(".json") {
            if let Some(r) = load(state_dir, master) {
                out.push((master.to_string(), r));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Records `driver` for `master` atomically (temp file, fsync, rename). Unchanged choices are not
/// rewritten, so the common ADD costs no write.
pub fn remember(
    state_dir: &Path,
    master: &str,
    driver: Driver,
    reason: &str,
) -> std::io::Result<()> {
    if load(state_dir, master).is_some_and(|r| r.driver == driver) {
        return Ok(());
    }
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let r = Remembered {
        driver,
        reason: reason.to_string(),
        since_unix,
    };
    let json = serde_json::to_vec_pretty(&r).map_err(std::io::Error::other)?;
    iotlan_ipam::durable::write_atomic(&file(state_dir, master), &json, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_master() {
        let d = std::env::temp_dir().join(format!("iotlan-mem-{}", std::process::id()));
        assert_eq!(load(&d, "eth0"), None);
        remember(&d, "eth0", Driver::Ipvlan, "macvlan: gateway silent").unwrap();
        assert_eq!(load(&d, "eth0").unwrap().driver, Driver::Ipvlan);
        assert_eq!(load(&d, "eth1"), None);
        assert_eq!(all(&d).len(), 1);
        fs::remove_dir_all(&d).unwrap();
    }
}
