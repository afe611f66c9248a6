//! What DEL reads of the configuration.

use std::path::PathBuf;

use serde_json::Value;

use super::{validate_network_name, DEFAULT_STATE_DIR};

/// What DEL reads of the configuration, and nothing more: the network name and the `ipam` section
/// (to release the addresses), and where to log. Every other key is ignored, whatever it holds, so a
/// config that changed since ADD (a downgrade, an edited NAD) can still be torn down: a DEL that fails
/// on the config would leave the pod in Terminating for good.
#[derive(Debug, Clone, Default)]
pub struct DelConf {
    /// The network name, when it is there and valid.
    pub name: Option<String>,
    /// `ipam.type`, when it is there and a plugin name.
    pub ipam_type: Option<String>,
    pub ipam: Value,
    /// `stateDir` when absolute, else the default: where the hostShim records are.
    pub state_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    pub log_level: Option<String>,
    /// The configuration bytes as received: a delegated IPAM plugin gets exactly these.
    pub raw: Vec<u8>,
}

impl DelConf {
    /// Never fails: what cannot be read is `None` (the release is then skipped and says why).
    pub fn parse(bytes: &[u8]) -> DelConf {
        let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let ipam = v.get("ipam").cloned().unwrap_or(Value::Null);
        DelConf {
            name: text(v.get("name")).filter(|n| validate_network_name(n).is_ok()),
            ipam_type: text(ipam.get("type"))
                .filter(|t| !t.is_empty() && !t.contains('/') && !t.starts_with('.')),
            ipam,
            state_dir: text(v.get("stateDir"))
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            log_file: text(v.get("logFile"))
                .map(PathBuf::from)
                .filter(|p| p.is_absolute()),
            log_level: text(v.get("logLevel")),
            raw: bytes.to_vec(),
        }
    }
}
