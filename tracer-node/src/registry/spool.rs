//! Replays the events the hook spooled while tracer-node was down, hung or restarting: once at
//! start-up and again whenever a file appears (inotify), in file-name (= time) order, deleting
//! each file once applied. Replay is idempotent and every registration is checked for liveness,
//! so a create+poststop pair of a dead container leaves nothing.

use std::{
    fs, io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use tracer_api::SpooledEvent;
use tracing::{info, warn};

use super::{store::read_bounded, Registry};

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
}

/// What one replay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Events applied (or harmless no-ops).
    pub applied: usize,
    /// Events refused by the registry (dead init, ...), deleted.
    pub refused: usize,
    /// Unreadable files, deleted.
    pub unreadable: usize,
}

/// Creates the spool directory (0700) if needed.
pub fn ensure_dir(dir: &Path) -> Result<(), SpoolError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|source| SpoolError::Dir {
        op: "create",
        path: dir.to_owned(),
        source,
    })
}

/// Applies and deletes every spooled event in `dir`, oldest first. Runs on a blocking thread
/// inside the runtime.
pub fn replay(dir: &Path, registry: &Registry) -> Result<Replayed, SpoolError> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|source| SpoolError::Dir { op: "list", path: dir.to_owned(), source })?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        // Dot files are the hook's temp files, still being written.
        .filter(|n| !n.starts_with('.') && n.ends_with(".json"))
        .collect();
    names.sort();
    let mut done = Replayed::default();
    for name in names {
        let path = dir.join(&name);
        let parsed =
            read_bounded(&path).and_then(|b| serde_json::from_slice::<SpooledEvent>(&b).map_err(|e| e.to_string()));
        match parsed {
            Err(e) => {
                warn!(file = %name, error = %e, "discarding unreadable spool file");
                done.unreadable += 1;
                registry.counters.spool_unreadable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(file = %name, error = %e, "cannot delete replayed spool file");
            }
        }
    }
    Ok(done)
}

/// Starts watching `dir`, then replays what is already there, then replays again on every
/// file that appears. Watching first means no file can slip between the scan and the watch.
pub fn watch(dir: PathBuf, registry: Arc<Registry>) -> Result<tokio::task::JoinHandle<()>, SpoolError> {
    let err = |op| {
        let path = dir.clone();
        move |source| SpoolError::Dir { op, path, source }
    };
    let inotify = Inotify::init().map_err(err("watch"))?;
    inotify.watches().add(&dir, WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE).map_err(err("watch"))?;
    let mut events = inotify.into_event_stream([0u8; 4096]).map_err(err("watch"))?;
    let first = replay(&dir, &registry)?;
    if first != Replayed::default() {
        info!(?first, "spool replayed at start-up");
    }
    Ok(tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            if let Err(e) = ev {
                warn!(error = %e, "spool watch failed; replaying anyway");
            }
            // One pass handles every file present, so events that arrived meanwhile are covered;
            // the ones still queued only cause a cheap empty pass.
            let (dir, registry) = (dir.clone(), registry.clone());
            match tokio::task::spawn_blocking(move || replay(&dir, &registry)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "spool replay failed"),
                Err(e) => warn!(error = %e, "spool replay task failed"),
            }
        }
    }))
}
