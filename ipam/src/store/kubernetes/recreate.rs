//! Recreating the objects of one attachment on this node exactly as its node-local record has
//! them ([`super::node_record`]): the store's half of the node agent's re-assert pass, which reads
//! the records, judges their sandboxes and reports what this finds.
//!
//! For each lease of the record:
//! - the address object exists and is the attachment's: nothing to do (1 GET);
//! - it is missing: it is created again as the record has it (an atomic create: a concurrent ADD
//!   elsewhere that took the address first wins, and is then another attachment's, below), and
//!   the identity's object lists the attachment again, so its DEL finds it by name;
//! - another attachment holds the address: one address is on two devices already. Neither object
//!   is changed; the caller reports it.
//!
//! A missing address object whose identity's object still lists the attachment was freed on
//! purpose (the reconciler freed the Lease of a pod that is gone, whose DEL never came; a GC): a
//! loss takes the identity's object too. Nothing is recreated.

use super::KubernetesStore;
use crate::allocator::Claims;
use crate::error::Error;
use crate::lease::{AllocRequest, Lease};

/// What became of one lease of a node-local record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reasserted {
    /// Its object is there and the attachment's.
    Present,
    /// Its object was missing and is created again as the record has it.
    Recreated,
    /// It was freed on purpose since the record was written (the identity's object still lists the
    /// attachment with this address): nothing is recreated, and the record is stale.
    Released,
    /// Another attachment holds the address in the store (this lease): left alone.
    HeldBy(Lease),
}

impl KubernetesStore {
    /// Recreates the missing objects of `leases`, one attachment's leases as its node-local record
    /// has them (module docs). Returns what became of each, in order.
    pub fn reassert(&self, leases: &[Lease]) -> Result<Vec<Reasserted>, Error> {
        let Some(first) = leases.first() else {
            return Ok(Vec::new());
        };
        let att = first.attachment();
        let names = super::txn::Names::default();
        let mut txn = self.txn(&names, &first.identity, &att);
        let mut out = Vec::with_capacity(leases.len());
        for lease in leases {
            let holder = match self.get(lease.ip)? {
                Some(s) if s.lease.is_held_by(&att) => {
                    out.push(Reasserted::Present);
                    continue;
                }
                Some(s) => Some(s.lease),
                None => {
                    // Freed on purpose (the reconciler, GC, a DEL whose record outlived it): the
                    // identity's object still lists the attachment, which a loss would have taken
                    // with it.
                    let rec = txn.parsed()?;
                    if rec
                        .attachment(&att)
                        .is_some_and(|e| e.addresses.iter().any(|a| a.ip == lease.ip))
                    {
                        out.push(Reasserted::Released);
                        continue;
                    }
                    txn.claim(lease, None)?
                }
            };
            out.push(match holder {
                None => Reasserted::Recreated,
                Some(holder) => Reasserted::HeldBy(holder),
            });
        }
        if out.contains(&Reasserted::Recreated) {
            let req = AllocRequest {
                identity: first.identity.clone(),
                attachment: att,
                sandbox: first.sandbox.clone(),
                ..AllocRequest::default()
            };
            txn.finish(&req, leases)?;
        }
        Ok(out)
    }
}
