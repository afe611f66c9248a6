//! The fallback policy: the pod's link is made by the first driver that works on this master.
//!
//! One [`attempt`] per driver, in [`super::order`], once the ADD's addresses are allocated: the
//! driver checks the configuration and creates the link, down, as `CNI_IFNAME`, directly inside the
//! pod's namespace; then, inside the pod, the link gets its MAC (that of the pool's key), comes up,
//! is probed for conflicts (RFC 5227, before any address is on it), gets its addresses and routes,
//! is probed for its gateway, and is announced. An attempt ends in one of:
//!
//! - [`Attempt::Up`]: the link works;
//! - [`Attempt::TryNext`]: this driver cannot work here (module missing, parent busy with the other
//!   kind, the gateway deaf to it), another one may;
//! - [`Attempt::Failed`]: nothing else can help (the error is the ADD's).
//!
//! An attempt that does not end `Up` deletes the link it created, by its index: never by
//! `CNI_IFNAME`, which may be the working interface of an earlier ADD of the same attachment. The
//! driver that worked is remembered per master in `auto` mode ([`super::memory`]).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::mac::Mac;
use super::{master, memory, pod, probe, Child, Driver};
use crate::cni::env::Container;
use crate::cni::result::CniResult;
use crate::config::{DriverChoice, NetConf};
use crate::error::{Error, Result};
use crate::ipam::conflict;
use crate::net::netlink::{Link, Netlink};
use crate::net::netns::Netns;
use crate::net::packet::ArpSocket;

/// Where and for whom the link is made.
pub struct Setup<'a> {
    pub conf: &'a NetConf,
    pub ctr: &'a Container,
    /// The node's namespace, where this thread returns after its work in the pod's.
    pub home: &'a Netns,
    pub pod_ns: &'a Netns,
    pub master: &'a Link,
}

/// The ADD's addresses, as an attempt needs them.
pub struct Addresses<'a> {
    pub result: &'a CniResult,
    /// The key the pool granted them under, which the derived MAC follows; `None` from a delegated
    /// IPAM plugin, which knows no key.
    pub key: Option<&'a str>,
    /// The IPv4 addresses the conflict check probes (new to this attachment, not verified lately).
    pub probe: &'a [Ipv4Addr],
    /// The IPv4 addresses taken over from a sandbox on another node: probed from the master first.
    pub taken_over: &'a [Ipv4Addr],
}

/// How one driver's attempt ended.
enum Attempt {
    Up(Link),
    /// This driver cannot work here; another one may. `gateway_silent`: the link was made but the
    /// gateway never answered it.
    TryNext {
        why: String,
        gateway_silent: bool,
    },
    Failed(Error),
}

/// Creates and configures the link with the first driver that works, remembering it in auto mode.
pub fn attach(setup: &Setup, nl: &mut Netlink, addrs: &Addresses) -> Result<(Link, Driver)> {
    let Setup { conf, master, .. } = *setup;
    let remembered = memory::load(&conf.state_dir, &master.name).map(|r| r.driver);
    let wireless = master::is_wireless(&master.name);
    if wireless && conf.driver == DriverChoice::Auto {
        tracing::info!(master = %master.name, "master is a Wi-Fi interface: using ipvlan");
    }
    let mut failures: Vec<String> = Vec::new();
    let mut gateway_silent_somewhere = false;
    let order = super::order(conf.driver, wireless);
    for (i, drv) in order.iter().copied().enumerate() {
        match attempt(drv, setup, nl, addrs) {
            Attempt::Up(link) => {
                if conf.driver == DriverChoice::Auto && remembered != Some(drv) {
                    let reason = match failures.is_empty() {
                        true => "worked first".to_string(),
                        false => failures.join("; "),
                    };
                    if let Err(e) = memory::remember(&conf.state_dir, &master.name, drv, &reason) {
                        tracing::warn!(error = %e, "could not remember the driver choice");
                    }
                }
                return Ok((link, drv));
            }
            Attempt::TryNext {
                why,
                gateway_silent,
            } => {
                if i + 1 < order.len() {
                    tracing::warn!(driver = %drv, master = %master.name, reason = %why, "falling back to the next driver");
                }
                gateway_silent_somewhere |= gateway_silent;
                failures.push(format!("{drv}: {why}"));
            }
            Attempt::Failed(e) => return Err(e),
        }
    }
    let text = failures.join("; ");
    Err(match gateway_silent_somewhere {
        true => Error::GatewayUnreachable(text),
        false => Error::Link(text),
    })
}

/// One driver's attempt (module docs).
fn attempt(drv: Driver, setup: &Setup, nl: &mut Netlink, addrs: &Addresses) -> Attempt {
    let Setup {
        conf,
        ctr,
        home,
        pod_ns,
        master,
    } = *setup;
    if let Err(e) = drv.validate(conf, master) {
        return Attempt::Failed(e);
    }
    let child = Child {
        name: ctr.ifname.clone(),
        netns_fd: pod_ns.fd().as_raw_fd(),
        mac: conf
            .requested_mac
            .unwrap_or_else(|| Mac::derived(&conf.name, &ctr.identity())),
        macvlan_mode: conf.macvlan_mode,
        mtu: conf.mtu,
    };
    if let Err(f) = drv.create(nl, master, &child) {
        if f.name_taken && pod_has(pod_ns, home, &child.name) {
            return Attempt::Failed(Error::InterfaceExists(format!(
                "the pod already has an interface named {}; CNI_IFNAME must be free",
                child.name
            )));
        }
        return match f.other_driver_may_work {
            true => Attempt::TryNext {
                why: f.message,
                gateway_silent: false,
            },
            false => Attempt::Failed(Error::Link(f.message)),
        };
    }
    // The master's sockets are opened in this namespace: one for a takeover's probe (it hears a
    // device with this pod's MAC), and on ipvlan the conflict check's (an answer to a probe comes to
    // the master's MAC).
    let (probe_targets, taken_over) = (addrs.probe, addrs.taken_over);
    let takeover_sock = match taken_over.is_empty() {
        true => None,
        false => match master_socket(master, "to probe a takeover") {
            Ok(s) => Some(s),
            Err(e) => return Attempt::Failed(e),
        },
    };
    let mut check_sock = None;
    if drv == Driver::Ipvlan && !probe_targets.is_empty() {
        match master_socket(master, "for the conflict check") {
            Ok(s) => check_sock = Some(s),
            Err(e) => return Attempt::Failed(e),
        }
    }
    let in_pod = pod_ns.run(home, || {
        let mut pnl = match Netlink::open() {
            Ok(n) => n,
            Err(e) => return Attempt::Failed(Error::netlink("cannot open a netlink socket in the pod", e)),
        };
        // The link this attempt made: the only one it may delete.
        let made = match pnl.link_by_name(&child.name) {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Attempt::Failed(Error::Link(format!(
                    "the new link {} vanished from the pod's namespace",
                    child.name
                )))
            }
            Err(e) => {
                return Attempt::Failed(Error::netlink(
                    format!("cannot find the new link {}", child.name),
                    e,
                ))
            }
        };
        let outcome = configure(drv, setup, &mut pnl, &made, addrs, ConfigureSockets {
            takeover: takeover_sock.as_ref(),
            check: &mut check_sock,
            taken_over,
            probe: probe_targets,
        });
        if !matches!(outcome, Attempt::Up(_)) {
            if let Err(e) = pod::delete(&mut pnl, &made) {
                tracing::warn!(ifname = %made.name, error = %e, "could not remove a half-made link");
            }
        }
        outcome
    });
    in_pod.unwrap_or_else(Attempt::Failed)
}

/// The sockets and targets of the probes an attempt runs.
struct ConfigureSockets<'s> {
    takeover: Option<&'s ArpSocket>,
    check: &'s mut Option<ArpSocket>,
    taken_over: &'s [Ipv4Addr],
    probe: &'s [Ipv4Addr],
}

/// Inside the pod: the link `made` gets its MAC, is checked, addressed, probed and announced.
fn configure(
    drv: Driver,
    setup: &Setup,
    pnl: &mut Netlink,
    made: &Link,
    a: &Addresses,
    sockets: ConfigureSockets,
) -> Attempt {
    let Setup {
        conf, ctr, master, ..
    } = *setup;
    if let Some(sock) = sockets.takeover {
        if let Err(e) = old_holder_silent(conf, sock, master, sockets.taken_over) {
            return Attempt::Failed(e);
        }
    }
    let made = match (drv, conf.requested_mac) {
        (Driver::Macvlan, None) => match mac_for_key(pnl, made, conf, ctr, a.key) {
            Ok(l) => l,
            Err(e) => return Attempt::Failed(e),
        },
        _ => made.clone(),
    };
    let timeout = Duration::from_millis(conf.conflict_check.as_ref().map_or(0, |c| c.timeout_ms));
    let check_sock = sockets.check;
    let targets = sockets.probe;
    let mut check = |l: &Link| conflict::check(check_sock, l, targets, timeout);
    let extras = pod::Extras {
        multicast: conf.multicast_routes,
        source_routing: conf.source_routing,
        ipv6_dad: conf.conflict_check.is_some(),
        before_addresses: match targets.is_empty() {
            true => None,
            false => Some(&mut check),
        },
    };
    let result = a.result;
    let link = match pod::configure(pnl, &made, &result.ips, &result.routes, &conf.ipv6, extras) {
        Ok(link) => link,
        Err(e) => return Attempt::Failed(e),
    };
    if let Some(sock) = check_sock.as_ref() {
        super::announce::from(sock, targets);
    }
    // The gateway probe runs only now, after the conflict check: a gateway ARP from a conflicting
    // address would overwrite the router's entry for the real device.
    if let Some(p) = &conf.probe {
        match probe::gateway_of(pnl, &link, result, Duration::from_millis(p.timeout_ms)) {
            Ok(()) => {}
            Err(probe::Failure::Silent(why)) => {
                return Attempt::TryNext {
                    why,
                    gateway_silent: true,
                }
            }
            Err(probe::Failure::Error(e)) => return Attempt::Failed(e),
        }
    }
    super::announce::again(
        &link,
        result,
        conf.announce.count,
        conf.announce.interval_ms,
    );
    Attempt::Up(link)
}

fn master_socket(master: &Link, what: &str) -> Result<ArpSocket> {
    ArpSocket::open(master.index, master.mac.unwrap_or_default()).map_err(|e| {
        Error::io(
            format!("cannot open an ARP socket on {} {what}", master.name),
            e,
        )
    })
}

/// The MAC follows the pool's key: a second attachment of the network in this pod gets its own,
/// derived from its key (two macvlans with one MAC on one master cannot both come up), and so does
/// a key an earlier build used. With a delegated IPAM plugin the pool knows no key: a second
/// attachment is the one whose pod already has a link with the pod's MAC.
fn mac_for_key(
    pnl: &mut Netlink,
    made: &Link,
    conf: &NetConf,
    ctr: &Container,
    key: Option<&str>,
) -> Result<Link> {
    let identity = ctr.identity();
    let key = match key {
        Some(key) if key == identity => return Ok(made.clone()),
        Some(key) => key.to_string(),
        None => {
            let links = pnl
                .links()
                .map_err(|e| Error::netlink("cannot list the pod's links", e))?;
            if !links
                .iter()
                .any(|l| l.index != made.index && l.mac.is_some() && l.mac == made.mac)
            {
                return Ok(made.clone());
            }
            iotlan_ipam::allocator::per_interface_key(&iotlan_ipam::AllocRequest {
                identity,
                attachment: iotlan_ipam::Attachment::new(&ctr.container_id, &ctr.ifname),
                ..Default::default()
            })
        }
    };
    let mac = Mac::derived(&conf.name, &key);
    pnl.set_mac(made.index, mac.0)
        .map_err(|e| Error::netlink(format!("cannot set {}'s MAC to {mac}", made.name), e))?;
    tracing::debug!(%key, %mac, "the MAC of this attachment's own key");
    Ok(Link {
        mac: Some(mac.0),
        ..made.clone()
    })
}

/// Before a takeover across nodes: while anything on the LAN still answers for the address (the
/// old sandbox on a node that lost its kubelet but still runs, with the same derived MAC), the ADD
/// waits (11), and the takeover is undone with the rest of the allocation. `sock` is the master's:
/// it hears a device with this pod's MAC, which the pod's own link would take for itself. Runs
/// while the pod's link is still down.
fn old_holder_silent(
    conf: &NetConf,
    sock: &ArpSocket,
    master: &Link,
    ips: &[Ipv4Addr],
) -> Result<()> {
    let own = master.mac.unwrap_or_default();
    let timeout = Duration::from_millis(
        conf.conflict_check
            .as_ref()
            .map_or(conflict::ConflictCheck::default().timeout_ms, |c| {
                c.timeout_ms
            }),
    );
    for ip in ips {
        let answer = conflict::probe(sock, *ip, own, timeout)
            .map_err(|e| Error::io(format!("cannot probe {ip} on {}", master.name), e))?;
        if let Some(mac) = answer {
            return Err(Error::TryAgainLater(format!(
                "{ip} was held by a sandbox on a node the cluster counts as lost, but {} still answers \
                 for it on the LAN: the old sandbox still runs (a node without its kubelet). The ADD is \
                 retried; stop that sandbox (or power the node off) to let the address move",
                Mac(mac)
            )));
        }
    }
    Ok(())
}

/// Whether the pod has a link named `ifname` (after the kernel refused to create one: EEXIST).
fn pod_has(pod_ns: &Netns, home: &Netns, ifname: &str) -> bool {
    pod_ns
        .run(home, || Netlink::open().ok()?.link_by_name(ifname).ok()?)
        .ok()
        .flatten()
        .is_some()
}
