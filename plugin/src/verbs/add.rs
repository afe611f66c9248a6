//! ADD: the addresses are allocated on a helper thread while the link is created directly inside the
//! pod's namespace by the driver that works on this master ([`crate::link::attach`]); then it is
//! configured, optionally probed, and announced.
//!
//! A failed ADD undoes only what it did itself:
//! - a driver attempt deletes the link it created, by its index, never by name (`CNI_IFNAME` may be
//!   the working interface of an earlier ADD of the same attachment, which a retried ADD must not
//!   harm);
//! - when the link part fails after the allocation, [`Ipam::undo`] takes back exactly this
//!   allocation's claims: a lease the attachment already held stays, and a lease taken over from an
//!   earlier sandbox is put back. A delegated IPAM plugin is called with DEL, except when
//!   `CNI_IFNAME` already existed (its addresses are then the earlier ADD's).

use std::net::Ipv4Addr;
use std::path::Path;
use std::thread::{Scope, ScopedJoinHandle};

use iotlan_ipam::Avoid;

use crate::cni::env::{Container, Env};
use crate::cni::result::{CniResult, Interface};
use crate::config::NetConf;
use crate::error::{Error, Result};
use crate::ipam::conflict::{self, Attached};
use crate::ipam::{Claim, Ipam};
use crate::link::attach::{self, Addresses, PendingAddresses, Setup};
use crate::link::mac::Mac;
use crate::link::master;
use crate::net::netlink::Netlink;
use crate::net::netns::Netns;

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
    let setup = Setup {
        conf,
        ctr,
        home: &home,
        pod_ns: &pod_ns,
        master: &master,
    };
    conflict::with_retries(conf, ctr, &ipam, node, |avoid| {
        add_once(&setup, &mut nl, &ipam, avoid, netns_path)
    })
}

/// One ADD attempt with one allocation, avoiding `avoid`; a conflict found by the check undoes it
/// like any failure.
fn add_once(
    setup: &Setup,
    nl: &mut Netlink,
    ipam: &Ipam,
    avoid: &[Avoid],
    netns_path: &Path,
) -> Result<Attached> {
    let Setup {
        conf, ctr, master, ..
    } = *setup;
    std::thread::scope(|scope| {
        // The addresses are allocated on a helper thread (in this, the node's, namespace) while
        // this one creates the link: the store's fsync, or the delegated plugin's exec, overlaps
        // with the kernel's work.
        let mut addrs = Allocation::start(scope, conf, ctr.identity(), || {
            ipam.add(conf, ctr, Some(0), avoid)
        });
        let attached = attach::attach(setup, nl, &mut addrs);
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
struct Allocation<'scope, 'c> {
    conf: &'c NetConf,
    /// The pod's identity: the key when the pool gives none (a delegated IPAM plugin).
    identity: String,
    state: State<'scope>,
}

enum State<'scope> {
    Running(ScopedJoinHandle<'scope, Result<(CniResult, Claim)>>),
    Done(Result<Box<Allocated>>),
}

/// An allocation that landed, with what the link's attempts need of it.
struct Allocated {
    result: CniResult,
    claim: Claim,
    /// The IPv4 addresses the conflict check probes.
    probe: Vec<Ipv4Addr>,
    /// The IPv4 addresses taken over from a sandbox on another node.
    taken_over: Vec<Ipv4Addr>,
}

impl<'scope, 'c> Allocation<'scope, 'c> {
    fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        conf: &'c NetConf,
        identity: String,
        f: impl FnOnce() -> Result<(CniResult, Claim)> + Send + 'scope,
    ) -> Allocation<'scope, 'c> {
        Allocation {
            conf,
            identity,
            state: State::Running(scope.spawn(f)),
        }
    }

    /// The allocation's outcome, waiting for it if nobody did yet.
    fn finish(self) -> Result<(CniResult, Claim)> {
        match self.state {
            State::Running(job) => join(job),
            State::Done(outcome) => outcome.map(|a| (a.result, a.claim)),
        }
    }
}

impl PendingAddresses for Allocation<'_, '_> {
    fn wait(&mut self) -> Option<Addresses<'_>> {
        if let State::Running(_) = self.state {
            // Swapped out for a moment to be joined; the placeholder is overwritten at once.
            let placeholder = State::Done(Err(Error::Link(String::new())));
            if let State::Running(job) = std::mem::replace(&mut self.state, placeholder) {
                let (conf, identity) = (self.conf, &self.identity);
                self.state = State::Done(join(job).map(|(result, claim)| {
                    let key = claim.key().unwrap_or(identity).to_string();
                    Box::new(Allocated {
                        probe: conflict::targets(conf, &key, &result, &claim),
                        taken_over: claim.taken_over_from_another_node(),
                        result,
                        claim,
                    })
                }));
            }
        }
        match &self.state {
            State::Done(Ok(a)) => Some(Addresses {
                result: &a.result,
                key: a.claim.key(),
                probe: &a.probe,
                taken_over: &a.taken_over,
            }),
            _ => None,
        }
    }
}

/// The helper thread's outcome; a panic there is this process's (the release build aborts on it).
fn join<T>(job: ScopedJoinHandle<'_, T>) -> T {
    job.join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
