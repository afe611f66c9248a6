//! macvlan: each pod gets its own MAC on the LAN, so routers and DHCP reservations see a distinct
//! client. Created directly inside the pod's namespace.

use std::os::fd::RawFd;

use netlink_packet_route::link::MacVlanMode;

use super::{explain, CreateFailure, Driver};
use crate::config::MacvlanMode as Mode;
use crate::link::mac::Mac;
use crate::net::netlink::{ChildKind, Link, Netlink, NewChild};

pub fn create(
    nl: &mut Netlink,
    master: &Link,
    pod_fd: RawFd,
    name: &str,
    mac: Mac,
    mode: Mode,
    mtu: Option<u32>,
) -> Result<(), CreateFailure> {
    let mode = match mode {
        Mode::Bridge => MacVlanMode::Bridge,
        Mode::Private => MacVlanMode::Private,
        Mode::Vepa => MacVlanMode::Vepa,
        Mode::Passthru => MacVlanMode::Passthrough,
    };
    nl.create_child(&NewChild {
        name,
        master_index: master.index,
        kind: ChildKind::Macvlan(mode),
        mac: Some(mac.0),
        mtu,
        netns_fd: Some(pod_fd),
    })
    .map_err(|e| explain(Driver::Macvlan, &master.name, mtu, &e))
}
