//! The network configuration (a NetworkAttachmentDefinition's CNI config) as iotlan reads it.
//! Every key is documented in the README's configuration reference; `reference.rs` checks the two agree.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::cni::version::Version;
use crate::error::{Error, Result};
pub use crate::ipam::conflict::ConflictCheck;
use crate::link::mac::Mac;

pub const DEFAULT_STATE_DIR: &str = iotlan_ipam::paths::STATE_DIR;

mod del;
mod objects;
#[cfg(all(test, feature = "kubernetes"))]
mod reference;

pub use del::DelConf;
pub use objects::*;

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    master: Option<String>,
    #[serde(default)]
    driver: DriverChoice,
    #[serde(default)]
    macvlan_mode: MacvlanMode,
    ipvlan_mode: Option<String>,
    mtu: Option<u32>,
    probe: Option<Probe>,
    announce: Option<Announce>,
    ipv6: Option<Ipv6>,
    #[serde(default = "default_true")]
    multicast_routes: bool,
    #[serde(default)]
    source_routing: bool,
    conflict_check: Option<ConflictCheck>,
    host_shim: Option<Value>,
    state_dir: Option<PathBuf>,
    log_file: Option<PathBuf>,
    log_level: Option<String>,
    ipam: Option<Value>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<GcAttachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<GcAttachment>>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: Version,
    pub cni_version_str: String,
    pub name: String,
    pub master: Option<String>,
    pub driver: DriverChoice,
    pub macvlan_mode: MacvlanMode,
    pub mtu: Option<u32>,
    pub probe: Option<Probe>,
    pub announce: Announce,
    pub ipv6: Ipv6,
    /// Multicast (224.0.0.0/4, ff00::/8) through net1, so that discovery uses it.
    pub multicast_routes: bool,
    /// A table and rule of net1's own, so replies from its address leave through it.
    pub source_routing: bool,
    /// The conflict check; None when disabled.
    pub conflict_check: Option<ConflictCheck>,
    /// The node's shim to its pods; None when off.
    pub host_shim: Option<HostShim>,
    pub state_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    pub log_level: Option<String>,
    /// The `ipam` object as given (delegated plugins receive the whole config anyway).
    pub ipam: Value,
    pub ipam_type: String,
    pub requested_ips: Vec<IpAddr>,
    pub requested_mac: Option<Mac>,
    pub prev_result: Option<Value>,
    /// GC: the attachments the runtime still knows (None when the key is absent).
    pub valid_attachments: Option<Vec<GcAttachment>>,
    /// The configuration bytes as received: delegated IPAM plugins get exactly these.
    pub raw: Vec<u8>,
}

impl NetConf {
    /// Adds the requests a runtime sends in CNI_ARGS (`IP=`, `MAC=`, as podman's `--ip` and
    /// `--mac-address` do) where `runtimeConfig` made none. Like `runtimeConfig`, a request that
    /// cannot be applied fails the ADD.
    pub fn apply_cni_args(&mut self, args: &crate::cni::env::PodArgs) -> Result<()> {
        if self.requested_ips.is_empty() {
            self.requested_ips = args
                .ips
                .iter()
                .map(|s| {
                    parse_requested_ip(s).map_err(|_| {
                        Error::InvalidEnv(format!("CNI_ARGS IP={s:?} is not an IP address"))
                    })
                })
                .collect::<Result<_>>()?;
        }
        if self.requested_mac.is_none() {
            if let Some(m) = &args.mac {
                self.requested_mac = Some(
                    Mac::parse_unicast(m)
                        .map_err(|e| Error::InvalidEnv(format!("CNI_ARGS MAC={m:?}: {e}")))?,
                );
            }
        }
        Ok(())
    }

    /// Parses and validates stdin. Decode errors are code 6, bad values code 7, versions code 1.
    pub fn parse(bytes: &[u8]) -> Result<NetConf> {
        let raw: RawConf = serde_json::from_slice(bytes).map_err(|e| {
            Error::Decode(format!(
                "network configuration is not valid JSON for iotlan: {e}"
            ))
        })?;
        let cni_version_str = raw
            .cni_version
            .ok_or_else(|| Error::InvalidConfig("cniVersion is missing".into()))?;
        let cni_version = Version::parse(&cni_version_str)?;
        let name = raw
            .name
            .ok_or_else(|| Error::InvalidConfig("name is missing".into()))?;
        validate_network_name(&name)?;
        if let Some(t) = &raw.plugin_type {
            if t.is_empty() {
                return Err(Error::InvalidConfig("type is empty".into()));
            }
        }
        if let Some(mode) = raw.ipvlan_mode.as_deref() {
            if !mode.eq_ignore_ascii_case("l2") {
                return Err(Error::InvalidConfig(format!(
                    "ipvlanMode {mode:?} is refused: only \"l2\" carries multicast and broadcast (mDNS, SSDP); \
                     ipvlan l3/l3s would silently drop device discovery"
                )));
            }
        }
        if let Some(mtu) = raw.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(Error::InvalidConfig(format!(
                    "mtu {mtu} is out of range (68-65535)"
                )));
            }
        }
        if let Some(master) = &raw.master {
            crate::cni::env::validate_ifname(master).map_err(|_| {
                Error::InvalidConfig(format!("master {master:?} is not a valid interface name"))
            })?;
        }
        if let Some(p) = &raw.probe {
            if p.gateway && !(1..=MAX_PROBE_TIMEOUT_MS).contains(&p.timeout_ms) {
                return Err(Error::InvalidConfig(format!(
                    "probe.timeoutMs {} is out of range (1-{MAX_PROBE_TIMEOUT_MS})",
                    p.timeout_ms
                )));
            }
        }
        if let Some(a) = &raw.announce {
            if !(1..=MAX_ANNOUNCE_COUNT).contains(&a.count) {
                return Err(Error::InvalidConfig(format!(
                    "announce.count {} is out of range (1-{MAX_ANNOUNCE_COUNT})",
                    a.count
                )));
            }
            if a.interval_ms > MAX_ANNOUNCE_INTERVAL_MS {
                return Err(Error::InvalidConfig(format!(
                    "announce.intervalMs {} is out of range (0-{MAX_ANNOUNCE_INTERVAL_MS})",
                    a.interval_ms
                )));
            }
        }
        if let Some(c) = raw.conflict_check.as_ref().filter(|c| c.enabled) {
            if !(1..=MAX_CONFLICT_TIMEOUT_MS).contains(&c.timeout_ms) {
                return Err(Error::InvalidConfig(format!(
                    "conflictCheck.timeoutMs {} is out of range (1-{MAX_CONFLICT_TIMEOUT_MS})",
                    c.timeout_ms
                )));
            }
        }
        let host_shim = match raw.host_shim {
            None | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(HostShim::default()),
            Some(v @ Value::Object(_)) => Some(serde_json::from_value::<HostShim>(v).map_err(|e| {
                Error::InvalidConfig(format!(
                    "hostShim: {e} (expected true, false or {{\"addresses\": {{\"<node>\": \"<ip>\"}}}})"
                ))
            })?),
            Some(other) => {
                return Err(Error::InvalidConfig(format!(
                    "hostShim is {other}: expected true, false or an object"
                )))
            }
        };
        if host_shim.is_some() && raw.macvlan_mode != MacvlanMode::Bridge {
            return Err(Error::InvalidConfig(format!(
                "hostShim needs macvlanMode \"bridge\": in {:?} mode the pods' links cannot reach the \
                 node's shim",
                raw.macvlan_mode
            )));
        }
        for (key, path) in [("stateDir", &raw.state_dir), ("logFile", &raw.log_file)] {
            if let Some(p) = path.as_ref().filter(|p| !p.is_absolute()) {
                return Err(Error::InvalidConfig(format!(
                    "{key} {} must be an absolute path (a relative one would land in whatever \
                     directory the runtime runs the plugin from)",
                    p.display()
                )));
            }
        }
        let ipam = raw.ipam.ok_or_else(|| {
            Error::InvalidConfig("ipam is missing: iotlan needs an address for net1".into())
        })?;
        let ipam_type = ipam
            .get("type")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::InvalidConfig("ipam.type is missing".into()))?
            .to_string();
        if ipam_type.contains('/') || ipam_type.starts_with('.') {
            return Err(Error::InvalidConfig(format!(
                "ipam.type {ipam_type:?} is not a plugin name"
            )));
        }
        let requested_ips = raw
            .runtime_config
            .ips
            .iter()
            .map(|s| parse_requested_ip(s))
            .collect::<Result<Vec<_>>>()?;
        let requested_mac = match raw.runtime_config.mac.as_deref() {
            Some(m) => Some(
                Mac::parse_unicast(m)
                    .map_err(|e| Error::InvalidConfig(format!("runtimeConfig.mac {m:?}: {e}")))?,
            ),
            None => None,
        };
        Ok(NetConf {
            cni_version,
            cni_version_str,
            name,
            master: raw.master,
            driver: raw.driver,
            macvlan_mode: raw.macvlan_mode,
            mtu: raw.mtu,
            probe: raw.probe.filter(|p| p.gateway),
            announce: raw.announce.unwrap_or_default(),
            ipv6: raw.ipv6.unwrap_or_default(),
            multicast_routes: raw.multicast_routes,
            source_routing: raw.source_routing,
            conflict_check: Some(raw.conflict_check.unwrap_or_default()).filter(|c| c.enabled),
            host_shim,
            state_dir: raw
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            log_file: raw.log_file,
            log_level: raw.log_level,
            ipam,
            ipam_type,
            requested_ips,
            requested_mac,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments.or(raw.attachments),
            raw: bytes.to_vec(),
        })
    }

    /// The `ipam.subnet` of iotlan-ipam or host-local style configs, used to find the master.
    pub fn ipam_subnets(&self) -> Vec<ipnetwork::IpNetwork> {
        let mut out = Vec::new();
        let mut push = |v: Option<&Value>| {
            if let Some(n) = v.and_then(Value::as_str).and_then(|s| s.parse().ok()) {
                out.push(n);
            }
        };
        push(self.ipam.get("subnet"));
        push(self.ipam.get("ipv6").and_then(|v| v.get("subnet")));
        for range in self
            .ipam
            .get("ranges")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for r in range.as_array().into_iter().flatten() {
                push(r.get("subnet"));
            }
        }
        for a in self
            .ipam
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = a
                .get("address")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<ipnetwork::IpNetwork>().ok())
            {
                if let Ok(net) = ipnetwork::IpNetwork::new(n.network(), n.prefix()) {
                    out.push(net);
                }
            }
        }
        out
    }
}

/// CNI network names end up in file names: same rule as container IDs.
/// The iotlan plugin configurations in `bytes`: the configuration itself, or, for a conflist (a
/// NAD may hold iotlan then tuning), each plugin of type `iotlan` with the list's `cniVersion` and
/// `name`, as a runtime hands them to the plugin.
pub fn iotlan_plugins(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::Decode(format!("not JSON: {e}")))?;
    let Some(plugins) = v.get("plugins").and_then(|p| p.as_array()) else {
        return Ok(vec![bytes.to_vec()]);
    };
    let out: Vec<Vec<u8>> = plugins
        .iter()
        .filter(|p| p.get("type").and_then(|t| t.as_str()) == Some("iotlan"))
        .map(|p| {
            let mut p = p.clone();
            p["cniVersion"] = v.get("cniVersion").cloned().unwrap_or_default();
            p["name"] = v.get("name").cloned().unwrap_or_default();
            serde_json::to_vec(&p).map_err(|e| Error::Decode(format!("conflist plugin: {e}")))
        })
        .collect::<Result<_>>()?;
    if out.is_empty() {
        return Err(Error::InvalidConfig(
            "the conflist has no plugin of type iotlan".into(),
        ));
    }
    Ok(out)
}

pub fn validate_network_name(name: &str) -> Result<()> {
    iotlan_ipam::names::validate_network(name).map_err(|e| Error::InvalidConfig(e.to_string()))
}

/// `runtimeConfig.ips` entries are CIDRs by convention ("192.168.20.100/24"); a bare IP is accepted.
fn parse_requested_ip(s: &str) -> Result<IpAddr> {
    let ip = s.split('/').next().unwrap_or(s);
    ip.parse().map_err(|_| {
        Error::InvalidConfig(format!(
            "runtimeConfig.ips entry {s:?} is not an IP address or CIDR"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> Result<NetConf> {
        let s = format!(
            r#"{{"cniVersion":"1.0.0","name":"iot","type":"iotlan",{extra}
               "ipam":{{"type":"iotlan-ipam","subnet":"192.168.20.0/24"}}}}"#
        );
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn defaults() {
        let c = conf("").unwrap();
        assert_eq!(c.driver, DriverChoice::Auto);
        assert_eq!(c.macvlan_mode, MacvlanMode::Bridge);
        assert!(c.probe.is_none());
        assert!(c.multicast_routes);
        assert!(!c.source_routing);
        assert_eq!(c.conflict_check.as_ref().map(|c| c.timeout_ms), Some(150));
        let off = conf(r#""multicastRoutes":false,"conflictCheck":{"enabled":false},"#).unwrap();
        assert!(!off.multicast_routes && off.conflict_check.is_none());
        let err = conf(r#""conflictCheck":{"timeoutMs":5000},"#).unwrap_err();
        assert_eq!(err.code(), 7);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.ipam_subnets(), vec!["192.168.20.0/24".parse().unwrap()]);
    }

    #[test]
    fn refuses_ipvlan_l3_naming_the_reason() {
        let err = conf(r#""ipvlanMode":"l3","#).unwrap_err();
        assert_eq!(err.code(), 7);
        assert!(err.to_string().contains("multicast"));
    }

    #[test]
    fn reads_runtime_config() {
        let c = conf(r#""runtimeConfig":{"ips":["192.168.20.100/24"],"mac":"c2:11:22:33:44:55"},"#)
            .unwrap();
        assert_eq!(
            c.requested_ips,
            vec!["192.168.20.100".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(c.requested_mac.unwrap().to_string(), "c2:11:22:33:44:55");
        let err = conf(r#""runtimeConfig":{"mac":"01:00:5e:00:00:01"},"#).unwrap_err();
        assert_eq!(err.code(), 7, "multicast MAC refused");
    }

    #[test]
    fn malformed_json_is_code_6_and_missing_fields_code_7() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code(), 6);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"iot"}"#)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"9.9.9","name":"iot"}"#)
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(conf(r#""driver":"vxlan","#).unwrap_err().code(), 6);
    }
}
