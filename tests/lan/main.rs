//! iotlan on simulated IoT LANs (root), as one test binary. Every test builds its own switch, gateway,
//! device, node and pod namespaces (iotlan_tests::Lan), execs the plugin in the node exactly as
//! kubelet/Multus do, and checks what a user would check inside the pod and on the LAN.
//!
//! - `attach`, `errors`, `uplink`, `allocation`, `cli`: one pod's attachment, bad input, the LAN side
//!   (probe, gratuitous ARP, dual stack), where addresses come from, the operator CLI;
//! - `lifecycle`: the paths kubelet, Multus and runtimes take (restarts with the old sandbox alive,
//!   retried ADDs, DEL with a changed config, bounded config values, node names);
//! - `discovery`: multicast via net1, source routing for routed clients, the RFC 5227 conflict check;
//! - `host_shim`: the node reaches its pods' net1 through a shim link; DEL, GC and the agent's repair;
//! - `seams`: where iotlan meets what is outside its process (interface names, the node's own address,
//!   what DEL is handed, a stepped clock, other nodes, the shim's ARP answers);
//! - `matter`: a Thread border router's RAs on net1 (acceptRA, defaultRoute);
//! - `durability`: node-local records written durably, traced with strace.
//!
//! Run: `sudo IOTLAN_BIN_DIR=$PWD/target/release cargo test --release -p iotlan-tests --test lan [MODULE::]`.

mod allocation;
mod attach;
mod cli;
mod discovery;
mod durability;
mod errors;
mod host_shim;
mod lifecycle;
mod matter;
mod seams;
mod uplink;
