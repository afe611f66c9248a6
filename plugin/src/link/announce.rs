//! Announcements of a new link's addresses, so that neighbours repoint at once after a move or a
//! restart. The kernel sends the first round itself as the link comes up (`arp_notify`,
//! `ndisc_notify`); these are the rounds after it (`announce.count` > 1).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::cni::result::CniResult;
use crate::net::netlink::Link;
use crate::net::packet::{self, ArpSocket};

/// Gratuitous ARP per IPv4 address, unsolicited NA per IPv6 address, `count - 1` rounds
/// `interval_ms` apart. Best effort: failures are logged.
pub fn again(link: &Link, addrs: &CniResult, count: u32, interval_ms: u64) {
    if count <= 1 {
        return;
    }
    let mac = link.mac.unwrap_or_default();
    let arp = ArpSocket::open(link.index, mac);
    for _ in 1..count {
        if interval_ms > 0 {
            std::thread::sleep(Duration::from_millis(interval_ms));
        }
        for ip in &addrs.ips {
            let sent = match ip.address.ip() {
                IpAddr::V4(v4) => match &arp {
                    Ok(sock) => sock.send_request(v4, v4),
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                },
                IpAddr::V6(v6) => packet::send_unsolicited_na(link.index, mac, v6),
            };
            if let Err(e) = sent {
                tracing::warn!(ip = %ip.address, error = %e, "could not announce the address");
            }
        }
    }
}

/// A gratuitous ARP per address from `sock` (the master's, on ipvlan): the link came up before its
/// address, so the kernel's own announcement had none to send.
pub fn from(sock: &ArpSocket, ips: &[Ipv4Addr]) {
    for ip in ips {
        if let Err(e) = sock.send_request(*ip, *ip) {
            tracing::warn!(%ip, error = %e, "could not announce the address");
        }
    }
}
