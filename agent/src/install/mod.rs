//! `iotlan install`: the DaemonSet's node agent.
//!
//! - Detects the host's CNI dirs under a host root (kubeadm, k3s, k3s before 2024.10, or
//!   given) and copies `iotlan` there atomically (temp file in the same dir, fsync, rename), so
//!   a running exec of the old binary is never broken; `iotlan-ipam` is a hard link of it (a
//!   copy where links are refused), swapped in the same way: one executable on the node.
//! - Writes `<conf dir>/iotlan.d/iotlan.kubeconfig` (mode 0600, dir 0700) for the plugin: the
//!   API server, the ServiceAccount's CA, and a token of the ServiceAccount from the TokenRequest
//!   API, which outlives this pod and is renewed well before it expires ([`token`]); every tick
//!   it compares the file with what it should be.
//! - Writes `<conf dir>/iotlan.d/node-name` (mode 0644) from `--node-name` or `NODE_NAME` (the
//!   downward API's `spec.nodeName`): the node the plugin records in its leases.
//! - Every tick it also re-checks the binaries (a k3s upgrade switches its data dir) and
//!   touches a health file; `iotlan install --check-health` is the exec liveness probe.
//! - With the `kubernetes` store compiled in, it runs the reconcile loop: leases whose pod no
//!   longer exists (after a grace period) are freed; and, knowing its node name, the same for the
//!   file store's leases on this node whose pod is not on this node any more.
//! - SIGTERM or SIGINT ends it at once with status 0; installed files stay, because pods on
//!   the node keep using them while the DaemonSet rolls.

mod args;
mod files;
mod kubeconfig;
mod layout;
mod netns;
pub use netns::ShimRepair;
mod node_name;
mod reassert;
mod reconcile;
mod reconcile_files;
mod token;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

pub use args::Args;
use layout::Layout;

/// The one executable we install, looked up in the source dir.
const BINARY: &str = "iotlan";
/// Its other names on the node (it dispatches on argv[0]): NADs name `"ipam": {"type": "iotlan-ipam"}`.
const LINKS: [&str; 1] = ["iotlan-ipam"];

#[derive(Debug, thiserror::Error)]
enum InstallError {
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    #[error(transparent)]
    File(#[from] files::FileError),
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::KubeconfigError),
    #[error(transparent)]
    NodeName(#[from] node_name::NodeNameError),
    #[error("cannot find our own binary dir: {0}")]
    SelfPath(std::io::Error),
    #[error("signal setup: {0}")]
    Signal(nix::Error),
}

/// What the `iotlan` binary lends the agent: the agent cannot depend on the plugin's crate (the
/// binary, which depends on the agent), so the plugin's parts it runs come in here.
pub struct Hooks<'a> {
    /// Sets up logging (the binary's `tracing` subscriber); called once, before the first pass.
    pub init_logging: &'a dyn Fn(),
    /// The hostShim repair pass (`iotlan::link::shim::repair`): given the plugin's state dir and
    /// whether a pod's network namespace (a host path) is provably gone, it puts back every shim
    /// link, address and pod route the records name, and drops the entries of pods that are gone.
    #[allow(clippy::type_complexity)]
    pub repair_host_shims: &'a dyn Fn(&Path, &dyn Fn(&str) -> bool) -> Result<ShimRepair, String>,
}

/// Entry point of `iotlan install`. Returns the exit status: 0 done (or stopped by SIGTERM), 1
/// failed. (A usage error is clap's: 2.)
pub fn main(opts: &Args, hooks: &Hooks) -> i32 {
    if opts.check_health {
        return check_health(&opts.health_file, opts.max_age);
    }
    (hooks.init_logging)();
    match run(opts, hooks) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    }
}

fn check_health(path: &Path, max_age: Duration) -> i32 {
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
    match age {
        Ok(age) if age <= max_age => 0,
        Ok(age) => {
            eprintln!(
                "{}: last touched {}s ago (limit {}s)",
                path.display(),
                age.as_secs(),
                max_age.as_secs()
            );
            1
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            1
        }
    }
}

/// The state of one installer: what it has found and last written.
struct Agent {
    opts: Args,
    layout: Layout,
    source_dir: PathBuf,
    /// (host path, path under the host root) of the kubeconfig, unless disabled.
    kubeconfig: Option<(PathBuf, PathBuf)>,
    server: Option<String>,
    /// This node's Kubernetes name, for the plugin's leases.
    node_name: Option<String>,
    /// The plugin's token, kept across ticks.
    renewer: token::Renewer,
}

impl Agent {
    fn new(opts: &Args) -> Result<Agent, InstallError> {
        let layout = layout::detect(&opts.host_root, &opts.layout())?;
        tracing::info!(
            flavor = %layout.flavor,
            bin_dir = %layout.host_bin_dir.display(),
            conf_dir = %layout.host_conf_dir.display(),
            "host CNI layout"
        );
        let source_dir = match &opts.source_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()
                .map_err(InstallError::SelfPath)?
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/")),
        };
        let kubeconfig = if opts.no_kubeconfig {
            None
        } else {
            let host = opts.kubeconfig.clone().unwrap_or_else(|| {
                layout
                    .host_conf_dir
                    .join(iotlan_ipam::paths::AGENT_SUBDIR)
                    .join(iotlan_ipam::paths::KUBECONFIG_FILE)
            });
            let local = layout::resolve_in_root(&opts.host_root, &host)?;
            Some((host, local))
        };
        let server = match (&kubeconfig, &opts.api_server) {
            (None, _) => None,
            (Some(_), Some(s)) => Some(s.clone()),
            (Some(_), None) => Some(kubeconfig::server_from_env()?),
        };
        // A token the kubeconfig holds already (this agent restarted) is kept if no other comes.
        let existing = kubeconfig
            .as_ref()
            .and_then(|(_, local)| std::fs::read_to_string(local).ok())
            .and_then(|text| kubeconfig::issued_token(&text))
            .map(|(token, expires_unix)| token::Issued {
                token,
                expires_unix,
            });
        let renewer =
            token::Renewer::new(&opts.token_serviceaccount, opts.token_lifetime, existing);
        let node_name = node_name::choose(opts.node_name.as_deref())?;
        if node_name.is_none() {
            tracing::warn!("no node name (NODE_NAME or --node-name): the plugin records the host name in its leases");
        }
        Ok(Agent {
            opts: opts.clone(),
            layout,
            source_dir,
            kubeconfig,
            server,
            node_name,
            renewer,
        })
    }

    /// One pass: binaries, kubeconfig, health file. Idempotent and cheap when nothing changed.
    fn tick(&mut self) -> Result<(), InstallError> {
        files::remove_stale_temps(&self.layout.bin_dir);
        let installed = self.layout.bin_dir.join(BINARY);
        if files::install_binary(&self.source_dir.join(BINARY), &installed)? {
            tracing::info!(path = %self.layout.host_bin_dir.join(BINARY).display(), "installed");
        }
        for name in LINKS {
            if files::install_link(&installed, &self.layout.bin_dir.join(name))? {
                tracing::info!(path = %self.layout.host_bin_dir.join(name).display(), "installed");
            }
        }
        if let (Some((host, local)), Some(server)) = (&self.kubeconfig, &self.server) {
            let own = kubeconfig::load(&self.opts.sa_dir, server, self.opts.namespace.as_deref())?;
            let sa_namespace = kubeconfig::serviceaccount_namespace(&self.opts.sa_dir)?;
            let now = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            #[cfg(feature = "kubernetes")]
            let plugin = self
                .renewer
                .plugin_token(&own, &sa_namespace, now, &token::request);
            // Nothing to ask with, and no store that reads the kubeconfig: the pod's own token.
            #[cfg(not(feature = "kubernetes"))]
            let plugin = {
                let _ = (&self.renewer, sa_namespace, now);
                token::PluginToken {
                    token: own.token.clone(),
                    expires_unix: None,
                }
            };
            let creds = kubeconfig::Credentials {
                token: plugin.token,
                ..own
            };
            let text = kubeconfig::render(&creds, plugin.expires_unix)?;
            if files::replace_if_changed(local, text.as_bytes(), 0o600, 0o700)? {
                tracing::info!(path = %host.display(), "kubeconfig written");
            }
        }
        if let Some(name) = &self.node_name {
            if node_name::write(&self.layout.conf_dir, name)? {
                tracing::info!(node = %name, path = %node_name::path(&self.layout.host_conf_dir).display(), "node name written");
            }
        }
        touch(&self.opts.health_file)?;
        Ok(())
    }
}

fn touch(path: &Path) -> Result<(), files::FileError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| files::FileError {
            op: "create dir",
            path: dir.into(),
            source,
        })?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .map_err(|source| files::FileError {
            op: "touch",
            path: path.into(),
            source,
        })
}

/// Blocks SIGTERM and SIGINT in this thread (and every thread started after), and returns a
/// channel that receives one message when either arrives.
fn termination_channel() -> Result<mpsc::Receiver<i32>, InstallError> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(InstallError::Signal)?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                let _ = tx.send(sig as i32);
            }
        })
        .map_err(|e| InstallError::Signal(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
    Ok(rx)
}

fn run(opts: &Args, hooks: &Hooks) -> Result<(), InstallError> {
    let signals = termination_channel()?;
    let mut agent = Agent::new(opts)?;
    agent.tick()?;
    if opts.once {
        if opts.host_shims {
            netns::warn_unseen_dirs(&opts.host_root);
            netns::repair_host_shims(opts, hooks);
        }
        return Ok(());
    }
    let mut reconciler = reconcile::Reconciler::new(&agent, opts);
    let mut file_reconciler = reconcile_files::FileReconciler::new(&agent, opts);
    let mut reasserter = reassert::NodeReasserter::new(&agent, opts);
    if reasserter.is_some() || opts.host_shims {
        netns::warn_unseen_dirs(&opts.host_root);
    }
    let mut last_reconcile: Option<Instant> = None;
    loop {
        let due = (reconciler.is_some()
            || file_reconciler.is_some()
            || reasserter.is_some()
            || opts.host_shims)
            && last_reconcile.is_none_or(|t| t.elapsed() >= opts.reconcile_interval);
        if due {
            // First: the reconciler then judges the Leases this node has re-asserted.
            if let Some(r) = reasserter.as_mut() {
                r.run_once();
            }
            if let Some(r) = reconciler.as_mut() {
                r.run_once();
            }
            if let Some(r) = file_reconciler.as_mut() {
                r.run_once();
            }
            if opts.host_shims {
                netns::repair_host_shims(opts, hooks);
            }
            last_reconcile = Some(Instant::now());
        }
        match signals.recv_timeout(opts.interval) {
            Ok(sig) => {
                tracing::info!(signal = sig, "terminating");
                return Ok(());
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        // A failed tick (say, a token being swapped) is retried next time; liveness notices
        // when it keeps failing, because the health file is touched only on success.
        if let Err(e) = agent.tick() {
            tracing::warn!("{e}");
        }
    }
}
