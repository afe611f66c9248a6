//! `iotlan install` against fake host roots (temp dirs laid out as kubeadm, k3s and pre-2024.10
//! k3s hosts), run as the DaemonSet runs it: the real `iotlan` binary, a projected
//! ServiceAccount dir written the way kubelet writes it (a `..data` symlink swapped atomically),
//! and, for the reconcile loop, the API server test double of the kubernetes store.
//!
//! Run: `cargo test -p iotlan-agent --test agent install`. Needs nothing but a Unix host (no root).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::host::*;

/// Checks what `--once` left on a host whose CNI dirs are `bin` and `conf` (host paths).
fn assert_installed(h: &Host, bin: &str, conf: &str) {
    let root = h.root();
    let bin = root.join(bin.trim_start_matches('/'));
    for name in ["iotlan", "iotlan-ipam"] {
        let p = bin.join(name);
        assert!(
            fs::read_to_string(&p).unwrap().contains("iotlan v1"),
            "{}",
            p.display()
        );
        assert_eq!(mode(&p), 0o755, "{}", p.display());
    }
    assert_one_file(&bin);
    no_temp_files(&bin);
    let d = root.join(conf.trim_start_matches('/')).join("iotlan.d");
    assert_eq!(mode(&d), 0o700);
    let kc = d.join("iotlan.kubeconfig");
    assert_eq!(mode(&kc), 0o600);
    // As the plugin reads it (kube's kubeconfig reader).
    let k = read_kubeconfig(&kc);
    assert_eq!(
        k.server,
        format!("https://127.0.0.1:{CLOSED_PORT}"),
        "{}",
        k.text
    );
    assert_eq!(k.token, "token-1", "{}", k.text);
    assert_eq!(k.namespace, "iotlan-system", "{}", k.text);
    // The CA, base64-encoded, decodes back to the ServiceAccount's ca.crt.
    assert_eq!(k.ca, CA_PEM.as_bytes());
    assert!(h.health().exists());
}

/// `iotlan-ipam` is a hard link of `iotlan` in `bin`: one file on the node, under both names.
fn assert_one_file(bin: &Path) {
    let a = fs::metadata(bin.join("iotlan")).unwrap();
    let b = fs::metadata(bin.join("iotlan-ipam")).unwrap();
    assert_eq!(
        (a.dev(), a.ino()),
        (b.dev(), b.ino()),
        "iotlan-ipam is not a link of iotlan in {}",
        bin.display()
    );
}

#[test]
fn kubeadm_host() {
    let h = Host::new(Flavor::Kubeadm);
    let o = h.once(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("kubeadm"), "{}", stderr(&o));
    assert_installed(&h, "/opt/cni/bin", "/etc/cni/net.d");
}

#[test]
fn k3s_host() {
    let h = Host::new(Flavor::K3s);
    let o = h.once(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_installed(
        &h,
        "/var/lib/rancher/k3s/data/cni",
        "/var/lib/rancher/k3s/agent/etc/cni/net.d",
    );
    // k3s's own plugins are left alone.
    assert_eq!(
        fs::read_to_string(h.root().join("var/lib/rancher/k3s/data/cni/bridge")).unwrap(),
        "k3s"
    );
}

#[test]
fn k3s_host_before_october_2024() {
    let h = Host::new(Flavor::K3sLegacy);
    let o = h.once(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("pre-2024.10"), "{}", stderr(&o));
    // Through the `current` link, resolved inside the host root.
    assert_installed(
        &h,
        "/var/lib/rancher/k3s/data/0a1b2c/bin",
        "/var/lib/rancher/k3s/agent/etc/cni/net.d",
    );
}

#[test]
fn overrides_and_an_unknown_host() {
    let h = Host::new(Flavor::Kubeadm);
    mkdir(&h.root().join("usr/libexec/cni"));
    mkdir(&h.root().join("srv/cni-conf"));
    let o = h.once(&[
        "--bin-dir",
        "/usr/libexec/cni",
        "--conf-dir",
        "/srv/cni-conf",
        "--kubeconfig",
        "/srv/cni-conf/custom/kc",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(h.root().join("usr/libexec/cni/iotlan").exists());
    assert_eq!(mode(&h.root().join("srv/cni-conf/custom/kc")), 0o600);
    assert!(!h.root().join("opt/cni/bin/iotlan").exists());

    let empty = Host::new(Flavor::Kubeadm);
    fs::remove_dir_all(empty.root()).unwrap();
    mkdir(&empty.root());
    let o = empty.once(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("/opt/cni/bin") && e.contains("/var/lib/rancher/k3s"),
        "{e}"
    );

    let o = h.once(&["--flavor", "windows"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn health_probe() {
    let h = Host::new(Flavor::Kubeadm);
    let check = |max_age: &str| {
        Command::new(crate::bins::iotlan())
            .args([
                "install",
                "--check-health",
                "--max-age",
                max_age,
                "--health-file",
            ])
            .arg(h.health())
            .output()
            .unwrap()
    };
    assert!(!check("60").status.success(), "no health file yet");
    assert!(h.once(&[]).status.success());
    assert!(check("60").status.success());
    // A loop that stopped making progress two minutes ago fails the probe.
    let f = fs::File::options().write(true).open(h.health()).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(120))
        .unwrap();
    let o = check("60");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("s ago (limit 60s)"), "{}", stderr(&o));
}

#[test]
fn binaries_land_atomically_while_being_read() {
    let h = Host::new(Flavor::Kubeadm);
    // Versions large enough that a non-atomic copy would be seen half-written.
    const SIZE: usize = 16 << 20;
    let version = |c: u8| vec![c; SIZE];
    let versions: Vec<Vec<u8>> = b"abcdef".iter().map(|&c| version(c)).collect();
    h.set_source(&version(b'a'));
    assert!(h.once(&[]).status.success());
    let dest = h.root().join("opt/cni/bin/iotlan");
    let daemon = h.daemon(&["--reconcile-interval", "0"]);
    let stop = AtomicBool::new(false);
    // Stops the reader however the scope ends, also when an assertion below panics.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let (reads, seen) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut reads = 0u32;
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(Ordering::SeqCst) {
                let data = fs::read(&dest).unwrap();
                assert_eq!(data.len(), SIZE, "read a partial binary");
                // One memcmp against the whole version its first byte names.
                let whole = versions
                    .iter()
                    .find(|v| v[0] == data[0])
                    .expect("a known version");
                assert!(data == *whole, "read a mix of two versions");
                seen.insert(data[0]);
                reads += 1;
            }
            (reads, seen)
        });
        {
            let _stop = StopOnDrop(&stop);
            for c in [b'b', b'c', b'd', b'e', b'f'] {
                h.set_source(&version(c));
                wait_for(20, "the daemon to install the new version", || {
                    reader.is_finished() || fs::read(&dest).is_ok_and(|d| d.first() == Some(&c))
                });
            }
        }
        reader.join().unwrap()
    });
    assert!(reads > 10, "only {reads} reads");
    assert!(seen.len() >= 2, "the reader saw only {seen:?}");
    // Each new iotlan was linked as iotlan-ipam too.
    wait_for(20, "iotlan-ipam to follow the last iotlan", || {
        fs::read(dest.with_file_name("iotlan-ipam")).is_ok_and(|d| d.first() == Some(&b'f'))
    });
    assert_one_file(dest.parent().unwrap());
    no_temp_files(dest.parent().unwrap());
    assert!(daemon.terminate().status.success());
}

#[test]
fn a_running_old_binary_keeps_running() {
    let h = Host::new(Flavor::Kubeadm);
    let bin = h.root().join("opt/cni/bin");
    // The old `iotlan` is a real executable (a copy of sleep), running while we install.
    fs::copy("/bin/sleep", bin.join("iotlan")).unwrap();
    let mut running = spawn_written(Command::new(bin.join("iotlan")).arg("2"));
    // The old `iotlan-ipam` (a separate file, as versions before the single binary installed it)
    // is a script a shell reads as it goes: rewriting it in place would make the shell run the new
    // bytes from its old offset.
    let script = "#!/bin/sh\nsleep 1\necho old-finished\n";
    fs::write(bin.join("iotlan-ipam"), script).unwrap();
    fs::set_permissions(bin.join("iotlan-ipam"), fs::Permissions::from_mode(0o755)).unwrap();
    let reading = spawn_written(Command::new(bin.join("iotlan-ipam")).stdout(Stdio::piped()));
    std::thread::sleep(Duration::from_millis(300));
    let new_script = format!("#!/bin/sh\n# iotlan v2\n{}\necho new\n", "#".repeat(4096));
    h.set_source(new_script.as_bytes());
    let o = h.once(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        running.wait().unwrap().success(),
        "the running old iotlan was broken"
    );
    let out = reading.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "old-finished\n");
    assert!(fs::read_to_string(bin.join("iotlan"))
        .unwrap()
        .contains("v2"));
    // A new exec runs the new binary, under both names: one file.
    let o = Command::new(bin.join("iotlan-ipam")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "new\n");
    assert_one_file(&bin);
}

#[test]
fn the_kubeconfig_follows_the_token() {
    let h = Host::new(Flavor::K3s);
    let kc = h
        .root()
        .join("var/lib/rancher/k3s/agent/etc/cni/net.d/iotlan.d/iotlan.kubeconfig");
    let daemon = h.daemon(&["--reconcile-interval", "0"]);
    wait_for(20, "the first kubeconfig", || kc.exists());
    let ino = fs::metadata(&kc).unwrap().ino();
    assert!(fs::read_to_string(&kc).unwrap().contains("\"token-1\""));

    // kubelet rotates the projected token.
    h.write_serviceaccount("token-2", CA_PEM);
    wait_for(20, "the rotated token in the kubeconfig", || {
        fs::read_to_string(&kc)
            .unwrap_or_default()
            .contains("\"token-2\"")
    });
    assert_ne!(
        fs::metadata(&kc).unwrap().ino(),
        ino,
        "rewritten in place, not replaced"
    );
    assert_eq!(mode(&kc), 0o600);
    no_temp_files(kc.parent().unwrap());

    // Someone deletes it, or loosens its mode: put back.
    fs::remove_file(&kc).unwrap();
    wait_for(20, "the kubeconfig to be restored", || kc.exists());
    fs::set_permissions(&kc, fs::Permissions::from_mode(0o644)).unwrap();
    wait_for(20, "the kubeconfig mode to be restored", || {
        mode(&kc) == 0o600
    });

    let o = daemon.terminate();
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stderr(&o);
    assert!(log.contains("terminating"), "{log}");
    // Installed files stay: pods on the node keep using them.
    assert!(kc.exists());
    assert!(h
        .root()
        .join("var/lib/rancher/k3s/data/cni/iotlan")
        .exists());
}

#[test]
fn sigterm_stops_a_daemon_that_is_waiting() {
    let h = Host::new(Flavor::Kubeadm);
    let daemon = h.daemon(&["--interval", "3600", "--reconcile-interval", "0"]);
    wait_for(20, "the first pass", || h.health().exists());
    assert!(daemon.pid() > 0);
    let o = daemon.terminate();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `<conf dir>/iotlan.d/node-name` on each flavor's host.
fn node_name_file(h: &Host, flavor: Flavor) -> PathBuf {
    let conf = match flavor {
        Flavor::Kubeadm => "etc/cni/net.d",
        Flavor::K3s | Flavor::K3sLegacy => "var/lib/rancher/k3s/agent/etc/cni/net.d",
    };
    h.root().join(conf).join("iotlan.d/node-name")
}

#[test]
fn the_node_name_from_the_downward_api_is_written_for_the_plugin() {
    for flavor in [Flavor::Kubeadm, Flavor::K3s, Flavor::K3sLegacy] {
        let h = Host::new(flavor);
        let o = h
            .command(&["--once", "--no-kubeconfig"])
            .env("NODE_NAME", "pi-radio-1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{flavor:?}: {}", stderr(&o));
        let file = node_name_file(&h, flavor);
        assert_eq!(
            fs::read_to_string(&file).unwrap(),
            "pi-radio-1\n",
            "{flavor:?}"
        );
        assert_eq!(mode(&file), 0o644);
        no_temp_files(file.parent().unwrap());
        // What the plugin on this host records in its leases.
        assert_eq!(
            iotlan_ipam::node::local_name(&[file.parent().unwrap()]).as_deref(),
            Some("pi-radio-1")
        );
    }
}

#[test]
fn the_node_name_flag_wins_and_an_unchanged_name_is_not_rewritten() {
    let h = Host::new(Flavor::Kubeadm);
    let file = node_name_file(&h, Flavor::Kubeadm);
    let run = |extra: &[&str]| {
        let mut args = vec!["--once", "--no-kubeconfig"];
        args.extend_from_slice(extra);
        let o = h
            .command(&args)
            .env("NODE_NAME", "from-env")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    };
    run(&["--node-name", "node-a.lan"]);
    assert_eq!(fs::read_to_string(&file).unwrap(), "node-a.lan\n");
    let inode = fs::metadata(&file).unwrap().ino();
    run(&["--node-name", "node-a.lan"]);
    assert_eq!(
        fs::metadata(&file).unwrap().ino(),
        inode,
        "rewritten unchanged"
    );
    // A wrong file (a cloned image's, a hand edit) is put right, atomically (a new inode).
    fs::write(&file, "other\n").unwrap();
    run(&[]);
    assert_eq!(fs::read_to_string(&file).unwrap(), "from-env\n");
}

#[test]
fn an_invalid_node_name_fails_and_none_writes_nothing() {
    let h = Host::new(Flavor::Kubeadm);
    let file = node_name_file(&h, Flavor::Kubeadm);
    let o = h
        .command(&["--once", "--no-kubeconfig"])
        .env("NODE_NAME", "Not_A_Node")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Not_A_Node") && stderr(&o).contains("NODE_NAME"),
        "{}",
        stderr(&o)
    );
    assert!(!file.exists());
    // No name given at all: nothing written (the plugin falls back to the host name), and fine.
    let o = h
        .command(&["--once", "--no-kubeconfig"])
        .env_remove("NODE_NAME")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!file.exists());
}
