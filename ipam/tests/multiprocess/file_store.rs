//! Multi-process tests of the file store: every ADD is its own process, as under a container runtime.
//! The binary re-executes itself as the driver (support/driver.rs) for each operation.
//!
//! - `concurrent_adds`: 250 processes, released at one instant (their stdin closed), allocate from one store (300 addresses):
//!   0 duplicates, every process gets its address, the store holds exactly those leases.
//! - `sigkill_loop`: 250 ADDs, 9 in 10 SIGKILLed at a random moment of their run (4 in flight at a time), then
//!   one GC with the completed ones as valid: 0 leaked, 0 duplicates, every completed ADD holds the
//!   address it was told. (Takeovers by recreated pods are covered by the proptest and the contract.)
//!
//! Run: `cargo test -p iotlan-ipam --test multiprocess file_store` (arguments filter by name).

use crate::driver;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use iotlan_ipam::Lease;

/// This module's tests, run by the binary's `main`.
pub const TESTS: &[(&str, fn())] = &[
    ("concurrent_adds", concurrent_adds),
    ("sigkill_loop", sigkill_loop),
];

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    store_dir: PathBuf,
}

/// A store dir and a config with a pool of `size` addresses in a /16.
fn setup(size: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let last =
        std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 20, 1, 0)) + size - 1);
    let config = dir.path().join("ipam.json");
    let cfg = serde_json::json!({
        "type": "iotlan-ipam",
        "subnet": "10.20.0.0/16",
        "gateway": "10.20.0.1",
        "pool": [format!("10.20.1.0-{last}")],
        "reservations": { "mp/reserved-0": "10.20.0.100" },
        "store": { "kind": "file", "dir": dir.path().join("state"), "lockTimeoutMs": 60000, "gcGraceSeconds": 0 }
    });
    fs::write(&config, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let store_dir = dir.path().join("state").join("mp");
    Setup {
        _dir: dir,
        config,
        store_dir,
    }
}

fn driver(s: &Setup, args: &[&str]) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.arg(driver::ARG)
        .arg(&s.config)
        .arg("mp")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run_driver(s: &Setup, args: &[&str]) -> Vec<Lease> {
    let out = driver(s, args).output().unwrap();
    assert!(
        out.status.success(),
        "driver {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The entries of `dir` whose names start with `prefix`.
fn count(dir: &Path, prefix: &str) -> usize {
    names(dir, prefix).len()
}

/// The names of the entries of `dir` that start with `prefix`, without it.
fn names(dir: &Path, prefix: &str) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix(prefix).map(str::to_string)
        })
        .collect()
}

/// No address twice, reservations only to their identity; returns attachment -> ip.
fn check_store(s: &Setup) -> BTreeMap<(String, String), String> {
    let leases = run_driver(s, &["leases"]);
    let mut ips = HashSet::new();
    let mut by_att = BTreeMap::new();
    for l in &leases {
        assert!(ips.insert(l.ip), "{} held twice", l.ip);
        if l.ip.to_string() == "10.20.0.100" {
            assert_eq!(l.identity, "mp/reserved-0");
        }
        let prev = by_att.insert((l.container_id.clone(), l.ifname.clone()), l.ip.to_string());
        assert!(prev.is_none(), "{} holds two addresses", l.container_id);
    }
    by_att
}

fn concurrent_adds() {
    const N: usize = 250;
    let s = setup(300);
    let mut children: Vec<(String, Child)> = (0..N)
        .map(|i| {
            let cid = format!("storm{i:03}");
            // One pod with a reservation among the crowd.
            let identity = if i == 7 {
                "mp/reserved-0".to_string()
            } else {
                format!("mp/pod-{i}")
            };
            let child = driver(&s, &["add", &identity, &cid, "net1"])
                .env("IOTLAN_DRIVER_WAIT_STDIN", "1")
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            (cid, child)
        })
        .collect();
    // Release them all at once.
    for (_, child) in &mut children {
        drop(child.stdin.take());
    }
    let mut reported = BTreeMap::new();
    for (cid, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{cid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let leases: Vec<Lease> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(leases.len(), 1);
        reported.insert((cid, "net1".to_string()), leases[0].ip.to_string());
    }
    let distinct: HashSet<&String> = reported.values().collect();
    assert_eq!(distinct.len(), N, "duplicate addresses handed out");
    assert_eq!(
        reported[&("storm007".to_string(), "net1".to_string())],
        "10.20.0.100"
    );
    let held = check_store(&s);
    assert_eq!(
        held, reported,
        "the store differs from what the processes were told"
    );
    assert_eq!(count(&s.store_dir, "ip:"), N);
    assert_eq!(count(&s.store_dir, "attachment:"), N);
    assert_eq!(count(&s.store_dir.join("tmp"), ""), 0);
    println!("  {N} concurrent ADD processes: {N} distinct addresses, 0 duplicates");
}

/// xorshift64*, seeded and printed so a failure can be replayed with IOTLAN_TEST_SEED.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn sigkill_loop() {
    const N: usize = 250;
    const IN_FLIGHT: usize = 4;
    let s = setup(1000);
    let seed = std::env::var("IOTLAN_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("  seed {seed} (IOTLAN_TEST_SEED to replay)");
    // How long one ADD process lives, to spread the kills over its whole run.
    let t = Instant::now();
    for i in 0..5 {
        run_driver(
            &s,
            &["add", &format!("mp/warm-{i}"), &format!("warm{i}"), "net1"],
        );
    }
    let life = t.elapsed() / 5;
    let mut completed: BTreeMap<(String, String), String> = (0..5)
        .map(|i| ((format!("warm{i}"), "net1".to_string()), String::new()))
        .collect();

    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..IN_FLIGHT)
            .map(|w| {
                let s = &s;
                scope.spawn(move || {
                    let mut rng =
                        Rng(seed.wrapping_add((w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
                    let mut out = Vec::new();
                    let mut life = life;
                    for i in (w..N).step_by(IN_FLIGHT) {
                        let cid = format!("kill{i:03}");
                        let identity = format!("mp/pod-{i}");
                        let started = Instant::now();
                        let mut child = driver(s, &["add", &identity, &cid, "net1"])
                            .spawn()
                            .unwrap();
                        if i % 10 == 9 {
                            // Left alone, to follow how long a run takes as the machine's load
                            // changes.
                            let _ = child.wait();
                            life = (life * 3 + started.elapsed()) / 4;
                        } else {
                            // Half over the whole run, half around its end, where the store is
                            // written.
                            let r = (rng.next() % 1000) as f64 / 1000.0;
                            let f = if i % 2 == 0 { 1.5 * r } else { 0.8 + 0.4 * r };
                            std::thread::sleep(life.mul_f64(f));
                            let _ = child.kill(); // SIGKILL; fails only if it already exited
                        }
                        let out_ = child.wait_with_output().unwrap();
                        let ip = if out_.status.success() {
                            let leases: Vec<Lease> = serde_json::from_slice(&out_.stdout).unwrap();
                            Some(leases[0].ip.to_string())
                        } else {
                            use std::os::unix::process::ExitStatusExt;
                            assert_eq!(
                                out_.status.signal(),
                                Some(9),
                                "{cid} failed: {}",
                                String::from_utf8_lossy(&out_.stderr)
                            );
                            None
                        };
                        out.push((cid, ip));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    let killed = results.iter().filter(|(_, ip)| ip.is_none()).count();
    for (cid, ip) in &results {
        if let Some(ip) = ip {
            completed.insert((cid.clone(), "net1".to_string()), ip.clone());
        }
    }
    println!(
        "  {N} ADDs, one process each, killed at random (a run took {life:.1?} at the start): {killed} killed, {} completed",
        N - killed
    );
    assert!(
        killed > N / 10,
        "too few processes were killed mid-run ({killed})"
    );
    assert!(killed < N, "no process completed");

    // Before GC: whatever the kills left, never an address twice.
    let before = check_store(&s);
    let killed_holding = before
        .keys()
        .filter(|a| !completed.contains_key(*a))
        .count();
    let indexes = names(&s.store_dir, "attachment:")
        .iter()
        .filter(|name| {
            let (c, i) = name.split_once(':').unwrap();
            !completed.contains_key(&(c.to_string(), i.to_string()))
        })
        .count();
    let temps = count(&s.store_dir.join("tmp"), "");
    println!(
        "  left by the kills: {killed_holding} leases of killed ADDs, {indexes} index records of killed ADDs, {temps} temporary links"
    );

    // The runtime's GC: only the completed attachments are valid.
    let valid: Vec<String> = completed.keys().map(|(c, i)| format!("{c}:{i}")).collect();
    let mut args = vec!["gc"];
    args.extend(valid.iter().map(String::as_str));
    run_driver(&s, &args);

    let held = check_store(&s);
    for (att, ip) in &held {
        assert!(completed.contains_key(att), "leaked lease {att:?} -> {ip}");
    }
    for (att, ip) in &completed {
        let got = held.get(att);
        assert!(got.is_some(), "{att:?} lost its lease");
        if !ip.is_empty() {
            assert_eq!(
                got,
                Some(ip),
                "{att:?} holds another address than it was told"
            );
        }
    }
    assert_eq!(
        count(&s.store_dir.join("tmp"), ""),
        0,
        "stray temporary files after GC"
    );
    assert_eq!(
        count(&s.store_dir, "attachment:"),
        completed.len(),
        "attachment index files of invalid attachments after GC"
    );
    println!(
        "  after GC: {} leases held = the completed ADDs, 0 leaked, 0 duplicates",
        held.len()
    );
}
