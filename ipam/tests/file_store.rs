//! The file store's failure modes: corrupted and truncated files, stray temporary files, a held lock,
//! a read-only file system and a full disk. The last two mount a small tmpfs, which needs root (they
//! skip with a message otherwise, and fail when CI=true).

#[path = "support/contract.rs"]
mod contract;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use contract::{ip, ips, req, v4_pool};
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

#[test]
fn truncated_and_corrupted_files_are_named_never_reset() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pool = v4_pool();
    let leases = store.allocate(&pool, &req("ns/a", "a")).unwrap();
    store.allocate(&pool, &req("ns/b", "b")).unwrap();
    let lease_file = dir.path().join(format!("iot/ips/{}", leases[0].ip));
    let full = fs::read(&lease_file).unwrap();

    // Truncated in the middle.
    fs::write(&lease_file, &full[..full.len() / 2]).unwrap();
    expect_corrupt(store.leases(), &lease_file);
    expect_corrupt(store.find(&Attachment::new("a", "net1")), &lease_file);
    expect_corrupt(store.release(&Attachment::new("a", "net1")), &lease_file);
    expect_corrupt(store.gc(&[]), &lease_file);
    // Empty, and garbage.
    for bad in [&b""[..], b"\x00\x01garbage", b"{\"ip\": 7}"] {
        fs::write(&lease_file, bad).unwrap();
        expect_corrupt(store.leases(), &lease_file);
        assert_eq!(
            fs::read(&lease_file).unwrap(),
            bad,
            "the file was rewritten"
        );
    }
    // A lease file that names another address.
    let other = String::from_utf8(full.clone())
        .unwrap()
        .replace(&leases[0].ip.to_string(), "192.168.20.99");
    fs::write(&lease_file, other).unwrap();
    expect_corrupt(store.leases(), &lease_file);
    // Restored, everything works again and nothing was lost.
    fs::write(&lease_file, &full).unwrap();
    assert_eq!(store.leases().unwrap().len(), 2);

    // A corrupted attachment index and identity record.
    let index = dir.path().join("iot/attachments/b:net1");
    fs::write(&index, b"{\"ips\": [").unwrap();
    expect_corrupt(store.find(&Attachment::new("b", "net1")), &index);
    expect_corrupt(store.allocate(&pool, &req("ns/b", "b")), &index);
    let identity = dir.path().join("iot/identities/ns:a");
    fs::write(&identity, b"nonsense").unwrap();
    store.release(&Attachment::new("a", "net1")).unwrap();
    expect_corrupt(store.allocate(&pool, &req("ns/a", "a2")), &identity);
    assert_eq!(fs::read(&identity).unwrap(), b"nonsense");

    // A foreign file in ips/ is named too.
    let foreign = dir.path().join("iot/ips/notes.txt");
    fs::write(&foreign, b"x").unwrap();
    expect_corrupt(store.leases(), &foreign);
}

#[test]
fn stray_temporary_files_are_removed_and_never_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pool = v4_pool();
    let tmp = dir.path().join("iot/tmp");
    // What a writer killed between create and rename leaves behind.
    fs::write(tmp.join("12345.0"), b"{\"ip\":\"192.168.20.2").unwrap();
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
    // The waiter that gave up did not keep the lock.
    let lock_file = fs::File::open(dir.path().join("iot/lock")).unwrap();
    assert!(Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).is_ok());
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
    let Some(fs_) = Tmpfs::mount("size=256k") else {
        return;
    };
    let pool = v4_pool();
    let store = open(fs_.path());
    let store_dir = fs_.path().join("iot");
    store.allocate(&pool, &req("ns/first", "first")).unwrap();

    // Fill the file system with one-page files.
    let filler = fs_.path().join("filler");
    fs::create_dir(&filler).unwrap();
    let mut pages: Vec<PathBuf> = Vec::new();
    loop {
        let p = filler.join(pages.len().to_string());
        match fs::write(&p, [0u8; 4096]) {
            Ok(()) => pages.push(p),
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => {
                let _ = fs::remove_file(&p);
                break;
            }
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }

    // With 0, 1, 2, ... pages free, an ADD either fails with ENOSPC leaving the old leases, or succeeds
    // completely. The partial stages (index written, lease written, identity not) are all crossed.
    let mut failures = 0;
    let mut k = 0;
    let mut succeeded = false;
    while !succeeded {
        assert!(k < 10, "an ADD needs more than 10 free pages?");
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
