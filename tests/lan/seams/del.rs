//! What DEL is handed: store settings ADD would refuse, a namespace that cannot be opened, a corrupt
//! store record.

use super::*;

/// Item 4: DEL reads `ipam.store` leniently. A value ADD would refuse (a string where a number
/// belongs, a number out of range, a key a newer build knew) must not keep the lease held and the
/// pod in Terminating.
#[test]
fn del_reads_the_store_settings_leniently() {
    if !ready() {
        return;
    }
    let lan = Lan::new("delstore");
    let state = State::new();
    let c = conf(&state, json!({}));
    for (i, store_extra) in [
        json!({ "lockTimeoutMs": "10000" }),
        json!({ "lockTimeoutMs": 999_999_999u64, "gcGraceSeconds": -1 }),
        json!({ "identityRetentionDays": "30", "dir": 42 }),
    ]
    .iter()
    .enumerate()
    {
        let pod = lan.pod(&format!("ha{i}"));
        let cid = format!("ctr-{i}");
        add(&lan, &pod, &cid, &c).expect_ok();
        let mut changed: Value = serde_json::from_str(&c).unwrap();
        for (k, v) in store_extra.as_object().unwrap() {
            if k == "dir" {
                continue;
            }
            changed["ipam"]["store"][k] = v.clone();
        }
        del(&lan, &pod, &cid, &changed.to_string()).expect_ok();
        assert!(
            link(&pod, "net1").is_none(),
            "{store_extra}: the link is gone"
        );
        assert!(
            state.leases().is_empty(),
            "{store_extra}: the lease is free"
        );
    }

    // The kubernetes store: a key this build does not know (a downgrade) is ignored, so DEL goes
    // as far as the API server (unreachable here: 11, retried), never 7.
    let pod = lan.pod("k8s");
    add(&lan, &pod, "ctr-k", &c).expect_ok();
    let kubeconfig = state.dir().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"http://127.0.0.1:9\"}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    )
    .expect("kubeconfig");
    let mut cluster: Value = serde_json::from_str(&c).unwrap();
    cluster["ipam"]["store"] = json!({
        "kind": "kubernetes", "kubeconfig": kubeconfig, "timeoutMs": "500",
        "leaseDurationSeconds": 30, "nodeLossGraceSeconds": 5
    });
    let err = del(&lan, &pod, "ctr-k", &cluster.to_string()).expect_err(11);
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("API server unreachable"),
        "{err}"
    );
    assert!(link(&pod, "net1").is_none());
}

/// Item 4: only a netns that is gone (ENOENT) or provably no network namespace means "no link".
/// Any other failure to open it fails the DEL, so the runtime retries, and the lease stays held
/// while the link may still carry the address.
#[test]
fn del_fails_when_the_netns_cannot_be_opened_and_keeps_the_lease() {
    if !ready() {
        return;
    }
    let lan = Lan::new("delnetns");
    let state = State::new();
    let pod = lan.pod("ha");
    let c = conf(&state, json!({}));
    add(&lan, &pod, "ctr-a", &c).expect_ok();
    // A path that cannot be opened for a reason other than "not there": a symlink loop (ELOOP),
    // standing for EMFILE, EPERM or an LSM's denial.
    let dir = tempfile::tempdir().unwrap();
    let looped = dir.path().join("netns");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let e = Env::new(&lan.node.ns, &pod, "ctr-a")
        .k8s(HA.0, HA.1)
        .netns(looped.to_str().unwrap());
    let err = cni(&iotlan_bin(), "DEL", &e, &c).expect_err(5);
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains(looped.to_str().unwrap()),
        "names the path: {err}"
    );
    assert_eq!(state.leases().len(), 1, "the lease is still held");
    assert_eq!(only_ip(&pod, "net1").to_string(), HA_IP);
    // The retry with the real path succeeds.
    del(&lan, &pod, "ctr-a", &c).expect_ok();
    assert!(state.leases().is_empty());
}

/// Item 4: a corrupt file-store record never fails DEL forever. DEL skips it loudly, frees what it
/// can, and `iotlan leases` names the record.
#[test]
fn a_corrupt_store_record_does_not_stick_del() {
    if !ready() {
        return;
    }
    let lan = Lan::new("corrupt");
    let state = State::new();
    let c = conf(&state, json!({}));
    let net = state.dir().join("iot");

    // The attachment's index is garbage: DEL still finds and frees its address.
    let pod = lan.pod("ha");
    add(&lan, &pod, "ctr-a", &c).expect_ok();
    let index = net.join("attachment:ctr-a:net1");
    std::fs::remove_file(&index).unwrap();
    std::fs::write(&index, b"{garbage").unwrap();
    for _ in 0..2 {
        del(&lan, &pod, "ctr-a", &c).expect_ok();
    }
    assert!(link(&pod, "net1").is_none());
    let out = leases_cli(&state);
    assert!(out.contains("attachment:ctr-a:net1"), "{out}");
    assert!(!out.contains(HA_IP), "the address is free: {out}");

    // The lease record itself is garbage: DEL succeeds, the address stays held (nobody else may
    // get it while the record cannot be read), and `iotlan leases` names the record.
    std::fs::remove_file(&index).unwrap();
    let esp = lan.pod("esp");
    cni(
        &iotlan_bin(),
        "ADD",
        &env_as(&lan, &esp, "ctr-e", ESP, "net1"),
        &c,
    )
    .expect_ok();
    let ip = only_ip(&esp, "net1");
    let rec = net.join(format!("ip:{ip}"));
    std::fs::remove_file(&rec).unwrap();
    std::os::unix::fs::symlink("{not json", &rec).unwrap();
    cni(
        &iotlan_bin(),
        "DEL",
        &env_as(&lan, &esp, "ctr-e", ESP, "net1"),
        &c,
    )
    .expect_ok();
    assert!(link(&esp, "net1").is_none());
    let out = leases_cli(&state);
    assert!(out.contains(&format!("ip:{ip}")), "{out}");
}

fn leases_cli(state: &State) -> String {
    let out = std::process::Command::new(iotlan_bin())
        .args(["leases", "--state-dir"])
        .arg(state.dir())
        .output()
        .expect("iotlan leases");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
