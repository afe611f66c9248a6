//! podman 4.3 (runc, the CNI backend) giving a container net1, with `--ip` and `--mac-address` too.

use super::*;

struct Podman {
    conf: PathBuf,
    root: PathBuf,
    runroot: PathBuf,
}

impl Podman {
    fn new(case: &Case, netconf: &Path) -> Podman {
        let conf = case.dir.path().join("containers.conf");
        let text = format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
tmp_dir = "{tmp}"
volume_path = "{vol}"

[network]
network_backend = "cni"
network_config_dir = "{net}"
cni_plugin_dirs = ["{bin}", "{reference}"]
"#,
            tmp = case.path("podman-tmp").display(),
            vol = case.path("podman-volumes").display(),
            net = netconf.display(),
            bin = plugin_bin_dir().display(),
            reference = reference_plugin_dir().display(),
        );
        std::fs::write(&conf, text).unwrap_or_else(|e| panic!("write containers.conf: {e}"));
        let p = Podman {
            conf,
            root: case.path("podman-root"),
            runroot: case.path("podman-runroot"),
        };
        let tar = cache_dir().join("busybox-rootfs.tar");
        let mut import = p.command(Command::new("podman"));
        import
            .arg("import")
            .arg(&tar)
            .arg("localhost/iotlan-busybox:latest");
        let out = import
            .output()
            .unwrap_or_else(|e| panic!("cannot start podman import: {e}"));
        assert!(
            out.status.success(),
            "podman import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }

    fn command(&self, mut cmd: Command) -> Command {
        cmd.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "vfs"]);
        cmd
    }
}

impl Podman {
    /// Removes containers a failed test left (`podman rm -f`), on the node so their CNI DEL runs there.
    fn cleanup(&self, node: &Netns, scratch: &Path) {
        let ids = self
            .command(Command::new("podman"))
            .args(["ps", "-aq"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = self
                .command(on_node(node, scratch, &[], "podman"))
                .args(["rm", "-f", "-t", "0", id])
                .output();
        }
    }
}

fn podman_run(flavor: Flavor) {
    podman_run_with(flavor, &[], None);
}

/// Runs a podman container on the LAN with `extra` `podman run` options; `expect` is the
/// (ip, mac) they ask for.
fn podman_run_with(flavor: Flavor, extra: &[&str], expect: Option<(&str, &str)>) {
    let needs = [
        Need::Cmd("podman", "podman"),
        Need::Cmd("runc", "runc"),
        Need::Cmd("nsenter", "util-linux"),
    ];
    if !ready(flavor, &needs) || cache_file("busybox-rootfs.tar").is_none() {
        return;
    }
    let case = Case::new("rt-podman", flavor);
    let netconf = case.write_conflist("net.d", "10-iot.conflist");
    let podman = Podman::new(&case, &netconf);
    let scratch = case.path("scratch");
    let cmd = podman.command(on_node(&case.lan.node.ns, &scratch, &[], "podman"));
    let mut cmd = cmd;
    cmd.args(["run"]).args(extra).args([
        "--rm",
        "-i",
        "--pull",
        "never",
        "--cap-add",
        "NET_RAW",
        "--network",
        &format!("{NET}:interface_name=net1"),
        "localhost/iotlan-busybox:latest",
        "sh",
        "-c",
        CONTAINER_SCRIPT,
        "sh",
        "net1",
        GATEWAY_IP,
    ]);
    let what = format!("podman run ({flavor:?})");
    struct Cleanup<'a>(&'a Podman, &'a Netns, &'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            self.0.cleanup(self.1, self.2);
        }
    }
    let _cleanup = Cleanup(&podman, &case.lan.node.ns, &scratch);
    let mut session = Session::start(cmd, &what);
    let report = session.report();
    session.checked(|| {
        let ns = container_view(&report, &what);
        let (ip, mac) = case.check_up(&ns, "net1", None);
        check_report(&report, &ip, &mac, &what);
        if let Some((want_ip, want_mac)) = expect {
            assert_eq!(
                (ip.as_str(), mac.as_str()),
                (want_ip, want_mac),
                "{what}: {extra:?} not applied"
            );
        }
    });
    case.check_gone();
}

#[test]
fn podman_reference_macvlan() {
    podman_run(Flavor::Reference);
}

#[test]
fn podman_iotlan() {
    podman_run(Flavor::Iotlan);
}

/// podman 4.3's --mac-address arrives as `MAC=` in CNI_ARGS; Debian's macvlan applies it.
#[test]
fn podman_reference_requested_mac() {
    podman_run_with(
        Flavor::Reference,
        &["--mac-address", "02:11:22:33:44:77"],
        Some((REF_IP, "02:11:22:33:44:77")),
    );
}

/// podman 4.3's --ip and --mac-address arrive in CNI_ARGS as `IP=` and `MAC=`
/// (`IgnoreUnknown=1;K8S_POD_NAME=<container name>;MAC=..;IP=..`), not as runtimeConfig.
#[test]
fn podman_iotlan_requested_ip_and_mac() {
    podman_run_with(
        Flavor::Iotlan,
        &["--ip", "10.77.0.237", "--mac-address", "02:11:22:33:44:66"],
        Some(("10.77.0.237", "02:11:22:33:44:66")),
    );
}

// ---------------------------------------------------------------------------------------------
// containerd's ctr
// ---------------------------------------------------------------------------------------------
