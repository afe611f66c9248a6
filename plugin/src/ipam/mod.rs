//! Addresses for a CNI call: the iotlan pool in-process (the fast path for `"type": "iotlan-ipam"`),
//! or any other IPAM plugin exec'd from CNI_PATH as the spec describes (Debian's `static`,
//! `host-local`, whereabouts...).

pub mod conflict;
pub mod sandbox;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use iotlan_ipam::{
    AllocRequest, Attachment as PoolAttachment, Avoid, Grant, Pool, PoolConfig, Sandbox, Store,
};
use serde_json::Value;

use crate::cni::env::{Container, Env};
use crate::cni::result::{CniResult, Dns, IpConfig, Route};
use crate::config::{GcAttachment, NetConf};
use crate::error::{Error, Result};

pub const IN_PROCESS_TYPE: &str = "iotlan-ipam";

/// Where addresses come from for one network.
pub enum Ipam {
    Pool {
        pool: Box<Pool>,
        store: Box<dyn Store>,
    },
    Delegate {
        plugin: PathBuf,
    },
}

impl Ipam {
    /// The pool when `ipam.type` is iotlan-ipam, else the delegated plugin found in CNI_PATH.
    pub fn for_config(env: &Env, conf: &NetConf) -> Result<Ipam> {
        if conf.ipam_type == IN_PROCESS_TYPE {
            let (pool, store) = open_pool(&conf.name, &conf.ipam)?;
            return Ok(Ipam::Pool {
                pool: Box::new(pool),
                store,
            });
        }
        delegate(env, &conf.ipam_type)
    }

    /// Allocates the pod's addresses, none of `avoid` (the node's own addresses, addresses found in
    /// use on the LAN). `interface` is the index the ips refer to in the final result. The
    /// [`Claim`] is what [`Ipam::undo`] takes back if the ADD fails later.
    pub fn add(
        &self,
        conf: &NetConf,
        ctr: &Container,
        interface: Option<usize>,
        avoid: &[Avoid],
    ) -> Result<(CniResult, Claim)> {
        match self {
            Ipam::Pool { pool, store } => {
                // The boot ID is read once: the takeover check's, recorded in the new lease.
                let check = sandbox::OnThisNode::new();
                let req = AllocRequest {
                    identity: ctr.identity(),
                    attachment: pool_attachment(ctr),
                    requested: conf.requested_ips.clone(),
                    sandbox: Sandbox {
                        netns: ctr.netns.as_ref().map(|p| p.display().to_string()),
                        pod_uid: ctr.args.uid.clone(),
                        boot_id: check.boot_id().map(str::to_string),
                    },
                    avoid: avoid.to_vec(),
                };
                let grant = store.grant(pool, &req, &check)?;
                let result = result_of(pool.allocation(&grant.leases), interface);
                Ok((result, Claim::Pool(grant)))
            }
            Ipam::Delegate { plugin } => {
                let out = exec(plugin, "ADD", &conf.raw)?;
                let mut r = CniResult::from_json(&out, &format!("ipam plugin {}", conf.ipam_type))?;
                r.interfaces.clear();
                for ip in &mut r.ips {
                    ip.interface = interface;
                }
                // A requested IP that is not applied is a failure, never silently ignored.
                for want in &conf.requested_ips {
                    if !r.ips.iter().any(|ip| ip.address.ip() == *want) {
                        if let Err(e) = exec(plugin, "DEL", &conf.raw) {
                            tracing::warn!(error = %e, "could not release what the ipam plugin allocated");
                        }
                        return Err(Error::Pool(iotlan_ipam::Error::NotAllowed {
                            ip: *want,
                            why: format!(
                                "runtimeConfig.ips asked for it, but ipam plugin {} returned {}",
                                conf.ipam_type,
                                r.ips
                                    .iter()
                                    .map(|i| i.address.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        }));
                    }
                }
                Ok((r, Claim::Delegated))
            }
        }
    }

    /// The addresses the pool holds for a podless `identity` of this node (the hostShim's, under
    /// [`crate::link::shim::identity`]), attached as `identity`/`ifname`: granted on first use, the same
    /// ones after (a reservation for the identity pins them). `None` for a delegated plugin, which
    /// has no notion of a node.
    pub fn node_addresses(
        &self,
        identity: &str,
        ifname: &str,
        avoid: &[Avoid],
    ) -> Result<Option<Vec<IpAddr>>> {
        let Ipam::Pool { pool, store } = self else {
            return Ok(None);
        };
        let req = AllocRequest {
            identity: identity.to_string(),
            attachment: PoolAttachment::new(identity, ifname),
            avoid: avoid.to_vec(),
            ..AllocRequest::default()
        };
        let leases = store.allocate(pool, &req)?;
        Ok(Some(leases.iter().map(|l| l.ip).collect()))
    }

    /// Frees what [`Ipam::node_addresses`] granted (its address was found in use on the LAN).
    pub fn release_node(&self, identity: &str, ifname: &str) -> Result<()> {
        if let Ipam::Pool { store, .. } = self {
            store.release_for(identity, &PoolAttachment::new(identity, ifname))?;
        }
        Ok(())
    }

    /// Takes back what one ADD's allocation claimed, and nothing else: the pool reverts exactly the
    /// grant's claims (a lease taken over from an earlier sandbox is put back); a delegated plugin is
    /// called with DEL, since only it knows what it handed out.
    pub fn undo(&self, conf: &NetConf, claim: &Claim) -> Result<()> {
        match (self, claim) {
            (Ipam::Pool { store, .. }, Claim::Pool(grant)) => Ok(store.revert(grant)?),
            (Ipam::Delegate { plugin }, Claim::Delegated) => {
                exec(plugin, "DEL", &conf.raw).map(drop)
            }
            _ => Ok(()),
        }
    }

    /// DEL of a delegated plugin with the configuration bytes as received.
    pub fn del_raw(&self, raw: &[u8]) -> Result<()> {
        match self {
            Ipam::Delegate { plugin } => exec(plugin, "DEL", raw).map(drop),
            Ipam::Pool { .. } => Ok(()),
        }
    }

    /// Verifies that the attachment still holds the addresses `prev` lists for `interface`.
    pub fn check(&self, conf: &NetConf, ctr: &Container, prev: &CniResult) -> Result<()> {
        match self {
            Ipam::Pool { store, .. } => {
                let held: BTreeSet<IpAddr> = store
                    .find(&pool_attachment(ctr))?
                    .into_iter()
                    .map(|l| l.ip)
                    .collect();
                let expected: BTreeSet<IpAddr> = prev.ips.iter().map(|i| i.address.ip()).collect();
                if held != expected {
                    return Err(Error::CheckFailed(format!(
                        "pool {} holds {:?} for container {} interface {}, but prevResult lists {:?}",
                        conf.name, held, ctr.container_id, ctr.ifname, expected
                    )));
                }
                Ok(())
            }
            Ipam::Delegate { plugin } => exec(plugin, "CHECK", &conf.raw).map(drop),
        }
    }

    /// CNI GC: frees every lease of this network that `valid` does not list.
    pub fn gc(&self, conf: &NetConf, valid: &[GcAttachment]) -> Result<()> {
        match self {
            Ipam::Pool { store, .. } => {
                let valid: Vec<PoolAttachment> = valid
                    .iter()
                    .map(|a| PoolAttachment::new(a.container_id.clone(), a.ifname.clone()))
                    .collect();
                for l in store.gc(&valid)? {
                    tracing::info!(ip = %l.ip, identity = %l.identity, container = %l.container_id, "gc released");
                }
                Ok(())
            }
            Ipam::Delegate { plugin } => exec(plugin, "GC", &conf.raw).map(drop),
        }
    }

    /// CNI STATUS: can an ADD be served?
    pub fn status(&self, conf: &NetConf) -> Result<()> {
        match self {
            Ipam::Pool { pool, store } => {
                let leases = store
                    .leases()
                    .map_err(|e| Error::NotAvailable(format!("pool {}: {e}", conf.name)))?;
                if let Some(fam) = pool.exhausted_family(&leases) {
                    return Err(Error::NotAvailable(format!(
                        "pool {} has no free {fam} address: all {} are held (an ADD needs one of each family)",
                        conf.name,
                        pool.family_size(fam)
                    )));
                }
                Ok(())
            }
            Ipam::Delegate { plugin } => exec(plugin, "STATUS", &conf.raw).map(drop),
        }
    }
}

/// The delegated IPAM plugin `ipam_type`, found in CNI_PATH.
pub fn delegate(env: &Env, ipam_type: &str) -> Result<Ipam> {
    let plugin = env
        .path
        .iter()
        .map(|d| d.join(ipam_type))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::InvalidConfig(format!(
                "ipam plugin {ipam_type:?} was not found in CNI_PATH ({})",
                env.path
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            ))
        })?;
    Ok(Ipam::Delegate { plugin })
}

/// What one ADD's allocation claimed.
pub enum Claim {
    Pool(Grant),
    Delegated,
}

impl Claim {
    /// The key the pool granted the addresses under, when it is not the pod's identity (a second
    /// attachment of the network in the pod, or a key an earlier build used): the derived MAC
    /// follows it.
    pub fn key(&self) -> Option<&str> {
        match self {
            Claim::Pool(g) => g.leases.first().map(|l| l.identity.as_str()),
            Claim::Delegated => None,
        }
    }

    /// The IPv4 addresses this allocation took over from a sandbox on another node (its node is
    /// lost, the store says): nothing may answer for them on the LAN any more.
    pub fn taken_over_from_another_node(&self) -> Vec<std::net::Ipv4Addr> {
        let Claim::Pool(grant) = self else {
            return Vec::new();
        };
        grant
            .claimed
            .iter()
            .filter(|c| {
                c.replaced
                    .as_ref()
                    .is_some_and(|old| old.node.is_some() && old.node != c.lease.node)
            })
            .filter_map(|c| match c.lease.ip {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .collect()
    }
}

impl Ipam {
    /// Whether `ip` is one this attachment must get and no other (the runtime asked for it, or
    /// the pool reserves it for `key`): a conflict on it fails the ADD instead of moving on.
    pub fn pinned(&self, conf: &NetConf, key: &str, ip: IpAddr) -> bool {
        conf.requested_ips.contains(&ip)
            || matches!(self, Ipam::Pool { pool, .. }
                if pool.reservation(key, iotlan_ipam::Family::of(&ip)) == Some(ip))
    }
}

/// Parses and validates the pool, and opens its store.
pub fn open_pool(network: &str, ipam: &Value) -> Result<(Pool, Box<dyn Store>)> {
    let cfg: PoolConfig = serde_json::from_value(ipam.clone())
        .map_err(|e| Error::InvalidConfig(format!("ipam: {e}")))?;
    let pool = Pool::new(network, &cfg)?;
    let store = iotlan_ipam::open_store(network, &cfg.store, &pool)?;
    Ok((pool, store))
}

fn pool_attachment(ctr: &Container) -> PoolAttachment {
    PoolAttachment::new(ctr.container_id.clone(), ctr.ifname.clone())
}

/// The pool's allocation as a CNI result.
pub fn result_of(a: iotlan_ipam::Allocation, interface: Option<usize>) -> CniResult {
    CniResult {
        interfaces: Vec::new(),
        ips: a
            .addresses
            .into_iter()
            .map(|x| IpConfig {
                address: x.address,
                gateway: x.gateway,
                interface,
            })
            .collect(),
        routes: a
            .routes
            .into_iter()
            .map(|r| Route {
                dst: r.dst,
                gw: r.gw,
            })
            .collect(),
        dns: Dns {
            nameservers: a.dns.nameservers,
            domain: a.dns.domain,
            search: a.dns.search,
            options: a.dns.options,
        },
    }
}

/// Runs a delegated plugin with this process's CNI environment and `CNI_COMMAND=command`.
/// Returns its stdout as JSON (Null when empty); its CNI error becomes [`Error::Delegate`].
fn exec(plugin: &PathBuf, command: &str, stdin: &[u8]) -> Result<Value> {
    let name = plugin
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut child = Process::new(plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io(format!("cannot run ipam plugin {}", plugin.display()), e))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin)
            .map_err(|e| Error::io(format!("cannot write to ipam plugin {name}"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("ipam plugin {name} did not finish"), e))?;
    let json: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).map_err(|e| {
            Error::Decode(format!(
                "ipam plugin {name} printed something that is not JSON: {e}"
            ))
        })?
    };
    if !out.status.success() {
        let code = json
            .get("code")
            .and_then(Value::as_u64)
            .unwrap_or(u64::from(crate::error::code::IPAM_DELEGATE));
        return Err(Error::Delegate {
            plugin: name,
            code: code as u32,
            msg: json
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("failed without a message")
                .to_string(),
            details: json
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        });
    }
    Ok(json)
}
