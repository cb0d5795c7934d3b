//! Finding (and if need be mounting) tracefs.

use std::{
    io,
    path::{Path, PathBuf},
};

use tracing::info;

/// Errors of tracefs access.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// Reading or writing a control file failed.
    #[error("tracefs {op} {path}: {source}")]
    Io {
        /// What was attempted (`read`, `write`, `mkdir`, `rmdir`...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A format description could not be parsed.
    #[error("tracefs {path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: super::format::FormatError,
    },
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

impl TracefsError {
    /// Whether the kernel is short of something right now (memory, a busy resource), rather
    /// than refusing the request itself: worth retrying later, so a 503 and not a 400.
    pub fn is_kernel_short(&self) -> bool {
        let code = |e: &io::Error| e.raw_os_error();
        let short =
            [rustix::io::Errno::NOMEM, rustix::io::Errno::BUSY, rustix::io::Errno::NOSPC, rustix::io::Errno::AGAIN];
        match self {
            TracefsError::Io { source, .. } => short.iter().any(|e| code(source) == Some(e.raw_os_error())),
            _ => false,
        }
    }
}

/// A tracefs mount, and the name prefix of the instances this daemon owns.
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
    prefix: String,
}

impl Tracefs {
    /// A tracefs rooted at `root` (tests point this at a temp dir).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), prefix: INSTANCE_PREFIX.to_owned() }
    }

    /// The same tracefs, owning the instances named `prefix...` instead of the default
    /// [`INSTANCE_PREFIX`] (tests run several daemons side by side).
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }

    /// Prefix of the instances this daemon owns.
    pub fn prefix(&self) -> &str {
        &self.prefix
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

/// Reads a tracefs file with large reads. Some tracefs files (`events/header_page`) answer
/// only the first read: `read_to_string`'s small first probe would cut them at 32 bytes.
pub(crate) fn read_file(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Default prefix of every ftrace instance container-tracer creates; instances with it are
/// ours to remove at start-up and on `DELETE all`.
pub const INSTANCE_PREFIX: &str = "container-tracer-";

impl Tracefs {
    /// Reads a file under the root.
    fn read(&self, rel: &str) -> Result<String, TracefsError> {
        let path = self.root.join(rel);
        read_file(&path).map_err(|source| TracefsError::Io { op: "read", path, source })
    }

    /// Every `system:event` the kernel offers.
    pub fn available_events(&self) -> Result<std::collections::HashSet<String>, TracefsError> {
        Ok(self.read("available_events")?.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect())
    }

    /// CPUs with a ring buffer (`per_cpu/cpu*`), or `None` when they cannot be listed.
    pub fn cpu_count(&self) -> Option<u64> {
        let dir = std::fs::read_dir(self.root.join("per_cpu")).ok()?;
        let n = dir.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("cpu")).count() as u64;
        (n > 0).then_some(n)
    }

    /// The events of one system (`events/<system>/*`).
    pub fn system_events(&self, system: &str) -> Result<Vec<String>, TracefsError> {
        let path = self.root.join("events").join(system);
        let entries = std::fs::read_dir(&path).map_err(|source| TracefsError::Io { op: "list", path, source })?;
        Ok(entries
            .flatten()
            .filter(|d| d.path().is_dir())
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .collect())
    }

    /// The format of `system:event`.
    pub fn event_format(&self, system: &str, event: &str) -> Result<super::format::EventFormat, TracefsError> {
        let rel = format!("events/{system}/{event}/format");
        let text = self.read(&rel)?;
        super::format::parse_event_format(system, &text)
            .map_err(|source| TracefsError::Format { path: self.root.join(rel), source })
    }

    /// The ring-buffer page layout.
    pub fn page_header(&self) -> Result<super::format::PageHeader, TracefsError> {
        let text = self.read("events/header_page")?;
        super::format::parse_header_page(&text)
            .map_err(|source| TracefsError::Format { path: self.root.join("events/header_page"), source })
    }

    /// Names of the instances present.
    pub fn instances(&self) -> Result<Vec<String>, TracefsError> {
        let path = self.root.join("instances");
        let entries = std::fs::read_dir(&path).map_err(|source| TracefsError::Io { op: "list", path, source })?;
        Ok(entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
    }

    /// Removes every instance named with our prefix (left by a previous run that was killed, or
    /// by `DELETE all`) but `<prefix><keep>` for each of `keep` (the live ones that are no
    /// session's). Returns how many were removed.
    pub fn remove_stale_instances(&self, keep: &[&str]) -> Result<usize, TracefsError> {
        let mut removed = 0;
        let stale = |n: &String| n.strip_prefix(&self.prefix).is_some_and(|rest| !keep.contains(&rest));
        for name in self.instances()?.into_iter().filter(stale) {
            let dir = self.root.join("instances").join(&name);
            // Stop recording first so the removal does not race a full buffer.
            let _ = std::fs::write(dir.join("tracing_on"), "0");
            super::instance::remove_dir_retrying(&dir)?;
            info!(instance = %name, "removed stale ftrace instance");
            removed += 1;
        }
        Ok(removed)
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

#[cfg(test)]
mod short_tests {
    use super::*;

    #[test]
    fn memory_and_busy_errors_are_the_kernel_being_short_others_are_refusals() {
        let io = |errno: rustix::io::Errno| TracefsError::Io {
            op: "write",
            path: "buffer_size_kb".into(),
            source: io::Error::from_raw_os_error(errno.raw_os_error()),
        };
        assert!(io(rustix::io::Errno::NOMEM).is_kernel_short());
        assert!(io(rustix::io::Errno::BUSY).is_kernel_short());
        assert!(!io(rustix::io::Errno::INVAL).is_kernel_short());
        assert!(!io(rustix::io::Errno::PERM).is_kernel_short());
    }
}
