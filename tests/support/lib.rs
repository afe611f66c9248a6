//! Shared helpers for the root-only integration tests: a simulated IoT LAN made only of
//! network namespaces, and ways to exec CNI plugins exactly as kubelet/Multus do.
//!
//! Nothing here touches the host netns's interfaces. Every [`Lan`] is its own set of
//! uniquely named namespaces (prefix + pid + counter), so cargo's parallel test threads
//! never collide, and everything is deleted on drop, also when a test panics.
//!
//! Topology built by [`Lan::new`]:
//!
//! ```text
//!   gateway netns            device netns             node netns
//!   eth0 10.77.0.1/24        eth0 10.77.0.2/24        eth0 10.77.0.3/24 (default via .1)
//!        |                        |                        |   <- the plugin's master
//!   +----p-gw--------------------p-dev-------------------p-node----+
//!   |                       br0  (switch netns)                     |
//!   +---------------------------------------------------------------+
//! ```
//!
//! Plugins run inside the node netns (`ip netns exec`, which also remounts /sys), so
//! master auto-detection and /sys lookups see only the node's interfaces.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod capture;

/// The simulated LAN's subnet.
pub const SUBNET: &str = "10.77.0.0/24";
/// Prefix length of [`SUBNET`].
pub const PREFIX_LEN: u8 = 24;
/// The gateway (router) address.
pub const GATEWAY_IP: &str = "10.77.0.1";
/// The IoT device's address.
pub const DEVICE_IP: &str = "10.77.0.2";
/// The first node's address on its `eth0`.
pub const NODE_IP: &str = "10.77.0.3";
/// The node's LAN interface inside the node netns (the plugin's master).
pub const NODE_IF: &str = "eth0";
/// mDNS group and port.
pub const MDNS_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
/// mDNS port.
pub const MDNS_PORT: u16 = 5353;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}-{}-{n}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

fn describe<S: AsRef<OsStr>>(cmd: &str, args: &[S]) -> String {
    let mut s = cmd.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// Runs a command and returns its output without judging the exit status.
/// Panics only when the command cannot be started (with its name in the message).
pub fn try_run<S: AsRef<OsStr>>(cmd: &str, args: &[S]) -> Output {
    match Command::new(cmd).args(args).stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) => panic!("cannot start `{}`: {e}", describe(cmd, args)),
    }
}

/// Runs a command; panics with the command, its status, stdout and stderr when it fails.
pub fn run<S: AsRef<OsStr>>(cmd: &str, args: &[S]) -> Output {
    let out = try_run(cmd, args);
    if !out.status.success() {
        panic!(
            "`{}` failed ({}):\nstdout: {}\nstderr: {}",
            describe(cmd, args),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    out
}

/// [`run`] with a shell-like string split on whitespace (no quoting), for short `ip` commands.
pub fn sh(line: &str) -> Output {
    let mut parts = line.split_whitespace();
    let cmd = parts.next().unwrap_or_else(|| panic!("empty command line"));
    let args: Vec<&str> = parts.collect();
    run(cmd, &args)
}

fn stdout_string(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------------

/// A named network namespace (`ip netns add`), at `/run/netns/<name>`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `<prefix>-<pid>-<n>` with `lo` up.
    pub fn new(prefix: &str) -> Netns {
        let name = unique_name(prefix);
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the path a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`; panics on failure.
    pub fn ip<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let mut all: Vec<&OsStr> = vec![OsStr::new("-n"), OsStr::new(&self.name)];
        all.extend(args.iter().map(|a| a.as_ref()));
        run("ip", &all)
    }

    /// Runs `cmd args` inside the namespace (`ip netns exec`) without judging the status.
    pub fn try_exec<S: AsRef<OsStr>>(&self, cmd: &str, args: &[S]) -> Output {
        let mut all: Vec<&OsStr> = vec![
            OsStr::new("netns"),
            OsStr::new("exec"),
            OsStr::new(&self.name),
            OsStr::new(cmd),
        ];
        all.extend(args.iter().map(|a| a.as_ref()));
        try_run("ip", &all)
    }

    /// Runs `cmd args` inside the namespace; panics on failure.
    pub fn exec<S: AsRef<OsStr>>(&self, cmd: &str, args: &[S]) -> Output {
        let out = self.try_exec(cmd, args);
        if !out.status.success() {
            panic!(
                "`{}` in netns {} failed ({}):\nstdout: {}\nstderr: {}",
                describe(cmd, args),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        out
    }
}

impl Netns {
    /// Names the network namespace of process `pid` (`ip netns attach`), e.g. a container's, so
    /// the readers work on it. Drop only removes the name; the namespace lives while `pid` does.
    pub fn attach(prefix: &str, pid: u32) -> Netns {
        let name = unique_name(prefix);
        run("ip", &["netns", "attach", &name, &pid.to_string()]);
        Netns { name }
    }
}

/// A process whose network namespace is `ns_link` (as `readlink /proc/<pid>/ns/net` prints it,
/// `net:[4026532...]`), e.g. to find a container's netns from what the container printed.
pub fn pid_in_netns(ns_link: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|l| l.to_string_lossy() == ns_link)
        })
}

/// The shell run by [`on_node`]: in a private mount namespace, keep the host's cgroup tree, apply
/// the binds, enter the node's netns, mount a sysfs of that netns on /sys, put the cgroup tree back.
const ON_NODE_SCRIPT: &str = r#"set -e
mount --rbind /sys/fs/cgroup "$IOTLAN_STAGE"
printf '%s\n' "$IOTLAN_BINDS" | while read -r src dst; do [ -z "$src" ] || mount --bind "$src" "$dst"; done
exec nsenter --net="$IOTLAN_NETNS" sh -c 'mount -t sysfs sysfs /sys && mount --move "$IOTLAN_STAGE" /sys/fs/cgroup && unset IOTLAN_STAGE IOTLAN_BINDS IOTLAN_NETNS && exec "$@"' sh "$@"
"#;

/// A command that runs `program` "on the node", as a container runtime runs on a real node:
/// inside `node`'s netns, with a /sys of that netns (so plugins see only the node's interfaces)
/// but the host's cgroup tree (runc needs it), in a private mount namespace where each
/// `(src, dst)` of `binds` is bind-mounted (e.g. a private CNI config dir over `/etc/cni/net.d`).
/// Nothing changes outside that process tree. `scratch` is an empty directory this may use.
/// Append the program's arguments to the returned command.
pub fn on_node(node: &Netns, scratch: &Path, binds: &[(&Path, &Path)], program: &str) -> Command {
    let stage = scratch.join("cgroup-stage");
    std::fs::create_dir_all(&stage)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", stage.display()));
    let binds: Vec<String> = binds
        .iter()
        .map(|(s, d)| format!("{} {}", s.display(), d.display()))
        .collect();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "slave",
        "sh",
        "-c",
        ON_NODE_SCRIPT,
        "sh",
    ])
    .arg(program)
    .env("IOTLAN_STAGE", &stage)
    .env("IOTLAN_NETNS", node.path())
    .env("IOTLAN_BINDS", binds.join("\n"));
    cmd
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veths (and their peers) and macvlans.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `f` on a fresh thread that has `setns()`'d into `ns`, and returns its result.
/// Sockets created there stay in that namespace after the thread ends.
/// A panic inside `f` is propagated.
pub fn in_netns<T, F>(ns: &Netns, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = ns.path();
    let handle = std::thread::spawn(move || {
        let file = File::open(&path)
            .unwrap_or_else(|e| panic!("cannot open netns {}: {e}", path.display()));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns({}) failed: {e}", path.display()));
        f()
    });
    match handle.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated LAN
// ---------------------------------------------------------------------------------------------

/// A node on the LAN: its namespace, its `eth0` address and MAC, and its bridge port name.
#[derive(Debug)]
pub struct Node {
    /// The node's netns; the plugin runs here.
    pub ns: Netns,
    /// The address of `eth0` (without prefix).
    pub ip: String,
    /// The MAC of `eth0`.
    pub mac: String,
    /// The node's port on the switch's bridge (in the switch netns).
    pub port: String,
}

/// An isolated IoT LAN: switch (bridge), gateway, IoT device and node namespaces.
/// Field order is drop order: nodes, device and gateway go before the switch.
#[derive(Debug)]
pub struct Lan {
    /// The first node: its `eth0` (10.77.0.3/24, default via .1) is the plugin's master.
    pub node: Node,
    /// More nodes added with [`Lan::add_node`].
    pub extra_nodes: Vec<Node>,
    /// An IoT device on the LAN at 10.77.0.2/24, with a multicast route on `eth0`.
    pub device: Netns,
    /// The router at 10.77.0.1/24.
    pub gateway: Netns,
    /// Holds bridge `br0` and the ports `p-gw`, `p-dev`, `p-node`, `p-nodeN`.
    pub switch: Netns,
    tag: String,
    restricted: bool,
}

impl Lan {
    /// Builds the LAN. `tag` (short, e.g. the test name) only makes namespace names readable.
    pub fn new(tag: &str) -> Lan {
        let tag: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(20)
            .collect();
        let switch = Netns::new(&format!("iot-{tag}-sw"));
        switch.ip(&["link", "add", "br0", "type", "bridge", "stp_state", "0"]);
        switch.ip(&[
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ]);
        switch.ip(&["link", "set", "br0", "up"]);

        let gateway = Netns::new(&format!("iot-{tag}-gw"));
        plug(
            &switch,
            "p-gw",
            &gateway,
            &format!("{GATEWAY_IP}/{PREFIX_LEN}"),
        );

        let device = Netns::new(&format!("iot-{tag}-dev"));
        plug(
            &switch,
            "p-dev",
            &device,
            &format!("{DEVICE_IP}/{PREFIX_LEN}"),
        );
        device.ip(&["route", "add", "224.0.0.0/4", "dev", "eth0"]);

        let node = new_node(&switch, &format!("iot-{tag}-node"), "p-node", NODE_IP);
        Lan {
            node,
            extra_nodes: Vec::new(),
            device,
            gateway,
            switch,
            tag,
            restricted: false,
        }
    }

    /// Adds another node on the same L2 (10.77.0.4, .5, ...); returns it.
    pub fn add_node(&mut self, name: &str) -> &Node {
        let k = self.extra_nodes.len();
        let ip = format!("10.77.0.{}", 4 + k);
        let port = format!("p-node{}", k + 2);
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(12)
            .collect();
        let node = new_node(
            &self.switch,
            &format!("iot-{}-{name}", self.tag),
            &port,
            &ip,
        );
        if self.restricted {
            restrict_port(&self.switch, &node);
        }
        self.extra_nodes.push(node);
        &self.extra_nodes[k]
    }

    /// A pod namespace (just a netns with `lo` up, as a runtime would create).
    pub fn pod(&self, name: &str) -> Netns {
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(16)
            .collect();
        Netns::new(&format!("iot-{}-pod-{name}", self.tag))
    }

    /// The MAC-limited uplink of a consumer router or a port-security switch: an nft
    /// bridge-family rule in the switch netns admits, from each node's port, only frames
    /// whose source MAC is that node's own `eth0`. Needs `nft` (apt `nftables`).
    pub fn restrict_to_node_macs(&mut self) {
        self.switch
            .exec("nft", &["add", "table", "bridge", "iotlan_uplink"]);
        let chain = "add chain bridge iotlan_uplink macs \
                     { type filter hook prerouting priority -200 ; policy accept ; }";
        let words: Vec<&str> = chain.split_whitespace().collect();
        self.switch.exec("nft", &words);
        restrict_port(&self.switch, &self.node);
        for n in &self.extra_nodes {
            restrict_port(&self.switch, n);
        }
        self.restricted = true;
    }

    /// Frames the switch dropped because of [`Lan::restrict_to_node_macs`] (nft counters).
    pub fn restricted_drops(&self) -> u64 {
        let out = self
            .switch
            .try_exec("nft", &["-j", "list", "table", "bridge", "iotlan_uplink"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["rule"]["expr"].as_array())
            .flatten()
            .filter_map(|x| x["counter"]["packets"].as_u64())
            .sum()
    }
}

fn restrict_port(switch: &Netns, node: &Node) {
    let rule = format!(
        "add rule bridge iotlan_uplink macs iifname {} ether saddr != {} counter drop",
        node.port, node.mac
    );
    let words: Vec<&str> = rule.split_whitespace().collect();
    switch.exec("nft", &words);
}

/// A veth from the switch's bridge (`port`) into `ns` as `eth0` with `addr`.
fn plug(switch: &Netns, port: &str, ns: &Netns, addr: &str) {
    switch.ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ]);
    switch.ip(&["link", "set", port, "master", "br0", "up"]);
    ns.ip(&["addr", "add", addr, "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
}

fn new_node(switch: &Netns, prefix: &str, port: &str, ip: &str) -> Node {
    let ns = Netns::new(prefix);
    plug(switch, port, &ns, &format!("{ip}/{PREFIX_LEN}"));
    ns.ip(&["route", "add", "default", "via", GATEWAY_IP, "dev", "eth0"]);
    let mac = link(&ns, "eth0")
        .unwrap_or_else(|| panic!("eth0 missing in {}", ns.name()))
        .mac;
    Node {
        ns,
        ip: ip.to_string(),
        mac,
        port: port.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// CNI exec
// ---------------------------------------------------------------------------------------------

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

/// A link as seen inside a netns.
#[derive(Debug, Clone)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// `linkinfo.info_kind` (`macvlan`, `ipvlan`, `veth`, ...), `None` for plain devices.
    pub kind: Option<String>,
    /// Lowercase MAC.
    pub mac: String,
    /// MTU.
    pub mtu: u64,
    /// `operstate` (`UP`, `DOWN`, `UNKNOWN`, `LOWERLAYERDOWN`).
    pub state: String,
    /// Administratively up (`UP` in flags).
    pub up: bool,
    /// The `ip -d -j link` object, for anything else (e.g. `linkinfo.info_data.mode`).
    pub raw: Value,
}

fn json_lines(out: &Output) -> Vec<Value> {
    match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(Value::Array(v)) => v,
        _ => Vec::new(),
    }
}

/// All links in `ns` (`ip -d -j link show`).
pub fn links(ns: &Netns) -> Vec<Link> {
    json_lines(&ns.ip(&["-d", "-j", "link", "show"]))
        .into_iter()
        .map(|v| Link {
            name: v["ifname"].as_str().unwrap_or_default().to_string(),
            kind: v["linkinfo"]["info_kind"].as_str().map(str::to_string),
            mac: v["address"].as_str().unwrap_or_default().to_lowercase(),
            mtu: v["mtu"].as_u64().unwrap_or(0),
            state: v["operstate"].as_str().unwrap_or_default().to_string(),
            up: v["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP")),
            raw: v,
        })
        .collect()
}

/// The link `ifname` in `ns`, if present.
pub fn link(ns: &Netns, ifname: &str) -> Option<Link> {
    links(ns).into_iter().find(|l| l.name == ifname)
}

/// Addresses on `ifname` in `ns` as `addr/prefix` (IPv4 and IPv6, including link-local).
pub fn addrs(ns: &Netns, ifname: &str) -> Vec<String> {
    let out = ns.try_exec("ip", &["-j", "addr", "show", "dev", ifname]);
    json_lines(&out)
        .iter()
        .filter_map(|v| v["addr_info"].as_array())
        .flatten()
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect()
}

/// IPv4 addresses (without prefix) on `ifname` in `ns`.
pub fn ipv4_addrs(ns: &Netns, ifname: &str) -> Vec<Ipv4Addr> {
    addrs(ns, ifname)
        .iter()
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect()
}

/// A route (`ip -j route show`): `dst` is `default` or a prefix.
#[derive(Debug, Clone)]
pub struct Route {
    /// Destination (`default`, `10.77.0.0/24`, `fe80::/64`).
    pub dst: String,
    /// Gateway, if any.
    pub gateway: Option<String>,
    /// Output device.
    pub dev: Option<String>,
    /// The raw object.
    pub raw: Value,
}

/// Routes in `ns`'s main table: IPv4, or IPv6 with `v6`.
pub fn routes(ns: &Netns, v6: bool) -> Vec<Route> {
    let fam = if v6 { "-6" } else { "-4" };
    json_lines(&ns.ip(&[fam, "-j", "route", "show"]))
        .into_iter()
        .map(|v| Route {
            dst: v["dst"].as_str().unwrap_or_default().to_string(),
            gateway: v["gateway"].as_str().map(str::to_string),
            dev: v["dev"].as_str().map(str::to_string),
            raw: v,
        })
        .collect()
}

/// Neighbour entries in `ns` (`ip -j neigh show`), raw objects (`dst`, `dev`, `lladdr`, `state`).
pub fn neighbours(ns: &Netns) -> Vec<Value> {
    json_lines(&ns.ip(&["-j", "neigh", "show"]))
}

// ---------------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------------

/// Pings `ip` from `ns`: one echo with a 1 s wait, up to 3 attempts. True on a reply.
pub fn ping(ns: &Netns, ip: &str) -> bool {
    (0..3).any(|_| {
        ns.try_exec("ping", &["-n", "-q", "-c", "1", "-W", "1", ip])
            .status
            .success()
    })
}

/// Sends one UDP datagram from `ns` to 224.0.0.251:5353 (TTL 255, as mDNS does).
pub fn mdns_send(ns: &Netns, payload: &[u8]) {
    let payload = payload.to_vec();
    in_netns(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|e| panic!("bind: {e}"));
        sock.set_multicast_ttl_v4(255)
            .unwrap_or_else(|e| panic!("multicast ttl: {e}"));
        sock.send_to(&payload, SocketAddrV4::new(MDNS_GROUP, MDNS_PORT))
            .unwrap_or_else(|e| panic!("send to 224.0.0.251:5353: {e}"));
    });
}

/// A socket in a pod listening for mDNS on one interface (see [`mdns_listen`]).
#[derive(Debug)]
pub struct MdnsListener {
    sock: UdpSocket,
}

impl MdnsListener {
    /// Waits up to `timeout` for one datagram; returns its payload and source.
    pub fn recv(&self, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 9000];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).ok()?;
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
    }
}

/// Opens a UDP socket in `ns` bound to 0.0.0.0:5353 (SO_REUSEADDR) that joined 224.0.0.251
/// on `ifname`'s IPv4 address. Open it before the sender sends.
pub fn mdns_listen(ns: &Netns, ifname: &str) -> MdnsListener {
    let local = *ipv4_addrs(ns, ifname)
        .first()
        .unwrap_or_else(|| panic!("{ifname} in {} has no IPv4 address", ns.name()));
    let sock = in_netns(ns, move || {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .unwrap_or_else(|e| panic!("socket: {e}"));
        s.set_reuse_address(true)
            .unwrap_or_else(|e| panic!("SO_REUSEADDR: {e}"));
        s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, MDNS_PORT).into())
            .unwrap_or_else(|e| panic!("bind 0.0.0.0:5353: {e}"));
        s.join_multicast_v4(&MDNS_GROUP, &local)
            .unwrap_or_else(|e| panic!("IP_ADD_MEMBERSHIP 224.0.0.251 on {local}: {e}"));
        UdpSocket::from(s)
    });
    MdnsListener { sock }
}

/// Listens in `ns` on `ifname` for up to `timeout`; see [`mdns_listen`] to avoid racing the sender.
pub fn mdns_receive(ns: &Netns, ifname: &str, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    mdns_listen(ns, ifname).recv(timeout)
}

/// Sends `payload` from `sender` to the mDNS group and returns what `receiver` heard on
/// `ifname` (only a datagram carrying exactly `payload`), resending up to 3 times, 1 s apart.
pub fn mdns_roundtrip(
    sender: &Netns,
    receiver: &Netns,
    ifname: &str,
    payload: &[u8],
) -> Option<SocketAddr> {
    let listener = mdns_listen(receiver, ifname);
    for _ in 0..3 {
        mdns_send(sender, payload);
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match listener.recv(left) {
                Some((data, from)) if data == payload => return Some(from),
                Some(_) => continue,
                None => break,
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Requirements
// ---------------------------------------------------------------------------------------------

/// Something a test needs.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// Running as root.
    Root,
    /// A command on PATH, and the Debian package that ships it.
    Cmd(&'static str, &'static str),
    /// A file (e.g. a plugin binary) and what installs or builds it.
    File(&'static str, &'static str),
    /// A kernel link kind that can be created on a veth parent (`macvlan`, `ipvlan`) or alone
    /// (`bridge`, `veth`, `dummy`).
    LinkKind(&'static str),
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(cmd).is_file()
        || Path::new("/sbin").join(cmd).is_file()
}

fn link_kind_works(kind: &str) -> bool {
    let name = unique_name("iot-probe");
    if !try_run("ip", &["netns", "add", &name]).status.success() {
        return false;
    }
    let ok = match kind {
        "veth" => try_run(
            "ip",
            &[
                "-n", &name, "link", "add", "p0", "type", "veth", "peer", "name", "p1",
            ],
        )
        .status
        .success(),
        "macvlan" | "ipvlan" | "macvtap" | "ipvtap" => {
            try_run(
                "ip",
                &[
                    "-n", &name, "link", "add", "p0", "type", "veth", "peer", "name", "p1",
                ],
            )
            .status
            .success()
                && try_run(
                    "ip",
                    &["-n", &name, "link", "add", "c0", "link", "p0", "type", kind],
                )
                .status
                .success()
        }
        _ => try_run("ip", &["-n", &name, "link", "add", "x0", "type", kind])
            .status
            .success(),
    };
    let _ = try_run("ip", &["netns", "del", &name]);
    ok
}

/// Whether the test should run. When `need` is missing: under `CI=true` panics with what to
/// install; otherwise prints `SKIP: <reason>` to stderr and returns false.
pub fn require(need: Need) -> bool {
    let missing = match need {
        Need::Root => (!is_root()).then(|| "must run as root (sudo -E cargo test ...)".to_string()),
        Need::Cmd(cmd, pkg) => {
            (!on_path(cmd)).then(|| format!("command `{cmd}` missing: apt-get install {pkg}"))
        }
        Need::File(path, how) => {
            (!Path::new(path).exists()).then(|| format!("{path} missing: {how}"))
        }
        Need::LinkKind(kind) => {
            if !is_root() {
                Some(format!("cannot probe link kind {kind} without root"))
            } else {
                (!link_kind_works(kind))
                    .then(|| format!("kernel cannot create {kind} links (module missing)"))
            }
        }
    };
    match missing {
        None => true,
        Some(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("requirement missing under CI=true: {why}");
            }
            eprintln!("SKIP: {why}");
            false
        }
    }
}

/// [`require`] for each need, stopping at the first missing one.
pub fn require_all(needs: &[Need]) -> bool {
    needs.iter().all(|n| require(*n))
}

/// The needs every simulated-LAN test has: root, `ip`, `ping`, veth, bridge and macvlan.
pub const LAN_NEEDS: &[Need] = &[
    Need::Root,
    Need::Cmd("ip", "iproute2"),
    Need::Cmd("ping", "iputils-ping"),
    Need::LinkKind("veth"),
    Need::LinkKind("bridge"),
    Need::LinkKind("macvlan"),
];

/// A CNI config for Debian's reference macvlan + static IPAM on the node's `eth0`.
pub fn reference_macvlan_conf(name: &str, address: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": "macvlan",
        "master": NODE_IF,
        "mode": "bridge",
        "ipam": {
            "type": "static",
            "addresses": [{ "address": address }]
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> bool {
        require_all(LAN_NEEDS)
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("x"), unique_name("x"));
        let a = k8s_args("home", "ha-0", "abc");
        assert!(a.starts_with("IgnoreUnknown=true;K8S_POD_NAMESPACE=home;K8S_POD_NAME=ha-0;"));
        assert!(a.contains("K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID="));
    }

    #[test]
    fn lan_forms_and_device_pings_gateway() {
        if !ready() {
            return;
        }
        let lan = Lan::new("self-ping");
        let eth0 = link(&lan.node.ns, NODE_IF).expect("node eth0");
        assert_eq!(eth0.kind.as_deref(), Some("veth"));
        assert_eq!(eth0.mac, lan.node.mac);
        assert!(addrs(&lan.node.ns, NODE_IF).contains(&format!("{NODE_IP}/24")));
        let r = routes(&lan.node.ns, false);
        assert!(r
            .iter()
            .any(|r| r.dst == "default" && r.gateway.as_deref() == Some(GATEWAY_IP)));
        assert!(ping(&lan.device, GATEWAY_IP), "device cannot ping gateway");
        assert!(ping(&lan.node.ns, DEVICE_IP), "node cannot ping device");
        assert!(neighbours(&lan.device)
            .iter()
            .any(|n| n["dst"] == GATEWAY_IP));
        // The node netns sees only its own interfaces, not the host's.
        let names: Vec<String> = links(&lan.node.ns).into_iter().map(|l| l.name).collect();
        assert_eq!(names, vec!["lo".to_string(), "eth0".to_string()]);
        let path = lan.node.ns.path();
        drop(lan);
        assert!(!path.exists(), "netns not removed on drop");
    }

    #[test]
    fn second_node_shares_the_l2() {
        if !ready() {
            return;
        }
        let mut lan = Lan::new("self-2node");
        let ip = lan.add_node("b").ip.clone();
        assert_eq!(ip, "10.77.0.4");
        assert!(ping(&lan.node.ns, &ip));
        assert!(ping(&lan.extra_nodes[0].ns, DEVICE_IP));
    }

    #[test]
    fn reference_macvlan_pod_hears_device_mdns() {
        if !ready()
            || !require(Need::File(
                "/usr/lib/cni/macvlan",
                "apt-get install containernetworking-plugins",
            ))
        {
            return;
        }
        let lan = Lan::new("self-mdns");
        let pod = lan.pod("a");
        let env = Env::new(&lan.node.ns, &pod, "selftest-mdns").k8s("default", "a");
        let conf = reference_macvlan_conf("selftest", "10.77.0.50/24");
        let bin = reference_plugin_dir().join("macvlan");
        let res = cni(&bin, "ADD", &env, &conf).expect_ok();
        assert_eq!(res["ips"][0]["address"], "10.77.0.50/24");
        let net1 = link(&pod, "net1").expect("net1 in pod");
        assert_eq!(net1.kind.as_deref(), Some("macvlan"));
        assert!(ping(&pod, GATEWAY_IP), "pod cannot ping gateway");
        let from = mdns_roundtrip(&lan.device, &pod, "net1", b"iotlan-selftest")
            .expect("mDNS from device never reached the pod");
        assert_eq!(from.ip().to_string(), DEVICE_IP);
        // A pod namespace on no LAN interface hears nothing.
        cni(&bin, "DEL", &env, &conf).expect_ok();
        assert!(link(&pod, "net1").is_none(), "net1 left after DEL");
    }

    #[test]
    fn restricted_uplink_drops_foreign_macs() {
        if !ready()
            || !require(Need::Cmd("nft", "nftables"))
            || !require(Need::File(
                "/usr/lib/cni/macvlan",
                "apt-get install containernetworking-plugins",
            ))
        {
            return;
        }
        let mut lan = Lan::new("self-restrict");
        lan.restrict_to_node_macs();
        assert!(ping(&lan.node.ns, GATEWAY_IP), "node's own MAC must pass");
        let pod = lan.pod("r");
        let env = Env::new(&lan.node.ns, &pod, "selftest-restrict");
        let conf = reference_macvlan_conf("selftest", "10.77.0.51/24");
        let bin = reference_plugin_dir().join("macvlan");
        cni(&bin, "ADD", &env, &conf).expect_ok();
        assert!(
            !ping(&pod, GATEWAY_IP),
            "a macvlan MAC passed the MAC-limited uplink"
        );
        assert!(lan.restricted_drops() > 0, "no drop counted");
        cni(&bin, "DEL", &env, &conf).expect_ok();
    }

    #[test]
    fn in_netns_runs_inside_that_namespace() {
        if !require(Need::Root) {
            return;
        }
        let ns = Netns::new("iot-self-innetns");
        ns.ip(&["addr", "add", "10.78.0.1/32", "dev", "lo"]);
        // The address exists only in that namespace: binding works there and not here.
        assert!(in_netns(&ns, || UdpSocket::bind("10.78.0.1:0").is_ok()));
        assert!(UdpSocket::bind("10.78.0.1:0").is_err());
        let l = links(&ns);
        assert_eq!(l.len(), 1);
        assert!(l[0].up);
    }
}
