//! The kubernetes store's ADD as a runtime sees it (one `iotlan-ipam` process per ADD), this build
//! against an earlier one, in one run: each binary gets its own API server double holding 100
//! address Leases that it wrote itself, then first-time ADDs (each followed by its DEL, so the
//! namespace stays at 100) alternate between the two. It prints wall time per ADD (p50, p90) and the
//! requests per ADD each layout made.
//!
//! The earlier binary comes from `IOTLAN_BEFORE_BIN` (an `iotlan-ipam` or the one `iotlan`
//! executable; it is run under the name `iotlan-ipam`), for example one built from the commit
//! before the by-name layout (`git worktree add /tmp/before 399f9b4 && cargo build --release
//! --features kubernetes` there). Without it only this build is measured.
//!
//! Run: `IOTLAN_BEFORE_BIN=... cargo bench -p iotlan --bench kubernetes_add`. Loopback double, no
//! root: the figures are the process's and the client's, not a real API server's.

use iotlan_apiserver_double as apiserver;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::ApiServer;
use serde_json::json;

const NS: &str = "iotlan-system";
const TOKEN: &str = "bench";
const EXISTING: usize = 100;
const ROUNDS: usize = 60;

struct Subject {
    name: &'static str,
    bin: PathBuf,
    server: ApiServer,
    conf: String,
    add_times: Vec<Duration>,
    add_requests: Vec<usize>,
}

impl Subject {
    fn new(name: &'static str, bin: PathBuf, dir: &Path) -> Subject {
        let server = ApiServer::start();
        server.set_token(Some(TOKEN));
        let sub = dir.join(name);
        std::fs::create_dir_all(&sub).expect("dir");
        let kubeconfig = server.kubeconfig(&sub, "default", TOKEN);
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "iot",
            "type": "iotlan-ipam",
            "ipam": {
                "type": "iotlan-ipam",
                "subnet": "10.20.0.0/16",
                "gateway": "10.20.0.1",
                "pool": ["10.20.0.10-10.20.255.250"],
                "store": { "kind": "kubernetes", "namespace": NS, "kubeconfig": kubeconfig }
            }
        });
        // This build keeps its node-local records in the bench's dir; the layout before them
        // refuses the key.
        if name != "before" {
            conf["ipam"]["store"]["stateDir"] = json!(sub.join("state"));
        }
        let conf = conf.to_string();
        Subject {
            name,
            bin,
            server,
            conf,
            add_times: Vec::new(),
            add_requests: Vec::new(),
        }
    }

    fn exec(&self, verb: &str, pod: &str) -> Duration {
        let start = Instant::now();
        let mut child = Command::new(&self.bin)
            .env_clear()
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", format!("c-{pod}"))
            .env("CNI_NETNS", "/var/run/netns/bench")
            .env("CNI_IFNAME", "net1")
            .env("CNI_PATH", "/opt/cni/bin")
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=true;K8S_POD_NAMESPACE=apps;K8S_POD_NAME={pod}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.display()));
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(self.conf.as_bytes()).expect("stdin");
        }
        let out = child.wait_with_output().expect("wait");
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "{} {verb} {pod}: {} {}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        took
    }

    fn populate(&self) {
        for i in 0..EXISTING {
            self.exec("ADD", &format!("live-{i}"));
        }
    }

    fn round(&mut self, i: usize) {
        let pod = format!("new-{i}");
        let before = self.server.requests().len();
        self.add_times.push(self.exec("ADD", &pod));
        self.add_requests
            .push(self.server.requests().len() - before);
        self.exec("DEL", &pod);
    }
}

/// The `iotlan-ipam` name for `bin` (a symlink in `dir` when it has another name).
fn as_ipam(bin: &Path, dir: &Path, tag: &str) -> PathBuf {
    if bin.file_name().and_then(|n| n.to_str()) == Some("iotlan-ipam") {
        return bin.to_path_buf();
    }
    let d = dir.join(format!("bin-{tag}"));
    std::fs::create_dir_all(&d).expect("dir");
    let link = d.join("iotlan-ipam");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(bin, &link).expect("symlink");
    link
}

fn pct(v: &[Duration], p: usize) -> f64 {
    let mut s: Vec<Duration> = v.to_vec();
    s.sort();
    s[(s.len() * p / 100).min(s.len() - 1)].as_secs_f64() * 1000.0
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = PathBuf::from(env!("CARGO_BIN_EXE_iotlan-ipam"));
    let mut subjects = vec![Subject::new("this build", now, dir.path())];
    match std::env::var_os("IOTLAN_BEFORE_BIN") {
        Some(b) => {
            let before = as_ipam(Path::new(&b), dir.path(), "before");
            subjects.insert(0, Subject::new("before", before, dir.path()));
        }
        None => println!("IOTLAN_BEFORE_BIN is not set: measuring this build only"),
    }
    for s in &subjects {
        s.populate();
    }
    // Interleaved, alternating which goes first, so drift on a noisy machine hits both alike.
    for i in 0..ROUNDS {
        let n = subjects.len();
        for k in 0..n {
            let j = if i % 2 == 0 { k } else { n - 1 - k };
            subjects[j].round(i);
        }
    }
    println!(
        "kubernetes store, one iotlan-ipam process per ADD, {EXISTING} address Leases in the namespace, {ROUNDS} first-time ADDs each (interleaved)"
    );
    println!(
        "{:<12} {:>10} {:>10} {:>14}",
        "binary", "ADD p50 ms", "ADD p90 ms", "requests/ADD"
    );
    for s in &subjects {
        let reqs = s.add_requests.iter().sum::<usize>() as f64 / s.add_requests.len() as f64;
        println!(
            "{:<12} {:>10.2} {:>10.2} {:>14.1}",
            s.name,
            pct(&s.add_times, 50),
            pct(&s.add_times, 90),
            reqs
        );
    }
    if subjects.len() == 2 {
        println!(
            "ratio this build / before: p50 {:.2}, p90 {:.2}",
            pct(&subjects[1].add_times, 50) / pct(&subjects[0].add_times, 50),
            pct(&subjects[1].add_times, 90) / pct(&subjects[0].add_times, 90)
        );
    }
}
