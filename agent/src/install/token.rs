//! The token in the plugin's kubeconfig: one that outlives the agent's pod.
//!
//! The token kubelet projects into the agent's pod is bound to that pod: about 25 s after the pod
//! is deleted the API server refuses it (401), and the plugin on the node with it, so DEL and ADD
//! would fail whenever the agent is gone (an uninstall, an upgrade whose image never arrives, a
//! rollout). As Calico's node agent does (`node/pkg/cni/token_watch.go`), the agent instead asks
//! the TokenRequest API for a token of the ServiceAccount (`--token-serviceaccount`, default
//! `iotlan`), bound to nothing else, valid for `--token-lifetime` (default 24 h), authenticating with
//! its own token:
//! - the expiry is the one the API server granted (`status.expirationTimestamp`; a server with
//!   `--service-account-max-token-expiration` grants less than asked);
//! - it is renewed after a quarter to a half of its remaining lifetime (random in between, so the
//!   nodes of a cluster do not ask at once), and whenever kubelet rotates the agent's own token (about
//!   hourly, and at once after a signing-key rotation, which invalidates tokens issued before it);
//! - a request that fails is retried on every pass, with a warning on every pass. While the token
//!   the plugin has is still good for [`KEEP_MARGIN`], it keeps it: it outlives the agent. Otherwise
//!   (no token yet, or one about to expire) the plugin gets the agent pod's own token, which works
//!   while the pod lives, as before this existed; the warning says so, and how to fix it (the RBAC
//!   of an install from before: `kubectl apply -k manifests/iotlan/namespace`).
//!
//! Without the `kubernetes` store compiled in there is nothing to ask with (and no store that
//! reads the kubeconfig): the pod's own token is written, as before.

use std::time::Duration;

use super::kubeconfig::Credentials;

/// The shortest lifetime the API server grants: a TokenRequest for less than 10 minutes is 422.
pub const MIN_LIFETIME: Duration = Duration::from_secs(600);
/// A token with less than this left is not kept when its renewal fails: the pod's own token
/// replaces it while it still works.
pub const KEEP_MARGIN: Duration = Duration::from_secs(600);
/// The ServiceAccount whose token the plugin gets, by default (the manifests' one).
pub const DEFAULT_SERVICE_ACCOUNT: &str = "iotlan";

/// A token the TokenRequest API issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub token: String,
    /// When the API server stops accepting it (Unix seconds).
    pub expires_unix: u64,
}

/// Why a TokenRequest got no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The API server answered with an error status.
    #[error("{code} {reason}: {message}")]
    Refused {
        code: u16,
        reason: String,
        message: String,
    },
    /// No answer, or not one of an API server.
    #[error("{0}")]
    Failed(String),
}

/// What the plugin's kubeconfig is to carry: the token, and its expiry for a TokenRequest token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginToken {
    pub token: String,
    pub expires_unix: Option<u64>,
}

/// Asks the API server, as the agent (`own`), for a token of ServiceAccount `namespace/name`.
pub type Request<'a> =
    &'a dyn Fn(&Credentials, &str, &str, Duration) -> Result<Issued, RequestError>;

/// The agent's side of the plugin's token, kept across passes (module docs).
#[derive(Debug)]
pub struct Renewer {
    service_account: String,
    lifetime: Duration,
    /// The TokenRequest token the plugin has, if it has one.
    issued: Option<Issued>,
    /// When to renew it (Unix seconds).
    renew_at: u64,
    /// The agent's own token the last successful request was made with.
    requested_with: Option<String>,
    /// Whether the last pass fell back to the pod's own token (to log the way back once).
    on_pod_token: bool,
}

impl Renewer {
    /// `existing`: the TokenRequest token the kubeconfig holds already (an agent restarted).
    pub fn new(service_account: &str, lifetime: Duration, existing: Option<Issued>) -> Renewer {
        Renewer {
            service_account: service_account.to_string(),
            lifetime,
            issued: existing,
            renew_at: 0,
            requested_with: None,
            on_pod_token: false,
        }
    }

    /// The token the plugin's kubeconfig is to carry now (Unix seconds `now`). `own` are the
    /// agent's own credentials as read this pass; `sa_namespace` the ServiceAccount's namespace.
    pub fn plugin_token(
        &mut self,
        own: &Credentials,
        sa_namespace: &str,
        now: u64,
        request: Request<'_>,
    ) -> PluginToken {
        let due = self.issued.is_none()
            || now >= self.renew_at
            || self.requested_with.as_deref() != Some(own.token.as_str());
        if due {
            match request(own, sa_namespace, &self.service_account, self.lifetime) {
                Ok(issued) => self.took(issued, own, sa_namespace, now),
                Err(e) => self.refused(&e, sa_namespace, now),
            }
        }
        match &self.issued {
            Some(i) => PluginToken {
                token: i.token.clone(),
                expires_unix: Some(i.expires_unix),
            },
            None => PluginToken {
                token: own.token.clone(),
                expires_unix: None,
            },
        }
    }

    fn took(&mut self, issued: Issued, own: &Credentials, sa_namespace: &str, now: u64) {
        let left = issued.expires_unix.saturating_sub(now);
        self.renew_at = now + renewal_delay(left, jitter());
        let was_on_pod_token = std::mem::take(&mut self.on_pod_token);
        let msg = "the plugin's kubeconfig has a token of the ServiceAccount (TokenRequest): \
                   the plugin on this node keeps working without this pod until it expires";
        if was_on_pod_token || self.issued.is_none() {
            tracing::info!(serviceaccount = %format!("{sa_namespace}/{}", self.service_account),
                expires = %when(issued.expires_unix), renew_in_secs = self.renew_at - now, "{msg}");
        } else {
            tracing::debug!(expires = %when(issued.expires_unix), renew_in_secs = self.renew_at - now,
                "renewed the plugin's token");
        }
        if issued.expires_unix < now + self.lifetime.as_secs() / 2 {
            tracing::warn!(asked_secs = self.lifetime.as_secs(), granted_secs = left,
                "the API server granted the plugin's token a shorter life than asked (its \
                 --service-account-max-token-expiration): the plugin outlives this agent only that long");
        }
        self.issued = Some(issued);
        self.requested_with = Some(own.token.clone());
    }

    fn refused(&mut self, e: &RequestError, sa_namespace: &str, now: u64) {
        let sa = format!("{sa_namespace}/{}", self.service_account);
        let fix = match e {
            RequestError::Refused { code: 403, .. } => format!(
                " The RBAC must allow this ServiceAccount to create serviceaccounts/token for {sa}: \
                 an install from before this agent version lacks it; apply manifests/iotlan/namespace \
                 (kubectl apply -k manifests/iotlan/namespace)."
            ),
            RequestError::Refused { code: 404, .. } => format!(
                " Does ServiceAccount {sa} exist? It is in manifests/iotlan/namespace \
                 (--token-serviceaccount names another)."
            ),
            _ => " Retrying on every pass.".to_string(),
        };
        match &self.issued {
            Some(i) if i.expires_unix >= now + KEEP_MARGIN.as_secs() => {
                tracing::warn!(
                    "cannot renew the plugin's token (TokenRequest, create serviceaccounts/token {sa}): \
                     {e}. The plugin keeps the token it has, valid until {}.{fix}",
                    when(i.expires_unix)
                );
            }
            _ => {
                self.issued = None;
                self.on_pod_token = true;
                tracing::error!(
                    "cannot get a token for the plugin (TokenRequest, create serviceaccounts/token {sa}): \
                     {e}. The plugin's kubeconfig has this pod's own token instead, which the API \
                     server refuses about 30 s after this pod is deleted: DEL and ADD of pods with the \
                     kubernetes store then fail on this node until an agent runs again.{fix}"
                );
            }
        }
        // Asked again on the next pass.
        self.renew_at = now;
    }
}

/// How long after getting a token with `left` seconds to live to renew it: a quarter of `left`,
/// plus `jitter` (in [0, 1)) of another quarter, as Calico's agent does; never less than 5 s.
pub fn renewal_delay(left: u64, jitter: f64) -> u64 {
    let quarter = left / 4;
    (quarter + (quarter as f64 * jitter.clamp(0.0, 0.999)) as u64).max(5)
}

/// A number in [0, 1) that differs between processes and calls.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A Unix time for the log, as RFC 3339 where the build can say it.
fn when(unix: u64) -> String {
    #[cfg(feature = "kubernetes")]
    if let Ok(t) = k8s_openapi::jiff::Timestamp::from_second(unix as i64) {
        return t.to_string();
    }
    format!("unix {unix}")
}

/// Asks the TokenRequest API (`POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`) for a
/// token of `namespace/name` valid for `lifetime`, bound to nothing else, as the agent (`own`).
#[cfg(feature = "kubernetes")]
pub fn request(
    own: &Credentials,
    namespace: &str,
    name: &str,
    lifetime: Duration,
) -> Result<Issued, RequestError> {
    use iotlan_ipam::store::kubernetes::{ApiError, Conn};
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;

    const TIMEOUT: Duration = Duration::from_secs(10);
    let conn = Conn::from_kubeconfig(super::kubeconfig::kubeconfig(own, None), TIMEOUT)
        .map_err(|e| RequestError::Failed(format!("the agent's own kubeconfig: {e}")))?;
    let api: kube::Api<ServiceAccount> = kube::Api::namespaced(conn.client().clone(), namespace);
    let body = TokenRequest {
        spec: TokenRequestSpec {
            // None named: the API server's own audiences, which it accepts for itself.
            audiences: Vec::new(),
            bound_object_ref: None,
            expiration_seconds: Some(lifetime.as_secs() as i64),
        },
        ..TokenRequest::default()
    };
    let params = kube::api::PostParams::default();
    let answer = match conn.run(
        "create serviceaccounts/token",
        api.create_token_request(name, &params, &body),
    ) {
        Ok(a) => a,
        Err(ApiError::Status {
            code,
            reason,
            message,
            ..
        }) => {
            return Err(RequestError::Refused {
                code,
                reason,
                message,
            })
        }
        Err(ApiError::Transport { message, .. } | ApiError::BadAnswer { message, .. }) => {
            return Err(RequestError::Failed(format!("API server: {message}")))
        }
    };
    let status = answer.status.ok_or_else(|| {
        RequestError::Failed("the TokenRequest came back without a status".into())
    })?;
    let expires_unix = u64::try_from(status.expiration_timestamp.0.as_second())
        .map_err(|_| RequestError::Failed("the token's expiry is before 1970".into()))?;
    if status.token.is_empty() {
        return Err(RequestError::Failed(
            "the TokenRequest came back without a token".into(),
        ));
    }
    Ok(Issued {
        token: status.token,
        expires_unix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn own(token: &str) -> Credentials {
        Credentials {
            server: "https://127.0.0.1:1".into(),
            ca_pem: b"ca".to_vec(),
            token: token.into(),
            namespace: "iotlan-system".into(),
        }
    }

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;
    /// `--token-lifetime`'s default: a day, as Calico's node agent asks for.
    const DEFAULT_LIFETIME: Duration = Duration::from_secs(DAY);

    #[test]
    fn renewal_comes_after_a_quarter_to_a_half_of_the_remaining_life() {
        assert_eq!(renewal_delay(DAY, 0.0), DAY / 4);
        assert_eq!(renewal_delay(DAY, 0.5), DAY / 4 + DAY / 8);
        assert!(renewal_delay(DAY, 1.0) < DAY / 2);
        assert_eq!(renewal_delay(8, 0.3), 5, "never a tight loop");
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn a_token_is_kept_until_its_renewal_is_due_or_the_agents_own_token_rotates() {
        let calls = RefCell::new(0u32);
        let grant = |_: &Credentials, ns: &str, sa: &str, life: Duration| {
            *calls.borrow_mut() += 1;
            assert_eq!(
                (ns, sa, life),
                ("iotlan-system", "iotlan", DEFAULT_LIFETIME)
            );
            Ok(Issued {
                token: format!("issued-{}", calls.borrow()),
                expires_unix: NOW + DAY,
            })
        };
        let mut r = Renewer::new(DEFAULT_SERVICE_ACCOUNT, DEFAULT_LIFETIME, None);
        let t = r.plugin_token(&own("pod-1"), "iotlan-system", NOW, &grant);
        assert_eq!(
            t,
            PluginToken {
                token: "issued-1".into(),
                expires_unix: Some(NOW + DAY)
            }
        );
        // Passes before the renewal: the same token, no request.
        let t = r.plugin_token(&own("pod-1"), "iotlan-system", NOW + DAY / 4 - 1, &grant);
        assert_eq!((t.token.as_str(), *calls.borrow()), ("issued-1", 1));
        // kubelet rotated the agent's own token: renewed at once.
        let t = r.plugin_token(&own("pod-2"), "iotlan-system", NOW + 60, &grant);
        assert_eq!((t.token.as_str(), *calls.borrow()), ("issued-2", 2));
        // Half the remaining life later at the latest: renewed.
        let t = r.plugin_token(&own("pod-2"), "iotlan-system", NOW + 60 + DAY / 2, &grant);
        assert_eq!((t.token.as_str(), *calls.borrow()), ("issued-3", 3));
    }

    #[test]
    fn a_refused_request_keeps_a_valid_token_and_falls_back_to_the_pods_own_near_its_expiry() {
        let refuse = |_: &Credentials, _: &str, _: &str, _: Duration| {
            Err(RequestError::Refused {
                code: 403,
                reason: "Forbidden".into(),
                message: "no".into(),
            })
        };
        // Nothing issued yet: the pod's own token, retried on every pass.
        let mut r = Renewer::new(DEFAULT_SERVICE_ACCOUNT, DEFAULT_LIFETIME, None);
        let t = r.plugin_token(&own("pod-1"), "iotlan-system", NOW, &refuse);
        assert_eq!(
            t,
            PluginToken {
                token: "pod-1".into(),
                expires_unix: None
            }
        );
        let t = r.plugin_token(&own("pod-2"), "iotlan-system", NOW + 10, &refuse);
        assert_eq!(t.token, "pod-2", "follows the rotated pod token");

        // A restarted agent whose kubeconfig has an issued token: kept while it is good.
        let existing = Issued {
            token: "issued-0".into(),
            expires_unix: NOW + DAY,
        };
        let mut r = Renewer::new(
            DEFAULT_SERVICE_ACCOUNT,
            DEFAULT_LIFETIME,
            Some(existing.clone()),
        );
        let t = r.plugin_token(&own("pod-1"), "iotlan-system", NOW, &refuse);
        assert_eq!(t.token, "issued-0");
        let near = NOW + DAY - KEEP_MARGIN.as_secs() + 1;
        let t = r.plugin_token(&own("pod-1"), "iotlan-system", near, &refuse);
        assert_eq!(
            t,
            PluginToken {
                token: "pod-1".into(),
                expires_unix: None
            }
        );
    }
}
