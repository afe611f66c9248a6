//! The reconcile passes: the safety net for DELs that never came.
//!
//! - [`cluster`]: the `kubernetes` store's leases, whatever their node;
//! - [`node_files`]: the file stores on this node;
//! - [`orphan`]: whether a lease's pod still exists, which both judge by.

pub mod cluster;
pub mod node_files;
pub mod orphan;

pub use cluster::{ReconcileReport, Reconciler, DEFAULT_IDENTITY_RETENTION};
pub use node_files::{FileReconcileReport, FileStoreReconciler};
