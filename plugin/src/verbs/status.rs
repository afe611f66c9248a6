//! STATUS (CNI 1.1): can this node serve an ADD right now? The master must exist (50 otherwise) and
//! have its carrier (51: existing pods on it have lost the LAN), and the pool must have a free address.

use crate::cni::env::Env;
use crate::config::NetConf;
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::link::master;
use crate::net::netlink::Netlink;

pub fn run(env: &Env, conf: &NetConf) -> Result<()> {
    let mut nl = Netlink::open().map_err(|e| Error::netlink("cannot open a netlink socket", e))?;
    let m = master::resolve(&mut nl, conf).map_err(|e| Error::NotAvailable(e.to_string()))?;
    if !m.up || !m.lower_up {
        return Err(Error::NotAvailableDegraded(format!(
            "master {} is {}: pods on network {} have no LAN",
            m.name,
            if m.up { "without carrier" } else { "down" },
            conf.name
        )));
    }
    Ipam::for_config(env, conf)
        .map_err(|e| Error::NotAvailable(e.to_string()))?
        .status(conf)
}
