//! The conflict check: before a new IPv4 address is put on net1, it is probed the way RFC 5227
//! describes (ARP requests with sender IP 0.0.0.0, so that the probe never teaches a neighbour a
//! wrong MAC), from the new link (macvlan) or from its master (ipvlan: an answer to a probe is
//! addressed to the master's MAC with target IP 0.0.0.0, which ipvlan hands to the master), while
//! the link comes up and before any address is on it. The gateway probe runs only afterwards.
//!
//! An answer is a conflict. It is recorded node-locally in `<stateDir>/_conflicts/<network>/<ip>.json`
//! (time, MAC, the identity that met it) and honoured for [`HOLD`]: the pool skips that address
//! (ADD passes it to the allocator as an address to avoid) and `iotlan status` can list it
//! ([`recent`]).
//!
//! Who pays: an address the attachment already held, one taken over from the same pod's earlier
//! sandbox, and one this identity verified on this node within [`VERIFIED_FOR`]
//! (`<stateDir>/_verified/<network>/<ip>.json`, refreshed at every ADD) is not probed again: that is
//! the sticky restart. A first-time address costs one wait of `conflictCheck.timeoutMs`.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use iotlan_ipam::durable;
use iotlan_ipam::{Avoid, AvoidReason};
use serde::{Deserialize, Serialize};

use crate::cni::env::Container;
use crate::cni::result::CniResult;
use crate::config::NetConf;
use crate::error::{Error, Result};
use crate::ipam::{Claim, Ipam, IN_PROCESS_TYPE};
use crate::link::mac::Mac;
use crate::net::netlink::Link;
use crate::net::packet::ArpSocket;

/// How long a conflicting address stays out of the pool.
pub const HOLD: Duration = Duration::from_secs(10 * 60);
/// How long an address this identity verified on this node is not probed again.
pub const VERIFIED_FOR: Duration = Duration::from_secs(60 * 60);
/// How many other pool addresses one ADD tries after a conflict before it gives up.
pub const MAX_RETRIES: usize = 3;
/// Probes per check (RFC 5227 sends several; the second one covers a lost frame).
const PROBES: u32 = 2;

/// The RFC 5227 check that a new IPv4 address is not already in use on the LAN (on by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConflictCheck {
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_enabled() -> bool {
    true
}
fn default_timeout() -> u64 {
    150
}

impl Default for ConflictCheck {
    fn default() -> Self {
        ConflictCheck {
            enabled: true,
            timeout_ms: default_timeout(),
        }
    }
}

/// One conflict met on the LAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    pub ip: IpAddr,
    /// The MAC that answered.
    pub mac: String,
    pub seen_unix: u64,
    /// The identity whose ADD met it.
    pub identity: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Verified {
    identity: String,
    at_unix: u64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn conflicts_dir(state_dir: &Path, network: &str) -> PathBuf {
    state_dir.join("_conflicts").join(network)
}

fn verified_path(state_dir: &Path, network: &str, ip: IpAddr) -> PathBuf {
    state_dir
        .join("_verified")
        .join(network)
        .join(format!("{ip}.json"))
}

/// Writes `value` as JSON to `path` atomically; `durable` adds the fsyncs (the verified notes need
/// none: a lost one costs one probe).
fn write_json(path: &Path, value: &impl Serialize, durable: bool) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    if durable {
        durable::write_atomic(path, &json, 0o644)
    } else {
        durable::write_atomic_unsynced(path, &json, 0o644)
    }
}

/// Records a conflict.
pub fn record(state_dir: &Path, network: &str, c: &Conflict) -> io::Result<()> {
    write_json(
        &conflicts_dir(state_dir, network).join(format!("{}.json", c.ip)),
        c,
        true,
    )
}

/// Records a conflict met now by `identity`'s ADD; a record that cannot be written is logged.
pub fn note(state_dir: &Path, network: &str, ip: IpAddr, mac: &str, identity: &str) {
    let seen = Conflict {
        ip,
        mac: mac.to_string(),
        seen_unix: now_unix(),
        identity: identity.to_string(),
    };
    if let Err(e) = record(state_dir, network, &seen) {
        tracing::warn!(error = %e, "could not record the conflict");
    }
}

/// The conflicts of `network` met within [`HOLD`], by address.
pub fn recent(state_dir: &Path, network: &str) -> Vec<Conflict> {
    let now = now_unix();
    let mut out: Vec<Conflict> = fs::read_dir(conflicts_dir(state_dir, network))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Conflict>(&b).ok())
        .filter(|c| now.saturating_sub(c.seen_unix) < HOLD.as_secs())
        .collect();
    out.sort_by_key(|c| c.ip);
    out
}

/// The networks with a conflict recorded within [`HOLD`], by name.
pub fn networks(state_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(state_dir.join("_conflicts"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !recent(state_dir, n).is_empty())
        .collect();
    out.sort();
    out
}

impl Conflict {
    /// Until when the pool keeps the address out (Unix seconds).
    pub fn avoided_until_unix(&self) -> u64 {
        self.seen_unix.saturating_add(HOLD.as_secs())
    }
}

/// Whether `identity` verified (or held) `ip` on this node within [`VERIFIED_FOR`].
pub fn verified_recently(state_dir: &Path, network: &str, ip: IpAddr, identity: &str) -> bool {
    fs::read(verified_path(state_dir, network, ip))
        .ok()
        .and_then(|b| serde_json::from_slice::<Verified>(&b).ok())
        .is_some_and(|v| {
            v.identity == identity && now_unix().saturating_sub(v.at_unix) < VERIFIED_FOR.as_secs()
        })
}

/// Notes that `identity` holds `ip`, checked or known to be its own (a note younger than a quarter
/// of [`VERIFIED_FOR`] is left as it is). Best effort.
pub fn mark_verified(state_dir: &Path, network: &str, ip: IpAddr, identity: &str) {
    let path = verified_path(state_dir, network, ip);
    let fresh = fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Verified>(&b).ok())
        .is_some_and(|v| {
            v.identity == identity
                && now_unix().saturating_sub(v.at_unix) < VERIFIED_FOR.as_secs() / 4
        });
    if fresh {
        return;
    }
    let v = Verified {
        identity: identity.to_string(),
        at_unix: now_unix(),
    };
    if let Err(e) = write_json(&path, &v, false) {
        tracing::warn!(%ip, error = %e, "could not note the verified address");
    }
}

/// Probes `ip` from `sock` for `timeout`: returns the MAC of whoever claims it (an ARP reply or
/// request whose sender IP is `ip`, from another MAC than `own`), or None.
pub fn probe(
    sock: &ArpSocket,
    ip: Ipv4Addr,
    own: [u8; 6],
    timeout: Duration,
) -> io::Result<Option<[u8; 6]>> {
    let start = Instant::now();
    for i in 0..PROBES {
        sock.send_request(Ipv4Addr::UNSPECIFIED, ip)?;
        let until = start + timeout * (i + 1) / PROBES;
        if let Some(mac) = sock.wait_claim(ip, own, until)? {
            return Ok(Some(mac));
        }
    }
    Ok(None)
}

/// What one ADD attempt attached: the CNI result, and the key the pool granted the addresses
/// under (the pod's identity, or its own key for a second attachment of the network).
pub struct Attached {
    pub result: CniResult,
    pub key: String,
}

/// Runs `attempt` (one ADD) with the addresses to avoid: the node's own (`node`), and, with the
/// check on, those found in use lately. When the conflict check finds a pool address in use, it
/// records the conflict and runs it again with that address avoided too, up to [`MAX_RETRIES`]
/// times. Every attempt undid its own allocation and link before it returned the conflict.
pub fn with_retries(
    conf: &NetConf,
    ctr: &Container,
    ipam: &Ipam,
    node: Vec<Avoid>,
    mut attempt: impl FnMut(&[Avoid]) -> Result<Attached>,
) -> Result<CniResult> {
    let checking = conf.conflict_check.is_some();
    let pool = conf.ipam_type == IN_PROCESS_TYPE;
    let mut avoid = node;
    if checking && pool {
        avoid.extend(
            recent(&conf.state_dir, &conf.name)
                .into_iter()
                .map(|c| Avoid {
                    ip: c.ip,
                    why: AvoidReason::InUseOnLan,
                }),
        );
    }
    let identity = ctr.identity();
    let mut tried: Vec<IpAddr> = Vec::new();
    loop {
        match attempt(&avoid) {
            Ok(Attached { result, key }) => {
                if checking {
                    for ip in &result.ips {
                        mark_verified(&conf.state_dir, &conf.name, ip.address.ip(), &key);
                    }
                }
                return Ok(result);
            }
            Err(Error::AddressInUseOnLan { ip, mac, .. }) => {
                tracing::warn!(%ip, %mac, %identity, "address already in use on the LAN");
                note(&conf.state_dir, &conf.name, ip, &mac, &identity);
                let hint = if !pool {
                    format!(
                        "; ipam plugin {} handed it out: exclude it there, or give that device another address",
                        conf.ipam_type
                    )
                } else if ipam.pinned(conf, &identity, ip) {
                    format!(
                        "; it is reserved for or requested by this pod, so iotlan will not pick another: give that \
                         device another address, or change the reservation (conflicts are remembered for {} min)",
                        HOLD.as_secs() / 60
                    )
                } else if tried.len() == MAX_RETRIES {
                    format!(
                        "; {} pool addresses in a row were in use ({}): the pool overlaps devices with static addresses",
                        tried.len() + 1,
                        tried.iter().chain([&ip]).map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    )
                } else {
                    avoid.push(Avoid {
                        ip,
                        why: AvoidReason::InUseOnLan,
                    });
                    tried.push(ip);
                    continue;
                };
                return Err(Error::AddressInUseOnLan { ip, mac, hint });
            }
            Err(e) => return Err(e),
        }
    }
}

/// The IPv4 addresses of this allocation that the conflict check must probe: those it claimed new
/// (not kept, not taken over from the same pod), unless `key` verified them lately here.
pub fn targets(conf: &NetConf, key: &str, r: &CniResult, claim: &Claim) -> Vec<Ipv4Addr> {
    if conf.conflict_check.is_none() {
        return Vec::new();
    }
    r.ips
        .iter()
        .filter_map(|ip| match ip.address.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .filter(|v4| match claim {
            Claim::Pool(grant) => grant
                .claimed
                .iter()
                .any(|c| c.lease.ip == IpAddr::V4(*v4) && c.replaced.is_none()),
            Claim::Delegated => true,
        })
        .filter(|v4| !verified_recently(&conf.state_dir, &conf.name, IpAddr::V4(*v4), key))
        .collect()
}

/// The conflict check, with `link` up and no address on it yet. Opens the probe socket on the
/// link unless the master's is given (ipvlan); it stays open for the announcement after.
pub fn check(
    sock: &mut Option<ArpSocket>,
    link: &Link,
    targets: &[Ipv4Addr],
    timeout: Duration,
) -> Result<()> {
    let own = link.mac.unwrap_or_default();
    if sock.is_none() {
        *sock = Some(ArpSocket::open(link.index, own).map_err(|e| {
            Error::io(
                format!(
                    "cannot open an ARP socket on {} for the conflict check",
                    link.name
                ),
                e,
            )
        })?);
    }
    let Some(s) = sock.as_ref() else {
        return Ok(());
    };
    for ip in targets {
        let started = std::time::Instant::now();
        let answer = probe(s, *ip, own, timeout)
            .map_err(|e| Error::io(format!("cannot probe {ip} on {}", link.name), e))?;
        tracing::debug!(%ip, took_ms = started.elapsed().as_millis() as u64, conflict = answer.is_some(), "conflict check");
        if let Some(mac) = answer {
            return Err(Error::AddressInUseOnLan {
                ip: IpAddr::V4(*ip),
                mac: Mac(mac).to_string(),
                hint: String::new(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_expire_and_verified_notes_are_per_identity() {
        let d = tempfile_dir();
        let ip: IpAddr = "10.1.0.5".parse().unwrap();
        let c = Conflict {
            ip,
            mac: "aa:bb:cc:00:11:22".into(),
            seen_unix: now_unix(),
            identity: "a/b".into(),
        };
        record(&d, "iot", &c).unwrap();
        let old = Conflict {
            ip: "10.1.0.6".parse().unwrap(),
            seen_unix: now_unix() - HOLD.as_secs() - 1,
            ..c.clone()
        };
        record(&d, "iot", &old).unwrap();
        assert_eq!(recent(&d, "iot"), vec![c]);

        assert!(!verified_recently(&d, "iot", ip, "a/b"));
        mark_verified(&d, "iot", ip, "a/b");
        assert!(verified_recently(&d, "iot", ip, "a/b"));
        assert!(!verified_recently(&d, "iot", ip, "x/y"));
        fs::remove_dir_all(&d).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("iotlan-conflict-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }
}
