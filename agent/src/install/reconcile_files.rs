//! The node agent's reconcile loop for the file store: frees leases in this node's state dir
//! (`/var/lib/cni/iotlan/<network>/`) whose pod is no longer on this node, after the reconcile
//! grace ([`crate::reconcile::FileStoreReconciler`]), and deletes the sticky identity
//! records unused for `--identity-retention` days. Multus never forwards GC to a
//! NetworkAttachmentDefinition's plugin, so nothing else would. Needs the kubernetes store compiled
//! in, the agent's kubeconfig (to list the node's pods) and the node name; otherwise it is off.

use super::{Agent, Args};

pub struct FileReconciler {
    #[cfg(feature = "kubernetes")]
    inner: crate::reconcile::FileStoreReconciler,
}

impl FileReconciler {
    #[cfg(feature = "kubernetes")]
    pub fn new(agent: &Agent, opts: &Args) -> Option<FileReconciler> {
        if opts.reconcile_interval.is_zero() {
            return None;
        }
        let (_, kubeconfig) = agent.kubeconfig.as_ref()?;
        let Some(node) = agent.node_name.as_deref() else {
            tracing::info!("file-store reconcile off: no node name (NODE_NAME or --node-name)");
            return None;
        };
        let state_dir = match super::layout::state_dir(&opts.host_root) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("file-store reconcile disabled: {e}");
                return None;
            }
        };
        match crate::reconcile::FileStoreReconciler::new(
            kubeconfig,
            node,
            &state_dir,
            opts.reconcile_grace,
        ) {
            Ok(inner) => Some(FileReconciler {
                inner: inner.with_identity_retention(opts.identity_retention()),
            }),
            Err(e) => {
                tracing::error!("file-store reconcile disabled: {e}");
                None
            }
        }
    }

    #[cfg(not(feature = "kubernetes"))]
    pub fn new(_agent: &Agent, _opts: &Args) -> Option<FileReconciler> {
        None
    }

    pub fn run_once(&mut self) {
        #[cfg(feature = "kubernetes")]
        match self.inner.run_once() {
            Ok(report) => tracing::info!("reconcile: {report}"),
            Err(e) => tracing::warn!("file-store reconcile: {e}"),
        }
    }
}
