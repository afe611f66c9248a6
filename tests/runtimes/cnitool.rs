//! cnitool (built from Debian's golang-github-appc-cni source) giving a container net1: the reference
//! macvlan + static first, then iotlan.

use super::*;

fn cnitool(case: &Case, netconf: &Path, verb: &str, pod: &Netns, caps: Option<&Value>) -> Output {
    let Some(tool) = cache_file("cnitool") else {
        panic!("cnitool missing: {SETUP}");
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", case.lan.node.ns.name()])
        .arg(&tool)
        .args([verb, NET])
        .arg(pod.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NETCONFPATH", netconf)
        .env(
            "CNI_PATH",
            format!(
                "{}:{}",
                plugin_bin_dir().display(),
                reference_plugin_dir().display()
            ),
        )
        .env("CNI_IFNAME", "net1")
        .env("CNI_ARGS", k8s_args("home", "ha-0", "cnitool"));
    if let Some(c) = caps {
        cmd.env("CAP_ARGS", c.to_string());
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start cnitool: {e}"));
    assert!(
        out.status.success(),
        "cnitool {verb} failed ({}):\nstdout: {}\nstderr: {}\nlog: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        case.log()
    );
    out
}

fn cnitool_run(flavor: Flavor) {
    if !ready(flavor, &[]) || cache_file("cnitool").is_none() {
        return;
    }
    let case = Case::new("rt-cnitool", flavor);
    let netconf = case.write_conflist("net.d", "10-iot.conflist");
    let pod = case.lan.pod("cnitool");
    let out = cnitool(&case, &netconf, "add", &pod, None);
    let result: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("cnitool add printed no JSON result ({e}): {out:?}"));
    let (ip, mac) = case.check_up(&pod, "net1", None);
    assert_eq!(result["ips"][0]["address"], format!("{ip}/24"), "{result}");
    let sandboxed: Vec<&Value> = result["interfaces"]
        .as_array()
        .map(|a| a.iter().filter(|i| i["name"] == "net1").collect())
        .unwrap_or_default();
    assert_eq!(sandboxed.len(), 1, "{result}");
    assert_eq!(sandboxed[0]["mac"], mac.as_str(), "{result}");
    if flavor == Flavor::Iotlan {
        assert_eq!(
            sandboxed[0]["sandbox"],
            pod.path().to_string_lossy().as_ref(),
            "{result}"
        );
        let lease = &case.leases()[&ip];
        assert_eq!(
            lease["identity"], "home/ha-0",
            "identity from CNI_ARGS: {lease}"
        );
        let cid = lease["containerId"].as_str().unwrap_or_default();
        assert!(
            cid.starts_with("cnitool-"),
            "cnitool's container ID: {lease}"
        );
    }
    cnitool(&case, &netconf, "check", &pod, None);
    cnitool(&case, &netconf, "del", &pod, None);
    assert!(
        link(&pod, "net1").is_none(),
        "net1 left in the pod after DEL"
    );
    case.check_gone();

    if flavor == Flavor::Iotlan {
        // The same pod identity gets the same MAC again; runtimeConfig (CAP_ARGS) is honoured.
        let out = cnitool(&case, &netconf, "add", &pod, None);
        assert!(!out.stdout.is_empty());
        let again = link(&pod, "net1").expect("net1 after re-ADD");
        assert_eq!(again.mac, mac, "same identity, different MAC");
        cnitool(&case, &netconf, "del", &pod, None);
        let caps = json!({ "ips": ["10.77.0.237/24"], "mac": "02:11:22:33:44:55" });
        cnitool(&case, &netconf, "add", &pod, Some(&caps));
        let (ip, mac) = case.check_up(&pod, "net1", None);
        assert_eq!(ip, "10.77.0.237", "runtimeConfig.ips not applied");
        assert_eq!(mac, "02:11:22:33:44:55", "runtimeConfig.mac not applied");
        cnitool(&case, &netconf, "del", &pod, Some(&caps));
        case.check_gone();
    }
}

#[test]
fn cnitool_reference_macvlan() {
    cnitool_run(Flavor::Reference);
}

#[test]
fn cnitool_iotlan() {
    cnitool_run(Flavor::Iotlan);
}

// ---------------------------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------------------------
