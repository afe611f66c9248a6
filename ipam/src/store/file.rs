//! The file store: the embedded default, for one node.
//!
//! Layout of `<dir>/<network>/` (`dir` defaults to `/var/lib/cni/iotlan`):
//!
//! ```text
//! lock                         flock target: exclusive for changes, shared for reads
//! ips/<ip>                     one JSON lease per held address: THE record of who holds it
//! attachments/<cid>:<ifname>   {"ips": [...]}: the addresses an attachment holds (index for DEL/CHECK)
//! identities/<ns>:<name>       {"ips": [...]}: an identity's latest addresses (sticky; kept after DEL)
//! tmp/                         temporary files of atomic writes; emptied under the lock
//! ```
//!
//! An address is held exactly when `ips/<ip>` exists, so one address can never have two holders. ADD
//! finds a free address with one `stat` per candidate of the identity's hash walk, never a scan of all
//! leases, so its cost does not grow with the pool.
//!
//! Every file is written atomically: a temporary file in `tmp/`, `fsync`, `rename` into place, then an
//! `fsync` of the directory. ADD writes the attachment index first (it may list more addresses than the
//! attachment holds; each `ips/<ip>` file has the last word), then the `ips/` files, then the identity.
//! DEL removes the `ips/` files first, then the index. A `kill -9` at any instant therefore leaves either
//! the old or the new state of each file, never a half-written file, never an address held twice, and
//! never a held address that DEL of its attachment cannot find. Stray temporary files are removed by
//! the next change.
//!
//! A file that cannot be parsed (truncated, corrupted, edited by hand) is an [`Error::Corrupt`] naming
//! it; nothing is ever reset silently. A full disk or a read-only file system fails the change with
//! [`Error::Io`] naming the file, and leaves the previous state.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::addr::Family;
use crate::allocator::{self, Claimed, Claims};
use crate::error::Error;
use crate::lease::{AllocRequest, Attachment, Lease};
use crate::names;
use crate::pool::Pool;
use crate::store::Store;

const IPS: &str = "ips";
const ATTACHMENTS: &str = "attachments";
const IDENTITIES: &str = "identities";
const TMP: &str = "tmp";
const LOCK: &str = "lock";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The content of an attachment or identity file.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct IpList {
    ips: Vec<IpAddr>,
}

/// The file store of one network directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    lock_timeout: Duration,
    node: Option<String>,
}

impl FileStore {
    /// Opens (creating it if needed) the store in `dir`, which is one network's directory
    /// (`<store.dir>/<network>`). Operations wait up to `lock_timeout` for the lock.
    pub fn open(dir: &Path, lock_timeout: Duration) -> Result<FileStore, Error> {
        for sub in [IPS, ATTACHMENTS, IDENTITIES, TMP] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|e| Error::io("create directory", &path, e))?;
        }
        let node = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok());
        Ok(FileStore {
            dir: dir.to_path_buf(),
            lock_timeout,
            node,
        })
    }

    /// The network directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(IPS).join(ip.to_string())
    }

    fn attachment_path(&self, att: &Attachment) -> PathBuf {
        self.dir
            .join(ATTACHMENTS)
            .join(format!("{}:{}", att.container_id, att.ifname))
    }

    fn identity_path(&self, identity: &str) -> PathBuf {
        // Validated identities have at most one '/' and no ':'.
        self.dir.join(IDENTITIES).join(identity.replace('/', ":"))
    }

    fn lock(&self, exclusive: bool) -> Result<Flock<File>, Error> {
        let path = self.dir.join(LOCK);
        // Opened read-only when it exists, so reads still work on a read-only file system.
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io("create lock file", &path, e))?,
            Err(e) => return Err(Error::io("open lock file", &path, e)),
        };
        let (try_arg, wait_arg) = if exclusive {
            (FlockArg::LockExclusiveNonblock, FlockArg::LockExclusive)
        } else {
            (FlockArg::LockSharedNonblock, FlockArg::LockShared)
        };
        let file = match Flock::lock(file, try_arg) {
            Ok(lock) => return Ok(lock),
            Err((file, Errno::EWOULDBLOCK)) => file,
            Err((_, e)) => return Err(Error::io("lock", &path, e.into())),
        };
        // Contended: wait in a helper thread so the wait can be bounded. If we give up, the thread's
        // send fails once it gets the lock, and dropping the lock releases it at once.
        let (tx, rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("iotlan-ipam-lock".into())
            .spawn(move || {
                let mut file = file;
                let result = loop {
                    match Flock::lock(file, wait_arg) {
                        Err((f, Errno::EINTR)) => file = f,
                        other => break other.map_err(|(_, e)| e),
                    }
                };
                let _ = tx.send(result);
            })
            .map_err(|e| Error::io("start lock waiter for", &path, e))?;
        match rx.recv_timeout(self.lock_timeout) {
            Ok(Ok(lock)) => Ok(lock),
            Ok(Err(e)) => Err(Error::io("lock", &path, e.into())),
            Err(_) => Err(Error::Busy {
                path,
                waited_ms: u64::try_from(self.lock_timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// Removes stray temporary files. Only called under the exclusive lock, when no write is under way.
    fn clean_tmp(&self) {
        let tmp = self.dir.join(TMP);
        let Ok(entries) = fs::read_dir(&tmp) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a stray temporary file"),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove a temporary file")
                }
            }
        }
    }

    fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
        let text = match fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path: path.to_path_buf(),
                reason: format!("{e} ({} bytes); fix or remove it by hand", text.len()),
            })
    }

    fn read_lease(&self, ip: IpAddr) -> Result<Option<Lease>, Error> {
        let path = self.ip_path(ip);
        let lease: Option<Lease> = Self::read_json(&path)?;
        match lease {
            Some(l) if l.ip != ip => Err(Error::Corrupt {
                path,
                reason: format!("it holds a lease for {}", l.ip),
            }),
            other => Ok(other),
        }
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        let tmp = self.dir.join(TMP).join(format!(
            "{}.{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("write", path, e)
        })
    }

    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), Error> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| {
            Error::io(
                "encode",
                path,
                std::io::Error::new(ErrorKind::InvalidData, e),
            )
        })?;
        bytes.push(b'\n');
        self.write_atomic(path, &bytes)
    }

    fn remove(path: &Path) -> Result<(), Error> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    fn sync_dir(&self, sub: &str) -> Result<(), Error> {
        let path = self.dir.join(sub);
        File::open(&path)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("sync directory", &path, e))
    }

    /// Records `ips` as the identity's latest addresses (for stickiness), if they changed.
    fn remember(&self, identity: &str, ips: Vec<IpAddr>) -> Result<(), Error> {
        let path = self.identity_path(identity);
        let latest = IpList { ips };
        if Self::read_json::<IpList>(&path)?.as_ref() != Some(&latest) {
            self.write_json(&path, &latest)?;
            self.sync_dir(IDENTITIES)?;
        }
        Ok(())
    }

    /// The leases `att` holds: the addresses its index lists whose `ips/` file names it.
    fn attachment_leases(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        let Some(index) = Self::read_json::<IpList>(&self.attachment_path(att))? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for ip in index.ips {
            if let Some(l) = self.read_lease(ip)? {
                if l.is_held_by(att) {
                    out.push(l);
                }
            }
        }
        out.sort_by_key(|l| (Family::of(&l.ip), l.ip));
        Ok(out)
    }

    /// Every lease file, in address order.
    fn all_leases(&self) -> Result<Vec<Lease>, Error> {
        let dir = self.dir.join(IPS);
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let name = entry.file_name();
            let ip = name
                .to_str()
                .and_then(|n| IpAddr::from_str(n).ok())
                .ok_or_else(|| Error::Corrupt {
                    path: entry.path(),
                    reason: "the name of a file in ips/ must be an IP address".to_string(),
                })?;
            if let Some(l) = self.read_lease(ip)? {
                out.push(l);
            }
        }
        out.sort_by_key(|l| (Family::of(&l.ip), l.ip));
        Ok(out)
    }
}

/// One allocation under the exclusive lock: claims are recorded, and written by `finish`.
struct Txn<'a> {
    store: &'a FileStore,
    pending: Vec<Lease>,
}

impl Claims for Txn<'_> {
    fn held_by(&mut self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        self.store.attachment_leases(att)
    }

    fn previous(&mut self, identity: &str) -> Result<Vec<IpAddr>, Error> {
        let path = self.store.identity_path(identity);
        Ok(FileStore::read_json::<IpList>(&path)?
            .map(|l| l.ips)
            .unwrap_or_default())
    }

    fn holder(&mut self, ip: IpAddr) -> Result<Option<Lease>, Error> {
        if let Some(l) = self.pending.iter().find(|l| l.ip == ip) {
            return Ok(Some(l.clone()));
        }
        self.store.read_lease(ip)
    }

    fn is_free(&mut self, ip: IpAddr) -> Result<bool, Error> {
        if self.pending.iter().any(|l| l.ip == ip) {
            return Ok(false);
        }
        let path = self.store.ip_path(ip);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(false),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
            Err(e) => Err(Error::io("check", &path, e)),
        }
    }

    fn claim(&mut self, lease: &Lease, replacing: Option<&Lease>) -> Result<Option<Lease>, Error> {
        match self.holder(lease.ip)? {
            Some(h) if Some(&h) != replacing => Ok(Some(h)),
            _ => {
                self.pending.push(lease.clone());
                Ok(None)
            }
        }
    }

    fn finish(&mut self, req: &AllocRequest, leases: &[Lease]) -> Result<(), Error> {
        let store = self.store;
        let ips: Vec<IpAddr> = leases.iter().map(|l| l.ip).collect();
        if self.pending.is_empty() {
            // An idempotent ADD: nothing to claim, but the identity's latest addresses are these.
            return store.remember(&req.identity, ips);
        }

        // 1. The attachment's index, first: whatever happens next, DEL can find the addresses.
        let index_path = store.attachment_path(&req.attachment);
        let mut index = FileStore::read_json::<IpList>(&index_path)?.unwrap_or_default();
        let before = index.ips.len();
        for ip in &ips {
            if !index.ips.contains(ip) {
                index.ips.push(*ip);
            }
        }
        if index.ips.len() != before {
            store.write_json(&index_path, &index)?;
            store.sync_dir(ATTACHMENTS)?;
        }

        // 2. The leases themselves.
        // On a failure the allocator calls `abandon`, which removes (or restores) what was written.
        for lease in &self.pending {
            store.write_json(&store.ip_path(lease.ip), lease)?;
        }
        store.sync_dir(IPS)?;

        // 3. The identity's addresses, for stickiness.
        store.remember(&req.identity, ips)
    }

    fn abandon(&mut self, claimed: &[Claimed]) -> Result<(), Error> {
        // Claims are only written by `finish`: undo whatever of it reached the disk.
        self.pending.clear();
        let store = self.store;
        for c in claimed {
            if store.read_lease(c.lease.ip)?.as_ref() == Some(&c.lease) {
                let path = store.ip_path(c.lease.ip);
                match &c.replaced {
                    Some(old) => store.write_json(&path, old)?,
                    None => FileStore::remove(&path)?,
                }
            }
        }
        store.sync_dir(IPS)
    }
}

impl Store for FileStore {
    fn allocate(&self, pool: &Pool, req: &AllocRequest) -> Result<Vec<Lease>, Error> {
        names::validate_identity(&req.identity)?;
        req.attachment.validate()?;
        let _lock = self.lock(true)?;
        self.clean_tmp();
        let mut txn = Txn {
            store: self,
            pending: Vec::new(),
        };
        allocator::allocate(pool, req, self.node.as_deref(), &mut txn)
    }

    fn release(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        att.validate()?;
        let _lock = self.lock(true)?;
        self.clean_tmp();
        let index_path = self.attachment_path(att);
        if !index_path.exists() {
            return Ok(Vec::new());
        }
        let freed = self.attachment_leases(att)?;
        // The leases first, then the index: a crash in between leaves an index DEL can repeat.
        for l in &freed {
            FileStore::remove(&self.ip_path(l.ip))?;
        }
        if !freed.is_empty() {
            self.sync_dir(IPS)?;
        }
        FileStore::remove(&index_path)?;
        self.sync_dir(ATTACHMENTS)?;
        Ok(freed)
    }

    fn find(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        att.validate()?;
        let _lock = self.lock(false)?;
        self.attachment_leases(att)
    }

    fn gc(&self, valid: &[Attachment]) -> Result<Vec<Lease>, Error> {
        let valid: HashSet<&Attachment> = valid.iter().collect();
        let _lock = self.lock(true)?;
        self.clean_tmp();
        let mut freed = Vec::new();
        for l in self.all_leases()? {
            if !valid.contains(&l.attachment()) {
                FileStore::remove(&self.ip_path(l.ip))?;
                freed.push(l);
            }
        }
        self.sync_dir(IPS)?;
        let dir = self.dir.join(ATTACHMENTS);
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let name = entry.file_name();
            let att = name
                .to_str()
                .and_then(|n| n.split_once(':'))
                .map(|(cid, ifname)| Attachment::new(cid, ifname));
            match att {
                Some(att) if valid.contains(&att) => {}
                Some(_) => FileStore::remove(&entry.path())?,
                None => {
                    return Err(Error::Corrupt {
                        path: entry.path(),
                        reason: "the name of a file in attachments/ must be <container>:<ifname>"
                            .to_string(),
                    })
                }
            }
        }
        self.sync_dir(ATTACHMENTS)?;
        Ok(freed)
    }

    fn leases(&self) -> Result<Vec<Lease>, Error> {
        let _lock = self.lock(false)?;
        self.all_leases()
    }
}
