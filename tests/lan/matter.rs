//! Matter over Thread on net1. A Thread border router on the IoT LAN (an OpenThread border router,
//! a HomePod, a Nest hub) announces the Thread network's off-mesh-routable prefix in its router
//! advertisements as a Route Information Option (RFC 4191), and the LAN's on-link prefix in a Prefix
//! Information Option. The Matter Server reaches Thread devices only through that route. A pod that
//! iotlan attached with `"ipv6": {"acceptRA": true}` must learn the route on net1, send what is meant
//! for the mesh to the border router's link-local address, and take no default route from the RA
//! unless `ipv6.defaultRoute` says so. A pod without `acceptRA`, on the same LAN and hearing the same
//! RAs, learns nothing.
//!
//! The border router is a namespace on the simulated LAN; its RAs are crafted here and sent from a raw
//! ICMPv6 socket (hop limit 255, from its link-local address, to ff02::1), as radvd or otbr-agent
//! send them. What reached it is read from an AF_PACKET capture on its own port.

use std::collections::BTreeSet;
use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use iotlan_tests::capture::{FrameCapture, Ipv6Frame, ETH_P_IPV6};
use iotlan_tests::*;
use serde_json::{json, Value};

use iotlan_tests::network::*;

/// The Thread network's off-mesh-routable prefix, announced in the RIO.
const THREAD_PREFIX: &str = "fd2a:6c9d:3e1b:1::/64";
/// A Thread device (a Matter light) in that prefix.
const THREAD_DEVICE: Ipv6Addr = Ipv6Addr::new(0xfd2a, 0x6c9d, 0x3e1b, 1, 0, 0, 0, 0x42);
/// The IoT LAN's own ULA prefix, announced on-link and autonomous in the PIO.
const LAN_PREFIX: [u16; 4] = [0xfd77, 0, 0, 0];
/// Matter's operational UDP port.
const MATTER_PORT: u16 = 5540;
/// All routers (ff02::2), where router solicitations go.
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// How long the routes and the lifetimes in the RA last, in seconds.
const LIFETIME: u32 = 1800;

/// A border router: a node namespace on the LAN, its `eth0` MAC and kernel-made link-local address.
struct BorderRouter<'a> {
    ns: &'a Netns,
    mac: String,
    link_local: Ipv6Addr,
    ifindex: u32,
}

impl<'a> BorderRouter<'a> {
    /// Takes the node `node` as the border router, once its link-local address passed DAD.
    fn new(node: &'a Node) -> BorderRouter<'a> {
        let eth0 = link(&node.ns, "eth0").expect("the border router's eth0");
        let ifindex = eth0.raw["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .expect("ifindex of eth0");
        let deadline = Instant::now() + Duration::from_secs(10);
        let link_local = loop {
            if let Some(a) = ipv6_addrs(&node.ns, "eth0")
                .into_iter()
                .find(|a| a.scope == "link" && !a.tentative)
            {
                break a.addr;
            }
            assert!(
                Instant::now() < deadline,
                "the border router's link-local address never left DAD"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        BorderRouter {
            ns: &node.ns,
            mac: node.mac.clone(),
            link_local,
            ifindex,
        }
    }

    /// Sends one router advertisement to all nodes (ff02::1) with `router_lifetime` (seconds; 0: not
    /// a default router).
    fn advertise(&self, router_lifetime: u16) {
        let ra = router_advertisement(&self.mac, router_lifetime);
        let (ll, ifindex) = (self.link_local, self.ifindex);
        in_netns(self.ns, move || {
            use socket2::{Domain, Protocol, SockAddr, Socket, Type};
            let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
                .unwrap_or_else(|e| panic!("raw ICMPv6 socket: {e}"));
            // RFC 4861 6.1.2: a receiver drops an RA whose hop limit is not 255.
            s.set_multicast_hops_v6(255).expect("IPV6_MULTICAST_HOPS");
            s.set_multicast_if_v6(ifindex).expect("IPV6_MULTICAST_IF");
            s.set_multicast_loop_v6(false).expect("IPV6_MULTICAST_LOOP");
            s.bind(&SockAddr::from(SocketAddrV6::new(ll, 0, 0, ifindex)))
                .unwrap_or_else(|e| panic!("bind [{ll}%{ifindex}]: {e}"));
            let all_nodes =
                SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, ifindex);
            // The kernel fills in the ICMPv6 checksum of a raw ICMPv6 socket (RFC 3542 3.1).
            s.send_to(&ra, &SockAddr::from(all_nodes))
                .unwrap_or_else(|e| panic!("send the RA: {e}"));
        });
    }

    /// Advertises every 250 ms until `done` holds, for at most `limit`; whether it came to hold.
    fn advertise_until(
        &self,
        router_lifetime: u16,
        limit: Duration,
        done: impl Fn() -> bool,
    ) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            self.advertise(router_lifetime);
            std::thread::sleep(Duration::from_millis(250));
            if done() {
                return true;
            }
        }
        false
    }
}

/// An RA (RFC 4861 4.2) with the options a Thread border router sends on the infrastructure link:
/// source link-layer address, a PIO for [`LAN_PREFIX`]/64 (on-link, autonomous) and a RIO (RFC 4191
/// 2.3) for [`THREAD_PREFIX`], medium preference. The checksum is left to the kernel.
fn router_advertisement(mac: &str, router_lifetime: u16) -> Vec<u8> {
    let mac: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("MAC byte"))
        .collect();
    let mut ra = vec![134, 0, 0, 0, 64, 0];
    ra.extend(router_lifetime.to_be_bytes());
    ra.extend([0u8; 8]); // reachable time, retransmission timer: unspecified
    ra.extend([1, 1]); // source link-layer address, 8 bytes
    ra.extend(&mac);
    ra.extend([3, 4, 64, 0xc0]); // PIO, 32 bytes, /64, L and A
    ra.extend(LIFETIME.to_be_bytes()); // valid
    ra.extend(LIFETIME.to_be_bytes()); // preferred
    ra.extend([0u8; 4]);
    for w in LAN_PREFIX {
        ra.extend(w.to_be_bytes());
    }
    ra.extend([0u8; 8]);
    let thread: Ipv6Addr = THREAD_PREFIX
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("THREAD_PREFIX");
    ra.extend([24, 2, 64, 0]); // RIO, 16 bytes (a /64 needs only its first 8 prefix bytes), medium
    ra.extend(LIFETIME.to_be_bytes());
    ra.extend(&thread.octets()[..8]);
    ra
}

/// An IPv6 address of an interface, as `ip -j addr` shows it.
struct V6Addr {
    addr: Ipv6Addr,
    scope: String,
    tentative: bool,
}

fn ipv6_addrs(ns: &Netns, ifname: &str) -> Vec<V6Addr> {
    let out = ns.ip(&["-6", "-j", "addr", "show", "dev", ifname]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["addr_info"].as_array())
        .flatten()
        .filter_map(|a| {
            Some(V6Addr {
                addr: a["local"].as_str()?.parse().ok()?,
                scope: a["scope"].as_str()?.to_string(),
                tentative: a["tentative"].as_bool().unwrap_or(false),
            })
        })
        .collect()
}

/// The SLAAC address net1 took from the PIO, once usable (DAD done).
fn lan_ula(pod: &Netns) -> Option<Ipv6Addr> {
    ipv6_addrs(pod, "net1")
        .into_iter()
        .find(|a| a.addr.segments()[..4] == LAN_PREFIX && a.scope == "global" && !a.tentative)
        .map(|a| a.addr)
}

fn route_to(pod: &Netns, dst: &str) -> Option<Route> {
    routes(pod, true).into_iter().find(|r| r.dst == dst)
}

/// The source MACs of the router solicitations (ICMPv6 133 to ff02::2) `cap` sees: until `limit`,
/// or 2 s after one from `awaited` arrived (the other pods, attached just after it, had as long).
fn solicitations(cap: &FrameCapture, awaited: &str, limit: Duration) -> BTreeSet<String> {
    let deadline = Instant::now() + limit;
    let mut until = deadline;
    let mut macs = BTreeSet::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Some(frame) = cap.wait(left, |f| {
            Ipv6Frame::parse(f).is_some_and(|p| {
                p.next_header == 58 && p.payload.first() == Some(&133) && p.dst == ALL_ROUTERS
            })
        }) else {
            break;
        };
        let Some(rs) = Ipv6Frame::parse(&frame) else {
            continue;
        };
        if rs.src_mac == awaited {
            until = until.min(Instant::now() + Duration::from_secs(2));
        }
        macs.insert(rs.src_mac);
    }
    macs
}

/// ADD for pod `name` of namespace home-assistant, as Multus runs it.
fn attach(lan: &Lan, pod: &Netns, cid: &str, name: &str, conf: &str) -> Value {
    let env = Env::new(&lan.node.ns, pod, cid).k8s(HA.0, name);
    cni(&iotlan_bin(), "ADD", &env, conf).expect_ok()
}

fn detach(lan: &Lan, pod: &Netns, cid: &str, name: &str, conf: &str) {
    let env = Env::new(&lan.node.ns, pod, cid).k8s(HA.0, name);
    cni(&iotlan_bin(), "DEL", &env, conf).expect_ok();
}

/// A pod with the cluster's `eth0` (IPv4 default route), as under Multus.
fn pod_with_cluster_eth0(lan: &Lan, name: &str) -> Netns {
    let pod = lan.pod(name);
    cluster_eth0(&pod);
    pod
}

#[test]
fn thread_route_from_the_border_routers_ra_leads_to_it_through_net1_and_only_with_accept_ra() {
    if !ready() {
        return;
    }
    let mut lan = Lan::new("matter");
    lan.add_node("otbr");
    let state = State::new();
    let on = conf(&state, json!({ "ipv6": { "acceptRA": true } }));
    let off = conf(&state, json!({ "ipv6": { "acceptRA": false } }));
    let br = BorderRouter::new(&lan.extra_nodes[0]);
    let at_router = FrameCapture::open(br.ns, "eth0", ETH_P_IPV6);
    let matter = pod_with_cluster_eth0(&lan, "matter");
    attach(&lan, &matter, "ctr-matter-1", "matter-server-0", &on);
    let esphome = pod_with_cluster_eth0(&lan, "esphome");
    attach(&lan, &esphome, "ctr-matter-2", "esphome-0", &off);
    let heard_by_esphome = FrameCapture::open(&esphome, "net1", ETH_P_IPV6);
    let net1_mac = link(&matter, "net1").expect("net1").mac;
    let esphome_mac = link(&esphome, "net1").expect("net1").mac;

    // As net1 comes up the pod asks for RAs (router solicitations, RFC 4861 6.3.7), so it does not
    // wait for the border router's next periodic RA; the pod without acceptRA does not ask.
    let solicited = solicitations(&at_router, &net1_mac, Duration::from_secs(10));
    assert!(
        solicited.contains(&net1_mac),
        "no RS from net1 within 10 s: {solicited:?}"
    );
    assert!(
        !solicited.contains(&esphome_mac),
        "an RS without acceptRA: {solicited:?}"
    );

    // A non-zero router lifetime, so that the absence of a default route below means something.
    let learnt = br.advertise_until(LIFETIME as u16, Duration::from_secs(10), || {
        route_to(&matter, THREAD_PREFIX).is_some() && lan_ula(&matter).is_some()
    });
    let table = String::from_utf8_lossy(&matter.ip(&["-6", "route", "show"]).stdout).to_string();
    assert!(
        learnt,
        "no route to {THREAD_PREFIX} (and SLAAC address) within 10 s:\n{table}"
    );

    // The route, as the kernel took it from the RIO: via the border router's link-local, on net1.
    let route = route_to(&matter, THREAD_PREFIX).expect("route to the Thread prefix");
    let ll = br.link_local.to_string();
    assert_eq!(route.dev.as_deref(), Some("net1"), "{table}");
    assert_eq!(route.gateway.as_deref(), Some(ll.as_str()), "{table}");
    assert_eq!(route.raw["protocol"], "ra", "{table}");
    let got = matter.ip(&["-6", "-j", "route", "get", &THREAD_DEVICE.to_string()]);
    let got: Value = serde_json::from_slice(&got.stdout).expect("ip -j route get");
    assert_eq!(got[0]["dev"], "net1", "{got}");
    assert_eq!(got[0]["gateway"], ll.as_str(), "{got}");
    assert!(
        route_to(&matter, "default").is_none(),
        "an RA must not give net1 a default route without ipv6.defaultRoute:\n{table}"
    );

    // A packet for a Thread device leaves by net1 to the border router's MAC, from the SLAAC address.
    let ula = lan_ula(&matter).expect("SLAAC address from the PIO");
    // Derived from net1's MAC (EUI-64), which iotlan derives from the pod's identity: the Matter
    // Server keeps its IPv6 address across restarts and node moves, as it keeps its MAC.
    let mac: Vec<u16> = net1_mac
        .split(':')
        .map(|b| u16::from_str_radix(b, 16).expect("MAC byte"))
        .collect();
    let eui64 = Ipv6Addr::new(
        LAN_PREFIX[0],
        LAN_PREFIX[1],
        LAN_PREFIX[2],
        LAN_PREFIX[3],
        ((mac[0] ^ 0x02) << 8) | mac[1],
        (mac[2] << 8) | 0xff,
        0xfe00 | mac[3],
        (mac[4] << 8) | mac[5],
    );
    assert_eq!(ula, eui64, "SLAAC address from net1's MAC {net1_mac}");
    let payload = b"iotlan-matter-case-sigma1".to_vec();
    let sender = in_netns(&matter, || UdpSocket::bind("[::]:0").expect("bind [::]:0"));
    let to = SocketAddrV6::new(THREAD_DEVICE, MATTER_PORT, 0, 0);
    let frame = (0..3).find_map(|_| {
        sender
            .send_to(&payload, to)
            .expect("send to the Thread device");
        at_router.wait(Duration::from_secs(1), |f| {
            Ipv6Frame::parse(f).is_some_and(|p| p.dst == THREAD_DEVICE && p.next_header == 17)
        })
    });
    let frame = Ipv6Frame::parse(
        &frame.expect("the packet for the Thread device reached the border router"),
    )
    .expect("IPv6 frame");
    assert_eq!(frame.dst_mac, br.mac, "next hop MAC: the border router");
    assert_eq!(frame.src_mac, net1_mac, "it left by net1");
    assert_eq!(frame.src, ula, "source: net1's SLAAC address");
    assert_eq!(
        u16::from_be_bytes([frame.payload[2], frame.payload[3]]),
        MATTER_PORT
    );
    assert_eq!(&frame.payload[8..], &payload[..]);
    let neigh = neighbours(&matter)
        .into_iter()
        .find(|n| n["dst"] == ll.as_str())
        .expect("a neighbour entry for the border router's link-local");
    assert_eq!(neigh["dev"], "net1");
    assert_eq!(neigh["lladdr"], br.mac.as_str());

    // The control: the same RAs reached the pod without acceptRA, and it took nothing from them.
    let ra = heard_by_esphome.wait(Duration::from_secs(2), |f| {
        Ipv6Frame::parse(f).is_some_and(|p| p.next_header == 58 && p.payload.first() == Some(&134))
    });
    let ra = Ipv6Frame::parse(&ra.expect("the RAs reached the pod without acceptRA")).expect("RA");
    assert_eq!(ra.src, br.link_local);
    let table = String::from_utf8_lossy(&esphome.ip(&["-6", "route", "show"]).stdout).to_string();
    assert!(
        route_to(&esphome, THREAD_PREFIX).is_none(),
        "acceptRA false took the RIO:\n{table}"
    );
    assert!(route_to(&esphome, "default").is_none(), "{table}");
    let addrs: Vec<String> = ipv6_addrs(&esphome, "net1")
        .iter()
        .map(|a| a.addr.to_string())
        .collect();
    assert!(
        addrs.iter().all(|a| a.starts_with("fe80:")),
        "acceptRA false took a SLAAC address: {addrs:?}"
    );
    detach(&lan, &esphome, "ctr-matter-2", "esphome-0", &off);
    detach(&lan, &matter, "ctr-matter-1", "matter-server-0", &on);
    assert!(
        route_to(&matter, THREAD_PREFIX).is_none(),
        "the route left with net1"
    );
}

#[test]
fn a_default_route_from_the_ra_only_with_ipv6_default_route() {
    if !ready() {
        return;
    }
    let mut lan = Lan::new("matterdef");
    lan.add_node("otbr");
    let state = State::new();
    let with = conf(
        &state,
        json!({ "ipv6": { "acceptRA": true, "defaultRoute": true } }),
    );
    let without = conf(&state, json!({ "ipv6": { "acceptRA": true } }));
    let a = pod_with_cluster_eth0(&lan, "dflt");
    attach(&lan, &a, "ctr-matterdef-1", "matter-server-0", &with);
    let b = pod_with_cluster_eth0(&lan, "nodflt");
    attach(&lan, &b, "ctr-matterdef-2", "matter-server-1", &without);
    let br = BorderRouter::new(&lan.extra_nodes[0]);
    let ll = br.link_local.to_string();

    // A border router that is also the LAN's IPv6 router: a non-zero router lifetime.
    let learnt = br.advertise_until(LIFETIME as u16, Duration::from_secs(10), || {
        route_to(&a, "default").is_some() && route_to(&b, THREAD_PREFIX).is_some()
    });
    let (ta, tb) = (
        String::from_utf8_lossy(&a.ip(&["-6", "route", "show"]).stdout).to_string(),
        String::from_utf8_lossy(&b.ip(&["-6", "route", "show"]).stdout).to_string(),
    );
    assert!(
        learnt,
        "within 10 s:\nwith defaultRoute:\n{ta}\nwithout:\n{tb}"
    );
    let d = route_to(&a, "default").expect("default route");
    assert_eq!(d.dev.as_deref(), Some("net1"), "{ta}");
    assert_eq!(d.gateway.as_deref(), Some(ll.as_str()), "{ta}");
    assert_eq!(d.raw["protocol"], "ra", "{ta}");
    assert!(route_to(&a, THREAD_PREFIX).is_some(), "{ta}");
    // The same RAs, heard and used for the Thread route, and still no default route.
    assert!(
        route_to(&b, "default").is_none(),
        "defaultRoute false got a default route:\n{tb}"
    );
    assert_eq!(
        route_to(&b, THREAD_PREFIX)
            .and_then(|r| r.gateway)
            .as_deref(),
        Some(ll.as_str()),
        "{tb}"
    );
    // IPv4 keeps its one default route, via the cluster, in both.
    for pod in [&a, &b] {
        let v4: Vec<Route> = routes(pod, false)
            .into_iter()
            .filter(|r| r.dst == "default")
            .collect();
        assert_eq!(v4.len(), 1, "{v4:?}");
        assert_eq!(v4[0].dev.as_deref(), Some("eth0"));
    }
    detach(&lan, &b, "ctr-matterdef-2", "matter-server-1", &without);
    detach(&lan, &a, "ctr-matterdef-1", "matter-server-0", &with);
}

/// A pod that forwards IPv6 (a VPN or a Thread tool in it turns `forwarding` on) still takes the
/// Thread route: with `accept_ra` 1 the kernel ignores RAs on a forwarding interface, so iotlan sets
/// 2 ("accept even when forwarding").
#[test]
fn the_thread_route_comes_also_when_the_pod_forwards_ipv6() {
    if !ready() {
        return;
    }
    let mut lan = Lan::new("matterfwd");
    lan.add_node("otbr");
    let state = State::new();
    let c = conf(&state, json!({ "ipv6": { "acceptRA": true } }));
    let pod = pod_with_cluster_eth0(&lan, "fwd");
    attach(&lan, &pod, "ctr-matterfwd", "matter-server-0", &c);
    let forwarding = in_netns(&pod, || {
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").expect("forwarding on");
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/net1/forwarding").unwrap_or_default()
    })
    .trim()
    .to_string();
    assert_eq!(forwarding, "1", "net1 forwards");
    let br = BorderRouter::new(&lan.extra_nodes[0]);
    let learnt = br.advertise_until(0, Duration::from_secs(10), || {
        route_to(&pod, THREAD_PREFIX).is_some()
    });
    let table = String::from_utf8_lossy(&pod.ip(&["-6", "route", "show"]).stdout).to_string();
    assert!(learnt, "no Thread route within 10 s:\n{table}");
    assert_eq!(
        route_to(&pod, THREAD_PREFIX).and_then(|r| r.dev).as_deref(),
        Some("net1"),
        "{table}"
    );
    detach(&lan, &pod, "ctr-matterfwd", "matter-server-0", &c);
}
