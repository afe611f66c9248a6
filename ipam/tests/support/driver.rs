//! A one-shot command-line driver of the file store, so tests and benchmarks can run each operation
//! as its own process (as the CNI plugin does) without waiting for the plugin binary:
//!
//! ```text
//! <exe> driver <config.json> <network> add <identity> <container-id> <ifname> [requested-ip...]
//! <exe> driver <config.json> <network> del <container-id> <ifname>
//! <exe> driver <config.json> <network> gc [<container-id>:<ifname>...]
//! <exe> driver <config.json> <network> leases
//! ```
//!
//! `<config.json>` holds the CNI config's `ipam` object. Prints the resulting leases as JSON on stdout.
//! Exit codes: 0 done, 11 retryable (busy), 1 any other error (message on stderr), 2 usage.
//! With `IOTLAN_DRIVER_WAIT_STDIN` set it first waits for the end of its stdin, so a test can start
//! many processes and release them at one instant by closing their stdin pipes. Included by path by
//! tests/multiprocess and the pool benchmark, which has no use for [`test_main`] (`allow(dead_code)`).
#![allow(dead_code)]

use iotlan_ipam::{open_store, AllocRequest, Attachment, Error, Lease, Pool, PoolConfig};

pub const ARG: &str = "driver";

/// The `main` of a self-exec test binary (`harness = false`): runs as the driver when called with
/// [`ARG`], else runs `tests` (filtered by the non-flag arguments), prints libtest's closing line and
/// exits 1 when one failed.
pub fn test_main(tests: &[(&str, fn())]) {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(ARG) {
        std::process::exit(run(&args[2..]));
    }
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let (mut passed, mut failed, mut filtered) = (0, 0, 0);
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            filtered += 1;
            continue;
        }
        println!("test {name} ...");
        let start = std::time::Instant::now();
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                println!("test {name} ... ok ({:.1?})", start.elapsed());
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    // libtest's own closing line, which test.sh's summary (scripts/test-summary) counts.
    println!(
        "test result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; {filtered} filtered out",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Runs the driver with the arguments after `driver`; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    if std::env::var_os("IOTLAN_DRIVER_WAIT_STDIN").is_some() {
        // Blocks until the parent closes our stdin.
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    }
    match execute(args) {
        Ok(Some(leases)) => {
            println!("{}", serde_json::to_string(&leases).unwrap_or_default());
            0
        }
        Ok(None) => {
            eprintln!("usage: driver <config.json> <network> add|del|gc|leases ...");
            2
        }
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_retryable() {
                11
            } else {
                1
            }
        }
    }
}

fn execute(args: &[String]) -> Result<Option<Vec<Lease>>, Error> {
    let [config, network, verb, rest @ ..] = args else {
        return Ok(None);
    };
    let text = std::fs::read(config).map_err(|e| Error::Io {
        op: "read",
        path: config.into(),
        source: e,
    })?;
    let cfg: PoolConfig = serde_json::from_slice(&text).map_err(|e| Error::InvalidConfig {
        field: "ipam".into(),
        reason: e.to_string(),
    })?;
    let pool = Pool::new(network, &cfg)?;
    let store = open_store(network, &cfg.store, &pool)?;
    let leases = match (verb.as_str(), rest) {
        ("add", [identity, cid, ifname, requested @ ..]) => {
            let mut ips = Vec::new();
            for r in requested {
                ips.push(r.parse().map_err(|_| Error::InvalidConfig {
                    field: "requested".into(),
                    reason: format!("{r:?} is not an IP address"),
                })?);
            }
            store.allocate(
                &pool,
                &AllocRequest {
                    identity: identity.clone(),
                    attachment: Attachment::new(cid.as_str(), ifname.as_str()),
                    requested: ips,
                    ..AllocRequest::default()
                },
            )?
        }
        ("del", [cid, ifname]) => store.release(&Attachment::new(cid.as_str(), ifname.as_str()))?,
        ("gc", valid) => {
            let valid: Vec<Attachment> = valid
                .iter()
                .filter_map(|a| a.split_once(':'))
                .map(|(c, i)| Attachment::new(c, i))
                .collect();
            store.gc(&valid)?
        }
        ("leases", []) => store.leases()?,
        _ => return Ok(None),
    };
    Ok(Some(leases))
}
