//! iotlan: a CNI plugin that gives a pod an interface on the home/IoT LAN (macvlan, falling back to
//! ipvlan L2) with a static address from a reserved pool.

pub mod cli;
pub mod cni;
pub mod config;
pub mod conflict;
pub mod driver;
pub mod error;
pub mod ipam;
pub mod ipam_plugin;
pub mod logging;
pub mod mac;
pub mod master;
pub mod netlink;
pub mod netns;
pub mod packet;
pub mod pod;
pub mod probe;
pub mod routing;
pub mod rules;
pub mod sandbox;
pub mod shim;
pub mod sysctl;
pub mod verbs;
