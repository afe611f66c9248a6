//! `iotlan-ipam` for `cargo build` and the tests that exec it from the target dir: the IPAM plugin.
//! The static binaries, the image and the node carry no second executable: there `iotlan-ipam` is a
//! hard link (or copy) of `iotlan`, which dispatches on its argv[0] (src/main.rs).

use iotlan::cni::{self, Plugin};

fn main() {
    if std::env::var_os("CNI_COMMAND").is_none() {
        eprintln!(
            "iotlan-ipam {}: a CNI IPAM plugin; run by a CNI runtime with CNI_COMMAND set and the network \
             configuration on stdin (the operator commands are `iotlan --help`)",
            env!("CARGO_PKG_VERSION")
        );
        std::process::exit(2);
    }
    std::process::exit(cni::main(Plugin::Ipam));
}
