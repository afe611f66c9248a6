//! Node-local files written and locked safely, for every part of iotlan that keeps state on a node
//! (the file store, the kubernetes store's records of this node's attachments, the hostShim
//! records, the driver memory, the conflict records, the node agent's installed files):
//!
//! - [`write_atomic`]: a temp file in the same directory is written and fsynced, renamed over the
//!   file, and the directory fsynced. After a crash or a power cut at any instant the path holds the
//!   whole old or the whole new contents: never an empty or a partial file, which a rename of
//!   unsynced data can leave behind on ext4 or f2fs (an SD card's Pi).
//! - [`lock`]: an flock, shared or exclusive, whose wait is bounded: a holder that hangs makes the
//!   caller fail with [`LockError::Busy`] (retryable), never wait forever.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Shared (readers) or exclusive (a writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// Why [`lock`] did not get the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another holder kept it for the whole wait.
    #[error("still held by another process after {} ms", .waited.as_millis())]
    Busy { waited: Duration },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Locks `path` (created when missing; opened read-only when it exists, so that shared locks work
/// on a read-only file system), waiting at most `timeout`. The lock is held until the returned
/// value is dropped.
pub fn lock(path: &Path, mode: LockMode, timeout: Duration) -> Result<Flock<File>, LockError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?,
        Err(e) => return Err(e.into()),
    };
    let (try_arg, wait_arg) = match mode {
        LockMode::Exclusive => (FlockArg::LockExclusiveNonblock, FlockArg::LockExclusive),
        LockMode::Shared => (FlockArg::LockSharedNonblock, FlockArg::LockShared),
    };
    let file = match Flock::lock(file, try_arg) {
        Ok(lock) => return Ok(lock),
        Err((file, Errno::EWOULDBLOCK)) => file,
        Err((_, e)) => return Err(io::Error::from(e).into()),
    };
    // Contended: wait in a helper thread so the wait can be bounded. If we give up, the thread's
    // send fails once it gets the lock, and dropping the lock releases it at once.
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("iotlan-lock".into())
        .spawn(move || {
            let mut file = file;
            let result = loop {
                match Flock::lock(file, wait_arg) {
                    Err((f, Errno::EINTR)) => file = f,
                    other => break other.map_err(|(_, e)| e),
                }
            };
            let _ = tx.send(result);
        })?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(lock)) => Ok(lock),
        Ok(Err(e)) => Err(io::Error::from(e).into()),
        Err(_) => Err(LockError::Busy { waited: timeout }),
    }
}

/// The prefix of the temp files [`write_atomic`] leaves only when it is killed mid-write.
pub const TEMP_PREFIX: &str = ".iotlan-tmp.";

/// Replaces `path` with `contents` with permission bits exactly `mode` (whatever the umask),
/// durably (module docs). Creates the directory. A running reader (or exec) of the old file keeps
/// its inode, and a new open sees the whole old or the whole new file.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    replace(path, contents, mode, true)
}

/// [`write_atomic`] without the fsyncs: a crash may lose the change (the path then holds the old
/// file, or, for a new one, nothing), never leave a partial file. For notes whose loss costs little
/// (a conflict check's "verified lately" note: one probe more), on a path an ADD waits for.
pub fn write_atomic_unsynced(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    replace(path, contents, mode, false)
}

fn replace(path: &Path, contents: &[u8], mode: u32, synced: bool) -> io::Result<()> {
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
        if synced {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, path)?;
        if synced {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
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
