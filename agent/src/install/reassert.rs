//! The node agent re-asserts the kubernetes store's Leases of the attachments on its node, at start
//! and before every reconcile pass ([`crate::reassert::Reasserter`]): any Lease
//! missing (a namespace deleted with the manifests, an etcd restore, `kubectl delete leases`) is
//! created again from the plugin's node-local record, and an address held by another attachment is
//! reported as a duplicate (an error in the log and a Warning Event), never resolved. A record whose
//! sandbox's network namespace is gone from the node (`/run/netns`, mounted read-only) is not
//! re-asserted: nothing of it is on the wire any more. Needs the
//! kubernetes store compiled in and the agent's kubeconfig; otherwise it is off.

use super::{Agent, Args};

pub struct NodeReasserter {
    #[cfg(feature = "kubernetes")]
    inner: crate::reassert::Reasserter,
}

impl NodeReasserter {
    #[cfg(feature = "kubernetes")]
    pub fn new(agent: &Agent, opts: &Args) -> Option<NodeReasserter> {
        let (_, kubeconfig) = agent.kubeconfig.as_ref()?;
        let state_dir = match super::layout::state_dir(&opts.host_root) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("re-asserting this node's Leases disabled: {e}");
                return None;
            }
        };
        match crate::reassert::Reasserter::new(kubeconfig, opts.namespace.as_deref(), &state_dir) {
            Ok(inner) => Some(NodeReasserter {
                inner: inner
                    .with_netns_check(super::netns::netns_gone(&opts.host_root))
                    .with_node(agent.node_name.clone()),
            }),
            Err(e) => {
                tracing::error!("re-asserting this node's Leases disabled: {e}");
                None
            }
        }
    }

    #[cfg(not(feature = "kubernetes"))]
    pub fn new(_agent: &Agent, _opts: &Args) -> Option<NodeReasserter> {
        None
    }

    pub fn run_once(&mut self) {
        #[cfg(feature = "kubernetes")]
        match self.inner.run_once() {
            Ok(report) if !report.duplicates.is_empty() => tracing::error!("re-assert: {report}"),
            Ok(report) => tracing::info!("re-assert: {report}"),
            Err(e) => tracing::warn!("re-assert: {e}"),
        }
    }
}
