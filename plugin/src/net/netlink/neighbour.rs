//! The neighbour table: asking the kernel to resolve an address now, and reading its entry back
//! (the gateway probe's view of the wire, [`crate::link::probe`]).

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{family, Netlink};

impl Netlink {
    /// Asks the kernel to resolve `ip` on `ifindex` now (RTM_NEWNEIGH with NTF_USE): it sends the
    /// ARP request (or neighbour solicitation) itself, from the link's own MAC and address.
    pub fn neighbour_resolve(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(ip);
        msg.header.ifindex = ifindex;
        msg.header.state = NeighbourState::None;
        msg.header.flags = NeighbourFlags::Use;
        msg.attributes
            .push(NeighbourAttribute::Destination(match ip {
                IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
                IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
            }));
        self.exchange(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// The neighbour entry's state and link-layer address for `ip` on `ifindex`, if there is one.
    pub fn neighbour(
        &mut self,
        ifindex: u32,
        ip: IpAddr,
    ) -> io::Result<Option<(NeighbourState, Option<Vec<u8>>)>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(ip);
        let replies = self.exchange(RouteNetlinkMessage::GetNeighbour(msg), NLM_F_DUMP)?;
        for m in replies {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != ifindex {
                continue;
            }
            let mut dst = None;
            let mut lladdr = None;
            for a in n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        dst = Some(IpAddr::V4(v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        dst = Some(IpAddr::V6(v6))
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => lladdr = Some(l),
                    _ => {}
                }
            }
            if dst == Some(ip) {
                return Ok(Some((n.header.state, lladdr)));
            }
        }
        Ok(None)
    }
}
