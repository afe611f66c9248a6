//! macvlan: each pod gets its own MAC on the LAN, so routers and DHCP reservations see a distinct
//! client. Created directly inside the pod's namespace.

use netlink_packet_route::link::MacVlanMode;

use super::{explain, Child, CreateFailure, Driver};
use crate::config::MacvlanMode as Mode;
use crate::net::netlink::{ChildKind, Link, Netlink, NewChild};

pub fn create(nl: &mut Netlink, master: &Link, child: &Child) -> Result<(), CreateFailure> {
    let mode = match child.macvlan_mode {
        Mode::Bridge => MacVlanMode::Bridge,
        Mode::Private => MacVlanMode::Private,
        Mode::Vepa => MacVlanMode::Vepa,
        Mode::Passthru => MacVlanMode::Passthrough,
    };
    nl.create_child(&NewChild {
        name: &child.name,
        master_index: master.index,
        kind: ChildKind::Macvlan(mode),
        mac: Some(child.mac.0),
        mtu: child.mtu,
        netns_fd: Some(child.netns_fd),
    })
    .map_err(|e| explain(Driver::Macvlan, &master.name, child.mtu, &e))
}
