//! Frames as they arrive on one interface of a namespace: an AF_PACKET socket, the way tcpdump
//! sees them (Ethernet header included). Open it before the traffic it should see is sent.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::{in_netns, Netns};

/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;

/// A packet socket bound to one interface and one EtherType.
#[derive(Debug)]
pub struct FrameCapture {
    fd: OwnedFd,
    what: String,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn open_on(ifname: &str, ethertype: u16) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(ifname)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string; socket(2) and bind(2) get a zeroed,
    // filled-in sockaddr_ll of the right size; the new fd is owned at once.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = cvt(libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ethertype.to_be()),
        ))?;
        let fd = OwnedFd::from_raw_fd(raw);
        let mut sll: libc::sockaddr_ll = mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ethertype.to_be();
        sll.sll_ifindex = ifindex as i32;
        cvt(libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_ll>() as u32,
        ))?;
        Ok(fd)
    }
}

impl FrameCapture {
    /// Starts capturing frames of `ethertype` that arrive on (or leave by) `ifname` in `ns`.
    pub fn open(ns: &Netns, ifname: &str, ethertype: u16) -> FrameCapture {
        let what = format!("{ifname} in {}", ns.name());
        let ifname = ifname.to_string();
        let fd = in_netns(ns, move || open_on(&ifname, ethertype))
            .unwrap_or_else(|e| panic!("cannot capture on {what}: {e}"));
        FrameCapture { fd, what }
    }

    /// Waits up to `timeout` for a frame that `wanted` accepts and returns it (from the Ethernet
    /// header on). Frames it does not accept are skipped.
    pub fn wait(&self, timeout: Duration, wanted: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
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
                panic!("poll on the capture of {}: {e}", self.what);
            }
            if ready == 0 {
                continue;
            }
            // SAFETY: recv(2) into a buffer of buf.len() bytes that we own.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) {
                    continue;
                }
                panic!("recv on the capture of {}: {e}", self.what);
            }
            let frame = &buf[..n as usize];
            if wanted(frame) {
                return Some(frame.to_vec());
            }
        }
    }
}

/// The parts of an Ethernet frame carrying IPv6 that the tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Frame {
    /// Destination MAC, lowercase `aa:bb:...`.
    pub dst_mac: String,
    /// Source MAC.
    pub src_mac: String,
    /// IPv6 hop limit.
    pub hop_limit: u8,
    /// IPv6 next header (17 UDP, 58 ICMPv6).
    pub next_header: u8,
    /// IPv6 source.
    pub src: std::net::Ipv6Addr,
    /// IPv6 destination.
    pub dst: std::net::Ipv6Addr,
    /// What follows the 40-byte IPv6 header.
    pub payload: Vec<u8>,
}

fn mac_string(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Ipv6Frame {
    /// Parses an Ethernet frame carrying IPv6 (no VLAN tag); None for anything else.
    pub fn parse(frame: &[u8]) -> Option<Ipv6Frame> {
        if frame.len() < 54 || frame[12..14] != ETH_P_IPV6.to_be_bytes() || frame[14] >> 4 != 6 {
            return None;
        }
        let ip = &frame[14..];
        let addr = |at: usize| -> Option<std::net::Ipv6Addr> {
            let octets: [u8; 16] = ip.get(at..at + 16)?.try_into().ok()?;
            Some(octets.into())
        };
        let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        Some(Ipv6Frame {
            dst_mac: mac_string(&frame[0..6]),
            src_mac: mac_string(&frame[6..12]),
            hop_limit: ip[7],
            next_header: ip[6],
            src: addr(8)?,
            dst: addr(24)?,
            payload: ip.get(40..40 + len)?.to_vec(),
        })
    }
}
