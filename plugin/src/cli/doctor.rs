//! `iotlan doctor`: the question every user starts with. Which driver will work on my LAN, and does
//! discovery traffic reach a pod? It makes a temporary network namespace (held only by an open file
//! descriptor, so the kernel removes it and everything in it when the command ends, even on a crash),
//! puts a macvlan and then an ipvlan child of the master in it, asks the gateway for its MAC from
//! each (an ARP probe with sender 0.0.0.0, so no address is borrowed from the LAN), and listens for
//! mDNS and SSDP multicast. Every step is bounded in time.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::sched::{setns, unshare, CloneFlags};
use serde_json::{json, Value};

use super::args::DoctorArgs;
use crate::config::MacvlanMode;
use crate::error::{Error, Result};
use crate::link::mac::Mac;
use crate::link::{self, Driver};
use crate::net::netlink::{Link, Netlink};
use crate::net::packet::ArpSocket;

const TEMP_LINK: &str = "iotdoctor0";

/// Runs `iotlan doctor`; returns the exit code.
pub fn run(o: &DoctorArgs) -> i32 {
    match diagnose(o) {
        Ok(report) => {
            if o.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", render(&report));
            }
            if report["recommendation"]["driver"].is_null() {
                1
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("iotlan doctor: {e}");
            1
        }
    }
}

fn diagnose(o: &DoctorArgs) -> Result<Value> {
    let mut nl = Netlink::open().map_err(|e| Error::netlink("cannot open a netlink socket", e))?;
    let master = crate::link::master::resolve_with(&mut nl, o.master.as_deref(), &[])?;
    let gateway = match o.gateway {
        Some(g) => Some(g),
        None => crate::link::master::default_gateway(&mut nl)?.and_then(|(gw, _)| match gw {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }),
    };
    let subnet = nl
        .addresses()
        .map_err(|e| Error::netlink("cannot read the node's addresses", e))?
        .into_iter()
        .find(|a| a.index == master.index && a.address.is_ipv4())
        .and_then(|a| ipnetwork::IpNetwork::new(a.address.network(), a.address.prefix()).ok());
    let wireless = crate::link::master::is_wireless(&master.name);

    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| Error::io("cannot open this namespace", e))?;
    let temp = temp_namespace(&home)?;
    let timeout = Duration::from_millis(o.timeout_ms);
    let mut results = serde_json::Map::new();
    let mut multicast = json!({ "listenedSeconds": 0, "received": [] });
    for drv in [Driver::Macvlan, Driver::Ipvlan] {
        let mac = Mac::derived(
            "iotlan-doctor",
            &format!("{}-{}", crate::link::master::hostname(), std::process::id()),
        );
        let created = drv.create(
            &mut nl,
            &master,
            &link::Child {
                name: TEMP_LINK.to_string(),
                netns_fd: temp.as_raw_fd(),
                mac,
                macvlan_mode: MacvlanMode::Bridge,
                mtu: None,
            },
        );
        let mut r = json!({ "created": created.is_ok() });
        if let Err(f) = created {
            r["error"] = json!(f.message);
            results.insert(drv.to_string(), r);
            continue;
        }
        let listen = multicast["listenedSeconds"] == 0;
        let seconds = o.seconds;
        let outcome = enter(&temp, &home, || -> Result<(Value, Option<Value>)> {
            let mut tnl = Netlink::open()
                .map_err(|e| Error::netlink("netlink in the temporary namespace", e))?;
            let link = tnl
                .link_by_name(TEMP_LINK)
                .map_err(|e| Error::netlink("cannot read the temporary link", e))?
                .ok_or_else(|| Error::Link("the temporary link vanished".into()))?;
            tnl.set_up(link.index)
                .map_err(|e| Error::netlink("cannot bring the temporary link up", e))?;
            let mut r =
                json!({ "created": true, "mac": Mac(link.mac.unwrap_or_default()).to_string() });
            if let Some(gw) = gateway {
                let answer = probe(&link, gw, timeout).map_err(|e| Error::io("ARP probe", e))?;
                r["gateway"] = json!(gw.to_string());
                r["gatewayAnswered"] = json!(answer.is_some());
                if let Some((mac, took)) = answer {
                    r["gatewayMac"] = json!(Mac(mac).to_string());
                    r["answerMs"] = json!(took.as_millis() as u64);
                }
            }
            let heard = if listen {
                Some(listen_multicast(link.index, Duration::from_secs(seconds)))
            } else {
                None
            };
            let _ = tnl.delete_link(link.index);
            Ok((r, heard))
        })??;
        results.insert(drv.to_string(), outcome.0);
        if let Some(heard) = outcome.1 {
            multicast = heard;
        }
    }
    drop(temp);

    let works = |d: &str| {
        results.get(d).is_some_and(|r| {
            r["created"] == true && (gateway.is_none() || r["gatewayAnswered"] == true)
        })
    };
    let (choice, why) = if works("macvlan") {
        ("auto", "macvlan works here: the gateway answers a macvlan MAC. auto keeps ipvlan as the fallback")
    } else if works("ipvlan") {
        (
            "ipvlan",
            "the gateway does not hear macvlan MACs (or macvlan cannot be made); ipvlan L2 works",
        )
    } else {
        (
            "",
            "neither macvlan nor ipvlan reached the gateway from this master",
        )
    };
    let mut recommendation = json!({ "reason": why });
    if !choice.is_empty() {
        recommendation["driver"] = json!(choice);
        recommendation["config"] = json!({
            "cniVersion": "1.0.0", "name": "iot", "type": "iotlan", "master": master.name,
            "driver": choice, "probe": { "gateway": gateway.is_some(), "timeoutMs": 800 },
            "ipam": {
                "type": "iotlan-ipam",
                "subnet": subnet.map(|s| s.to_string()).unwrap_or_else(|| "<the LAN's subnet>".into()),
                "gateway": gateway.map(|g| g.to_string()),
                "pool": ["<a range outside the router's DHCP range>"],
            }
        });
    }
    let mut notes = Vec::new();
    if wireless {
        notes.push(format!("{} is a Wi-Fi interface: access points drop frames from other MACs, so iotlan uses ipvlan there", master.name));
    }
    if gateway.is_none() {
        notes.push("no IPv4 gateway given or found: the drivers were only created, not probed (use --gateway)".to_string());
    }
    if multicast["received"].as_array().is_some_and(Vec::is_empty)
        && multicast["listenedSeconds"] != 0
    {
        notes.push(format!(
            "no mDNS or SSDP multicast arrived within {} s: no device announced itself, or IGMP snooping or a VLAN keeps multicast away from this port",
            o.seconds
        ));
    }
    Ok(json!({
        "node": crate::link::master::hostname(),
        "master": master.name,
        "masterUp": master.up && master.lower_up,
        "wireless": wireless,
        "drivers": results,
        "multicast": multicast,
        "recommendation": recommendation,
        "notes": notes,
    }))
}

/// A fresh network namespace, held only by the returned file: closing it frees the namespace.
fn temp_namespace(home: &File) -> Result<File> {
    unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::io("cannot create a temporary network namespace", e.into()))?;
    let ns = File::open("/proc/thread-self/ns/net");
    setns(home.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::io("cannot return to the node's namespace", e.into()))?;
    ns.map_err(|e| Error::io("cannot open the temporary namespace", e))
}

fn enter<T>(ns: &File, home: &File, f: impl FnOnce() -> T) -> Result<T> {
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::io("cannot enter the temporary namespace", e.into()))?;
    let out = f();
    setns(home.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::io("cannot return to the node's namespace", e.into()))?;
    Ok(out)
}

/// An RFC 5227 ARP probe (sender 0.0.0.0) for the gateway, re-sent every 200 ms.
fn probe(
    link: &Link,
    gateway: Ipv4Addr,
    timeout: Duration,
) -> std::io::Result<Option<([u8; 6], Duration)>> {
    let sock = ArpSocket::open(link.index, link.mac.unwrap_or_default())?;
    let start = Instant::now();
    while start.elapsed() < timeout {
        sock.send_request(Ipv4Addr::UNSPECIFIED, gateway)?;
        let next = (Instant::now() + Duration::from_millis(200)).min(start + timeout);
        if let Some(mac) = sock.wait_reply(gateway, next)? {
            return Ok(Some((mac, start.elapsed())));
        }
    }
    Ok(None)
}

/// Listens on the link for mDNS (224.0.0.251:5353) and SSDP (239.255.255.250:1900) for `window`.
fn listen_multicast(ifindex: u32, window: Duration) -> Value {
    let groups = [
        ("mdns", Ipv4Addr::new(224, 0, 0, 251), 5353u16),
        ("ssdp", Ipv4Addr::new(239, 255, 255, 250), 1900),
    ];
    let sockets: Vec<(&str, UdpSocket)> = groups
        .iter()
        .filter_map(|(name, group, port)| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, *port)).ok()?;
            join(&s, *group, ifindex).ok()?;
            s.set_nonblocking(true).ok()?;
            Some((*name, s))
        })
        .collect();
    let mut received: Vec<Value> = Vec::new();
    let end = Instant::now() + window;
    let mut buf = [0u8; 2048];
    while Instant::now() < end && received.len() < 20 {
        for (name, s) in &sockets {
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                received
                    .push(json!({ "protocol": name, "from": from.ip().to_string(), "bytes": n }));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    json!({ "listenedSeconds": window.as_secs(), "received": received })
}

fn join(s: &UdpSocket, group: Ipv4Addr, ifindex: u32) -> std::io::Result<()> {
    let mreq = libc::ip_mreqn {
        imr_multiaddr: libc::in_addr {
            s_addr: u32::from_ne_bytes(group.octets()),
        },
        imr_address: libc::in_addr { s_addr: 0 },
        imr_ifindex: ifindex as i32,
    };
    // SAFETY: setsockopt(2) with a properly sized ip_mreqn.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_ADD_MEMBERSHIP,
            &mreq as *const libc::ip_mreqn as *const libc::c_void,
            std::mem::size_of::<libc::ip_mreqn>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn render(r: &Value) -> String {
    let mut s = format!(
        "iotlan doctor on node {}, master {}{}\n",
        r["node"].as_str().unwrap_or("?"),
        r["master"].as_str().unwrap_or("?"),
        if r["wireless"] == true {
            " (Wi-Fi)"
        } else {
            ""
        }
    );
    for d in ["macvlan", "ipvlan"] {
        let x = &r["drivers"][d];
        let line = if x["created"] != true {
            format!("cannot be created: {}", x["error"].as_str().unwrap_or("?"))
        } else if x.get("gatewayAnswered").is_none() {
            "created (not probed: no gateway)".to_string()
        } else if x["gatewayAnswered"] == true {
            format!(
                "created; gateway {} answered in {} ms",
                x["gateway"].as_str().unwrap_or("?"),
                x["answerMs"]
            )
        } else {
            format!(
                "created; gateway {} did NOT answer (the uplink drops this MAC?)",
                x["gateway"].as_str().unwrap_or("?")
            )
        };
        s.push_str(&format!("  {d:<8} {line}\n"));
    }
    let heard = r["multicast"]["received"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    s.push_str(&format!(
        "  multicast: {heard} mDNS/SSDP packets in {} s{}\n",
        r["multicast"]["listenedSeconds"],
        r["multicast"]["received"]
            .as_array()
            .and_then(|v| v.first())
            .map(|p| format!(" (first from {})", p["from"].as_str().unwrap_or("?")))
            .unwrap_or_default()
    ));
    for n in r["notes"].as_array().into_iter().flatten() {
        s.push_str(&format!("  note: {}\n", n.as_str().unwrap_or("")));
    }
    s.push_str(&format!(
        "recommendation: {}\n",
        r["recommendation"]["reason"].as_str().unwrap_or("")
    ));
    if let Some(c) = r["recommendation"].get("config") {
        s.push_str(&serde_json::to_string_pretty(c).unwrap_or_default());
        s.push('\n');
    }
    s
}
