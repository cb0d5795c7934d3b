//! The task tracker: every registered container's processes kept current in memory from the
//! kernel's own fork, exit and exec events, so that `GET /v1/pods` serializes instead of
//! reading every container's cgroup and procfs files (about 50 µs a container).
//!
//! Two small ftrace instances, read by one thread:
//! - `<prefix>tasks` records `task_newtask`, `sched_process_exit` and `sched_process_exec` of the
//!   containers' threads only: its `set_event_pid` holds them, and `event-fork` has the kernel
//!   add every child at its fork (and drop it at its exit). The host's own forks cost nothing.
//! - `<prefix>cgroups` records cgroup migrations host-wide (rare): a process entering a
//!   container from outside (`runc exec`, `crictl exec`) is no descendant of its processes.
//!
//! A container is read from procfs (a rescan) when it is registered, when a migration
//! concerns it, when a child is created straight into a cgroup (clone3), when its init's
//! parent exits (reparenting), and after any loss of events; meanwhile a request reads it live.
//! A request first drains what the kernel recorded up to that moment: its answer is exact as of
//! the request, not of the last background read (`docs/design/task-tracking.md`).

pub mod events;
pub mod parents;
pub mod table;

use std::{
    collections::{HashMap, HashSet},
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
use tracing::{debug, info, warn};

pub use self::table::Tasks;
use self::{
    events::{Layouts, TaskEvent, CGROUP_EVENTS, TASK_EVENTS},
    parents::Parents,
    table::{Scan, Table},
};
use crate::{
    ftrace::{
        format::PageHeader,
        pid_filter::{monotonic_ns, PidFilter},
        pipes::Pipes,
        ring::{parse_page, Page},
        Instance, Tracefs, TracefsError,
    },
    registry::{procfs::Procfs, Entry},
};

/// How long the thread sleeps when nothing wakes it: requests drain for themselves, so this
/// only bounds how full the buffers get between reads.
const POLL_INTERVAL: Timespec = Timespec { tv_sec: 0, tv_nsec: 200_000_000 };

/// The first and the longest wait before a container that is not settled is read again.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(20);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Rounds of "read the container, add its new threads to the filter" before a rescan gives up
/// for now (a fork storm outrunning the writes); the container is read live meanwhile and
/// rescanned again at the next wake.
const RESCAN_ROUNDS: usize = 4;

/// The tracker's instances, after the tracefs prefix.
pub const INSTANCES: [&str; 2] = ["tasks", "cgroups"];

/// Per-CPU buffer of the cgroup-migration instance (its events are rare).
const CGROUP_BUFFER_KB: u64 = 64;

/// Counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct TrackerCounters {
    /// Containers read from procfs by the tracker.
    pub rescans: AtomicU64,
    /// Times the kernel reported lost events (every container was read again).
    pub losses: AtomicU64,
    /// Containers a request had to read live (not known exactly yet).
    pub live_reads: AtomicU64,
    /// Containers a request took from memory.
    pub memory_reads: AtomicU64,
}

impl TrackerCounters {
    /// (rescans, losses, memory reads, live reads), in the order `/metrics` takes them.
    pub fn snapshot(&self) -> [u64; 4] {
        [&self.rescans, &self.losses, &self.memory_reads, &self.live_reads].map(|c| c.load(Ordering::Relaxed))
    }
}

/// What the thread and the requests share.
struct Core {
    table: Table,
    tasks: Pipes,
    cgroups: Pipes,
    header: PageHeader,
    layouts: Layouts,
    /// Where the tasks instance's events begin (its first filter write).
    from_ts: Arc<AtomicU64>,
    page: Page,
    events: Vec<(u64, TaskEvent)>,
    /// The cgroup directory of each tracked container, for its rescans.
    dirs: HashMap<Arc<str>, Option<PathBuf>>,
}

impl Core {
    /// Reads everything the kernel recorded up to now and applies it in timestamp order. The
    /// reads are non-blocking copies out of the ring buffers; they are what the lock guards.
    fn drain(&mut self, counters: &TrackerCounters) {
        let Core { tasks, cgroups, header, layouts, page, events, from_ts, .. } = self;
        let from = from_ts.load(Ordering::Acquire);
        let mut lost = false;
        for (pipes, filtered) in [(tasks, true), (cgroups, false)] {
            let read = pipes.drain(|buf| {
                parse_page(buf, header, page);
                lost |= page.missed;
                for ev in &page.events {
                    // Before the first filter write the instance recorded the whole host.
                    if filtered && ev.ts < from {
                        continue;
                    }
                    if let Some(e) = layouts.decode(ev.ts, &buf[ev.offset..ev.offset + ev.len]) {
                        events.push((ev.ts, e));
                    }
                }
            });
            if let Err(e) = read {
                warn!(error = %e, "task tracker: a trace_pipe_raw read failed; containers are read again");
                lost = true;
            }
        }
        events.sort_by_key(|(ts, _)| *ts);
        for (_, e) in events.drain(..) {
            self.table.apply(&e);
        }
        self.table.end_drain();
        if lost {
            counters.losses.fetch_add(1, Ordering::Relaxed);
            warn!("task tracker: the kernel lost task events; every container is read again");
            self.table.lost_events();
        }
    }
}

/// A container to follow, prepared by [`TaskTracker::prepare`].
pub struct Track(Command);

/// A registration or removal for the thread.
enum Command {
    Track { id: String, init: u32, dir: Option<PathBuf>, cgroup: Option<String>, ppid: u32 },
    Untrack(String),
}

/// The tracker. Dropping it stops its thread and removes its instances.
pub struct TaskTracker {
    core: Mutex<Core>,
    procfs: Procfs,
    filter: PidFilter,
    instances: [Arc<Instance>; 2],
    commands: Mutex<Vec<Command>>,
    wake: OwnedFd,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Counters, for `/metrics`.
    pub counters: TrackerCounters,
}

impl std::fmt::Debug for TaskTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TaskTracker({})", self.instances[0].name())
    }
}

fn tracefs_io(op: &'static str) -> impl FnOnce(std::io::Error) -> TracefsError {
    move |source| TracefsError::Io { op, path: PathBuf::from("task tracker"), source }
}

impl TaskTracker {
    /// Creates the two instances (`buffer_kb` per CPU for the task events) and starts the
    /// thread. Nothing is recorded until the first container is tracked.
    pub fn start(tracefs: &Tracefs, procfs: Procfs, buffer_kb: u64) -> Result<Arc<Self>, TracefsError> {
        let layouts = Layouts::read(tracefs)?;
        let header = tracefs.page_header()?;
        let tasks = Arc::new(Instance::create(tracefs, INSTANCES[0])?);
        tasks.set_buffer_size_kb(buffer_kb)?;
        tasks.use_mono_clock()?;
        tasks.set_buffer_percent(50)?;
        tasks.set_option("event-fork", true)?;
        for (system, event) in TASK_EVENTS {
            // Exec is optional: without it a thread's exec is fixed by a rescan.
            if let Err(e) = tasks.enable_event(system, Some(event)) {
                if event != "sched_process_exec" {
                    return Err(e);
                }
            }
        }
        let cgroups = Arc::new(Instance::create(tracefs, INSTANCES[1])?);
        cgroups.set_buffer_size_kb(CGROUP_BUFFER_KB.min(buffer_kb))?;
        cgroups.use_mono_clock()?;
        cgroups.set_buffer_percent(50)?;
        let mut migrations = 0;
        for (system, event) in CGROUP_EVENTS {
            migrations += usize::from(cgroups.enable_event(system, Some(event)).is_ok());
        }
        if migrations == 0 {
            warn!(
                "no cgroup migration events: processes entering a container from outside are seen at its next rescan"
            );
        }
        cgroups.set_tracing_on(true)?;
        let page_size = tasks.subbuf_size().unwrap_or(header.data_offset + header.data_size);
        let from_ts = Arc::new(AtomicU64::new(0));
        let core = Core {
            table: Table::default(),
            tasks: Pipes::open(&tasks, page_size)?,
            cgroups: Pipes::open(&cgroups, page_size)?,
            header,
            layouts,
            from_ts: from_ts.clone(),
            page: Page::default(),
            events: Vec::new(),
            dirs: HashMap::new(),
        };
        let mut handles = core.tasks.poll_handles().map_err(tracefs_io("duplicate the pipes of"))?;
        handles.extend(core.cgroups.poll_handles().map_err(tracefs_io("duplicate the pipes of"))?);
        let wake =
            eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(|e| tracefs_io("eventfd")(e.into()))?;
        let parents = Parents::new().map_err(tracefs_io("epoll"))?;
        let tracker = Arc::new(Self {
            core: Mutex::new(core),
            procfs,
            filter: PidFilter::new(tasks.clone(), false, from_ts),
            instances: [tasks, cgroups],
            commands: Mutex::new(Vec::new()),
            wake,
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
            counters: TrackerCounters::default(),
        });
        let weak = Arc::downgrade(&tracker);
        let thread = std::thread::Builder::new()
            .name("task-tracker".into())
            .spawn(move || run(weak, handles, parents))
            .map_err(tracefs_io("spawn the thread of"))?;
        *tracker.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        info!(instance = %tracker.instances[0].name(), buffer_kb, "task tracker started");
        Ok(tracker)
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        // Every change to the table is one event or one merge applied whole.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, c: Command) {
        self.commands.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// What following a registered container takes (its cgroup's name in migration events is
    /// read here, so that [`TaskTracker::track`] does no I/O); `None` for a sandbox.
    pub fn prepare(&self, entry: &Entry) -> Option<Track> {
        if !entry.is_workload() {
            return None;
        }
        let dir = entry.cgroup.clone();
        let cgroup = dir.as_deref().and_then(|d| self.procfs.cgroup_relative(d));
        Some(Track(Command::Track {
            id: entry.record.id.clone(),
            init: entry.record.pid,
            dir,
            cgroup,
            ppid: entry.ppid,
        }))
    }

    /// Starts following a container; until its first rescan is merged (within milliseconds)
    /// requests read it live. Never blocks: the registry calls it under its lock.
    pub fn track(&self, t: Track) {
        self.send(t.0);
    }

    /// Stops following a container.
    pub fn untrack(&self, id: &str) {
        self.send(Command::Untrack(id.to_owned()));
    }

    /// The tasks of each of `ids` known exactly, as of now: what the kernel recorded before
    /// this call is applied first. Containers missing from the answer must be read live.
    pub fn tasks<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> HashMap<&'a str, Tasks> {
        let mut core = self.core();
        core.drain(&self.counters);
        let (mut known, mut live) = (HashMap::new(), 0u64);
        for id in ids {
            match core.table.tasks(id) {
                Some(t) => {
                    known.insert(id, t);
                }
                None => live += 1,
            }
        }
        drop(core);
        self.counters.live_reads.fetch_add(live, Ordering::Relaxed);
        self.counters.memory_reads.fetch_add(known.len() as u64, Ordering::Relaxed);
        known
    }

    /// (containers, processes, threads) followed.
    pub fn sizes(&self) -> (usize, usize, usize) {
        self.core().table.sizes()
    }

    /// Whether the thread runs.
    pub fn is_alive(&self) -> bool {
        self.thread.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the thread and removes the instances.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
        self.filter.close();
        {
            let mut core = self.core();
            core.tasks.close();
            core.cgroups.close();
        }
        for i in &self.instances {
            if let Err(e) = i.remove() {
                warn!(instance = %i.name(), error = %e, "cannot remove the task tracker's instance");
            }
        }
    }

    /// Applies the queued registrations and removals.
    fn take_commands(&self, parents: &mut Parents) {
        let commands = std::mem::take(&mut *self.commands.lock().unwrap_or_else(|p| p.into_inner()));
        if commands.is_empty() {
            return;
        }
        let mut core = self.core();
        for c in commands {
            match c {
                Command::Track { id, init, dir, cgroup, ppid } => {
                    core.table.track(&id, init, cgroup, ppid);
                    core.dirs.insert(Arc::from(id.as_str()), dir);
                }
                Command::Untrack(id) => {
                    core.table.untrack(&id);
                    core.dirs.remove(id.as_str());
                    parents.forget(&id);
                }
            }
        }
    }

    /// Reads a container from procfs: its processes, their threads, its init's parent.
    fn scan(&self, init: u32, dir: Option<&std::path::Path>) -> Scan {
        let procs = self.procfs.tasks(init, dir).into_iter().map(|p| (p, self.procfs.threads(p))).collect();
        Scan { procs, ppid: self.procfs.stat(init).ok().map(|s| s.ppid) }
    }

    /// Rescans containers: the threads of theirs not in the kernel's filter yet are written
    /// there, and each is read again until a read finds none new (children forked before
    /// their creator's write were not followed); then that read is merged. Every container's
    /// new threads go in one write per round: a write waits for an RCU grace period (tens of
    /// ms), and 200 containers registering at once must not take 200 of them. The lock is held
    /// for adopting and merging only, never for procfs or the filter write. Answers the
    /// containers still not known exactly (threads kept appearing, or the write failed).
    fn rescan(&self, ids: impl IntoIterator<Item = Arc<str>>, parents: &mut Parents) -> Vec<Arc<str>> {
        struct Pending {
            id: Arc<str>,
            init: u32,
            dir: Option<PathBuf>,
            written: HashSet<u32>,
        }
        let mut pending: Vec<Pending> = {
            let core = self.core();
            ids.into_iter()
                .filter_map(|id| {
                    let (init, dir) = core.table.target(&id).zip(core.dirs.get(&id).cloned())?;
                    Some(Pending { id, init, dir, written: HashSet::new() })
                })
                .collect()
        };
        self.counters.rescans.fetch_add(pending.len() as u64, Ordering::Relaxed);
        for _ in 0..RESCAN_ROUNDS {
            if pending.is_empty() || self.stop.load(Ordering::Acquire) {
                break;
            }
            let reads: Vec<(u64, Scan, Vec<u32>)> = pending
                .iter()
                .map(|p| {
                    let t0 = monotonic_ns();
                    let scan = self.scan(p.init, p.dir.as_deref());
                    let core = self.core();
                    let new: Vec<u32> =
                        scan.tids().filter(|t| !p.written.contains(t) && !core.table.knows(*t)).collect();
                    (t0, scan, new)
                })
                .collect();
            let all_new: Vec<u32> = reads.iter().flat_map(|(_, _, n)| n.iter().copied()).collect();
            if !all_new.is_empty() {
                if let Err(e) = self.filter.commit(self.filter.push(&all_new)) {
                    warn!(error = %e, containers = pending.len(), "task tracker: cannot add threads to its filter");
                    return pending.into_iter().map(|p| p.id).collect();
                }
            }
            let mut core = self.core();
            core.drain(&self.counters);
            let mut still = Vec::new();
            for (mut p, (t0, scan, new)) in pending.into_iter().zip(reads) {
                if new.is_empty() || scan.procs.is_empty() {
                    core.table.merge(&p.id, &scan, t0);
                    if let Some(ppid) = scan.ppid {
                        parents.watch(&p.id, ppid);
                    }
                    debug!(container_id = %p.id, processes = scan.procs.len(), "task tracker: container read");
                } else {
                    core.table.adopt(&p.id, &scan, &new, t0);
                    p.written.extend(new);
                    still.push(p);
                }
            }
            drop(core);
            pending = still;
        }
        for p in &pending {
            debug!(container_id = %p.id, "task tracker: threads still appearing; the container is read again later");
        }
        pending.into_iter().map(|p| p.id).collect()
    }
}

impl Drop for TaskTracker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(me: std::sync::Weak<TaskTracker>, pipes: Vec<OwnedFd>, mut parents: Parents) {
    let mut retry: Vec<Arc<str>> = Vec::new();
    // A container still settling is retried soon, then less and less often (a filter write the
    // kernel keeps refusing must not spin): 20 ms doubling up to 5 s.
    let mut backoff = RETRY_FIRST;
    loop {
        let Some(t) = me.upgrade() else { return };
        if t.stop.load(Ordering::Acquire) {
            return;
        }
        {
            let mut fds: Vec<PollFd<'_>> = pipes.iter().map(|f| PollFd::new(f, PollFlags::IN)).collect();
            fds.push(PollFd::new(&t.wake, PollFlags::IN));
            fds.push(PollFd::new(&parents, PollFlags::IN));
            let wait =
                if retry.is_empty() { POLL_INTERVAL } else { Timespec::try_from(backoff).unwrap_or(POLL_INTERVAL) };
            let _ = poll(&mut fds, Some(&wait));
        }
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&t.wake, &mut buf);
        t.take_commands(&mut parents);
        let orphaned = parents.exited();
        let rescans = {
            let mut core = t.core();
            core.drain(&t.counters);
            let mut r = core.table.take_rescans();
            for id in orphaned.into_iter().chain(retry.drain(..)) {
                if core.table.tracks(&id) {
                    r.insert(id);
                }
            }
            r
        };
        if !rescans.is_empty() {
            retry = t.rescan(rescans, &mut parents);
        }
        backoff = if retry.is_empty() { RETRY_FIRST } else { (backoff * 2).min(RETRY_MAX) };
    }
}
