//! This build's `iotlan` binary (the agent is `iotlan install`; the plugin is `iotlan-ipam`, a link
//! of it), and the plugin exec'd as a CNI runtime does.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Where this build's binaries are: `IOTLAN_BIN_DIR`, else the profile dir of this test binary
/// (`<target>/<profile>/deps/agent-<hash>`: the same build).
fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("IOTLAN_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("this test binary's path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .expect("the test binary's profile dir")
}

/// The `iotlan` binary of this build; fails loudly when it was not built.
pub fn iotlan() -> PathBuf {
    let p = dir().join("iotlan");
    assert!(
        p.is_file(),
        "{} is missing: the agent's tests run this build's binary; `cargo test --workspace` builds \
         it, or run `cargo build --release -p iotlan` first (or set IOTLAN_BIN_DIR)",
        p.display()
    );
    p
}

/// The `iotlan-ipam` binary of this build (the IPAM plugin a runtime execs).
pub fn iotlan_ipam() -> PathBuf {
    let p = dir().join("iotlan-ipam");
    assert!(p.is_file(), "{} is missing: see bins::iotlan", p.display());
    p
}

/// `cmd` (ADD, DEL, ...) of container `cid`'s `net1` for pod `namespace/name`, whose network
/// namespace is containerd's `/var/run/netns/cni-<cid>`, exec'd as a runtime does (Multus's
/// CNI_ARGS), with `conf` on stdin.
pub fn exec_ipam(cmd: &str, conf: &Value, cid: &str, pod: &str) -> Output {
    let (ns, name) = pod.split_once('/').expect("namespace/name");
    let mut child = Command::new(iotlan_ipam())
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", format!("/var/run/netns/cni-{cid}"))
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=true;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};\
                 K8S_POD_INFRA_CONTAINER_ID={cid}"
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec iotlan-ipam");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write the config");
    child.wait_with_output().expect("iotlan-ipam's output")
}
