//! Shared helpers for the root-only integration tests: a simulated IoT LAN made only of
//! network namespaces, and ways to exec CNI plugins exactly as kubelet/Multus do.
//!
//! Nothing here touches the host netns's interfaces. Every [`Lan`] is its own set of
//! uniquely named namespaces (prefix + pid + counter), so cargo's parallel test threads
//! never collide, and everything is deleted on drop, also when a test panics.
//!
//! Topology built by [`Lan::new`]:
//!
//! ```text
//!   gateway netns            device netns             node netns
//!   eth0 10.77.0.1/24        eth0 10.77.0.2/24        eth0 10.77.0.3/24 (default via .1)
//!        |                        |                        |   <- the plugin's master
//!   +----p-gw--------------------p-dev-------------------p-node----+
//!   |                       br0  (switch netns)                     |
//!   +---------------------------------------------------------------+
//! ```
//!
//! Plugins run inside the node netns (`ip netns exec`, which also remounts /sys), so
//! master auto-detection and /sys lookups see only the node's interfaces.

use std::net::Ipv4Addr;

pub mod capture;
pub mod network;

/// The simulated LAN's subnet.
pub const SUBNET: &str = "10.77.0.0/24";
/// Prefix length of [`SUBNET`].
pub const PREFIX_LEN: u8 = 24;
/// The gateway (router) address.
pub const GATEWAY_IP: &str = "10.77.0.1";
/// The IoT device's address.
pub const DEVICE_IP: &str = "10.77.0.2";
/// The first node's address on its `eth0`.
pub const NODE_IP: &str = "10.77.0.3";
/// The node's LAN interface inside the node netns (the plugin's master).
pub const NODE_IF: &str = "eth0";
/// mDNS group and port.
pub const MDNS_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
/// mDNS port.
pub const MDNS_PORT: u16 = 5353;

mod cni;
mod exec;
mod inspect;
mod lan;
mod mdns;
mod need;
mod netns;

pub use cni::*;
pub use exec::*;
pub use inspect::*;
pub use lan::*;
pub use mdns::*;
pub use need::*;
pub use netns::*;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn ready() -> bool {
        require_all(LAN_NEEDS)
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("x"), unique_name("x"));
        let a = k8s_args("home", "ha-0", "abc");
        assert!(a.starts_with("IgnoreUnknown=true;K8S_POD_NAMESPACE=home;K8S_POD_NAME=ha-0;"));
        assert!(a.contains("K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID="));
    }

    #[test]
    fn lan_forms_and_device_pings_gateway() {
        if !ready() {
            return;
        }
        let lan = Lan::new("self-ping");
        let eth0 = link(&lan.node.ns, NODE_IF).expect("node eth0");
        assert_eq!(eth0.kind.as_deref(), Some("veth"));
        assert_eq!(eth0.mac, lan.node.mac);
        assert!(addrs(&lan.node.ns, NODE_IF).contains(&format!("{NODE_IP}/24")));
        let r = routes(&lan.node.ns, false);
        assert!(r
            .iter()
            .any(|r| r.dst == "default" && r.gateway.as_deref() == Some(GATEWAY_IP)));
        assert!(ping(&lan.device, GATEWAY_IP), "device cannot ping gateway");
        assert!(ping(&lan.node.ns, DEVICE_IP), "node cannot ping device");
        assert!(neighbours(&lan.device)
            .iter()
            .any(|n| n["dst"] == GATEWAY_IP));
        // The node netns sees only its own interfaces, not the host's.
        let names: Vec<String> = links(&lan.node.ns).into_iter().map(|l| l.name).collect();
        assert_eq!(names, vec!["lo".to_string(), "eth0".to_string()]);
        let path = lan.node.ns.path();
        drop(lan);
        assert!(!path.exists(), "netns not removed on drop");
    }

    #[test]
    fn second_node_shares_the_l2() {
        if !ready() {
            return;
        }
        let mut lan = Lan::new("self-2node");
        let ip = lan.add_node("b").ip.clone();
        assert_eq!(ip, "10.77.0.4");
        assert!(ping(&lan.node.ns, &ip));
        assert!(ping(&lan.extra_nodes[0].ns, DEVICE_IP));
    }

    #[test]
    fn reference_macvlan_pod_hears_device_mdns() {
        if !ready()
            || !require(Need::File(
                "/usr/lib/cni/macvlan",
                "apt-get install containernetworking-plugins",
            ))
        {
            return;
        }
        let lan = Lan::new("self-mdns");
        let pod = lan.pod("a");
        let env = Env::new(&lan.node.ns, &pod, "selftest-mdns").k8s("default", "a");
        let conf = reference_macvlan_conf("selftest", "10.77.0.50/24");
        let bin = reference_plugin_dir().join("macvlan");
        let res = cni(&bin, "ADD", &env, &conf).expect_ok();
        assert_eq!(res["ips"][0]["address"], "10.77.0.50/24");
        let net1 = link(&pod, "net1").expect("net1 in pod");
        assert_eq!(net1.kind.as_deref(), Some("macvlan"));
        assert!(ping(&pod, GATEWAY_IP), "pod cannot ping gateway");
        let from = mdns_roundtrip(&lan.device, &pod, "net1", b"iotlan-selftest")
            .expect("mDNS from device never reached the pod");
        assert_eq!(from.ip().to_string(), DEVICE_IP);
        // A pod namespace on no LAN interface hears nothing.
        cni(&bin, "DEL", &env, &conf).expect_ok();
        assert!(link(&pod, "net1").is_none(), "net1 left after DEL");
    }

    #[test]
    fn restricted_uplink_drops_foreign_macs() {
        if !ready()
            || !require(Need::Cmd("nft", "nftables"))
            || !require(Need::File(
                "/usr/lib/cni/macvlan",
                "apt-get install containernetworking-plugins",
            ))
        {
            return;
        }
        let mut lan = Lan::new("self-restrict");
        lan.restrict_to_node_macs();
        assert!(ping(&lan.node.ns, GATEWAY_IP), "node's own MAC must pass");
        let pod = lan.pod("r");
        let env = Env::new(&lan.node.ns, &pod, "selftest-restrict");
        let conf = reference_macvlan_conf("selftest", "10.77.0.51/24");
        let bin = reference_plugin_dir().join("macvlan");
        cni(&bin, "ADD", &env, &conf).expect_ok();
        assert!(
            !ping(&pod, GATEWAY_IP),
            "a macvlan MAC passed the MAC-limited uplink"
        );
        assert!(lan.restricted_drops() > 0, "no drop counted");
        cni(&bin, "DEL", &env, &conf).expect_ok();
    }

    #[test]
    fn in_netns_runs_inside_that_namespace() {
        if !require(Need::Root) {
            return;
        }
        let ns = Netns::new("iot-self-innetns");
        ns.ip(&["addr", "add", "10.78.0.1/32", "dev", "lo"]);
        // The address exists only in that namespace: binding works there and not here.
        assert!(in_netns(&ns, || UdpSocket::bind("10.78.0.1:0").is_ok()));
        assert!(UdpSocket::bind("10.78.0.1:0").is_err());
        let l = links(&ns);
        assert_eq!(l.len(), 1);
        assert!(l[0].up);
    }
}
