//! Real CNI runtimes, not written by us, giving a container its LAN interface through a plugin:
//! cnitool (built from Debian's golang-github-appc-cni source), podman 4.3 (runc, CNI backend)
//! and containerd 1.6's `ctr run --cni`.
//!
//! Each runtime runs "on the node" of a simulated LAN ([`Lan`]): inside the node netns, with a
//! /sys of that netns and a private mount namespace holding the runtime's own CNI config dir.
//! Nothing touches the host's interfaces, /etc/cni/net.d or the system's containers.
//! Every runtime is proven first with Debian's reference `macvlan` + `static`, then with iotlan.
//!
//! Needs root and `tests/runtimes/setup.sh` (packages, cnitool, the busybox image tarballs).
//! Under `CI=true` anything missing fails the test.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use iotlan_tests::*;
use serde_json::{json, Value};

/// The network name in every config.
const NET: &str = "iot";
/// The reference configuration's static address.
const REF_IP: &str = "10.77.0.60";
/// iotlan's pool on the simulated LAN.
const POOL: &str = "10.77.0.200-10.77.0.239";
/// How long a runtime may take to bring a container up or down.
const RUNTIME_TIMEOUT: Duration = Duration::from_secs(120);
/// What the containers run: report the interface, ping the gateway, wait for the test.
const CONTAINER_SCRIPT: &str = r#"IF=$1
echo "NETNS=$(readlink /proc/self/ns/net)"
echo "ADDR=$(ip -o -4 addr show dev "$IF" | awk '{print $4}')"
echo "MAC=$(cat "/sys/class/net/$IF/address")"
if ping -c 1 -W 2 "$2" >/dev/null 2>&1; then echo PING=ok; else echo PING=fail; fi
echo READY
read -r line
echo BYE
"#;

fn cache_dir() -> PathBuf {
    std::env::var_os("IOTLAN_RUNTIMES_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(".cache")
                .join("runtimes")
        })
}

const SETUP: &str = "run tests/runtimes/setup.sh";

fn cache_file(name: &str) -> Option<PathBuf> {
    let p = cache_dir().join(name);
    if p.exists() {
        return Some(p);
    }
    let why = format!("{} missing: {SETUP}", p.display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("requirement missing under CI=true: {why}");
    }
    eprintln!("SKIP: {why}");
    None
}

/// Which plugin serves the network.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Flavor {
    /// Debian's macvlan + static.
    Reference,
    /// iotlan + iotlan-ipam.
    Iotlan,
}

fn ready(flavor: Flavor, extra: &[Need]) -> bool {
    if !require_all(LAN_NEEDS) || !require_all(extra) {
        return false;
    }
    match flavor {
        Flavor::Reference => require(Need::File(
            "/usr/lib/cni/macvlan",
            "apt-get install containernetworking-plugins",
        )),
        Flavor::Iotlan => {
            let bin = iotlan_bin();
            if bin.is_file() && plugin_bin_dir().join("iotlan-ipam").is_file() {
                return true;
            }
            let why = format!(
                "{} missing: cargo build --release -p iotlan (or set IOTLAN_BIN_DIR)",
                bin.display()
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("requirement missing under CI=true: {why}");
            }
            eprintln!("SKIP: {why}");
            false
        }
    }
}

/// One simulated LAN, a scratch directory and the network configuration for one runtime run.
struct Case {
    flavor: Flavor,
    lan: Lan,
    dir: tempfile::TempDir,
}

impl Case {
    fn new(tag: &str, flavor: Flavor) -> Case {
        // Under /tmp, not $TMPDIR: podman refuses a runroot longer than 50 characters.
        let dir = tempfile::Builder::new()
            .prefix("iotlan-rt-")
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        // IOTLAN_TEST_KEEP=1 keeps configs, store and the plugin's log for a look afterwards.
        let mut dir = dir;
        if std::env::var_os("IOTLAN_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("{tag}: keeping {}", dir.path().display());
        }
        Case {
            flavor,
            lan: Lan::new(tag),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    /// The iotlan-ipam file store of the network.
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The plugin object of the network configuration.
    fn plugin(&self) -> Value {
        match self.flavor {
            Flavor::Reference => json!({
                "type": "macvlan",
                "master": NODE_IF,
                "mode": "bridge",
                "ipam": { "type": "static", "addresses": [{ "address": format!("{REF_IP}/24") }] }
            }),
            Flavor::Iotlan => json!({
                "type": "iotlan",
                "master": NODE_IF,
                "capabilities": { "ips": true, "mac": true },
                "stateDir": self.dir.path().join("state"),
                "logFile": self.dir.path().join("iotlan.log"),
                "logLevel": "debug",
                "ipam": {
                    "type": "iotlan-ipam",
                    "subnet": SUBNET,
                    "gateway": GATEWAY_IP,
                    "pool": [POOL],
                    "store": { "kind": "file", "dir": self.store() }
                }
            }),
        }
    }

    /// Writes `<dir>/<file>` holding the conflist; returns the directory.
    fn write_conflist(&self, dir: &str, file: &str) -> PathBuf {
        let d = self.path(dir);
        let conf = json!({ "cniVersion": "1.0.0", "name": NET, "plugins": [self.plugin()] });
        std::fs::write(d.join(file), conf.to_string())
            .unwrap_or_else(|e| panic!("write conflist: {e}"));
        d
    }

    /// The addresses iotlan may hand out.
    fn pool_ips(&self) -> Vec<String> {
        (200..=239).map(|i| format!("10.77.0.{i}")).collect()
    }

    /// The leases in the store: ip -> lease JSON (each `ip:<ip>` record is a link to its JSON).
    fn leases(&self) -> BTreeMap<String, Value> {
        self.records("ip:")
            .into_iter()
            .map(|(ip, target)| (ip, serde_json::from_str(&target).unwrap_or(Value::Null)))
            .collect()
    }

    /// The store's records whose names start with `prefix`: name without it -> link target.
    fn records(&self, prefix: &str) -> BTreeMap<String, String> {
        let Ok(rd) = std::fs::read_dir(self.store().join(NET)) else {
            return BTreeMap::new();
        };
        rd.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name.strip_prefix(prefix)?.to_string();
                let target = std::fs::read_link(e.path()).unwrap_or_default();
                Some((key, target.to_string_lossy().into_owned()))
            })
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("iotlan.log")).unwrap_or_default()
    }

    /// Asserts what a user checks on the container's interface, from its netns: the kind, the
    /// address in the pool (or the reference's), a unicast MAC (locally administered for iotlan),
    /// the subnet route, no default route via it, the gateway answering ping, an mDNS datagram
    /// from the IoT device arriving on it, and for iotlan
    /// the lease held by `container_id` (when known). Returns (ip, mac).
    fn check_up(&self, ns: &Netns, ifname: &str, container_id: Option<&str>) -> (String, String) {
        let l = link(ns, ifname).unwrap_or_else(|| {
            panic!(
                "{ifname} missing in the container netns; links: {:?}\nlog: {}",
                links(ns).iter().map(|l| &l.name).collect::<Vec<_>>(),
                self.log()
            )
        });
        assert_eq!(l.kind.as_deref(), Some("macvlan"), "link kind: {:?}", l.raw);
        assert!(l.up, "{ifname} is not up: {:?}", l.raw);
        let first = u8::from_str_radix(&l.mac[..2], 16).unwrap_or(0xff);
        assert_eq!(first & 1, 0, "multicast MAC {}", l.mac);
        let ips = ipv4_addrs(ns, ifname);
        assert_eq!(ips.len(), 1, "IPv4 addresses on {ifname}: {ips:?}");
        let ip = ips[0].to_string();
        assert!(
            addrs(ns, ifname).contains(&format!("{ip}/24")),
            "prefix must be /24"
        );
        let r = routes(ns, false);
        assert!(
            r.iter()
                .any(|r| r.dst == SUBNET && r.dev.as_deref() == Some(ifname)),
            "no subnet route via {ifname}: {r:?}"
        );
        match self.flavor {
            Flavor::Reference => assert_eq!(ip, REF_IP),
            Flavor::Iotlan => {
                assert!(
                    !r.iter()
                        .any(|r| r.dst == "default" && r.dev.as_deref() == Some(ifname)),
                    "default route via {ifname}: {r:?}"
                );
                assert!(self.pool_ips().contains(&ip), "{ip} not in pool {POOL}");
                assert_eq!(first & 2, 2, "MAC {} is not locally administered", l.mac);
                let leases = self.leases();
                let lease = leases
                    .get(&ip)
                    .unwrap_or_else(|| panic!("no lease for {ip} in the store: {leases:?}"));
                assert_eq!(lease["ifname"], ifname, "lease {lease}");
                if let Some(id) = container_id {
                    assert_eq!(lease["containerId"], id, "lease {lease}");
                }
                assert_eq!(leases.len(), 1, "more than one lease: {leases:?}");
            }
        }
        assert!(ping(ns, GATEWAY_IP), "{ifname} cannot ping the gateway");
        let from = mdns_roundtrip(&self.lan.device, ns, ifname, b"iotlan-runtime-mdns")
            .unwrap_or_else(|| panic!("mDNS from the device never reached {ifname}"));
        assert_eq!(from.ip().to_string(), DEVICE_IP);
        (ip, l.mac)
    }

    /// Asserts that nothing is left: no extra link on the node, no lease in the store.
    fn check_gone(&self) {
        let names: Vec<String> = links(&self.lan.node.ns)
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, ["lo", "eth0"], "links left on the node: {names:?}");
        if self.flavor == Flavor::Iotlan {
            assert!(
                self.leases().is_empty(),
                "leases left after the runtime removed the container: {:?}\nlog: {}",
                self.leases(),
                self.log()
            );
            let left = self.records("attachment:");
            assert!(left.is_empty(), "attachment records left: {left:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A runtime process that runs CONTAINER_SCRIPT and waits for us
// ---------------------------------------------------------------------------------------------

struct Session {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    what: String,
}

impl Session {
    fn start(mut cmd: Command, what: &str) -> Session {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let out = child.stdout.take().map(BufReader::new);
        let err = child.stderr.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            if let Some(out) = out {
                for line in out.lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut e) = err {
                let _ = std::io::Read::read_to_string(&mut e, &mut s);
            }
            s
        });
        Session {
            child,
            lines: rx,
            stderr: Some(stderr),
            what: what.to_string(),
        }
    }

    /// Reads `KEY=VALUE` lines until `READY`; panics with stderr if the runtime exits first.
    fn report(&mut self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        loop {
            match self.lines.recv_timeout(RUNTIME_TIMEOUT) {
                Ok(line) if line.trim() == "READY" => return map,
                Ok(line) => {
                    if let Some((k, v)) = line.split_once('=') {
                        map.insert(k.trim().to_string(), v.trim().to_string());
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let status = self.child.wait();
                    let stderr = self.stderr.take().and_then(|h| h.join().ok());
                    panic!(
                        "{} ended before the container was ready ({status:?}); stdout so far: {map:?}\nstderr: {}",
                        self.what,
                        stderr.unwrap_or_default()
                    );
                }
            }
        }
    }

    /// Runs the checks `f` while the container is up, then lets the container exit and waits for
    /// the runtime to remove it (its CNI DEL), also when a check failed, and re-raises that failure.
    fn checked<T>(self, f: impl FnOnce() -> T) -> T {
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let finished = self.finish();
        match checked {
            Err(p) => std::panic::resume_unwind(p),
            Ok(v) => {
                if let Err(e) = finished {
                    panic!("{e}");
                }
                v
            }
        }
    }

    /// Lets the container exit and waits for the runtime to remove it.
    fn finish(mut self) -> Result<(), String> {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"done\n");
        }
        let deadline = std::time::Instant::now() + RUNTIME_TIMEOUT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => {
                    return Err(format!(
                        "{} did not exit within {RUNTIME_TIMEOUT:?}: {other:?}",
                        self.what
                    ))
                }
            }
        };
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({status}):\nstderr: {stderr}",
                self.what
            ))
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads the container's report: its netns (named for the readers) and its own view.
fn container_view(report: &BTreeMap<String, String>, what: &str) -> Netns {
    let ns_link = report
        .get("NETNS")
        .unwrap_or_else(|| panic!("{what}: no NETNS in {report:?}"));
    let pid = pid_in_netns(ns_link)
        .unwrap_or_else(|| panic!("{what}: no process in container netns {ns_link}"));
    Netns::attach("iot-rt-ctr", pid)
}

fn check_report(report: &BTreeMap<String, String>, ip: &str, mac: &str, what: &str) {
    assert_eq!(
        report.get("ADDR").map(String::as_str),
        Some(format!("{ip}/24").as_str()),
        "{what}: address seen inside the container: {report:?}"
    );
    assert_eq!(
        report.get("MAC").map(String::as_str),
        Some(mac),
        "{what}: MAC seen inside the container: {report:?}"
    );
    assert_eq!(
        report.get("PING").map(String::as_str),
        Some("ok"),
        "{what}: the container could not ping the gateway {GATEWAY_IP}: {report:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// cnitool
// ---------------------------------------------------------------------------------------------

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
