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
//! # Configuration reference (the CNI config's `ipam` object)
//!
//! Every key is camelCase; unknown keys (such as `type`) are ignored. [`Pool::new`] validates the whole
//! object and its errors name the field (`pool[1]`, `ipv6.gateway`, `reservations["iot/esphome-0"]`).
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `subnet` | CIDR, required | The LAN's subnet, IPv4 or IPv6, without host bits (`192.168.20.0/24`). IPv4 /1 to /30, IPv6 /1 to /126. |
//! | `gateway` | IP | The LAN's router, inside `subnet`. Never handed out, must not lie inside a `pool` entry, and is the gateway of the routes that have none. |
//! | `pool` | list, required | What iotlan may hand out. Each entry is an address, an inclusive range `a-b`, or a CIDR block `a/n`, inside `subnet`; entries must not overlap. Keep it outside the router's DHCP range. `[]` when only reservations are handed out. |
//! | `exclude` | list | Addresses, ranges or CIDR blocks inside `subnet` that are never handed out. |
//! | `ipv6` | object | Only with an IPv4 `subnet`: `{subnet, gateway, pool, exclude}` of an IPv6 subnet, same rules. The pool becomes dual-stack: every attachment gets one address of each family. |
//! | `reservations` | map | Pod identity to one address or a list (at most one per family). The identity is `namespace/name`, or the container ID when the runtime gives no pod name. A reserved address must lie inside its family's subnet (it may lie outside `pool`), must not be excluded, the gateway, the network or broadcast address, and may be reserved for one identity only. It is never handed to another identity. |
//! | `routes` | list | `{"dst": CIDR, "gw": IP}` routes via this network; `gw` is optional (the family's `gateway`, else on-link) and must lie inside the subnet. A default route (`0.0.0.0/0`, `::/0`) is refused: the pod's default route stays on its primary interface. |
//! | `dns` | object | `{nameservers: [IP], domain, search: [], options: []}`, passed to the CNI result. An empty `domain` is omitted. |
//! | `store.kind` | string | `file` (default; one node) or `kubernetes` (clusters, when built with it). |
//! | `store.dir` | path | File store: state directory, default `/var/lib/cni/iotlan`; the network's leases are in `<dir>/<name>/`. |
//! | `store.lockTimeoutMs` | integer | File store: how long an operation waits for the lock, default 10000; then it fails with a retryable error. |
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
