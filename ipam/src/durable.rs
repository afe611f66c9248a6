//! Durable replacement of a small node-local file (the kubernetes store's records of this node's
//! attachments, the hostShim records): a temp file in the same directory is written and fsynced,
//! renamed over the file, and the directory fsynced. After a crash or a power cut at any instant the
//! path holds the whole old or the whole new contents: never an empty or a partial file, which a
//! rename of unsynced data can leave behind on ext4 or f2fs (an SD card's Pi).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The prefix of the temp files [`write_atomic`] leaves only when it is killed mid-write.
pub const TEMP_PREFIX: &str = ".iotlan-tmp.";

/// Replaces `path` with `contents` with permission bits exactly `mode` (whatever the umask),
/// durably (module docs). Creates the directory. A running reader (or exec) of the old file keeps
/// its inode, and a new open sees the whole old or the whole new file.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| io::Error::other(format!("{}: no directory", path.display())))?;
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{name}.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes the files in `dir` whose name starts with `prefix` and that are older than a minute: temp
/// files of a writer killed mid-write ([`TEMP_PREFIX`]). Younger ones may be being written right now
/// (another process, a DaemonSet surge pod). Best effort.
pub fn remove_stale_temps(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 60);
        if stale && e.file_name().to_string_lossy().starts_with(prefix) {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/record.json");
        write_atomic(&p, b"{\"a\":1}", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        assert_eq!(fs::read(&p).unwrap(), b"{\"a\":1}");
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&p).unwrap());
        write_atomic(&p, b"{}", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"{}");
        assert_ne!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&p).unwrap()),
            ino,
            "replaced by a rename, not rewritten in place"
        );
        let names: Vec<String> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["record.json".to_string()]);
    }

    #[test]
    fn only_temp_files_older_than_a_minute_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let old = d.path().join(format!("{TEMP_PREFIX}a.json.1.0"));
        let young = d.path().join(format!("{TEMP_PREFIX}b.json.1.1"));
        let record = d.path().join("a.json");
        for p in [&old, &young, &record] {
            fs::write(p, b"{}").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        for p in [&old, &record] {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        remove_stale_temps(d.path(), TEMP_PREFIX);
        assert!(!old.exists() && young.exists() && record.exists());
    }
}
