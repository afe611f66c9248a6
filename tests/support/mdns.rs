//! mDNS on the simulated LAN: send, listen, round trip.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use crate::*;

/// Sends one UDP datagram from `ns` to 224.0.0.251:5353 (TTL 255, as mDNS does).
pub fn mdns_send(ns: &Netns, payload: &[u8]) {
    let payload = payload.to_vec();
    in_netns(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|e| panic!("bind: {e}"));
        sock.set_multicast_ttl_v4(255)
            .unwrap_or_else(|e| panic!("multicast ttl: {e}"));
        sock.send_to(&payload, SocketAddrV4::new(MDNS_GROUP, MDNS_PORT))
            .unwrap_or_else(|e| panic!("send to 224.0.0.251:5353: {e}"));
    });
}

/// A socket in a pod listening for mDNS on one interface (see [`mdns_listen`]).
#[derive(Debug)]
pub struct MdnsListener {
    sock: UdpSocket,
}

impl MdnsListener {
    /// Waits up to `timeout` for one datagram; returns its payload and source.
    pub fn recv(&self, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 9000];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).ok()?;
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
    }
}

/// Opens a UDP socket in `ns` bound to 0.0.0.0:5353 (SO_REUSEADDR) that joined 224.0.0.251
/// on `ifname`'s IPv4 address. Open it before the sender sends.
pub fn mdns_listen(ns: &Netns, ifname: &str) -> MdnsListener {
    let local = *ipv4_addrs(ns, ifname)
        .first()
        .unwrap_or_else(|| panic!("{ifname} in {} has no IPv4 address", ns.name()));
    let sock = in_netns(ns, move || {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .unwrap_or_else(|e| panic!("socket: {e}"));
        s.set_reuse_address(true)
            .unwrap_or_else(|e| panic!("SO_REUSEADDR: {e}"));
        s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, MDNS_PORT).into())
            .unwrap_or_else(|e| panic!("bind 0.0.0.0:5353: {e}"));
        s.join_multicast_v4(&MDNS_GROUP, &local)
            .unwrap_or_else(|e| panic!("IP_ADD_MEMBERSHIP 224.0.0.251 on {local}: {e}"));
        UdpSocket::from(s)
    });
    MdnsListener { sock }
}

/// Listens in `ns` on `ifname` for up to `timeout`; see [`mdns_listen`] to avoid racing the sender.
pub fn mdns_receive(ns: &Netns, ifname: &str, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    mdns_listen(ns, ifname).recv(timeout)
}

/// Sends `payload` from `sender` to the mDNS group and returns what `receiver` heard on
/// `ifname` (only a datagram carrying exactly `payload`), resending up to 3 times, 1 s apart.
pub fn mdns_roundtrip(
    sender: &Netns,
    receiver: &Netns,
    ifname: &str,
    payload: &[u8],
) -> Option<SocketAddr> {
    let listener = mdns_listen(receiver, ifname);
    for _ in 0..3 {
        mdns_send(sender, payload);
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match listener.recv(left) {
                Some((data, from)) if data == payload => return Some(from),
                Some(_) => continue,
                None => break,
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Requirements
// ---------------------------------------------------------------------------------------------
