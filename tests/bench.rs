//! `cargo bench -p iotlan-tests --bench cni`: iotlan's ADD and DEL as whole exec'd processes against
//! Debian's reference macvlan + static on the same simulated LAN, and the kernel's own floor, in
//! one run. Prints medians, p99s and ratios. Timing targets live here, never in tests.
//!
//! Two iotlan builds are timed when both exist: the static binary the DaemonSet installs on every
//! node (`dist/linux-amd64/iotlan` from scripts/build-static.sh, or `IOTLAN_STATIC_BIN`), which the
//! targets are judged on, and the development build (`cargo build --release`: glibc, PIE).
//!
//! Rounds interleave the contenders (iotlan ADD/DEL, reference ADD/DEL, floor ADD/DEL) so that
//! machine noise falls on all of them alike. The plugins run in the node's namespace the way
//! kubelet runs them on a node: this process enters that namespace, so no `ip netns exec` wrapper
//! is timed.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iotlan_tests::*;
use serde_json::json;

fn main() {
    let rounds: usize = std::env::var("IOTLAN_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    if !require_all(LAN_NEEDS)
        || !require(Need::File(
            "/usr/lib/cni/macvlan",
            "apt-get install containernetworking-plugins",
        ))
    {
        return;
    }
    // (label, binary): the shipped static build first when it exists; the verdicts use the first.
    let mut builds: Vec<(&str, std::path::PathBuf)> = Vec::new();
    let shipped = std::env::var_os("IOTLAN_STATIC_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("dist/linux-amd64/iotlan"));
    if shipped.is_file() {
        builds.push(("static, as installed", shipped));
    } else {
        eprintln!(
            "note: {} is missing (scripts/build-static.sh builds it); timing the development build only",
            shipped.display()
        );
    }
    builds.push(("cargo build --release", iotlan_bin()));
    let reference = reference_plugin_dir().join("macvlan");
    let lan = Lan::new("bench");
    let pod = lan.pod("bench");
    let state = tempfile::Builder::new()
        .prefix("iotlan-bench-")
        .tempdir()
        .expect("temp dir");
    let iotlan_conf = json!({
        "cniVersion": "1.0.0", "name": "bench", "type": "iotlan", "master": NODE_IF,
        "stateDir": state.path(), "logLevel": "warn",
        "ipam": { "type": "iotlan-ipam", "subnet": SUBNET, "gateway": GATEWAY_IP,
                  "pool": ["10.77.0.100-10.77.0.150"],
                  "reservations": { "bench/pod-0": "10.77.0.10" },
                  "store": { "kind": "file", "dir": state.path() } }
    })
    .to_string();
    let mut unchecked: serde_json::Value = serde_json::from_str(&iotlan_conf).expect("conf");
    unchecked["conflictCheck"] = json!({ "enabled": false });
    let unchecked_conf = unchecked.to_string();
    let reference_conf = json!({
        "cniVersion": "1.0.0", "name": "bench-ref", "type": "macvlan", "master": NODE_IF, "mode": "bridge",
        "ipam": { "type": "static", "addresses": [{ "address": "10.77.0.10/24", "gateway": GATEWAY_IP }] }
    })
    .to_string();

    // Everything below runs in the node's namespace, as kubelet would.
    enter(&lan.node.ns.path());
    let env_of = |cid: &str, command: &str, pod_name: &str| -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), cid.into()),
            (
                "CNI_NETNS".into(),
                pod.path().to_string_lossy().into_owned(),
            ),
            ("CNI_IFNAME".into(), "net1".into()),
            (
                "CNI_PATH".into(),
                format!(
                    "{}:{}",
                    plugin_bin_dir().display(),
                    reference_plugin_dir().display()
                ),
            ),
            ("CNI_ARGS".into(), k8s_args("bench", pod_name, cid)),
        ]
    };
    let env = |cid: &str, command: &str| env_of(cid, command, "pod-0");
    let pod_path = pod.path().to_string_lossy().into_owned();
    let floor_add = [
        vec![
            "link", "add", "net1", "link", NODE_IF, "netns", &pod_path, "type", "macvlan", "mode",
            "bridge",
        ],
        vec![
            "-n",
            pod.name(),
            "addr",
            "add",
            "10.77.0.10/24",
            "dev",
            "net1",
        ],
        vec!["-n", pod.name(), "link", "set", "net1", "up"],
    ];
    let floor_del = vec!["-n", pod.name(), "link", "del", "net1"];

    let mut t = Timings {
        iotlan: vec![(Vec::new(), Vec::new()); builds.len()],
        ..Timings::default()
    };
    let warmup = 5;
    for round in 0..rounds + warmup {
        let keep = round >= warmup;
        let cid = format!("bench{round}");
        // The two builds swap slots every round: the first exec of a round runs about 0.25 ms
        // slower whichever binary it is (measured), which would otherwise fall on one build.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..builds.len()).collect()
        } else {
            (0..builds.len()).rev().collect()
        };
        for i in order {
            let bin = &builds[i].1;
            let a = exec(bin, &env(&cid, "ADD"), &iotlan_conf);
            let d = exec(bin, &env(&cid, "DEL"), &iotlan_conf);
            if keep {
                t.iotlan[i].0.push(a);
                t.iotlan[i].1.push(d);
            }
        }
        // The judged build again, for a pod that never had an address: the conflict check probes
        // its new pool address (the rounds above are the sticky restart, which is not probed).
        let fresh = format!("fresh-{round}");
        let fcid = format!("fresh{round}");
        let fa = exec(&builds[0].1, &env_of(&fcid, "ADD", &fresh), &iotlan_conf);
        exec(&builds[0].1, &env_of(&fcid, "DEL", &fresh), &iotlan_conf);
        // And with the conflict check off, to show what the probe costs.
        let oa = exec(
            &builds[0].1,
            &env_of(&fcid, "ADD", &format!("off-{round}")),
            &unchecked_conf,
        );
        exec(
            &builds[0].1,
            &env_of(&fcid, "DEL", &format!("off-{round}")),
            &unchecked_conf,
        );
        if keep {
            t.first_add.push(fa);
            t.unchecked_add.push(oa);
        }
        let ra = exec(&reference, &env(&cid, "ADD"), &reference_conf);
        let rd = exec(&reference, &env(&cid, "DEL"), &reference_conf);
        let fa: Duration = floor_add.iter().map(|args| ip(args)).sum();
        let fd = ip(&floor_del);
        if keep {
            t.ref_add.push(ra);
            t.ref_del.push(rd);
            t.floor_add.push(fa);
            t.floor_del.push(fd);
        }
    }

    // The kernel alone, without any process: the same netlink calls iotlan makes, in-process.
    let (kernel_add, kernel_del) = kernel_floor(&pod.path(), rounds);

    println!(
        "\niotlan CNI benchmark: {rounds} rounds, each an exec'd process, on one simulated LAN"
    );
    println!("{:<52} {:>10} {:>10}", "", "median", "p99");
    let mut rows: Vec<(String, &Vec<Duration>)> = Vec::new();
    for ((label, _), (add, _)) in builds.iter().zip(&t.iotlan) {
        rows.push((format!("iotlan ADD ({label})"), add));
    }
    rows.push((
        format!("iotlan ADD, first-time address, probed ({})", builds[0].0),
        &t.first_add,
    ));
    rows.push((
        format!(
            "iotlan ADD, first-time, conflictCheck off ({})",
            builds[0].0
        ),
        &t.unchecked_add,
    ));
    rows.push(("reference ADD (Debian macvlan + static)".into(), &t.ref_add));
    rows.push((
        "floor ADD (ip link add netns + addr + up)".into(),
        &t.floor_add,
    ));
    rows.push((
        "kernel ADD (same netlink calls, in-process)".into(),
        &kernel_add,
    ));
    for ((label, _), (_, del)) in builds.iter().zip(&t.iotlan) {
        rows.push((format!("iotlan DEL ({label})"), del));
    }
    rows.push(("reference DEL".into(), &t.ref_del));
    rows.push(("floor DEL (ip link del)".into(), &t.floor_del));
    rows.push(("kernel DEL (netlink, in-process)".into(), &kernel_del));
    for (name, v) in rows {
        println!("{name:<52} {:>8.2}ms {:>8.2}ms", ms(median(v)), ms(p99(v)));
    }
    let ratio = |a: &Vec<Duration>, b: &Vec<Duration>| ms(median(a)) / ms(median(b));
    println!(
        "\nthe conflict check (on by default), {}:\n  sticky restart ADD / reference ADD      = {:.3}   (not probed; target <= 0.333: {})\n  first-time address ADD / reference ADD  = {:.3}   (probed)\n  first-time, check off / reference ADD   = {:.3}\n  probe cost (first-time minus check off) = {:.1} ms (budget <= 200 ms: {})",
        builds[0].0,
        ratio(&t.iotlan[0].0, &t.ref_add),
        verdict(ratio(&t.iotlan[0].0, &t.ref_add) <= 1.0 / 3.0),
        ratio(&t.first_add, &t.ref_add),
        ratio(&t.unchecked_add, &t.ref_add),
        ms(median(&t.first_add)) - ms(median(&t.unchecked_add)),
        verdict(ms(median(&t.first_add)) - ms(median(&t.unchecked_add)) <= 200.0)
    );
    for (i, ((label, _), (add, del))) in builds.iter().zip(&t.iotlan).enumerate() {
        let add_vs_ref = ratio(add, &t.ref_add);
        let del_vs_ref = ratio(del, &t.ref_del);
        let del_vs_floor = ratio(del, &t.floor_del);
        let judged = if i == 0 { "" } else { " (not judged)" };
        println!("\nratios of medians, iotlan {label}{judged}:");
        println!(
            "  iotlan ADD / reference ADD = {add_vs_ref:.3}   (target <= 0.333: {})",
            verdict(add_vs_ref <= 1.0 / 3.0)
        );
        println!(
            "  iotlan DEL / reference DEL = {del_vs_ref:.2}   (target <= 1.00: {})",
            verdict(del_vs_ref <= 1.0)
        );
        println!(
            "  iotlan DEL / ip link del   = {del_vs_floor:.2}   (target <= 1.25: {})",
            verdict(del_vs_floor <= 1.25)
        );
    }
    cli_cost(&builds[0].1, rounds);
}

/// The operator CLI's parsing (clap) must stay off the CNI path: `main()` dispatches a
/// `CNI_COMMAND` exec before any parsing. Prints the in-process cost of one parse, and an exec of
/// the CNI VERSION verb against one of `iotlan version` (the CLI path) of the same binary.
fn cli_cost(bin: &Path, rounds: usize) {
    use clap::Parser;
    let argv = [
        "iotlan",
        "leases",
        "--config=/etc/iotlan/iot.json",
        "--json",
    ];
    let n = 2000;
    let start = Instant::now();
    for _ in 0..n {
        let cli = iotlan::cli::Cli::try_parse_from(argv).expect("parses");
        std::hint::black_box(cli);
    }
    let parse = start.elapsed() / n;
    let run = |envs: &[(&str, &str)], args: &[&str]| {
        let start = Instant::now();
        let out = Command::new(bin)
            .env_clear()
            .envs(envs.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        assert!(out.status.success(), "{} {args:?}: {out:?}", bin.display());
        start.elapsed()
    };
    let (mut cni, mut cli) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        cni.push(run(&[("CNI_COMMAND", "VERSION")], &[]));
        cli.push(run(&[], &["version"]));
    }
    println!(
        "
operator CLI parsing, kept off the CNI path ({}):",
        bin.display()
    );
    println!(
        "  one clap parse of `{}`, in-process: {:.1}us",
        argv.join(" "),
        parse.as_secs_f64() * 1e6
    );
    println!(
        "  exec CNI_COMMAND=VERSION {:.2}ms, exec `iotlan version` (CLI) {:.2}ms (medians); CLI / CNI = {:.2}",
        ms(median(&cni)),
        ms(median(&cli)),
        ms(median(&cli)) / ms(median(&cni))
    );
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

#[derive(Default)]
struct Timings {
    /// Per iotlan build: (ADD, DEL).
    iotlan: Vec<(Vec<Duration>, Vec<Duration>)>,
    /// The judged build's ADD for a pod's first address (probed), and with the check off.
    first_add: Vec<Duration>,
    unchecked_add: Vec<Duration>,
    ref_add: Vec<Duration>,
    ref_del: Vec<Duration>,
    floor_add: Vec<Duration>,
    floor_del: Vec<Duration>,
}

fn enter(ns: &Path) {
    let f = std::fs::File::open(ns).expect("open the node netns");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the node netns");
}

/// Runs one CNI call and returns how long the whole process took; panics when it fails.
fn exec(bin: &Path, env: &[(String, String)], stdin: &str) -> Duration {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .envs(env.iter().cloned())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("wait");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{} {:?} failed: {}{}",
        bin.display(),
        env.first(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn ip(args: &[&str]) -> Duration {
    let start = Instant::now();
    let out = Command::new("ip").args(args).output().expect("run ip");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// The kernel's own cost: create the macvlan directly in the pod's namespace, address it, bring it
/// up (ADD); delete it (DEL). Runs in this process through iotlan's netlink module.
fn kernel_floor(pod: &Path, rounds: usize) -> (Vec<Duration>, Vec<Duration>) {
    use iotlan::net::netlink::{ChildKind, Netlink, NewChild};
    use netlink_packet_route::link::MacVlanMode;
    use std::os::fd::AsRawFd;

    let pod_file = std::fs::File::open(pod).expect("open pod netns");
    let home = std::fs::File::open("/proc/thread-self/ns/net").expect("open own netns");
    let mut host = Netlink::open().expect("netlink");
    let master = host
        .link_by_name(NODE_IF)
        .expect("read master")
        .expect("master exists");
    nix::sched::setns(&pod_file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter pod");
    let mut inside = Netlink::open().expect("netlink in pod");
    nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET).expect("return");
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        host.create_child(&NewChild {
            name: "net1",
            master_index: master.index,
            kind: ChildKind::Macvlan(MacVlanMode::Bridge),
            mac: None,
            mtu: None,
            netns_fd: Some(pod_file.as_raw_fd()),
        })
        .expect("create");
        let link = inside.link_by_name("net1").expect("read").expect("exists");
        inside
            .add_address(link.index, "10.77.0.10/24".parse().expect("cidr"), true)
            .expect("addr");
        inside.set_up(link.index).expect("up");
        adds.push(start.elapsed());
        let start = Instant::now();
        inside.delete_link(link.index).expect("delete");
        dels.push(start.elapsed());
    }
    (adds, dels)
}

fn sorted(v: &[Duration]) -> Vec<Duration> {
    let mut s = v.to_vec();
    s.sort();
    s
}

fn median(v: &[Duration]) -> Duration {
    let s = sorted(v);
    s[s.len() / 2]
}

fn p99(v: &[Duration]) -> Duration {
    let s = sorted(v);
    s[((s.len() as f64 * 0.99).ceil() as usize)
        .saturating_sub(1)
        .min(s.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
