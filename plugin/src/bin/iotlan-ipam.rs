//! `iotlan-ipam`: the iotlan address pool as a standalone CNI IPAM plugin.

use iotlan::cni::{self, Plugin};

fn main() {
    if std::env::var_os("CNI_COMMAND").is_none() {
        eprintln!(
            "iotlan-ipam {}: a CNI IPAM plugin; run by a CNI runtime with CNI_COMMAND set and the network \
             configuration on stdin",
            env!("CARGO_PKG_VERSION")
        );
        std::process::exit(2);
    }
    std::process::exit(cni::main(Plugin::Ipam));
}
