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

/// Validates one configuration, or every plugin of a conflist, and summarises what it found.
pub fn check(bytes: &[u8]) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::Decode(format!("not JSON: {e}")))?;
    if let Some(plugins) = v.get("plugins").and_then(|p| p.as_array()) {
        let mut lines = Vec::new();
        for p in plugins
            .iter()
            .filter(|p| p.get("type").and_then(|t| t.as_str()) == Some("iotlan"))
        {
            let mut p = p.clone();
            p["cniVersion"] = v.get("cniVersion").cloned().unwrap_or_default();
            p["name"] = v.get("name").cloned().unwrap_or_default();
            lines.push(check_one(&serde_json::to_vec(&p).unwrap_or_default())?);
        }
        if lines.is_empty() {
            return Err(Error::InvalidConfig(
                "the conflist has no plugin of type iotlan".into(),
            ));
        }
        return Ok(lines.join("\n"));
    }
    check_one(bytes)
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
