//! `iotlan`: one executable for every role, chosen before any argument parsing:
//!
//! - `CNI_COMMAND` set: the CNI plugin; the main plugin, or the IPAM plugin when run as
//!   `iotlan-ipam` (a hard link or copy the node agent installs beside `iotlan`);
//! - run as `iotlan-ipam` without `CNI_COMMAND`: a one-line hint;
//! - otherwise the operator's command line (clap), also as `kubectl iotlan` (a link named
//!   `kubectl-iotlan` on PATH).
//!
//! A CNI exec pays for one environment lookup and argv[0]'s file name, never for the CLI.

use std::ffi::OsStr;
use std::path::Path;

use clap::CommandFactory;
use iotlan::cli::{self, Cli, Command};
use iotlan::cni::{self, Plugin};

/// The name the IPAM plugin is installed and configured under (`"ipam": {"type": "iotlan-ipam"}`).
const IPAM_NAME: &str = "iotlan-ipam";
/// kubectl runs `kubectl-iotlan` for `kubectl iotlan`.
const KUBECTL_PLUGIN_NAME: &str = "kubectl-iotlan";

fn main() {
    let argv0 = std::env::args_os().next();
    let name = argv0
        .as_deref()
        .and_then(|a| Path::new(a).file_name())
        .and_then(OsStr::to_str)
        .unwrap_or("iotlan");
    if std::env::var_os("CNI_COMMAND").is_some() {
        let plugin = if name == IPAM_NAME {
            Plugin::Ipam
        } else {
            Plugin::Main
        };
        std::process::exit(cni::main(plugin));
    }
    if name == IPAM_NAME {
        eprintln!(
            "iotlan-ipam {}: a CNI IPAM plugin; run by a CNI runtime with CNI_COMMAND set and the network \
             configuration on stdin (the operator commands are `iotlan --help`)",
            env!("CARGO_PKG_VERSION")
        );
        std::process::exit(2);
    }
    std::process::exit(operator(name == KUBECTL_PLUGIN_NAME));
}

/// What the node agent borrows from the plugin: its logging, and the hostShim repair (kernel work).
fn agent_hooks() -> iotlan_agent::install::Hooks<'static> {
    iotlan_agent::install::Hooks {
        init_logging: &|| iotlan::logging::init(None, None),
        repair_host_shims: &|state_dir, netns_gone| {
            iotlan::link::shim::repair(state_dir, netns_gone)
                .map(|r| iotlan_agent::install::ShimRepair {
                    shims: r.shims,
                    routes: r.routes,
                    dropped: r.dropped,
                })
                .map_err(|e| e.to_string())
        },
    }
}

/// The operator's command line; returns the exit code.
fn operator(as_kubectl_plugin: bool) -> i32 {
    let bin_name = if as_kubectl_plugin {
        "kubectl iotlan"
    } else {
        "iotlan"
    };
    let mut command = Cli::command().bin_name(bin_name);
    if std::env::args_os().len() < 2 {
        // Bare `iotlan`: the overview, as `iotlan help` prints it.
        let _ = command.print_help();
        return 0;
    }
    let matches = command.get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Validate { file } => cli::validate(file.as_deref()),
        Command::Status(a) => cli::status::run(cli::status::View::Status, &a),
        Command::Leases(a) => cli::status::run(cli::status::View::Leases, &a),
        Command::Doctor(a) => cli::doctor::run(&a),
        Command::Install(args) => iotlan_agent::install::main(&args, &agent_hooks()),
        Command::Version => {
            println!(
                "iotlan {} (CNI {})",
                env!("CARGO_PKG_VERSION"),
                cni::version::SUPPORTED.join(", ")
            );
            0
        }
        Command::Completions { shell } => {
            let (mut cmd, name, out) = (
                Cli::command(),
                bin_name.replace(' ', "-"),
                &mut std::io::stdout(),
            );
            use clap_complete::{generate, shells};
            match shell {
                cli::args::Shell::Bash => generate(shells::Bash, &mut cmd, name, out),
                cli::args::Shell::Zsh => generate(shells::Zsh, &mut cmd, name, out),
                cli::args::Shell::Fish => generate(shells::Fish, &mut cmd, name, out),
            }
            0
        }
    }
}
