//! A small synchronous rtnetlink client. A socket is bound to the network namespace of the thread
//! that opened it, so one process can hold a socket in the node's namespace and one in the pod's.

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoIpVlan, InfoKind, InfoMacVlan, IpVlanMode, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage, MacVlanMode,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

mod codec;
mod neighbour;

use codec::Rt;

/// What iotlan needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// `IFLA_INFO_KIND`: "macvlan", "ipvlan", "veth", "bridge"...; None for plain devices.
    pub kind: Option<String>,
    pub up: bool,
    pub lower_up: bool,
    /// The parent's index, for macvlan/ipvlan/veth.
    pub parent: Option<u32>,
    pub macvlan_mode: Option<MacVlanMode>,
    pub ipvlan_mode: Option<IpVlanMode>,
}

/// The kind of child link to create on a master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildKind {
    Macvlan(MacVlanMode),
    /// Always L2: L3 and L3S drop multicast.
    IpvlanL2,
}

/// A new child link of a master, created directly in a target namespace.
pub struct NewChild<'a> {
    pub name: &'a str,
    pub master_index: u32,
    pub kind: ChildKind,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// The target namespace (IFLA_NET_NS_FD); None creates it in the socket's namespace.
    pub netns_fd: Option<RawFd>,
}

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub address: IpNetwork,
}

/// A route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a route socket in the calling thread's current network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Extended acks give the kernel's own explanation of a failure (e.g. for EINVAL).
        let _ = socket.set_ext_ack(true);
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(Rt(msg)));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;
        Ok(self.seq)
    }

    /// Sends a request and collects replies until the ack (or the end of a dump).
    pub(crate) fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, flags | NLM_F_REQUEST | NLM_F_ACK)?;
        let mut out = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let bytes = &self.buf[offset..n];
                let packet = NetlinkMessage::<Rt>::deserialize(bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = packet.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink: zero-length message",
                    ));
                }
                offset += (len + 3) & !3;
                if packet.header.sequence_number != seq {
                    continue;
                }
                match packet.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None if flags & NLM_F_DUMP == NLM_F_DUMP => continue,
                            None => Ok(out),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(Rt(m)) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// One link by name, or None when it does not exist.
    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.exchange(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(link_from)),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.exchange(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(link_from)),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.exchange(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies.into_iter().filter_map(link_from).collect())
    }

    /// Creates a macvlan/ipvlan child of `master_index`, directly inside `netns_fd` when given.
    pub fn create_child(&mut self, spec: &NewChild) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.to_string()));
        msg.attributes.push(LinkAttribute::Link(spec.master_index));
        if let Some(fd) = spec.netns_fd {
            msg.attributes.push(LinkAttribute::NetNsFd(fd));
        }
        if let Some(mtu) = spec.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = spec.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let info = match spec.kind {
            ChildKind::Macvlan(mode) => vec![
                LinkInfo::Kind(InfoKind::MacVlan),
                LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(mode)])),
            ],
            ChildKind::IpvlanL2 => vec![
                LinkInfo::Kind(InfoKind::IpVlan),
                LinkInfo::Data(InfoData::IpVlan(vec![InfoIpVlan::Mode(IpVlanMode::L2)])),
            ],
        };
        msg.attributes.push(LinkAttribute::LinkInfo(info));
        self.exchange(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// Sets a (down) link's MAC.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.exchange(RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
    }

    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.exchange(RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
    }

    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.exchange(RouteNetlinkMessage::DelLink(msg), 0)
            .map(drop)
    }

    /// Adds an address. `nodad` skips IPv6 duplicate address detection; without it an IPv6 address
    /// is optimistic (RFC 4429: usable at once while DAD runs; needs the link's `optimistic_dad`), so
    /// a tentative address never delays the pod's first packets by seconds.
    pub fn add_address(&mut self, index: u32, address: IpNetwork, nodad: bool) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(address.ip());
        msg.header.prefix_len = address.prefix();
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(address.ip()));
        msg.attributes.push(AddressAttribute::Address(address.ip()));
        if let IpNetwork::V4(v4) = address {
            if v4.prefix() < 31 {
                msg.attributes
                    .push(AddressAttribute::Broadcast(v4.broadcast()));
            }
        }
        if address.is_ipv6() {
            msg.attributes.push(AddressAttribute::Flags(if nodad {
                AddressFlags::Nodad
            } else {
                AddressFlags::Optimistic
            }));
        }
        self.exchange(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    pub fn delete_address(&mut self, index: u32, address: IpNetwork) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(address.ip());
        msg.header.prefix_len = address.prefix();
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(address.ip()));
        self.exchange(RouteNetlinkMessage::DelAddress(msg), 0)
            .map(drop)
    }

    pub fn addresses(&mut self) -> io::Result<Vec<Addr>> {
        let replies = self.exchange(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => {
                    let ip = a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let ip = ip.or_else(|| {
                        a.attributes.iter().find_map(|at| match at {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })?;
                    let address = IpNetwork::new(ip, a.header.prefix_len).ok()?;
                    Some(Addr {
                        index: a.header.index,
                        address,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Adds a route in the main table through `oif` (link scope when there is no gateway).
    pub fn add_route(
        &mut self,
        oif: u32,
        dst: IpNetwork,
        gateway: Option<IpAddr>,
    ) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dst.ip());
        msg.header.destination_prefix_length = dst.prefix();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Destination(route_address(dst.network())));
        if let Some(gw) = gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(route_address(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(oif));
        self.exchange(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Routes of the main table for one family.
    pub fn routes(&mut self, v6: bool) -> io::Result<Vec<RouteEntry>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self.exchange(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.table == RouteHeader::RT_TABLE_MAIN =>
                {
                    let mut dst = None;
                    let mut gateway = None;
                    let mut oif = None;
                    let mut table_main = true;
                    for a in &r.attributes {
                        match a {
                            RouteAttribute::Destination(d) => dst = ip_of(d),
                            RouteAttribute::Gateway(g) => gateway = ip_of(g),
                            RouteAttribute::Oif(i) => oif = Some(*i),
                            RouteAttribute::Table(t) => {
                                table_main = *t == u32::from(RouteHeader::RT_TABLE_MAIN)
                            }
                            _ => {}
                        }
                    }
                    if !table_main {
                        return None;
                    }
                    let any: IpAddr = if v6 {
                        IpAddr::from([0u16; 8])
                    } else {
                        IpAddr::from([0u8; 4])
                    };
                    let dst =
                        IpNetwork::new(dst.unwrap_or(any), r.header.destination_prefix_length)
                            .ok()?;
                    Some(RouteEntry { dst, gateway, oif })
                }
                _ => None,
            })
            .collect())
    }
}

pub(crate) fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

pub(crate) fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

pub(crate) fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn link_from(m: RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(l) = m else {
        return None;
    };
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        kind: None,
        up: l.header.flags.contains(LinkFlags::Up),
        lower_up: l.header.flags.contains(LinkFlags::LowerUp),
        parent: None,
        macvlan_mode: None,
        ipvlan_mode: None,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&a);
                link.mac = Some(mac);
            }
            LinkAttribute::Mtu(m) => link.mtu = Some(m),
            LinkAttribute::Link(p) => link.parent = Some(p),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::MacVlan(d)) => {
                            link.macvlan_mode = d.iter().find_map(|x| match x {
                                InfoMacVlan::Mode(m) => Some(*m),
                                _ => None,
                            })
                        }
                        LinkInfo::Data(InfoData::IpVlan(d)) => {
                            link.ipvlan_mode = d.iter().find_map(|x| match x {
                                InfoIpVlan::Mode(m) => Some(*m),
                                _ => None,
                            })
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(link)
}
