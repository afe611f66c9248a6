//! `iotlan status` and `iotlan leases`: who holds which address (pod, container, node), how many are
//! free, and which driver each master uses on this node. Reads the file store under the state
//! directory, or any store (also the cluster's) through the configs given with `--config`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iotlan_ipam::{FileStore, Lease, Store};
use serde_json::{json, Value};

use super::access;
use super::args::StoreArgs;
use crate::config::NetConf;
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

/// Runs `status` or `leases`; returns the exit code.
pub fn run(view: View, args: &StoreArgs) -> i32 {
    match report(args) {
        Ok(r) => {
            if args.json {
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

/// A config's bytes, from a file or stdin (`-`).
fn read_config(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("cannot read the config from stdin", e))?;
        return Ok(bytes);
    }
    std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))
}

/// `conf` with its kubernetes store pointed at `kubeconfig` (the CLI's choice, see
/// [`access::kubeconfig`]); other stores are left as they are.
fn with_kubeconfig(conf: &[u8], kubeconfig: &Path) -> Result<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(conf)
        .map_err(|e| Error::InvalidConfig(format!("config is not JSON: {e}")))?;
    if let Some(store) = v
        .pointer_mut("/ipam/store")
        .and_then(Value::as_object_mut)
        .filter(|s| s.get("kind").and_then(Value::as_str) == Some("kubernetes"))
    {
        store.insert(
            "kubeconfig".into(),
            Value::String(kubeconfig.to_string_lossy().into_owned()),
        );
    }
    serde_json::to_vec(&v).map_err(|e| Error::InvalidConfig(format!("config: {e}")))
}

/// The whole picture as JSON (the `--json` output).
fn report(o: &StoreArgs) -> Result<Value> {
    let state_dir = o
        .state_dir
        .clone()
        .unwrap_or_else(access::default_state_dir);
    let mut networks = Vec::new();
    if o.configs.is_empty() {
        for (name, dir) in file_store_networks(&state_dir) {
            let store = FileStore::open(&dir, Duration::from_secs(10))?;
            networks.push(network_json(&name, None, &store.leases()?));
        }
    } else {
        // Decided once, and only when a config asks for a kubernetes store.
        let mut kubeconfig: Option<access::Kubeconfig> = None;
        for path in &o.configs {
            let mut bytes = read_config(path)?;
            if is_kubernetes_store(&bytes) {
                if kubeconfig.is_none() {
                    kubeconfig = Some(access::kubeconfig(o.kubeconfig.as_deref())?);
                }
                if let Some(p) = kubeconfig.as_ref().and_then(access::Kubeconfig::path) {
                    bytes = with_kubeconfig(&bytes, p)?;
                }
            }
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
    let drivers: Vec<Value> = memory::all(&state_dir)
        .into_iter()
        .map(|(master, r)| json!({ "master": master, "driver": r.driver, "reason": r.reason, "sinceUnix": r.since_unix }))
        .collect();
    Ok(json!({ "node": access::node_name(), "networks": networks, "drivers": drivers }))
}

fn is_kubernetes_store(conf: &[u8]) -> bool {
    serde_json::from_slice::<Value>(conf)
        .ok()
        .and_then(|v| v.pointer("/ipam/store/kind").cloned())
        .is_some_and(|k| k == "kubernetes")
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
    let node = r["node"].as_str().unwrap_or("?");
    let mut s = format!("node {node}\n");
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
                "\nnetwork {name}: {} held, {free} free of {size}\n",
                n["held"]
            )),
            _ => s.push_str(&format!("\nnetwork {name}: {} held\n", n["held"])),
        }
        let leases = n["leases"].as_array().cloned().unwrap_or_default();
        if leases.is_empty() || (view == View::Status && leases.len() > 20) {
            continue;
        }
        let mut rows = vec![[
            "ADDRESS",
            "NAMESPACE/POD",
            "CONTAINER",
            "IFNAME",
            "NODE",
            "AGE",
        ]
        .map(String::from)];
        for l in &leases {
            let age = now.saturating_sub(l["createdUnix"].as_u64().unwrap_or(now));
            rows.push([
                l["ip"].as_str().unwrap_or("?").to_string(),
                // Without Kubernetes (podman, ctr, cnitool) the identity is the container ID.
                l["identity"].as_str().unwrap_or("?").to_string(),
                short(l["containerId"].as_str().unwrap_or("?")).to_string(),
                l["ifname"].as_str().unwrap_or("?").to_string(),
                l["node"].as_str().unwrap_or(node).to_string(),
                human(age),
            ]);
        }
        s.push_str(&table(&rows));
    }
    let drivers = r["drivers"].as_array().cloned().unwrap_or_default();
    s.push_str(&format!("\ndrivers on node {node}:"));
    if drivers.is_empty() {
        s.push_str(" none chosen yet\n");
    } else {
        s.push('\n');
        let mut rows = vec![["MASTER", "DRIVER", "CHOSEN", "WHY"].map(String::from)];
        for d in drivers {
            let since = now.saturating_sub(d["sinceUnix"].as_u64().unwrap_or(now));
            rows.push([
                d["master"].as_str().unwrap_or("?").to_string(),
                d["driver"].as_str().unwrap_or("?").to_string(),
                human(since),
                d["reason"].as_str().unwrap_or("").to_string(),
            ]);
        }
        s.push_str(&table(&rows));
    }
    s
}

/// Rows as left-aligned columns two spaces apart, as kubectl prints them.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < N {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_name_address_pod_container_ifname_node_and_the_drivers() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let r = json!({
            "node": "pi-1",
            "networks": [{ "network": "iot", "held": 1, "size": 40, "free": 39, "leases": [{
                "ip": "192.168.20.200", "identity": "home-assistant/home-assistant-0",
                "containerId": "0123456789abcdef", "ifname": "net1", "node": "pi-2",
                "createdUnix": now - 90 }] }],
            "drivers": [{ "master": "eth0", "driver": "ipvlan", "reason": "probe: no ARP reply" }],
        });
        let text = render(View::Leases, &r);
        let header = text
            .lines()
            .find(|l| l.starts_with("ADDRESS"))
            .expect("header");
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            [
                "ADDRESS",
                "NAMESPACE/POD",
                "CONTAINER",
                "IFNAME",
                "NODE",
                "AGE"
            ]
        );
        let row = text
            .lines()
            .find(|l| l.starts_with("192.168.20.200"))
            .expect("row");
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            [
                "192.168.20.200",
                "home-assistant/home-assistant-0",
                "0123456789ab",
                "net1",
                "pi-2",
                "90s",
                "ago"
            ]
        );
        assert!(
            text.contains("network iot: 1 held, 39 free of 40"),
            "{text}"
        );
        let drv = text
            .lines()
            .find(|l| l.starts_with("eth0"))
            .expect("driver row");
        assert_eq!(
            drv.split_whitespace().take(2).collect::<Vec<_>>(),
            ["eth0", "ipvlan"]
        );
    }

    #[test]
    fn only_a_kubernetes_store_gets_the_chosen_kubeconfig() {
        let kube =
            br#"{"name":"iot","ipam":{"store":{"kind":"kubernetes","kubeconfig":"/etc/x"}}}"#;
        let out: Value =
            serde_json::from_slice(&with_kubeconfig(kube, Path::new("/k")).expect("json"))
                .expect("json");
        assert_eq!(out["ipam"]["store"]["kubeconfig"], "/k");
        assert!(is_kubernetes_store(kube));
        let file = br#"{"name":"iot","ipam":{"store":{"kind":"file"}}}"#;
        let out: Value =
            serde_json::from_slice(&with_kubeconfig(file, Path::new("/k")).expect("json"))
                .expect("json");
        assert!(out["ipam"]["store"].get("kubeconfig").is_none());
        assert!(!is_kubernetes_store(file));
    }
}
