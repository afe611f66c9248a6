//! The file store: the embedded default, for one node.
//!
//! Layout of `<dir>/<network>/` (`dir` defaults to `/var/lib/cni/iotlan`):
//!
//! ```text
//! lock                           flock target: exclusive for changes, shared for reads
//! ip:<ip>                     -> the lease (JSON): THE record of who holds the address
//! attachment:<cid>:<ifname>   -> {"ips": [...]}: the addresses an attachment holds (index for DEL/CHECK)
//! identity:<ns>:<name>        -> {"identity": ..., "ips": [...]}: an identity's latest addresses
//!                                (sticky; kept after DEL). `identity:#<hash>` when the name is too long.
//! tmp/                           temporary links of replacements; emptied under the lock
//! ```
//!
//! Every record is a symbolic link whose target is its JSON text, as in `ls -l`. `symlink(2)` creates
//! the name and its content in one atomic step, so a record is never seen half-written and needs no
//! temporary file and no `fsync` of its own; a record that already exists is replaced by a new link in
//! `tmp/` renamed over it. All records of a network sit in one directory, so a change (ADD, DEL, GC)
//! ends with a single `fsync` of that directory, which is what the ADD waits for on a busy disk.
//!
//! An address is held exactly when `ip:<ip>` exists, so one address can never have two holders. ADD
//! finds a free address with one `lstat` per candidate of the identity's hash walk, never a scan of
//! all leases, so its cost does not grow with the pool.
//!
//! ADD writes the attachment index first (it may list more addresses than the attachment holds; each
//! `ip:` record has the last word), then the `ip:` records, then the identity. DEL removes the `ip:`
//! records first, then the index. A `kill -9` at any instant therefore leaves either the old or the new
//! state of each record, never an address held twice, and never a held address that DEL of its
//! attachment cannot find. A power cut before the final `fsync` loses a change that was never
//! acknowledged; journaling file systems (ext4, xfs) commit metadata in order, so what survives is a
//! prefix of it, which the order above covers.
//!
//! A record that cannot be parsed (a regular file where a link belongs, bad JSON, edited by hand) is an
//! [`Error::Corrupt`] naming it; nothing is ever reset silently. A full disk or a read-only file system
//! fails the change with [`Error::Io`] naming the record, and leaves the previous state.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::Flock;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::addr::{fnv1a64, Family};
use crate::allocator::{self, Claimed, Claims, Grant, SandboxCheck};
use crate::durable::{self, LockError, LockMode};
use crate::error::Error;
use crate::lease::{AllocRequest, Attachment, Lease};
use crate::names;
use crate::pool::Pool;
use crate::store::Store;

const IP: &str = "ip:";
const ATTACHMENT: &str = "attachment:";
const IDENTITY: &str = "identity:";
const TMP: &str = "tmp";
const LOCK: &str = "lock";
/// The longest file name most file systems take (NAME_MAX).
const NAME_MAX: usize = 255;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The content of an attachment index.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct IpList {
    ips: Vec<IpAddr>,
}

/// The content of an identity record: its latest addresses.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Latest {
    identity: String,
    ips: Vec<IpAddr>,
}

/// The file store of one network directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    lock_timeout: Duration,
    node: Option<String>,
    identity_retention: Option<Duration>,
    gc_grace: Duration,
}

impl FileStore {
    /// Opens (creating it if needed) the store in `dir`, which is one network's directory
    /// (`<store.dir>/<network>`). Operations wait up to `lock_timeout` for the lock.
    pub fn open(dir: &Path, lock_timeout: Duration) -> Result<FileStore, Error> {
        let tmp = dir.join(TMP);
        if !tmp.is_dir() {
            fs::create_dir_all(&tmp).map_err(|e| Error::io("create directory", &tmp, e))?;
        }
        let node = crate::node::default_name();
        Ok(FileStore {
            dir: dir.to_path_buf(),
            lock_timeout,
            node,
            identity_retention: None,
            gc_grace: Duration::ZERO,
        })
    }

    /// GC deletes an identity record that has held no address for `retention` (its link's mtime:
    /// DEL rewrites it); `None` (the default of `open`) keeps them all.
    pub fn with_identity_retention(mut self, retention: Option<Duration>) -> FileStore {
        self.identity_retention = retention;
        self
    }

    /// GC leaves leases younger than `grace` alone (their ADD may still be in flight); `open`'s
    /// default is none.
    pub fn with_gc_grace(mut self, grace: Duration) -> FileStore {
        self.gc_grace = grace;
        self
    }

    /// The network directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(format!("{IP}{ip}"))
    }

    fn attachment_path(&self, att: &Attachment) -> PathBuf {
        // Validated: a container ID of at most 200 bytes and an ifname of at most 15 fit NAME_MAX.
        self.dir
            .join(format!("{ATTACHMENT}{}:{}", att.container_id, att.ifname))
    }

    fn identity_path(&self, identity: &str) -> PathBuf {
        // Validated identities have at most one '/' and no ':'. A pod name may be 253 bytes long: a
        // name that would not fit is replaced by its hash (the record names the identity it is for).
        let name = format!("{IDENTITY}{}", identity.replace('/', ":"));
        if name.len() <= NAME_MAX {
            self.dir.join(name)
        } else {
            self.dir
                .join(format!("{IDENTITY}#{:016x}", fnv1a64(identity.as_bytes())))
        }
    }

    fn lock(&self, exclusive: bool) -> Result<Flock<File>, Error> {
        let path = self.dir.join(LOCK);
        let mode = if exclusive {
            LockMode::Exclusive
        } else {
            LockMode::Shared
        };
        durable::lock(&path, mode, self.lock_timeout).map_err(|e| match e {
            LockError::Busy { waited } => Error::Busy {
                path,
                waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            },
            LockError::Io(e) => Error::io("lock", &path, e),
        })
    }

    /// Removes stray temporary links. Only called under the exclusive lock, when no write is under way.
    fn clean_tmp(&self) {
        let tmp = self.dir.join(TMP);
        let Ok(entries) = fs::read_dir(&tmp) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a stray temporary link"),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove a temporary link")
                }
            }
        }
    }

    /// Reads the record at `path`: `None` when it does not exist.
    fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
        let target = match fs::read_link(path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(Errno::EINVAL as i32) => {
                return Err(Error::Corrupt {
                    path: path.to_path_buf(),
                    reason:
                        "not a symbolic link: the file store keeps each record as a link whose \
                             target is its JSON; fix or remove it by hand"
                            .to_string(),
                })
            }
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let text = target.as_os_str().as_bytes();
        serde_json::from_slice(text)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path: path.to_path_buf(),
                reason: format!("{e} ({} bytes); fix or remove it by hand", text.len()),
            })
    }

    fn read_lease(&self, ip: IpAddr) -> Result<Option<Lease>, Error> {
        let path = self.ip_path(ip);
        let lease: Option<Lease> = Self::read(&path)?;
        match lease {
            Some(l) if l.ip != ip => Err(Error::Corrupt {
                path,
                reason: format!("it holds a lease for {}", l.ip),
            }),
            other => Ok(other),
        }
    }

    /// Writes the record at `path`: a new link, or a link in `tmp/` renamed over the old one.
    /// Durable after the next [`FileStore::sync`].
    fn write<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), Error> {
        let json = serde_json::to_vec(value).map_err(|e| {
            Error::io(
                "encode",
                path,
                std::io::Error::new(ErrorKind::InvalidData, e),
            )
        })?;
        let target = OsStr::from_bytes(&json);
        match std::os::unix::fs::symlink(target, path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("write", path, e)),
        }
        let tmp = self.dir.join(TMP).join(format!(
            "{}.{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::os::unix::fs::symlink(target, &tmp)
            .and_then(|()| fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                Error::io("write", path, e)
            })
    }

    fn remove(path: &Path) -> Result<(), Error> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    /// Makes every change so far durable: one `fsync` of the network directory.
    fn sync(&self) -> Result<(), Error> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("sync directory", &self.dir, e))
    }

    /// The identity's latest addresses, as its record says.
    fn latest(&self, identity: &str) -> Result<Option<Latest>, Error> {
        let path = self.identity_path(identity);
        // A hashed name can collide: a record for another identity is no record for this one.
        Ok(Self::read::<Latest>(&path)?.filter(|l| l.identity == identity))
    }

    /// Records `ips` as the identity's latest addresses (for stickiness), if they changed.
    /// Returns whether anything was written.
    fn remember(&self, identity: &str, ips: Vec<IpAddr>) -> Result<bool, Error> {
        let latest = Latest {
            identity: identity.to_string(),
            ips,
        };
        if self.latest(identity)?.as_ref() == Some(&latest) {
            return Ok(false);
        }
        self.write(&self.identity_path(identity), &latest)?;
        Ok(true)
    }

    /// Rewrites, as they are, the identity records of the `freed` leases: a record's time is when
    /// its identity last let go of an address, which GC's retention counts from. Best effort: a
    /// DEL on a full disk must still free its addresses.
    fn touch_identities(&self, freed: &[Lease]) {
        let mut identities: Vec<&str> = freed.iter().map(|l| l.identity.as_str()).collect();
        identities.sort_unstable();
        identities.dedup();
        for identity in identities {
            let touched = self.latest(identity).and_then(|latest| match latest {
                Some(l) => self.write(&self.identity_path(identity), &l),
                None => Ok(()),
            });
            if let Err(e) = touched {
                tracing::warn!(%identity, error = %e, "could not refresh the sticky identity record");
            }
        }
    }

    /// The leases `att` holds: the addresses its index lists whose `ip:` record names it.
    fn attachment_leases(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        let Some(index) = Self::read::<IpList>(&self.attachment_path(att))? else {
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

    /// The records of the directory by kind; anything else (but the lock and `tmp/`) is corrupt.
    fn records(&self) -> Result<Records, Error> {
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io("list", &self.dir, e))?;
        let mut records = Records::default();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &self.dir, e))?;
            let name = entry.file_name();
            let name = name.to_str().unwrap_or_default();
            let corrupt = |reason: &str| Error::Corrupt {
                path: entry.path(),
                reason: reason.to_string(),
            };
            if let Some(ip) = name.strip_prefix(IP) {
                match IpAddr::from_str(ip) {
                    Ok(ip) => records.ips.push(ip),
                    Err(_) => records
                        .corrupt
                        .push(corrupt("an ip: record must be named ip:<IP address>")),
                }
            } else if let Some(att) = name.strip_prefix(ATTACHMENT) {
                match att.split_once(':') {
                    Some((cid, ifname)) => records.attachments.push(Attachment::new(cid, ifname)),
                    None => records.corrupt.push(corrupt(
                        "an attachment record must be named attachment:<container>:<ifname>",
                    )),
                }
            } else if name.starts_with(IDENTITY) {
                records.identities.push(entry.path());
            } else if !(name == LOCK || name == TMP) {
                records.corrupt.push(corrupt(
                    "not a record of the file store (ip:, attachment:, identity:, lock, tmp)",
                ));
            }
        }
        Ok(records)
    }
}

/// The names in a network directory, by kind.
#[derive(Default)]
struct Records {
    ips: Vec<IpAddr>,
    attachments: Vec<Attachment>,
    identities: Vec<PathBuf>,
    /// Names that are no record of the store.
    corrupt: Vec<Error>,
}

/// One allocation under the exclusive lock: claims are recorded, and written by `finish`.
struct Txn<'a> {
    store: &'a FileStore,
    pending: Vec<Lease>,
}

impl Claims for Txn<'_> {
    /// Every lease of a node's file store is the node's own, whatever name it recorded.
    fn is_local(&self, _: &Lease, _: Option<&str>) -> bool {
        true
    }

    fn held_by(&mut self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        self.store.attachment_leases(att)
    }

    fn previous(&mut self, identity: &str) -> Result<Vec<IpAddr>, Error> {
        Ok(self
            .store
            .latest(identity)?
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
            if store.remember(&req.identity, ips)? {
                store.sync()?;
            }
            return Ok(());
        }

        // 1. The attachment's index, first: whatever happens next, DEL can find the addresses.
        let index_path = store.attachment_path(&req.attachment);
        let mut index = FileStore::read::<IpList>(&index_path)?.unwrap_or_default();
        let before = index.ips.len();
        for ip in &ips {
            if !index.ips.contains(ip) {
                index.ips.push(*ip);
            }
        }
        if index.ips.len() != before {
            store.write(&index_path, &index)?;
        }

        // 2. The leases themselves.
        // On a failure the allocator calls `abandon`, which removes (or restores) what was written.
        for lease in &self.pending {
            store.write(&store.ip_path(lease.ip), lease)?;
        }

        // 3. The identity's addresses, for stickiness. Then all of it reaches the disk at once.
        store.remember(&req.identity, ips)?;
        store.sync()
    }

    fn abandon(&mut self, claimed: &[Claimed]) -> Result<(), Error> {
        // Claims are only written by `finish`: undo whatever of it was written.
        self.pending.clear();
        let store = self.store;
        for c in claimed {
            if store.read_lease(c.lease.ip)?.as_ref() == Some(&c.lease) {
                let path = store.ip_path(c.lease.ip);
                match &c.replaced {
                    Some(old) => store.write(&path, old)?,
                    None => FileStore::remove(&path)?,
                }
            }
        }
        store.sync()
    }
}

impl Store for FileStore {
    fn grant(
        &self,
        pool: &Pool,
        req: &AllocRequest,
        check: &dyn SandboxCheck,
    ) -> Result<Grant, Error> {
        names::validate_identity(&req.identity)?;
        req.attachment.validate()?;
        let _lock = self.lock(true)?;
        self.clean_tmp();
        let mut txn = Txn {
            store: self,
            pending: Vec::new(),
        };
        allocator::allocate(pool, req, self.node.as_deref(), &mut txn, check)
    }

    fn revert(&self, grant: &Grant) -> Result<(), Error> {
        if grant.claimed.is_empty() {
            return Ok(());
        }
        let _lock = self.lock(true)?;
        self.clean_tmp();
        let mut txn = Txn {
            store: self,
            pending: Vec::new(),
        };
        txn.abandon(&grant.claimed)?;
        // The index of an attachment left with no address goes too (it may have been new).
        for att in grant
            .claimed
            .iter()
            .map(|c| c.lease.attachment())
            .collect::<HashSet<_>>()
        {
            if self.attachment_leases(&att)?.is_empty() {
                FileStore::remove(&self.attachment_path(&att))?;
            }
        }
        self.sync()
    }

    /// A corrupt record never fails the release (kubelet would retry it forever, or Multus thick
    /// drop it): it is skipped with an error in the log, what can be read is freed, and
    /// [`Store::unreadable`] (`iotlan status`) and GC name the record. A corrupt `ip:` record
    /// keeps its address held, so nobody else gets it while it cannot be read; a corrupt index is
    /// made up for by a scan of the `ip:` records.
    fn release(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        att.validate()?;
        let _lock = self.lock(true)?;
        self.clean_tmp();
        let index_path = self.attachment_path(att);
        if fs::symlink_metadata(&index_path).is_err() {
            return Ok(Vec::new());
        }
        let (ips, index_readable) = match Self::read::<IpList>(&index_path) {
            Ok(index) => (index.unwrap_or_default().ips, true),
            Err(e @ Error::Corrupt { .. }) => {
                tracing::error!(error = %e, attachment = %att,
                    "skipping a corrupt record: searching the leases for the attachment's addresses");
                (self.records()?.ips, false)
            }
            Err(e) => return Err(e),
        };
        let mut freed = Vec::new();
        let mut skipped = false;
        for ip in ips {
            match self.read_lease(ip) {
                Ok(Some(l)) if l.is_held_by(att) => freed.push(l),
                Ok(_) => {}
                Err(e @ Error::Corrupt { .. }) => {
                    skipped = true;
                    tracing::error!(error = %e, attachment = %att,
                        "skipping a corrupt record: its address stays held until it is fixed or removed")
                }
                Err(e) => return Err(e),
            }
        }
        // The leases first, then the index: a crash in between leaves an index DEL can repeat.
        // An index that still lists a lease that could not be read stays, for a DEL after the fix.
        for l in &freed {
            FileStore::remove(&self.ip_path(l.ip))?;
        }
        if index_readable && !skipped {
            FileStore::remove(&index_path)?;
        }
        self.touch_identities(&freed);
        self.sync()?;
        Ok(freed)
    }

    fn find(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        att.validate()?;
        let _lock = self.lock(false)?;
        self.attachment_leases(att)
    }

    /// Frees what `valid` does not list. A corrupt record does not stop it: the others are still
    /// collected, and the first corrupt record is reported at the end (the spec's "keep going").
    fn gc(&self, valid: &[Attachment]) -> Result<Vec<Lease>, Error> {
        let valid: HashSet<&Attachment> = valid.iter().collect();
        let _lock = self.lock(true)?;
        self.clean_tmp();
        let records = self.records()?;
        let mut corrupt: Vec<Error> = records.corrupt;
        let mut freed = Vec::new();
        let mut holding: HashSet<String> = HashSet::new();
        let mut kept_attachments: HashSet<Attachment> = HashSet::new();
        let mut unreadable: HashSet<IpAddr> = HashSet::new();
        for &ip in &records.ips {
            let lease = match self.read_lease(ip) {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => {
                    unreadable.insert(ip);
                    corrupt.push(e);
                    continue;
                }
            };
            if valid.contains(&lease.attachment()) || super::too_young(&lease, self.gc_grace) {
                holding.insert(lease.identity.clone());
                kept_attachments.insert(lease.attachment());
            } else {
                FileStore::remove(&self.ip_path(lease.ip))?;
                freed.push(lease);
            }
        }
        for att in records.attachments {
            if valid.contains(&att) || kept_attachments.contains(&att) {
                continue;
            }
            // An index that lists an unreadable lease stays: it is how a DEL after the repair
            // finds that lease.
            let path = self.attachment_path(&att);
            let lists_unreadable = Self::read::<IpList>(&path)
                .ok()
                .flatten()
                .is_some_and(|i| i.ips.iter().any(|ip| unreadable.contains(ip)));
            if !lists_unreadable {
                FileStore::remove(&path)?;
            }
        }
        // An identity that lets go of an address here starts its retention now, as on DEL.
        self.touch_identities(&freed);
        holding.extend(freed.iter().map(|l| l.identity.clone()));
        if let Some(retention) = self.identity_retention {
            for path in records.identities {
                let latest = match Self::read::<Latest>(&path) {
                    Ok(Some(l)) => l,
                    Ok(None) => continue,
                    Err(e) => {
                        corrupt.push(e);
                        continue;
                    }
                };
                let age = fs::symlink_metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                if !holding.contains(&latest.identity) && age >= retention {
                    FileStore::remove(&path)?;
                    tracing::info!(identity = %latest.identity, path = %path.display(),
                        "removed a sticky identity record unused for the retention");
                }
            }
        }
        self.sync()?;
        for l in &freed {
            tracing::info!(ip = %l.ip, identity = %l.identity, container = %l.container_id, "gc released");
        }
        match corrupt.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(freed),
        }
    }

    /// Every lease that can be read; corrupt records are logged and left to [`Store::unreadable`].
    fn leases(&self) -> Result<Vec<Lease>, Error> {
        let _lock = self.lock(false)?;
        let records = self.records()?;
        let mut out = Vec::new();
        for &ip in &records.ips {
            match self.read_lease(ip) {
                Ok(Some(l)) => out.push(l),
                Ok(None) => {}
                Err(e @ Error::Corrupt { .. }) => {
                    tracing::warn!(error = %e, "skipping a corrupt record")
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|l| (Family::of(&l.ip), l.ip));
        Ok(out)
    }

    fn unreadable(&self) -> Result<Vec<String>, Error> {
        let _lock = self.lock(false)?;
        let records = self.records()?;
        let mut out: Vec<String> = records.corrupt.iter().map(ToString::to_string).collect();
        let mut check = |r: Result<(), Error>| match r {
            Err(e @ Error::Corrupt { .. }) => {
                out.push(e.to_string());
                Ok(())
            }
            other => other,
        };
        for &ip in &records.ips {
            check(self.read_lease(ip).map(drop))?;
        }
        for att in &records.attachments {
            check(Self::read::<IpList>(&self.attachment_path(att)).map(drop))?;
        }
        for path in &records.identities {
            check(Self::read::<Latest>(path).map(drop))?;
        }
        out.sort();
        Ok(out)
    }
}
