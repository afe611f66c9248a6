//! An in-memory store: the reference semantics in a few lines, for tests and for checking other stores
//! against. Not persistent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use crate::addr::Family;
use crate::allocator::{self, Claimed, Claims, Grant, SandboxCheck};
use crate::error::Error;
use crate::lease::{AllocRequest, Attachment, Lease};
use crate::pool::Pool;
use crate::store::Store;

#[derive(Debug, Default)]
struct State {
    leases: BTreeMap<IpAddr, Lease>,
    previous: BTreeMap<String, Vec<IpAddr>>,
}

/// A store held in memory, behind a mutex.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way that matters here.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn held_by(&self, att: &Attachment) -> Vec<Lease> {
        self.leases
            .values()
            .filter(|l| l.is_held_by(att))
            .cloned()
            .collect()
    }
}

impl Claims for State {
    fn held_by(&mut self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        Ok(State::held_by(self, att))
    }

    fn previous(&mut self, identity: &str) -> Result<Vec<IpAddr>, Error> {
        Ok(self.previous.get(identity).cloned().unwrap_or_default())
    }

    fn holder(&mut self, ip: IpAddr) -> Result<Option<Lease>, Error> {
        Ok(self.leases.get(&ip).cloned())
    }

    fn claim(&mut self, lease: &Lease, replacing: Option<&Lease>) -> Result<Option<Lease>, Error> {
        match self.leases.get(&lease.ip) {
            Some(h) if Some(h) != replacing => Ok(Some(h.clone())),
            _ => {
                self.leases.insert(lease.ip, lease.clone());
                Ok(None)
            }
        }
    }

    fn finish(&mut self, req: &AllocRequest, leases: &[Lease]) -> Result<(), Error> {
        let mut ips: Vec<IpAddr> = leases.iter().map(|l| l.ip).collect();
        ips.sort_by_key(|ip| (Family::of(ip), *ip));
        self.previous.insert(req.identity.clone(), ips);
        Ok(())
    }

    fn abandon(&mut self, claimed: &[Claimed]) -> Result<(), Error> {
        for c in claimed {
            if self.leases.get(&c.lease.ip) == Some(&c.lease) {
                match &c.replaced {
                    Some(old) => self.leases.insert(old.ip, old.clone()),
                    None => self.leases.remove(&c.lease.ip),
                };
            }
        }
        Ok(())
    }
}

impl Store for MemoryStore {
    fn grant(
        &self,
        pool: &Pool,
        req: &AllocRequest,
        check: &dyn SandboxCheck,
    ) -> Result<Grant, Error> {
        let mut state = self.lock();
        allocator::allocate(pool, req, None, &mut *state, check)
    }

    fn revert(&self, grant: &Grant) -> Result<(), Error> {
        self.lock().abandon(&grant.claimed)
    }

    fn release(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        att.validate()?;
        let mut state = self.lock();
        let freed = state.held_by(att);
        for l in &freed {
            state.leases.remove(&l.ip);
        }
        Ok(freed)
    }

    fn find(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        att.validate()?;
        Ok(self.lock().held_by(att))
    }

    fn gc(&self, valid: &[Attachment]) -> Result<Vec<Lease>, Error> {
        let valid: BTreeSet<&Attachment> = valid.iter().collect();
        let mut state = self.lock();
        let freed: Vec<Lease> = state
            .leases
            .values()
            .filter(|l| !valid.contains(&l.attachment()))
            .cloned()
            .collect();
        for l in &freed {
            state.leases.remove(&l.ip);
        }
        Ok(freed)
    }

    fn leases(&self) -> Result<Vec<Lease>, Error> {
        Ok(self.lock().leases.values().cloned().collect())
    }
}
