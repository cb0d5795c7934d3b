//! Lossless reading of an instance: one thread per CPU reads whole pages from that CPU's
//! `trace_pipe_raw` (binary, no formatting in the kernel) and hands them to a per-CPU consumer.
//! The text `trace_pipe` loses about half the events at 1 M events/s on this kind of machine;
//! raw pages keep up (measured in the tracing benchmark, `scripts/bench.sh`).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use rustix::{
    event::{poll, PollFd, PollFlags, Timespec},
    io::Errno,
};
use tracing::{debug, warn};

use super::{
    barrier::{Barrier, Progress},
    Instance, TracefsError,
};

/// How long a reader sleeps in poll before reading anyway: a CPU whose buffer fills slowly
/// (below the instance's `buffer_percent`) still delivers its events within this time.
const POLL_INTERVAL: Timespec = Timespec { tv_sec: 0, tv_nsec: 100_000_000 };

/// How much nicer than the rest of the daemon the readers are (a nice value of -5): a reader
/// that falls behind loses events for every consumer for good, an export that falls behind
/// queues or drops only its own. With the export, its collector and a full-speed workload on
/// two cores, the readers at the same priority lost up to 9 % of a burst to overrun.
const READER_NICE: i32 = -5;

/// Gives the calling reader thread [`READER_NICE`] (Linux: the priority of a thread is its
/// own). Without `CAP_SYS_NICE` it keeps the default, which is only logged.
fn raise_priority(cpu: usize) {
    if let Err(e) = rustix::process::setpriority_process(None, READER_NICE) {
        debug!(cpu, error = %e, "reader thread priority not raised");
    }
}

/// Consumes the pages of one CPU; answers whether the page was at least half full (see
/// [`super::ring::Page::half_full`]): a reader that gets less may wait instead of reading on.
pub type PageConsumer = Box<dyn FnMut(Vec<u8>) -> bool + Send>;

/// The reader threads of one instance.
#[derive(Debug)]
pub struct Readers {
    stop: Arc<AtomicBool>,
    barrier: Arc<Barrier>,
    threads: Vec<JoinHandle<()>>,
}

impl Readers {
    /// Opens every CPU's `trace_pipe_raw` of `instance` and starts a thread for each, feeding
    /// `make(cpu, progress)`'s consumer with pages of `page_size` bytes; `progress` lets the
    /// consumer wait for the other CPUs' readers (see [`Progress`]).
    pub fn start(
        instance: &Instance,
        page_size: usize,
        mut make: impl FnMut(usize, Progress) -> PageConsumer,
    ) -> Result<Self, TracefsError> {
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = instance.cpus()?;
        let barrier = Barrier::new(cpus.len()).map_err(|source| TracefsError::Io {
            op: "create the reader eventfds of",
            path: instance.dir().to_owned(),
            source,
        })?;
        let mut threads = Vec::new();
        for (me, cpu) in cpus.into_iter().enumerate() {
            let path = instance.pipe_raw(cpu);
            let file = instance.open_pipe_raw(cpu)?;
            let mut consume = make(cpu, Progress::new(barrier.clone(), me));
            let flag = stop.clone();
            let shared = barrier.clone();
            let spawned = std::thread::Builder::new().name(format!("ftrace-cpu{cpu}")).spawn(move || {
                raise_priority(cpu);
                let file = file;
                // The newest request this reader answered by draining its buffer empty.
                let mut answered = 0;
                loop {
                    // Read the flag before draining: after it is set, one last drain takes what
                    // the kernel recorded before tracing was turned off. The same for requests
                    // of other readers: a drain that starts after one answers it.
                    let stopping = flag.load(Ordering::Acquire);
                    let epoch = shared.requests();
                    // Unless asked to drain empty, a page less than half full means the reader
                    // is at the writer: it waits for the buffer to fill (its `buffer_percent`,
                    // or the poll interval) instead of chasing the writer a few events a read,
                    // which cost up to twice the CPU and slowed the traced workload.
                    let drain = stopping || epoch > answered;
                    let mut emptied = true;
                    loop {
                        // Read into the spare capacity: zeroing every page first was a
                        // `memset` of 4 KiB a page for bytes the kernel overwrites.
                        let mut page = Vec::with_capacity(page_size);
                        match rustix::io::read(&file, rustix::buffer::spare_capacity(&mut page)) {
                            Ok(0) => break,
                            Ok(_) => {
                                if !consume(page) && !drain {
                                    emptied = false;
                                    break;
                                }
                            }
                            Err(Errno::AGAIN) => break,
                            Err(Errno::INTR) => continue,
                            Err(e) => {
                                warn!(cpu, error = %e, "trace_pipe_raw read failed; reader stops");
                                // Waiting readers must not wait for this one any more.
                                shared.drained(me, u64::MAX);
                                return;
                            }
                        }
                    }
                    if emptied {
                        shared.drained(me, epoch);
                        answered = epoch;
                    }
                    if stopping {
                        debug!(cpu, "reader drained and stopped");
                        shared.drained(me, u64::MAX);
                        return;
                    }
                    let waker = shared.waker(me);
                    let mut fds = [PollFd::new(&file, PollFlags::IN), PollFd::new(&waker, PollFlags::IN)];
                    let _ = poll(&mut fds, Some(&POLL_INTERVAL));
                    let woken = !fds[1].revents().is_empty();
                    drop(waker);
                    if woken {
                        shared.clear(me);
                    }
                }
            });
            match spawned {
                Ok(t) => threads.push(t),
                Err(source) => {
                    barrier.drained(me, u64::MAX);
                    let readers = Readers { stop, barrier, threads };
                    readers.stop_and_join();
                    return Err(TracefsError::Io { op: "spawn reader for", path, source });
                }
            }
        }
        Ok(Readers { stop, barrier, threads })
    }

    /// The readers' barrier, to wait for their progress without holding the readers
    /// ([`Barrier::wait_delivered`]); once they stopped, every wait on it ends at once.
    pub(crate) fn barrier(&self) -> Arc<Barrier> {
        self.barrier.clone()
    }

    /// Asks every reader to drain what is left and stop, and waits for them (the drain, not a
    /// poll interval: they are woken). Call after recording is turned off.
    pub fn stop_and_join(self) {
        self.stop.store(true, Ordering::Release);
        self.barrier.wake_all(None);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
