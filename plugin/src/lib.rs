//! iotlan: a CNI plugin that gives a pod an interface on the home/IoT LAN (macvlan, falling back to
//! ipvlan L2) with a static address from a reserved pool.
//!
//! - [`cni`]: the protocol (environment, versions, results, the entry point);
//! - [`verbs`]: ADD, DEL, CHECK, STATUS, GC, and the `iotlan-ipam` plugin's verbs;
//! - [`ipam`]: where an attachment's addresses come from (the pool in-process, or a delegated IPAM
//!   plugin), the conflict check on the LAN, and whether an earlier sandbox let go of them;
//! - [`link`]: the link drivers (macvlan, ipvlan) and their fallback, the pod's side of the link
//!   (configuration, routing, the gateway probe, the derived MAC) and the host shim;
//! - [`net`]: kernel plumbing (netlink, rules, packet sockets, sysctls, namespaces);
//! - [`cli`]: the operator's commands.

pub mod cli;
pub mod cni;
pub mod config;
pub mod error;
pub mod ipam;
pub mod link;
pub mod logging;
pub mod net;
pub mod verbs;
