//! `iotlan`: the CNI plugin when CNI_COMMAND is set, else the operator's command line.

use iotlan::cni::{self, Plugin};

mod install;

const USAGE: &str = "\
iotlan: a CNI plugin for the home/IoT LAN (macvlan with ipvlan L2 fallback, static IoT address pool)

As a CNI plugin, the runtime runs it with CNI_COMMAND=ADD|DEL|CHECK|VERSION|STATUS|GC and the network
configuration on stdin.

Commands:
  iotlan validate [FILE|-]   check a CNI config (a NAD's config) with iotlan's own parser and pool rules
  iotlan status [--config FILE]... [--state-dir DIR] [--json]
                             networks on this node (or in the cluster store of the configs given): held and
                             free addresses, and the driver chosen per master
  iotlan leases [--config FILE]... [--state-dir DIR] [--json]
                             every lease: address, pod, container, interface, node, age
  iotlan doctor [--master IF] [--gateway IP] [--seconds N] [--json]
                             which driver works on this LAN, and does discovery multicast reach a pod?
                             (a temporary namespace and link; cleans up; bounded in time)
  iotlan install [--help]    the node agent the DaemonSet runs: installs the binaries into the host's CNI dir
                             (kubeadm or k3s, detected), keeps the plugin's kubeconfig current, frees the
                             leases of deleted pods
  iotlan version             print the plugin version and the CNI versions it speaks
  iotlan help                this text
";

fn main() {
    if std::env::var_os("CNI_COMMAND").is_some() {
        std::process::exit(cni::main(Plugin::Main));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        None | Some("help") | Some("--help") | Some("-h") => {
            print!("{USAGE}");
            0
        }
        Some("version") | Some("--version") => {
            println!(
                "iotlan {} (CNI {})",
                env!("CARGO_PKG_VERSION"),
                cni::version::SUPPORTED.join(", ")
            );
            0
        }
        Some("validate") => iotlan::cli::validate(args.get(1).map(String::as_str)),
        Some("install") => install::main(&args[1..]),
        Some("status") => iotlan::cli::status::run(iotlan::cli::status::View::Status, &args[1..]),
        Some("leases") => iotlan::cli::status::run(iotlan::cli::status::View::Leases, &args[1..]),
        Some("doctor") => iotlan::cli::doctor::run(&args[1..]),
        Some(other) => {
            eprintln!("iotlan: unknown command {other:?}\n\n{USAGE}");
            2
        }
    };
    std::process::exit(code);
}
