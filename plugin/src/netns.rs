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

    /// A namespace from an open file of it (the caller checked it is one).
    pub fn from_file(file: File) -> Netns {
        Netns { file }
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Moves the calling thread into the namespace for the rest of its life (for a worker thread
    /// that ends there; the main thread uses [`Netns::run`]).
    pub fn enter_for_this_thread(&self) -> Result<()> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("cannot enter the pod's network namespace", e.into()))
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
