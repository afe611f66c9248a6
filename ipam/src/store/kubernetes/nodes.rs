//! Whether a node is lost, for taking over an address whose holder sandbox ran there.
//!
//! A node is lost when its Node object is gone, or when its `Ready` condition has not been `True`
//! (it is `False` or `Unknown`) for longer than the grace (`store.nodeLossGraceSeconds`). That is
//! Kubernetes' own contract: a node NotReady past its grace is presumed gone, and its pods may be
//! force-deleted and started elsewhere. Anything else (Ready, NotReady within the grace, no Ready
//! condition at all) is not lost. An API server that cannot be asked is [`Error::Unavailable`],
//! never "lost": not knowing must never hand out an address that may still be on the wire.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

use super::conn::Conn;
use crate::error::Error;

/// Asks the API server whether `name` is lost (see the module docs).
pub(super) fn is_lost(
    conn: &Conn,
    nodes: &Api<Node>,
    name: &str,
    grace: Duration,
) -> Result<bool, Error> {
    let node = conn.run(&format!("get node {name}"), nodes.get_opt(name))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let lost = judge(node.as_ref(), now, grace);
    tracing::debug!(node = %name, lost, "asked whether a node is lost");
    Ok(lost)
}

/// The verdict on a Node object (`None`: it does not exist) at `now` (Unix seconds).
pub(super) fn judge(node: Option<&Node>, now: u64, grace: Duration) -> bool {
    let Some(node) = node else {
        return true;
    };
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let Some(ready) = ready else {
        return false;
    };
    if ready.status == "True" {
        return false;
    }
    // Not Ready since its last transition; without a transition time, the grace cannot be judged.
    let Some(since) = ready
        .last_transition_time
        .as_ref()
        .and_then(|t| u64::try_from(t.0.as_second()).ok())
    else {
        return false;
    };
    now.saturating_sub(since) > grace.as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    const NOW: u64 = 1_800_000_000;
    const GRACE: Duration = Duration::from_secs(300);

    fn node(ready: Option<(&str, Option<u64>)>) -> Node {
        let conditions = ready.map(|(status, since)| {
            vec![NodeCondition {
                type_: "Ready".into(),
                status: status.into(),
                last_transition_time: since
                    .map(|s| Time(Timestamp::from_second(i64::try_from(s).unwrap()).unwrap())),
                ..NodeCondition::default()
            }]
        });
        Node {
            status: Some(NodeStatus {
                conditions,
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn gone_or_not_ready_past_the_grace_is_lost() {
        assert!(judge(None, NOW, GRACE));
        assert!(judge(
            Some(&node(Some(("False", Some(NOW - 301))))),
            NOW,
            GRACE
        ));
        assert!(judge(
            Some(&node(Some(("Unknown", Some(NOW - 3600))))),
            NOW,
            GRACE
        ));
    }

    #[test]
    fn ready_within_the_grace_or_unknown_timing_is_not_lost() {
        assert!(!judge(
            Some(&node(Some(("True", Some(NOW - 9999))))),
            NOW,
            GRACE
        ));
        assert!(!judge(
            Some(&node(Some(("False", Some(NOW - 300))))),
            NOW,
            GRACE
        ));
        assert!(!judge(
            Some(&node(Some(("Unknown", Some(NOW - 10))))),
            NOW,
            GRACE
        ));
        assert!(!judge(Some(&node(Some(("False", None)))), NOW, GRACE));
        assert!(!judge(Some(&node(None)), NOW, GRACE));
        // A clock behind the server's: a transition "in the future" is within the grace.
        assert!(!judge(
            Some(&node(Some(("False", Some(NOW + 60))))),
            NOW,
            GRACE
        ));
    }
}
