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
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::addr::Family;
use crate::allocator::{self, Claims, Grant, SandboxCheck};
use crate::error::Error;
use crate::lease::{AllocRequest, Attachment, Lease};
use crate::names;
use crate::pool::Pool;
use crate::store::Store;

mod records;
mod txn;

use txn::Txn;

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
