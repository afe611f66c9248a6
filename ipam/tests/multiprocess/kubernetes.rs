//! The kubernetes store with every operation in its own process, as under a container runtime on
//! several nodes: processes released at one instant allocate through their own API clients from the
//! API server test double (the iotlan-apiserver-double crate, tests/apiserver), through the same self-exec driver as the file
//! store's multi-process tests (support/driver.rs).
//!
//! - `concurrent_adds`: 60 processes, 80 addresses: 0 duplicates, all succeed, the double holds
//!   exactly their objects;
//! - `one_address_many_nodes`: 20 processes request one address: one wins, 19 fail with a conflict
//!   naming the winner;
//! - `gc_from_another_process`: a GC process frees exactly the leases not listed as valid.
//!
//! Run: `cargo test -p iotlan-ipam --features kubernetes --test multiprocess kubernetes`.

use iotlan_apiserver_double::rbac;

use crate::driver;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iotlan_apiserver_double::ApiServer;
use iotlan_ipam::Lease;

const NS: &str = "iotlan-system";

/// This module's tests, run by the binary's `main`.
pub const TESTS: &[(&str, fn())] = &[
    ("concurrent_adds", concurrent_adds),
    ("one_address_many_nodes", one_address_many_nodes),
    ("gc_from_another_process", gc_from_another_process),
];

struct Setup {
    server: ApiServer,
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// A double, a kubeconfig for it, and an ipam config with `size` pool addresses in a /16.
fn setup(size: u32) -> Setup {
    let server = ApiServer::start();
    server.set_token(Some("mp-token"));
    server.enforce(rbac::shipped_rules());
    let dir = tempfile::tempdir().unwrap();
    let kc = server.kubeconfig(dir.path(), NS, "mp-token");
    let last =
        std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 30, 1, 0)) + size - 1);
    let cfg = serde_json::json!({
        "type": "iotlan-ipam",
        "subnet": "10.30.0.0/16",
        "gateway": "10.30.0.1",
        "pool": [format!("10.30.1.0-{last}")],
        "store": { "kind": "kubernetes", "namespace": NS, "kubeconfig": kc, "gcGraceSeconds": 0,
                   "stateDir": kc.parent().map(|d| d.join("state")) }
    });
    let config = dir.path().join("ipam.json");
    std::fs::write(&config, serde_json::to_vec(&cfg).unwrap()).unwrap();
    Setup {
        server,
        dir,
        config,
    }
}

fn driver(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.arg(driver::ARG).arg(config).arg("iot").args(args);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Runs the commands as processes that all start their operation at one instant.
fn storm(mut cmds: Vec<Command>) -> Vec<Output> {
    let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_millis(1500);
    let children: Vec<_> = cmds
        .iter_mut()
        .map(|c| {
            c.env("IOTLAN_DRIVER_START_AT", at.as_nanos().to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn leases_of(o: &Output) -> Vec<Lease> {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn kinds(server: &ApiServer) -> (usize, usize) {
    let objs = server.leases(NS);
    let count = |k: &str| {
        objs.iter()
            .filter(|o| o["metadata"]["labels"]["iotlan/kind"] == k)
            .count()
    };
    (count("address"), count("identity"))
}

fn concurrent_adds() {
    let s = setup(80);
    let cmds = (0..60)
        .map(|i| {
            driver(
                &s.config,
                &["add", &format!("mp/pod-{i}"), &format!("c{i}"), "net1"],
            )
        })
        .collect();
    let outs = storm(cmds);
    let mut ips = HashSet::new();
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for l in leases_of(o) {
            assert!(ips.insert(l.ip), "{} handed out twice", l.ip);
        }
    }
    assert_eq!(ips.len(), 60);
    assert_eq!(kinds(&s.server), (60, 60));
    let listed = driver(&s.config, &["leases"]).output().unwrap();
    let listed: HashSet<_> = leases_of(&listed).into_iter().map(|l| l.ip).collect();
    assert_eq!(listed, ips);
    drop(s.dir);
}

fn one_address_many_nodes() {
    let s = setup(40);
    let cmds = (0..20)
        .map(|i| {
            driver(
                &s.config,
                &[
                    "add",
                    &format!("mp/n-{i}"),
                    &format!("n{i}"),
                    "net1",
                    "10.30.1.7",
                ],
            )
        })
        .collect();
    let outs = storm(cmds);
    let winners: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(
        winners.len(),
        1,
        "{} processes got 10.30.1.7",
        winners.len()
    );
    let winner = &leases_of(winners[0])[0];
    for o in outs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("10.30.1.7 is already held by")
                && err.contains(&winner.identity)
                && err.contains(&winner.container_id),
            "{err}"
        );
    }
    assert_eq!(kinds(&s.server).0, 1);
}

fn gc_from_another_process() {
    let s = setup(40);
    let cmds = (0..12)
        .map(|i| {
            driver(
                &s.config,
                &["add", &format!("mp/g-{i}"), &format!("g{i}"), "net1"],
            )
        })
        .collect();
    for o in storm(cmds) {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let gc = driver(&s.config, &["gc", "g0:net1", "g5:net1", "g11:net1"])
        .output()
        .unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let freed: HashSet<String> = leases_of(&gc).into_iter().map(|l| l.container_id).collect();
    let expected: HashSet<String> = (0..12)
        .filter(|i| ![0, 5, 11].contains(i))
        .map(|i| format!("g{i}"))
        .collect();
    assert_eq!(freed, expected);
    let left = driver(&s.config, &["leases"]).output().unwrap();
    let left: HashSet<String> = leases_of(&left)
        .into_iter()
        .map(|l| l.container_id)
        .collect();
    assert_eq!(
        left,
        ["g0", "g5", "g11"].iter().map(|s| s.to_string()).collect()
    );
    assert_eq!(kinds(&s.server), (3, 12));
}
