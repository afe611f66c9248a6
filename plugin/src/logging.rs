//! Logs go through `tracing` to stderr, or to `logFile`; never to stdout, which carries only the
//! CNI result.

use std::path::Path;

use tracing::level_filters::LevelFilter;

/// Installs the subscriber. `level` is error|warn|info|debug|trace (default info); the
/// `IOTLAN_LOG` environment variable overrides it.
pub fn init(file: Option<&Path>, level: Option<&str>) {
    let level = std::env::var("IOTLAN_LOG")
        .ok()
        .or_else(|| level.map(str::to_string));
    let filter = match level.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("off") => LevelFilter::OFF,
        Some("error") => LevelFilter::ERROR,
        Some("warn") | Some("warning") => LevelFilter::WARN,
        Some("debug") => LevelFilter::DEBUG,
        Some("trace") => LevelFilter::TRACE,
        _ => LevelFilter::INFO,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_target(false);
    let opened = file.map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
    });
    let _ = match opened {
        Some(Ok(f)) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        Some(Err(e)) => {
            let r = builder
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .try_init();
            tracing::warn!(error = %e, "cannot open logFile; logging to stderr");
            r
        }
        // No colors: the logs land in kubelet's, Multus's or a runtime's capture, and the `ansi`
        // feature's code would cost the static binary about 10 KB.
        None => builder
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}
