//! `iotlan status` and `iotlan leases`: who holds which address (pod, container, node), how many are
//! free, which driver each master uses on this node, the addresses another LAN device answered for
//! (the conflict check's node-local records, [`crate::ipam::conflict`]), and, for a kubernetes store, the
//! duplicate addresses the node agents reported as `DuplicateAddress` Events. Reads the file store
//! under the state directory, or any store (also the cluster's) through the configs given with
//! `--config`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[cfg(feature = "kubernetes")]
use iotlan_ipam::StoreConfig;
use iotlan_ipam::{FileStore, Lease, Pool, PoolConfig, Store};
use serde_json::{json, Value};

use super::access;
#[cfg(feature = "kubernetes")]
use super::access::Cluster;
/// Without the kubernetes store there is no cluster to reach.
#[cfg(not(feature = "kubernetes"))]
type Cluster = ();
use super::args::StoreArgs;
use crate::config::NetConf;
use crate::error::{Error, Result};
use crate::ipam::conflict;
use crate::link::memory;

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

/// The whole picture as JSON (the `--json` output).
fn report(o: &StoreArgs) -> Result<Value> {
    let state_dir = o
        .state_dir
        .clone()
        .unwrap_or_else(access::default_state_dir);
    // Conflicts are node-local files: where there is no state dir (a workstation) they cannot be
    // read, which is not the same as none.
    let conflicts_here = state_dir.is_dir();
    let conflicts_of = |network: &str| -> Value {
        if conflicts_here {
            conflicts_json(&state_dir, network)
        } else {
            Value::Null
        }
    };
    let mut networks = Vec::new();
    if o.configs.is_empty() {
        for (name, dir) in file_store_networks(&state_dir) {
            let store = FileStore::open(&dir, Duration::from_secs(10))?;
            let mut n = network_json(&name, None, &store.leases()?);
            n["unreadable"] = json!(store.unreadable()?);
            n["conflicts"] = conflicts_of(&name);
            networks.push(n);
        }
        // Conflicts of a network whose leases are not in a file store here (a cluster store).
        for name in conflict::networks(&state_dir) {
            if !networks.iter().any(|n| n["network"] == name.as_str()) {
                networks.push(json!({ "network": name, "conflicts": conflicts_of(&name) }));
            }
        }
    } else {
        // Decided once, and only when a config asks for a kubernetes store.
        let mut cluster = None;
        for path in &o.configs {
            // A NAD's config may be a conflist (iotlan, then tuning): each iotlan plugin in it.
            for bytes in crate::config::iotlan_plugins(&read_config(path)?)? {
                let conf = NetConf::parse(&bytes)?;
                networks.push(network_of_config(&conf, o, &mut cluster, &conflicts_of)?);
            }
        }
    }
    let drivers: Vec<Value> = memory::all(&state_dir)
        .into_iter()
        .map(|(master, r)| json!({ "master": master, "driver": r.driver, "reason": r.reason, "sinceUnix": r.since_unix }))
        .collect();
    let shims: Vec<Value> = crate::link::shim::records(&state_dir)
        .iter()
        .filter_map(|r| serde_json::to_value(r).ok())
        .collect();
    Ok(json!({
        "node": access::node_name(),
        "stateDir": state_dir,
        "conflictsReadable": conflicts_here,
        "networks": networks,
        "drivers": drivers,
        "shims": shims,
    }))
}

/// One network's part of the report, from one plugin's config. `cluster`: how a kubernetes store
/// reaches its API server, decided at the first one ([`access::cluster`]).
fn network_of_config(
    conf: &NetConf,
    o: &StoreArgs,
    cluster: &mut Option<Cluster>,
    conflicts_of: &dyn Fn(&str) -> Value,
) -> Result<Value> {
    let cfg: PoolConfig = serde_json::from_value(conf.ipam.clone())
        .map_err(|e| Error::InvalidConfig(format!("ipam: {e}")))?;
    let pool = Pool::new(&conf.name, &cfg)?;
    #[cfg(not(feature = "kubernetes"))]
    let _ = (o, &cluster);
    let (store, duplicates) = match cfg.store.kind.as_str() {
        #[cfg(feature = "kubernetes")]
        "kubernetes" => kubernetes_store(&conf.name, &cfg.store, o, cluster)?,
        // (Without the kubernetes store, the pool's error says so.)
        _ => (
            iotlan_ipam::open_store(&conf.name, &cfg.store, &pool)?,
            None,
        ),
    };
    let leases = store.leases()?;
    let mut n = network_json(&conf.name, Some((pool.size(), pool.free(&leases))), &leases);
    n["unreadable"] = json!(store.unreadable()?);
    n["conflicts"] = conflicts_of(&conf.name);
    if let Some(duplicates) = duplicates {
        // The leases are the command's answer; a failure to read the Events is shown
        // beside them, not instead of them.
        match duplicates {
            Ok(d) => n["duplicates"] = d,
            Err(e) => {
                let why = format!("cannot list the DuplicateAddress Events: {e}");
                tracing::warn!(network = %conf.name, "{why}");
                n["duplicates"] = Value::Null;
                n["duplicatesError"] = json!(why);
            }
        }
    }
    Ok(n)
}

/// A network's store, and for a kubernetes store the duplicate addresses the node agents reported
/// for it (or why they cannot be read).
type StoreAndDuplicates = (Box<dyn Store>, Option<Result<Value>>);

/// A kubernetes store of `network` reached as the CLI decides ([`access::cluster`]), and the
/// duplicate addresses the node agents reported for it (or why they cannot be read).
#[cfg(feature = "kubernetes")]
fn kubernetes_store(
    network: &str,
    cfg: &StoreConfig,
    o: &StoreArgs,
    cluster: &mut Option<Cluster>,
) -> Result<StoreAndDuplicates> {
    use iotlan_ipam::store::kubernetes::{KubernetesStore, Settings};
    let settings = Settings::from_config(cfg)?;
    let cluster = match cluster {
        Some(c) => c,
        None => cluster.insert(access::cluster(o.kubeconfig.as_deref())?),
    };
    let store = match cluster {
        Cluster::Config(config) => {
            KubernetesStore::connect(network, settings, config.as_ref().clone())?
        }
        Cluster::StoreDefault => KubernetesStore::with_settings(network, settings)?,
    };
    let duplicates =
        iotlan_agent::events::recent_duplicates(store.conn(), store.namespace(), network)
            .map_err(Error::from)
            .and_then(|found| {
                serde_json::to_value(found)
                    .map_err(|e| Error::Decode(format!("duplicate reports: {e}")))
            });
    Ok((Box::new(store), Some(duplicates)))
}

/// The conflicts of `network` recorded under `state_dir` within the hold, with when each stops
/// being avoided.
fn conflicts_json(state_dir: &Path, network: &str) -> Value {
    Value::Array(
        conflict::recent(state_dir, network)
            .into_iter()
            .map(|c| {
                json!({
                    "ip": c.ip.to_string(),
                    "mac": c.mac,
                    "seenUnix": c.seen_unix,
                    "avoidedUntilUnix": c.avoided_until_unix(),
                    "identity": c.identity,
                })
            })
            .collect(),
    )
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

mod render;

use render::render;

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

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

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn args(state_dir: &Path, configs: Vec<PathBuf>) -> StoreArgs {
        StoreArgs {
            configs,
            state_dir: Some(state_dir.to_path_buf()),
            kubeconfig: None,
            json: false,
        }
    }

    #[test]
    fn recorded_conflicts_are_in_the_status_table_and_the_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        FileStore::open(&dir.path().join("iot"), Duration::from_secs(1)).expect("file store");
        let now = unix_now();
        let seen = conflict::Conflict {
            ip: "192.168.20.215".parse().expect("ip"),
            mac: "aa:bb:cc:00:11:22".into(),
            seen_unix: now - 150,
            identity: "iot/esphome-0".into(),
        };
        conflict::record(dir.path(), "iot", &seen).expect("record");
        // A network whose leases are in a cluster store: no file store here, its conflicts still are.
        let other = conflict::Conflict {
            ip: "10.9.0.7".parse().expect("ip"),
            mac: "02:00:00:00:00:07".into(),
            identity: "media/jellyfin-0".into(),
            ..seen.clone()
        };
        conflict::record(dir.path(), "cluster", &other).expect("record");

        let r = report(&args(dir.path(), Vec::new())).expect("report");
        assert_eq!(r["conflictsReadable"], true);
        let net = |name: &str| {
            r["networks"]
                .as_array()
                .and_then(|a| a.iter().find(|n| n["network"] == name))
                .cloned()
                .unwrap_or_else(|| panic!("no network {name} in {r:#}"))
        };
        let iot = net("iot");
        assert_eq!(iot["conflicts"].as_array().map(Vec::len), Some(1), "{r:#}");
        assert_eq!(iot["conflicts"][0]["ip"], "192.168.20.215");
        assert_eq!(iot["conflicts"][0]["mac"], "aa:bb:cc:00:11:22");
        assert_eq!(iot["conflicts"][0]["seenUnix"], now - 150);
        assert_eq!(
            iot["conflicts"][0]["avoidedUntilUnix"],
            now - 150 + conflict::HOLD.as_secs()
        );
        assert_eq!(net("cluster")["conflicts"][0]["mac"], "02:00:00:00:00:07");

        let text = render(View::Status, &r);
        assert!(
            text.contains("conflicts on node ") && text.contains("MAC"),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.starts_with("192.168.20.215"))
            .unwrap_or_else(|| panic!("no conflict row in\n{text}"));
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            [
                "192.168.20.215",
                "aa:bb:cc:00:11:22",
                "2m",
                "ago",
                "in",
                "7m",
                "iot/esphome-0"
            ],
            "{text}"
        );
        assert!(
            text.contains("network cluster: no file store here"),
            "{text}"
        );
        assert!(text.contains("10.9.0.7"), "{text}");
    }

    #[test]
    fn without_the_nodes_state_dir_conflicts_are_unknown_not_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("nad.json");
        let store = dir.path().join("store");
        std::fs::write(
            &conf,
            json!({
                "cniVersion": "1.0.0", "name": "iot", "type": "iotlan",
                "ipam": { "type": "iotlan-ipam", "subnet": "192.168.20.0/24",
                          "pool": ["192.168.20.200-192.168.20.209"],
                          "store": { "kind": "file", "dir": store } }
            })
            .to_string(),
        )
        .expect("write");
        let away = dir.path().join("not-a-node");
        let r = report(&args(&away, vec![conf])).expect("report");
        assert_eq!(r["conflictsReadable"], false);
        assert!(r["networks"][0]["conflicts"].is_null(), "{r:#}");
        let text = render(View::Status, &r);
        assert!(
            text.contains("conflicts: not readable here") && text.contains("not-a-node"),
            "{text}"
        );
        assert!(!text.contains("conflicts on node"), "{text}");
    }
}
