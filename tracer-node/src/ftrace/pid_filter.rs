//! The pid filter of a running ftrace instance, written by group commit.
//!
//! Every write to `set_event_pid` waits for an RCU grace period in the kernel (tens of ms here),
//! and the kernel serialises them. Written one container at a time, 200 containers starting at
//! once with 4 matching sessions took 800 writes and 10 s, and most hooks gave up waiting.
//! Here a container's threads join a pending list and whoever holds the writer writes the whole
//! list in one append; the others find their threads already written when their turn comes. The
//! session's lock is never held while the kernel works.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
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
    /// Whether `tracing_on` was set. Recording starts with the first batch, never before: an
    /// empty filter would record the whole host.
    recording: AtomicBool,
    /// Where the run's events begin, in the trace clock; 0 until the first batch is written
    /// (the readers wait for it).
    from_ts: Arc<AtomicU64>,
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
    /// The filter of `instance` (whose clock must be `mono`), not recording yet; `from_ts` is
    /// set once it does.
    pub fn new(instance: Arc<Instance>, functions: bool, from_ts: Arc<AtomicU64>) -> Self {
        Self {
            instance,
            functions,
            recording: AtomicBool::new(false),
            from_ts,
            pending: Mutex::default(),
            writer: Mutex::default(),
        }
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
        let result = if batch.tids.is_empty() {
            Ok(())
        } else if self.recording() {
            self.instance.add_pids(&batch.tids, self.functions)
        } else {
            self.first_batch(&batch.tids)
        }
        .map_err(|e| PidFilterError::Kernel(Arc::new(e)));
        for w in &batch.waiters {
            let _ = w.set(result.clone());
        }
        result
    }

    /// Writes the run's first list and turns recording on. Recording goes first: a write that
    /// replaces a list leaves, for a whole RCU grace period, running tasks in the new list whose
    /// forks are still ignored, and their children would be recorded with no fork to tie them to
    /// their container. Written into a recording instance the list is the first one, so forks
    /// are followed from the start; what the instance recorded of the host before the write
    /// returned is before `from_ts` and not shown (its forks and exits are still followed).
    /// That compares the instance's `mono` clock with ours.
    fn first_batch(&self, tids: &[u32]) -> Result<(), TracefsError> {
        self.instance.set_tracing_on(true)?;
        if let Err(e) = self.instance.add_pids(tids, self.functions) {
            // Never left recording the whole host.
            let _ = self.instance.set_tracing_on(false);
            return Err(e);
        }
        self.from_ts.store(monotonic_ns().max(1), Ordering::Release);
        self.recording.store(true, Ordering::Release);
        Ok(())
    }

    /// The run stops: waits for a batch being written, and refuses every later one (a late
    /// one would turn recording back on after the stop turned it off).
    pub fn close(&self) {
        *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

/// CLOCK_MONOTONIC now, in ns: the instances' `mono` trace clock.
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
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
        let from_ts = Arc::new(AtomicU64::new(0));
        let filter = Arc::new(PidFilter::new(instance.clone(), false, from_ts.clone()));
        let writers = 32u32;
        std::thread::scope(|s| {
            for i in 0..writers {
                let filter = filter.clone();
                let instance = instance.clone();
                s.spawn(move || {
                    let tid = 30_000 + i;
                    filter.commit(filter.push(&[tid])).expect("add");
                    let list = instance.event_pids().expect("read set_event_pid");
                    assert!(list.contains(&tid), "{tid} is filtered once add returned: {list:?}");
                });
            }
        });
        assert!(filter.recording(), "the first threads turned recording on");
        assert!(from_ts.load(Ordering::Acquire) > 1, "the run's events begin after the first write (mono clock)");
        let list = instance.event_pids().expect("read");
        assert_eq!(list.len(), writers as usize, "{list:?}");
        filter.close();
        assert!(
            matches!(filter.commit(filter.push(&[1234])), Err(PidFilterError::Stopped)),
            "a stopped run takes no threads"
        );
        instance.remove().expect("remove instance");
    }
}
