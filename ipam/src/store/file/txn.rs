//! One allocation's transaction on the file store: the allocator's [`Claims`] under the lock.

use std::fs;
use std::io::ErrorKind;
use std::net::IpAddr;

use crate::allocator::{Claimed, Claims};
use crate::error::Error;
use crate::lease::{AllocRequest, Attachment, Lease};

use super::*;

/// One allocation under the exclusive lock: claims are recorded, and written by `finish`.
pub(super) struct Txn<'a> {
    pub(super) store: &'a FileStore,
    pub(super) pending: Vec<Lease>,
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
