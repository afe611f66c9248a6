//! CHECK: the link, its MAC, its addresses and its routes still match prevResult, the multicast
//! routes and source-routing rules the config asks for are there, and the addresses are still held.

use crate::cni::env::{Container, Env};
use crate::cni::result::CniResult;
use crate::config::NetConf;
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::link::mac::Mac;
use crate::net::netlink::Netlink;
use crate::net::netns::Netns;

pub fn run(env: &Env, conf: &NetConf, ctr: &Container) -> Result<()> {
    let prev_json = conf.prev_result.as_ref().ok_or_else(|| {
        Error::InvalidConfig("CHECK needs prevResult in the configuration".into())
    })?;
    let prev = CniResult::from_json(prev_json, "prevResult")?;
    let netns = ctr
        .netns
        .as_ref()
        .ok_or_else(|| Error::InvalidEnv("CNI_NETNS is not set".into()))?;
    let idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == ctr.ifname && !i.sandbox.is_empty())
        .ok_or_else(|| {
            Error::CheckFailed(format!(
                "prevResult has no interface {} in a sandbox",
                ctr.ifname
            ))
        })?;
    let want = &prev.interfaces[idx];
    let mine: Vec<_> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == idx))
        .cloned()
        .collect();
    let prev_mine = CniResult {
        ips: mine.clone(),
        ..prev.clone()
    };

    Ipam::for_config(env, conf)?.check(conf, ctr, &prev_mine)?;

    let home = Netns::current()?;
    let pod_ns = Netns::open(netns)
        .map_err(|e| Error::io(format!("cannot open {}", netns.display()), e))?
        .ok_or_else(|| {
            Error::UnknownContainer(format!(
                "the pod's namespace {} does not exist",
                netns.display()
            ))
        })?;
    pod_ns.run(&home, || -> Result<()> {
        let mut nl = Netlink::open()
            .map_err(|e| Error::netlink("cannot open a netlink socket in the pod", e))?;
        let fail = |m: String| Err(Error::CheckFailed(m));
        let Some(link) = nl
            .link_by_name(&ctr.ifname)
            .map_err(|e| Error::netlink("cannot read the pod's links", e))?
        else {
            return fail(format!("{} is missing from the pod", ctr.ifname));
        };
        match link.kind.as_deref() {
            Some("macvlan") | Some("ipvlan") => {}
            other => {
                return fail(format!(
                    "{} is a {:?} link, not macvlan or ipvlan",
                    ctr.ifname, other
                ))
            }
        }
        let mac = link.mac.map(|m| Mac(m).to_string()).unwrap_or_default();
        if !want.mac.is_empty() && !want.mac.eq_ignore_ascii_case(&mac) {
            return fail(format!(
                "{} has MAC {mac}, prevResult says {}",
                ctr.ifname, want.mac
            ));
        }
        if !link.up {
            return fail(format!("{} is down", ctr.ifname));
        }
        let addrs = nl
            .addresses()
            .map_err(|e| Error::netlink("cannot read the pod's addresses", e))?;
        for ip in &mine {
            if !addrs
                .iter()
                .any(|a| a.index == link.index && a.address == ip.address)
            {
                return fail(format!("{} is missing {}", ctr.ifname, ip.address));
            }
        }
        for v6 in [false, true] {
            let routes = nl
                .routes(v6)
                .map_err(|e| Error::netlink("cannot read the pod's routes", e))?;
            if let Some(r) = routes
                .iter()
                .find(|r| r.oif == Some(link.index) && r.dst.prefix() == 0)
            {
                return fail(format!(
                    "a default route via {} exists ({:?}); net1 must never carry one",
                    ctr.ifname, r.gateway
                ));
            }
            for want in prev.routes.iter().filter(|r| r.dst.is_ipv6() == v6) {
                if !routes
                    .iter()
                    .any(|r| r.dst == want.dst && r.oif == Some(link.index))
                {
                    return fail(format!("route {} via {} is missing", want.dst, ctr.ifname));
                }
            }
        }
        if conf.multicast_routes {
            if let Some(m) = crate::link::routing::check_multicast(&mut nl, &link, &mine)? {
                return fail(m);
            }
        }
        if conf.source_routing {
            if let Some(m) = crate::link::routing::check_source_routing(&mut nl, &link, &mine)? {
                return fail(m);
            }
        }
        Ok(())
    })?
}
