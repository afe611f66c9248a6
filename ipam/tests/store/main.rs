//! The pool and its stores, as one test binary: the `ipam` object's validation (`config`), the file
//! store's own behaviour (`file_store`), the store contract against the file and memory stores
//! (`store_contract`), the allocator's invariants as property tests (`proptest_ops`) and the lifecycle
//! model against every store (`lifecycle_model`, the Kubernetes one through the API server double).
//!
//! Run: `cargo test -p iotlan-ipam --test store` (add `--features kubernetes` for the Kubernetes store
//! in the lifecycle model); a module's tests alone: `cargo test -p iotlan-ipam --test store proptest_ops`.

// The store contract (support/contract.rs) is shared with the Kubernetes store's tests, which are another
// binary (tests/kubernetes), and the node agent's; its macro instantiates the suite per store.
#[macro_use]
#[path = "../support/contract.rs"]
mod contract;

mod config;
mod file_store;
mod lifecycle_model;
mod proptest_ops;
mod store_contract;
