//! One daemon per registry: an exclusive `flock` on the directories a tracer-node owns (the
//! registry socket's directory and the state directory), taken before anything in them is
//! touched. Without it a second daemon unlinked and re-bound the first one's socket before
//! failing on its busy port, and every hook event from then on went nowhere, silently.
//!
//! The lock is on the directory itself (an `O_DIRECTORY` fd), not a lock file, so there is no
//! file to leave behind or to clean up, and the kernel drops it when the daemon dies.

use std::{
    io,
    os::{fd::OwnedFd, unix::fs::DirBuilderExt},
    path::{Path, PathBuf},
};

use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};

/// Why the directories could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "another tracer-node is running with {path} (it holds the directory's lock); stop it, or give this one other \
         --registry-socket and --state-dir paths"
    )]
    Held {
        /// The locked directory.
        path: PathBuf,
    },
    /// The directory could not be created, opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Held exclusive locks; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DirLock {
    _fds: Vec<OwnedFd>,
}

impl DirLock {
    /// Creates (0700 where missing) and locks each directory, without waiting: a lock that is
    /// held is an error naming the directory. The same directory given twice is locked once.
    pub fn acquire(dirs: &[&Path]) -> Result<Self, LockError> {
        let mut seen: Vec<PathBuf> = Vec::new();
        let mut fds = Vec::new();
        for dir in dirs {
            let io_err = |source: io::Error| LockError::Io { path: dir.to_path_buf(), source };
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err)?;
            let canonical = std::fs::canonicalize(dir).map_err(io_err)?;
            if seen.contains(&canonical) {
                continue;
            }
            let fd = open(&canonical, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| io_err(e.into()))?;
            match flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => return Err(LockError::Held { path: canonical }),
                Err(e) => return Err(io_err(e.into())),
            }
            seen.push(canonical);
            fds.push(fd);
        }
        Ok(Self { _fds: fds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_of_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let first = DirLock::acquire(&[&run, &run]).expect("first lock, same dir twice");
        let err = DirLock::acquire(&[&dir.path().join("other"), &run]).expect_err("held");
        assert!(matches!(&err, LockError::Held { path } if path.ends_with("run")), "{err}");
        assert!(err.to_string().contains("another tracer-node"), "{err}");
        drop(first);
        DirLock::acquire(&[&run]).expect("free again");
    }
}
