//! Claiming an address the pod already has a right to (a reservation, a request, its sticky address),
//! and taking it over from an earlier sandbox of the same pod only once that sandbox has left the
//! wire ([`super`]'s module docs).

use super::{Claimed, Claims, SandboxCheck};
use crate::error::Error;
use crate::lease::{AllocRequest, Lease};

/// The claims of one allocation with what it needs to judge a takeover.
pub(super) struct Takeover<'a> {
    pub(super) node: Option<&'a str>,
    pub(super) check: &'a dyn SandboxCheck,
    pub(super) claims: &'a mut dyn Claims,
    /// Whether meeting another interface of the same sandbox asks for a key of this attachment's own.
    pub(super) may_rekey: bool,
}

impl Takeover<'_> {
    /// `Ok(())` when `holder`, an earlier sandbox of the same pod, has certainly left the wire;
    /// [`Error::StillInUse`] otherwise.
    pub(super) fn may_replace(&mut self, holder: &Lease) -> Result<(), Error> {
        let why = if self.claims.is_local(holder, self.node) {
            if self.check.is_gone(holder) {
                return Ok(());
            }
            "its sandbox on this node may still carry the address".to_string()
        } else {
            let node = holder.node.as_deref().unwrap_or_default();
            if self.claims.node_lost(node)? {
                tracing::warn!(ip = %holder.ip, %node, container = %holder.container_id,
                    "taking over the address of a sandbox on a lost node");
                return Ok(());
            }
            format!("node {node} is not known to be lost (it exists and was Ready within the grace period)")
        };
        Err(Error::StillInUse {
            holder: Box::new(holder.clone()),
            why,
        })
    }
}

/// Whether `holder` is an earlier sandbox of the same pod (same identity, another container).
fn is_stale_self(holder: &Lease, req: &AllocRequest) -> bool {
    holder.identity == req.identity && holder.container_id != req.attachment.container_id
}

/// Whether `holder` is another interface of the same sandbox under the same key (a second
/// attachment of one network in one pod).
fn is_sibling(holder: &Lease, req: &AllocRequest) -> bool {
    holder.identity == req.identity
        && holder.container_id == req.attachment.container_id
        && holder.ifname != req.attachment.ifname
}

/// What one claim of an address the pod wants came to.
pub(super) enum Own {
    Claimed(Claimed),
    /// Another pod holds it.
    HeldBy(Lease),
    /// Another interface of the same sandbox holds it: this attachment needs its own key.
    Sibling,
    /// An earlier sandbox of this pod held it, had left the wire, and the takeover lost a race.
    LostTakeover,
}

/// Claims `lease.ip`, taking it over from an earlier sandbox of the same pod only when that sandbox
/// has left the wire ([`Takeover::may_replace`], else [`Error::StillInUse`]). Claim first, read
/// second: the claim is atomic and names the holder when it loses, so the common case (a free
/// address) costs one claim and no read.
pub(super) fn claim_own(t: &mut Takeover, req: &AllocRequest, lease: &Lease) -> Result<Own, Error> {
    let holder = match t.claims.claim(lease, None)? {
        None => {
            return Ok(Own::Claimed(Claimed {
                lease: lease.clone(),
                replaced: None,
            }))
        }
        Some(h) if is_stale_self(&h, req) => h,
        Some(h) if t.may_rekey && is_sibling(&h, req) => return Ok(Own::Sibling),
        Some(h) => return Ok(Own::HeldBy(h)),
    };
    t.may_replace(&holder)?;
    if t.claims.claim(lease, Some(&holder))?.is_some() {
        return Ok(Own::LostTakeover);
    }
    tracing::info!(ip = %lease.ip, old = %holder.container_id, new = %lease.container_id,
        identity = %req.identity, "took over the address of a stale sandbox of the same pod");
    Ok(Own::Claimed(Claimed {
        lease: lease.clone(),
        replaced: Some(holder),
    }))
}

/// Claims an address the attachment must get (a reservation or a request), taking over a stale lease of
/// the same identity; any other holder is a conflict. `None`: another interface of the same sandbox
/// holds it ([`super::Keyed::Rekey`]).
pub(super) fn claim_fixed(
    t: &mut Takeover,
    req: &AllocRequest,
    lease: Lease,
) -> Result<Option<Claimed>, Error> {
    // Two rounds: the holder may change between the lost claim and the takeover in a lock-free store.
    for _ in 0..2 {
        match claim_own(t, req, &lease)? {
            Own::Claimed(c) => return Ok(Some(c)),
            Own::Sibling => return Ok(None),
            Own::HeldBy(h) => return Err(h.conflict()),
            Own::LostTakeover => {}
        }
    }
    match t.claims.holder(lease.ip)? {
        Some(h) => Err(h.conflict()),
        None => Err(Error::Unavailable {
            reason: format!("{} changed hands repeatedly while being claimed", lease.ip),
        }),
    }
}
