//! The options of `iotlan install` (clap derive; the operator CLI takes them as its `install`
//! subcommand's arguments).

use std::path::PathBuf;
use std::time::Duration;

use super::layout::{Flavor, Overrides};
use super::token;

/// The agent's options: where the host's CNI dirs and the ServiceAccount are, what it writes, and
/// how often its passes run. An option given twice takes its last value (a DaemonSet's `args`
/// after a default set in the image).
#[derive(Debug, Clone, clap::Args)]
#[command(args_override_self = true)]
pub struct Args {
    /// Where the host's file system is mounted
    #[arg(long, value_name = "DIR", default_value = iotlan_ipam::paths::HOST_ROOT)]
    pub host_root: PathBuf,
    /// The kind of host: its CNI dirs
    #[arg(long, value_name = "NAME", value_enum, default_value_t = FlavorArg::Auto)]
    pub flavor: FlavorArg,
    /// Host path of the CNI binary dir (overrides detection)
    #[arg(long, value_name = "PATH")]
    pub bin_dir: Option<PathBuf>,
    /// Host path of the CNI config dir (overrides detection)
    #[arg(long, value_name = "PATH")]
    pub conf_dir: Option<PathBuf>,
    /// Where iotlan is [default: this binary's dir]; iotlan-ipam is installed as a hard link of it
    #[arg(long, value_name = "DIR")]
    pub source_dir: Option<PathBuf>,
    /// The ServiceAccount's token, ca.crt and namespace
    #[arg(
        long = "serviceaccount-dir",
        value_name = "DIR",
        default_value = iotlan_ipam::paths::SERVICEACCOUNT_DIR
    )]
    pub sa_dir: PathBuf,
    /// API server for the kubeconfig [default: from KUBERNETES_SERVICE_HOST/PORT]
    #[arg(long, value_name = "URL")]
    pub api_server: Option<String>,
    /// Namespace of the lease objects [default: the ServiceAccount's]
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Host path of the kubeconfig [default: <conf dir>/iotlan.d/iotlan.kubeconfig]
    #[arg(long, value_name = "PATH", value_parser = absolute_path)]
    pub kubeconfig: Option<PathBuf>,
    /// Write no kubeconfig (file store only)
    #[arg(long)]
    pub no_kubeconfig: bool,
    /// The ServiceAccount (in this pod's namespace) whose token the plugin's kubeconfig carries,
    /// from the TokenRequest API
    #[arg(long, value_name = "SA", default_value = token::DEFAULT_SERVICE_ACCOUNT)]
    pub token_serviceaccount: String,
    /// What that token is asked to live (seconds, at least 600); renewed after a quarter to a half
    /// of it
    #[arg(long, value_name = "SECS", default_value = "86400", value_parser = token_lifetime)]
    pub token_lifetime: Duration,
    /// How often to re-check token, binaries and health (seconds)
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = interval)]
    pub interval: Duration,
    /// Touched every tick
    #[arg(long, value_name = "PATH", default_value = iotlan_ipam::paths::HEALTH_FILE)]
    pub health_file: PathBuf,
    /// --check-health: oldest acceptable health file (seconds)
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = seconds)]
    pub max_age: Duration,
    /// Free leases of deleted pods this often (seconds); 0 disables
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = seconds)]
    pub reconcile_interval: Duration,
    /// Free a lease only once its pod has been missing this long (seconds)
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = seconds)]
    pub reconcile_grace: Duration,
    /// Delete a sticky identity record (a pod's latest addresses) unused this long (days); 0 keeps
    /// them all
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub identity_retention: u64,
    /// This node's Kubernetes name, written to <conf dir>/iotlan.d/node-name for the plugin
    /// [default: $NODE_NAME]
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Repair the hostShim links, addresses and pod routes on this node every reconcile interval
    /// (needs hostNetwork and CAP_NET_ADMIN: the manifests' host-shim component)
    #[arg(long)]
    pub host_shims: bool,
    /// Do one pass and exit
    #[arg(long)]
    pub once: bool,
    /// The liveness probe: exit 0 when the health file is younger than --max-age
    #[arg(long)]
    pub check_health: bool,
}

/// `--flavor`: detected, or one of the layouts [`super::layout`] knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlavorArg {
    /// k3s when its config dir exists, else kubeadm
    Auto,
    /// /opt/cni/bin, /etc/cni/net.d
    Kubeadm,
    /// k3s since October 2024: /var/lib/rancher/k3s/data/cni
    K3s,
    /// k3s before October 2024: /var/lib/rancher/k3s/data/current/bin
    K3sLegacy,
}

impl Args {
    /// The layout overrides: `None` means detect.
    pub(super) fn layout(&self) -> Overrides {
        Overrides {
            flavor: match self.flavor {
                FlavorArg::Auto => None,
                FlavorArg::Kubeadm => Some(Flavor::Kubeadm),
                FlavorArg::K3s => Some(Flavor::K3s),
                FlavorArg::K3sLegacy => Some(Flavor::K3sLegacy),
            },
            bin_dir: self.bin_dir.clone(),
            conf_dir: self.conf_dir.clone(),
        }
    }

    /// `--identity-retention` as a duration; `None` (0 days) keeps the records.
    #[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
    pub(super) fn identity_retention(&self) -> Option<Duration> {
        (self.identity_retention > 0)
            .then(|| Duration::from_secs(self.identity_retention.saturating_mul(86_400)))
    }
}

fn seconds(v: &str) -> Result<Duration, String> {
    v.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("not a number of seconds: {v:?}"))
}

/// At least a second: every wait has a bound, and none is a busy loop.
fn interval(v: &str) -> Result<Duration, String> {
    Ok(seconds(v)?.max(Duration::from_secs(1)))
}

fn token_lifetime(v: &str) -> Result<Duration, String> {
    let d = seconds(v)?;
    if d < token::MIN_LIFETIME {
        return Err(format!(
            "the API server refuses tokens of less than {} s",
            token::MIN_LIFETIME.as_secs()
        ));
    }
    Ok(d)
}

fn absolute_path(v: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(v);
    if !p.is_absolute() {
        return Err(format!("must be an absolute host path: {v}"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `iotlan install`, as the CLI takes it.
    #[derive(Debug, Parser)]
    #[command(name = "install")]
    struct Install {
        #[command(flatten)]
        args: Args,
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Install::try_parse_from(std::iter::once("install").chain(args.iter().copied()))
            .map(|i| i.args)
    }

    #[test]
    fn the_defaults_are_the_daemonsets() {
        let a = parse(&[]).expect("no option is required");
        assert_eq!(a.host_root, PathBuf::from("/host"));
        assert_eq!(a.layout().flavor, None);
        assert_eq!(
            a.sa_dir,
            PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount")
        );
        assert_eq!(a.token_serviceaccount, "iotlan");
        assert_eq!(a.token_lifetime, Duration::from_secs(86_400));
        assert_eq!(a.interval, Duration::from_secs(10));
        assert_eq!(a.health_file, PathBuf::from("/run/iotlan/healthy"));
        assert_eq!(a.max_age, Duration::from_secs(60));
        assert_eq!(a.reconcile_interval, Duration::from_secs(60));
        assert_eq!(a.reconcile_grace, Duration::from_secs(300));
        assert_eq!(
            a.identity_retention(),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert!(!(a.no_kubeconfig || a.host_shims || a.once || a.check_health));
    }

    #[test]
    fn values_are_read_and_bounded() {
        let a = parse(&[
            "--flavor=k3s-legacy",
            "--interval",
            "0",
            "--identity-retention=0",
            "--kubeconfig=/etc/kc",
            "--once",
        ])
        .expect("parses");
        assert_eq!(a.layout().flavor, Some(Flavor::K3sLegacy));
        let twice = parse(&["--interval=1", "--interval", "3600"]).expect("the last one wins");
        assert_eq!(twice.interval, Duration::from_secs(3600));
        assert_eq!(a.interval, Duration::from_secs(1), "never a busy loop");
        assert_eq!(a.identity_retention(), None);
        assert_eq!(a.kubeconfig, Some(PathBuf::from("/etc/kc")));
        let refused = |args: &[&str], why: &str| {
            let e = parse(args).expect_err("refused").to_string();
            assert!(e.contains(why), "{args:?}: {e}");
        };
        refused(&["--flavor", "windows"], "windows");
        refused(&["--token-lifetime=599"], "less than 600 s");
        refused(&["--kubeconfig=kc"], "absolute");
        refused(&["--max-age=soon"], "not a number of seconds");
        refused(&["--frobnicate"], "--frobnicate");
    }
}
