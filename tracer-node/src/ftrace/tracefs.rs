//! Finding (and if need be mounting) tracefs.

use std::{
    io,
    path::{Path, PathBuf},
};

use tracing::info;

/// Errors locating or mounting tracefs.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// tracefs is not mounted and mounting it failed.
    #[error("tracefs is not mounted and mounting it at {path} failed: {source}")]
    Mount {
        /// Where the mount was attempted.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A tracefs mount.
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// A tracefs rooted at `root` (tests point this at a temp dir).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `dir` is a tracefs root (has the global `trace` file).
    fn is_tracefs(dir: &Path) -> bool {
        dir.join("trace").exists() && dir.join("instances").is_dir()
    }

    /// Finds tracefs under `sysfs` the way the kernel documents it (`kernel/tracing`, then the
    /// legacy `kernel/debug/tracing`), mounting it at `kernel/tracing` when neither is there.
    pub fn find_or_mount(sysfs: &Path) -> Result<Self, TracefsError> {
        let primary = sysfs.join("kernel/tracing");
        for dir in [&primary, &sysfs.join("kernel/debug/tracing")] {
            if Self::is_tracefs(dir) {
                return Ok(Self::at(dir.clone()));
            }
        }
        rustix::mount::mount("nodev", &primary, "tracefs", rustix::mount::MountFlags::empty(), None)
            .map_err(|e| TracefsError::Mount { path: primary.clone(), source: e.into() })?;
        info!(path = %primary.display(), "mounted tracefs");
        Ok(Self::at(primary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_tracefs_is_found_without_mounting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let legacy = dir.path().join("kernel/debug/tracing");
        std::fs::create_dir_all(legacy.join("instances")).expect("mkdir");
        std::fs::write(legacy.join("trace"), "").expect("write");
        let t = Tracefs::find_or_mount(dir.path()).expect("found");
        assert_eq!(t.root(), legacy);
    }
}
