//! What a test needs (root, tools, kernel features, files): skipped with a reason, or failed under CI=true.

use std::path::Path;

use crate::*;

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
