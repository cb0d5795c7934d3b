//! Files that are looked at again periodically (token files, TLS certificates), shared by the
//! crates that reload them: polling follows a Secret volume's `..data` symlink swap, which a
//! watch on the file paths would miss after the first swap.

use std::{sync::Arc, time::Duration};

/// How often reloadable files are looked at for a change.
pub const POLL: Duration = Duration::from_secs(2);

/// Something that can look at its files and take what changed.
pub trait Reload: Send + Sync + 'static {
    /// Reads the files again if they changed; keeps what it has when they are unusable.
    fn reload_if_changed(&self);
}

/// Calls `what.reload_if_changed()` every [`POLL`], on the blocking pool (it does file I/O),
/// until the returned task is aborted.
pub fn watch<R: Reload>(what: &Arc<R>) -> tokio::task::JoinHandle<()> {
    let what = what.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let w = what.clone();
            let _ = tokio::task::spawn_blocking(move || w.reload_if_changed()).await;
        }
    })
}
