//! The `ipam` object of the CNI network configuration, as it is deserialized. Nothing here is validated:
//! [`crate::Pool::new`] does that and names the offending field in its error. Unknown keys (such as `type`)
//! are ignored. What every key means: the README's configuration reference, checked against these structs
//! by a test (`plugin/src/config/reference.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the file store keeps its state when `store.dir` is not given.
pub const DEFAULT_STORE_DIR: &str = crate::paths::STATE_DIR;
/// How long an operation waits for the file store's lock when `store.lockTimeoutMs` is not given.
pub const DEFAULT_LOCK_TIMEOUT_MS: u64 = 10_000;
/// The longest `store.lockTimeoutMs` accepted: every wait of an ADD has a bound.
pub const MAX_LOCK_TIMEOUT_MS: u64 = 60_000;
/// CNI GC leaves a lease younger than this alone (an ADD may still be in flight), unless
/// `store.gcGraceSeconds` says otherwise.
pub const DEFAULT_GC_GRACE_SECONDS: u64 = 60;
pub const MAX_GC_GRACE_SECONDS: u64 = 3600;

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
    /// CNI GC leaves leases younger than this alone (default 60; at most 3600).
    #[serde(default)]
    pub gc_grace_seconds: Option<u64>,
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
            gc_grace_seconds: None,
            extra: serde_json::Map::new(),
        }
    }
}

/// A whole number read as leniently as DEL reads (`10000` or `"10000"`), clamped to `range`;
/// `None` (the default) when it cannot be read. Logs what it changed.
pub(crate) fn lenient_u64(
    field: &str,
    value: &serde_json::Value,
    range: std::ops::RangeInclusive<u64>,
) -> Option<u64> {
    let n = match value {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_i64().map(|i| i.max(0) as u64))
            .or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    let Some(n) = n else {
        ignored(field, value, "its default");
        return None;
    };
    let clamped = n.clamp(*range.start(), *range.end());
    if clamped != n || !value.is_u64() {
        tracing::warn!(field, given = %value, used = clamped,
            "a value ADD would refuse, read leniently for DEL");
    }
    Some(clamped)
}

fn ignored(field: &str, value: &serde_json::Value, instead: &str) {
    tracing::warn!(field, given = %value, instead, "an unreadable value, ignored for DEL");
}

/// How long the file store keeps an unused sticky identity record by default, in days.
pub const DEFAULT_IDENTITY_RETENTION_DAYS: u64 = 30;

impl StoreConfig {
    /// Reads the `store` object as a DEL must: whatever ADD would refuse today (a string where a
    /// number belongs, a value out of range, a key of a newer build) never keeps a pod's addresses
    /// held. Numbers given as strings are read, values out of range are clamped, anything else
    /// unreadable falls back to its default; each such key is logged. Keys of other kinds stay in
    /// `extra` for them to read just as leniently.
    pub fn lenient(v: &serde_json::Value) -> StoreConfig {
        let mut cfg = StoreConfig::default();
        let Some(obj) = v.as_object() else {
            if !v.is_null() {
                tracing::warn!(store = %v, "ipam.store is not an object: using the defaults");
            }
            return cfg;
        };
        for (key, value) in obj {
            match key.as_str() {
                "kind" => match value.as_str() {
                    Some(k) => cfg.kind = k.to_string(),
                    None => ignored("store.kind", value, "the default, file"),
                },
                "dir" => match value.as_str().map(PathBuf::from) {
                    Some(d) if d.is_absolute() => cfg.dir = Some(d),
                    _ => ignored("store.dir", value, DEFAULT_STORE_DIR),
                },
                "lockTimeoutMs" => {
                    cfg.lock_timeout_ms =
                        lenient_u64("store.lockTimeoutMs", value, 1..=MAX_LOCK_TIMEOUT_MS)
                }
                "identityRetentionDays" => {
                    cfg.identity_retention_days =
                        lenient_u64("store.identityRetentionDays", value, 0..=u64::MAX / 86_400)
                }
                "gcGraceSeconds" => {
                    cfg.gc_grace_seconds =
                        lenient_u64("store.gcGraceSeconds", value, 0..=MAX_GC_GRACE_SECONDS)
                }
                _ => {
                    cfg.extra.insert(key.clone(), value.clone());
                }
            }
        }
        cfg
    }

    /// Checks the keys every kind shares: paths are absolute (a relative one would land in whatever
    /// directory the runtime runs the plugin from) and every wait is bounded.
    pub fn validate(&self) -> Result<(), crate::Error> {
        if let Some(dir) = &self.dir {
            if !dir.is_absolute() {
                return Err(crate::Error::config(
                    "store.dir",
                    format!("{} must be an absolute path", dir.display()),
                ));
            }
        }
        if let Some(ms) = self.lock_timeout_ms {
            if !(1..=MAX_LOCK_TIMEOUT_MS).contains(&ms) {
                return Err(crate::Error::config(
                    "store.lockTimeoutMs",
                    format!("{ms} is out of range (1-{MAX_LOCK_TIMEOUT_MS})"),
                ));
            }
        }
        if let Some(s) = self.gc_grace_seconds {
            if s > MAX_GC_GRACE_SECONDS {
                return Err(crate::Error::config(
                    "store.gcGraceSeconds",
                    format!("{s} is out of range (0-{MAX_GC_GRACE_SECONDS})"),
                ));
            }
        }
        Ok(())
    }

    /// How old a lease must be before CNI GC may free it.
    pub fn gc_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.gc_grace_seconds.unwrap_or(DEFAULT_GC_GRACE_SECONDS))
    }

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
