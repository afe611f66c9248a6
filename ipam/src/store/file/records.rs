//! The file store's records: their paths, the lock, reading and writing one record, and the listing
//! of them all.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::fcntl::Flock;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::addr::{fnv1a64, Family};
use crate::durable::{self, LockError, LockMode};
use crate::error::Error;
use crate::lease::{Attachment, Lease};

use super::*;

impl FileStore {
    pub(super) fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(format!("{IP}{ip}"))
    }

    pub(super) fn attachment_path(&self, att: &Attachment) -> PathBuf {
        // Validated: a container ID of at most 200 bytes and an ifname of at most 15 fit NAME_MAX.
        self.dir
            .join(format!("{ATTACHMENT}{}:{}", att.container_id, att.ifname))
    }

    pub(super) fn identity_path(&self, identity: &str) -> PathBuf {
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

    pub(super) fn lock(&self, exclusive: bool) -> Result<Flock<File>, Error> {
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
    pub(super) fn clean_tmp(&self) {
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
    pub(super) fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
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

    pub(super) fn read_lease(&self, ip: IpAddr) -> Result<Option<Lease>, Error> {
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
    pub(super) fn write<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), Error> {
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

    pub(super) fn remove(path: &Path) -> Result<(), Error> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    /// Makes every change so far durable: one `fsync` of the network directory.
    pub(super) fn sync(&self) -> Result<(), Error> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("sync directory", &self.dir, e))
    }

    /// The identity's latest addresses, as its record says.
    pub(super) fn latest(&self, identity: &str) -> Result<Option<Latest>, Error> {
        let path = self.identity_path(identity);
        // A hashed name can collide: a record for another identity is no record for this one.
        Ok(Self::read::<Latest>(&path)?.filter(|l| l.identity == identity))
    }

    /// Records `ips` as the identity's latest addresses (for stickiness), if they changed.
    /// Returns whether anything was written.
    pub(super) fn remember(&self, identity: &str, ips: Vec<IpAddr>) -> Result<bool, Error> {
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
    pub(super) fn touch_identities(&self, freed: &[Lease]) {
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
    pub(super) fn attachment_leases(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
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
    pub(super) fn records(&self) -> Result<Records, Error> {
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
pub(super) struct Records {
    pub(super) ips: Vec<IpAddr>,
    pub(super) attachments: Vec<Attachment>,
    pub(super) identities: Vec<PathBuf>,
    /// Names that are no record of the store.
    pub(super) corrupt: Vec<Error>,
}
