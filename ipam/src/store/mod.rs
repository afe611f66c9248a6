//! Where leases live. Every store implements [`Store`] with the same semantics, and runs the shared
//! allocation order of [`crate::allocator`] through its own [`crate::allocator::Claims`].

use std::sync::Arc;
use std::time::Duration;

use crate::allocator::{Grant, NeverGone, SandboxCheck};
use crate::config::{StoreConfig, DEFAULT_LOCK_TIMEOUT_MS};
use crate::error::Error;
use crate::lease::{AllocRequest, Attachment, Lease};
use crate::names;
use crate::pool::Pool;

pub mod file;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod memory;

pub use file::FileStore;
pub use memory::MemoryStore;

/// A lease store of one network.
pub trait Store: Send + Sync {
    /// Allocates one address per family of `pool` for `req.attachment`. Idempotent: an attachment that
    /// already holds leases gets them back (and any missing family is added). An address held by an
    /// earlier sandbox of the same pod is taken over only when `check` (this node) or the store (another
    /// node) knows that sandbox has left the wire; see [`crate::allocator`].
    fn grant(
        &self,
        pool: &Pool,
        req: &AllocRequest,
        check: &dyn SandboxCheck,
    ) -> Result<Grant, Error>;
    /// Undoes exactly the claims of `grant` (an ADD that failed after its allocation): a new lease is
    /// freed, a taken-over lease is put back, and nothing is touched that changed since. Leases the
    /// attachment already held before the grant stay.
    fn revert(&self, grant: &Grant) -> Result<(), Error>;
    /// [`Store::grant`] for a caller that knows nothing of sandboxes: it never takes an address over.
    fn allocate(&self, pool: &Pool, req: &AllocRequest) -> Result<Vec<Lease>, Error> {
        Ok(self.grant(pool, req, &NeverGone)?.leases)
    }
    /// Frees the leases of `att` and returns them. Idempotent: an unknown attachment frees nothing.
    /// The identity's addresses stay remembered for stickiness.
    fn release(&self, att: &Attachment) -> Result<Vec<Lease>, Error>;
    /// [`Store::release`] for a caller that knows the identity the attachment was granted for (the
    /// CNI layer does, from the pod's name): a store may then find the leases by the identity's
    /// record instead of searching (the kubernetes store: by name, no LIST). Frees the same leases.
    fn release_for(&self, identity: &str, att: &Attachment) -> Result<Vec<Lease>, Error> {
        let _ = identity;
        self.release(att)
    }
    /// The leases `att` holds (for CNI CHECK).
    fn find(&self, att: &Attachment) -> Result<Vec<Lease>, Error>;
    /// Frees every lease whose attachment is not in `valid` (CNI GC) and returns what was freed.
    fn gc(&self, valid: &[Attachment]) -> Result<Vec<Lease>, Error>;
    /// Every lease, sorted by address (for STATUS and the operator CLI).
    fn leases(&self) -> Result<Vec<Lease>, Error>;
    /// The records that cannot be read (each named, with why), for the operator CLI. A store whose
    /// records are checked by someone else (the API server) has none.
    fn unreadable(&self) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }
}

/// A shared store is a store (one handle per thread, same state).
impl<S: Store + ?Sized> Store for Arc<S> {
    fn grant(
        &self,
        pool: &Pool,
        req: &AllocRequest,
        check: &dyn SandboxCheck,
    ) -> Result<Grant, Error> {
        (**self).grant(pool, req, check)
    }
    fn revert(&self, grant: &Grant) -> Result<(), Error> {
        (**self).revert(grant)
    }
    fn release(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        (**self).release(att)
    }
    fn release_for(&self, identity: &str, att: &Attachment) -> Result<Vec<Lease>, Error> {
        (**self).release_for(identity, att)
    }
    fn find(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        (**self).find(att)
    }
    fn gc(&self, valid: &[Attachment]) -> Result<Vec<Lease>, Error> {
        (**self).gc(valid)
    }
    fn leases(&self) -> Result<Vec<Lease>, Error> {
        (**self).leases()
    }
    fn unreadable(&self) -> Result<Vec<String>, Error> {
        (**self).unreadable()
    }
}

/// Opens the store `cfg` describes for `network`.
///
/// `kind: "file"` (the default) keeps the network's leases under `<dir>/<network>/`.
pub fn open_store(network: &str, cfg: &StoreConfig, pool: &Pool) -> Result<Box<dyn Store>, Error> {
    if pool.network() != network {
        return Err(Error::config(
            "name",
            format!("the pool belongs to {:?}, not {network:?}", pool.network()),
        ));
    }
    open_kind(network, cfg, false)
}

/// Opens the store of `network` without a pool, from a `store` object read with
/// [`StoreConfig::lenient`]: what DEL needs to release, whatever else of the configuration ADD
/// would refuse today. The kind's own keys are read as leniently.
pub fn open_store_to_release(network: &str, cfg: &StoreConfig) -> Result<Box<dyn Store>, Error> {
    open_kind(network, cfg, true)
}

fn open_kind(network: &str, cfg: &StoreConfig, lenient: bool) -> Result<Box<dyn Store>, Error> {
    names::validate_network(network)?;
    cfg.validate()?;
    match cfg.kind.as_str() {
        "file" => {
            let timeout =
                Duration::from_millis(cfg.lock_timeout_ms.unwrap_or(DEFAULT_LOCK_TIMEOUT_MS));
            Ok(Box::new(
                FileStore::open(&cfg.dir().join(network), timeout)?
                    .with_identity_retention(cfg.identity_retention())
                    .with_gc_grace(cfg.gc_grace()),
            ))
        }
        #[cfg(feature = "kubernetes")]
        "kubernetes" => {
            let settings = if lenient {
                kubernetes::Settings::lenient(cfg)
            } else {
                kubernetes::Settings::from_config(cfg)?
            };
            Ok(Box::new(
                kubernetes::KubernetesStore::with_settings(network, settings)?
                    .with_gc_grace(cfg.gc_grace()),
            ))
        }
        #[cfg(not(feature = "kubernetes"))]
        "kubernetes" => {
            let _ = lenient;
            Err(Error::config(
                "store.kind",
                "this build has no kubernetes store (cargo feature \"kubernetes\")",
            ))
        }
        other => Err(Error::config(
            "store.kind",
            format!("unknown store kind {other:?}; expected \"file\" or \"kubernetes\""),
        )),
    }
}

/// Whether a lease is younger than `grace` (CNI GC leaves it alone: its ADD may still be in flight).
pub(crate) fn too_young(lease: &Lease, grace: Duration) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now.saturating_sub(lease.created_unix) < grace.as_secs()
}
