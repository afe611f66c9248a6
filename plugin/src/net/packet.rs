//! Extra announcement rounds (`announce.count` > 1): gratuitous ARP and unsolicited IPv6 neighbour
//! advertisements from user space. The first round is the kernel's own (arp_notify/ndisc_notify at
//! link-up) and costs nothing; closing a packet socket costs the kernel an RCU grace period
//! (~10-20 ms), which is why extra rounds are opt-in. Sockets bind to the namespace of the thread
//! that opens them, so these run while the thread is inside the pod's namespace.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An AF_PACKET socket carrying ARP on one interface.
pub struct ArpSocket {
    fd: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
}

impl ArpSocket {
    pub fn open(ifindex: u32, mac: [u8; 6]) -> io::Result<ArpSocket> {
        // SAFETY: plain socket(2)/bind(2) calls on a zeroed sockaddr_ll; the fd is owned at once.
        unsafe {
            let raw = cvt(libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ARP.to_be()),
            ))?;
            let fd = OwnedFd::from_raw_fd(raw);
            let mut sll: libc::sockaddr_ll = mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ARP.to_be();
            sll.sll_ifindex = ifindex as i32;
            cvt(libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_ll>() as u32,
            ))?;
            Ok(ArpSocket {
                fd,
                ifindex: ifindex as i32,
                mac,
            })
        }
    }

    /// Sends an ARP request for `target` from `sender`, to the broadcast address.
    /// With `sender == target` it is a gratuitous ARP (an RFC 5227 announcement).
    pub fn send_request(&self, sender: Ipv4Addr, target: Ipv4Addr) -> io::Result<()> {
        let mut pkt = [0u8; 28];
        pkt[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
        pkt[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
        pkt[4] = 6;
        pkt[5] = 4;
        pkt[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
        pkt[8..14].copy_from_slice(&self.mac);
        pkt[14..18].copy_from_slice(&sender.octets());
        pkt[24..28].copy_from_slice(&target.octets());
        // SAFETY: sendto(2) with a valid buffer and a zeroed, filled-in sockaddr_ll.
        unsafe {
            let mut sll: libc::sockaddr_ll = mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ARP.to_be();
            sll.sll_ifindex = self.ifindex;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&BROADCAST);
            let n = libc::sendto(
                self.fd.as_raw_fd(),
                pkt.as_ptr() as *const libc::c_void,
                pkt.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Waits until `deadline` for an ARP reply from `from`; returns the sender's MAC.
    pub fn wait_reply(
        &self,
        from: Ipv4Addr,
        deadline: std::time::Instant,
    ) -> io::Result<Option<[u8; 6]>> {
        self.wait_for(deadline, |p| {
            p[6..8] == 2u16.to_be_bytes() && p[14..18] == from.octets()
        })
    }

    /// Waits until `deadline` for any ARP packet (reply or request) whose sender IP is `ip` and
    /// whose sender MAC is not `own`: someone uses `ip` (RFC 5227's conflict). Returns that MAC.
    pub fn wait_claim(
        &self,
        ip: Ipv4Addr,
        own: [u8; 6],
        deadline: std::time::Instant,
    ) -> io::Result<Option<[u8; 6]>> {
        self.wait_for(deadline, |p| p[14..18] == ip.octets() && p[8..14] != own)
    }

    /// Waits until `deadline` for an ARP packet (28 bytes or more) that `wanted` accepts; returns its
    /// sender MAC.
    fn wait_for(
        &self,
        deadline: std::time::Instant,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> io::Result<Option<[u8; 6]>> {
        let mut buf = [0u8; 256];
        loop {
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll(2) on one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if ready == 0 {
                return Ok(None);
            }
            // SAFETY: recv(2) into a stack buffer of its own length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 28 && wanted(&buf[..n as usize]) {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&buf[8..14]);
                return Ok(Some(mac));
            }
        }
    }
}

/// Sends an unsolicited neighbour advertisement for `target` to all nodes (ff02::1).
pub fn send_unsolicited_na(ifindex: u32, mac: [u8; 6], target: Ipv6Addr) -> io::Result<()> {
    let mut pkt = [0u8; 32];
    pkt[0] = 136; // neighbour advertisement
    pkt[4] = 0x20; // override flag
    pkt[8..24].copy_from_slice(&target.octets());
    pkt[24] = 2; // option: target link-layer address
    pkt[25] = 1; // length in units of 8 bytes
    pkt[26..32].copy_from_slice(&mac);
    // SAFETY: socket/setsockopt/sendto with valid pointers and lengths; the fd is owned at once.
    unsafe {
        let raw = cvt(libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMPV6,
        ))?;
        let fd = OwnedFd::from_raw_fd(raw);
        let hops: libc::c_int = 255;
        cvt(libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_HOPS,
            &hops as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as u32,
        ))?;
        let mut dst: libc::sockaddr_in6 = mem::zeroed();
        dst.sin6_family = libc::AF_INET6 as u16;
        dst.sin6_addr.s6_addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
        dst.sin6_scope_id = ifindex;
        let n = libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr() as *const libc::c_void,
            pkt.len(),
            0,
            &dst as *const libc::sockaddr_in6 as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_in6>() as u32,
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
