//! The reconcile loop's hook. It needs the `kubernetes` store; without it, it is off.
use super::{Agent, Args};

pub struct Reconciler {
    #[cfg(feature = "kubernetes")]
    inner: crate::reconcile::Reconciler,
}

impl Reconciler {
    #[cfg(feature = "kubernetes")]
    pub fn new(agent: &Agent, opts: &Args) -> Option<Reconciler> {
        if opts.reconcile_interval.is_zero() {
            return None;
        }
        let (_, kubeconfig) = agent.kubeconfig.as_ref()?;
        match crate::reconcile::Reconciler::new(
            kubeconfig,
            opts.namespace.as_deref(),
            opts.reconcile_grace,
        ) {
            Ok(inner) => Some(Reconciler {
                inner: inner.with_identity_retention(opts.identity_retention()),
            }),
            Err(e) => {
                tracing::error!("reconcile loop disabled: {e}");
                None
            }
        }
    }

    #[cfg(not(feature = "kubernetes"))]
    pub fn new(_agent: &Agent, opts: &Args) -> Option<Reconciler> {
        if !opts.reconcile_interval.is_zero() {
            tracing::info!("reconcile loop off: built without the kubernetes store");
        }
        None
    }

    pub fn run_once(&mut self) {
        #[cfg(feature = "kubernetes")]
        match self.inner.run_once() {
            Ok(report) => tracing::info!("reconcile: {report}"),
            Err(e) => tracing::warn!("reconcile: {e}"),
        }
    }
}
