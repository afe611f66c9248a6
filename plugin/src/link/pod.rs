//! Configuring net1 inside the pod's namespace: name, IPv6 policy, addresses, link up, routes.
//! Everything here runs with the thread inside the pod's namespace.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use crate::cni::result::{IpConfig, Route};
use crate::config::Ipv6;
use crate::error::{Error, Result};
use crate::net::netlink::{Link, Netlink};

/// A step run with the link up and no address on it yet.
pub type BeforeAddresses<'a> = &'a mut dyn FnMut(&Link) -> Result<()>;

/// What [`configure`] adds beyond the addresses and the subnet's routes.
pub struct Extras<'a> {
    /// Multicast routes through the link ([`crate::link::routing`]).
    pub multicast: bool,
    /// Source-based routing for the link's addresses ([`crate::link::routing`]).
    pub source_routing: bool,
    /// Runs once the link is up and before any address is on it (the conflict check); an error
    /// stops the configuration. None: the addresses go on before the link comes up, so the kernel
    /// announces them itself at link-up.
    pub before_addresses: Option<BeforeAddresses<'a>>,
    /// IPv6 duplicate address detection on the link's IPv6 addresses (optimistic, so they are usable
    /// at once); off, they are added with `nodad`.
    pub ipv6_dad: bool,
}

/// Configures the freshly created link `made` (created under its final name, down): applies the
/// IPv6 policy, adds the addresses, brings it up and adds the routes (and the [`Extras`]). Returns
/// the configured link.
pub fn configure(
    nl: &mut Netlink,
    made: &Link,
    ips: &[IpConfig],
    routes: &[Route],
    ipv6: &Ipv6,
    extras: Extras,
) -> Result<Link> {
    let link = made;
    let ifname = made.name.as_str();
    crate::net::sysctl::apply_ipv6(ifname, ipv6).map_err(|e| {
        Error::io(
            format!("cannot set the IPv6 router-advertisement policy of {ifname}"),
            e,
        )
    })?;
    crate::net::sysctl::enable_announcements(ifname).map_err(|e| {
        Error::io(
            format!("cannot enable address announcements on {ifname}"),
            e,
        )
    })?;
    if extras.ipv6_dad && ips.iter().any(|ip| ip.address.is_ipv6()) {
        crate::net::sysctl::enable_optimistic_dad(ifname)
            .map_err(|e| Error::io(format!("cannot enable optimistic DAD on {ifname}"), e))?;
    }
    let probed = match extras.before_addresses {
        Some(check) => {
            bring_up(nl, link, ifname)?;
            check(link)?;
            true
        }
        None => false,
    };
    for ip in ips {
        nl.add_address(link.index, ip.address, !extras.ipv6_dad)
            .map_err(|e| Error::netlink(format!("cannot add {} to {ifname}", ip.address), e))?;
    }
    if !probed {
        bring_up(nl, link, ifname)?;
    }
    for r in routes {
        if r.dst.prefix() == 0 {
            return Err(Error::InvalidConfig(format!(
                "route {} would be a default route via {ifname}; iotlan never sends default traffic through \
                 the IoT LAN (remove it from the ipam routes)",
                r.dst
            )));
        }
        let gw = r.gw.or_else(|| gateway_for(ips, r.dst));
        match nl.add_route(link.index, r.dst, gw) {
            Ok(()) => {}
            // A second interface of the same network (net2 beside net1): the route is there already.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                tracing::warn!(dst = %r.dst, ifname, "the pod already has this route via another interface; keeping it");
            }
            Err(e) => {
                return Err(Error::netlink(
                    format!("cannot add route {} via {ifname}", r.dst),
                    e,
                ))
            }
        }
    }
    // Not read back: its index, name and MAC are `made`'s, and it is up now (its carrier is not
    // looked at).
    let link = Link {
        up: true,
        ..made.clone()
    };
    if extras.multicast {
        crate::link::routing::add_multicast(nl, &link, ips)?;
    }
    if extras.source_routing {
        let table =
            crate::link::routing::add_source_routing(nl, &link, ips, routes, extras.multicast)?;
        tracing::debug!(table, ifname, "source routing");
    }
    Ok(link)
}

/// Brings the link up. A macvlan whose MAC another link on the same master still uses cannot come
/// up (EADDRINUSE): that is an older sandbox of the same pod whose namespace the kernel is still
/// tearing down, so wait for it a little, then ask the runtime to retry.
fn bring_up(nl: &mut Netlink, link: &Link, ifname: &str) -> Result<()> {
    let deadline = Instant::now() + MAC_RELEASE_WAIT;
    loop {
        match nl.set_up(link.index) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                return Err(Error::TryAgainLater(format!(
                    "cannot bring {ifname} up: another link on the same master still uses MAC {} after {} s \
                     (an older sandbox of the same pod that is not torn down yet?)",
                    link.mac.map(|m| crate::link::mac::Mac(m).to_string()).unwrap_or_default(),
                    MAC_RELEASE_WAIT.as_secs()
                )))
            }
            Err(e) => return Err(Error::netlink(format!("cannot bring {ifname} up"), e)),
        }
    }
}

/// How long ADD waits for a dying sandbox to release the pod's MAC.
const MAC_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// The gateway of the same family as `dst`, for routes that name none.
fn gateway_for(ips: &[IpConfig], dst: IpNetwork) -> Option<IpAddr> {
    ips.iter()
        .filter(|ip| ip.address.is_ipv4() == dst.is_ipv4())
        .find_map(|ip| ip.gateway)
}

/// The link `name` in the pod if it is one iotlan makes (macvlan or ipvlan); None when it is missing
/// or is something else (left alone, with a warning).
pub fn find_ours(nl: &mut Netlink, name: &str) -> Result<Option<Link>> {
    let Some(link) = nl
        .link_by_name(name)
        .map_err(|e| Error::netlink("cannot list the pod's links", e))?
    else {
        return Ok(None);
    };
    match link.kind.as_deref() {
        Some("macvlan") | Some("ipvlan") => Ok(Some(link)),
        other => {
            tracing::warn!(ifname = name, kind = ?other, "not deleting an interface iotlan did not create");
            Ok(None)
        }
    }
}

/// Takes the link's addresses off it, so they leave the wire at once (deleting the link itself
/// waits for an RCU grace period).
pub fn withdraw_addresses(nl: &mut Netlink, link: &Link) -> Result<()> {
    let addrs = nl
        .addresses()
        .map_err(|e| Error::netlink("cannot list the pod's addresses", e))?;
    for a in addrs
        .iter()
        .filter(|a| a.index == link.index && !is_link_local(a.address.ip()))
    {
        match nl.delete_address(link.index, a.address) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) => {
                return Err(Error::netlink(
                    format!("cannot remove {} from {}", a.address, link.name),
                    e,
                ))
            }
        }
    }
    Ok(())
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Deletes the link; a link that is already gone is not an error.
pub fn delete(nl: &mut Netlink, link: &Link) -> Result<()> {
    match nl.delete_link(link.index) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(Error::netlink(
            format!("cannot delete {} from the pod", link.name),
            e,
        )),
    }
}
