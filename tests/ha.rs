//! Home Assistant itself on net1: the real client, not a route table.
//!
//! Home Assistant 2026.2.3 from PyPI, in a virtual environment on CPython 3.13.5 built from Debian
//! trixie's python3.13 source (tests/ha/setup.sh). The manifests' image is 2026.11.0, which PyPI does
//! not offer (its newest release is 2026.2.3, `Requires-Python >=3.13.2`), so the test runs the newest
//! release that this Python runs, and checks that the venv holds exactly that version.
//!
//! The pod is built as under Multus: a cluster `eth0` (a veth to a separate "cluster" namespace,
//! holding the default route) and net1 attached by iotlan on the simulated LAN, where a simulated
//! ESPHome device (a python-zeroconf responder, tests/ha/esphome_device.py) announces
//! `_esphomelib._tcp`. `hass` boots inside the pod with tests/ha/configuration.yaml, and
//! tests/ha/probe.py asks it through its own APIs (onboarding, then the websocket API) what it did.
//!
//! What the assertions follow, in homeassistant 2026.2.3:
//! - components/network/util.py `async_load_adapters`: the adapter holding the source address of the
//!   route to 224.0.0.251 is `default`, and enabled when no adapter was chosen (network.py
//!   `async_configure`); read back with the `network` websocket command (network/websocket.py);
//! - components/zeroconf/__init__.py `_async_get_zc_args`: zeroconf listens on the enabled adapters;
//!   the `zeroconf/subscribe_discovery` command (zeroconf/websocket_api.py) lists what it found;
//! - components/zeroconf/discovery.py `_async_process_service_update` starts the esphome flow, and
//!   components/esphome/config_flow.py `async_step_zeroconf` sets its unique id from the TXT `mac`
//!   and waits at `discovery_confirm`; `config_entries/flow/progress`
//!   (components/config/config_entries.py) lists it, as the UI's "Discovered" card does.
//!
//! The control: with iotlan's `multicastRoutes: false` the route to 224.0.0.251 is the cluster's,
//! Home Assistant enables eth0, and neither the service nor the flow appears, although the device's
//! multicast still reaches net1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iotlan_tests::*;
use serde_json::{json, Value};

use iotlan_tests::network::*;

/// The Home Assistant release the test runs (see the module comment for why not 2026.11.0).
const HA_VERSION: &str = "2026.2.3";
/// The CPython the venv runs on.
const PYTHON_VERSION: &str = "3.13.5";
/// The venv tests/ha/setup.sh makes, and the file it writes once the venv is complete.
const HASS: &str = "/opt/iotlan/ha-2026.2.3/bin/hass";
const VENV_PYTHON: &str = "/opt/iotlan/ha-2026.2.3/bin/python";
const VENV_COMPLETE: &str = "/opt/iotlan/ha-2026.2.3/.iotlan-requirements.sha256";
/// The simulated ESPHome device.
const DEVICE_NAME: &str = "iotlan-kitchen";
const DEVICE_FRIENDLY: &str = "Kitchen sensor";
const DEVICE_MAC: &str = "a0b1c2d3e4f5";
/// Seconds to wait for HA's HTTP server (recorder-less start is ~3 s; a busy 2-core machine is slower).
const STARTUP_S: u64 = 240;
/// Seconds to wait for the discovery in the positive case (it returns as soon as it is there).
const DISCOVERY_S: u64 = 60;
/// Seconds the control watches for a discovery that must not come.
const CONTROL_S: u64 = 25;

fn ha_dir() -> PathBuf {
    workspace_dir().join("tests").join("ha")
}

fn ready_for_ha() -> bool {
    ready() && require(Need::File(VENV_COMPLETE, "bash tests/ha/setup.sh"))
}

/// A process stopped on drop: SIGTERM, up to 20 s to exit (HA shuts down in stages), then SIGKILL.
struct Proc {
    child: Child,
    what: &'static str,
}

impl Proc {
    fn spawn(what: &'static str, mut cmd: Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc { child, what }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "{} did not stop within 20 s of SIGTERM; killing it",
            self.what
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cmd args` inside `ns`, with stdout and stderr appended to `log`.
fn in_ns(ns: &Netns, log: &Path, cmd: &str, args: &[&str]) -> Command {
    let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let err = out.try_clone().expect("log file handle");
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns.name(), cmd])
        .args(args)
        .stdout(out)
        .stderr(err);
    c
}

/// The tail of a log file, for failure messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The pod as under Multus: `eth0` to a separate cluster namespace (10.42.0.5/24, default route via
/// 10.42.0.1 there), then net1 from iotlan with `extra` in the NAD's config.
struct Pod {
    ns: Netns,
    _cluster: Netns,
    conf: String,
}

fn pod(lan: &Lan, state: &State, extra: Value) -> Pod {
    let cluster = Netns::new("iot-ha-cluster");
    let ns = lan.pod("ha");
    ns.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "pod-ha",
        "netns",
        cluster.name(),
    ]);
    ns.ip(&["addr", "add", "10.42.0.5/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["route", "add", "default", "via", "10.42.0.1", "dev", "eth0"]);
    cluster.ip(&["addr", "add", "10.42.0.1/24", "dev", "pod-ha"]);
    cluster.ip(&["link", "set", "pod-ha", "up"]);
    let conf = conf(state, extra);
    let r = add(lan, &ns, "ctr-ha-1", &conf).expect_ok();
    assert_eq!(first_ip(&r), HA_IP);
    Pod {
        ns,
        _cluster: cluster,
        conf,
    }
}

/// What Home Assistant reported (tests/ha/probe.py's JSON), and where its logs are.
struct Seen {
    report: Value,
    log: PathBuf,
    _config: tempfile::TempDir,
}

/// Starts the device's responder, boots hass in the pod and asks it what it saw, waiting up to
/// `wait_s` for the device's discovery.
fn boot_and_probe(lan: &Lan, pod: &Pod, wait_s: u64) -> Seen {
    let config = tempfile::Builder::new()
        .prefix("iotlan-ha-")
        .tempdir()
        .expect("config dir");
    std::fs::copy(
        ha_dir().join("configuration.yaml"),
        config.path().join("configuration.yaml"),
    )
    .expect("configuration.yaml");
    let device_script = ha_dir().join("esphome_device.py");
    let lifetime = (STARTUP_S + wait_s + 60).to_string();
    let mut device = Proc::spawn(
        "the ESPHome device's mDNS responder",
        in_ns(
            &lan.device,
            &config.path().join("device.out"),
            VENV_PYTHON,
            &[
                device_script.to_str().expect("path"),
                "--name",
                DEVICE_NAME,
                "--friendly-name",
                DEVICE_FRIENDLY,
                "--address",
                DEVICE_IP,
                "--mac",
                DEVICE_MAC,
                "--lifetime",
                &lifetime,
            ],
        ),
    );
    let cfg = config.path().to_str().expect("path").to_string();
    let mut hass = Proc::spawn(
        "hass",
        in_ns(
            &pod.ns,
            &config.path().join("hass.out"),
            HASS,
            &["-c", &cfg, "--skip-pip"],
        ),
    );
    let probe_script = ha_dir().join("probe.py");
    let service = format!("{DEVICE_NAME}._esphomelib._tcp.local.");
    let mut probe = pod.ns.try_exec(
        VENV_PYTHON,
        &[
            probe_script.to_str().expect("path"),
            "--startup",
            &STARTUP_S.to_string(),
            "--wait",
            &wait_s.to_string(),
            "--service",
            &service,
            "--handler",
            "esphome",
        ],
    );
    let log = config.path().join("home-assistant.log");
    if !probe.status.success() {
        probe.stderr.extend_from_slice(b"\n");
        panic!(
            "probe failed ({}): {}\nhass running: {}, device running: {}\nhome-assistant.log:\n{}\nhass.out:\n{}",
            probe.status,
            String::from_utf8_lossy(&probe.stderr),
            hass.running(),
            device.running(),
            tail(&log, 60),
            tail(&config.path().join("hass.out"), 30)
        );
    }
    assert!(
        device.running(),
        "the device's responder died: {}",
        tail(&config.path().join("device.out"), 20)
    );
    let report: Value = serde_json::from_slice(&probe.stdout).unwrap_or_else(|e| {
        panic!(
            "probe output is not JSON ({e}): {}",
            String::from_utf8_lossy(&probe.stdout)
        )
    });
    drop(hass);
    drop(device);
    Seen {
        report,
        log,
        _config: config,
    }
}

fn adapter<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["adapters"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("Home Assistant lists no adapter {name}: {report}"))
}

fn esphome_services(report: &Value) -> Vec<&Value> {
    report["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["type"] == "_esphomelib._tcp.local.")
        .collect()
}

fn esphome_flows(report: &Value) -> Vec<&Value> {
    report["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["handler"] == "esphome")
        .collect()
}

fn python_version() -> String {
    let out = run(
        VENV_PYTHON,
        &["-c", "import platform; print(platform.python_version())"],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn home_assistant_enables_net1_and_discovers_the_esphome_device_through_it() {
    if !ready_for_ha() {
        return;
    }
    assert_eq!(python_version(), PYTHON_VERSION, "the venv's Python");
    let started = Instant::now();
    let lan = Lan::new("ha");
    let state = State::new();
    let pod = pod(&lan, &state, json!({}));
    let seen = boot_and_probe(&lan, &pod, DISCOVERY_S);
    let r = &seen.report;
    let context = || format!("report: {r}\nhome-assistant.log:\n{}", tail(&seen.log, 40));
    assert_eq!(r["version"], HA_VERSION, "{}", context());

    // (1) The network integration enabled net1, by its own detection, and not eth0.
    let net1 = adapter(r, "net1");
    assert_eq!(net1["enabled"], true, "{}", context());
    assert_eq!(
        net1["default"],
        true,
        "net1 holds the route to 224.0.0.251: {}",
        context()
    );
    assert_eq!(net1["ipv4"][0]["address"], HA_IP, "{}", context());
    assert_eq!(adapter(r, "eth0")["enabled"], false, "{}", context());
    assert_eq!(
        r["configured_adapters"],
        json!([]),
        "nothing was chosen by hand"
    );

    // (2) Zeroconf found the device, at its LAN address, and the esphome discovery flow is waiting.
    let services = esphome_services(r);
    assert_eq!(services.len(), 1, "{}", context());
    let s = services[0];
    assert_eq!(s["name"], format!("{DEVICE_NAME}._esphomelib._tcp.local."));
    assert_eq!(s["port"], 6053);
    assert_eq!(s["ip_addresses"], json!([DEVICE_IP]), "{}", context());
    assert_eq!(s["properties"]["mac"], DEVICE_MAC);
    let flows = esphome_flows(r);
    assert_eq!(flows.len(), 1, "{}", context());
    let f = flows[0];
    assert_eq!(f["context"]["source"], "zeroconf", "{}", context());
    assert_eq!(
        f["context"]["unique_id"],
        "a0:b1:c2:d3:e4:f5",
        "{}",
        context()
    );
    assert_eq!(f["step_id"], "discovery_confirm", "{}", context());
    println!(
        "Home Assistant {} on Python {}: adapters enabled {:?}; {} found after {} s of asking; \
         flow {} ({}); test took {:.1} s",
        r["version"].as_str().unwrap_or("?"),
        python_version(),
        r["adapters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["enabled"] == true)
            .filter_map(|a| a["name"].as_str())
            .collect::<Vec<_>>(),
        s["name"].as_str().unwrap_or("?"),
        r["waited_s"],
        f["handler"].as_str().unwrap_or("?"),
        f["context"]["source"].as_str().unwrap_or("?"),
        started.elapsed().as_secs_f64()
    );
    del(&lan, &pod.ns, "ctr-ha-1", &pod.conf).expect_ok();
}

#[test]
fn without_multicast_routes_home_assistant_enables_eth0_and_discovers_nothing() {
    if !ready_for_ha() {
        return;
    }
    let started = Instant::now();
    let lan = Lan::new("hactl");
    let state = State::new();
    let pod = pod(&lan, &state, json!({ "multicastRoutes": false }));
    let seen = boot_and_probe(&lan, &pod, CONTROL_S);
    let r = &seen.report;
    let context = || format!("report: {r}\nhome-assistant.log:\n{}", tail(&seen.log, 40));
    assert_eq!(r["version"], HA_VERSION, "{}", context());

    let eth0 = adapter(r, "eth0");
    assert_eq!(eth0["enabled"], true, "{}", context());
    assert_eq!(eth0["default"], true, "{}", context());
    assert_eq!(adapter(r, "net1")["enabled"], false, "{}", context());
    assert!(esphome_services(r).is_empty(), "{}", context());
    assert!(esphome_flows(r).is_empty(), "{}", context());
    assert!(
        r["waited_s"]
            .as_f64()
            .is_some_and(|w| w >= CONTROL_S as f64),
        "the control watched the whole time: {r}"
    );
    // The LAN itself was fine: the device's multicast still reaches net1 when one listens there.
    assert!(
        mdns_roundtrip(&lan.device, &pod.ns, "net1", b"iotlan-ha-control").is_some(),
        "the device's mDNS reaches net1"
    );
    println!(
        "control: Home Assistant {} enabled eth0 only; no _esphomelib service and no esphome flow \
         in {} s; test took {:.1} s",
        r["version"].as_str().unwrap_or("?"),
        r["waited_s"],
        started.elapsed().as_secs_f64()
    );
    del(&lan, &pod.ns, "ctr-ha-1", &pod.conf).expect_ok();
}
