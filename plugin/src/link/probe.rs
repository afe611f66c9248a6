//! The gateway probe: after a link is up, can the gateway hear it? The kernel resolves the gateway
//! from the new link (its own ARP, from the link's MAC and address) and we watch the neighbour
//! entry. An uplink that drops unknown MACs (a consumer router, port security) never answers a
//! macvlan, while it answers ipvlan, which uses the master's MAC. Runs inside the pod's namespace.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use netlink_packet_route::neighbour::NeighbourState;

use crate::cni::result::CniResult;
use crate::error::Error;
use crate::link::mac::Mac;
use crate::net::netlink::{Link, Netlink};

/// Why the gateway probe did not pass.
pub enum Failure {
    /// The gateway stayed silent: the uplink may drop this link's MAC (another driver may work).
    Silent(String),
    Error(Error),
}

/// Waits for the IPv4 gateway of `addrs` to answer `link`, within `timeout`.
pub fn gateway_of(
    nl: &mut Netlink,
    link: &Link,
    addrs: &CniResult,
    timeout: Duration,
) -> Result<(), Failure> {
    let Some(gw) = addrs
        .ips
        .iter()
        .find_map(|ip| match (ip.address.ip(), ip.gateway) {
            (IpAddr::V4(_), Some(gw @ IpAddr::V4(_))) => Some(gw),
            _ => None,
        })
    else {
        return Err(Failure::Error(Error::InvalidConfig(
            "probe.gateway needs an IPv4 gateway in the ipam result (set ipam.gateway)".into(),
        )));
    };
    match gateway(nl, link.index, &link.name, gw, timeout) {
        Ok(Some(took)) => {
            tracing::debug!(gateway = %gw, took_ms = took.as_millis() as u64, "gateway answered the probe");
            Ok(())
        }
        Ok(None) => Err(Failure::Silent(format!(
            "gateway {gw} did not answer ARP from {} within {} ms (the uplink may drop unknown MACs)",
            Mac(link.mac.unwrap_or_default()),
            timeout.as_millis()
        ))),
        Err(e) => Err(Failure::Error(Error::io("cannot probe the gateway", e))),
    }
}

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
