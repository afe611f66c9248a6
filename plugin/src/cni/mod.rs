//! The CNI protocol: environment, versions, results, and the entry point that reads stdin, runs a
//! verb and writes exactly one JSON document (a result or an error) to stdout.

pub mod env;
pub mod result;
pub mod version;

use std::io::{Read, Write};

use crate::config::NetConf;
use crate::error::{Error, ErrorReply, Result};
use env::{Command, Env};
use version::CURRENT;

/// Which binary is running: the main plugin or the standalone IPAM plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    Main,
    Ipam,
}

/// Runs one CNI invocation and returns the process exit code.
pub fn main(plugin: Plugin) -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let mut version_for_errors = CURRENT.to_string();
    let outcome = read
        .map_err(|e| Error::io("cannot read the configuration from stdin", e))
        .and_then(|_| dispatch(plugin, &stdin, &mut version_for_errors));
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(json)) => {
            let _ = writeln!(out, "{json}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "failed");
            let _ = writeln!(out, "{}", ErrorReply::new(&version_for_errors, &e));
            1
        }
    }
}

fn dispatch(
    plugin: Plugin,
    stdin: &[u8],
    version_for_errors: &mut String,
) -> Result<Option<serde_json::Value>> {
    let env = Env::from_process()?;
    // The version the caller speaks (VERSION may come with an empty stdin).
    let requested: Option<String> = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|c| c.as_str())
                .map(str::to_string)
        });
    if let Some(s) = requested
        .as_deref()
        .filter(|s| version::SUPPORTED.contains(s))
    {
        *version_for_errors = s.to_string();
    }
    let verb = match env.command {
        Command::Add => Verb::Add,
        Command::Check => Verb::Check,
        Command::Status => Verb::Status,
        Command::Gc => Verb::Gc,
        // DEL reads only what it needs, before the full parse: a config that changed since ADD
        // must not keep a pod in Terminating.
        Command::Del => return del(plugin, &env, stdin),
        Command::Version => return Ok(Some(version::version_reply(requested.as_deref()))),
    };
    let mut conf = NetConf::parse(stdin)?;
    if let Some(ctr) = &env.container {
        conf.apply_cni_args(&ctr.args)?;
    }
    crate::logging::init(conf.log_file.as_deref(), conf.log_level.as_deref());
    tracing::debug!(command = ?env.command, network = %conf.name, "invoked");
    let v = conf.cni_version;
    let refuse = |verb: &str, since: &str| {
        Err(Error::IncompatibleVersion(format!(
            "cniVersion {} does not have {verb} (it exists from {since} on)",
            conf.cni_version_str
        )))
    };
    match (plugin, verb) {
        (_, Verb::Check) if !v.has_check() => refuse("CHECK", "0.4.0"),
        (_, Verb::Status) if !v.has_status_and_gc() => refuse("STATUS", "1.1.0"),
        (_, Verb::Gc) if !v.has_status_and_gc() => refuse("GC", "1.1.0"),
        (Plugin::Main, Verb::Add) => {
            let ctr = container(&env)?;
            Ok(Some(crate::verbs::add::run(&env, &conf, ctr)?.to_json(v)))
        }
        (Plugin::Main, Verb::Check) => {
            crate::verbs::check::run(&env, &conf, container(&env)?).map(|_| None)
        }
        (Plugin::Main, Verb::Status) => crate::verbs::status::run(&env, &conf).map(|_| None),
        (Plugin::Main, Verb::Gc) => crate::verbs::gc::run(&env, &conf).map(|_| None),
        (Plugin::Ipam, verb) => crate::verbs::ipam_plugin::run(verb, &env, &conf),
    }
}

/// The verbs served with the whole configuration parsed: VERSION needs none, and DEL reads only
/// what it needs ([`crate::config::DelConf`]), so neither reaches the full parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Check,
    Status,
    Gc,
}

/// DEL, leniently: the main plugin takes the link off and releases; the IPAM plugin only releases.
fn del(plugin: Plugin, env: &Env, stdin: &[u8]) -> Result<Option<serde_json::Value>> {
    let conf = crate::config::DelConf::parse(stdin);
    crate::logging::init(conf.log_file.as_deref(), conf.log_level.as_deref());
    let ctr = container(env)?;
    match plugin {
        Plugin::Main => crate::verbs::del::run(env, &conf, ctr),
        Plugin::Ipam => crate::verbs::del::release(env, &conf, ctr),
    }
    .map(|_| None)
}

fn container(env: &Env) -> Result<&env::Container> {
    env.container
        .as_ref()
        .ok_or_else(|| Error::InvalidEnv("CNI_CONTAINERID/CNI_IFNAME are not set".into()))
}
