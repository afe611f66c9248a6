//! What a namespace holds, as `ip` shows it: links, addresses, routes, neighbours; and ping.

use std::net::Ipv4Addr;
use std::process::Output;

use serde_json::Value;

use crate::*;

/// A link as seen inside a netns.
#[derive(Debug, Clone)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// `linkinfo.info_kind` (`macvlan`, `ipvlan`, `veth`, ...), `None` for plain devices.
    pub kind: Option<String>,
    /// Lowercase MAC.
    pub mac: String,
    /// MTU.
    pub mtu: u64,
    /// `operstate` (`UP`, `DOWN`, `UNKNOWN`, `LOWERLAYERDOWN`).
    pub state: String,
    /// Administratively up (`UP` in flags).
    pub up: bool,
    /// The `ip -d -j link` object, for anything else (e.g. `linkinfo.info_data.mode`).
    pub raw: Value,
}

fn json_lines(out: &Output) -> Vec<Value> {
    match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(Value::Array(v)) => v,
        _ => Vec::new(),
    }
}

/// All links in `ns` (`ip -d -j link show`).
pub fn links(ns: &Netns) -> Vec<Link> {
    json_lines(&ns.ip(&["-d", "-j", "link", "show"]))
        .into_iter()
        .map(|v| Link {
            name: v["ifname"].as_str().unwrap_or_default().to_string(),
            kind: v["linkinfo"]["info_kind"].as_str().map(str::to_string),
            mac: v["address"].as_str().unwrap_or_default().to_lowercase(),
            mtu: v["mtu"].as_u64().unwrap_or(0),
            state: v["operstate"].as_str().unwrap_or_default().to_string(),
            up: v["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP")),
            raw: v,
        })
        .collect()
}

/// The link `ifname` in `ns`, if present.
pub fn link(ns: &Netns, ifname: &str) -> Option<Link> {
    links(ns).into_iter().find(|l| l.name == ifname)
}

/// Addresses on `ifname` in `ns` as `addr/prefix` (IPv4 and IPv6, including link-local).
pub fn addrs(ns: &Netns, ifname: &str) -> Vec<String> {
    let out = ns.try_exec("ip", &["-j", "addr", "show", "dev", ifname]);
    json_lines(&out)
        .iter()
        .filter_map(|v| v["addr_info"].as_array())
        .flatten()
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect()
}

/// IPv4 addresses (without prefix) on `ifname` in `ns`.
pub fn ipv4_addrs(ns: &Netns, ifname: &str) -> Vec<Ipv4Addr> {
    addrs(ns, ifname)
        .iter()
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect()
}

/// A route (`ip -j route show`): `dst` is `default` or a prefix.
#[derive(Debug, Clone)]
pub struct Route {
    /// Destination (`default`, `10.77.0.0/24`, `fe80::/64`).
    pub dst: String,
    /// Gateway, if any.
    pub gateway: Option<String>,
    /// Output device.
    pub dev: Option<String>,
    /// The raw object.
    pub raw: Value,
}

/// Routes in `ns`'s main table: IPv4, or IPv6 with `v6`.
pub fn routes(ns: &Netns, v6: bool) -> Vec<Route> {
    let fam = if v6 { "-6" } else { "-4" };
    json_lines(&ns.ip(&[fam, "-j", "route", "show"]))
        .into_iter()
        .map(|v| Route {
            dst: v["dst"].as_str().unwrap_or_default().to_string(),
            gateway: v["gateway"].as_str().map(str::to_string),
            dev: v["dev"].as_str().map(str::to_string),
            raw: v,
        })
        .collect()
}

/// Neighbour entries in `ns` (`ip -j neigh show`), raw objects (`dst`, `dev`, `lladdr`, `state`).
pub fn neighbours(ns: &Netns) -> Vec<Value> {
    json_lines(&ns.ip(&["-j", "neigh", "show"]))
}

// ---------------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------------

/// Pings `ip` from `ns`: one echo with a 1 s wait, up to 3 attempts. True on a reply.
pub fn ping(ns: &Netns, ip: &str) -> bool {
    (0..3).any(|_| {
        ns.try_exec("ping", &["-n", "-q", "-c", "1", "-W", "1", ip])
            .status
            .success()
    })
}
