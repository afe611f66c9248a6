//! The nested objects of the configuration and the values of its enumerated keys, as deserialized.

use std::net::IpAddr;

use serde::Deserialize;

/// Upper bounds of the config's waits, so that an ADD ends in bounded time whatever the config
/// says: at most 2 probes (one per driver) of `MAX_PROBE_TIMEOUT_MS`, and `MAX_ANNOUNCE_COUNT - 1`
/// announcement rounds `MAX_ANNOUNCE_INTERVAL_MS` apart.
pub const MAX_PROBE_TIMEOUT_MS: u64 = 5_000;
pub const MAX_ANNOUNCE_COUNT: u32 = 10;
pub const MAX_ANNOUNCE_INTERVAL_MS: u64 = 1_000;
/// The conflict check's wait for an answer (per attempt; at most [`crate::ipam::conflict::MAX_RETRIES`] + 1).
pub const MAX_CONFLICT_TIMEOUT_MS: u64 = 1_000;

/// Which link driver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DriverChoice {
    /// macvlan first, ipvlan L2 when macvlan cannot be created or its MAC is dropped.
    #[default]
    Auto,
    Macvlan,
    Ipvlan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    #[default]
    Bridge,
    Private,
    Vepa,
    Passthru,
}

/// The ARP probe of the gateway after a macvlan is up.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[serde(default)]
    pub gateway: bool,
    #[serde(default = "default_probe_timeout")]
    pub timeout_ms: u64,
}

fn default_probe_timeout() -> u64 {
    800
}

/// Gratuitous ARP / unsolicited NA after ADD: `count` rounds, `intervalMs` apart. The kernel sends the
/// first round as the link comes up; rounds after it are sent before ADD returns (no process is left
/// behind) and cost a packet socket (an RCU grace period, ~10-20 ms) plus the intervals.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Announce {
    #[serde(default = "default_announce_count")]
    pub count: u32,
    #[serde(default = "default_announce_interval")]
    pub interval_ms: u64,
}

fn default_announce_count() -> u32 {
    1
}
fn default_announce_interval() -> u64 {
    0
}

impl Default for Announce {
    fn default() -> Self {
        Announce {
            count: default_announce_count(),
            interval_ms: default_announce_interval(),
        }
    }
}

/// `hostShim`: the node reaches its pods' net1 addresses through a shim link on the master
/// ([`crate::link::shim`]). `true`, or an object; `addresses` gives nodes their shim address by node name
/// (any IPAM); a node not listed gets one from the pool under `iotlan-shim.<node>` (iotlan-ipam only;
/// a reservation for that identity pins it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostShim {
    #[serde(default)]
    pub addresses: std::collections::BTreeMap<String, IpAddr>,
}

/// IPv6 behaviour on net1.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ipv6 {
    /// Accept router advertisements (SLAAC addresses and route information options), as Matter
    /// devices and Thread border routers on the LAN need.
    #[serde(default, rename = "acceptRA")]
    pub accept_ra: bool,
    /// Let RAs install a default route via net1. Off unless asked: net1 never carries default traffic.
    #[serde(default)]
    pub default_route: bool,
}

/// `runtimeConfig` (only present when the config declares the matching `capabilities`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub mac: Option<String>,
}
/// One entry of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, Deserialize)]
pub struct GcAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}
