//! ADD: the addresses are allocated, then the link is created directly inside the pod's namespace
//! by the driver that works on this master ([`crate::link::attach`]), configured, optionally probed,
//! and announced. (Allocating on a helper thread while the link was made cost more than it saved:
//! the thread's start and wake-up took longer than the link's creation; docs/benchmarks.md.)
//!
//! A failed ADD undoes only what it did itself:
//! - a driver attempt deletes the link it created, by its index, never by name; it is created as
//!   `CNI_IFNAME`, which the kernel refuses when the pod has that name already (the working
//!   interface of an earlier ADD of the same attachment, which a retried ADD must not harm: 103);
//! - when the link part fails after the allocation, [`Ipam::undo`] takes back exactly this
//!   allocation's claims: a lease the attachment already held stays, and a lease taken over from an
//!   earlier sandbox is put back. A delegated IPAM plugin is called with DEL, except when
//!   `CNI_IFNAME` already existed (its addresses are then the earlier ADD's).

use std::path::Path;

use iotlan_ipam::Avoid;

use crate::cni::env::{Container, Env};
use crate::cni::result::{CniResult, Interface};
use crate::config::NetConf;
use crate::error::{Error, Result};
use crate::ipam::conflict::{self, Attached};
use crate::ipam::{Claim, Ipam};
use crate::link::attach::{self, Addresses, Setup};
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
    // With no master configured, resolving it lists the node's addresses, which the pool's
    // node-address check below uses again.
    let subnets = conf.ipam_subnets();
    let mut dump = None;
    let master = master::resolve_keeping(&mut nl, conf.master.as_deref(), &subnets, &mut dump)?;
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
            let mut node = master::node_addresses_from(&mut nl, Some(&master), &subnets, dump)?;
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
    let (mut result, claim) = ipam.add(conf, ctr, Some(0), avoid)?;
    let identity = ctr.identity();
    let key = claim.key().unwrap_or(&identity).to_string();
    let addrs = Addresses {
        result: &result,
        key: claim.key(),
        probe: &conflict::targets(conf, &key, &result, &claim),
        taken_over: &claim.taken_over_from_another_node(),
    };
    let (link, driver) = match attach::attach(setup, nl, &addrs) {
        Ok(attached) => attached,
        Err(e) => {
            undo_allocation(ipam, conf, &claim, &e);
            return Err(e);
        }
    };
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
