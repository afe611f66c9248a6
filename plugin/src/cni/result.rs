//! The ADD result, shaped for the requested spec version, and parsing of results from delegated
//! IPAM plugins and prevResult.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::version::Version;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A CNI result (ADD output, IPAM output, prevResult).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl CniResult {
    /// The JSON for `version`: `ips[].version` only in 0.3.x/0.4.0.
    pub fn to_json(&self, version: Version) -> Value {
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = json!({ "address": ip.address.to_string() });
                if version.ips_carry_family() {
                    o["version"] = json!(if ip.address.is_ipv4() { "4" } else { "6" });
                }
                if let Some(gw) = ip.gateway {
                    o["gateway"] = json!(gw.to_string());
                }
                if let Some(i) = ip.interface {
                    o["interface"] = json!(i);
                }
                o
            })
            .collect();
        let mut out = json!({ "cniVersion": version.to_string(), "ips": ips });
        if !self.interfaces.is_empty() {
            out["interfaces"] = json!(self.interfaces);
        }
        if !self.routes.is_empty() {
            out["routes"] = json!(self.routes);
        }
        if !self.dns.is_empty() {
            out["dns"] = json!(self.dns);
        }
        out
    }

    /// Parses a result of any supported version (a delegated IPAM plugin's stdout, or prevResult).
    pub fn from_json(v: &Value, what: &str) -> Result<CniResult> {
        let decode = |msg: String| Error::Decode(format!("{what}: {msg}"));
        let interfaces: Vec<Interface> = match v.get("interfaces") {
            Some(i) => {
                serde_json::from_value(i.clone()).map_err(|e| decode(format!("interfaces: {e}")))?
            }
            None => Vec::new(),
        };
        let mut ips = Vec::new();
        for ip in v.get("ips").and_then(Value::as_array).into_iter().flatten() {
            let address = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| decode("ips[].address is missing".into()))?;
            let address: IpNetwork = address
                .parse()
                .map_err(|e| decode(format!("ips[].address {address:?}: {e}")))?;
            let gateway = match ip.get("gateway").and_then(Value::as_str) {
                Some(g) => Some(
                    g.parse()
                        .map_err(|e| decode(format!("ips[].gateway {g:?}: {e}")))?,
                ),
                None => None,
            };
            let interface = ip
                .get("interface")
                .and_then(Value::as_u64)
                .map(|i| i as usize);
            ips.push(IpConfig {
                address,
                gateway,
                interface,
            });
        }
        let routes: Vec<Route> = match v.get("routes") {
            Some(r) => {
                serde_json::from_value(r.clone()).map_err(|e| decode(format!("routes: {e}")))?
            }
            None => Vec::new(),
        };
        let dns: Dns = match v.get("dns") {
            Some(d) => {
                serde_json::from_value(d.clone()).map_err(|e| decode(format!("dns: {e}")))?
            }
            None => Dns::default(),
        };
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "net1".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: None,
                sandbox: "/run/netns/p".into(),
            }],
            ips: vec![IpConfig {
                address: "192.168.20.100/24".parse().unwrap(),
                gateway: Some("192.168.20.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "192.168.30.0/24".parse().unwrap(),
                gw: None,
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn shapes_ips_per_version() {
        let r = sample();
        let old = r.to_json(Version::parse("0.3.1").unwrap());
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["cniVersion"], "0.3.1");
        let new = r.to_json(Version::parse("1.0.0").unwrap());
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["ips"][0]["interface"], 0);
        assert_eq!(new["interfaces"][0]["sandbox"], "/run/netns/p");
        assert!(new.get("dns").is_none());
    }

    #[test]
    fn round_trips_through_json() {
        let r = sample();
        let back =
            CniResult::from_json(&r.to_json(Version::parse("0.4.0").unwrap()), "test").unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn bad_results_are_decode_errors() {
        let err =
            CniResult::from_json(&json!({"ips": [{"address": "nope"}]}), "ipam plugin static")
                .unwrap_err();
        assert_eq!(err.code(), 6);
        assert!(err.to_string().contains("ipam plugin static"));
    }
}
