//! `iotlan validate [FILE|-]`: checks a CNI configuration exactly as the plugin would read it,
//! without touching the node: the plugin keys, and for iotlan-ipam the whole pool (ranges,
//! exclusions, reservations, routes).

use std::io::Read;

use iotlan_ipam::{Pool, PoolConfig};

use crate::config::NetConf;
use crate::error::{Error, Result};
use crate::ipam::IN_PROCESS_TYPE;

/// Returns the exit code: 0 valid, 1 invalid (the reason on stderr), 2 unreadable input.
pub fn validate(path: Option<&str>) -> i32 {
    let mut bytes = Vec::new();
    let read = match path {
        None | Some("-") => std::io::stdin().read_to_end(&mut bytes).map(drop),
        Some(p) => std::fs::read(p).map(|b| bytes = b),
    };
    if let Err(e) = read {
        eprintln!(
            "iotlan validate: cannot read {}: {e}",
            path.unwrap_or("stdin")
        );
        return 2;
    }
    match check(&bytes) {
        Ok(summary) => {
            println!("{summary}");
            0
        }
        Err(e) => {
            eprintln!("invalid (CNI code {}): {e}", e.code());
            1
        }
    }
}

/// Validates one configuration, or every iotlan plugin of a conflist, and summarises what it found.
pub fn check(bytes: &[u8]) -> Result<String> {
    let lines = crate::config::iotlan_plugins(bytes)?
        .iter()
        .map(|p| check_one(p))
        .collect::<Result<Vec<_>>>()?;
    Ok(lines.join("\n"))
}

fn check_one(bytes: &[u8]) -> Result<String> {
    let conf = NetConf::parse(bytes)?;
    let mut summary = format!(
        "ok: network {} (cniVersion {}), driver {:?}, master {}",
        conf.name,
        conf.cni_version_str,
        conf.driver,
        conf.master.as_deref().unwrap_or("auto-detected")
    );
    if conf.ipam_type == IN_PROCESS_TYPE {
        let cfg: PoolConfig = serde_json::from_value(conf.ipam.clone())
            .map_err(|e| Error::InvalidConfig(format!("ipam: {e}")))?;
        let pool = Pool::new(&conf.name, &cfg)?;
        summary.push_str(&format!(
            ", pool of {} addresses, store {}",
            pool.size(),
            cfg.store.kind
        ));
    } else {
        summary.push_str(&format!(", delegated ipam {}", conf.ipam_type));
    }
    Ok(summary)
}
