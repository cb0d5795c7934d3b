//! One ftrace instance (`instances/<name>`): a private ring buffer with its own event
//! selection, pid filter and options. An RAII value: dropping it removes the instance.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use tracing::{debug, warn};

use super::tracefs::{Tracefs, TracefsError};

/// A live instance, removed on drop.
#[derive(Debug)]
pub struct Instance {
    name: String,
    dir: PathBuf,
    /// Set once [`Instance::remove`] succeeded: dropping it has nothing left to do.
    removed: AtomicBool,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TracefsError + 'a {
    move |source| TracefsError::Io { op, path: path.to_owned(), source }
}

/// `rmdir` of an instance, retried a few times: it answers EBUSY while a reader still has a
/// per-CPU pipe open (the reader threads are closing theirs).
pub(crate) fn remove_dir_retrying(dir: &Path) -> Result<(), TracefsError> {
    let mut last = None;
    for attempt in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc_ebusy()) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(10 * (attempt + 1).min(10)));
            }
            Err(e) => return Err(io_err("rmdir", dir)(e)),
        }
    }
    Err(io_err("rmdir", dir)(last.unwrap_or_else(|| io::Error::other("busy"))))
}

fn libc_ebusy() -> i32 {
    rustix::io::Errno::BUSY.raw_os_error()
}

impl Instance {
    /// Creates `instances/<prefix><suffix>` (the tracefs' prefix) with recording off; a leftover of the same name is
    /// removed first.
    pub fn create(tracefs: &Tracefs, suffix: &str) -> Result<Self, TracefsError> {
        let name = format!("{}{suffix}", tracefs.prefix());
        let dir = tracefs.root().join("instances").join(&name);
        if dir.exists() {
            remove_dir_retrying(&dir)?;
        }
        fs::create_dir(&dir).map_err(io_err("mkdir", &dir))?;
        let inst = Instance { name, dir, removed: AtomicBool::new(false) };
        // A new instance records at once; nothing may be recorded before the pid filter is set.
        inst.write("tracing_on", "0")?;
        Ok(inst)
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    // The raw control-file access stays private: every kernel write the daemon makes is one of
    // the named methods below, so what can reach tracefs is listed in this one file.

    /// Writes `value` to a control file (truncating).
    fn write(&self, rel: &str, value: &str) -> Result<(), TracefsError> {
        let path = self.dir.join(rel);
        fs::write(&path, value).map_err(io_err("write", &path))
    }

    /// Appends to a control file (`set_event_pid` keeps its list then).
    fn append(&self, rel: &str, value: &str) -> Result<(), TracefsError> {
        let path = self.dir.join(rel);
        let mut f = OpenOptions::new().append(true).open(&path).map_err(io_err("open", &path))?;
        f.write_all(value.as_bytes()).map_err(io_err("write", &path))
    }

    /// Reads a control file.
    fn read(&self, rel: &str) -> Result<String, TracefsError> {
        let path = self.dir.join(rel);
        super::tracefs::read_file(&path).map_err(io_err("read", &path))
    }

    /// Sizes each CPU's ring buffer.
    pub fn set_buffer_size_kb(&self, kb: u64) -> Result<(), TracefsError> {
        self.write("buffer_size_kb", &kb.to_string())
    }

    /// How full (percent) a CPU's buffer must be before a reader waiting in poll is woken.
    pub fn set_buffer_percent(&self, percent: u8) -> Result<(), TracefsError> {
        self.write("buffer_percent", &percent.min(100).to_string())
    }

    /// Uses the `mono` trace clock (CLOCK_MONOTONIC), comparable across CPUs and with ours.
    pub fn use_mono_clock(&self) -> Result<(), TracefsError> {
        self.write("trace_clock", "mono")
    }

    /// The size of a ring-buffer page (sub-buffer) in bytes, on kernels that make it tunable.
    pub fn subbuf_size(&self) -> Option<usize> {
        self.read("buffer_subbuf_size_kb").ok()?.trim().parse::<usize>().ok().map(|kb| kb * 1024)
    }

    /// Limits the function tracer to `functions` (names or globs checked by the caller).
    pub fn set_ftrace_filter(&self, functions: &[String]) -> Result<(), TracefsError> {
        self.write("set_ftrace_filter", &functions.join(" "))
    }

    /// Selects the function tracer.
    pub fn use_function_tracer(&self) -> Result<(), TracefsError> {
        self.write("current_tracer", "function")
    }

    /// The thread ids in `set_event_pid`.
    pub fn event_pids(&self) -> Result<Vec<u32>, TracefsError> {
        Ok(self.read("set_event_pid")?.split_whitespace().filter_map(|t| t.parse().ok()).collect())
    }

    /// Sets an option (`options/<name>`).
    pub fn set_option(&self, name: &str, on: bool) -> Result<(), TracefsError> {
        self.write(&format!("options/{name}"), if on { "1" } else { "0" })
    }

    /// Enables one event, or a whole system when `event` is `None`.
    pub fn enable_event(&self, system: &str, event: Option<&str>) -> Result<(), TracefsError> {
        match event {
            Some(e) => self.write(&format!("events/{system}/{e}/enable"), "1"),
            None => self.write(&format!("events/{system}/enable"), "1"),
        }
    }

    /// Disables one event, or a whole system when `event` is `None` (every event of it, also
    /// those enabled one by one).
    pub fn disable_event(&self, system: &str, event: Option<&str>) -> Result<(), TracefsError> {
        match event {
            Some(e) => self.write(&format!("events/{system}/{e}/enable"), "0"),
            None => self.write(&format!("events/{system}/enable"), "0"),
        }
    }

    /// Sets the filter of one event. The expression must have been validated by the caller.
    pub fn set_filter(&self, system: &str, event: &str, expr: &str) -> Result<(), TracefsError> {
        self.write(&format!("events/{system}/{event}/filter"), expr)
    }

    /// Adds thread ids to `set_event_pid` (and `set_ftrace_pid` for the function tracer).
    pub fn add_pids(&self, tids: &[u32], function_tracer: bool) -> Result<(), TracefsError> {
        self.append_pids("set_event_pid", tids)?;
        if function_tracer {
            self.append_pids("set_ftrace_pid", tids)?;
        }
        Ok(())
    }

    /// Appends thread ids to a pid list file, in chunks the kernel's parser takes in one write.
    fn append_pids(&self, file: &str, tids: &[u32]) -> Result<(), TracefsError> {
        for chunk in tids.chunks(256) {
            let text = format!("{}\n", chunk.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));
            self.append(file, &text)?;
        }
        Ok(())
    }

    /// Empties the ring buffers of every CPU (what a reader has not read yet is lost).
    pub fn clear_buffers(&self) -> Result<(), TracefsError> {
        // Opening `trace` for writing with O_TRUNC resets the buffers.
        self.write("trace", "")
    }

    /// Turns recording on or off.
    pub fn set_tracing_on(&self, on: bool) -> Result<(), TracefsError> {
        self.write("tracing_on", if on { "1" } else { "0" })
    }

    /// CPU numbers that have a per-CPU buffer.
    pub fn cpus(&self) -> Result<Vec<usize>, TracefsError> {
        let dir = self.dir.join("per_cpu");
        let mut cpus: Vec<usize> = fs::read_dir(&dir)
            .map_err(io_err("list", &dir))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("cpu")?.parse().ok())
            .collect();
        cpus.sort_unstable();
        Ok(cpus)
    }

    /// The `overrun` count of a CPU's buffer: events the kernel overwrote before they were read.
    pub fn overrun(&self, cpu: usize) -> Result<u64, TracefsError> {
        let text = self.read(&format!("per_cpu/cpu{cpu}/stats"))?;
        Ok(text.lines().find_map(|l| l.strip_prefix("overrun:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0))
    }

    /// Turns recording off and removes the instance (idempotent). Call it where a failure can
    /// be reported and no lock is held: `rmdir` retries EBUSY while readers close their pipes.
    /// Dropping an instance that was not removed removes it as a last resort.
    pub fn remove(&self) -> Result<(), TracefsError> {
        if self.removed.load(Ordering::Acquire) {
            return Ok(());
        }
        let _ = self.set_tracing_on(false);
        remove_dir_retrying(&self.dir)?;
        self.removed.store(true, Ordering::Release);
        debug!(instance = %self.name, "ftrace instance removed");
        Ok(())
    }

    /// Path of a CPU's binary pipe.
    pub fn pipe_raw(&self, cpu: usize) -> PathBuf {
        self.dir.join(format!("per_cpu/cpu{cpu}/trace_pipe_raw"))
    }

    /// Opens a CPU's binary pipe, non-blocking: a read of an empty buffer answers at once.
    pub fn open_pipe_raw(&self, cpu: usize) -> Result<std::fs::File, TracefsError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.pipe_raw(cpu);
        OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&path)
            .map_err(io_err("open", &path))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            warn!(instance = %self.name, error = %e, "cannot remove ftrace instance");
        }
    }
}
