//! ipvlan, always L2: pods share the master's MAC, which survives uplinks that admit one MAC per
//! port (consumer routers, port security, Wi-Fi). L3/L3S are never used: they drop multicast.

use super::{explain, Child, CreateFailure, Driver};
use crate::net::netlink::{ChildKind, Link, Netlink, NewChild};

pub fn create(nl: &mut Netlink, master: &Link, child: &Child) -> Result<(), CreateFailure> {
    nl.create_child(&NewChild {
        name: &child.name,
        master_index: master.index,
        kind: ChildKind::IpvlanL2,
        mac: None,
        mtu: child.mtu,
        netns_fd: Some(child.netns_fd),
    })
    .map_err(|e| explain(Driver::Ipvlan, &master.name, child.mtu, &e))
}
