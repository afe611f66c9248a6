//! One allocation against the API server ([`Claims`] of the kubernetes store): atomic creates,
//! takeovers conditional on the old holder's resourceVersion, and their undoing.
//!
//! Requests of an ADD, in the common cases (a first-time pod, a sticky restart after its DEL, a
//! reserved address): one GET of the identity's object (its latest addresses, and what this
//! attachment already holds), one create of the address object, one create or replace of the
//! identity's object: 3, whatever the number of objects in the namespace. Each of the first two
//! candidates, when held, costs two more (the create's 409 and the read of its holder); later
//! candidates are read before they are created, one GET each. Nothing is listed: in a nearly
//! full pool the search reads candidates one GET at a time, in the identity's own order, so its
//! cost grows with how full the pool is (about 1/(1 - fullness) requests), never with the
//! number of objects in the namespace: a pool of 254 with 250 held costs about 50 GETs on average.
//!
//! The identity's object is read-modified-written through kube's [`Api::entry`]: the GET above is
//! the entry's, kept for the whole allocation, and [`OccupiedEntry::commit`] is the create (the
//! entry was vacant) or the replace, conditional on the resourceVersion read (it was occupied),
//! or no request when nothing changed. A lost race (409, or 404: deleted meanwhile) takes a new
//! entry, one GET, and merges again.
//!
//! [`Api::entry`]: kube::Api::entry

use std::cell::OnceCell;
use std::collections::HashMap;
use std::net::IpAddr;

use k8s_openapi::api::coordination::v1::Lease as KLease;
use kube::api::entry::{CommitError, Entry, OccupiedEntry};
use kube::api::PostParams;

use super::objects::{AddressRef, AttachmentRecord, IdentityRecord};
use super::{nodes, objects, KubernetesStore, Seen};
use crate::allocator::{Claimed, Claims};
use crate::error::Error;
use crate::lease::{AllocRequest, Attachment, Lease};

/// How often a claim is retried when its object changes hands between our read and our write.
const RACE_RETRIES: usize = 5;

/// How many candidates of the search are created without reading them first.
const OPTIMISTIC_CANDIDATES: usize = 2;

/// The names of the identity objects one allocation reads, kept beside it: an [`Entry`] borrows
/// the name it was taken for, and an allocation may change identities (rekey). Append-only, so
/// that a name, once given out, stays where it is.
#[derive(Default)]
pub(super) struct Names {
    name: OnceCell<String>,
    next: OnceCell<Box<Names>>,
}

impl Names {
    /// `name`, stored once.
    fn intern(&self, name: &str) -> &str {
        let mut cur = self;
        loop {
            let here = cur.name.get_or_init(|| name.to_string());
            if here == name {
                return here;
            }
            cur = cur.next.get_or_init(Box::default);
        }
    }
}

/// One allocation against the API server: what it read and created, for conditional writes.
pub(super) struct Txn<'a> {
    store: &'a KubernetesStore,
    seen: HashMap<IpAddr, Seen>,
    probes: usize,
    /// The identity and attachment this allocation is for.
    identity: String,
    att: Attachment,
    /// Where the names of `records` live.
    names: &'a Names,
    /// The objects of the identities this allocation was keyed by, as read or written (vacant:
    /// there is none).
    records: HashMap<String, Entry<'a, KLease>>,
    /// Nodes asked about in this allocation, and whether they are lost.
    lost: HashMap<String, bool>,
}

impl Txn<'_> {
    fn create(&mut self, lease: &Lease) -> Result<Option<Lease>, Error> {
        let s = self.store;
        let obj = objects::address_object(&s.network, &s.netkey, &s.namespace, lease);
        let name = s.name_of(lease.ip);
        for _ in 0..RACE_RETRIES {
            match s.conn.run(
                &format!("create lease {name}"),
                s.api.create(&PostParams::default(), &obj),
            ) {
                Ok(created) => {
                    let seen = s.seen(&created)?;
                    self.seen.insert(lease.ip, seen);
                    return Ok(None);
                }
                Err(e) if e.is(409) => match s.get(lease.ip)? {
                    // Ours already: an earlier try of this ADD claimed it but did not record it.
                    Some(holder) if holder.lease.is_held_by(&self.att) => {
                        self.seen.insert(lease.ip, holder);
                        return Ok(None);
                    }
                    Some(holder) => {
                        let h = holder.lease.clone();
                        self.seen.insert(lease.ip, holder);
                        return Ok(Some(h));
                    }
                    None => continue, // released between our create and our get: try again
                },
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable {
            reason: format!("{} changed hands repeatedly while being claimed", lease.ip),
        })
    }

    /// Replaces the object of `old` (a stale sandbox of the same pod) with `lease`, only while
    /// it is still exactly `old`.
    fn take_over(&mut self, lease: &Lease, old: &Lease) -> Result<Option<Lease>, Error> {
        let s = self.store;
        let current = match self.seen.get(&lease.ip) {
            Some(c) if c.lease == *old => c.clone(),
            _ => match s.get(lease.ip)? {
                Some(c) if c.lease == *old => c,
                Some(c) => return Ok(Some(c.lease)),
                None => return self.create(lease),
            },
        };
        let name = s.name_of(lease.ip);
        let mut obj = objects::address_object(&s.network, &s.netkey, &s.namespace, lease);
        obj.metadata.uid = Some(current.uid.clone());
        obj.metadata.resource_version = Some(current.resource_version.clone());
        match s.conn.run(
            &format!("replace lease {name}"),
            s.api.replace(&name, &PostParams::default(), &obj),
        ) {
            Ok(replaced) => {
                let seen = s.seen(&replaced)?;
                self.seen.insert(lease.ip, seen);
                Ok(None)
            }
            Err(e) if e.is(409) || e.is(404) => match s.get(lease.ip)? {
                Some(h) => {
                    let l = h.lease.clone();
                    self.seen.insert(lease.ip, h);
                    Ok(Some(l))
                }
                None => self.create(lease),
            },
            Err(e) => Err(e.into()),
        }
    }
}

impl Txn<'_> {
    /// The identity's object, read once per allocation (one GET: the entry's).
    fn record(&mut self) -> Result<Option<&KLease>, Error> {
        if !self.records.contains_key(&self.identity) {
            let s = self.store;
            let name = self
                .names
                .intern(&objects::identity_name(&s.netkey, &self.identity));
            let entry = s
                .conn
                .run(&format!("get lease {name}"), s.api.entry(name))?;
            self.records.insert(self.identity.clone(), entry);
        }
        Ok(self.records.get(&self.identity).and_then(Entry::get))
    }

    pub(super) fn parsed(&mut self) -> Result<IdentityRecord, Error> {
        let (network, identity) = (self.store.network.clone(), self.identity.clone());
        Ok(self
            .record()?
            .map(|o| IdentityRecord::of(&network, &identity, o))
            .unwrap_or_default())
    }

    /// The record's attachments with this one's entry set to `leases`: entries of this pod's other
    /// interfaces and of sandboxes whose DEL has not come stay (their DEL needs them), except those
    /// whose addresses this attachment now holds (taken over, or freed and claimed again).
    fn merged(&self, old: &IdentityRecord, leases: &[Lease]) -> Vec<AttachmentRecord> {
        let ours = AttachmentRecord {
            container_id: self.att.container_id.clone(),
            ifname: self.att.ifname.clone(),
            addresses: leases
                .iter()
                .map(|l| {
                    let seen = self.seen.get(&l.ip);
                    AddressRef {
                        ip: l.ip,
                        uid: seen.map(|x| x.uid.clone()).unwrap_or_default(),
                        rv: seen.map(|x| x.resource_version.clone()).unwrap_or_default(),
                    }
                })
                .collect(),
        };
        let mut out: Vec<AttachmentRecord> = old
            .attachments
            .iter()
            .flatten()
            .filter(|r| !r.is_of(&self.att))
            .filter(|r| {
                !r.addresses
                    .iter()
                    .all(|a| leases.iter().any(|l| l.ip == a.ip))
            })
            .cloned()
            .collect();
        out.push(ours);
        let excess = out.len().saturating_sub(objects::MAX_ATTACHMENTS);
        out.drain(..excess);
        out
    }
}

impl Claims for Txn<'_> {
    /// What the identity's object lists for this attachment, each read to confirm it (a retried
    /// ADD); nothing is read when it lists none (every first ADD of a sandbox). An object written
    /// before attachments were recorded names only the identity's latest addresses: those are read.
    fn held_by(&mut self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        let rec = self.parsed()?;
        let candidates: Vec<IpAddr> = match (rec.attachment(att), &rec.attachments) {
            (Some(entry), _) => entry.addresses.iter().map(|a| a.ip).collect(),
            // Written before attachments were recorded: the identity's latest addresses.
            (None, None) => rec.ips.clone(),
            (None, Some(_)) => Vec::new(),
        };
        let mut leases = Vec::new();
        for ip in candidates {
            if let Some(s) = self.store.get(ip)? {
                if s.lease.is_held_by(att) {
                    leases.push(s.lease.clone());
                    self.seen.insert(ip, s);
                }
            }
        }
        Ok(leases)
    }

    fn previous(&mut self, identity: &str) -> Result<Vec<IpAddr>, Error> {
        if identity != self.identity {
            return Ok(Vec::new());
        }
        Ok(self.parsed()?.ips)
    }

    fn holder(&mut self, ip: IpAddr) -> Result<Option<Lease>, Error> {
        match self.store.get(ip)? {
            Some(s) => {
                let l = s.lease.clone();
                self.seen.insert(ip, s);
                Ok(Some(l))
            }
            None => {
                self.seen.remove(&ip);
                Ok(None)
            }
        }
    }

    /// The first [`OPTIMISTIC_CANDIDATES`] candidates are taken as free (their create tells: a
    /// held one costs its 409 and the read of its holder); later ones are read first, so that in a
    /// nearly full pool a held one costs one GET. One this attachment holds already counts as free
    /// (its create then finds it ours).
    fn is_free(&mut self, ip: IpAddr) -> Result<bool, Error> {
        self.probes += 1;
        if self.probes <= OPTIMISTIC_CANDIDATES {
            return Ok(true);
        }
        let att = self.att.clone();
        Ok(self.holder(ip)?.is_none_or(|h| h.is_held_by(&att)))
    }

    fn claim(&mut self, lease: &Lease, replacing: Option<&Lease>) -> Result<Option<Lease>, Error> {
        match replacing {
            None => self.create(lease),
            Some(old) => self.take_over(lease, old),
        }
    }

    /// Writes the identity's object: its latest addresses, and this attachment's with the uid and
    /// resourceVersion of each address object, for DEL. Conditional on the object as read; a lost
    /// race reads it again and merges again.
    fn finish(&mut self, req: &AllocRequest, leases: &[Lease]) -> Result<(), Error> {
        let s = self.store;
        let ips: Vec<IpAddr> = leases.iter().map(|l| l.ip).collect();
        let name = objects::identity_name(&s.netkey, &req.identity);
        for _ in 0..RACE_RETRIES {
            let old = self.parsed()?;
            let attachments = self.merged(&old, leases);
            if old.ips == ips && old.attachments.as_ref() == Some(&attachments) {
                return Ok(());
            }
            let mut want = objects::identity_object_of(
                &s.network,
                &s.netkey,
                &s.namespace,
                &req.identity,
                &ips,
                &attachments,
            );
            // `parsed` read it: the entry is there.
            let Some(entry) = self.records.remove(&self.identity) else {
                continue;
            };
            let what = match entry {
                Entry::Vacant(_) => format!("create lease {name}"),
                Entry::Occupied(_) => format!("replace lease {name}"),
            };
            // Replaced whole, under the uid and resourceVersion read; created when there was none.
            let mut entry = entry
                .and_modify(|cur| {
                    want.metadata.uid = cur.metadata.uid.take();
                    want.metadata.resource_version = cur.metadata.resource_version.take();
                    std::mem::swap(cur, &mut want);
                })
                .or_insert(|| want);
            match s.conn.run(&what, commit(&mut entry)) {
                Ok(Ok(())) => {
                    self.records
                        .insert(self.identity.clone(), Entry::Occupied(entry));
                    return Ok(());
                }
                Ok(Err(invalid)) => {
                    return Err(Error::Unavailable {
                        reason: format!("{what}: not sent: {invalid}"),
                    })
                }
                // Changed or deleted since it was read: read again (the entry is dropped).
                Err(e) if e.is(409) || e.is(404) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable {
            reason: format!("lease {name} changed repeatedly while being written"),
        })
    }

    fn rekey(&mut self, identity: &str) {
        self.identity = identity.to_string();
    }

    fn node_lost(&mut self, node: &str) -> Result<bool, Error> {
        if let Some(lost) = self.lost.get(node) {
            return Ok(*lost);
        }
        let s = self.store;
        let lost = nodes::is_lost(&s.conn, &s.nodes, node, s.node_loss_grace)?;
        self.lost.insert(node.to_string(), lost);
        Ok(lost)
    }

    fn abandon(&mut self, claimed: &[Claimed]) -> Result<(), Error> {
        let s = self.store;
        let mut first_err = None;
        for c in claimed {
            // Only what is still exactly our claim is undone (conditional on its resourceVersion).
            let Some(ours) = self
                .seen
                .get(&c.lease.ip)
                .filter(|x| x.lease == c.lease)
                .cloned()
            else {
                continue;
            };
            let result = match &c.replaced {
                None => s.delete_exact(&ours).map(|_| ()),
                Some(old) => {
                    let name = s.name_of(old.ip);
                    let mut obj = objects::address_object(&s.network, &s.netkey, &s.namespace, old);
                    obj.metadata.uid = Some(ours.uid.clone());
                    obj.metadata.resource_version = Some(ours.resource_version.clone());
                    match s.conn.run(
                        &format!("replace lease {name}"),
                        s.api.replace(&name, &PostParams::default(), &obj),
                    ) {
                        Ok(_) => Ok(()),
                        Err(e) if e.is(409) || e.is(404) => Ok(()),
                        Err(e) => Err(e.into()),
                    }
                }
            };
            if let Err(e) = result {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Commits `entry` (one create or replace, or none when unchanged): the API server's refusal is
/// the request's error, a name or namespace the entry was not taken for is the inner one.
async fn commit(
    entry: &mut OccupiedEntry<'_, KLease>,
) -> Result<Result<(), kube::api::entry::CommitValidationError>, kube::Error> {
    match entry.commit(&PostParams::default()).await {
        Ok(()) => Ok(Ok(())),
        Err(CommitError::Save(e)) => Err(e),
        Err(CommitError::Validate(invalid)) => Ok(Err(invalid)),
    }
}

impl KubernetesStore {
    /// One allocation's transaction; `names` holds the names of the identity objects it reads.
    pub(super) fn txn<'a>(&'a self, names: &'a Names, identity: &str, att: &Attachment) -> Txn<'a> {
        Txn {
            store: self,
            names,
            seen: HashMap::new(),
            probes: 0,
            identity: identity.to_string(),
            att: att.clone(),
            records: HashMap::new(),
            lost: HashMap::new(),
        }
    }
}
