//! Authentication as the API server's ServiceAccount token authenticator judges bearer tokens, and
//! the TokenRequest API (`POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`) that issues
//! them.
//!
//! What the real server does, and the double with it (Kubernetes 1.31:
//! `pkg/serviceaccount/claims.go`, `pkg/registry/core/serviceaccount/storage/token.go`,
//! `pkg/apis/authentication/validation/validation.go`):
//! - every ServiceAccount token names its ServiceAccount (and its uid): once that ServiceAccount is
//!   deleted, or recreated under the same name, the token is refused (401);
//! - a token bound to a pod (what kubelet projects into a pod's
//!   `/var/run/secrets/kubernetes.io/serviceaccount/token`) is refused once its pod object is gone
//!   or is another object (on a real cluster about 25 s after the pod is deleted: the pod's
//!   graceful termination and the authenticator's cache);
//! - a token issued by a TokenRequest without `boundObjectRef` is bound to the ServiceAccount only,
//!   and is refused after its `status.expirationTimestamp`;
//! - a TokenRequest's `expirationSeconds` defaults to 3600 and may not be less than 600 (10 minutes)
//!   nor more than 2^32: 422 Invalid;
//! - a TokenRequest for a ServiceAccount that does not exist is 404 NotFound.
//!
//! Tokens are opaque strings here (the real ones are signed JWTs; no client of ours reads them).
//! The double's clock for token expiry can be moved forward ([`ApiServer::advance_token_clock`]),
//! so that a 24-hour token can be seen expiring in a test.

use serde_json::{json, Value};

use super::http::Request;
use super::{lock, now_unix, rfc3339, status, ApiServer, Key, State};

/// What a bearer token stands for.
#[derive(Debug, Clone)]
pub(super) struct Credential {
    /// The ServiceAccount (namespace, name) and its uid when the token was issued.
    sa: Key,
    sa_uid: String,
    /// The pod (namespace, name) and its uid the token is bound to, if any.
    pod: Option<(Key, String)>,
    /// Unix time (on the double's token clock) from which it is refused.
    expires: u64,
}

/// The lowest `expirationSeconds` a TokenRequest may ask for.
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// What kubelet asks for a projected token (an hour and 7 s).
pub const PROJECTED_EXPIRATION_SECONDS: u64 = 3607;

impl State {
    /// Now on the token clock: real time plus [`ApiServer::advance_token_clock`]'s offset.
    pub(super) fn token_now(&self) -> u64 {
        now_unix() + self.token_clock_offset
    }

    fn issue(&mut self, cred: Credential) -> String {
        self.token_seq += 1;
        let token = format!(
            "sa-token.{}.{}.{:x}",
            cred.sa.1,
            self.token_seq,
            super::now_nanos() & 0xffff_ffff
        );
        self.credentials.insert(token.clone(), cred);
        token
    }

    /// Why `cred` is refused now, if it is.
    fn refused(&self, cred: &Credential) -> Option<String> {
        let sa = self.service_accounts.get(&cred.sa);
        if sa.is_none_or(|o| o["metadata"]["uid"] != cred.sa_uid.as_str()) {
            return Some(format!(
                "service account {}/{} has been deleted",
                cred.sa.0, cred.sa.1
            ));
        }
        if let Some((pod, uid)) = &cred.pod {
            let live = self.pods.get(pod);
            if live.is_none_or(|p| p["metadata"]["uid"] != uid.as_str()) {
                return Some(format!("pod {}/{} has been deleted", pod.0, pod.1));
            }
        }
        if self.token_now() >= cred.expires {
            return Some("token has expired".into());
        }
        None
    }
}

/// The authenticator: `Ok` when the request may go on. With neither a static token
/// ([`ApiServer::set_token`]) nor any issued credential, nothing is checked.
pub(super) fn authenticate(s: &mut State, req: &Request) -> Result<(), (u16, Value)> {
    if s.token.is_none() && s.credentials.is_empty() {
        return Ok(());
    }
    let presented = req
        .auth
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim);
    let why = match presented {
        None => "no credentials".to_string(),
        Some(t) if s.token.as_deref() == Some(t) => return Ok(()),
        Some(t) => match s.credentials.get(t) {
            None => "unknown token".to_string(),
            Some(cred) => match s.refused(cred) {
                None => return Ok(()),
                Some(why) => why,
            },
        },
    };
    s.unauthorized
        .push((req.method.clone(), req.path.clone(), why));
    Err(status(401, "Unauthorized", "Unauthorized".into(), None))
}

/// `POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`.
pub(super) fn create_token(s: &mut State, ns: &str, name: &str, req: &Request) -> (u16, Value) {
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return status(400, "BadRequest", "invalid JSON body".into(), None);
    };
    if body["kind"] != "TokenRequest" || body["apiVersion"] != "authentication.k8s.io/v1" {
        return status(
            400,
            "BadRequest",
            format!(
                "expected an authentication.k8s.io/v1 TokenRequest, got {} {}",
                body["apiVersion"], body["kind"]
            ),
            None,
        );
    }
    let key = (ns.to_string(), name.to_string());
    let Some(sa) = s.service_accounts.get(&key) else {
        let (code, mut v) = status(
            404,
            "NotFound",
            format!("serviceaccounts \"{name}\" not found"),
            None,
        );
        v["details"] = json!({ "name": name, "kind": "serviceaccounts" });
        return (code, v);
    };
    let sa_uid = sa["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let seconds = body["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
    let invalid = if seconds < MIN_EXPIRATION_SECONDS {
        Some("may not specify a duration less than 10 minutes")
    } else if seconds > 1 << 32 {
        Some("may not specify a duration larger than 2^32 seconds")
    } else {
        None
    };
    if let Some(why) = invalid {
        return status(
            422,
            "Invalid",
            format!(
                "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: \
                 Invalid value: {seconds}: {why}"
            ),
            None,
        );
    }
    // The server's --service-account-max-token-expiration, when set, shortens what is asked.
    let granted = match s.max_token_seconds {
        Some(max) => (seconds as u64).min(max),
        None => seconds as u64,
    };
    let pod = match &body["spec"]["boundObjectRef"] {
        Value::Null => None,
        r if r["kind"] == "Pod" => {
            let pod_name = r["name"].as_str().unwrap_or("");
            let pkey = (ns.to_string(), pod_name.to_string());
            let Some(p) = s.pods.get(&pkey) else {
                return status(
                    404,
                    "NotFound",
                    format!("pods \"{pod_name}\" not found"),
                    None,
                );
            };
            Some((
                pkey,
                p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
            ))
        }
        other => {
            return status(
                400,
                "BadRequest",
                format!("boundObjectRef {other} is not modelled by the test double"),
                None,
            )
        }
    };
    let expires = s.token_now() + granted;
    let token = s.issue(Credential {
        sa: key,
        sa_uid,
        pod,
        expires,
    });
    s.token_requests.push(body.clone());
    let mut answer = body;
    answer["metadata"] = json!({ "name": name, "namespace": ns, "creationTimestamp": null });
    answer["spec"]["expirationSeconds"] = json!(granted);
    answer["status"] = json!({ "token": token, "expirationTimestamp": rfc3339(expires) });
    (201, answer)
}

impl ApiServer {
    /// Creates ServiceAccount `namespace/name` (a new uid each time) and returns its uid.
    pub fn create_service_account(&self, namespace: &str, name: &str) -> String {
        let mut s = lock(&self.state);
        let uid = s.next_uid();
        let rv = s.next_rv();
        let sa = json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": { "name": name, "namespace": namespace, "uid": uid,
                          "resourceVersion": rv, "creationTimestamp": rfc3339(now_unix()) }
        });
        s.service_accounts
            .insert((namespace.to_string(), name.to_string()), sa);
        uid
    }

    /// Deletes ServiceAccount `namespace/name`, as `kubectl delete -k` of a kustomization that
    /// holds it does: every token of it is refused from now on.
    pub fn delete_service_account(&self, namespace: &str, name: &str) {
        let mut s = lock(&self.state);
        s.next_rv();
        s.service_accounts
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// The token kubelet projects into pod `namespace/pod`, which runs as ServiceAccount
    /// `namespace/sa`: bound to that pod object (refused once it is deleted) and valid for
    /// [`PROJECTED_EXPIRATION_SECONDS`]. Both must exist.
    pub fn projected_token(&self, namespace: &str, sa: &str, pod: &str) -> String {
        let mut s = lock(&self.state);
        let sa_key = (namespace.to_string(), sa.to_string());
        let pod_key = (namespace.to_string(), pod.to_string());
        let sa_uid = s.service_accounts[&sa_key]["metadata"]["uid"]
            .as_str()
            .expect("the ServiceAccount exists")
            .to_string();
        let pod_uid = s.pods[&pod_key]["metadata"]["uid"]
            .as_str()
            .expect("the pod exists")
            .to_string();
        let expires = s.token_now() + PROJECTED_EXPIRATION_SECONDS;
        s.issue(Credential {
            sa: sa_key,
            sa_uid,
            pod: Some((pod_key, pod_uid)),
            expires,
        })
    }

    /// Moves the clock the double judges token expiry by `secs` forward.
    pub fn advance_token_clock(&self, secs: u64) {
        lock(&self.state).token_clock_offset += secs;
    }

    /// Caps what a TokenRequest is granted, as `--service-account-max-token-expiration` does.
    pub fn set_max_token_seconds(&self, max: Option<u64>) {
        lock(&self.state).max_token_seconds = max;
    }

    /// The body of every TokenRequest granted so far, in order.
    pub fn token_requests(&self) -> Vec<Value> {
        lock(&self.state).token_requests.clone()
    }

    /// Every (method, path, why) refused with 401 so far.
    pub fn unauthorized(&self) -> Vec<(String, String, String)> {
        lock(&self.state).unauthorized.clone()
    }
}
