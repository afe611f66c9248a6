//! ipvlan, always L2: pods share the master's MAC, which survives uplinks that admit one MAC per
//! port (consumer routers, port security, Wi-Fi). L3/L3S are never used: they drop multicast.

use std::os::fd::RawFd;

use super::{explain, CreateFailure, Driver};
use crate::net::netlink::{ChildKind, Link, Netlink, NewChild};

pub fn create(
    nl: &mut Netlink,
    master: &Link,
    pod_fd: RawFd,
    name: &str,
    mtu: Option<u32>,
) -> Result<(), CreateFailure> {
    nl.create_child(&NewChild {
        name,
        master_index: master.index,
        kind: ChildKind::IpvlanL2,
        mac: None,
        mtu,
        netns_fd: Some(pod_fd),
    })
    .map_err(|e| explain(Driver::Ipvlan, &master.name, mtu, &e))
}
