//! Network namespaces: opening a pod's namespace and running code inside it on this thread.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use crate::error::{Error, Result};

/// An open network namespace.
pub struct Netns {
    file: File,
}

/// What a namespace path is now ([`Netns::judge`]).
pub enum Judged {
    /// Provably gone.
    Gone,
    /// A namespace, open.
    Open(Netns),
    /// It cannot be told: the error says why.
    Unknown(io::Error),
}

impl Netns {
    /// The calling thread's current namespace.
    pub fn current() -> Result<Netns> {
        let file = File::open("/proc/thread-self/ns/net")
            .or_else(|_| File::open("/proc/self/ns/net"))
            .map_err(|e| Error::io("cannot open this process's network namespace", e))?;
        Ok(Netns { file })
    }

    /// Opens a pod's namespace. `Ok(None)` when the path does not exist (a pod already gone).
    pub fn open(path: &Path) -> io::Result<Option<Netns>> {
        match File::open(path) {
            Ok(file) => Ok(Some(Netns { file })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What `path` (a `CNI_NETNS` a runtime passed) is now. Only two answers prove the sandbox's
    /// namespace gone: the path does not exist (or is a `/proc/<pid>/ns/net` of an exited process),
    /// or it is a file that is no namespace (the runtime unmounted it and left the file it was
    /// bound to). Anything else that fails (EMFILE, EPERM, an LSM's denial) proves nothing.
    pub fn judge(path: &Path) -> Judged {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Judged::Gone,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Judged::Gone,
            Err(e) => return Judged::Unknown(e),
        };
        match nix::sys::statfs::fstatfs(file.as_fd()) {
            Ok(st) if st.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => {
                Judged::Open(Netns { file })
            }
            Ok(_) => Judged::Gone,
            Err(e) => Judged::Unknown(e.into()),
        }
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Moves the calling thread into the namespace for the rest of its life (for a worker thread
    /// that ends there; the main thread uses [`Netns::run`]). `EINVAL`: a namespace, but not a
    /// network namespace.
    pub fn enter_for_this_thread(&self) -> std::result::Result<(), nix::Error> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
    }

    /// Runs `f` with this thread inside the namespace, then returns to `home`, even when `f` fails.
    pub fn run<T>(&self, home: &Netns, f: impl FnOnce() -> T) -> Result<T> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("cannot enter the pod's network namespace", e.into()))?;
        let out = f();
        setns(home.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("cannot return to the node's network namespace", e.into()))?;
        Ok(out)
    }
}
