//! The simulated LAN: a switch, a gateway, an IoT device and nodes, each a network namespace.

use serde_json::Value;

use crate::*;

/// A node on the LAN: its namespace, its `eth0` address and MAC, and its bridge port name.
#[derive(Debug)]
pub struct Node {
    /// The node's netns; the plugin runs here.
    pub ns: Netns,
    /// The address of `eth0` (without prefix).
    pub ip: String,
    /// The MAC of `eth0`.
    pub mac: String,
    /// The node's port on the switch's bridge (in the switch netns).
    pub port: String,
}

/// An isolated IoT LAN: switch (bridge), gateway, IoT device and node namespaces.
/// Field order is drop order: nodes, device and gateway go before the switch.
#[derive(Debug)]
pub struct Lan {
    /// The first node: its `eth0` (10.77.0.3/24, default via .1) is the plugin's master.
    pub node: Node,
    /// More nodes added with [`Lan::add_node`].
    pub extra_nodes: Vec<Node>,
    /// An IoT device on the LAN at 10.77.0.2/24, with a multicast route on `eth0`.
    pub device: Netns,
    /// The router at 10.77.0.1/24.
    pub gateway: Netns,
    /// Holds bridge `br0` and the ports `p-gw`, `p-dev`, `p-node`, `p-nodeN`.
    pub switch: Netns,
    tag: String,
    restricted: bool,
}

impl Lan {
    /// Builds the LAN. `tag` (short, e.g. the test name) only makes namespace names readable.
    pub fn new(tag: &str) -> Lan {
        let tag: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(20)
            .collect();
        let switch = Netns::new(&format!("iot-{tag}-sw"));
        switch.ip(&["link", "add", "br0", "type", "bridge", "stp_state", "0"]);
        switch.ip(&[
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ]);
        switch.ip(&["link", "set", "br0", "up"]);

        let gateway = Netns::new(&format!("iot-{tag}-gw"));
        plug(
            &switch,
            "p-gw",
            &gateway,
            &format!("{GATEWAY_IP}/{PREFIX_LEN}"),
        );

        let device = Netns::new(&format!("iot-{tag}-dev"));
        plug(
            &switch,
            "p-dev",
            &device,
            &format!("{DEVICE_IP}/{PREFIX_LEN}"),
        );
        device.ip(&["route", "add", "224.0.0.0/4", "dev", "eth0"]);

        let node = new_node(&switch, &format!("iot-{tag}-node"), "p-node", NODE_IP);
        Lan {
            node,
            extra_nodes: Vec::new(),
            device,
            gateway,
            switch,
            tag,
            restricted: false,
        }
    }

    /// Adds another node on the same L2 (10.77.0.4, .5, ...); returns it.
    pub fn add_node(&mut self, name: &str) -> &Node {
        let k = self.extra_nodes.len();
        let ip = format!("10.77.0.{}", 4 + k);
        let port = format!("p-node{}", k + 2);
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(12)
            .collect();
        let node = new_node(
            &self.switch,
            &format!("iot-{}-{name}", self.tag),
            &port,
            &ip,
        );
        if self.restricted {
            restrict_port(&self.switch, &node);
        }
        self.extra_nodes.push(node);
        &self.extra_nodes[k]
    }

    /// A pod namespace (just a netns with `lo` up, as a runtime would create).
    pub fn pod(&self, name: &str) -> Netns {
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(16)
            .collect();
        Netns::new(&format!("iot-{}-pod-{name}", self.tag))
    }

    /// The MAC-limited uplink of a consumer router or a port-security switch: an nft
    /// bridge-family rule in the switch netns admits, from each node's port, only frames
    /// whose source MAC is that node's own `eth0`. Needs `nft` (apt `nftables`).
    pub fn restrict_to_node_macs(&mut self) {
        self.switch
            .exec("nft", &["add", "table", "bridge", "iotlan_uplink"]);
        let chain = "add chain bridge iotlan_uplink macs \
                     { type filter hook prerouting priority -200 ; policy accept ; }";
        let words: Vec<&str> = chain.split_whitespace().collect();
        self.switch.exec("nft", &words);
        restrict_port(&self.switch, &self.node);
        for n in &self.extra_nodes {
            restrict_port(&self.switch, n);
        }
        self.restricted = true;
    }

    /// Frames the switch dropped because of [`Lan::restrict_to_node_macs`] (nft counters).
    pub fn restricted_drops(&self) -> u64 {
        let out = self
            .switch
            .try_exec("nft", &["-j", "list", "table", "bridge", "iotlan_uplink"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["rule"]["expr"].as_array())
            .flatten()
            .filter_map(|x| x["counter"]["packets"].as_u64())
            .sum()
    }
}

fn restrict_port(switch: &Netns, node: &Node) {
    let rule = format!(
        "add rule bridge iotlan_uplink macs iifname {} ether saddr != {} counter drop",
        node.port, node.mac
    );
    let words: Vec<&str> = rule.split_whitespace().collect();
    switch.exec("nft", &words);
}

/// A veth from the switch's bridge (`port`) into `ns` as `eth0` with `addr`.
fn plug(switch: &Netns, port: &str, ns: &Netns, addr: &str) {
    switch.ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ]);
    switch.ip(&["link", "set", port, "master", "br0", "up"]);
    ns.ip(&["addr", "add", addr, "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
}

fn new_node(switch: &Netns, prefix: &str, port: &str, ip: &str) -> Node {
    let ns = Netns::new(prefix);
    plug(switch, port, &ns, &format!("{ip}/{PREFIX_LEN}"));
    ns.ip(&["route", "add", "default", "via", GATEWAY_IP, "dev", "eth0"]);
    let mac = link(&ns, "eth0")
        .unwrap_or_else(|| panic!("eth0 missing in {}", ns.name()))
        .mac;
    Node {
        ns,
        ip: ip.to_string(),
        mac,
        port: port.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// CNI exec
// ---------------------------------------------------------------------------------------------
