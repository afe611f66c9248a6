//! Benchmarks of the file store (figures, not assertions). Run: `cargo bench -p iotlan-ipam --bench pool`
//!
//! 1. ADD in a /24 pool that is 90 % full against a /16 pool that is 90 % full (the /16 holds ~59,000
//!    leases). Each sample allocates one new identity (timed) and releases it again (not timed), so the
//!    fill level stays put. The pools are filled through the real allocation path on a tmpfs (where fsync
//!    is nearly free), measured there (the search cost alone), then copied to the disk-backed temp dir
//!    and measured again (with fsync, the real cost).
//! 2. 200 ADDs as 200 processes started at one instant, against the same 200 ADD processes one after
//!    the other: total wall time and ratio.
//!
//! This binary re-executes itself as the driver (tests/support/driver.rs) for the process runs.

#[path = "../tests/support/driver.rs"]
mod driver;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iotlan_ipam::{open_store, AllocRequest, Attachment, Pool, PoolConfig, Store};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(driver::ARG) {
        std::process::exit(driver::run(&args[2..]));
    }
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let wanted =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    if wanted("scale") {
        scale();
    }
    if wanted("storm") {
        storm();
    }
}

fn config(dir: &Path, subnet: &str, gateway: &str, range: &str) -> PoolConfig {
    serde_json::from_value(serde_json::json!({
        "subnet": subnet, "gateway": gateway, "pool": [range],
        "store": { "kind": "file", "dir": dir, "lockTimeoutMs": 120000 }
    }))
    .unwrap()
}

fn req(identity: String, cid: String) -> AllocRequest {
    AllocRequest {
        identity,
        attachment: Attachment::new(cid, "net1"),
        requested: vec![],
        ..AllocRequest::default()
    }
}

struct Stats {
    median: Duration,
    mean: Duration,
    p99: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    Stats {
        median: v[v.len() / 2],
        mean,
        p99: v[(v.len() * 99 / 100).min(v.len() - 1)],
    }
}

/// Times `samples` allocate+release pairs (the allocation only) in each store, interleaved so that
/// both see the same machine and disk conditions.
fn measure(stores: &[(&Pool, &dyn Store)], samples: usize) -> Vec<Stats> {
    let mut times = vec![Vec::with_capacity(samples); stores.len()];
    for i in 0..samples {
        for (k, (pool, store)) in stores.iter().enumerate() {
            let r = req(format!("bench/probe-{i}"), format!("probe{i}"));
            let t = Instant::now();
            store.allocate(pool, &r).unwrap();
            times[k].push(t.elapsed());
            store.release(&r.attachment).unwrap();
        }
    }
    times.into_iter().map(stats).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn tmpfs_dir() -> Option<PathBuf> {
    let shm = Path::new("/dev/shm");
    let is_tmpfs = nix::sys::statfs::statfs(shm)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false);
    is_tmpfs.then(|| shm.to_path_buf())
}

fn scale() {
    const SAMPLES: usize = 300;
    let fast = tmpfs_dir();
    let fill_base = tempfile::Builder::new()
        .prefix("iotlan-ipam-bench-")
        .tempdir_in(fast.as_deref().unwrap_or(&std::env::temp_dir()))
        .unwrap();
    let disk_base = tempfile::Builder::new()
        .prefix("iotlan-ipam-bench-")
        .tempdir()
        .unwrap();
    println!(
        "ADD in a pool 90% full, {SAMPLES} samples each (allocate one new identity, timed; release it)"
    );
    let pools = [
        (
            "/24",
            "10.1.0.0/24",
            "10.1.0.1",
            "10.1.0.2-10.1.0.254",
            253usize,
        ),
        (
            "/16",
            "10.2.0.0/16",
            "10.2.0.1",
            "10.2.0.2-10.2.255.254",
            65533usize,
        ),
    ];
    let mut built = Vec::new();
    for (name, subnet, gateway, range, size) in pools {
        let network = format!("net{}", &name[1..]);
        let cfg = config(fill_base.path(), subnet, gateway, range);
        let pool = Pool::new(&network, &cfg).unwrap();
        let store = open_store(&network, &cfg.store, &pool).unwrap();
        let fill = size * 9 / 10;
        let t = Instant::now();
        for i in 0..fill {
            store
                .allocate(&pool, &req(format!("bench/fill-{i}"), format!("fill{i}")))
                .unwrap();
        }
        println!(
            "  {name}: {fill} of {size} held (filled in {:.1?} on {})",
            t.elapsed(),
            if fast.is_some() { "tmpfs" } else { "disk" }
        );
        copy_dir(
            &fill_base.path().join(&network),
            &disk_base.path().join(&network),
        );
        let cfg_disk = config(disk_base.path(), subnet, gateway, range);
        let disk = open_store(&network, &cfg_disk.store, &pool).unwrap();
        assert_eq!(disk.leases().unwrap().len(), fill);
        built.push((name, pool, store, disk));
    }
    // Let the copies reach the disk before fsync latencies are measured.
    nix::unistd::sync();
    let on_tmpfs = measure(
        &built
            .iter()
            .map(|(_, p, s, _)| (p, &**s))
            .collect::<Vec<_>>(),
        SAMPLES,
    );
    let on_disk = measure(
        &built
            .iter()
            .map(|(_, p, _, d)| (p, &**d))
            .collect::<Vec<_>>(),
        SAMPLES,
    );
    for (k, (name, ..)) in built.iter().enumerate() {
        for (label, st) in [("tmpfs", &on_tmpfs[k]), ("disk ", &on_disk[k])] {
            println!(
                "  {name} {label}: median {:>9.1?}  mean {:>9.1?}  p99 {:>9.1?}",
                st.median, st.mean, st.p99
            );
        }
    }
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
    println!(
        "  /16 vs /24: tmpfs median x{:.2}, mean x{:.2}; disk median x{:.2}, mean x{:.2} (target: within x2)",
        ratio(on_tmpfs[0].median, on_tmpfs[1].median),
        ratio(on_tmpfs[0].mean, on_tmpfs[1].mean),
        ratio(on_disk[0].median, on_disk[1].median),
        ratio(on_disk[0].mean, on_disk[1].mean)
    );
}

fn storm() {
    const N: usize = 200;
    let base = tempfile::Builder::new()
        .prefix("iotlan-ipam-bench-")
        .tempdir()
        .unwrap();
    let config_path = base.path().join("ipam.json");
    let driver_cmd = |network: &str, i: usize| {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.arg(driver::ARG)
            .arg(&config_path)
            .arg(network)
            .args(["add", &format!("bench/pod-{i}"), &format!("c{i}"), "net1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        c
    };
    let cfg = config(
        base.path(),
        "10.3.0.0/16",
        "10.3.0.1",
        "10.3.1.0-10.3.3.255",
    );
    fs::write(&config_path, serde_json::to_vec(&cfg).unwrap()).unwrap();

    // Sequential: one process after the other.
    let t = Instant::now();
    for i in 0..N {
        assert!(driver_cmd("seq", i).status().unwrap().success());
    }
    let sequential = t.elapsed();

    // Storm: all started, then released at one instant by closing their stdin.
    let mut children: Vec<_> = (0..N)
        .map(|i| {
            driver_cmd("storm", i)
                .env("IOTLAN_DRIVER_WAIT_STDIN", "1")
                .stdin(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let t = Instant::now();
    for c in &mut children {
        drop(c.stdin.take());
    }
    for c in &mut children {
        assert!(c.wait().unwrap().success());
    }
    let storm = t.elapsed();
    let leases = |network: &str| {
        let cfg = config(
            base.path(),
            "10.3.0.0/16",
            "10.3.0.1",
            "10.3.1.0-10.3.3.255",
        );
        let pool = Pool::new(network, &cfg).unwrap();
        open_store(network, &cfg.store, &pool)
            .unwrap()
            .leases()
            .unwrap()
            .len()
    };
    assert_eq!(leases("seq"), N);
    assert_eq!(leases("storm"), N);
    println!(
        "{N} ADD processes on one store ({} CPUs):",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "  sequential: {sequential:.2?} ({:.2?} per ADD)",
        sequential / N as u32
    );
    println!("  storm:      {storm:.2?} (from their common release to the last exit)");
    println!(
        "  storm / sequential = {:.2}",
        storm.as_secs_f64() / sequential.as_secs_f64()
    );
}
