//! Bearer tokens from a file, one per line (`#` comments and blank lines ignored), reloaded
//! when the file changes: a rotated Kubernetes Secret (an atomic symlink swap) or an edited
//! file takes effect within the poll interval, without a restart.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

use tracing::{error, info, warn};

use crate::{constant_time_eq, reload::Reload, Unauthenticated};

/// A token file larger than this is refused (it is a list of secrets, not a database).
const MAX_BYTES: u64 = 1024 * 1024;
/// Tokens kept at most.
const MAX_TOKENS: usize = 10_000;

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// It cannot be read.
    #[error("cannot read the token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not usable as it is.
    #[error("the token file {path} {problem}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// What identifies a version of the file: its metadata, through symlinks.
type Stamp = (Option<SystemTime>, u64, u64);

#[derive(Debug)]
struct Loaded {
    tokens: Vec<Box<[u8]>>,
    stamp: Stamp,
}

/// The tokens of one file.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    loaded: RwLock<Arc<Loaded>>,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.modified().ok(), m.len(), m.ino()))
}

fn load(path: &Path) -> Result<Loaded, TokenFileError> {
    let read = |source| TokenFileError::Read { path: path.to_owned(), source };
    let unusable = |problem: String| TokenFileError::Unusable { path: path.to_owned(), problem };
    let before = stamp(path).map_err(read)?;
    if before.1 > MAX_BYTES {
        return Err(unusable(format!("is larger than {MAX_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let tokens: Vec<Box<[u8]>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().into())
        .collect();
    if tokens.len() > MAX_TOKENS {
        return Err(unusable(format!("holds more than {MAX_TOKENS} tokens")));
    }
    if let Some(bad) = tokens.iter().position(|t| t.iter().any(|b| !b.is_ascii_graphic())) {
        return Err(unusable(format!("has a token with spaces or control characters (token {})", bad + 1)));
    }
    Ok(Loaded { tokens, stamp: before })
}

impl TokenFile {
    /// Reads `path`, the tokens a server accepts; fails when it cannot be read or holds no token.
    pub fn open(path: &Path) -> Result<Arc<Self>, TokenFileError> {
        let file = Self::load_first(path)?;
        warn_if_readable_by_others(path);
        info!(file = %path.display(), tokens = file.loaded.read().unwrap_or_else(|p| p.into_inner()).tokens.len(), "bearer tokens loaded");
        Ok(file)
    }

    /// Reads `path`, a client's own credential (its [`TokenFile::first`] token). Not checked for
    /// being readable by others: a projected service-account token is 0644 in its pod, by design.
    pub fn open_credential(path: &Path) -> Result<Arc<Self>, TokenFileError> {
        let file = Self::load_first(path)?;
        info!(file = %path.display(), "client token loaded");
        Ok(file)
    }

    fn load_first(path: &Path) -> Result<Arc<Self>, TokenFileError> {
        let loaded = load(path)?;
        if loaded.tokens.is_empty() {
            return Err(TokenFileError::Unusable { path: path.to_owned(), problem: "holds no token".into() });
        }
        Ok(Arc::new(Self { path: path.to_owned(), loaded: RwLock::new(Arc::new(loaded)) }))
    }

    /// Checks a request's bearer token.
    pub fn check(&self, token: &str) -> Result<(), Unauthenticated> {
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner()).clone();
        // Every token is compared, so the time does not tell which one (or whether any) matched.
        let matched = loaded.tokens.iter().fold(false, |m, t| m | constant_time_eq(t, token.as_bytes()));
        if matched {
            Ok(())
        } else {
            Err(Unauthenticated::BadToken)
        }
    }

    /// The file's first token: the credential of a client that presents one (tracer-svc's
    /// service-account token, projected and rotated by the kubelet, or `--node-token-file`).
    pub fn first(&self) -> String {
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner()).clone();
        // Tokens are checked to be ASCII when loaded.
        loaded.tokens.first().map(|t| String::from_utf8_lossy(t).into_owned()).unwrap_or_default()
    }

    /// Reads the file again if it changed. A file that became unreadable or empty keeps the
    /// previous tokens (a half-written update must not lock every client out), loudly.
    pub fn reload_if_changed(&self) {
        let current = self.loaded.read().unwrap_or_else(|p| p.into_inner()).stamp;
        match stamp(&self.path) {
            Ok(s) if s == current => {}
            Ok(_) => match load(&self.path) {
                Ok(l) if l.tokens.is_empty() => {
                    error!(file = %self.path.display(), "the token file holds no token now; keeping the previous tokens")
                }
                Ok(l) => {
                    info!(file = %self.path.display(), tokens = l.tokens.len(), "bearer tokens reloaded");
                    *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(l);
                }
                Err(e) => error!(error = %e, "cannot reload the token file; keeping the previous tokens"),
            },
            Err(e) => {
                error!(file = %self.path.display(), error = %e, "cannot look at the token file; keeping the previous tokens")
            }
        }
    }
}

impl Reload for TokenFile {
    fn reload_if_changed(&self) {
        TokenFile::reload_if_changed(self);
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o004 != 0 {
            warn!(file = %path.display(), "the token file is readable by every user; make it 0600 or 0640");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_reloaded_and_a_broken_update_keeps_the_old_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# operators\nfirst\n\n  second  \n").expect("write");
        let f = TokenFile::open(&path).expect("open");
        assert_eq!(f.check("first"), Ok(()));
        assert_eq!(f.check("second"), Ok(()));
        assert_eq!(f.check("# operators"), Err(Unauthenticated::BadToken));
        assert_eq!(f.check("firs"), Err(Unauthenticated::BadToken));
        assert_eq!(f.first(), "first");

        // A rotation: written aside and renamed over, as a Secret update does.
        let next = dir.path().join("tokens.new");
        std::fs::write(&next, "third\n").expect("write");
        std::fs::rename(&next, &path).expect("rename");
        f.reload_if_changed();
        assert_eq!(f.check("third"), Ok(()));
        assert_eq!(f.check("first"), Err(Unauthenticated::BadToken), "the old token is gone");
        assert_eq!(f.first(), "third", "a client presents the rotated token");

        std::fs::write(&path, "").expect("truncate");
        f.reload_if_changed();
        assert_eq!(f.check("third"), Ok(()), "an empty file keeps the previous tokens");
        std::fs::remove_file(&path).expect("rm");
        f.reload_if_changed();
        assert_eq!(f.check("third"), Ok(()), "a missing file keeps the previous tokens");
    }

    #[test]
    fn unusable_files_are_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        assert!(matches!(TokenFile::open(&path), Err(TokenFileError::Read { .. })));
        std::fs::write(&path, "# nothing\n").expect("write");
        assert!(matches!(TokenFile::open(&path), Err(TokenFileError::Unusable { .. })));
        std::fs::write(&path, "a b\n").expect("write");
        assert!(matches!(TokenFile::open(&path), Err(TokenFileError::Unusable { .. })));
    }
}
