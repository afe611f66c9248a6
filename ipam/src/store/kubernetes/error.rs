//! A failed API request, and how it maps onto the pool's [`Error`].

use crate::error::Error;

/// A failed API request, before it becomes an [`Error`].
#[derive(Debug)]
pub enum ApiError {
    Status {
        what: String,
        code: u16,
        reason: String,
        message: String,
    },
    Transport {
        what: String,
        message: String,
    },
    /// A 2xx answer that is not the API object asked for (not an API server, or a proxy page).
    BadAnswer {
        what: String,
        message: String,
    },
}

impl ApiError {
    /// `e`, the failure of the request `what`.
    pub fn of(what: &str, e: kube::Error) -> ApiError {
        match e {
            kube::Error::Api(status) => ApiError::Status {
                what: what.to_string(),
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            e @ kube::Error::SerdeError(_) => ApiError::BadAnswer {
                what: what.to_string(),
                message: crate::error::with_causes(&e),
            },
            e => ApiError::Transport {
                what: what.to_string(),
                message: crate::error::with_causes(&e),
            },
        }
    }

    /// Whether the API server answered with HTTP status `want`.
    pub fn is(&self, want: u16) -> bool {
        matches!(self, ApiError::Status { code, .. } if *code == want)
    }

    pub fn into_error(self) -> Error {
        let reason = match self {
            ApiError::Status {
                what,
                code,
                reason,
                message,
            } => {
                let hint = match code {
                    401 => {
                        " (the API server refused the kubeconfig's token: it has expired, or its \
                         ServiceAccount was deleted. The iotlan agent on this node writes and renews it; \
                         a token outlives the agent by up to 24 h. Is the agent's pod running on this \
                         node? kubectl -n iotlan-system get pods -o wide; its log says why a renewal \
                         failed)"
                    }
                    403 => " (check the iotlan RBAC: leases and events in the store's namespace, get on nodes)",
                    _ => "",
                };
                format!("API server: {what}: {code} {reason}: {message}{hint}")
            }
            ApiError::Transport { what, message } => {
                format!("API server unreachable: {what}: {message}")
            }
            ApiError::BadAnswer { what, message } => {
                format!("API server gave an unexpected answer: {what}: {message}")
            }
        };
        Error::Unavailable { reason }
    }
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Error {
        e.into_error()
    }
}
