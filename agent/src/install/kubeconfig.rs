//! The kubeconfig the plugin uses on the host to reach the API server (the `kubernetes`
//! store): the API server, the CA of the DaemonSet's ServiceAccount, and the token the agent got
//! for the plugin ([`super::token`]: a TokenRequest token of the ServiceAccount, or, when that is
//! refused, the agent pod's own).
//!
//! The token and the CA are embedded, so the file is self-contained and is replaced as one
//! atomic unit whenever the token changes. A TokenRequest token's expiry is recorded in a comment
//! (`# expires-unix: N`), so that a restarted agent knows what the plugin holds.

use std::io;
use std::path::{Path, PathBuf};

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

/// The marker of a TokenRequest token's expiry in the rendered kubeconfig.
const EXPIRES: &str = "# expires-unix: ";

/// Renders the kubeconfig (YAML; each scalar is a JSON string, which YAML reads verbatim).
/// `expires_unix`: when the token expires, for a TokenRequest token; `None` for the agent pod's
/// own token.
pub fn render(c: &Credentials, expires_unix: Option<u64>) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let about = match expires_unix {
        Some(t) => format!(
            "# The token is the ServiceAccount's (TokenRequest), renewed by the agent; without the agent it\n\
             # works until it expires.\n{EXPIRES}{t}\n"
        ),
        None => "# The token is the agent pod's own: the API server refuses it soon after that pod is deleted.\n"
            .to_string(),
    };
    format!(
        "# Written by `iotlan install` (the iotlan node agent) for the plugin on this host.\n\
         {about}\
         apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: iotlan\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n\
         - name: iotlan\n  user:\n    token: {token}\n\
         contexts:\n\
         - name: iotlan\n  context:\n    cluster: iotlan\n    user: iotlan\n    namespace: {ns}\n\
         current-context: iotlan\n",
        server = q(&c.server),
        ca = q(&base64(&c.ca_pem)),
        token = q(&c.token),
        ns = q(&c.namespace),
    )
}

/// The token of a kubeconfig [`render`] wrote for a TokenRequest token, and its expiry.
pub fn issued_token(text: &str) -> Option<(String, u64)> {
    let expires = text
        .lines()
        .find_map(|l| l.strip_prefix(EXPIRES))
        .and_then(|n| n.trim().parse().ok())?;
    let token = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))?;
    let token: String = serde_json::from_str(token).ok()?;
    (!token.is_empty()).then_some((token, expires))
}

/// Standard base64 with padding (RFC 4648 §4), as kubeconfig's `*-data` fields expect.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn rendered_values_are_quoted() {
        let c = Credentials {
            server: "https://[fd00::1]:443".into(),
            ca_pem: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
            token: "a.b-c_d".into(),
            namespace: "iotlan-system".into(),
        };
        let y = render(&c, None);
        assert!(y.contains("server: \"https://[fd00::1]:443\"\n"), "{y}");
        assert!(y.contains("token: \"a.b-c_d\"\n"), "{y}");
        assert!(y.contains("namespace: \"iotlan-system\"\n"), "{y}");
        assert_eq!(
            issued_token(&y),
            None,
            "the pod's own token has no recorded expiry"
        );
        let y = render(&c, Some(1_796_605_323));
        assert_eq!(issued_token(&y), Some(("a.b-c_d".into(), 1_796_605_323)));
    }
}
