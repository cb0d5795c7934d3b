//! Reading the files other processes leave for the daemon (spooled hook events, persisted
//! registrations) without trusting them: the directory must be ours alone (owned by our uid,
//! no group or other bits), and a file is read only if it is a regular file of ours, opened
//! without following a symlink and without blocking (a FIFO named `x.json` used to wedge replay,
//! SIGTERM and start-up for good), and no larger than a hook message.

use std::{
    ffi::OsStr,
    fs, io,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use rustix::fs::{Mode, OFlags};

/// Why a directory is refused.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// Not a directory (a symlink to one counts as not one).
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Someone else could plant files in it.
    #[error(
        "{path} must be a directory owned by uid {expected} with mode 0700 (it is owned by uid {uid}, mode {mode:04o}): \
         another user could plant registrations in it; fix it with `chown {expected} {path} && chmod 0700 {path}`",
        path = .path.display()
    )]
    Loose {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Our uid.
        expected: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// It could not be examined.
    #[error("cannot examine {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Why a file is refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A FIFO, socket, device, directory or symlink.
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    /// Owned by another user than the daemon's.
    #[error("owned by uid {uid}, not by uid {expected}")]
    Owner {
        /// Its owner.
        uid: u32,
        /// Our uid.
        expected: u32,
    },
    /// Larger than any message.
    #[error("larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Opening or reading failed.
    #[error("{0}")]
    Io(#[source] io::Error),
}

impl FileError {
    /// Whether trying again later may succeed (out of fds or memory): such a file is kept and
    /// the pass retried, instead of being discarded as unreadable.
    pub fn is_transient(&self) -> bool {
        matches!(self, FileError::Io(e) if is_transient(e))
    }
}

/// Whether `e` is a lack of resources rather than something wrong with the file.
pub fn is_transient(e: &io::Error) -> bool {
    use rustix::io::Errno;
    Errno::from_io_error(e)
        .is_some_and(|n| [Errno::MFILE, Errno::NFILE, Errno::NOMEM, Errno::AGAIN, Errno::INTR].contains(&n))
}

/// Our effective uid: the owner every directory and file we read must have.
pub fn our_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Checks that `dir` is a real directory owned by us with no group or other permission bits.
pub fn check_private_dir(dir: &Path) -> Result<(), DirError> {
    let meta = fs::symlink_metadata(dir).map_err(|source| DirError::Io { path: dir.to_owned(), source })?;
    if !meta.is_dir() {
        return Err(DirError::NotADirectory { path: dir.to_owned() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    let expected = our_uid();
    if meta.uid() != expected || mode & 0o077 != 0 {
        return Err(DirError::Loose { path: dir.to_owned(), uid: meta.uid(), expected, mode });
    }
    Ok(())
}

fn kind(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// Reads `path` if it is a regular file of ours of at most `limit` bytes. Never blocks and
/// never follows a symlink.
pub fn read_private_file(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    use io::Read;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        // O_NOFOLLOW on a symlink.
        Err(rustix::io::Errno::LOOP) => return Err(FileError::NotRegular("symlink")),
        Err(rustix::io::Errno::NXIO) => return Err(FileError::NotRegular("socket")),
        Err(e) => return Err(FileError::Io(e.into())),
    };
    let file = fs::File::from(fd);
    let meta = file.metadata().map_err(FileError::Io)?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular(kind(meta.file_type())));
    }
    let expected = our_uid();
    if meta.uid() != expected {
        return Err(FileError::Owner { uid: meta.uid(), expected });
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge { limit });
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit + 1).read_to_end(&mut buf).map_err(FileError::Io)?;
    if buf.len() as u64 > limit {
        return Err(FileError::TooLarge { limit });
    }
    Ok(buf)
}

/// The name as text, when it is UTF-8 without control characters (a newline in a name would
/// forge log lines); otherwise `None`.
pub fn plain_name(name: &OsStr) -> Option<&str> {
    name.to_str().filter(|n| !n.chars().any(char::is_control))
}

/// Removes a refused entry that is not a directory (unlink never follows a symlink); a
/// directory is left where it is. Answers whether it is gone.
pub fn remove_entry(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => false,
        Ok(_) => fs::remove_file(path).is_ok(),
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_ours_within_the_limit_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::write(d.join("ok.json"), b"{}").expect("write");
        assert_eq!(read_private_file(&d.join("ok.json"), 10).expect("read"), b"{}");
        fs::write(d.join("big.json"), vec![b' '; 11]).expect("write");
        assert!(matches!(read_private_file(&d.join("big.json"), 10), Err(FileError::TooLarge { .. })));
        std::os::unix::fs::symlink(d.join("ok.json"), d.join("link.json")).expect("symlink");
        assert!(matches!(read_private_file(&d.join("link.json"), 10), Err(FileError::NotRegular("symlink"))));
        rustix::fs::mknodat(rustix::fs::CWD, d.join("fifo.json"), rustix::fs::FileType::Fifo, Mode::RWXU, 0)
            .expect("mkfifo");
        let started = std::time::Instant::now();
        assert!(matches!(read_private_file(&d.join("fifo.json"), 10), Err(FileError::NotRegular("FIFO"))));
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "a FIFO must not block");
        fs::create_dir(d.join("dir.json")).expect("mkdir");
        assert!(matches!(read_private_file(&d.join("dir.json"), 10), Err(FileError::NotRegular("directory"))));
        assert!(!remove_entry(&d.join("dir.json")) && d.join("dir.json").exists(), "directories stay");
        assert!(remove_entry(&d.join("fifo.json")) && remove_entry(&d.join("link.json")));
        assert!(d.join("ok.json").exists(), "removing a symlink leaves its target");
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        check_private_dir(dir.path()).expect("0700 and ours");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o733)).expect("chmod");
        let err = check_private_dir(dir.path()).expect_err("loose");
        assert!(err.to_string().contains("mode 0733"), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/tmp", &link).expect("symlink");
        assert!(matches!(check_private_dir(&link), Err(DirError::NotADirectory { .. })));
    }

    #[test]
    fn names_with_control_characters_are_not_plain() {
        assert_eq!(plain_name(OsStr::new("a.json")), Some("a.json"));
        assert_eq!(plain_name(OsStr::new("a\nINFO forged.json")), None);
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(plain_name(OsStr::from_bytes(b"\xff.json")), None);
    }
}
