//! One allocation against the API server ([`Claims`] of the kubernetes store): atomic creates,
//! takeovers conditional on the old holder's resourceVersion, and their undoing.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use kube::api::PostParams;

use super::{nodes, objects, KubernetesStore, Seen};
use crate::allocator::{Claimed, Claims};
use crate::error::Error;
use crate::lease::{AllocRequest, Attachment, Lease};

/// How often a claim is retried when its object changes hands between our read and our write.
const RACE_RETRIES: usize = 5;

/// How many candidates the search probes one GET at a time before it lists the network's
/// address objects once instead (a nearly full pool would otherwise cost a GET per held address).
const PROBES_BEFORE_LIST: usize = 8;

/// One allocation against the API server: what it read and created, for conditional writes.
pub(super) struct Txn<'a> {
    store: &'a KubernetesStore,
    seen: HashMap<IpAddr, Seen>,
    probes: usize,
    /// Addresses held when the search listed them. Only a hint: the create decides.
    held: Option<HashSet<IpAddr>>,
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

impl Claims for Txn<'_> {
    fn held_by(&mut self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        let held = self.store.held_by(att)?;
        let leases = held.iter().map(|s| s.lease.clone()).collect();
        for s in held {
            self.seen.insert(s.lease.ip, s);
        }
        Ok(leases)
    }

    fn previous(&mut self, identity: &str) -> Result<Vec<IpAddr>, Error> {
        let s = self.store;
        let name = objects::identity_name(&s.netkey, identity);
        let obj = s
            .conn
            .run(&format!("get lease {name}"), s.api.get_opt(&name))?;
        Ok(obj
            .map(|o| objects::identity_ips(&s.network, identity, &o))
            .unwrap_or_default())
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

    fn is_free(&mut self, ip: IpAddr) -> Result<bool, Error> {
        if self.held.is_none() && self.probes >= PROBES_BEFORE_LIST {
            let all = self.store.list(&[])?;
            self.held = Some(all.iter().map(|s| s.lease.ip).collect());
        }
        match &self.held {
            Some(held) => Ok(!held.contains(&ip)),
            None => {
                self.probes += 1;
                Ok(self.holder(ip)?.is_none())
            }
        }
    }

    fn claim(&mut self, lease: &Lease, replacing: Option<&Lease>) -> Result<Option<Lease>, Error> {
        match replacing {
            None => self.create(lease),
            Some(old) => self.take_over(lease, old),
        }
    }

    fn finish(&mut self, req: &AllocRequest, leases: &[Lease]) -> Result<(), Error> {
        let s = self.store;
        let ips: Vec<IpAddr> = leases.iter().map(|l| l.ip).collect();
        let name = objects::identity_name(&s.netkey, &req.identity);
        let want =
            objects::identity_object(&s.network, &s.netkey, &s.namespace, &req.identity, &ips);
        // Last writer wins: the record is only a hint for the next allocation of this identity.
        for _ in 0..RACE_RETRIES {
            let current = s
                .conn
                .run(&format!("get lease {name}"), s.api.get_opt(&name))?;
            let result = match current {
                None => s.conn.run(
                    &format!("create lease {name}"),
                    s.api.create(&PostParams::default(), &want),
                ),
                Some(cur) => {
                    if objects::identity_ips(&s.network, &req.identity, &cur) == ips {
                        return Ok(());
                    }
                    let mut obj = want.clone();
                    obj.metadata.resource_version = cur.metadata.resource_version.clone();
                    s.conn.run(
                        &format!("replace lease {name}"),
                        s.api.replace(&name, &PostParams::default(), &obj),
                    )
                }
            };
            match result {
                Ok(_) => return Ok(()),
                Err(e) if e.is(409) || e.is(404) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable {
            reason: format!("lease {name} changed repeatedly while being written"),
        })
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

impl KubernetesStore {
    pub(super) fn txn(&self) -> Txn<'_> {
        Txn {
            store: self,
            seen: HashMap::new(),
            probes: 0,
            held: None,
            lost: HashMap::new(),
        }
    }
}
