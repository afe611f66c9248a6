//! containerd 1.6's `ctr run --cni` giving a container net1.

use super::*;

/// A private containerd: its own config, root, state and socket; killed on drop.
struct Containerd {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        // Short path: the socket path must fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("iotlan-ctrd-")
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let d = dir.path();
        let sock = d.join("c.sock");
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/t.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#,
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), config)
            .unwrap_or_else(|e| panic!("write containerd config: {e}"));
        let log = std::fs::File::create(d.join("containerd.log"))
            .unwrap_or_else(|e| panic!("containerd log: {e}"));
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start containerd: {e}"));
        let c = Containerd {
            child,
            sock,
            _dir: dir,
        };
        for _ in 0..100 {
            if c.ctr()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                return c;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "containerd did not come up: {}",
            std::fs::read_to_string(c._dir.path().join("containerd.log")).unwrap_or_default()
        );
    }

    fn ctr(&self) -> Command {
        self.ctr_via(Command::new("ctr"))
    }

    fn ctr_via(&self, mut cmd: Command) -> Command {
        cmd.arg("--address").arg(&self.sock).args(["-n", "iotlan"]);
        cmd
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers left by a failed test: kill and delete them so their shims exit.
        let ids = self
            .ctr()
            .args(["containers", "ls", "-q"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = self
                .ctr()
                .args(["tasks", "kill", "-s", "SIGKILL", id])
                .output();
            for _ in 0..20 {
                let gone = self
                    .ctr()
                    .args(["tasks", "delete", id])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if gone {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.ctr().args(["containers", "delete", id]).output();
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctr_run(flavor: Flavor) {
    let needs = [
        Need::Cmd("containerd", "containerd"),
        Need::Cmd("ctr", "containerd"),
        Need::Cmd("runc", "runc"),
        Need::Cmd("nsenter", "util-linux"),
        Need::File(
            "/etc/cni/net.d",
            "mkdir -p /etc/cni/net.d (podman's package creates it)",
        ),
        Need::File("/opt", "mkdir /opt"),
    ];
    if !ready(flavor, &needs) || cache_file("busybox-oci.tar").is_none() {
        return;
    }
    let case = Case::new("rt-ctr", flavor);
    // ctr reads the first file of /etc/cni/net.d and looks for plugins in /opt/cni/bin, then
    // /usr/lib/cni: give it private ones, bind-mounted in its own mount namespace only.
    let netconf = case.write_conflist("net.d", "10-iot.conflist");
    let opt = case.path("opt");
    let bin = case.path("opt/cni/bin");
    for name in ["iotlan", "iotlan-ipam"] {
        let src = plugin_bin_dir().join(name);
        if src.exists() {
            std::os::unix::fs::symlink(&src, bin.join(name))
                .unwrap_or_else(|e| panic!("symlink {name}: {e}"));
        }
    }
    let containerd = Containerd::start();
    let out = containerd
        .ctr()
        .args([
            "images",
            "import",
            "--base-name",
            "localhost/iotlan-busybox",
        ])
        .arg(cache_dir().join("busybox-oci.tar"))
        .output()
        .unwrap_or_else(|e| panic!("cannot start ctr images import: {e}"));
    assert!(
        out.status.success(),
        "ctr images import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = unique_name("iotlan-ctr");
    let scratch = case.path("scratch");
    let binds = [
        (netconf.as_path(), Path::new("/etc/cni/net.d")),
        (opt.as_path(), Path::new("/opt")),
    ];
    let mut cmd = containerd.ctr_via(on_node(&case.lan.node.ns, &scratch, &binds, "ctr"));
    // ctr names the interface itself: eth0 (go-cni's prefix "eth" and index 0).
    cmd.args(["run", "--rm", "--cni"])
        .arg("--runc-root")
        .arg(case.path("runc"))
        .arg("--fifo-dir")
        .arg(case.path("fifo"))
        .args(["localhost/iotlan-busybox:latest", &id])
        .args(["sh", "-c", CONTAINER_SCRIPT, "sh", "eth0", GATEWAY_IP]);
    let what = format!("ctr run --cni ({flavor:?})");
    let mut session = Session::start(cmd, &what);
    let report = session.report();
    session.checked(|| {
        let ns = container_view(&report, &what);
        let (ip, mac) = case.check_up(&ns, "eth0", None);
        check_report(&report, &ip, &mac, &what);
        if flavor == Flavor::Iotlan {
            // Without K8S_POD_* the identity is the container ID the runtime passed.
            let lease = &case.leases()[&ip];
            let cid = lease["containerId"].as_str().unwrap_or_default();
            assert!(cid.contains(&id), "container ID {id} not in lease {lease}");
            assert_eq!(
                lease["identity"], cid,
                "identity is the container ID: {lease}"
            );
        }
    });
    // ctr's DEL carries an empty CNI_NETNS: the plugin must still release everything.
    case.check_gone();
}

#[test]
fn ctr_reference_macvlan() {
    ctr_run(Flavor::Reference);
}

#[test]
fn ctr_iotlan() {
    ctr_run(Flavor::Iotlan);
}
