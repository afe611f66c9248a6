//! The iotlan IoT address pool: ranges, exclusions, reservations, sticky leases, the allocator and the
//! stores. Pure: no CNI types, no netlink.
//!
//! ```
//! use iotlan_ipam::{open_store, AllocRequest, Attachment, Pool, PoolConfig};
//! # let dir = std::env::temp_dir().join(format!("iotlan-ipam-doc-{}", std::process::id()));
//! let cfg: PoolConfig = serde_json::from_value(serde_json::json!({
//!     "type": "iotlan-ipam",
//!     "subnet": "192.168.20.0/24", "gateway": "192.168.20.1",
//!     "pool": ["192.168.20.200-192.168.20.239"],
//!     "reservations": { "home-assistant/home-assistant-0": "192.168.20.100" },
//!     "store": { "kind": "file", "dir": dir }
//! })).unwrap();
//! let pool = Pool::new("iot", &cfg).unwrap();
//! let store = open_store("iot", &cfg.store, &pool).unwrap();
//! let req = AllocRequest {
//!     identity: "home-assistant/home-assistant-0".into(),
//!     attachment: Attachment::new("c0ffee", "net1"),
//!     requested: vec![],
//!     ..AllocRequest::default()
//! };
//! let leases = store.allocate(&pool, &req).unwrap();
//! assert_eq!(leases[0].ip.to_string(), "192.168.20.100");
//! let alloc = pool.allocation(&leases);
//! assert_eq!(alloc.addresses[0].address.to_string(), "192.168.20.100/24");
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```
//!
//! # Configuration
//!
//! [`PoolConfig`] is the CNI config's `ipam` object and [`StoreConfig`] its `store`. What every key means
//! is in the README's configuration reference (the `ipam` and `ipam.store` tables), which a test of the
//! plugin checks against these structs. [`Pool::new`] validates the whole object and its errors name the
//! field (`pool[1]`, `ipv6.gateway`, `reservations["iot/esphome-0"]`).
//!
//! # Allocation order
//!
//! Per family: the identity's reservation; else the requested address (`runtimeConfig.ips`), which must
//! be inside the subnet, inside `pool` or reserved for this identity, and free, or the ADD fails; else the
//! identity's previous address (sticky, also after DEL); else the first free address searched from a slot
//! derived from the identity's FNV-1a 64 hash, in strides derived from the same identity (double
//! hashing; see [`Pool::slot`] and [`Pool::stride`]). Exclusions, the gateway, the network
//! and (IPv4) broadcast addresses are never handed out. Details: [`allocator`].
//!
//! # Stores
//!
//! [`Store`] is the interface; [`open_store`] opens the configured one. The file store's layout and its
//! crash-safety are described in [`store::file`].

pub mod addr;
pub mod allocator;
pub mod config;
pub mod durable;
pub mod error;
pub mod lease;
pub mod names;
pub mod node;
pub mod paths;
pub mod pool;
pub mod store;

pub use addr::Family;
pub use allocator::{Grant, NeverGone, SandboxCheck};
pub use config::{PoolConfig, StoreConfig};
pub use error::Error;
pub use lease::{
    AllocRequest, Allocation, Assigned, Attachment, Avoid, AvoidReason, Dns, Lease, Route, Sandbox,
};
pub use pool::Pool;
pub use store::{open_store, open_store_to_release, FileStore, MemoryStore, Store};
