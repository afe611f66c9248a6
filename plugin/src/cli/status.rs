//! `iotlan status` and `iotlan leases`: who holds which address (pod, container, node), how many are
//! free, and which driver each master uses on this node. Reads the file store under the state
//! directory, or any store (also the cluster's) through the configs given with `--config`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iotlan_ipam::{FileStore, Lease, Store};
use serde_json::{json, Value};

use crate::config::{NetConf, DEFAULT_STATE_DIR};
use crate::driver::memory;
use crate::error::{Error, Result};

/// What to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Networks, free counts, drivers.
    Status,
    /// Every lease.
    Leases,
}

struct Options {
    configs: Vec<PathBuf>,
    state_dir: PathBuf,
    json: bool,
}

fn parse(args: &[String]) -> std::result::Result<Options, String> {
    let mut o = Options {
        configs: Vec::new(),
        state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        json: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => o.json = true,
            "--config" => o
                .configs
                .push(it.next().ok_or("--config needs a file")?.into()),
            "--state-dir" => o.state_dir = it.next().ok_or("--state-dir needs a directory")?.into(),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(o)
}

/// Runs the command; returns the exit code.
pub fn run(view: View, args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("iotlan: {e}\nusage: iotlan status|leases [--config FILE]... [--state-dir DIR] [--json]");
            return 2;
        }
    };
    match report(&o) {
        Ok(r) => {
            if o.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", render(view, &r));
            }
            0
        }
        Err(e) => {
            eprintln!("iotlan: {e}");
            1
        }
    }
}

/// The whole picture as JSON (the `--json` output).
fn report(o: &Options) -> Result<Value> {
    let mut networks = Vec::new();
    if o.configs.is_empty() {
        for (name, dir) in file_store_networks(&o.state_dir) {
            let store = FileStore::open(&dir, Duration::from_secs(10))?;
            networks.push(network_json(&name, None, &store.leases()?));
        }
    } else {
        for path in &o.configs {
            let bytes = std::fs::read(path)
                .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
            let conf = NetConf::parse(&bytes)?;
            let (pool, store) = crate::ipam::open_pool(&conf.name, &conf.ipam)?;
            let leases = store.leases()?;
            networks.push(network_json(
                &conf.name,
                Some((pool.size(), pool.free(&leases))),
                &leases,
            ));
        }
    }
    let drivers: Vec<Value> = memory::all(&o.state_dir)
        .into_iter()
        .map(|(master, r)| json!({ "master": master, "driver": r.driver, "reason": r.reason, "sinceUnix": r.since_unix }))
        .collect();
    Ok(json!({ "node": crate::master::hostname(), "networks": networks, "drivers": drivers }))
}

fn network_json(name: &str, sizes: Option<(u64, u64)>, leases: &[Lease]) -> Value {
    let mut n = json!({ "network": name, "held": leases.len(), "leases": leases });
    if let Some((size, free)) = sizes {
        n["size"] = json!(size);
        n["free"] = json!(free);
    }
    n
}

/// Pool directories under the file store's base directory (`_drivers` and other non-network
/// entries are skipped: network names cannot start with '_').
fn file_store_networks(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            crate::config::validate_network_name(&name)
                .ok()
                .map(|_| (name, e.path()))
        })
        .collect();
    out.sort();
    out
}

fn render(view: View, r: &Value) -> String {
    let mut s = format!("node {}\n", r["node"].as_str().unwrap_or("?"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let networks = r["networks"].as_array().cloned().unwrap_or_default();
    if networks.is_empty() {
        s.push_str("no networks have leases here (give --config to read a cluster store)\n");
    }
    for n in &networks {
        let name = n["network"].as_str().unwrap_or("?");
        match (n["size"].as_u64(), n["free"].as_u64()) {
            (Some(size), Some(free)) => s.push_str(&format!(
                "network {name}: {} held, {free} free of {size}\n",
                n["held"]
            )),
            _ => s.push_str(&format!("network {name}: {} held\n", n["held"])),
        }
        if view == View::Leases || n["held"].as_u64().unwrap_or(0) <= 20 {
            for l in n["leases"].as_array().into_iter().flatten() {
                let age = now.saturating_sub(l["createdUnix"].as_u64().unwrap_or(now));
                s.push_str(&format!(
                    "  {:<39} {:<40} container {} {} node {} ({})\n",
                    l["ip"].as_str().unwrap_or("?"),
                    l["identity"].as_str().unwrap_or("?"),
                    short(l["containerId"].as_str().unwrap_or("?")),
                    l["ifname"].as_str().unwrap_or("?"),
                    l["node"].as_str().unwrap_or("-"),
                    human(age)
                ));
            }
        }
    }
    if view == View::Status {
        let drivers = r["drivers"].as_array().cloned().unwrap_or_default();
        if drivers.is_empty() {
            s.push_str("drivers: none chosen yet on this node\n");
        }
        for d in drivers {
            s.push_str(&format!(
                "master {}: {} ({})\n",
                d["master"].as_str().unwrap_or("?"),
                d["driver"].as_str().unwrap_or("?"),
                d["reason"].as_str().unwrap_or("")
            ));
        }
    }
    s
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}
