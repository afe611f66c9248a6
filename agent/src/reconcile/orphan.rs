//! Whether a lease's pod still exists, for the reconcile loops that free what a missed DEL left.
//!
//! A lease of a pod identity (`namespace/name`, or `namespace/name@ifname` for a pod's second
//! interface) is *orphaned* when no pod of that namespace and name exists, or when the pod of that
//! name is another pod object than the one the lease recorded (its UID differs: a StatefulSet pod
//! recreated under the same name while the old sandbox's DEL never came). A lease written before
//! UIDs were recorded is judged by name alone. A lease of a bare container ID (podman, ctr) has no
//! pod to look up and is never judged.
//!
//! An orphaned lease is freed only once it has been seen orphaned for longer than a grace,
//! counted from the first pass that saw it so ([`due`]), and the mark is cleared when its pod is
//! seen again: a pod list that is briefly stale, or a pod that is being recreated, never frees an
//! address on its own.

use std::collections::HashMap;

use iotlan_ipam::Lease;

/// The pods that exist: `namespace/name` to the pod object's UID (when the list gave one).
#[derive(Debug, Clone, Default)]
pub struct LivePods {
    by_name: HashMap<String, Option<String>>,
}

/// What a pass makes of one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// The identity is a container ID: there is no pod to look up.
    Podless,
    /// The lease's pod exists (same UID, or the lease recorded none).
    Live,
    /// No pod of that namespace and name exists.
    Missing,
    /// A pod of that name exists, but it is another pod object (another UID).
    Replaced,
}

impl PodState {
    pub fn is_orphaned(self) -> bool {
        matches!(self, PodState::Missing | PodState::Replaced)
    }
}

impl LivePods {
    /// From (namespace, name, uid) of every pod listed.
    pub fn new<'a>(
        pods: impl IntoIterator<Item = (&'a str, &'a str, Option<&'a str>)>,
    ) -> LivePods {
        LivePods {
            by_name: pods
                .into_iter()
                .map(|(ns, name, uid)| (format!("{ns}/{name}"), uid.map(str::to_string)))
                .collect(),
        }
    }

    /// Whether a pod named by `identity` (a pod identity, any `@ifname` ignored) exists.
    pub fn has_pod(&self, identity: &str) -> bool {
        self.by_name.contains_key(pod_of(identity))
    }

    pub fn state(&self, lease: &Lease) -> PodState {
        let pod = pod_of(&lease.identity);
        if !pod.contains('/') {
            return PodState::Podless;
        }
        match (self.by_name.get(pod), lease.sandbox.pod_uid.as_deref()) {
            (None, _) => PodState::Missing,
            (Some(Some(live)), Some(recorded)) if live != recorded => PodState::Replaced,
            (Some(_), _) => PodState::Live,
        }
    }
}

/// The pod part of an identity: `ns/name` of `ns/name@ifname`.
fn pod_of(identity: &str) -> &str {
    identity.split_once('@').map_or(identity, |(pod, _)| pod)
}

/// Whether a lease first seen orphaned at `since` (Unix seconds) may be freed at `now`.
pub fn due(since: u64, now: u64, grace: std::time::Duration) -> bool {
    now.saturating_sub(since) >= grace.as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotlan_ipam::Sandbox;

    fn lease(identity: &str, uid: Option<&str>) -> Lease {
        Lease {
            ip: "10.0.0.1".parse().unwrap(),
            identity: identity.into(),
            container_id: "c".into(),
            ifname: "net1".into(),
            node: None,
            created_unix: 0,
            sandbox: Sandbox {
                netns: None,
                pod_uid: uid.map(str::to_string),
                boot_id: None,
            },
        }
    }

    #[test]
    fn by_name_and_uid() {
        let pods = LivePods::new([("ns", "web-0", Some("uid-2")), ("ns", "old", None)]);
        assert_eq!(
            pods.state(&lease("ns/web-0", Some("uid-2"))),
            PodState::Live
        );
        assert_eq!(
            pods.state(&lease("ns/web-0", Some("uid-1"))),
            PodState::Replaced
        );
        // Written before UIDs were recorded: by name.
        assert_eq!(pods.state(&lease("ns/web-0", None)), PodState::Live);
        // A second interface of the same pod.
        assert_eq!(
            pods.state(&lease("ns/web-0@net2", Some("uid-2"))),
            PodState::Live
        );
        assert_eq!(
            pods.state(&lease("ns/gone", Some("uid-9"))),
            PodState::Missing
        );
        assert_eq!(pods.state(&lease("ns/gone@net2", None)), PodState::Missing);
        // A listed pod without a UID cannot tell objects apart: by name.
        assert_eq!(pods.state(&lease("ns/old", Some("uid-3"))), PodState::Live);
        assert_eq!(pods.state(&lease("0123abcd", None)), PodState::Podless);
        assert!(pods.has_pod("ns/web-0@net2") && !pods.has_pod("ns/gone"));
    }

    #[test]
    fn due_after_the_grace() {
        let g = std::time::Duration::from_secs(300);
        assert!(!due(1000, 1299, g));
        assert!(due(1000, 1300, g));
        // A mark from a clock ahead of ours is not due.
        assert!(!due(2000, 1000, g));
        assert!(due(1000, 1000, std::time::Duration::ZERO));
    }
}
