//! Leases, attachments, requests and the allocation handed back to the CNI layer.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::names;

/// One interface of one container: the key a lease is released by (CNI DEL, GC).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl Attachment {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Attachment {
        Attachment {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    /// Checks the container ID and the interface name (they become file names).
    pub fn validate(&self) -> Result<(), Error> {
        names::validate_container_id(&self.container_id)?;
        names::validate_ifname(&self.ifname)
    }
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// An ADD: who asks (its identity), for which interface, and the addresses it requested
/// (`runtimeConfig.ips`, at most one per family; empty when none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocRequest {
    /// `namespace/name` of the pod, or the container ID when the runtime gives no pod name.
    pub identity: String,
    pub attachment: Attachment,
    pub requested: Vec<IpAddr>,
    /// Where the sandbox lives and which pod object it is, recorded in the leases so that a later
    /// ADD of the same pod can tell whether this sandbox is still on the wire.
    pub sandbox: Sandbox,
    /// Addresses this allocation must not hand out, and why ([`Avoid`]).
    pub avoid: Vec<Avoid>,
}

/// An address an allocation must not hand out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Avoid {
    pub ip: IpAddr,
    pub why: AvoidReason,
}

/// Why an address is avoided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AvoidReason {
    /// The node itself carries it (on the named interface): a pod given it would take the node's
    /// address off the LAN (a macvlan child cannot hear its parent, so no probe finds it). Never
    /// handed out; a reservation or request of it is refused.
    NodeAddress { interface: String },
    /// Found in use on the LAN lately (the conflict check): skipped by the search and by
    /// stickiness; a reservation or request of it is still tried, and the check then names the device.
    InUseOnLan,
}

impl AllocRequest {
    /// What the allocation knows of `ip` as an address to avoid.
    pub fn avoided(&self, ip: IpAddr) -> Option<&AvoidReason> {
        self.avoid.iter().find(|a| a.ip == ip).map(|a| &a.why)
    }
}

/// What identifies one sandbox beyond its container ID: its network namespace path (`CNI_NETNS`)
/// and the pod object's UID (`K8S_POD_UID`), where the runtime gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The node's boot ID (`/proc/sys/kernel/random/boot_id`) when the sandbox was made: a sandbox
    /// of another boot is gone, whatever the clock says (a Pi without a real-time clock steps its
    /// clock after boot, so lease times cannot be compared with the boot time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// One allocated address and who holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub ip: IpAddr,
    pub identity: String,
    pub container_id: String,
    pub ifname: String,
    /// The node that holds the lease, where the store knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When the lease was taken, in seconds since the Unix epoch.
    pub created_unix: u64,
    /// The holder's sandbox (absent in leases written before it was recorded).
    #[serde(default, flatten)]
    pub sandbox: Sandbox,
}

impl Lease {
    pub fn attachment(&self) -> Attachment {
        Attachment::new(self.container_id.clone(), self.ifname.clone())
    }

    /// Whether this lease belongs to `att`.
    pub fn is_held_by(&self, att: &Attachment) -> bool {
        self.container_id == att.container_id && self.ifname == att.ifname
    }

    pub(crate) fn conflict(&self) -> Error {
        Error::Conflict {
            ip: self.ip,
            holder_identity: self.identity.clone(),
            holder_container: self.container_id.clone(),
            holder_ifname: self.ifname.clone(),
        }
    }
}

/// What the CNI layer puts into its result for a set of leases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Allocation {
    pub addresses: Vec<Assigned>,
    /// The configured routes of the families present (the subnet route is implied by each address's
    /// prefix). Never a default route.
    pub routes: Vec<Route>,
    pub dns: Dns,
}

/// One address with its subnet prefix and its family's gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Assigned {
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
}

/// A route via this network. `gw` is the route's own gateway, else the family's gateway, else `None`
/// (on-link).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

/// DNS settings for the CNI result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}
