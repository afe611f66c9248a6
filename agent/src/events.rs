//! The node agents' `DuplicateAddress` Events: posted by the re-assert pass ([`crate::reassert`])
//! when an address on this node's wire is held by another attachment in the store, and read back
//! for `iotlan status` ([`recent_duplicates`]).
//!
//! Posted through kube's events [`Recorder`] as `events.k8s.io/v1` Events: regarding the address's
//! Lease, reported by controller `iotlan` and instance the node's name. A Recorder posts an Event
//! once and, when the same Event (type, reason, action, regarding object, reporter) recurs within
//! six minutes of its life, adds it to that Event's series (a PATCH) instead of posting another;
//! its note stays the first one's (the API server keeps it immutable). The re-assert pass makes
//! one [`EventPoster`] per pass and network (its connection carries the pass's token), so each
//! pass posts its own Events, as before.

use std::collections::BTreeMap;
use std::net::IpAddr;

use iotlan_ipam::store::kubernetes::{objects, Conn};
use iotlan_ipam::Error;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Event as Publish, EventType, Recorder, Reporter};
use serde::Serialize;

use crate::reassert::Duplicate;

/// The reason of the Warning Event a duplicate address is reported with
/// (`kubectl get events --field-selector reason=DuplicateAddress`).
pub const DUPLICATE_REASON: &str = "DuplicateAddress";

/// The reporting controller of the Events (`reportingController`).
pub const REPORTING_CONTROLLER: &str = "iotlan";

/// The action the Events report: the re-assert pass found the duplicate.
const ACTION: &str = "Reassert";

/// The most an Event's note may hold (the API server's limit, in bytes).
const NOTE_LIMIT: usize = 1024;

/// Posts the duplicate-address Events of one namespace, as this node.
pub(crate) struct EventPoster {
    conn: Conn,
    namespace: String,
    recorder: Recorder,
}

impl EventPoster {
    /// Posts into `namespace` (the Leases') over `conn`, as `node` (the reporting instance; the
    /// controller's name when none is known).
    pub(crate) fn new(conn: Conn, namespace: String, node: Option<String>) -> EventPoster {
        let reporter = Reporter {
            controller: REPORTING_CONTROLLER.to_string(),
            instance: node,
        };
        let recorder = Recorder::new(conn.client().clone(), reporter);
        EventPoster {
            conn,
            namespace,
            recorder,
        }
    }

    /// A Warning Event on the address's Lease; a failure to post it is logged, never fatal.
    pub(crate) fn warn(&self, d: &Duplicate) {
        let name = objects::address_name(&objects::network_key(&d.network), d.ours.ip);
        let regarding = ObjectReference {
            api_version: Some("coordination.k8s.io/v1".into()),
            kind: Some("Lease".into()),
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            ..ObjectReference::default()
        };
        let ev = Publish {
            type_: EventType::Warning,
            reason: DUPLICATE_REASON.into(),
            note: Some(note(&d.to_string())),
            action: ACTION.into(),
            secondary: None,
        };
        if let Err(e) = self
            .conn
            .run("post event", self.recorder.publish(&ev, &regarding))
        {
            tracing::warn!(error = %e.into_error(), "could not post the duplicate-address Event");
        }
    }
}

/// `message`, cut to what an Event's note may hold (at a character boundary).
fn note(message: &str) -> String {
    if message.len() <= NOTE_LIMIT {
        return message.to_string();
    }
    let mut end = NOTE_LIMIT - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
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
/// `events.k8s.io/v1` Events of reason `DuplicateAddress` reported by `iotlan` (a field selector;
/// RBAC: `list` on `events.k8s.io` `events` there). Those an earlier build posted as core v1 Events
/// are the same objects, and are read too.
pub fn recent_duplicates(
    conn: &Conn,
    namespace: &str,
    network: &str,
) -> Result<Vec<DuplicateReport>, Error> {
    let events: Api<Event> = Api::namespaced(conn.client().clone(), namespace);
    let sel = format!("reason={DUPLICATE_REASON},reportingController={REPORTING_CONTROLLER}");
    let list = conn.run(
        "list events",
        events.list(&ListParams::default().fields(&sel)),
    )?;
    Ok(duplicates_of(network, namespace, &list.items))
}

/// The [`DuplicateReport`]s of `network` among `events`.
fn duplicates_of(network: &str, namespace: &str, events: &[Event]) -> Vec<DuplicateReport> {
    let prefix = format!("{}.", objects::network_key(network));
    let mut by: BTreeMap<(String, String), DuplicateReport> = BTreeMap::new();
    for ev in events {
        let Some(o) = ev.regarding.as_ref() else {
            continue;
        };
        let Some(lease) = o.name.as_deref().filter(|n| n.starts_with(&prefix)) else {
            continue;
        };
        if ev.reason.as_deref() != Some(DUPLICATE_REASON) || o.kind.as_deref() != Some("Lease") {
            continue;
        }
        let message = ev.note.clone().unwrap_or_default();
        let secs = |t: &k8s_openapi::jiff::Timestamp| u64::try_from(t.as_second()).ok();
        let last = [
            ev.series.as_ref().map(|s| s.last_observed_time.0),
            ev.event_time.as_ref().map(|t| t.0),
            ev.deprecated_last_timestamp.as_ref().map(|t| t.0),
            ev.metadata.creation_timestamp.as_ref().map(|t| t.0),
        ]
        .iter()
        .flatten()
        .filter_map(secs)
        .max();
        let first = [
            ev.event_time.as_ref().map(|t| t.0),
            ev.deprecated_first_timestamp.as_ref().map(|t| t.0),
        ]
        .iter()
        .flatten()
        .filter_map(secs)
        .min()
        .or(last);
        // A series counts every time it was seen; an Event of an earlier build its `count`.
        let count = match &ev.series {
            Some(s) => s.count,
            None => ev.deprecated_count.unwrap_or(1),
        };
        let node = ev
            .reporting_instance
            .clone()
            .or_else(|| ev.deprecated_source.as_ref().and_then(|s| s.host.clone()))
            .filter(|n| !n.is_empty());
        let r = by
            .entry((lease.to_string(), message.clone()))
            .or_insert_with(|| DuplicateReport {
                network: network.to_string(),
                ip: objects::ip_of_key(&lease[prefix.len()..]),
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
        r.count += u64::try_from(count).unwrap_or(1).max(1);
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::EventSource;
    use k8s_openapi::api::events::v1::EventSeries;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
    use k8s_openapi::jiff::Timestamp;

    fn event(lease: &str, message: &str, count: i32, last: i64, node: &str) -> Event {
        let at = |secs: i64| Timestamp::from_second(secs).ok().map(MicroTime);
        Event {
            regarding: Some(ObjectReference {
                kind: Some("Lease".into()),
                name: Some(lease.into()),
                ..ObjectReference::default()
            }),
            reason: Some(DUPLICATE_REASON.into()),
            note: Some(message.into()),
            event_time: at(if count > 1 { last - 60 } else { last }),
            series: (count > 1).then(|| EventSeries {
                count,
                last_observed_time: at(last).unwrap_or(MicroTime(Timestamp::UNIX_EPOCH)),
            }),
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
            // Posted by an earlier build as a core v1 Event, read as events.k8s.io/v1 shows it.
            Event {
                event_time: None,
                reporting_instance: None,
                deprecated_count: Some(4),
                deprecated_first_timestamp: Timestamp::from_second(500).ok().map(Time),
                deprecated_last_timestamp: Timestamp::from_second(800).ok().map(Time),
                deprecated_source: Some(EventSource {
                    component: Some("iotlan".into()),
                    host: Some("pi-3".into()),
                }),
                ..event(&format!("iot.{v6}"), "DUPLICATE ADDRESS b", 1, 0, "")
            },
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
        assert_eq!((got[1].count, got[1].events), (5, 2));
        assert_eq!(
            (got[1].first_unix, got[1].last_unix),
            (Some(500), Some(900))
        );
        assert_eq!(got[1].nodes, ["pi-1", "pi-3"]);
    }

    fn lease(ip: &str, container: &str, node: &str) -> iotlan_ipam::Lease {
        iotlan_ipam::Lease {
            ip: ip.parse().unwrap(),
            identity: format!("ha/{container}"),
            container_id: container.into(),
            ifname: "net1".into(),
            node: Some(node.into()),
            created_unix: 0,
            sandbox: Default::default(),
        }
    }

    /// Through kube's Recorder against the API server double, as the shipped RBAC allows: the
    /// first report of a duplicate creates an events.k8s.io/v1 Event on the Lease, reported by
    /// this node; the same report again adds to its series (a PATCH), and is read back counted.
    #[test]
    fn a_duplicate_reported_twice_is_one_event_with_a_series() {
        use iotlan_apiserver_double::{rbac, ApiServer};
        let ns = rbac::NAMESPACE;
        let server = ApiServer::start();
        server.set_token(Some("tok"));
        server.enforce(rbac::shipped_rules());
        let dir = tempfile::tempdir().unwrap();
        let kc = server.kubeconfig(dir.path(), ns, "tok");
        let conn = Conn::open(&kc, std::time::Duration::from_secs(5)).unwrap();
        let poster = EventPoster::new(conn.clone(), ns.to_string(), Some("pi-1".into()));
        let d = Duplicate {
            network: "iot".into(),
            ours: lease("192.168.20.7", "a1", "pi-1"),
            holder: lease("192.168.20.7", "o1", "pi-2"),
        };
        poster.warn(&d);
        poster.warn(&d);
        assert!(server.denied().is_empty(), "{:?}", server.denied());
        let events = server.events();
        assert_eq!(events.len(), 1, "{events:#?}");
        let ev = &events[0];
        assert_eq!(ev["regarding"]["kind"], "Lease");
        assert_eq!(ev["regarding"]["name"], "iot.192-168-20-7");
        assert_eq!(ev["regarding"]["namespace"], ns);
        assert_eq!(ev["reportingController"], "iotlan");
        assert_eq!(ev["reportingInstance"], "pi-1");
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["series"]["count"], 2, "{ev:#}");
        let got = recent_duplicates(&conn, ns, "iot").unwrap();
        assert_eq!(got.len(), 1, "{got:#?}");
        assert_eq!((got[0].count, got[0].events), (2, 1));
        assert_eq!(got[0].nodes, ["pi-1"]);
        assert_eq!(got[0].message, d.to_string());
    }

    #[test]
    fn a_note_is_cut_to_what_the_api_server_takes() {
        let long = "é".repeat(600);
        let n = note(&long);
        assert!(n.len() <= NOTE_LIMIT && n.ends_with('…'), "{}", n.len());
        assert_eq!(note("short"), "short");
    }
}
