//! A TLS front for the API server test double, as a real API server only speaks HTTPS: a throwaway
//! CA and a server certificate for 127.0.0.1 made with the `openssl` command, and rustls (on ring,
//! as the store's client) terminating TLS in front of the double's state.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Handle;

pub struct TlsFront {
    addr: SocketAddr,
    /// The PEM of the CA that signed the server's certificate.
    pub ca_pem: String,
    stop: Arc<AtomicBool>,
}

/// Whether the `openssl` command is there; under CI=true its absence is a failure.
pub fn openssl_available() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        panic!("the openssl command is missing; required under CI=true (Debian: openssl, a dependency of ca-certificates)");
    }
    if !ok {
        eprintln!("skipping: the openssl command is missing");
    }
    ok
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Makes a CA and a certificate for 127.0.0.1 in `dir`; returns (ca.pem, server.pem, server.key) paths.
pub fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=iotlan-test-ca",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

impl TlsFront {
    /// Serves HTTPS on 127.0.0.1 for the double behind `handle`, with fresh certificates made in `dir`.
    pub fn start(handle: Handle, dir: &Path) -> TlsFront {
        make_certs(dir);
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("server.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(tcp) = conn else { continue };
                    let _ = tcp.set_nodelay(true);
                    let (config, handle) = (config.clone(), handle.clone());
                    std::thread::spawn(move || {
                        let Ok(tls) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        handle.serve_connection(rustls::StreamOwned::new(tls, tcp));
                    });
                }
            });
        }
        let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        TlsFront { addr, ca_pem, stop }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Standard base64 (for certificate-authority-data).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                char::from(A[((n >> (18 - 6 * i)) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// Writes a kubeconfig for `url` that trusts `ca_pem` and authenticates with `token`.
pub fn write_tls_kubeconfig(path: &Path, url: &str, ca_pem: &str, namespace: &str, token: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: \"{url}\"\n    \
         certificate-authority-data: \"{}\"\nusers:\n- name: u\n  user:\n    token: \"{token}\"\ncontexts:\n\
         - name: c\n  context:\n    cluster: double\n    user: u\n    namespace: \"{namespace}\"\ncurrent-context: c\n",
        base64(ca_pem.as_bytes())
    );
    std::fs::write(path, text).unwrap();
}
