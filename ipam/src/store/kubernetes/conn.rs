//! A connection to the API server, and how a failed request is told.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

pub use super::error::ApiError;
use crate::error::Error;

/// A connection to the API server: a current-thread runtime and a client bound to it. Every request
/// is run to completion on the caller's thread, bounded by the timeout ([`Conn::run`]). Clones share
/// the runtime and the client.
#[derive(Clone)]
pub struct Conn {
    rt: Arc<tokio::runtime::Runtime>,
    client: kube::Client,
    /// The namespace of the kubeconfig's context, if it names one.
    default_namespace: String,
    timeout: Duration,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("default_namespace", &self.default_namespace)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn unavailable(reason: String) -> Error {
    Error::Unavailable { reason }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| unavailable(format!("cannot start the API client's runtime: {e}")))
}

impl Conn {
    /// A connection through the kubeconfig file at `kubeconfig` (read now).
    pub fn open(kubeconfig: &Path, timeout: Duration) -> Result<Conn, Error> {
        let what = || format!("kubeconfig {}", kubeconfig.display());
        let kc = Kubeconfig::read_from(kubeconfig)
            .map_err(|e| unavailable(format!("{}: {e}", what())))?;
        Conn::with_kubeconfig(kc, timeout, &what())
    }

    /// A connection as the kubeconfig `kc` (its current context) describes it.
    pub fn from_kubeconfig(kc: Kubeconfig, timeout: Duration) -> Result<Conn, Error> {
        Conn::with_kubeconfig(kc, timeout, "kubeconfig")
    }

    fn with_kubeconfig(kc: Kubeconfig, timeout: Duration, what: &str) -> Result<Conn, Error> {
        let rt = runtime()?;
        let config = rt
            .block_on(kube::Config::from_custom_kubeconfig(
                kc,
                &KubeConfigOptions::default(),
            ))
            .map_err(|e| unavailable(format!("{what}: {e}")))?;
        Conn::on(rt, config, timeout)
    }

    /// A connection as `config` describes it (`kube::Config::infer`, `Config::incluster`, or a
    /// kubeconfig read by the caller). Its timeouts become `timeout`.
    pub fn new(config: kube::Config, timeout: Duration) -> Result<Conn, Error> {
        Conn::on(runtime()?, config, timeout)
    }

    fn on(
        rt: tokio::runtime::Runtime,
        mut config: kube::Config,
        timeout: Duration,
    ) -> Result<Conn, Error> {
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        let default_namespace = config.default_namespace.clone();
        let server = config.cluster_url.to_string();
        // The client spawns its request buffer onto the runtime it is created in.
        let client = {
            let _guard = rt.enter();
            kube::Client::try_from(config)
                .map_err(|e| unavailable(format!("API client for {server}: {e}")))?
        };
        Ok(Conn {
            rt: Arc::new(rt),
            client,
            default_namespace,
            timeout,
        })
    }

    /// The client, for building [`kube::Api`]s whose requests go through [`Conn::run`].
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The namespace the kubeconfig's context names (`default` when it names none; the pod's own
    /// in a pod).
    pub fn default_namespace(&self) -> &str {
        &self.default_namespace
    }

    /// Runs one request to completion, bounded by the timeout.
    pub fn run<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ApiError> {
        let bounded =
            async { tokio::time::timeout(self.timeout + Duration::from_secs(1), fut).await };
        match self.rt.block_on(bounded) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ApiError::of(what, e)),
            Err(_) => Err(ApiError::Transport {
                what: what.to_string(),
                message: format!("no answer within {} ms", self.timeout.as_millis()),
            }),
        }
    }
}
