//! Node-local records survive a power cut: the kubernetes store's record of each attachment on the
//! node (`<stateDir>/.kubernetes-attachments/`, which the agent re-asserts lost Leases from) is
//! written to a temp file that is fsynced, renamed over the record, and the directory fsynced. A
//! power cut cannot be made here, so the real `iotlan-ipam` ADD is traced (strace) and the order of
//! those system calls is what is checked: a rename of unsynced data is what leaves an empty record
//! behind after a power cut on ext4 or f2fs.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use iotlan_tests::*;
use serde_json::json;

use iotlan_apiserver_double as apiserver;

/// The strace lines of `pid`-tagged fsync and rename calls, with paths (`-y`).
fn traced_add(state: &Path, kubeconfig: &Path, trace: &Path) -> String {
    let conf = json!({
        "cniVersion": "1.1.0", "name": "iot", "type": "iotlan-ipam",
        "ipam": { "type": "iotlan-ipam", "subnet": "192.168.20.0/24",
                  "pool": ["192.168.20.210-192.168.20.239"],
                  "store": { "kind": "kubernetes", "namespace": "iotlan-system",
                             "kubeconfig": kubeconfig, "stateDir": state } }
    });
    let mut child = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2",
            "-o",
        ])
        .arg(trace)
        .arg(plugin_bin_dir().join("iotlan-ipam"))
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c1")
        .env(
            "CNI_NETNS",
            "/var/run/netns/cni-1b2c3d4e-5f60-7a8b-9c0d-0e1f2a3b4c5d",
        )
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", "K8S_POD_NAMESPACE=home;K8S_POD_NAME=esphome-0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("config");
    let out = child.wait_with_output().expect("ADD");
    assert!(
        out.status.success(),
        "ADD: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(trace).expect("the trace")
}

#[test]
fn the_attachment_record_is_fsynced_before_its_rename_and_its_directory_after() {
    if !require(Need::Cmd("strace", "strace")) {
        return;
    }
    let server = apiserver::ApiServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = server.kubeconfig(dir.path(), "iotlan-system", "t0ken");
    let state = dir.path().join("state");
    let trace = traced_add(&state, &kubeconfig, &dir.path().join("trace"));

    let records = state.join(".kubernetes-attachments");
    let written: Vec<_> = std::fs::read_dir(&records)
        .expect("the records dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    let record = written[0].display().to_string();
    let dir_path = records.display().to_string();
    let lines: Vec<&str> = trace.lines().collect();
    // The rename that put the record in place, and the temp file it came from.
    let (at, from) = lines
        .iter()
        .enumerate()
        .find_map(|(i, l)| {
            let call = l.split_once(' ').map_or(*l, |(_, c)| c.trim_start());
            (call.starts_with("rename") && l.contains(&format!("\"{record}\"")))
                .then(|| (i, l.split('"').nth(1).unwrap_or("").to_string()))
        })
        .unwrap_or_else(|| panic!("no rename onto {record}:\n{trace}"));
    assert_ne!(from, record, "{}", lines[at]);
    let fsync_of = |path: &str, l: &&str| {
        (l.contains("fsync(") || l.contains("fdatasync(")) && l.contains(&format!("<{path}>"))
    };
    assert!(
        lines[..at].iter().any(|l| fsync_of(&from, l)),
        "the temp file {from} was not fsynced before its rename:\n{trace}"
    );
    assert!(
        lines[at..].iter().any(|l| fsync_of(&dir_path, l)),
        "the directory {dir_path} was not fsynced after the rename:\n{trace}"
    );
}
