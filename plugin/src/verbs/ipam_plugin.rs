//! `iotlan-ipam`: the pool as a standalone CNI IPAM plugin, usable under other main plugins
//! (Debian's macvlan and ipvlan, for example). Same semantics as iotlan's in-process pool.

use crate::cni::env::Env;
use crate::cni::result::CniResult;
use crate::cni::Verb;
use crate::config::NetConf;
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::net::netlink::Netlink;

pub fn run(verb: Verb, env: &Env, conf: &NetConf) -> Result<Option<serde_json::Value>> {
    let (pool, store) = crate::ipam::open_pool(&conf.name, &conf.ipam)?;
    let ipam = Ipam::Pool {
        pool: Box::new(pool),
        store,
    };
    let att = || {
        env.container
            .as_ref()
            .ok_or_else(|| Error::InvalidEnv("CNI_CONTAINERID is not set".into()))
    };
    match verb {
        Verb::Add => {
            // The node's own addresses are never a pod's: this plugin runs in the node's namespace.
            let mut nl =
                Netlink::open().map_err(|e| Error::netlink("cannot open a netlink socket", e))?;
            let node = crate::link::master::node_addresses(&mut nl, None, &conf.ipam_subnets())?;
            Ok(Some(
                ipam.add(conf, att()?, None, &node)?
                    .0
                    .to_json(conf.cni_version),
            ))
        }
        Verb::Check => {
            let prev = conf.prev_result.as_ref().ok_or_else(|| {
                Error::InvalidConfig("CHECK needs prevResult in the configuration".into())
            })?;
            ipam.check(conf, att()?, &CniResult::from_json(prev, "prevResult")?)
                .map(|_| None)
        }
        Verb::Gc => {
            let valid = conf.valid_attachments.as_deref().ok_or_else(|| {
                Error::InvalidConfig(
                    "GC needs cni.dev/valid-attachments in the configuration".into(),
                )
            })?;
            ipam.gc(conf, valid).map(|_| None)
        }
        Verb::Status => ipam.status(conf).map(|_| None),
    }
}
