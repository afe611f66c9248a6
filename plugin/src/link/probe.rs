//! The gateway probe: after a link is up, can the gateway hear it? The kernel resolves the gateway
//! from the new link (its own ARP, from the link's MAC and address) and we watch the neighbour
//! entry. An uplink that drops unknown MACs (a consumer router, port security) never answers a
//! macvlan, while it answers ipvlan, which uses the master's MAC. Runs inside the pod's namespace.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use netlink_packet_route::neighbour::NeighbourState;

use crate::net::netlink::Netlink;

/// How often the kernel re-asks while probing (the default, 1 s, would send one request within a
/// typical timeout). The interface's own setting is restored afterwards.
const RETRANS_MS: u64 = 100;
/// How often the neighbour entry is read while waiting.
const POLL: Duration = Duration::from_millis(2);

/// Returns how long the gateway took to answer, or None when it stayed silent for `timeout`.
pub fn gateway(
    nl: &mut Netlink,
    ifindex: u32,
    ifname: &str,
    gateway: IpAddr,
    timeout: Duration,
) -> std::io::Result<Option<Duration>> {
    let family = if gateway.is_ipv4() { "ipv4" } else { "ipv6" };
    let retrans = format!("/proc/sys/net/{family}/neigh/{ifname}/retrans_time_ms");
    let previous = std::fs::read_to_string(&retrans).ok();
    if previous.is_some() {
        std::fs::write(&retrans, RETRANS_MS.to_string())?;
    }
    let outcome = wait_reachable(nl, ifindex, gateway, timeout);
    if let Some(p) = previous {
        let _ = std::fs::write(&retrans, p.trim());
    }
    outcome
}

fn wait_reachable(
    nl: &mut Netlink,
    ifindex: u32,
    gateway: IpAddr,
    timeout: Duration,
) -> std::io::Result<Option<Duration>> {
    let start = Instant::now();
    nl.neighbour_resolve(ifindex, gateway)?;
    while start.elapsed() < timeout {
        match nl.neighbour(ifindex, gateway)? {
            Some((NeighbourState::Reachable, _))
            | Some((NeighbourState::Stale, _))
            | Some((NeighbourState::Delay, _))
            | Some((NeighbourState::Probe, _)) => return Ok(Some(start.elapsed())),
            // The kernel gave up after its probes: ask again while time remains.
            Some((NeighbourState::Failed, _)) | None => nl.neighbour_resolve(ifindex, gateway)?,
            _ => {}
        }
        std::thread::sleep(POLL);
    }
    Ok(None)
}
