//! The text form of the status report (the `--json` form is the report itself).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::View;
use crate::ipam::conflict;

pub fn render(view: View, r: &Value) -> String {
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
        match (n["held"].as_u64(), n["size"].as_u64(), n["free"].as_u64()) {
            (Some(held), Some(size), Some(free)) => s.push_str(&format!(
                "\nnetwork {name}: {held} held, {free} free of {size}\n"
            )),
            (Some(held), _, _) => s.push_str(&format!("\nnetwork {name}: {held} held\n")),
            (None, _, _) => s.push_str(&format!(
                "\nnetwork {name}: no file store here (give --config to read its store)\n"
            )),
        }
        let leases = n["leases"].as_array().cloned().unwrap_or_default();
        if !leases.is_empty() && (view == View::Leases || leases.len() <= 20) {
            s.push_str(&leases_table(&leases, node, now));
        }
        s.push_str(&unreadable_section(n));
        s.push_str(&conflicts_section(r, n, node, now));
        s.push_str(&duplicates_section(n, now));
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
    s.push_str(&shims_section(r, node));
    s
}

/// Store records that cannot be read: each named, to fix or remove by hand. DEL skips them (a
/// corrupt lease keeps its address held); GC reports them too.
fn unreadable_section(n: &Value) -> String {
    let bad = n["unreadable"].as_array().cloned().unwrap_or_default();
    if bad.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "unreadable records ({}; skipped, an unreadable lease keeps its address held; fix or remove each):\n",
        bad.len()
    );
    for b in bad {
        s.push_str(&format!("  {}\n", b.as_str().unwrap_or("?")));
    }
    s
}

/// The hostShim links on this node (`crate::link::shim`), when there are any.
fn shims_section(r: &Value, node: &str) -> String {
    let shims = r["shims"].as_array().cloned().unwrap_or_default();
    if shims.is_empty() {
        return String::new();
    }
    let mut rows = vec![["MASTER", "SHIM", "KIND", "ADDRESSES", "PODS ROUTED"].map(String::from)];
    for sh in &shims {
        let addresses: Vec<String> = sh["addresses"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(net, ips)| {
                ips.as_array()
                    .into_iter()
                    .flatten()
                    .map(move |ip| format!("{} ({net})", ip.as_str().unwrap_or("?")))
            })
            .collect();
        let routed: Vec<&str> = sh["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["ip"].as_str())
            .collect();
        rows.push([
            sh["master"].as_str().unwrap_or("?").to_string(),
            sh["link"].as_str().unwrap_or("?").to_string(),
            sh["driver"].as_str().unwrap_or("?").to_string(),
            if addresses.is_empty() {
                "none yet".to_string()
            } else {
                addresses.join(", ")
            },
            if routed.is_empty() {
                "-".to_string()
            } else {
                routed.join(", ")
            },
        ]);
    }
    format!("\nhost shims on node {node}:\n{}", table(&rows))
}

fn leases_table(leases: &[Value], node: &str, now: u64) -> String {
    let mut rows = vec![[
        "ADDRESS",
        "NAMESPACE/POD",
        "CONTAINER",
        "IFNAME",
        "NODE",
        "AGE",
    ]
    .map(String::from)];
    for l in leases {
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
    table(&rows)
}

/// The conflict check's records of this network on this node, or why they cannot be read here.
fn conflicts_section(r: &Value, n: &Value, node: &str, now: u64) -> String {
    let hold = conflict::HOLD.as_secs() / 60;
    let Some(conflicts) = n["conflicts"].as_array() else {
        let dir = r["stateDir"]
            .as_str()
            .unwrap_or(crate::config::DEFAULT_STATE_DIR);
        return format!(
            "conflicts: not readable here (no {dir}): they are recorded on each node, under \
             <stateDir>/_conflicts; run iotlan status on the node or in its iotlan pod\n"
        );
    };
    if conflicts.is_empty() {
        return format!("conflicts on node {node}: none in the last {hold} min\n");
    }
    let mut s = format!(
        "conflicts on node {node} (another LAN device answered for the address; the pool skips it until the time shown):\n"
    );
    let mut rows = vec![["ADDRESS", "MAC", "SEEN", "AVOIDED UNTIL", "MET BY"].map(String::from)];
    for c in conflicts {
        let seen = now.saturating_sub(c["seenUnix"].as_u64().unwrap_or(now));
        let until = c["avoidedUntilUnix"].as_u64().unwrap_or(now);
        rows.push([
            c["ip"].as_str().unwrap_or("?").to_string(),
            c["mac"].as_str().unwrap_or("?").to_string(),
            human(seen),
            match until.checked_sub(now) {
                Some(left) if left > 0 => format!("in {}", human_span(left)),
                _ => "now".to_string(),
            },
            c["identity"].as_str().unwrap_or("?").to_string(),
        ]);
    }
    s.push_str(&table(&rows));
    s
}

/// The duplicate addresses the node agents reported (kubernetes store only), or why they could
/// not be read.
fn duplicates_section(n: &Value, now: u64) -> String {
    if let Some(why) = n["duplicatesError"].as_str() {
        return format!("duplicate addresses: unknown: {why}\n");
    }
    let Some(dups) = n["duplicates"].as_array() else {
        return String::new();
    };
    if dups.is_empty() {
        return "duplicate addresses: none reported (DuplicateAddress Events)\n".to_string();
    }
    let ns = dups[0]["namespace"].as_str().unwrap_or("?");
    let mut s = format!(
        "DUPLICATE ADDRESSES reported by the node agents (DuplicateAddress Events in {ns}):\n"
    );
    let mut rows = vec![[
        "ADDRESS",
        "LEASE",
        "COUNT",
        "LAST SEEN",
        "REPORTED BY",
        "MESSAGE",
    ]
    .map(String::from)];
    for d in dups {
        let last = d["lastUnix"]
            .as_u64()
            .map_or_else(|| "?".to_string(), |t| human(now.saturating_sub(t)));
        let nodes: Vec<&str> = d["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        rows.push([
            d["ip"].as_str().unwrap_or("?").to_string(),
            d["lease"].as_str().unwrap_or("?").to_string(),
            d["count"].as_u64().unwrap_or(0).to_string(),
            last,
            if nodes.is_empty() {
                "?".to_string()
            } else {
                nodes.join(",")
            },
            d["message"].as_str().unwrap_or("").to_string(),
        ]);
    }
    s.push_str(&table(&rows));
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
    format!("{} ago", human_span(secs))
}

fn human_span(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
