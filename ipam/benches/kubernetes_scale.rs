//! The kubernetes store's cost as the namespace grows: requests per ADD and DEL, bytes read per ADD,
//! and ADD latency at 1, 50 and 200 concurrent ADDs, with 100, 1,000 and 5,000 existing Leases, 40 %
//! of them stale sticky identity records (pods long gone). Against the API server double
//! (`tests/apiserver`) on loopback: the latencies are the client's and the double's,
//! not a real API server's; what must hold is that no column grows with the Leases.
//!
//! Each ADD opens its own store (its own kubeconfig read, runtime and connection), as one plugin
//! process per ADD does. Run: `cargo bench -p iotlan-ipam --features kubernetes --bench kubernetes_scale`.

use iotlan_apiserver_double as apiserver;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use apiserver::ApiServer;
use iotlan_ipam::store::kubernetes::{objects, KubernetesStore};
use iotlan_ipam::{AllocRequest, Attachment, Lease, Pool, PoolConfig, Store, StoreConfig};

const NS: &str = "iotlan-system";
const TOKEN: &str = "bench";

fn pool() -> Pool {
    let cfg: PoolConfig = serde_json::from_value(serde_json::json!({
        "type": "iotlan-ipam",
        "subnet": "10.20.0.0/16",
        "gateway": "10.20.0.1",
        "pool": ["10.20.0.10-10.20.255.250"]
    }))
    .expect("pool config");
    Pool::new("iot", &cfg).expect("pool")
}

fn config(kubeconfig: &Path, state: &Path) -> StoreConfig {
    serde_json::from_value(serde_json::json!({
        "kind": "kubernetes", "namespace": NS, "kubeconfig": kubeconfig, "stateDir": state
    }))
    .expect("store config")
}

fn req(identity: &str, cid: &str) -> AllocRequest {
    AllocRequest {
        identity: identity.into(),
        attachment: Attachment::new(cid, "net1"),
        ..AllocRequest::default()
    }
}

/// `n` Leases: 60 % address objects of live pods, 40 % stale identity records.
fn populate(server: &ApiServer, n: usize) {
    let stale = n * 2 / 5;
    for i in 0..n - stale {
        let ip = IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(10, 20, 1, 0)) + i as u32,
        ));
        let l = Lease {
            ip,
            identity: format!("apps/live-{i}"),
            container_id: format!("{i:064x}"),
            ifname: "net1".into(),
            node: Some("node-a".into()),
            created_unix: 1_700_000_000,
            sandbox: Default::default(),
        };
        let obj = objects::address_object("iot", "iot", NS, &l);
        server.put_lease(NS, serde_json::to_value(obj).expect("json"));
    }
    for i in 0..stale {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 20, 200, (i % 200) as u8));
        let obj = objects::identity_object("iot", "iot", NS, &format!("rolled/web-{i}"), &[ip]);
        server.put_lease(NS, serde_json::to_value(obj).expect("json"));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// `k` ADDs at once, each in its own store; returns their latencies, sorted.
fn concurrent_adds(cfg: &StoreConfig, pool: &Pool, k: usize, round: &str) -> Vec<Duration> {
    let barrier = Barrier::new(k);
    let mut out: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..k)
            .map(|i| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    let s = KubernetesStore::open("iot", cfg).expect("open");
                    s.allocate(
                        pool,
                        &req(&format!("bench/{round}-{i}"), &format!("{round}{i}")),
                    )
                    .expect("ADD");
                    t.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    out.sort();
    out
}

fn main() {
    let pool = pool();
    println!(
        "| Leases | req/ADD | req/DEL | bytes/ADD | Leases scanned per DEL by label LIST (previous layout) | ADD p50 / p99 ms, 1 | 50 concurrent | 200 concurrent |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in [100usize, 1_000, 5_000] {
        let server = ApiServer::start();
        server.set_token(Some(TOKEN));
        populate(&server, n);
        let dir = tempfile::tempdir().expect("tempdir");
        let kc = server.kubeconfig(dir.path(), NS, TOKEN);
        let cfg = config(&kc, &dir.path().join("state"));
        let s = KubernetesStore::open("iot", &cfg).expect("open");
        // Requests and bytes of one first-time ADD and its DEL (median of 20).
        let (mut add_req, mut add_bytes, mut del_req) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..20 {
            let id = format!("count/pod-{i}");
            let m = server.mark();
            s.allocate(&pool, &req(&id, &format!("c{i}"))).expect("ADD");
            let v = server.verbs_since(m);
            add_req.push(v.total);
            add_bytes.push(v.bytes);
            let m = server.mark();
            s.release_for(&id, &Attachment::new(format!("c{i}"), "net1"))
                .expect("DEL");
            del_req.push(server.verbs_since(m).total);
        }
        for v in [&mut add_req, &mut add_bytes, &mut del_req] {
            v.sort();
        }
        // The DEL of the previous layout (and of a caller without the identity): a label LIST.
        s.allocate(&pool, &req("count/listed", "listed"))
            .expect("ADD");
        // A store without this node's records: it has nothing but the attachment to go by.
        let elsewhere = config(&kc, &dir.path().join("elsewhere"));
        let other = KubernetesStore::open("iot", &elsewhere).expect("open");
        let m = server.mark();
        other
            .release(&Attachment::new("listed", "net1"))
            .expect("DEL");
        let listed = server.verbs_since(m).scanned;
        // Warm-up: the first connection of a run pays for more than the ADD.
        concurrent_adds(&cfg, &pool, 1, "warm");
        let mut cells = Vec::new();
        for (k, rounds) in [(1usize, 50usize), (50, 2), (200, 1)] {
            let mut all = Vec::new();
            for r in 0..rounds {
                all.extend(concurrent_adds(&cfg, &pool, k, &format!("k{k}r{r}x")));
            }
            all.sort();
            cells.push(format!(
                "{:.1} / {:.1}",
                percentile(&all, 0.5),
                percentile(&all, 0.99)
            ));
        }
        println!(
            "| {n} | {} | {} | {} | {listed} | {} | {} | {} |",
            add_req[10], del_req[10], add_bytes[10], cells[0], cells[1], cells[2]
        );
    }
}
