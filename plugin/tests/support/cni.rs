//! Execs the `iotlan-ipam` binary as a CNI runtime does for a pod (Multus's CNI_ARGS), with the
//! config on stdin.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub const IPAM: &str = env!("CARGO_BIN_EXE_iotlan-ipam");

/// `cmd` (ADD, DEL, ...) of container `cid`'s `net1` for pod `namespace/name`, whose network
/// namespace is containerd's `/var/run/netns/cni-<cid>`.
pub fn exec(cmd: &str, conf: &Value, cid: &str, pod: &str) -> Output {
    let (ns, name) = pod.split_once('/').expect("namespace/name");
    let mut child = Command::new(IPAM)
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
