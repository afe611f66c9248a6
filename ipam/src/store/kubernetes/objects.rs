//! How leases map to `coordination.k8s.io/v1` Lease objects: names, labels, annotations.
//!
//! Two kinds of objects, both in the store's namespace:
//!
//! ```text
//! <net>.<ip>           one per held address: THE record of who holds it (kind=address)
//!                      e.g. iot.192-168-20-100, iot.fd00-0000-0000-0000-0000-0000-0000-0064
//! <net>.id-<hash>      an identity's latest addresses, kept after DEL, for stickiness (kind=identity),
//!                      and the attachments it was granted them for (`iotlan/attachments`)
//! ```
//!
//! Nothing is found by searching: ADD reads the identity's object by name (its latest addresses,
//! and what this attachment already holds), claims an address by creating its object, and writes
//! the identity's object back; DEL reads the identity's object and deletes the address objects it
//! lists for the attachment, with the uid and resourceVersion recorded there as preconditions (a
//! changed object costs one more read). An identity object written before `iotlan/attachments`
//! existed lists only the addresses: DEL then reads those and frees the ones the attachment holds.
//!
//! `<net>` is the network name when it is already a lowercase DNS label of at most 40 bytes,
//! else a lowercase form with an FNV-1a hash of the real name appended, so different networks
//! never share a name. The annotations carry the exact values; labels carry hashes of the
//! values that can be too long for a label (container IDs are 64 bytes), for server-side
//! selection. `spec.holderIdentity` is the pod, so `kubectl get leases` shows who holds what.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::coordination::v1::{Lease as KLease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

use crate::addr::fnv1a64;
use crate::lease::{Attachment, Lease, Sandbox};

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "iotlan";
pub const LABEL_NETWORK: &str = "iotlan/network";
pub const LABEL_KIND: &str = "iotlan/kind";
pub const LABEL_ATTACHMENT: &str = "iotlan/attachment";
pub const LABEL_IDENTITY: &str = "iotlan/identity";
pub const KIND_ADDRESS: &str = "address";
pub const KIND_IDENTITY: &str = "identity";

pub const ANN_NETWORK: &str = "iotlan/network";
pub const ANN_IP: &str = "iotlan/ip";
pub const ANN_IPS: &str = "iotlan/ips";
pub const ANN_IDENTITY: &str = "iotlan/identity";
pub const ANN_CONTAINER: &str = "iotlan/container-id";
pub const ANN_IFNAME: &str = "iotlan/ifname";
pub const ANN_NODE: &str = "iotlan/node";
pub const ANN_CREATED: &str = "iotlan/created-unix";
/// The holder sandbox's network namespace path and pod UID (absent on objects written before them).
pub const ANN_NETNS: &str = "iotlan/netns";
pub const ANN_POD_UID: &str = "iotlan/pod-uid";
/// The boot ID of the holder's node when its sandbox was made (absent on objects written before it).
pub const ANN_BOOT_ID: &str = "iotlan/boot-id";
/// On an identity object: the attachments it was granted addresses for, as JSON
/// ([`AttachmentRecord`]), with each address object's uid and resourceVersion as created.
pub const ANN_ATTACHMENTS: &str = "iotlan/attachments";
/// How many attachments an identity object remembers (a pod's interfaces and its sandboxes whose
/// DEL has not come yet); the oldest beyond it are dropped.
pub const MAX_ATTACHMENTS: usize = 8;
/// On an identity object: since when (Unix seconds) the reconciler has seen it unused (no address
/// held, no pod). ADD rewrites the object without it.
pub const ANN_UNUSED_SINCE: &str = "iotlan/unused-since-unix";
/// On an address object: since when (Unix seconds) the reconciler has seen its pod missing, or
/// replaced by another pod object of the same name. Cleared when the pod is seen again; a takeover
/// rewrites the object without it.
pub const ANN_MISSING_SINCE: &str = "iotlan/missing-since-unix";

/// The network's part of object names and its label value.
pub fn network_key(network: &str) -> String {
    let clean = network.len() <= 40
        && network
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !network.ends_with('-');
    if clean {
        return network.to_string();
    }
    let mut s: String = network
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.push('-');
    s.push_str(&hash(network));
    s
}

fn hash(s: &str) -> String {
    format!("{:016x}", fnv1a64(s.as_bytes()))
}

/// The address's part of an object name: dashes for dots, IPv6 fully expanded.
pub fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4
            .octets()
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:04x}"))
            .collect::<Vec<_>>()
            .join("-"),
    }
}

/// The address an [`ip_key`] was made from (None for any other text).
pub fn ip_of_key(key: &str) -> Option<IpAddr> {
    if let Ok(v4) = key.replace('-', ".").parse::<std::net::Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    key.replace('-', ":")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

pub fn address_name(netkey: &str, ip: IpAddr) -> String {
    format!("{netkey}.{}", ip_key(ip))
}

pub fn identity_name(netkey: &str, identity: &str) -> String {
    format!("{netkey}.id-{}", hash(identity))
}

pub fn attachment_hash(att: &Attachment) -> String {
    hash(&format!("{}/{}", att.container_id, att.ifname))
}

/// `iotlan/network=<netkey>,iotlan/kind=<kind>` plus extra `key=value` terms.
pub fn selector(netkey: &str, kind: &str, extra: &[(&str, &str)]) -> String {
    let mut s = format!("{MANAGED_BY}={MANAGER},{LABEL_NETWORK}={netkey},{LABEL_KIND}={kind}");
    for (k, v) in extra {
        s.push_str(&format!(",{k}={v}"));
    }
    s
}

fn micro_time(unix: u64) -> Option<MicroTime> {
    Timestamp::from_second(i64::try_from(unix).ok()?)
        .ok()
        .map(MicroTime)
}

/// The object recording `lease` of `network`.
pub fn address_object(network: &str, netkey: &str, namespace: &str, lease: &Lease) -> KLease {
    let labels = BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (LABEL_NETWORK.to_string(), netkey.to_string()),
        (LABEL_KIND.to_string(), KIND_ADDRESS.to_string()),
        (
            LABEL_ATTACHMENT.to_string(),
            attachment_hash(&lease.attachment()),
        ),
        (LABEL_IDENTITY.to_string(), hash(&lease.identity)),
    ]);
    let mut annotations = BTreeMap::from([
        (ANN_NETWORK.to_string(), network.to_string()),
        (ANN_IP.to_string(), lease.ip.to_string()),
        (ANN_IDENTITY.to_string(), lease.identity.clone()),
        (ANN_CONTAINER.to_string(), lease.container_id.clone()),
        (ANN_IFNAME.to_string(), lease.ifname.clone()),
        (ANN_CREATED.to_string(), lease.created_unix.to_string()),
    ]);
    let optional = [
        (ANN_NODE, &lease.node),
        (ANN_NETNS, &lease.sandbox.netns),
        (ANN_POD_UID, &lease.sandbox.pod_uid),
        (ANN_BOOT_ID, &lease.sandbox.boot_id),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            annotations.insert(key.to_string(), v.clone());
        }
    }
    KLease {
        metadata: ObjectMeta {
            name: Some(address_name(netkey, lease.ip)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(lease.identity.clone()),
            acquire_time: micro_time(lease.created_unix),
            ..LeaseSpec::default()
        }),
    }
}

/// Reads a lease back from an address object of `network`. `Err` names what is wrong.
pub fn lease_of(network: &str, obj: &KLease) -> Result<Lease, String> {
    let ann = obj.metadata.annotations.as_ref().ok_or("no annotations")?;
    let get = |k: &str| ann.get(k).ok_or_else(|| format!("annotation {k} missing"));
    if get(ANN_NETWORK)? != network {
        return Err(format!(
            "annotation {ANN_NETWORK} is {:?}, not {network:?}",
            get(ANN_NETWORK)?
        ));
    }
    let ip: IpAddr = get(ANN_IP)?
        .parse()
        .map_err(|e| format!("annotation {ANN_IP}: {e}"))?;
    let created_unix = get(ANN_CREATED)?
        .parse()
        .map_err(|e| format!("annotation {ANN_CREATED}: {e}"))?;
    Ok(Lease {
        ip,
        identity: get(ANN_IDENTITY)?.clone(),
        container_id: get(ANN_CONTAINER)?.clone(),
        ifname: get(ANN_IFNAME)?.clone(),
        node: ann.get(ANN_NODE).cloned(),
        created_unix,
        sandbox: Sandbox {
            netns: ann.get(ANN_NETNS).cloned(),
            pod_uid: ann.get(ANN_POD_UID).cloned(),
            boot_id: ann.get(ANN_BOOT_ID).cloned(),
        },
    })
}

/// One attachment's addresses as an identity object records them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttachmentRecord {
    pub container_id: String,
    pub ifname: String,
    pub addresses: Vec<AddressRef>,
}

/// An address object as its creator saw it: what a conditional delete needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AddressRef {
    pub ip: IpAddr,
    pub uid: String,
    pub rv: String,
}

impl AttachmentRecord {
    pub fn is_of(&self, att: &Attachment) -> bool {
        self.container_id == att.container_id && self.ifname == att.ifname
    }
}

/// What an identity object records, if it is `identity`'s of `network`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityRecord {
    pub ips: Vec<IpAddr>,
    /// `None` on an object written before attachments were recorded.
    pub attachments: Option<Vec<AttachmentRecord>>,
}

impl IdentityRecord {
    pub fn of(network: &str, identity: &str, obj: &KLease) -> IdentityRecord {
        if !owned_by(network, identity, obj) {
            return IdentityRecord::default();
        }
        let attachments = obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANN_ATTACHMENTS))
            // A hand-edited record that does not parse counts as listing no attachment.
            .map(|j| serde_json::from_str(j).unwrap_or_default());
        IdentityRecord {
            ips: identity_ips(network, identity, obj),
            attachments,
        }
    }

    pub fn attachment(&self, att: &Attachment) -> Option<&AttachmentRecord> {
        self.attachments.iter().flatten().find(|r| r.is_of(att))
    }
}

fn owned_by(network: &str, identity: &str, obj: &KLease) -> bool {
    obj.metadata.annotations.as_ref().is_some_and(|ann| {
        ann.get(ANN_IDENTITY).map(String::as_str) == Some(identity)
            && ann.get(ANN_NETWORK).map(String::as_str) == Some(network)
    })
}

/// The identity object remembering `ips` for `identity`, and `attachments`.
pub fn identity_object_of(
    network: &str,
    netkey: &str,
    namespace: &str,
    identity: &str,
    ips: &[IpAddr],
    attachments: &[AttachmentRecord],
) -> KLease {
    let mut obj = identity_object(network, netkey, namespace, identity, ips);
    if let (Some(ann), Ok(json)) = (
        obj.metadata.annotations.as_mut(),
        serde_json::to_string(attachments),
    ) {
        ann.insert(ANN_ATTACHMENTS.to_string(), json);
    }
    obj
}

/// The identity object remembering `ips` for `identity` (the layout before attachments were
/// recorded; [`identity_object_of`] adds them).
pub fn identity_object(
    network: &str,
    netkey: &str,
    namespace: &str,
    identity: &str,
    ips: &[IpAddr],
) -> KLease {
    let labels = BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (LABEL_NETWORK.to_string(), netkey.to_string()),
        (LABEL_KIND.to_string(), KIND_IDENTITY.to_string()),
        (LABEL_IDENTITY.to_string(), hash(identity)),
    ]);
    let annotations = BTreeMap::from([
        (ANN_NETWORK.to_string(), network.to_string()),
        (ANN_IDENTITY.to_string(), identity.to_string()),
        (
            ANN_IPS.to_string(),
            ips.iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]);
    KLease {
        metadata: ObjectMeta {
            name: Some(identity_name(netkey, identity)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_string()),
            ..LeaseSpec::default()
        }),
    }
}

/// The addresses an identity object remembers, if it is `identity`'s (a hash collision or a
/// hand-edited object yields none).
pub fn identity_ips(network: &str, identity: &str, obj: &KLease) -> Vec<IpAddr> {
    let Some(ann) = obj.metadata.annotations.as_ref() else {
        return Vec::new();
    };
    if ann.get(ANN_IDENTITY).map(String::as_str) != Some(identity)
        || ann.get(ANN_NETWORK).map(String::as_str) != Some(network)
    {
        return Vec::new();
    }
    ann.get(ANN_IPS)
        .map(|s| s.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns_subdomain(s: &str) -> bool {
        s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    }

    #[test]
    fn ip_keys_read_back_to_their_address() {
        for ip in ["192.168.20.210", "10.0.0.1", "fd00::64", "fe80::1:2:3:4"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_of_key(&ip_key(ip)), Some(ip), "{}", ip_key(ip));
        }
        assert_eq!(ip_of_key("x-y"), None);
        assert_eq!(ip_of_key("id-3d3d968b38709d93"), None);
    }

    #[test]
    fn names_are_dns_subdomains_and_distinct() {
        let nets = [
            "iot",
            "IoT",
            "iot_lan",
            "iot.lan",
            "iot-",
            &"x".repeat(200),
            "9",
        ];
        let mut seen = std::collections::HashSet::new();
        for n in nets {
            let k = network_key(n);
            assert!(k.len() <= 63, "{k}");
            assert!(seen.insert(k.clone()), "{n} collides as {k}");
            for ip in ["192.168.20.200", "fd00::", "::1", "fe80::1:2:3:4"] {
                let name = address_name(&k, ip.parse().unwrap());
                assert!(dns_subdomain(&name), "{name}");
            }
            assert!(dns_subdomain(&identity_name(
                &k,
                "home-assistant/home-assistant-0"
            )));
        }
        assert_eq!(network_key("iot"), "iot");
        assert_eq!(
            address_name("iot", "192.168.20.7".parse().unwrap()),
            "iot.192-168-20-7"
        );
    }

    #[test]
    fn lease_round_trips_through_its_object() {
        let l = Lease {
            ip: "fd00::64".parse().unwrap(),
            identity: "ha/home-assistant-0".into(),
            container_id: "c".repeat(64),
            ifname: "net1".into(),
            node: Some("pi".into()),
            created_unix: 1_700_000_000,
            sandbox: Sandbox {
                netns: Some("/var/run/netns/cni-1".into()),
                pod_uid: Some("0b5c6a7e-uid".into()),
                boot_id: Some("5f0e1c8a-boot".into()),
            },
        };
        let obj = address_object("iot", "iot", "iotlan-system", &l);
        assert_eq!(lease_of("iot", &obj).unwrap(), l);
        assert!(lease_of("other", &obj).is_err());
        let id = identity_object(
            "iot",
            "iot",
            "ns",
            "ha/x",
            &["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        );
        assert_eq!(identity_ips("iot", "ha/x", &id).len(), 2);
        assert!(identity_ips("iot", "ha/y", &id).is_empty());
    }
}
