//! The pid filter of a running ftrace instance, written by group commit.
//!
//! Every write to `set_event_pid` waits for an RCU grace period in the kernel (tens of ms here),
//! and the kernel serialises them. Written one container at a time, 200 containers starting at
//! once with 4 matching sessions took 800 writes and 10 s, and most hooks gave up waiting.
//! Here a container's threads join a pending list and whoever holds the writer writes the whole
//! list in one append; the others find their threads already written when their turn comes. The
//! session's lock is never held while the kernel works.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex, OnceLock,
};

use crate::ftrace::{Instance, TracefsError};

/// Why threads could not be added to the filter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PidFilterError {
    /// The run is stopping: its instance takes no more threads.
    #[error("the run is stopping")]
    Stopped,
    /// The kernel refused the write (shared by every container of the batch).
    #[error(transparent)]
    Kernel(Arc<TracefsError>),
}

/// What one batch's write came to, shared by everyone whose threads were in it.
type Outcome = Arc<OnceLock<Result<(), PidFilterError>>>;

#[derive(Default)]
struct Pending {
    tids: Vec<u32>,
    waiters: Vec<Outcome>,
}

/// A place in a batch, redeemed with [`PidFilter::commit`].
#[must_use]
pub struct Ticket(Outcome);

/// The pid filter of one run's instance.
pub struct PidFilter {
    instance: Arc<Instance>,
    /// `set_ftrace_pid` too (the function tracer).
    functions: bool,
    /// Whether `tracing_on` was set; a run started with no thread to trace waits for the first
    /// container's threads before it records (an empty filter would record the whole host).
    recording: AtomicBool,
    pending: Mutex<Pending>,
    /// Held while a batch is written; true once the run stops and nothing may be written.
    writer: Mutex<bool>,
}

impl std::fmt::Debug for PidFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PidFilter({}, recording={})", self.instance.name(), self.recording.load(Ordering::Relaxed))
    }
}

impl PidFilter {
    /// The filter of `instance`, already recording when `recording`.
    pub fn new(instance: Arc<Instance>, functions: bool, recording: bool) -> Self {
        Self {
            instance,
            functions,
            recording: AtomicBool::new(recording),
            pending: Mutex::default(),
            writer: Mutex::default(),
        }
    }

    /// The instance.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// Whether the instance records.
    pub fn recording(&self) -> bool {
        self.recording.load(Ordering::Acquire)
    }

    /// Queues `tids` for the next batch. Cheap: a container joining several sessions pushes to
    /// all of them first, so each session's next batch holds it whichever thread writes it.
    pub fn push(&self, tids: &[u32]) -> Ticket {
        let outcome = Outcome::default();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.tids.extend_from_slice(tids);
        p.waiters.push(outcome.clone());
        Ticket(outcome)
    }

    /// Returns once the threads of `ticket` are in the kernel's filter (and the instance
    /// records), written by this call or by the batch of another that held the writer first. Blocking: call it off the async workers and without
    /// the session's lock.
    pub fn commit(&self, ticket: Ticket) -> Result<(), PidFilterError> {
        let closed = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(done) = ticket.0.get() {
            return done.clone();
        }
        if *closed {
            return Err(PidFilterError::Stopped);
        }
        // Ours are pending still (the batch taken before ours was pushed did not hold them):
        // this batch holds them and every one pushed while we waited.
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let kernel = |e| PidFilterError::Kernel(Arc::new(e));
        let mut result = if batch.tids.is_empty() {
            Ok(())
        } else {
            self.instance.add_pids(&batch.tids, self.functions).map_err(kernel)
        };
        if result.is_ok() && !batch.tids.is_empty() && !self.recording() {
            result = self.instance.set_tracing_on(true).map_err(kernel);
            if result.is_ok() {
                self.recording.store(true, Ordering::Release);
            }
        }
        for w in &batch.waiters {
            let _ = w.set(result.clone());
        }
        result
    }

    /// The run stops: waits for a batch being written, and refuses every later one (a late
    /// one would turn recording back on after the stop turned it off).
    pub fn close(&self) {
        *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftrace::Tracefs;

    /// Needs root and tracefs; under `CI` their absence fails the test.
    fn tracefs() -> Option<Tracefs> {
        let root = rustix::process::geteuid().is_root();
        match Tracefs::find_or_mount(std::path::Path::new("/sys")) {
            Ok(t) if root => Some(t.with_prefix("ct-test-pidfilter-")),
            other => {
                assert!(std::env::var_os("CI").is_none(), "CI is set: this test needs root and tracefs ({other:?})");
                eprintln!("SKIPPED: needs root and tracefs");
                None
            }
        }
    }

    #[test]
    fn concurrent_adds_each_return_with_their_threads_filtered_and_a_closed_filter_takes_none() {
        let Some(fs) = tracefs() else { return };
        let instance = Arc::new(Instance::create(&fs, &std::process::id().to_string()).expect("instance"));
        let filter = Arc::new(PidFilter::new(instance.clone(), false, false));
        let writers = 32u32;
        std::thread::scope(|s| {
            for i in 0..writers {
                let filter = filter.clone();
                let instance = instance.clone();
                s.spawn(move || {
                    let tid = 30_000 + i;
                    filter.commit(filter.push(&[tid])).expect("add");
                    let list = instance.read("set_event_pid").expect("read set_event_pid");
                    assert!(
                        list.split_whitespace().any(|t| t == tid.to_string()),
                        "{tid} is filtered once add returned: {list}"
                    );
                });
            }
        });
        assert!(filter.recording(), "the first threads turned recording on");
        let list = instance.read("set_event_pid").expect("read");
        assert_eq!(list.split_whitespace().count(), writers as usize, "{list}");
        filter.close();
        assert!(
            matches!(filter.commit(filter.push(&[1234])), Err(PidFilterError::Stopped)),
            "a stopped run takes no threads"
        );
        instance.remove().expect("remove instance");
    }
}
