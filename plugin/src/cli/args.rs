//! The operator command line's grammar (clap derive). Never parsed on the CNI path: `main()`
//! dispatches a `CNI_COMMAND` exec (and an `iotlan-ipam` argv[0]) before it gets here.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// iotlan: a CNI plugin for the home/IoT LAN (macvlan, ipvlan L2 fallback, static address pool)
///
/// A CNI runtime runs it with CNI_COMMAND=ADD|DEL|CHECK|VERSION|STATUS|GC and the network
/// configuration on stdin. Without CNI_COMMAND it is this operator command line,
/// also as `kubectl iotlan` (a link named kubectl-iotlan on PATH).
#[derive(Debug, Parser)]
#[command(
    name = "iotlan",
    version,
    propagate_version = true,
    verbatim_doc_comment
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a CNI config (a NAD's config) with iotlan's parser and pool rules
    Validate {
        /// The config file; `-` or nothing reads stdin
        file: Option<String>,
    },
    /// Networks: held and free addresses, conflicts, duplicates, the driver per master
    ///
    /// The file stores on this node, or the stores (also the cluster's) of the configs given.
    /// Conflicts (addresses another LAN device answered for) are this node's records; duplicates
    /// (kubernetes store) are the DuplicateAddress Events the node agents posted.
    #[command(verbatim_doc_comment)]
    Status(StoreArgs),
    /// Every lease: address, pod, container, interface, node, age
    ///
    /// The file stores on this node, or the stores (also the cluster's) of the configs given.
    #[command(verbatim_doc_comment)]
    Leases(StoreArgs),
    /// Which driver works on this LAN, and does discovery multicast reach a pod?
    ///
    /// Makes a temporary namespace and link (root), cleans up, bounded in time.
    #[command(verbatim_doc_comment)]
    Doctor(DoctorArgs),
    /// The DaemonSet's node agent
    ///
    /// Installs the binary into the host's CNI dir (kubeadm or k3s, detected), keeps the
    /// plugin's kubeconfig current, frees the leases of deleted pods.
    #[command(verbatim_doc_comment)]
    Install(Box<iotlan_agent::install::Args>),
    /// Print the plugin version and the CNI versions it speaks
    Version,
    /// Print a shell completion script
    ///
    /// e.g. `iotlan completions bash > /etc/bash_completion.d/iotlan`
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell
        shell: Shell,
    },
}

/// The shells `iotlan completions` writes for (the node's and the workstation's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Where `status` and `leases` read leases from.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// A NAD's CNI config (`-`: stdin) whose store to read; repeatable
    ///
    /// Also a cluster (kubernetes) store. Without one: the file stores under --state-dir.
    #[arg(long = "config", value_name = "FILE", verbatim_doc_comment)]
    pub configs: Vec<PathBuf>,
    /// The file stores', driver memory's and conflict records' dir
    ///
    /// Default: /var/lib/cni/iotlan; /host/var/lib/cni/iotlan in the iotlan DaemonSet's pod.
    #[arg(long, value_name = "DIR", verbatim_doc_comment)]
    pub state_dir: Option<PathBuf>,
    /// The kubeconfig for a kubernetes store
    ///
    /// Default: in a pod, the pod's ServiceAccount (in-cluster); on a node, the node
    /// agent's kubeconfig (the store's default); elsewhere $KUBECONFIG, then ~/.kube/config.
    #[arg(long, value_name = "FILE", verbatim_doc_comment)]
    pub kubeconfig: Option<PathBuf>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// The host interface on the IoT LAN [default: as the plugin picks it]
    #[arg(long, value_name = "IF")]
    pub master: Option<String>,
    /// The gateway to probe [default: the master's default gateway]
    #[arg(long, value_name = "IP")]
    pub gateway: Option<Ipv4Addr>,
    /// How long to listen for discovery multicast
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub seconds: u64,
    /// The gateway probe's timeout
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout_ms: u64,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("iotlan").chain(args.iter().copied()))
    }

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_has_help() {
        for sub in [
            "validate",
            "install",
            "status",
            "leases",
            "doctor",
            "version",
            "completions",
        ] {
            let e = parse(&[sub, "--help"]).expect_err("help is an early exit");
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{sub}");
            let text = e.to_string();
            assert!(text.contains("Usage: iotlan"), "{sub}: {text}");
        }
    }

    #[test]
    fn flag_equals_value_and_repeated_configs() {
        let Command::Leases(a) = parse(&[
            "leases",
            "--config=/a.json",
            "--config",
            "/b.json",
            "--state-dir=/s",
            "--kubeconfig=/k",
            "--json",
        ])
        .expect("parses")
        .command
        else {
            panic!("not leases");
        };
        assert_eq!(
            a.configs,
            [PathBuf::from("/a.json"), PathBuf::from("/b.json")]
        );
        assert_eq!(a.state_dir, Some(PathBuf::from("/s")));
        assert_eq!(a.kubeconfig, Some(PathBuf::from("/k")));
        assert!(a.json);
    }

    #[test]
    fn doctor_documents_and_bounds_its_options() {
        let Command::Doctor(d) = parse(&["doctor", "--timeout-ms=600", "--seconds", "2"])
            .expect("parses")
            .command
        else {
            panic!("not doctor");
        };
        assert_eq!((d.seconds, d.timeout_ms), (2, 600));
        assert!(parse(&["doctor", "--seconds=301"]).is_err());
        assert!(parse(&["doctor", "--gateway=not-an-ip"]).is_err());
        let help = parse(&["doctor", "--help"]).expect_err("help").to_string();
        assert!(help.contains("--timeout-ms <MS>"), "{help}");
    }

    #[test]
    fn install_lists_every_option_of_the_agent_in_its_help() {
        let Command::Install(a) = parse(&["install", "--once", "--host-root=/h"])
            .expect("parses")
            .command
        else {
            panic!("not install");
        };
        assert!(a.once);
        assert_eq!(a.host_root, PathBuf::from("/h"));
        let help = parse(&["install", "--help"]).expect_err("help").to_string();
        for flag in [
            "--host-root <DIR>",
            "--flavor <NAME>",
            "--bin-dir <PATH>",
            "--conf-dir <PATH>",
            "--source-dir <DIR>",
            "--serviceaccount-dir <DIR>",
            "--api-server <URL>",
            "--namespace <NS>",
            "--kubeconfig <PATH>",
            "--no-kubeconfig",
            "--token-serviceaccount <SA>",
            "--token-lifetime <SECS>",
            "--interval <SECS>",
            "--health-file <PATH>",
            "--max-age <SECS>",
            "--reconcile-interval <SECS>",
            "--reconcile-grace <SECS>",
            "--identity-retention <DAYS>",
            "--node-name <NAME>",
            "--host-shims",
            "--once",
            "--check-health",
        ] {
            assert!(help.contains(flag), "{flag} missing from\n{help}");
        }
        for default in [
            "[default: /host]",
            "[default: auto]",
            "[default: /var/run/secrets/kubernetes.io/serviceaccount]",
            "[default: iotlan]",
            "[default: 86400]",
            "[default: 10]",
            "[default: /run/iotlan/healthy]",
            "[default: 300]",
            "[default: 30]",
        ] {
            assert!(help.contains(default), "{default} missing from\n{help}");
        }
    }

    #[test]
    fn unknown_options_are_refused_with_a_usage_error() {
        let e = parse(&["leases", "--frobnicate"]).expect_err("unknown");
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
    }
}
