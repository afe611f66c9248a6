//! A fake node for the node agent's tests: a host root laid out as kubeadm, k3s or pre-2024.10 k3s
//! hosts, the DaemonSet container's projected ServiceAccount dir (written the way kubelet writes
//! it), the image's binaries, and the real `iotlan install` run against them.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A self-signed CA certificate (never used for TLS here; the kubeconfig must carry a valid one).
pub const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBijCCAS+gAwIBAgIUWeMPDMwBqsEAppgU/RiYU7rrShYwCgYIKoZIzj0EAwIw
GTEXMBUGA1UEAwwOaW90bGFuLXRlc3QtY2EwIBcNMjYxMTIxMjMzMTE0WhgPMjEy
NjEwMjgyMzMxMTRaMBkxFzAVBgNVBAMMDmlvdGxhbi10ZXN0LWNhMFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAEJek12qo9iqaOr7WLNLBBj5r/PwS9r2ryLTsVpE/c
PIW3sVCnBKXS3LMoGdm7bF+ifH0DPe8NnNK4B7giLvLGDaNTMFEwHQYDVR0OBBYE
FJdUIfEd+Ib1hiQo8I6mXsLwI4T5MB8GA1UdIwQYMBaAFJdUIfEd+Ib1hiQo8I6m
XsLwI4T5MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSQAwRgIhAKlpxYG7
apx5LqccTEnfIwxRoPi8hG4arFOrg0E/iGwYAiEA8AG8IXQl9miJXdC4yyM6KYXB
wy9uuTCWyikwm2fLDZQ=
-----END CERTIFICATE-----
";

#[derive(Clone, Copy, Debug)]
pub enum Flavor {
    Kubeadm,
    K3s,
    K3sLegacy,
}

/// A fake node: host root, the DaemonSet container's ServiceAccount dir, the image's binaries.
/// A port on 127.0.0.1 nothing listens on (tcpmux, never served here).
pub const CLOSED_PORT: &str = "1";

pub struct Host {
    dir: tempfile::TempDir,
    generation: std::cell::Cell<u32>,
}

impl Host {
    pub fn new(flavor: Flavor) -> Host {
        let h = Host {
            dir: tempfile::tempdir().unwrap(),
            generation: std::cell::Cell::new(0),
        };
        let root = h.root();
        match flavor {
            Flavor::Kubeadm => {
                mkdir(&root.join("opt/cni/bin"));
                mkdir(&root.join("etc/cni/net.d"));
            }
            Flavor::K3s => {
                mkdir(&root.join("var/lib/rancher/k3s/data/cni"));
                mkdir(&root.join("var/lib/rancher/k3s/agent/etc/cni/net.d"));
                // k3s's own plugins are there already.
                fs::write(root.join("var/lib/rancher/k3s/data/cni/bridge"), "k3s").unwrap();
            }
            Flavor::K3sLegacy => {
                mkdir(&root.join("var/lib/rancher/k3s/data/0a1b2c/bin"));
                // An absolute link in host terms: only right when resolved inside the host root.
                symlink(
                    "/var/lib/rancher/k3s/data/0a1b2c",
                    root.join("var/lib/rancher/k3s/data/current"),
                )
                .unwrap();
                mkdir(&root.join("var/lib/rancher/k3s/agent/etc/cni/net.d"));
            }
        }
        mkdir(&h.src());
        h.set_source(b"#!/bin/sh\necho iotlan v1\n");
        mkdir(&h.sa());
        h.write_serviceaccount("token-1", CA_PEM);
        h
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("host")
    }
    pub fn src(&self) -> PathBuf {
        self.dir.path().join("image")
    }
    pub fn sa(&self) -> PathBuf {
        self.dir.path().join("serviceaccount")
    }
    pub fn health(&self) -> PathBuf {
        self.dir.path().join("run/healthy")
    }

    /// The image carries one executable, `iotlan` (`iotlan-ipam` is the same file under another
    /// name, made on the node). Replaced atomically, so the installer never reads a half-written source.
    pub fn set_source(&self, iotlan: &[u8]) {
        let tmp = self.src().join(".iotlan.tmp");
        fs::write(&tmp, iotlan).unwrap();
        fs::rename(&tmp, self.src().join("iotlan")).unwrap();
    }

    /// Writes token, CA and namespace the way kubelet's atomic writer does: a new timestamped
    /// dir, then the `..data` symlink swapped with a rename; the files are links via `..data`.
    pub fn write_serviceaccount(&self, token: &str, ca: &str) {
        let g = self.generation.get() + 1;
        self.generation.set(g);
        let sa = self.sa();
        let gen_dir = sa.join(format!("..2026_11_21_00_00_0{g}"));
        mkdir(&gen_dir);
        fs::write(gen_dir.join("token"), token).unwrap();
        fs::write(gen_dir.join("ca.crt"), ca).unwrap();
        fs::write(gen_dir.join("namespace"), "iotlan-system").unwrap();
        let tmp = sa.join("..data_tmp");
        let _ = fs::remove_file(&tmp);
        symlink(gen_dir.file_name().unwrap(), &tmp).unwrap();
        fs::rename(&tmp, sa.join("..data")).unwrap();
        for f in ["token", "ca.crt", "namespace"] {
            if fs::symlink_metadata(sa.join(f)).is_err() {
                symlink(format!("..data/{f}"), sa.join(f)).unwrap();
            }
        }
    }

    pub fn command(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(crate::bins::iotlan());
        c.arg("install")
            .arg("--host-root")
            .arg(self.root())
            .arg("--source-dir")
            .arg(self.src())
            .arg("--serviceaccount-dir")
            .arg(self.sa())
            .arg("--health-file")
            .arg(self.health())
            .args(extra)
            // An in-cluster address on this machine where nothing listens: a request the agent
            // makes there is refused at once, and no packet leaves the machine.
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", CLOSED_PORT)
            .env("IOTLAN_LOG", "debug");
        c
    }

    pub fn once(&self, extra: &[&str]) -> Output {
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        self.command(&args).output().unwrap()
    }

    /// Starts the installer as a daemon; it is killed when the guard drops.
    pub fn daemon(&self, extra: &[&str]) -> Daemon {
        let mut args = vec!["--interval", "1"];
        args.extend_from_slice(extra);
        let child = self
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Daemon(Some(child))
    }
}

pub struct Daemon(pub Option<Child>);

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.0.as_ref().map_or(0, |c| c.id() as i32)
    }
    /// Sends SIGTERM and waits (up to 20 s, a hang guard) for the exit; returns its output.
    pub fn terminate(mut self) -> Output {
        let child = self.0.take().unwrap();
        signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
        let pid = child.id() as i32;
        let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !waiter.is_finished() {
            if Instant::now() > deadline {
                signal(pid, nix::sys::signal::Signal::SIGKILL);
                panic!("iotlan install did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        waiter.join().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Spawns an executable this test process has just written. Until every thread's fork has reached
/// exec, a child of a parallel test may still hold the write descriptor, and exec fails with
/// ETXTBSY (the race Go's os/exec documents); retry within a bound.
pub fn spawn_written(cmd: &mut Command) -> Child {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cmd.spawn() {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            r => return r.unwrap(),
        }
    }
}

pub fn mkdir(p: &Path) {
    fs::create_dir_all(p).unwrap();
}

pub fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls `cond` every 50 ms for up to `secs` (a hang guard, not a timing assertion).
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn no_temp_files(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".iotlan-tmp."),
            "temp file left: {}",
            dir.join(name).display()
        );
    }
}

/// What the plugin reads from a kubeconfig the agent wrote (through kube's kubeconfig reader).
pub struct PluginKubeconfig {
    pub server: String,
    pub token: String,
    pub namespace: String,
    /// The CA, decoded.
    pub ca: Vec<u8>,
    /// The TokenRequest token's expiry the agent recorded (its `iotlan` extension).
    pub expires_unix: Option<u64>,
    /// The file, for messages.
    pub text: String,
}

pub fn read_kubeconfig(path: &Path) -> PluginKubeconfig {
    use base64::Engine;
    let text = fs::read_to_string(path).unwrap();
    let kc = kube::config::Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()));
    let cluster = kc.clusters[0].cluster.clone().unwrap();
    // Serialised as the file has it (kube keeps the token as a secret).
    let user = serde_json::to_value(kc.auth_infos[0].auth_info.clone().unwrap()).unwrap();
    let ext = kc
        .extensions
        .iter()
        .flatten()
        .find(|e| e.name == "iotlan")
        .map(|e| e.extension.clone());
    PluginKubeconfig {
        server: cluster.server.unwrap_or_default(),
        token: user["token"].as_str().unwrap_or_default().to_string(),
        namespace: kc.contexts[0]
            .context
            .as_ref()
            .and_then(|c| c.namespace.clone())
            .unwrap_or_default(),
        ca: base64::engine::general_purpose::STANDARD
            .decode(cluster.certificate_authority_data.unwrap_or_default())
            .unwrap(),
        expires_unix: ext.and_then(|e| e["tokenExpiresUnix"].as_u64()),
        text,
    }
}
