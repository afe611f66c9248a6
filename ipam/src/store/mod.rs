//! Where leases live. Every store implements [`Store`] with the same semantics, and runs the shared
//! allocation order of [`crate::allocator`] through its own [`crate::allocator::Claims`].

use std::sync::Arc;
use std::time::Duration;

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
    /// already holds leases gets them back (and any missing family is added).
    fn allocate(&self, pool: &Pool, req: &AllocRequest) -> Result<Vec<Lease>, Error>;
    /// Frees the leases of `att` and returns them. Idempotent: an unknown attachment frees nothing.
    /// The identity's addresses stay remembered for stickiness.
    fn release(&self, att: &Attachment) -> Result<Vec<Lease>, Error>;
    /// The leases `att` holds (for CNI CHECK).
    fn find(&self, att: &Attachment) -> Result<Vec<Lease>, Error>;
    /// Frees every lease whose attachment is not in `valid` (CNI GC) and returns what was freed.
    fn gc(&self, valid: &[Attachment]) -> Result<Vec<Lease>, Error>;
    /// Every lease, sorted by address (for STATUS and the operator CLI).
    fn leases(&self) -> Result<Vec<Lease>, Error>;
}

/// A shared store is a store (one handle per thread, same state).
impl<S: Store + ?Sized> Store for Arc<S> {
    fn allocate(&self, pool: &Pool, req: &AllocRequest) -> Result<Vec<Lease>, Error> {
        (**self).allocate(pool, req)
    }
    fn release(&self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        (**self).release(att)
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
}

/// Opens the store `cfg` describes for `network`.
///
/// `kind: "file"` (the default) keeps the network's leases under `<dir>/<network>/`.
pub fn open_store(network: &str, cfg: &StoreConfig, pool: &Pool) -> Result<Box<dyn Store>, Error> {
    names::validate_network(network)?;
    if pool.network() != network {
        return Err(Error::config(
            "name",
            format!("the pool belongs to {:?}, not {network:?}", pool.network()),
        ));
    }
    match cfg.kind.as_str() {
        "file" => {
            let timeout =
                Duration::from_millis(cfg.lock_timeout_ms.unwrap_or(DEFAULT_LOCK_TIMEOUT_MS));
            Ok(Box::new(
                FileStore::open(&cfg.dir().join(network), timeout)?
                    .with_identity_retention(cfg.identity_retention()),
            ))
        }
        #[cfg(feature = "kubernetes")]
        "kubernetes" => Ok(Box::new(kubernetes::KubernetesStore::open(network, cfg)?)),
        #[cfg(not(feature = "kubernetes"))]
        "kubernetes" => Err(Error::config(
            "store.kind",
            "this build has no kubernetes store (cargo feature \"kubernetes\")",
        )),
        other => Err(Error::config(
            "store.kind",
            format!("unknown store kind {other:?}; expected \"file\" or \"kubernetes\""),
        )),
    }
}
