//! GC (CNI 1.1): releases every lease of this network that `cni.dev/valid-attachments` (or the
//! older `cni.dev/attachments`) does not list. Links need no GC: they die with their namespace.

use crate::cni::env::Env;
use crate::config::NetConf;
use crate::error::{Error, Result};
use crate::ipam::Ipam;

pub fn run(env: &Env, conf: &NetConf) -> Result<()> {
    let valid = conf.valid_attachments.as_deref().ok_or_else(|| {
        Error::InvalidConfig("GC needs cni.dev/valid-attachments in the configuration".into())
    })?;
    // The hostShim's lease on this node is the node's, not a container's: it stays.
    let mut valid = valid.to_vec();
    valid.extend(crate::link::shim::gc_keep(&conf.state_dir, &conf.name));
    Ipam::for_config(env, conf)?.gc(conf, &valid)
}
