//! Network namespaces: made and deleted, entered by a thread or a command "on the node".

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::*;

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
