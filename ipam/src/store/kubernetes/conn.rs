//! A connection to the API server, and how a failed request is told.

use std::path::Path;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

use super::error::ApiError;
use crate::error::Error;

/// A connection to the API server: a current-thread runtime and a client bound to it.
pub(super) struct Conn {
    rt: tokio::runtime::Runtime,
    pub(super) client: kube::Client,
    /// The namespace of the kubeconfig's context, if it names one.
    pub(super) default_namespace: String,
    timeout: Duration,
}

impl Conn {
    pub(super) fn open(kubeconfig: &Path, timeout: Duration) -> Result<Conn, Error> {
        let unavailable = |what: String| Error::Unavailable { reason: what };
        let kc = Kubeconfig::read_from(kubeconfig)
            .map_err(|e| unavailable(format!("kubeconfig {}: {e}", kubeconfig.display())))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| unavailable(format!("cannot start the API client's runtime: {e}")))?;
        let mut config = rt
            .block_on(kube::Config::from_custom_kubeconfig(
                kc,
                &KubeConfigOptions::default(),
            ))
            .map_err(|e| unavailable(format!("kubeconfig {}: {e}", kubeconfig.display())))?;
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        let default_namespace = config.default_namespace.clone();
        // The client spawns its request buffer onto the runtime it is created in.
        let client = {
            let _guard = rt.enter();
            kube::Client::try_from(config).map_err(|e| {
                unavailable(format!("API client from {}: {e}", kubeconfig.display()))
            })?
        };
        Ok(Conn {
            rt,
            client,
            default_namespace,
            timeout,
        })
    }

    /// Runs one request to completion, bounded by the timeout.
    pub(super) fn run<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ApiError> {
        let bounded =
            async { tokio::time::timeout(self.timeout + Duration::from_secs(1), fut).await };
        match self.rt.block_on(bounded) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(kube::Error::Api(status))) => Err(ApiError::Status {
                what: what.to_string(),
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            }),
            Ok(Err(e @ kube::Error::SerdeError(_))) => Err(ApiError::BadAnswer {
                what: what.to_string(),
                message: crate::error::with_causes(&e),
            }),
            Ok(Err(e)) => Err(ApiError::Transport {
                what: what.to_string(),
                message: crate::error::with_causes(&e),
            }),
            Err(_) => Err(ApiError::Transport {
                what: what.to_string(),
                message: format!("no answer within {} ms", self.timeout.as_millis()),
            }),
        }
    }
}
