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
mod cnitool;
mod containerd;
mod podman;

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
