//! The `store` keys of the kubernetes kind. What each means is in the README's configuration
//! reference (`ipam.store`), which a test checks against [`Key`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::config::{lenient_u64, StoreConfig};
use crate::error::Error;

/// Where the Lease objects live when `store.namespace` is not given.
pub const DEFAULT_NAMESPACE: &str = "iotlan-system";
/// The kubeconfigs tried, in order, when `store.kubeconfig` is not given: kubeadm's and k3s's CNI
/// config dir, where `iotlan install` writes it.
pub const DEFAULT_KUBECONFIGS: [&str; 2] = crate::paths::KUBECONFIGS;
/// Connect and per-request timeout when `store.timeoutMs` is not given.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The longest `store.timeoutMs` a lenient read keeps (DEL): every wait has a bound.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// How long a node must have been not Ready before it counts as lost, when
/// `store.nodeLossGraceSeconds` is not given: 5 minutes, the pod eviction timeout Kubernetes
/// itself has long used for NotReady nodes.
pub const DEFAULT_NODE_LOSS_GRACE_SECONDS: u64 = 300;
/// The bounds of `store.nodeLossGraceSeconds`.
pub const NODE_LOSS_GRACE_SECONDS: std::ops::RangeInclusive<u64> = 30..=86_400;

/// One key of `ipam.store` that this kind reads, with its value as given: the one list of the
/// kind's keys (a key that is no variant is unknown). [`Settings::from_config`] checks the value,
/// [`Settings::lenient`] reads it as DEL must.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Key {
    Namespace(Value),
    Kubeconfig(Value),
    TimeoutMs(Value),
    NodeLossGraceSeconds(Value),
    StateDir(Value),
}

impl Key {
    /// The variant `key` names, holding `value`; an error naming the known keys when it names none.
    fn read(key: &str, value: &Value) -> Result<Key, serde_json::Error> {
        let mut one = serde_json::Map::new();
        one.insert(key.to_string(), value.clone());
        serde_json::from_value(Value::Object(one))
    }
}

/// The `store` keys this kind reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub namespace: String,
    pub kubeconfig: Option<PathBuf>,
    pub timeout: Duration,
    /// How long a node must have been not Ready before its sandboxes count as gone.
    pub node_loss_grace: Duration,
    /// Where the node-local record of this node's attachments is kept (`node_record.rs`).
    pub state_dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            namespace: DEFAULT_NAMESPACE.to_string(),
            kubeconfig: None,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            node_loss_grace: Duration::from_secs(DEFAULT_NODE_LOSS_GRACE_SECONDS),
            state_dir: PathBuf::from(crate::config::DEFAULT_STORE_DIR),
        }
    }
}

impl Settings {
    /// Reads the kubernetes keys of `cfg`; unknown keys are an error naming them.
    pub fn from_config(cfg: &StoreConfig) -> Result<Settings, Error> {
        let mut s = Settings::default();
        for (key, value) in &cfg.extra {
            let field = format!("store.{key}");
            let key = Key::read(key, value).map_err(|e| {
                Error::config(&field, format!("not a key of the kubernetes store: {e}"))
            })?;
            match key {
                Key::Namespace(value) => {
                    let ns = value
                        .as_str()
                        .ok_or_else(|| Error::config(&field, "must be a string"))?;
                    if !is_dns_label(ns) {
                        return Err(Error::config(
                            &field,
                            format!("{ns:?} is not a namespace name (a DNS label)"),
                        ));
                    }
                    s.namespace = ns.to_string();
                }
                Key::Kubeconfig(value) => s.kubeconfig = Some(absolute_path(&field, &value)?),
                Key::StateDir(value) => s.state_dir = absolute_path(&field, &value)?,
                Key::TimeoutMs(value) => {
                    let ms = value
                        .as_u64()
                        .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms))
                        .ok_or_else(|| {
                            Error::config(
                                &field,
                                format!("must be an integer from 1 to {MAX_TIMEOUT_MS} (ms)"),
                            )
                        })?;
                    s.timeout = Duration::from_millis(ms);
                }
                Key::NodeLossGraceSeconds(value) => {
                    let secs = value
                        .as_u64()
                        .filter(|s| NODE_LOSS_GRACE_SECONDS.contains(s))
                        .ok_or_else(|| {
                            Error::config(
                                &field,
                                format!(
                                    "must be an integer from {} to {} (seconds)",
                                    NODE_LOSS_GRACE_SECONDS.start(),
                                    NODE_LOSS_GRACE_SECONDS.end()
                                ),
                            )
                        })?;
                    s.node_loss_grace = Duration::from_secs(secs);
                }
            }
        }
        Ok(s)
    }

    /// Reads the kubernetes keys of `cfg` as DEL must ([`StoreConfig::lenient`]): a key this build
    /// does not know (written for a newer one) is ignored, a number given as a string is read, one
    /// out of range is clamped, and anything else unreadable falls back to its default. Each is
    /// logged.
    pub fn lenient(cfg: &StoreConfig) -> Settings {
        let mut s = Settings::default();
        for (key, value) in &cfg.extra {
            let field = format!("store.{key}");
            let Ok(key) = Key::read(key, value) else {
                tracing::warn!(%field, "a key this build does not know, ignored for DEL");
                continue;
            };
            match key {
                Key::Namespace(value) => match value.as_str().filter(|ns| is_dns_label(ns)) {
                    Some(ns) => s.namespace = ns.to_string(),
                    None => tracing::warn!(%field, given = %value, "unreadable, ignored for DEL"),
                },
                Key::Kubeconfig(value) => match absolute_path(&field, &value) {
                    Ok(p) => s.kubeconfig = Some(p),
                    Err(_) => tracing::warn!(%field, given = %value, "unreadable, ignored for DEL"),
                },
                Key::StateDir(value) => match absolute_path(&field, &value) {
                    Ok(p) => s.state_dir = p,
                    Err(_) => tracing::warn!(%field, given = %value, "unreadable, ignored for DEL"),
                },
                Key::TimeoutMs(value) => {
                    if let Some(ms) = lenient_u64(&field, &value, 1..=MAX_TIMEOUT_MS) {
                        s.timeout = Duration::from_millis(ms);
                    }
                }
                Key::NodeLossGraceSeconds(value) => {
                    if let Some(secs) = lenient_u64(&field, &value, NODE_LOSS_GRACE_SECONDS) {
                        s.node_loss_grace = Duration::from_secs(secs);
                    }
                }
            }
        }
        s
    }

    /// The kubeconfig to use: the configured one, else the first default that exists.
    pub fn kubeconfig_path(&self) -> Result<PathBuf, Error> {
        if let Some(p) = &self.kubeconfig {
            return Ok(p.clone());
        }
        DEFAULT_KUBECONFIGS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| Error::Unavailable {
                reason: format!(
                    "no kubeconfig at {} or {}; it is written by the iotlan DaemonSet (`iotlan install`): is it running on this node?",
                    DEFAULT_KUBECONFIGS[0], DEFAULT_KUBECONFIGS[1]
                ),
            })
    }
}

/// A path key's value: a string holding an absolute path.
fn absolute_path(field: &str, value: &Value) -> Result<PathBuf, Error> {
    let p = value
        .as_str()
        .ok_or_else(|| Error::config(field, "must be a string"))?;
    if !Path::new(p).is_absolute() {
        return Err(Error::config(field, "must be an absolute path"));
    }
    Ok(PathBuf::from(p))
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
