//! ADD: the addresses are allocated on a helper thread while the link is created directly inside the
//! pod's namespace by the driver that works on this master; then it is configured, optionally probed,
//! and announced.
//!
//! A failed ADD undoes only what it did itself:
//! - a driver attempt deletes the link it created, by its index, never by name (`CNI_IFNAME` may be
//!   the working interface of an earlier ADD of the same attachment, which a retried ADD must not
//!   harm);
//! - when the link part fails after the allocation, [`Ipam::undo`] takes back exactly this
//!   allocation's claims: a lease the attachment already held stays, and a lease taken over from an
//!   earlier sandbox is put back. A delegated IPAM plugin is called with DEL, except when
//!   `CNI_IFNAME` already existed (its addresses are then the earlier ADD's).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

use iotlan_ipam::Avoid;

use crate::cni::env::{Container, Env};
use crate::cni::result::{CniResult, Interface};
use crate::config::{DriverChoice, NetConf};
use crate::error::{Error, Result};
use crate::ipam::conflict;
use crate::ipam::conflict::Attached;
use crate::ipam::{Claim, Ipam};
use crate::link::mac::Mac;
use crate::link::{self, memory, Driver};
use crate::link::{master, pod, probe};
use crate::net::netlink::{Link, Netlink};
use crate::net::netns::Netns;
use crate::net::packet;

pub fn run(env: &Env, conf: &NetConf, ctr: &Container) -> Result<CniResult> {
    let netns_path = ctr
        .netns
        .as_ref()
        .ok_or_else(|| Error::InvalidEnv("CNI_NETNS is not set".into()))?;
    let home = Netns::current()?;
    let pod_ns = Netns::open(netns_path)
        .map_err(|e| {
            Error::io(
                format!(
                    "cannot open the pod's network namespace {}",
                    netns_path.display()
                ),
                e,
            )
        })?
        .ok_or_else(|| {
            Error::UnknownContainer(format!(
                "the pod's network namespace {} does not exist",
                netns_path.display()
            ))
        })?;
    let mut nl = Netlink::open().map_err(|e| Error::netlink("cannot open a netlink socket", e))?;
    let master = master::resolve(&mut nl, conf)?;
    if let Some(mtu) = conf.mtu {
        if let Some(mmtu) = master.mtu.filter(|m| mtu > *m) {
            return Err(Error::InvalidConfig(format!(
                "mtu {mtu} is larger than master {}'s mtu {mmtu}",
                master.name
            )));
        }
    }
    let ipam = Ipam::for_config(env, conf)?;
    // The node's own addresses are never a pod's (a delegated plugin keeps its own rules).
    let node = match ipam {
        Ipam::Pool { .. } => {
            let mut node = master::node_addresses(&mut nl, Some(&master), &conf.ipam_subnets())?;
            node.extend(
                conf.host_shim
                    .as_ref()
                    .and_then(|s| crate::link::shim::given_address(s, &master)),
            );
            node
        }
        Ipam::Delegate { .. } => Vec::new(),
    };
    let ctx = Ctx {
        conf,
        ctr,
        home: &home,
        pod_ns: &pod_ns,
        master: &master,
    };
    conflict::with_retries(conf, ctr, &ipam, node, |avoid| {
        add_once(&ctx, &mut nl, &ipam, avoid, netns_path)
    })
}

/// One ADD attempt with one allocation, avoiding `avoid`; a conflict found by the check undoes it
/// like any failure.
fn add_once(
    ctx: &Ctx,
    nl: &mut Netlink,
    ipam: &Ipam,
    avoid: &[Avoid],
    netns_path: &Path,
) -> Result<Attached> {
    let Ctx {
        conf, ctr, master, ..
    } = *ctx;
    std::thread::scope(|scope| {
        // The addresses are allocated on a helper thread (in this, the node's, namespace) while
        // this one creates the link: the store's fsync, or the delegated plugin's exec, overlaps
        // with the kernel's work.
        let mut addrs = Allocation::start(scope, || ipam.add(conf, ctr, Some(0), avoid));
        let attached = attach(ctx, nl, &mut addrs);
        match (attached, addrs.finish()) {
            (Ok((link, driver)), Ok((mut result, claim))) => {
                let key = claim.key().map_or_else(|| ctr.identity(), str::to_string);
                let mac = link.mac.map(Mac).map(|m| m.to_string()).unwrap_or_default();
                tracing::info!(
                    %driver, master = %master.name, ifname = %ctr.ifname, %mac,
                    ips = ?result.ips.iter().map(|i| i.address.to_string()).collect::<Vec<_>>(),
                    %key, container = %ctr.container_id, "attached"
                );
                if let Some(shim) = &conf.host_shim {
                    crate::link::shim::attach(conf, shim, ipam, ctr, master, driver, &result.ips);
                }
                result.interfaces = vec![Interface {
                    name: ctr.ifname.clone(),
                    mac,
                    mtu: conf.mtu,
                    sandbox: netns_path.display().to_string(),
                }];
                Ok(Attached { result, key })
            }
            // The addresses could not be had: the attempt removed the link it made already.
            (_, Err(e)) => Err(e),
            (Err(e), Ok((_, claim))) => {
                undo_allocation(ipam, conf, &claim, &e);
                Err(e)
            }
        }
    })
}

/// Takes back this ADD's allocation after its link part failed with `cause`.
fn undo_allocation(ipam: &Ipam, conf: &NetConf, claim: &Claim, cause: &Error) {
    if matches!(cause, Error::InterfaceExists(_)) && matches!(claim, Claim::Delegated) {
        tracing::info!("CNI_IFNAME exists already: leaving the delegated plugin's addresses to it");
        return;
    }
    if let Err(undo) = ipam.undo(conf, claim) {
        tracing::error!(error = %undo, "could not take back the addresses of a failed ADD");
    }
}

/// The addresses of one ADD, being allocated on a helper thread, then its outcome.
enum Allocation<'scope> {
    Running(ScopedJoinHandle<'scope, Result<(CniResult, Claim)>>),
    Done(Result<(CniResult, Claim)>),
}

impl<'scope> Allocation<'scope> {
    fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        f: impl FnOnce() -> Result<(CniResult, Claim)> + Send + 'scope,
    ) -> Allocation<'scope> {
        Allocation::Running(scope.spawn(f))
    }

    /// Waits for the allocation; `None` when it failed (`finish` returns the error).
    fn wait(&mut self) -> Option<(&CniResult, &Claim)> {
        if let Allocation::Running(_) = self {
            // Swapped out for a moment to be joined; the placeholder is overwritten at once.
            let placeholder = Allocation::Done(Ok((CniResult::default(), Claim::Delegated)));
            if let Allocation::Running(job) = std::mem::replace(self, placeholder) {
                *self = Allocation::Done(join(job));
            }
        }
        match self {
            Allocation::Done(Ok((r, c))) => Some((r, c)),
            _ => None,
        }
    }

    /// The allocation's outcome, waiting for it if nobody did yet.
    fn finish(self) -> Result<(CniResult, Claim)> {
        match self {
            Allocation::Running(job) => join(job),
            Allocation::Done(outcome) => outcome,
        }
    }
}

/// The helper thread's outcome; a panic there is this process's (the release build aborts on it).
fn join<T>(job: ScopedJoinHandle<'_, T>) -> T {
    job.join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// What one ADD works with.
struct Ctx<'a> {
    conf: &'a NetConf,
    ctr: &'a Container,
    home: &'a Netns,
    pod_ns: &'a Netns,
    master: &'a Link,
}

/// Creates and configures the link with the first driver that works, remembering it in auto mode.
fn attach(ctx: &Ctx, nl: &mut Netlink, addrs: &mut Allocation) -> Result<(Link, Driver)> {
    let Ctx { conf, master, .. } = *ctx;
    let remembered = memory::load(&conf.state_dir, &master.name).map(|r| r.driver);
    let wireless = master::is_wireless(&master.name);
    let order = link::order(conf.driver, wireless);
    if wireless && conf.driver == DriverChoice::Auto {
        tracing::info!(master = %master.name, "master is a Wi-Fi interface: using ipvlan");
    }
    let mut failures: Vec<String> = Vec::new();
    let mut gateway_silent_somewhere = false;
    for (i, drv) in order.iter().copied().enumerate() {
        let last = i + 1 == order.len();
        match try_driver(drv, ctx, nl, addrs) {
            Ok(link) => {
                if conf.driver == DriverChoice::Auto && remembered != Some(drv) {
                    let reason = if failures.is_empty() {
                        "worked first".to_string()
                    } else {
                        failures.join("; ")
                    };
                    if let Err(e) = memory::remember(&conf.state_dir, &master.name, drv, &reason) {
                        tracing::warn!(error = %e, "could not remember the driver choice");
                    }
                }
                return Ok((link, drv));
            }
            Err(Attempt::Fallback {
                msg,
                gateway_silent,
            }) => {
                gateway_silent_somewhere |= gateway_silent;
                failures.push(format!("{drv}: {msg}"));
                if last {
                    let text = failures.join("; ");
                    return Err(if gateway_silent_somewhere {
                        Error::GatewayUnreachable(text)
                    } else {
                        Error::Link(text)
                    });
                }
                tracing::warn!(driver = %drv, master = %master.name, reason = %msg, "falling back to the next driver");
            }
            Err(Attempt::Fatal(e)) => return Err(e),
            // `run` reports the allocation's own error.
            Err(Attempt::NoAddresses) => {
                return Err(Error::Link("no addresses were allocated".into()))
            }
        }
    }
    Err(Error::Link("no link driver to try".into()))
}

enum Attempt {
    /// This driver cannot work here; another one may. `gateway_silent`: the link was made but the
    /// gateway never answered it.
    Fallback {
        msg: String,
        gateway_silent: bool,
    },
    Fatal(Error),
    /// The address allocation failed: no driver can help (its error is the ADD's).
    NoAddresses,
}

fn try_driver(
    drv: Driver,
    ctx: &Ctx,
    nl: &mut Netlink,
    addrs: &mut Allocation,
) -> Result<Link, Attempt> {
    let Ctx {
        conf,
        ctr,
        home,
        pod_ns,
        master,
    } = *ctx;
    let temp = temp_name(&ctr.container_id, &ctr.ifname);
    let pod_fd = pod_ns.fd().as_raw_fd();
    let created = match drv {
        Driver::Macvlan => {
            let mac = conf
                .requested_mac
                .unwrap_or_else(|| Mac::derived(&conf.name, &ctr.identity()));
            link::macvlan::create(nl, master, pod_fd, &temp, mac, conf.macvlan_mode, conf.mtu)
        }
        Driver::Ipvlan => {
            if let Some(mac) = conf.requested_mac {
                return Err(Attempt::Fatal(Error::InvalidConfig(format!(
                    "runtimeConfig.mac {mac} cannot be applied on master {}: ipvlan links share the master's MAC",
                    master.name
                ))));
            }
            link::ipvlan::create(nl, master, pod_fd, &temp, conf.mtu)
        }
    };
    if let Err(f) = created {
        return Err(if f.other_driver_may_work {
            Attempt::Fallback {
                msg: f.message,
                gateway_silent: false,
            }
        } else {
            Attempt::Fatal(Error::Link(f.message))
        });
    }

    // The allocation is needed from here on: which addresses to probe, and (ipvlan) the master's
    // socket for the probe, opened in this namespace.
    let identity = ctr.identity();
    let key = addrs
        .wait()
        .and_then(|(_, c)| c.key())
        .unwrap_or(&identity)
        .to_string();
    let targets = addrs
        .wait()
        .map(|(r, c)| conflict::targets(conf, &key, r, c))
        .unwrap_or_default();
    // An address taken over from a sandbox on another node (its node is lost, the store says):
    // nothing may answer for it on the LAN any more. Probed from the master, which hears the old
    // device even though it has this pod's MAC.
    let taken_over = addrs
        .wait()
        .map(|(_, c)| taken_over_from_another_node(c))
        .unwrap_or_default();
    let takeover_sock = match taken_over.is_empty() {
        true => None,
        false => Some(
            packet::ArpSocket::open(master.index, master.mac.unwrap_or_default())
                .map_err(|e| {
                    Error::io(
                        format!(
                            "cannot open an ARP socket on {} to probe a takeover",
                            master.name
                        ),
                        e,
                    )
                })
                .map_err(Attempt::Fatal)?,
        ),
    };
    let mut sock = None;
    if drv == Driver::Ipvlan && !targets.is_empty() {
        match packet::ArpSocket::open(master.index, master.mac.unwrap_or_default()) {
            Ok(s) => sock = Some(s),
            Err(e) => {
                return Err(Attempt::Fatal(Error::io(
                    format!(
                        "cannot open an ARP socket on {} for the conflict check",
                        master.name
                    ),
                    e,
                )))
            }
        }
    }
    let outcome = pod_ns
        .run(home, || -> Result<Result<Link, Attempt>> {
            let mut pnl = Netlink::open()
                .map_err(|e| Error::netlink("cannot open a netlink socket in the pod", e))?;
            // The link this attempt made: the only one it may delete.
            let made = pnl
                .link_by_name(&temp)
                .map_err(|e| Error::netlink(format!("cannot find the new link {temp}"), e))?
                .ok_or_else(|| {
                    Error::Link(format!(
                        "the new link {temp} vanished from the pod's namespace"
                    ))
                })?;
            let Some((addrs, claim)) = addrs.wait() else {
                delete_made(&mut pnl, &made);
                return Ok(Err(Attempt::NoAddresses));
            };
            if let Some(s) = &takeover_sock {
                if let Err(e) = old_holder_silent(conf, s, master, &taken_over) {
                    delete_made(&mut pnl, &made);
                    return Ok(Err(Attempt::Fatal(e)));
                }
            }
            let made = match (drv, conf.requested_mac) {
                (Driver::Macvlan, None) => match mac_for_key(&mut pnl, &made, conf, ctr, claim) {
                    Ok(l) => l,
                    Err(e) => {
                        delete_made(&mut pnl, &made);
                        return Ok(Err(Attempt::Fatal(e)));
                    }
                },
                _ => made,
            };
            let timeout =
                Duration::from_millis(conf.conflict_check.as_ref().map_or(0, |c| c.timeout_ms));
            let mut check = |l: &Link| conflict::check(&mut sock, l, &targets, timeout);
            let extras = pod::Extras {
                multicast: conf.multicast_routes,
                source_routing: conf.source_routing,
                ipv6_dad: conf.conflict_check.is_some(),
                before_addresses: if targets.is_empty() {
                    None
                } else {
                    Some(&mut check)
                },
            };
            let link = match pod::configure(
                &mut pnl,
                &made,
                &ctr.ifname,
                &addrs.ips,
                &addrs.routes,
                &conf.ipv6,
                extras,
            ) {
                Ok(link) => link,
                Err(e) => {
                    delete_made(&mut pnl, &made);
                    return Ok(Err(Attempt::Fatal(e)));
                }
            };
            // The link came up before its address: the kernel's own announcement had none to send.
            if let Some(sock) = &sock {
                for ip in &targets {
                    if let Err(e) = sock.send_request(*ip, *ip) {
                        tracing::warn!(%ip, error = %e, "could not announce the address");
                    }
                }
            }
            // The gateway probe runs only now, after the conflict check: a gateway ARP from a
            // conflicting address would overwrite the router's entry for the real device.
            if let Some(probe) = &conf.probe {
                if let Err(msg) = probe_gateway(
                    &mut pnl,
                    &link,
                    addrs,
                    Duration::from_millis(probe.timeout_ms),
                ) {
                    delete_made(&mut pnl, &made);
                    return Ok(Err(match msg {
                        ProbeFailure::Silent(msg) => Attempt::Fallback {
                            msg,
                            gateway_silent: true,
                        },
                        ProbeFailure::Error(e) => Attempt::Fatal(e),
                    }));
                }
            }
            announce_again(&link, addrs, conf.announce.count, conf.announce.interval_ms);
            Ok(Ok(link))
        })
        .map_err(Attempt::Fatal)?;
    outcome.map_err(Attempt::Fatal)?
}

enum ProbeFailure {
    Silent(String),
    Error(Error),
}

/// Waits for the IPv4 gateway to answer the new link, within the timeout.
fn probe_gateway(
    nl: &mut Netlink,
    link: &Link,
    addrs: &CniResult,
    timeout: Duration,
) -> Result<(), ProbeFailure> {
    let Some(gw) = addrs
        .ips
        .iter()
        .find_map(|ip| match (ip.address.ip(), ip.gateway) {
            (IpAddr::V4(_), Some(gw @ IpAddr::V4(_))) => Some(gw),
            _ => None,
        })
    else {
        return Err(ProbeFailure::Error(Error::InvalidConfig(
            "probe.gateway needs an IPv4 gateway in the ipam result (set ipam.gateway)".into(),
        )));
    };
    match probe::gateway(nl, link.index, &link.name, gw, timeout) {
        Ok(Some(took)) => {
            tracing::debug!(gateway = %gw, took_ms = took.as_millis() as u64, "gateway answered the probe");
            Ok(())
        }
        Ok(None) => Err(ProbeFailure::Silent(format!(
            "gateway {gw} did not answer ARP from {} within {} ms (the uplink may drop unknown MACs)",
            Mac(link.mac.unwrap_or_default()),
            timeout.as_millis()
        ))),
        Err(e) => Err(ProbeFailure::Error(Error::io("cannot probe the gateway", e))),
    }
}

/// Extra announcement rounds after the kernel's own at link-up (`announce.count` > 1): gratuitous
/// ARP per IPv4 address, unsolicited NA per IPv6 address. Best effort: failures are logged.
fn announce_again(link: &Link, addrs: &CniResult, count: u32, interval_ms: u64) {
    if count <= 1 {
        return;
    }
    let mac = link.mac.unwrap_or_default();
    let arp = packet::ArpSocket::open(link.index, mac);
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

/// The MAC follows the pool's key: a second attachment of the network in this pod gets its own,
/// derived from its key (two macvlans with one MAC on one master cannot both come up), and so does
/// a key an earlier build used. With a delegated IPAM plugin the pool knows no key: a second
/// attachment is the one whose pod already has a link with the pod's MAC.
fn mac_for_key(
    pnl: &mut Netlink,
    made: &Link,
    conf: &NetConf,
    ctr: &Container,
    claim: &Claim,
) -> Result<Link> {
    let identity = ctr.identity();
    let key = match claim.key() {
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

/// The IPv4 addresses this allocation took over from a sandbox on another node.
fn taken_over_from_another_node(claim: &Claim) -> Vec<Ipv4Addr> {
    let Claim::Pool(grant) = claim else {
        return Vec::new();
    };
    grant
        .claimed
        .iter()
        .filter(|c| {
            c.replaced
                .as_ref()
                .is_some_and(|old| old.node.is_some() && old.node != c.lease.node)
        })
        .filter_map(|c| match c.lease.ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// Before a takeover across nodes: while anything on the LAN still answers for the address (the
/// old sandbox on a node that lost its kubelet but still runs, with the same derived MAC), the ADD
/// waits (11), and the takeover is undone with the rest of the allocation. `sock` is the master's:
/// it hears a device with this pod's MAC, which the pod's own link would take for itself. Runs
/// while the pod's link is still down.
fn old_holder_silent(
    conf: &NetConf,
    sock: &packet::ArpSocket,
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

/// Deletes the link this ADD made (by its index: whatever name it has by now).
fn delete_made(nl: &mut Netlink, made: &Link) {
    if let Err(e) = pod::delete(nl, made) {
        tracing::warn!(ifname = %made.name, error = %e, "could not remove a half-made link");
    }
}

/// A temporary name, unique per attachment, under which the link is created in the pod.
fn temp_name(container_id: &str, ifname: &str) -> String {
    let h = iotlan_ipam::addr::fnv1a64(format!("{container_id}\0{ifname}").as_bytes());
    format!("iot{:08x}", h as u32)
}
