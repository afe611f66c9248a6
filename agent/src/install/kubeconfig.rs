//! The kubeconfig the plugin uses on the host to reach the API server (the `kubernetes`
//! store): the API server, the CA of the DaemonSet's ServiceAccount, and the token the agent got
//! for the plugin ([`super::token`]: a TokenRequest token of the ServiceAccount, or, when that is
//! refused, the agent pod's own).
//!
//! The file is a [`Kubeconfig`] serialised as JSON (YAML reads it; no YAML writer is in the tree).
//! The token and the CA are embedded, so the file is self-contained and is replaced as one atomic
//! unit whenever the token changes. A TokenRequest token's expiry is recorded in the kubeconfig's
//! `iotlan` extension (`tokenExpiresUnix`), so that a restarted agent knows what the plugin holds.

use std::io;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
    NamedExtension,
};
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    #[error(
        "no API server address: KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set; \
         pass --api-server https://HOST:PORT"
    )]
    NoServer,
    #[error("cannot write the kubeconfig: {0}")]
    Render(String),
}

/// Everything the kubeconfig is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub server: String,
    pub ca_pem: Vec<u8>,
    pub token: String,
    pub namespace: String,
}

/// The API server address from the in-cluster environment, IPv6 literals bracketed.
pub fn server_from_env() -> Result<String, KubeconfigError> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| KubeconfigError::NoServer)?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").map_err(|_| KubeconfigError::NoServer)?;
    if host.is_empty() || port.is_empty() {
        return Err(KubeconfigError::NoServer);
    }
    Ok(if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    })
}

fn read(path: &Path) -> Result<Vec<u8>, KubeconfigError> {
    let data = std::fs::read(path).map_err(|source| KubeconfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if data.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(KubeconfigError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(data)
}

/// The namespace of the ServiceAccount whose token is in `sa_dir`.
pub fn serviceaccount_namespace(sa_dir: &Path) -> Result<String, KubeconfigError> {
    Ok(String::from_utf8_lossy(&read(&sa_dir.join("namespace"))?)
        .trim()
        .to_owned())
}

/// Reads the token and CA from `sa_dir`. `namespace` overrides the ServiceAccount's own.
pub fn load(
    sa_dir: &Path,
    server: &str,
    namespace: Option<&str>,
) -> Result<Credentials, KubeconfigError> {
    let token = String::from_utf8_lossy(&read(&sa_dir.join("token"))?)
        .trim()
        .to_owned();
    let ca_pem = read(&sa_dir.join("ca.crt"))?;
    let namespace = match namespace {
        Some(ns) => ns.to_owned(),
        None => serviceaccount_namespace(sa_dir)?,
    };
    Ok(Credentials {
        server: server.to_owned(),
        ca_pem,
        token,
        namespace,
    })
}

/// The kubeconfig's extension that says who wrote it and what its token is: a TokenRequest token's
/// expiry is recorded there, so that a restarted agent knows what the plugin holds.
const EXTENSION: &str = "iotlan";
/// The extension's key of a TokenRequest token's expiry (Unix seconds).
const EXPIRES_KEY: &str = "tokenExpiresUnix";
/// What this file is, for whoever reads it on the node.
const WRITTEN_BY: &str = "iotlan install (the iotlan node agent), for the plugin on this host";
/// The cluster, user and context of the kubeconfig.
const NAME: &str = "iotlan";

/// The kubeconfig of `c`: one cluster, user and context, with the CA and the token embedded.
/// `expires_unix`: when the token expires, for a TokenRequest token; `None` for the agent pod's
/// own token.
pub fn kubeconfig(c: &Credentials, expires_unix: Option<u64>) -> Kubeconfig {
    let about = match expires_unix {
        Some(t) => serde_json::json!({
            "writtenBy": WRITTEN_BY,
            "token": "the ServiceAccount's (TokenRequest), renewed by the agent; without the agent it works until it expires",
            EXPIRES_KEY: t,
        }),
        None => serde_json::json!({
            "writtenBy": WRITTEN_BY,
            "token": "the agent pod's own: the API server refuses it soon after that pod is deleted",
        }),
    };
    Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: NAME.into(),
            cluster: Some(Cluster {
                server: Some(c.server.clone()),
                certificate_authority_data: Some(STANDARD.encode(&c.ca_pem)),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: NAME.into(),
            auth_info: Some(AuthInfo {
                token: Some(SecretString::from(c.token.clone())),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: NAME.into(),
            context: Some(Context {
                cluster: NAME.into(),
                user: Some(NAME.into()),
                namespace: Some(c.namespace.clone()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(NAME.into()),
        extensions: Some(vec![NamedExtension {
            name: EXTENSION.into(),
            extension: about,
        }]),
        ..Kubeconfig::default()
    }
}

/// The file's contents: [`kubeconfig`] as JSON (which is YAML, so every kubeconfig reader reads it).
pub fn render(c: &Credentials, expires_unix: Option<u64>) -> Result<String, KubeconfigError> {
    let mut text = serde_json::to_string_pretty(&kubeconfig(c, expires_unix))
        .map_err(|e| KubeconfigError::Render(e.to_string()))?;
    text.push('\n');
    Ok(text)
}

/// The token of a kubeconfig [`render`] wrote for a TokenRequest token, and its expiry.
pub fn issued_token(text: &str) -> Option<(String, u64)> {
    let kc = Kubeconfig::from_yaml(text).ok()?;
    let token = kc
        .auth_infos
        .iter()
        .find(|u| u.name == NAME)?
        .auth_info
        .as_ref()?
        .token
        .as_ref()?
        .expose_secret()
        .to_string();
    let expires = kc
        .extensions
        .iter()
        .flatten()
        .find(|e| e.name == EXTENSION)
        .and_then(|e| e.extension.get(EXPIRES_KEY))
        .and_then(serde_json::Value::as_u64)
        .or_else(|| legacy_expiry(text))?;
    (!token.is_empty()).then_some((token, expires))
}

/// The expiry as agents before the kubeconfig was JSON recorded it: a `# expires-unix: N` comment
/// (a node upgraded from one still has such a file until the first pass rewrites it).
fn legacy_expiry(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("# expires-unix: "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        Credentials {
            server: "https://[fd00::1]:443".into(),
            ca_pem: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
            token: "a.b-c_d".into(),
            namespace: "iotlan-system".into(),
        }
    }

    #[test]
    fn the_file_reads_back_as_the_kubeconfig_it_was_made_from() {
        let c = credentials();
        let text = render(&c, None).expect("rendered");
        let kc = Kubeconfig::from_yaml(&text).expect("a kubeconfig");
        let cluster = kc.clusters[0].cluster.as_ref().expect("a cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://[fd00::1]:443"));
        let ca = cluster.certificate_authority_data.as_deref().expect("CA");
        assert_eq!(STANDARD.decode(ca).expect("base64"), c.ca_pem);
        let user = kc.auth_infos[0].auth_info.as_ref().expect("a user");
        assert_eq!(
            user.token.as_ref().map(|t| t.expose_secret()),
            Some("a.b-c_d")
        );
        let context = kc.contexts[0].context.as_ref().expect("a context");
        assert_eq!(context.namespace.as_deref(), Some("iotlan-system"));
        assert_eq!(kc.current_context.as_deref(), Some("iotlan"));
        assert_eq!(
            issued_token(&text),
            None,
            "the pod's own token has no recorded expiry"
        );
        let text = render(&c, Some(1_796_605_323)).expect("rendered");
        assert_eq!(issued_token(&text), Some(("a.b-c_d".into(), 1_796_605_323)));
    }

    #[test]
    fn a_file_an_earlier_agent_wrote_still_names_its_token_and_expiry() {
        let legacy = "# Written by `iotlan install` (the iotlan node agent) for the plugin on this host.\n\
            # expires-unix: 1796605323\n\
            apiVersion: v1\nkind: Config\nclusters:\n- name: iotlan\n  cluster:\n    server: \"https://10.43.0.1:443\"\n\
            users:\n- name: iotlan\n  user:\n    token: \"a.b-c_d\"\n\
            contexts:\n- name: iotlan\n  context:\n    cluster: iotlan\n    user: iotlan\n    namespace: \"iotlan-system\"\n\
            current-context: iotlan\n";
        assert_eq!(
            issued_token(legacy),
            Some(("a.b-c_d".into(), 1_796_605_323))
        );
    }
}
