//! The file store's record format and failure modes: corrupted and truncated records, stray temporary files, a held lock,
//! a read-only file system and a full disk. The last two mount a small tmpfs, which needs root (they
//! skip with a message otherwise, and fail when CI=true).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::contract::{ip, ips, req, v4_pool};
use iotlan_ipam::{Attachment, Error, FileStore, Store};

fn open(dir: &Path) -> FileStore {
    FileStore::open(&dir.join("iot"), Duration::from_secs(5)).unwrap()
}

fn expect_corrupt(r: Result<impl std::fmt::Debug, Error>, file: &Path) {
    match r {
        Err(e @ Error::Corrupt { .. }) => {
            let Error::Corrupt { path, .. } = &e else {
                unreachable!()
            };
            assert_eq!(path, file);
            assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        }
        other => panic!("expected Corrupt naming {}, got {other:?}", file.display()),
    }
}

/// `file` is named by [`Store::unreadable`] and its lease left out of [`Store::leases`] (which
/// still lists every readable one).
fn expect_unreadable(store: &FileStore, file: &Path) {
    let named = store.unreadable().unwrap();
    assert!(
        named
            .iter()
            .any(|n| n.contains(&file.display().to_string())),
        "{} is not named: {named:?}",
        file.display()
    );
    let leases = store.leases().unwrap();
    assert!(
        leases
            .iter()
            .all(|l| !file.ends_with(format!("ip:{}", l.ip))),
        "{leases:?}"
    );
}

/// Replaces the record at `path` by a link to `target` (what a hand edit would leave).
fn set_record(path: &Path, target: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let _ = fs::remove_file(path);
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), path).unwrap();
}

fn record(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    fs::read_link(path).unwrap().as_os_str().as_bytes().to_vec()
}

#[test]
fn records_are_links_holding_their_json() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let leases = store.allocate(&v4_pool(), &req("ns/a", "a")).unwrap();
    let net = dir.path().join("iot");
    let lease: serde_json::Value =
        serde_json::from_slice(&record(&net.join(format!("ip:{}", leases[0].ip)))).unwrap();
    assert_eq!(lease["ip"], leases[0].ip.to_string());
    assert_eq!(lease["identity"], "ns/a");
    assert_eq!(lease["containerId"], "a");
    assert_eq!(lease["ifname"], "net1");
    let index: serde_json::Value =
        serde_json::from_slice(&record(&net.join("attachment:a:net1"))).unwrap();
    assert_eq!(index["ips"][0], leases[0].ip.to_string());
    let latest: serde_json::Value =
        serde_json::from_slice(&record(&net.join("identity:ns:a"))).unwrap();
    assert_eq!(latest["identity"], "ns/a");
    assert_eq!(latest["ips"][0], leases[0].ip.to_string());

    // DEL removes the lease and the index, and keeps the identity's addresses (sticky).
    store.release(&Attachment::new("a", "net1")).unwrap();
    let mut names: Vec<String> = fs::read_dir(&net)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["identity:ns:a", "lock", "tmp"]);
}

#[test]
fn an_identity_too_long_for_a_file_name_is_remembered_under_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pool = v4_pool();
    // Kubernetes allows pod names of 253 bytes.
    let long = format!("ns/{}", "p".repeat(253));
    let first = store.allocate(&pool, &req(&long, "a")).unwrap();
    store.release(&Attachment::new("a", "net1")).unwrap();
    // Another pod takes the hash slot's neighbourhood; the long identity still gets its address back.
    store.allocate(&pool, &req("ns/other", "o")).unwrap();
    assert_eq!(
        store.allocate(&pool, &req(&long, "b")).unwrap()[0].ip,
        first[0].ip
    );
    let hashed: Vec<_> = fs::read_dir(dir.path().join("iot"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("identity:#"))
        .collect();
    assert_eq!(hashed.len(), 1, "{hashed:?}");
}

/// Moves a record's time (its link's mtime) `secs` into the past.
fn age_record(path: &Path, secs: u64) {
    let t = std::time::SystemTime::now() - Duration::from_secs(secs);
    let ts = nix::sys::time::TimeSpec::from(t.duration_since(std::time::UNIX_EPOCH).unwrap());
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

#[test]
fn gc_removes_identity_records_unused_for_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400;
    let store = open(dir.path()).with_identity_retention(Some(Duration::from_secs(30 * day)));
    let pool = v4_pool();
    let net = dir.path().join("iot");
    let gone = store.allocate(&pool, &req("ns/gone", "g")).unwrap();
    store.allocate(&pool, &req("ns/recent", "r")).unwrap();
    store.allocate(&pool, &req("ns/holding", "h")).unwrap();
    let lost = store.allocate(&pool, &req("ns/lost", "l")).unwrap();
    for cid in ["g", "r"] {
        store.release(&Attachment::new(cid, "net1")).unwrap();
    }
    // "gone" let go 31 days ago, "recent" 29 days ago; "holding" has held its address for 40 days
    // and "lost" too, until the GC below frees it (its runtime forgot the container).
    age_record(&net.join("identity:ns:gone"), 31 * day);
    age_record(&net.join("identity:ns:recent"), 29 * day);
    age_record(&net.join("identity:ns:holding"), 40 * day);
    age_record(&net.join("identity:ns:lost"), 40 * day);

    let freed = store.gc(&[Attachment::new("h", "net1")]).unwrap();
    assert_eq!(ips(&freed), ips(&lost));
    let mut left: Vec<String> = fs::read_dir(&net)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("identity:"))
        .collect();
    left.sort();
    // "lost" starts its retention now, as on DEL: kept.
    assert_eq!(
        left,
        [
            "identity:ns:holding",
            "identity:ns:lost",
            "identity:ns:recent"
        ]
    );
    // The pruned identity is allocated again normally (its hash slot, free again, as before).
    assert_eq!(
        ips(&store.allocate(&pool, &req("ns/gone", "g2")).unwrap()),
        ips(&gone)
    );

    // Without a retention (the default of FileStore::open; `identityRetentionDays: 0`), GC keeps all.
    let keep_all = open(dir.path());
    age_record(&net.join("identity:ns:recent"), 400 * day);
    keep_all.gc(&[]).unwrap();
    assert!(
        net.join("identity:ns:recent").exists()
            || fs::symlink_metadata(net.join("identity:ns:recent")).is_ok()
    );
}

#[test]
fn truncated_and_corrupted_records_are_named_never_reset() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pool = v4_pool();
    let leases = store.allocate(&pool, &req("ns/a", "a")).unwrap();
    store.allocate(&pool, &req("ns/b", "b")).unwrap();
    let lease_file = dir.path().join(format!("iot/ip:{}", leases[0].ip));
    let full = record(&lease_file);

    // Truncated in the middle.
    set_record(&lease_file, &full[..full.len() / 2]);
    expect_unreadable(&store, &lease_file);
    expect_corrupt(store.find(&Attachment::new("a", "net1")), &lease_file);
    // DEL never sticks on it (kubelet would retry forever): it is skipped, and its address stays
    // held while the record cannot be read.
    assert!(store
        .release(&Attachment::new("a", "net1"))
        .unwrap()
        .is_empty());
    assert_eq!(record(&lease_file), &full[..full.len() / 2]);
    // GC names the corrupt record and leaves it as it is, but still collects the rest (the
    // spec's "keep going"): c, which nobody lists as valid, is freed.
    let c = store.allocate(&pool, &req("ns/c", "c")).unwrap();
    assert_ne!(
        c[0].ip, leases[0].ip,
        "an unreadable lease's address is not handed out"
    );
    expect_corrupt(store.gc(&[Attachment::new("b", "net1")]), &lease_file);
    assert!(store
        .find(&Attachment::new("c", "net1"))
        .unwrap()
        .is_empty());
    assert!(!dir.path().join(format!("iot/ip:{}", c[0].ip)).exists());
    assert_eq!(record(&lease_file), &full[..full.len() / 2]);
    // Garbage.
    for bad in [&b"\x01garbage"[..], b"{\"ip\": 7}"] {
        set_record(&lease_file, bad);
        expect_unreadable(&store, &lease_file);
        assert_eq!(record(&lease_file), bad, "the record was rewritten");
    }
    // A regular file where the link belongs (an editor's "save" does that).
    fs::remove_file(&lease_file).unwrap();
    fs::write(&lease_file, &full).unwrap();
    let named = store.unreadable().unwrap();
    assert!(
        named.iter().any(|e| e.contains("not a symbolic link")),
        "{named:?}"
    );
    expect_unreadable(&store, &lease_file);
    // A lease record that names another address.
    let other = String::from_utf8(full.clone())
        .unwrap()
        .replace(&leases[0].ip.to_string(), "192.168.20.99");
    set_record(&lease_file, other.as_bytes());
    expect_unreadable(&store, &lease_file);
    // Restored, everything works again and nothing was lost: the lease is a's still (its DEL
    // skipped it and kept its index), and a DEL now frees it.
    set_record(&lease_file, &full);
    assert!(store.unreadable().unwrap().is_empty());
    assert_eq!(store.leases().unwrap().len(), 2);
    assert_eq!(
        store.release(&Attachment::new("a", "net1")).unwrap().len(),
        1
    );
    assert_eq!(store.leases().unwrap().len(), 1);

    // A corrupted attachment index: DEL searches the leases instead, frees the attachment's, and
    // leaves the index for the operator; CHECK and ADD name it.
    let index = dir.path().join("iot/attachment:b:net1");
    let b_ip = store.find(&Attachment::new("b", "net1")).unwrap()[0].ip;
    set_record(&index, b"{\"ips\": [");
    expect_corrupt(store.find(&Attachment::new("b", "net1")), &index);
    expect_corrupt(store.allocate(&pool, &req("ns/b", "b")), &index);
    let freed = store.release(&Attachment::new("b", "net1")).unwrap();
    assert_eq!(freed.iter().map(|l| l.ip).collect::<Vec<_>>(), vec![b_ip]);
    assert_eq!(record(&index), b"{\"ips\": [");
    expect_unreadable(&store, &index);
    fs::remove_file(&index).unwrap();
    // A corrupted identity record: ADD names it, and leaves it.
    let identity = dir.path().join("iot/identity:ns:a");
    set_record(&identity, b"nonsense");
    expect_corrupt(store.allocate(&pool, &req("ns/a", "a3")), &identity);
    assert_eq!(record(&identity), b"nonsense");
    expect_unreadable(&store, &identity);

    // A foreign file in the network directory is named too.
    let foreign = dir.path().join("iot/notes.txt");
    fs::write(&foreign, b"x").unwrap();
    expect_unreadable(&store, &foreign);
}

#[test]
fn stray_temporary_files_are_removed_and_never_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pool = v4_pool();
    let tmp = dir.path().join("iot/tmp");
    // What a writer killed between creating a replacement and renaming it leaves behind.
    std::os::unix::fs::symlink("{\"ip\":\"192.168.20.2\"}", tmp.join("12345.0")).unwrap();
    fs::write(tmp.join("12345.1"), b"").unwrap();
    assert!(store.leases().unwrap().is_empty());
    store.allocate(&pool, &req("ns/a", "a")).unwrap();
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    assert_eq!(store.leases().unwrap().len(), 1);
}

#[test]
fn a_held_lock_is_a_retryable_busy_error() {
    use nix::fcntl::{Flock, FlockArg};
    let dir = tempfile::tempdir().unwrap();
    let pool = v4_pool();
    let store = FileStore::open(&dir.path().join("iot"), Duration::from_millis(300)).unwrap();
    store.leases().unwrap(); // creates the lock file
    let lock_file = fs::File::open(dir.path().join("iot/lock")).unwrap();
    let held = Flock::lock(lock_file, FlockArg::LockExclusive).unwrap();
    let start = Instant::now();
    let e = store.allocate(&pool, &req("ns/a", "a")).unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    assert!(e.is_retryable());
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(e.to_string().contains("lock"), "{e}");
    // Reads wait too (shared lock against an exclusive holder).
    assert!(matches!(store.leases(), Err(Error::Busy { .. })));
    drop(held);
    store.allocate(&pool, &req("ns/a", "a")).unwrap();
    // The waiters that gave up do not keep the lock: each gets it once it is free, finds nobody
    // listening, and lets go (within moments, however loaded the machine).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut lock_file = fs::File::open(dir.path().join("iot/lock")).unwrap();
    loop {
        match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(_) => break,
            Err((f, _)) if Instant::now() < deadline => {
                lock_file = f;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((_, e)) => panic!("a waiter that gave up still holds the lock after 5 s: {e}"),
        }
    }
}

/// A tmpfs mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(options: &str) -> Option<Tmpfs> {
        use nix::mount::{mount, MsFlags};
        let dir = tempfile::tempdir().unwrap();
        let why = if !nix::unistd::geteuid().is_root() {
            "not root".to_string()
        } else {
            match mount(
                Some("tmpfs"),
                dir.path(),
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(options),
            ) {
                Ok(()) => return Some(Tmpfs { dir }),
                Err(e) => format!("mount tmpfs failed: {e}"),
            }
        };
        let msg = format!("needs root and a tmpfs mount ({why})");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true: {msg}");
        }
        eprintln!("SKIP: {msg}");
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount_read_only(&self) {
        use nix::mount::{mount, MsFlags};
        mount(
            None::<&str>,
            self.dir.path(),
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn assert_io(e: &Error, errno: nix::errno::Errno, under: &Path) {
    match e {
        Error::Io { path, source, .. } => {
            assert_eq!(source.raw_os_error(), Some(errno as i32), "{e}");
            assert!(path.starts_with(under), "{e}");
            assert!(e.to_string().contains(&path.display().to_string()));
        }
        other => panic!("expected an I/O error {errno}, got {other}"),
    }
}

fn tmp_is_empty(store_dir: &Path) -> bool {
    fs::read_dir(store_dir.join("tmp")).unwrap().count() == 0
}

#[test]
fn read_only_file_system_fails_cleanly() {
    let Some(fs_) = Tmpfs::mount("size=1m") else {
        return;
    };
    let pool = v4_pool();
    let store = open(fs_.path());
    let kept = store.allocate(&pool, &req("ns/a", "a")).unwrap();
    fs_.remount_read_only();
    let store_dir = fs_.path().join("iot");
    let e = store.allocate(&pool, &req("ns/b", "b")).unwrap_err();
    assert_io(&e, nix::errno::Errno::EROFS, &store_dir);
    assert!(!e.is_retryable());
    let e = store.release(&Attachment::new("a", "net1")).unwrap_err();
    assert_io(&e, nix::errno::Errno::EROFS, &store_dir);
    // Reads still work: CHECK and STATUS on a read-only store.
    assert_eq!(store.leases().unwrap(), kept);
    assert_eq!(store.find(&Attachment::new("a", "net1")).unwrap(), kept);
    // Opening the store again works too.
    assert_eq!(open(fs_.path()).leases().unwrap(), kept);
}

#[test]
fn full_disk_fails_cleanly_at_every_stage() {
    // Records are links, which take an inode each and no data block: the disk is full when no inode
    // is left (on ext4 also when the directory needs another block).
    let Some(fs_) = Tmpfs::mount("size=256k,nr_inodes=200") else {
        return;
    };
    let pool = v4_pool();
    let store = open(fs_.path());
    let store_dir = fs_.path().join("iot");
    store.allocate(&pool, &req("ns/first", "first")).unwrap();

    // Fill the file system: empty files until no inode is left.
    let filler = fs_.path().join("filler");
    fs::create_dir(&filler).unwrap();
    let mut pages: Vec<PathBuf> = Vec::new();
    loop {
        let p = filler.join(pages.len().to_string());
        match fs::write(&p, []) {
            Ok(()) => pages.push(p),
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => {
                let _ = fs::remove_file(&p);
                break;
            }
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }

    // With 0, 1, 2, ... inodes free, an ADD either fails with ENOSPC leaving the old leases, or succeeds
    // completely. The partial stages (index written, lease written, identity not) are all crossed.
    let mut failures = 0;
    let mut k = 0;
    let mut succeeded = false;
    while !succeeded {
        assert!(k < 10, "an ADD needs more than 10 free inodes?");
        for _ in 0..k.min(1) {
            if let Some(p) = pages.pop() {
                fs::remove_file(p).unwrap();
            }
        }
        let before = store.leases().unwrap();
        let id = format!("ns/late-{k}");
        let cid = format!("late-{k}");
        match store.allocate(&pool, &req(&id, &cid)) {
            Ok(l) => {
                assert_eq!(store.find(&Attachment::new(&cid, "net1")).unwrap(), l);
                succeeded = true;
            }
            Err(e) => {
                assert_io(&e, nix::errno::Errno::ENOSPC, &store_dir);
                assert_eq!(
                    store.leases().unwrap(),
                    before,
                    "a failed ADD changed the leases"
                );
                assert!(store
                    .find(&Attachment::new(&cid, "net1"))
                    .unwrap()
                    .is_empty());
                assert!(tmp_is_empty(&store_dir), "a temporary file was left behind");
                // The runtime's DEL after the failed ADD works on the full disk.
                assert!(store
                    .release(&Attachment::new(&cid, "net1"))
                    .unwrap()
                    .is_empty());
                failures += 1;
            }
        }
        k += 1;
    }
    eprintln!("full disk: {failures} failed ADDs before one fitted");
    assert!(failures >= 2, "only {failures} failures before success");
    assert_eq!(store.leases().unwrap().len(), 2);
    let got = ips(&store.leases().unwrap());
    assert!(!got.contains(&ip("192.168.20.205")));
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}
