//! Running commands: unique names, and commands whose failure names itself.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}-{}-{n}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

pub(crate) fn describe<S: AsRef<OsStr>>(cmd: &str, args: &[S]) -> String {
    let mut s = cmd.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// Runs a command and returns its output without judging the exit status.
/// Panics only when the command cannot be started (with its name in the message).
pub fn try_run<S: AsRef<OsStr>>(cmd: &str, args: &[S]) -> Output {
    match Command::new(cmd).args(args).stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) => panic!("cannot start `{}`: {e}", describe(cmd, args)),
    }
}

/// Runs a command; panics with the command, its status, stdout and stderr when it fails.
pub fn run<S: AsRef<OsStr>>(cmd: &str, args: &[S]) -> Output {
    let out = try_run(cmd, args);
    if !out.status.success() {
        panic!(
            "`{}` failed ({}):\nstdout: {}\nstderr: {}",
            describe(cmd, args),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    out
}

/// [`run`] with a shell-like string split on whitespace (no quoting), for short `ip` commands.
pub fn sh(line: &str) -> Output {
    let mut parts = line.split_whitespace();
    let cmd = parts.next().unwrap_or_else(|| panic!("empty command line"));
    let args: Vec<&str> = parts.collect();
    run(cmd, &args)
}

pub(crate) fn stdout_string(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------------
