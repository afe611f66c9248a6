//! CNI invocations as kubelet, Multus and the runtimes make them, and where the plugins are.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use serde_json::Value;

use crate::*;

/// The environment of one CNI invocation, as kubelet/Multus/a runtime would set it.
#[derive(Debug, Clone)]
pub struct Env {
    /// Netns (name) the plugin process runs in (the node); `None` runs it in the caller's netns.
    pub exec_netns: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty, as containerd's DEL sends).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_PATH` entries.
    pub path: Vec<PathBuf>,
    /// `CNI_ARGS`.
    pub args: String,
    /// Extra environment variables (e.g. `RUST_LOG`); `PATH` is always passed.
    pub vars: Vec<(String, String)>,
    /// Variables to leave out entirely (for invalid-env tests), e.g. `CNI_IFNAME`.
    pub unset: Vec<String>,
}

impl Env {
    /// A plugin run in `node`'s netns for a container whose netns is `pod`, ifname `net1`,
    /// `CNI_PATH` = [`plugin_bin_dir`] then [`reference_plugin_dir`], empty `CNI_ARGS`.
    pub fn new(node: &Netns, pod: &Netns, container_id: &str) -> Env {
        Env {
            exec_netns: Some(node.name().to_string()),
            container_id: container_id.to_string(),
            netns: pod.path().to_string_lossy().into_owned(),
            ifname: "net1".to_string(),
            path: vec![plugin_bin_dir(), reference_plugin_dir()],
            args: String::new(),
            vars: Vec::new(),
            unset: Vec::new(),
        }
    }

    /// Sets `CNI_ARGS` exactly as Multus does for pod `namespace/name`:
    /// `IgnoreUnknown=true;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..`.
    pub fn k8s(mut self, namespace: &str, name: &str) -> Env {
        self.args = k8s_args(namespace, name, &self.container_id);
        self
    }

    /// Sets `CNI_IFNAME`.
    pub fn ifname(mut self, ifname: &str) -> Env {
        self.ifname = ifname.to_string();
        self
    }

    /// Sets `CNI_NETNS` (e.g. `""` for containerd's DEL, or a path that no longer exists).
    pub fn netns(mut self, netns: &str) -> Env {
        self.netns = netns.to_string();
        self
    }

    /// Sets `CNI_ARGS` verbatim.
    pub fn args(mut self, args: &str) -> Env {
        self.args = args.to_string();
        self
    }

    /// Sets `CNI_CONTAINERID`.
    pub fn container_id(mut self, id: &str) -> Env {
        self.container_id = id.to_string();
        self
    }

    /// Replaces `CNI_PATH`.
    pub fn cni_path(mut self, dirs: &[PathBuf]) -> Env {
        self.path = dirs.to_vec();
        self
    }

    /// Adds an environment variable.
    pub fn var(mut self, key: &str, value: &str) -> Env {
        self.vars.push((key.to_string(), value.to_string()));
        self
    }

    /// Leaves a `CNI_*` variable out of the environment.
    pub fn unset(mut self, key: &str) -> Env {
        self.unset.push(key.to_string());
        self
    }
}

/// The `CNI_ARGS` string Multus passes for a pod (UID derived from the container ID).
pub fn k8s_args(namespace: &str, name: &str, container_id: &str) -> String {
    let mut uid = String::new();
    for b in container_id.bytes().chain(name.bytes()).take(16) {
        let _ = write!(uid, "{b:02x}");
    }
    while uid.len() < 32 {
        uid.push('0');
    }
    format!(
        "IgnoreUnknown=true;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};\
         K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={}-{}-{}-{}-{}",
        &uid[0..8],
        &uid[8..12],
        &uid[12..16],
        &uid[16..20],
        &uid[20..32]
    )
}

/// What a CNI plugin returned.
#[derive(Debug)]
pub struct CniOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Raw stdout.
    pub stdout: String,
    /// stdout parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// stderr (logs).
    pub stderr: String,
    /// What was run, for messages.
    pub what: String,
}

impl CniOutput {
    /// Exit status 0.
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// Panics (with stdout and stderr) unless the call succeeded; returns the JSON result
    /// (`Value::Null` for verbs with empty output such as DEL).
    pub fn expect_ok(&self) -> Value {
        if !self.ok() {
            panic!(
                "{} failed ({}):\nstdout: {}\nstderr: {}",
                self.what,
                self.status,
                self.stdout.trim(),
                self.stderr.trim()
            );
        }
        self.json.clone().unwrap_or(Value::Null)
    }

    /// Panics unless the call failed with CNI error JSON carrying `code`; returns that JSON.
    pub fn expect_err(&self, code: u64) -> Value {
        let err = match (&self.json, self.ok()) {
            (Some(v), false) => v.clone(),
            _ => panic!(
                "{}: expected CNI error code {code}, got status {} stdout: {} stderr: {}",
                self.what,
                self.status,
                self.stdout.trim(),
                self.stderr.trim()
            ),
        };
        assert_eq!(
            err["code"].as_u64(),
            Some(code),
            "{}: wrong error code in {err}\nstderr: {}",
            self.what,
            self.stderr.trim()
        );
        assert!(
            err["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{}: error without msg: {err}",
            self.what
        );
        err
    }
}

/// Execs CNI plugin `bin` with verb `command` (ADD, DEL, CHECK, VERSION, STATUS, GC) and
/// `stdin`, in `env.exec_netns` (the node) with the `CNI_*` variables of `env`.
/// The environment is otherwise clean except for `PATH`, as with a runtime.
pub fn cni(bin: &Path, command: &str, env: &Env, stdin: &str) -> CniOutput {
    let mut cmd = match &env.exec_netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let path_dirs: Vec<String> = env
        .path
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut vars: Vec<(String, String)> = vec![
        ("CNI_COMMAND".into(), command.into()),
        ("CNI_CONTAINERID".into(), env.container_id.clone()),
        ("CNI_NETNS".into(), env.netns.clone()),
        ("CNI_IFNAME".into(), env.ifname.clone()),
        ("CNI_PATH".into(), path_dirs.join(":")),
        ("CNI_ARGS".into(), env.args.clone()),
    ];
    vars.retain(|(k, _)| !env.unset.contains(k));
    vars.extend(env.vars.iter().cloned());
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .envs(vars)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!(
        "CNI {command} {} (netns {}, container {}, ifname {})",
        bin.display(),
        env.exec_netns.as_deref().unwrap_or("<caller>"),
        env.container_id,
        env.ifname
    );
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    if let Some(mut input) = child.stdin.take() {
        // A plugin may exit without reading stdin (e.g. VERSION); a broken pipe is fine.
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
    let stdout = stdout_string(&out);
    let json = serde_json::from_str(stdout.trim()).ok();
    CniOutput {
        status: out.status,
        stdout,
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        what,
    }
}

/// The repository root.
pub fn workspace_dir() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// Where the iotlan binaries are: env `IOTLAN_BIN_DIR`; else `<target>/release` if it has
/// `iotlan`, else `<target>/debug`, where `<target>` is `CARGO_TARGET_DIR` (when it has the
/// binary) or `<workspace>/target`.
pub fn plugin_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("IOTLAN_BIN_DIR") {
        return PathBuf::from(d);
    }
    let mut targets = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        targets.push(PathBuf::from(t));
    }
    targets.push(workspace_dir().join("target"));
    for t in &targets {
        for profile in ["release", "debug"] {
            let d = t.join(profile);
            if d.join("iotlan").is_file() {
                return d;
            }
        }
    }
    workspace_dir().join("target").join("debug")
}

/// The iotlan plugin binary.
pub fn iotlan_bin() -> PathBuf {
    plugin_bin_dir().join("iotlan")
}

/// Debian's containernetworking-plugins (macvlan, ipvlan, static, host-local).
pub fn reference_plugin_dir() -> PathBuf {
    PathBuf::from("/usr/lib/cni")
}

// ---------------------------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------------------------
