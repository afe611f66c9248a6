//! The `ipam` object of the CNI network configuration, as it is deserialized. Nothing here is validated:
//! [`crate::Pool::new`] does that and names the offending field in its error. Unknown keys (such as `type`)
//! are ignored. See the crate documentation for the reference of every key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the file store keeps its state when `store.dir` is not given.
pub const DEFAULT_STORE_DIR: &str = "/var/lib/cni/iotlan";
/// How long an operation waits for the file store's lock when `store.lockTimeoutMs` is not given.
pub const DEFAULT_LOCK_TIMEOUT_MS: u64 = 10_000;

/// The CNI config's `ipam` object.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolConfig {
    /// The LAN's subnet, IPv4 or IPv6 (required).
    #[serde(default)]
    pub subnet: String,
    /// The LAN's router; never handed out.
    #[serde(default)]
    pub gateway: Option<String>,
    /// The ranges iotlan may hand out (required; may be `[]` when only reservations are used).
    #[serde(default)]
    pub pool: Option<Vec<String>>,
    /// Addresses or ranges inside the pool that are never handed out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// An IPv6 block next to an IPv4 top level: the pool becomes dual-stack.
    #[serde(default)]
    pub ipv6: Option<FamilyConfig>,
    /// Pod identity (`namespace/name`, or a container ID) to one address, or one per family.
    #[serde(default)]
    pub reservations: BTreeMap<String, Reservation>,
    /// Extra routes via this network (never a default route).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// DNS settings passed through to the CNI result.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Where the leases are kept.
    #[serde(default)]
    pub store: StoreConfig,
}

/// The `ipv6` block: a second family's subnet, gateway, pool and exclusions.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FamilyConfig {
    #[serde(default)]
    pub subnet: String,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub pool: Option<Vec<String>>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// A reservation's value: one address, or a list (one per family).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Reservation {
    One(String),
    Many(Vec<String>),
}

impl Reservation {
    pub fn addresses(&self) -> Vec<&str> {
        match self {
            Reservation::One(s) => vec![s.as_str()],
            Reservation::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// One entry of `routes`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteConfig {
    #[serde(default)]
    pub dst: String,
    #[serde(default)]
    pub gw: Option<String>,
}

/// The `dns` block.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsConfig {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// The `store` block.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreConfig {
    /// `file` (the default, one node) or `kubernetes` (when built with that store).
    #[serde(default = "default_kind")]
    pub kind: String,
    /// File store: the directory holding one subdirectory per network (default `/var/lib/cni/iotlan`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// File store: how long to wait for the lock before failing with a retryable error (default 10000).
    #[serde(default)]
    pub lock_timeout_ms: Option<u64>,
    /// File store: CNI GC deletes a sticky identity record (a pod's latest addresses) that has held
    /// no address for this many days (default 30); 0 keeps them all.
    #[serde(default)]
    pub identity_retention_days: Option<u64>,
    /// Options of other store kinds, kept for them to read.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_kind() -> String {
    "file".to_string()
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            kind: default_kind(),
            dir: None,
            lock_timeout_ms: None,
            identity_retention_days: None,
            extra: serde_json::Map::new(),
        }
    }
}

/// How long the file store keeps an unused sticky identity record by default, in days.
pub const DEFAULT_IDENTITY_RETENTION_DAYS: u64 = 30;

impl StoreConfig {
    /// The file store's identity retention: `None` keeps records for good.
    pub fn identity_retention(&self) -> Option<std::time::Duration> {
        match self
            .identity_retention_days
            .unwrap_or(DEFAULT_IDENTITY_RETENTION_DAYS)
        {
            0 => None,
            days => Some(std::time::Duration::from_secs(days.saturating_mul(86_400))),
        }
    }

    /// The file store's base directory.
    pub fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE_DIR))
    }
}
