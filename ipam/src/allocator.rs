//! The allocation order, shared by every store.
//!
//! A store implements [`Claims`] (reads of its state plus an atomic claim of one address) and calls
//! [`allocate`]. The logic needs no global lock: a store that claims an address with an atomic create that
//! fails on conflict (an API object per address) reports the lost race from [`Claims::claim`], and the
//! search simply moves on to the next candidate. A store with a lock (the file store) can make `claim`
//! record the choice and write everything in [`Claims::finish`].
//!
//! Order, per family of the pool:
//! 1. the address reserved for the identity;
//! 2. else the requested address (`runtimeConfig.ips`): it must pass [`Pool::check_assignable`] and be
//!    free, or the ADD fails ([`Error::NotAllowed`] / [`Error::Conflict`]);
//! 3. else the identity's previous address (sticky across DEL), if still assignable and free;
//! 4. else the first free address of [`Pool::candidates`]: from the identity's hash slot, in strides
//!    also derived from its hash.
//!
//! Steps 1 to 3 claim first and read only when the claim loses (a lost claim names the holder), so a
//! free address costs one claim and no read; the takeover rules below apply to the holder so named.
//!
//! For a store without a lock: `holder`/`is_free` may be stale hints; `claim` is the atomic create (or,
//! with `replacing`, an update conditioned on the old holder's version) and reports a lost race by
//! returning the holder; `finish` records the identity's addresses (and any attachment index the store
//! keeps); `abandon` deletes what was claimed and puts back what a claim replaced.
//!
//! A lease held by the *same identity* under a *different container ID* belongs to an earlier sandbox of
//! this pod whose DEL has not come yet. Steps 1 to 3 take such an address over only when that sandbox
//! has certainly left the wire, because otherwise one address would be on two devices:
//! - on this node, when the caller's [`SandboxCheck`] says so (its namespace or its link is gone, or
//!   the node has rebooted since);
//! - on another node, when the store knows that node is lost ([`Claims::node_lost`]: gone, or not
//!   Ready for longer than a grace period, the Kubernetes force-delete contract).
//!
//! Otherwise the ADD fails with [`Error::StillInUse`] (retryable) and the old lease is left alone. The
//! old container's later DEL finds an address taken over no longer its own and leaves it alone.
//!
//! [`allocate`] returns a [`Grant`]: the leases and exactly the claims this allocation made, so that
//! a caller whose ADD fails later can undo only those ([`crate::Store::revert`]).

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::addr::Family;
use crate::error::Error;
use crate::lease::{AllocRequest, Attachment, AvoidReason, Lease};
use crate::names;
use crate::pool::Pool;

mod takeover;
use takeover::{claim_fixed, claim_own, Own, Takeover};

/// What a store offers the allocator. Called within one [`crate::Store::allocate`].
pub trait Claims {
    /// The leases `att` already holds (an ADD for it is then idempotent).
    fn held_by(&mut self, att: &Attachment) -> Result<Vec<Lease>, Error>;
    /// The addresses `identity` held most recently (kept after DEL, for stickiness).
    fn previous(&mut self, identity: &str) -> Result<Vec<IpAddr>, Error>;
    /// The lease holding `ip`, if any.
    fn holder(&mut self, ip: IpAddr) -> Result<Option<Lease>, Error>;
    /// Whether `ip` is free. Stores may answer this more cheaply than [`Claims::holder`]; the search
    /// asks it for every candidate.
    fn is_free(&mut self, ip: IpAddr) -> Result<bool, Error> {
        Ok(self.holder(ip)?.is_none())
    }
    /// Claims `lease.ip` for `lease`, atomically. `replacing` is the stale lease being taken over (the
    /// claim must then succeed only while that lease still holds the address). Returns `Ok(None)` when
    /// claimed, or `Ok(Some(holder))` when another lease holds the address (a lost race).
    fn claim(&mut self, lease: &Lease, replacing: Option<&Lease>) -> Result<Option<Lease>, Error>;
    /// Called once every family is claimed, with all leases of the attachment (kept and new): record the
    /// attachment's index and the identity's addresses for stickiness.
    fn finish(&mut self, req: &AllocRequest, leases: &[Lease]) -> Result<(), Error>;
    /// Called when the allocation fails after some claims: undo them (best effort), putting back any
    /// lease a claim replaced.
    fn abandon(&mut self, claimed: &[Claimed]) -> Result<(), Error>;
    /// Whether `holder` was taken on the node this allocation runs on (`node`). A store of one node
    /// (the file store) answers true for all of its leases.
    fn is_local(&self, holder: &Lease, node: Option<&str>) -> bool {
        holder.node.is_none() || holder.node.as_deref() == node
    }
    /// The allocation goes on under another key (`identity`): a store that caches what it read of the
    /// allocation's key reads that one's from now on. Stores that look every identity up by name
    /// need nothing.
    fn rekey(&mut self, identity: &str) {
        let _ = identity;
    }
    /// Whether `node` is lost: gone from the cluster, or not Ready for longer than the grace period.
    /// A store that cannot tell answers false (the lease is then never taken over).
    fn node_lost(&mut self, node: &str) -> Result<bool, Error> {
        let _ = node;
        Ok(false)
    }
}

/// Tells whether the sandbox holding a lease on this node has left the wire. The pool library knows no
/// namespaces or links: the CNI layer, which does, implements it.
pub trait SandboxCheck: Sync {
    /// True only when the sandbox of `holder` certainly no longer carries `holder.ip`.
    fn is_gone(&self, holder: &Lease) -> bool;
}

/// A check that never lets an address be taken over (a library caller that knows nothing of sandboxes).
pub struct NeverGone;

impl SandboxCheck for NeverGone {
    fn is_gone(&self, _: &Lease) -> bool {
        false
    }
}

/// What one allocation handed out: all leases of the attachment (kept and new), and the claims it
/// made itself, which are all that [`crate::Store::revert`] undoes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    pub leases: Vec<Lease>,
    pub claimed: Vec<Claimed>,
}

/// A claim made during one allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub lease: Lease,
    /// The stale lease of the same pod that this claim took over.
    pub replaced: Option<Lease>,
}

/// Runs the allocation order for `req` against a store's [`Claims`]. Returns one lease per family of the
/// pool, IPv4 first, and the claims made. `node` is recorded in new leases; `check` judges whether an
/// earlier sandbox of the same pod on this node has left the wire.
///
/// The key the leases are held under is the pod (`req.identity`), whatever the interface is called:
/// the order of a pod's networks sets its interface names (`networks: "cameras, iot"` makes iot's
/// attachment `net2`), and nothing that identifies the pod may depend on it. Two exceptions:
/// - a second attachment of the same network in the same sandbox (another interface of the same
///   container holds the pod's address) is keyed `identity@ifname`, found when a claim meets its
///   sibling, so that it costs nothing in the common case;
/// - an identity `namespace/name@ifname` left by a build that keyed every interface but `net1` so
///   ([`LEGACY_FIRST_IFNAME`]): when the pod has no reservation and no address of its own, but that
///   record names one, the attachment keeps using it, so a running home keeps its addresses (and the
///   CNI layer's MAC, derived from the same key) across the upgrade.
pub fn allocate(
    pool: &Pool,
    req: &AllocRequest,
    node: Option<&str>,
    claims: &mut dyn Claims,
    check: &dyn SandboxCheck,
) -> Result<Grant, Error> {
    names::validate_identity(&req.identity)?;
    req.attachment.validate()?;
    let requested = requested_per_family(pool, req)?;
    let mut keyed = keyed_request(pool, req, claims)?;
    let mut may_rekey = true;
    // At most: the pod's key, then the attachment's own (a second attachment, or the key its leases
    // already have), then that key once more were its store to answer differently.
    for _ in 0..3 {
        match allocate_as(pool, &keyed, &requested, node, claims, check, may_rekey)? {
            Keyed::Granted(g) => return Ok(g),
            Keyed::Rekey(key) => {
                claims.rekey(&key);
                keyed = AllocRequest {
                    identity: key,
                    ..req.clone()
                };
                may_rekey = false;
            }
        }
    }
    Err(Error::Unavailable {
        reason: format!(
            "{}: the key of its addresses changed while they were being allocated",
            req.attachment
        ),
    })
}

/// The interface name that a build before per-pod keys left unkeyed; every other interface of a
/// pod was keyed `namespace/name@ifname`.
pub const LEGACY_FIRST_IFNAME: &str = "net1";

/// The key of a second attachment of the same network in one sandbox: `identity@ifname`.
pub fn per_interface_key(req: &AllocRequest) -> String {
    format!("{}@{}", req.identity, req.attachment.ifname)
}

/// `req` under the key its leases are held by: the pod, or a legacy per-interface identity the pod
/// still holds its only addresses under (see [`allocate`]).
fn keyed_request(
    pool: &Pool,
    req: &AllocRequest,
    claims: &mut dyn Claims,
) -> Result<AllocRequest, Error> {
    let pod_named = req.identity.contains('/') && !req.identity.contains('@');
    let reserved = pool
        .families()
        .into_iter()
        .any(|f| pool.reservation(&req.identity, f).is_some());
    if !pod_named
        || req.attachment.ifname == LEGACY_FIRST_IFNAME
        || reserved
        || !req.requested.is_empty()
        || !claims.previous(&req.identity)?.is_empty()
    {
        return Ok(req.clone());
    }
    let legacy = per_interface_key(req);
    claims.rekey(&legacy);
    if claims.previous(&legacy)?.is_empty() {
        claims.rekey(&req.identity);
        return Ok(req.clone());
    }
    tracing::info!(identity = %req.identity, key = %legacy,
        "keeping the addresses an earlier build keyed by this interface's name");
    Ok(AllocRequest {
        identity: legacy,
        ..req.clone()
    })
}

/// The requested addresses, at most one per family of the pool.
fn requested_per_family(pool: &Pool, req: &AllocRequest) -> Result<Vec<IpAddr>, Error> {
    let families = pool.families();
    let mut requested: Vec<IpAddr> = Vec::new();
    for &ip in &req.requested {
        let fam = Family::of(&ip);
        if !families.contains(&fam) {
            return Err(Error::NotAllowed {
                ip,
                why: format!("pool {} has no {fam} subnet", pool.network()),
            });
        }
        if let Some(other) = requested.iter().find(|o| Family::of(o) == fam) {
            if *other != ip {
                return Err(Error::NotAllowed {
                    ip,
                    why: format!("{other} is requested too; one address per family"),
                });
            }
            continue;
        }
        requested.push(ip);
    }
    Ok(requested)
}

/// What one keyed allocation came to.
enum Keyed {
    Granted(Grant),
    /// The attachment's addresses are held under another key: its own, because another interface
    /// of the same sandbox holds the pod's address (a second attachment), or the one its leases
    /// already have (a retried ADD). Nothing of this try is left claimed.
    Rekey(String),
}

/// The allocation order under `req.identity`. `may_rekey`: a claim that meets another interface of
/// the same sandbox answers [`Keyed::Rekey`] with its own key instead of treating it as another pod.
fn allocate_as(
    pool: &Pool,
    req: &AllocRequest,
    requested: &[IpAddr],
    node: Option<&str>,
    claims: &mut dyn Claims,
    check: &dyn SandboxCheck,
    may_rekey: bool,
) -> Result<Keyed, Error> {
    let families = pool.families();
    let existing = claims.held_by(&req.attachment)?;
    if let Some(other) = existing
        .iter()
        .map(|l| &l.identity)
        .find(|k| **k != req.identity)
    {
        return Ok(Keyed::Rekey(other.clone()));
    }
    for l in &existing {
        if let Some(&want) = requested
            .iter()
            .find(|r| Family::of(r) == Family::of(&l.ip))
        {
            if want != l.ip {
                return Err(Error::NotAllowed {
                    ip: want,
                    why: format!("{} already holds {}", req.attachment, l.ip),
                });
            }
        }
    }

    let created_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let lease_for = |ip: IpAddr| Lease {
        ip,
        identity: req.identity.clone(),
        container_id: req.attachment.container_id.clone(),
        ifname: req.attachment.ifname.clone(),
        node: node.map(str::to_string),
        created_unix,
        sandbox: req.sandbox.clone(),
    };
    let mut takeover = Takeover {
        node,
        check,
        claims,
        may_rekey,
    };

    // Decide first, claim second: every refusal of the request comes before any claim.
    let mut plan: Vec<(Family, Option<IpAddr>)> = Vec::new();
    for fam in families {
        if existing.iter().any(|l| Family::of(&l.ip) == fam) {
            continue;
        }
        let want = requested.iter().copied().find(|r| Family::of(r) == fam);
        let fixed = match (pool.reservation(&req.identity, fam), want) {
            (Some(r), Some(w)) if r != w => {
                return Err(Error::NotAllowed {
                    ip: w,
                    why: format!("{} has the reserved address {r}", req.identity),
                })
            }
            (Some(r), _) => Some(r),
            (None, Some(w)) => {
                pool.check_assignable(w, &req.identity)?;
                Some(w)
            }
            (None, None) => None,
        };
        if let Some(ip) = fixed {
            if let Some(AvoidReason::NodeAddress { interface }) = req.avoided(ip) {
                return Err(Error::NotAllowed {
                    ip,
                    why: format!(
                        "it is this node's own address (on {interface}); a pod given it would take the \
                         node off the LAN: reserve another address for {}",
                        req.identity
                    ),
                });
            }
        }
        plan.push((fam, fixed));
    }

    let mut claimed: Vec<Claimed> = Vec::new();
    let mut previous: Option<Vec<IpAddr>> = None;
    for (fam, fixed) in plan {
        let result = match fixed {
            Some(ip) => claim_fixed(&mut takeover, req, lease_for(ip)),
            None => {
                if previous.is_none() {
                    previous = Some(takeover.claims.previous(&req.identity)?);
                }
                let sticky = previous
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|ip| Family::of(ip) == fam)
                    .filter(|ip| req.avoided(*ip).is_none())
                    .find(|ip| pool.check_assignable(*ip, &req.identity).is_ok());
                search(pool, &mut takeover, req, fam, sticky, &lease_for)
            }
        };
        match result {
            Ok(Some(c)) => claimed.push(c),
            Ok(None) => {
                undo(takeover.claims, &claimed);
                return Ok(Keyed::Rekey(per_interface_key(req)));
            }
            Err(e) => {
                undo(takeover.claims, &claimed);
                return Err(e);
            }
        }
    }

    let claims = takeover.claims;
    let mut all = existing;
    all.extend(claimed.iter().map(|c| c.lease.clone()));
    all.sort_by_key(|l| (Family::of(&l.ip), l.ip));
    if let Err(e) = claims.finish(req, &all) {
        undo(claims, &claimed);
        return Err(e);
    }
    Ok(Keyed::Granted(Grant {
        leases: all,
        claimed,
    }))
}

fn undo(claims: &mut dyn Claims, claimed: &[Claimed]) {
    if claimed.is_empty() {
        return;
    }
    if let Err(e) = claims.abandon(claimed) {
        tracing::warn!(error = %e, "could not undo a partial allocation");
    }
}

fn search(
    pool: &Pool,
    t: &mut Takeover,
    req: &AllocRequest,
    fam: Family,
    sticky: Option<IpAddr>,
    lease_for: &dyn Fn(IpAddr) -> Lease,
) -> Result<Option<Claimed>, Error> {
    if let Some(ip) = sticky {
        // The pod's own address; on a sandbox that may still be up it waits (StillInUse) rather
        // than hand the pod a second address under the same MAC. Held by another pod: search on.
        match claim_own(t, req, &lease_for(ip))? {
            Own::Claimed(c) => return Ok(Some(c)),
            Own::Sibling => return Ok(None),
            Own::HeldBy(_) | Own::LostTakeover => {}
        }
    }
    for ip in pool.candidates(fam, &req.identity) {
        if Some(ip) == sticky || req.avoided(ip).is_some() || !t.claims.is_free(ip)? {
            continue;
        }
        let lease = lease_for(ip);
        if t.claims.claim(&lease, None)?.is_none() {
            return Ok(Some(Claimed {
                lease,
                replaced: None,
            }));
        }
    }
    Err(pool.exhausted(fam))
}

#[cfg(test)]
mod tests;
