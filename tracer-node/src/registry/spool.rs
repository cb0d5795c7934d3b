//! Replays the events the hook spooled while tracer-node was down, hung or restarting: once at
//! start-up and again whenever a file appears (inotify), in file-name (= time) order, deleting
//! each file once applied. Replay is idempotent and every registration is checked for liveness,
//! so a create+poststop pair of a dead container leaves nothing.
//!
//! The directory must be ours alone, and only regular files of ours are read (see
//! [`super::files`]); anything else is removed (a directory is reported once and left). A pass
//! that ran out of resources (EMFILE, ENOMEM) keeps the files it could not read and is retried
//! with backoff, without waiting for a new file to appear.

use std::{
    collections::HashSet,
    fs, io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use tracer_api::SpooledEvent;
use tracing::{error, info, warn};

use super::{
    files::{self, DirError, FileError},
    Registry,
};

/// Errors of the spool directory.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The directory could not be created, listed or watched.
    #[error("cannot {op} spool directory {path}: {source}")]
    Dir {
        /// What was attempted.
        op: &'static str,
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The directory is not ours alone.
    #[error("spool directory refused: {0}")]
    Unsafe(#[from] DirError),
}

impl SpoolError {
    fn is_transient(&self) -> bool {
        matches!(self, SpoolError::Dir { source, .. } if files::is_transient(source))
    }
}

/// What one replay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Events applied (or harmless no-ops).
    pub applied: usize,
    /// Events refused by the registry (dead init, ...), deleted.
    pub refused: usize,
    /// Unreadable or refused files (not regular, not ours, too large, bad name), deleted.
    pub unreadable: usize,
    /// Files kept for a later pass because reading them ran out of resources.
    pub deferred: usize,
}

/// The spool directory and what replay has already reported about it.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Entries that are left in place (directories): reported once, not on every pass.
    reported: Mutex<HashSet<PathBuf>>,
}

/// Backoff of a pass that has to be retried.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);

impl Spool {
    /// Creates the spool directory (0700) if needed and checks that it is ours alone.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|source| SpoolError::Dir {
            op: "create",
            path: dir.to_owned(),
            source,
        })?;
        files::check_private_dir(dir)?;
        Ok(Self { dir: dir.to_owned(), reported: Mutex::new(HashSet::new()) })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies and deletes every spooled event, oldest first. Blocking file I/O: run it on a
    /// blocking thread.
    pub fn replay(&self, registry: &Registry) -> Result<Replayed, SpoolError> {
        let dir = &self.dir;
        // Checked on every pass: a directory loosened while we run must not be trusted either.
        files::check_private_dir(dir)?;
        let mut names: Vec<std::ffi::OsString> = fs::read_dir(dir)
            .map_err(|source| SpoolError::Dir { op: "list", path: dir.to_owned(), source })?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|source| SpoolError::Dir { op: "list", path: dir.to_owned(), source })?;
        names.sort();
        let mut done = Replayed::default();
        for raw in names {
            let path = dir.join(&raw);
            let Some(name) = files::plain_name(&raw) else {
                // Not the hook's: its names are digits, a pid and a kind.
                warn!(file = ?raw, "removing a spool entry whose name is not plain text");
                files::remove_entry(&path);
                count_unreadable(registry, &mut done);
                continue;
            };
            // Dot files are the hook's temp files, still being written; others are not events.
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let parsed = files::read_private_file(&path, tracer_api::hook::MAX_MESSAGE_BYTES as u64)
                .and_then(|b| serde_json::from_slice::<SpooledEvent>(&b).map_err(|e| FileError::Io(e.into())));
            match parsed {
                Err(e) if e.is_transient() => {
                    warn!(file = %name, error = %e, "cannot read spool file now; retrying later");
                    done.deferred += 1;
                    continue;
                }
                Err(FileError::NotRegular("directory")) => {
                    if self.reported.lock().unwrap_or_else(|p| p.into_inner()).insert(path.clone()) {
                        warn!(file = %name, "a directory in the spool is not an event; leaving it");
                    }
                    continue;
                }
                Err(e) => {
                    warn!(file = %name, error = %e, "discarding unreadable spool file");
                    count_unreadable(registry, &mut done);
                }
                Ok(spooled) => {
                    let id = spooled.event.container_id().to_owned();
                    let kind = spooled.event.kind();
                    match registry.apply(spooled.event) {
                        Ok(applied) => {
                            info!(container_id = %id, event = kind, ?applied, spooled_because = %spooled.reason, "replayed spooled event");
                            done.applied += 1;
                            registry.counters.spool_applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => {
                            info!(container_id = %id, event = kind, reason = %e, "spooled event no longer applies");
                            done.refused += 1;
                            registry.counters.spool_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            }
            if !files::remove_entry(&path) {
                warn!(file = %name, "cannot delete replayed spool file");
            }
        }
        Ok(done)
    }
}

/// Starts watching the spool, then replays what is already there, then replays again on every
/// file that appears, and on a timer with backoff while a pass could not finish. Watching
/// first means no file can slip between the scan and the watch.
pub fn watch(spool: Arc<Spool>, registry: Arc<Registry>) -> Result<tokio::task::JoinHandle<()>, SpoolError> {
    let err = |op| {
        let path = spool.dir.clone();
        move |source| SpoolError::Dir { op, path, source }
    };
    let inotify = Inotify::init().map_err(err("watch"))?;
    inotify.watches().add(&spool.dir, WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE).map_err(err("watch"))?;
    let mut events = inotify.into_event_stream([0u8; 4096]).map_err(err("watch"))?;
    let mut retry = match spool.replay(&registry) {
        Ok(first) => {
            if first != Replayed::default() {
                info!(?first, "spool replayed at start-up");
            }
            (first.deferred > 0).then_some(RETRY_FIRST)
        }
        Err(e) if e.is_transient() => {
            warn!(error = %e, "spool replay at start-up failed; retrying");
            Some(RETRY_FIRST)
        }
        Err(e) => return Err(e),
    };
    Ok(tokio::spawn(async move {
        loop {
            let timer = async {
                match retry {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = events.next() => match ev {
                    None => return,
                    Some(Err(e)) => warn!(error = %e, "spool watch failed; replaying anyway"),
                    Some(Ok(_)) => {}
                },
                () = timer => {}
            }
            // One pass handles every file present, so events that arrived meanwhile are covered;
            // the ones still queued only cause a cheap empty pass.
            let (s, r) = (spool.clone(), registry.clone());
            let pass = tokio::task::spawn_blocking(move || s.replay(&r)).await;
            retry = match pass {
                Ok(Ok(done)) if done.deferred == 0 => None,
                Ok(Ok(_)) => Some(next_backoff(retry)),
                Ok(Err(e)) => {
                    error!(error = %e, "spool replay failed; retrying with backoff");
                    Some(next_backoff(retry))
                }
                Err(e) => {
                    error!(error = %e, "spool replay task failed; retrying with backoff");
                    Some(next_backoff(retry))
                }
            };
        }
    }))
}

fn count_unreadable(registry: &Registry, done: &mut Replayed) {
    done.unreadable += 1;
    registry.counters.spool_unreadable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn next_backoff(current: Option<Duration>) -> Duration {
    current.map_or(RETRY_FIRST, |d| (d * 2).min(RETRY_MAX))
}
