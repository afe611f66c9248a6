//! The node agents' `DuplicateAddress` Events: posted by the re-assert pass ([`crate::reassert`])
//! when an address on this node's wire is held by another attachment in the store, and read back
//! for `iotlan status` ([`recent_duplicates`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use iotlan_ipam::store::kubernetes::{objects, Conn};
use iotlan_ipam::Error;
use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use serde::Serialize;

use crate::reassert::Duplicate;

/// The reason of the Warning Event a duplicate address is reported with
/// (`kubectl get events --field-selector reason=DuplicateAddress`).
pub const DUPLICATE_REASON: &str = "DuplicateAddress";

/// Posts the duplicate-address Events of one namespace, as this node.
pub(crate) struct EventPoster {
    pub(crate) conn: Conn,
    pub(crate) namespace: String,
    pub(crate) node: Option<String>,
}

impl EventPoster {
    /// A Warning Event on the address's Lease; a failure to post it is logged, never fatal.
    pub(crate) fn warn(&self, d: &Duplicate) {
        let events: Api<Event> = Api::namespaced(self.conn.client().clone(), &self.namespace);
        let name = objects::address_name(&objects::network_key(&d.network), d.ours.ip);
        let now = Timestamp::now();
        let ev = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    objects::MANAGED_BY.to_string(),
                    objects::MANAGER.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("coordination.k8s.io/v1".into()),
                kind: Some("Lease".into()),
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                ..ObjectReference::default()
            },
            reason: Some(DUPLICATE_REASON.into()),
            message: Some(d.to_string()),
            type_: Some("Warning".into()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some("iotlan".into()),
            reporting_instance: self.node.clone(),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("iotlan".into()),
                host: self.node.clone(),
            }),
            ..Event::default()
        };
        if let Err(e) = self
            .conn
            .run("create event", events.create(&PostParams::default(), &ev))
        {
            tracing::warn!(error = %e.into_error(), "could not post the duplicate-address Event");
        }
    }
}

/// A duplicate address as the node agents reported it: the `DuplicateAddress` Events on one
/// address's Lease with one message (every re-assert pass that finds it posts one), taken together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DuplicateReport {
    pub network: String,
    /// The address, from the Lease's name (None when the name is not one of ours).
    pub ip: Option<IpAddr>,
    /// The Events' namespace (the Leases').
    pub namespace: String,
    /// The Events' involved object: the address's Lease.
    pub lease: String,
    pub reason: String,
    pub message: String,
    /// How many times it was reported: the Events' counts, summed.
    pub count: u64,
    /// How many Event objects that took.
    pub events: usize,
    pub first_unix: Option<u64>,
    pub last_unix: Option<u64>,
    /// The nodes whose agents reported it.
    pub nodes: Vec<String>,
}

/// The duplicate addresses of `network` the node agents reported as Events in `namespace` (the
/// Leases'; the API server keeps Events for an hour by default), the latest first. One LIST of the
/// Events labelled `app.kubernetes.io/managed-by=iotlan` (RBAC: `list` on `events` there).
pub fn recent_duplicates(
    conn: &Conn,
    namespace: &str,
    network: &str,
) -> Result<Vec<DuplicateReport>, Error> {
    let events: Api<Event> = Api::namespaced(conn.client().clone(), namespace);
    let sel = format!("{}={}", objects::MANAGED_BY, objects::MANAGER);
    let list = conn.run(
        "list events",
        events.list(&ListParams::default().labels(&sel)),
    )?;
    Ok(duplicates_of(network, namespace, &list.items))
}

/// The [`DuplicateReport`]s of `network` among `events`.
fn duplicates_of(network: &str, namespace: &str, events: &[Event]) -> Vec<DuplicateReport> {
    let prefix = format!("{}.", objects::network_key(network));
    let mut by: BTreeMap<(String, String), DuplicateReport> = BTreeMap::new();
    for ev in events {
        let o = &ev.involved_object;
        let Some(lease) = o.name.as_deref().filter(|n| n.starts_with(&prefix)) else {
            continue;
        };
        if ev.reason.as_deref() != Some(DUPLICATE_REASON) || o.kind.as_deref() != Some("Lease") {
            continue;
        }
        let message = ev.message.clone().unwrap_or_default();
        let last = [
            ev.last_timestamp.as_ref().map(|t| t.0),
            ev.event_time.as_ref().map(|t| t.0),
            ev.metadata.creation_timestamp.as_ref().map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .filter_map(|t| u64::try_from(t.as_second()).ok())
        .max();
        let first = ev
            .first_timestamp
            .as_ref()
            .and_then(|t| u64::try_from(t.0.as_second()).ok())
            .or(last);
        let node = ev
            .reporting_instance
            .clone()
            .or_else(|| ev.source.as_ref().and_then(|s| s.host.clone()))
            .filter(|n| !n.is_empty());
        let r = by
            .entry((lease.to_string(), message.clone()))
            .or_insert_with(|| DuplicateReport {
                network: network.to_string(),
                ip: ip_of_key(&lease[prefix.len()..]),
                namespace: namespace.to_string(),
                lease: lease.to_string(),
                reason: DUPLICATE_REASON.to_string(),
                message,
                count: 0,
                events: 0,
                first_unix: None,
                last_unix: None,
                nodes: Vec::new(),
            });
        r.count += u64::try_from(ev.count.unwrap_or(1)).unwrap_or(1).max(1);
        r.events += 1;
        r.first_unix = r.first_unix.into_iter().chain(first).min();
        r.last_unix = r.last_unix.into_iter().chain(last).max();
        if let Some(n) = node.filter(|n| !r.nodes.contains(n)) {
            r.nodes.push(n);
        }
    }
    let mut out: Vec<DuplicateReport> = by.into_values().collect();
    out.sort_by(|a, b| b.last_unix.cmp(&a.last_unix).then(a.ip.cmp(&b.ip)));
    out
}

/// The address of an address object's name after `<net>.` ([`objects::ip_key`] backwards).
fn ip_of_key(key: &str) -> Option<IpAddr> {
    let parts: Vec<&str> = key.split('-').collect();
    match parts.len() {
        4 => {
            let mut o = [0u8; 4];
            for (d, p) in o.iter_mut().zip(&parts) {
                *d = p.parse().ok()?;
            }
            Some(IpAddr::V4(Ipv4Addr::from(o)))
        }
        8 => {
            let mut g = [0u16; 8];
            for (d, p) in g.iter_mut().zip(&parts) {
                *d = u16::from_str_radix(p, 16).ok()?;
            }
            Some(IpAddr::V6(Ipv6Addr::from(g)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(lease: &str, message: &str, count: i32, last: i64, node: &str) -> Event {
        Event {
            involved_object: ObjectReference {
                kind: Some("Lease".into()),
                name: Some(lease.into()),
                ..ObjectReference::default()
            },
            reason: Some(DUPLICATE_REASON.into()),
            message: Some(message.into()),
            count: Some(count),
            last_timestamp: Timestamp::from_second(last).ok().map(Time),
            reporting_instance: Some(node.into()),
            ..Event::default()
        }
    }

    #[test]
    fn events_of_one_duplicate_are_taken_together_and_other_networks_left_out() {
        let v6 = "fd00-0000-0000-0000-0000-0000-0000-0064";
        let events = [
            event(
                "iot.192-168-20-210",
                "DUPLICATE ADDRESS a",
                1,
                1_000,
                "pi-1",
            ),
            event(
                "iot.192-168-20-210",
                "DUPLICATE ADDRESS a",
                2,
                1_060,
                "pi-2",
            ),
            event(&format!("iot.{v6}"), "DUPLICATE ADDRESS b", 1, 900, "pi-1"),
            event("iot-2.192-168-20-210", "other network", 1, 2_000, "pi-1"),
            Event {
                reason: Some("Other".into()),
                ..event("iot.192-168-20-211", "not a duplicate", 1, 2_000, "pi-1")
            },
        ];
        let got = duplicates_of("iot", "iotlan-system", &events);
        assert_eq!(got.len(), 2, "{got:#?}");
        assert_eq!(got[0].ip, Some("192.168.20.210".parse().unwrap()));
        assert_eq!((got[0].count, got[0].events), (3, 2));
        assert_eq!(
            (got[0].first_unix, got[0].last_unix),
            (Some(1_000), Some(1_060))
        );
        assert_eq!(got[0].nodes, ["pi-1", "pi-2"]);
        assert_eq!(got[1].ip, Some("fd00::64".parse().unwrap()));
        assert_eq!(ip_of_key("x-y"), None);
    }
}
