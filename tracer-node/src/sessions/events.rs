//! A session's events: parsed from raw pages by the per-CPU readers, tagged with the thread's
//! process, command and container, kept in a bounded retention buffer and fanned out to live
//! followers. The kernel-reading side never waits for a consumer: a follower that cannot keep
//! up loses batches, and those losses are counted.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::mpsc;
use tracer_api::v1::{SessionStats, TraceEvent};
use tracing::debug;

pub use super::lineage::{ExitEvent, ForkEvent};
use super::resolver::Resolver;

use crate::{
    batch::{Batch, BatchSink, Record, TaskInfo},
    ftrace::{
        barrier::Progress,
        format::{EventFormat, PageHeader},
        ring::{parse_page, Page},
    },
    metrics::Metrics,
};

/// Counters of a session's events.
#[derive(Debug, Default)]
struct Counters {
    read: AtomicU64,
    lost_kernel: AtomicU64,
    dropped: AtomicU64,
    aged_out: AtomicU64,
}

#[derive(Debug, Default)]
struct Retained {
    batches: VecDeque<Arc<Batch>>,
    events: usize,
}

/// Depth of a follower's queue, in pages (a page and its records: about 8 KiB).
const FOLLOWER_QUEUE: usize = 256;
/// Followers of one session at most.
pub const MAX_FOLLOWERS_PER_SESSION: usize = 16;
/// Followers of all sessions at most: with full queues about 2 MiB each.
pub const MAX_FOLLOWERS: u64 = 128;
/// A follower whose queue stays full this long is cut off: it does not read.
const STALLED_CUTOFF: std::time::Duration = std::time::Duration::from_secs(10);

/// What a new follower gets: the retained batches, then the live ones.
pub type Following = (Vec<Arc<Batch>>, mpsc::Receiver<Arc<Batch>>);

/// One live follower.
#[derive(Debug)]
struct Follower {
    tx: mpsc::Sender<Arc<Batch>>,
    /// Since when its queue has been full.
    full_since: Option<std::time::Instant>,
}

/// Why a follower is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FollowError {
    /// The session has its maximum of followers.
    #[error("this session has {0} following streams already, the most it takes")]
    Session(usize),
    /// The node has its maximum of followers.
    #[error("the node has {0} following streams already, the most it takes")]
    Node(u64),
}

/// The retention buffer and the followers of one session.
#[derive(Debug)]
pub struct EventStore {
    retained: Mutex<Retained>,
    followers: Mutex<Vec<Follower>>,
    sinks: Mutex<Vec<Box<dyn BatchSink>>>,
    counters: Counters,
    capacity: usize,
    metrics: Arc<Metrics>,
    stall_cutoff: std::time::Duration,
}

impl EventStore {
    /// A store retaining up to `capacity` events, counting into the node's `metrics`.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            retained: Mutex::default(),
            followers: Mutex::default(),
            sinks: Mutex::default(),
            counters: Counters::default(),
            capacity,
            metrics,
            stall_cutoff: STALLED_CUTOFF,
        }
    }

    /// Adds an export sink: every batch from now on is offered to it.
    pub fn add_sink(&self, sink: Box<dyn BatchSink>) {
        // Under the retention lock, as `push` offers batches: no batch is half-seen.
        let _r = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        self.sinks.lock().unwrap_or_else(|p| p.into_inner()).push(sink);
    }

    /// Adds the events of a page: kept for later readers, offered to every follower.
    pub fn push(&self, batch: Batch) {
        let n = batch.records.len();
        if n == 0 {
            return;
        }
        self.counters.read.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.events_read.fetch_add(n as u64, Ordering::Relaxed);
        let batch = Arc::new(batch);
        // Both locks, in this order (as `follow` takes them): a new follower sees each batch
        // exactly once, either in its snapshot or on its channel.
        let mut r = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        r.events += n;
        r.batches.push_back(batch.clone());
        while r.events > self.capacity {
            let Some(old) = r.batches.pop_front() else { break };
            r.events -= old.records.len();
            self.counters.aged_out.fetch_add(old.records.len() as u64, Ordering::Relaxed);
        }
        let mut followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        let before = followers.len();
        followers.retain_mut(|f| match f.tx.try_send(batch.clone()) {
            Ok(()) => {
                f.full_since = None;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(n as u64, Ordering::Relaxed);
                self.metrics.events_dropped_streams.fetch_add(n as u64, Ordering::Relaxed);
                let since = *f.full_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() < self.stall_cutoff {
                    return true;
                }
                // It has not read for that long: its stream ends after what is queued.
                self.metrics.followers_cut_off.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        self.metrics.followers.fetch_sub((before - followers.len()) as u64, Ordering::Relaxed);
        drop(followers);
        self.sinks.lock().unwrap_or_else(|p| p.into_inner()).retain(|sink| sink.offer(&batch));
    }

    /// The retained events.
    pub fn snapshot(&self) -> Vec<Arc<Batch>> {
        self.retained.lock().unwrap_or_else(|p| p.into_inner()).batches.iter().cloned().collect()
    }

    /// The retained events, then every new batch on the returned channel until the session
    /// stops.
    /// Refused past [`MAX_FOLLOWERS_PER_SESSION`] and [`MAX_FOLLOWERS`].
    pub fn follow(&self) -> Result<Following, FollowError> {
        let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
        let r = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        let mut followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        // Clients that went away since the last batch do not count.
        let before = followers.len();
        followers.retain(|f| !f.tx.is_closed());
        self.metrics.followers.fetch_sub((before - followers.len()) as u64, Ordering::Relaxed);
        if followers.len() >= MAX_FOLLOWERS_PER_SESSION {
            return Err(FollowError::Session(MAX_FOLLOWERS_PER_SESSION));
        }
        self.metrics
            .followers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < MAX_FOLLOWERS).then_some(n + 1))
            .map_err(|_| FollowError::Node(MAX_FOLLOWERS))?;
        followers.push(Follower { tx, full_since: None });
        Ok((r.batches.iter().cloned().collect(), rx))
    }

    /// A channel that is already closed: the tail of a non-following events stream.
    pub fn follow_closed(&self) -> mpsc::Receiver<Arc<Batch>> {
        mpsc::channel(1).1
    }

    /// Ends every follower's stream and export sink (the session stopped).
    pub fn close_followers(&self) {
        let mut followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        self.metrics.followers.fetch_sub(followers.len() as u64, Ordering::Relaxed);
        followers.clear();
        drop(followers);
        self.sinks.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Records the kernel's overrun count of a run (added to earlier runs').
    pub fn add_lost_kernel(&self, n: u64) {
        self.counters.lost_kernel.fetch_add(n, Ordering::Relaxed);
        self.metrics.events_lost_kernel.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now; `live_overrun` is the current run's kernel overrun so far, `export`
    /// the session's export counters (queued, exported, dropped).
    pub fn stats(&self, running: bool, live_overrun: u64, export: (u64, u64, u64)) -> SessionStats {
        let retained = self.retained.lock().unwrap_or_else(|p| p.into_inner()).events as u64;
        SessionStats {
            events_read: self.counters.read.load(Ordering::Relaxed),
            events_lost_kernel: self.counters.lost_kernel.load(Ordering::Relaxed) + live_overrun,
            events_dropped: self.counters.dropped.load(Ordering::Relaxed),
            events_aged_out: self.counters.aged_out.load(Ordering::Relaxed),
            events_retained: retained,
            events_export_queued: export.0,
            events_exported: export.1,
            events_export_dropped: export.2,
            running,
        }
    }
}

/// How long a thread's command and process are trusted before procfs is asked again.
const TASK_TTL: std::time::Duration = std::time::Duration::from_secs(2);
/// Threads remembered per CPU reader.
const MAX_CACHED_TASKS: usize = 65_536;

/// How long a reader waits for the other CPUs' readers before it gives up on a thread it
/// cannot tie to a container. They answer within a drain, but a drain of a full backlog on a
/// loaded machine took over 500 ms (6 of 11,708 events lost their container at load 5); the
/// waiting CPU's ring buffer holds seconds of events, so waiting longer loses nothing.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

/// What the readers of a run need to know of its events.
#[derive(Debug, Clone)]
pub struct Decoding {
    /// The ring buffer's page layout.
    pub header: PageHeader,
    /// Events after which a thread has a new command (exec).
    pub exec_ids: Arc<Vec<u16>>,
    /// The fork event, which tells the resolver who created whom.
    pub fork: Option<ForkEvent>,
    /// The exit event (`sched_process_exit`), which ends a thread id's life.
    pub exit: Option<ExitEvent>,
    /// Events recorded for attribution only (the hook did not ask for them): never shown,
    /// stored or counted.
    pub hidden: Arc<Vec<u16>>,
    /// Where the run's events begin (trace clock), 0 while the start still programs the pid
    /// filter. Recording is turned on before the filter is written, so that no fork of a
    /// container's process goes unrecorded: what comes before this is not shown (the host's
    /// events of that instant), but its forks and exits are still followed.
    pub from_ts: Arc<AtomicU64>,
}

/// Builds the consumer of one CPU's pages.
///
/// A page is taken in two passes: its fork events first (so the other CPUs' readers, which may
/// be waiting for them, can go on), then every event is tied to its thread. A thread that can
/// be tied to no container (gone, and its fork not read yet) makes the reader wait once per
/// page for the other CPUs to catch up to the page's end, then try again.
pub fn page_consumer(
    cpu: usize,
    decoding: Decoding,
    resolver: Arc<Resolver>,
    store: Arc<EventStore>,
    progress: Progress,
) -> crate::ftrace::reader::PageConsumer {
    let mut parsed = Page::default();
    let mut cache: HashMap<i32, Arc<TaskInfo>> = HashMap::new();
    let header = decoding.header;
    Box::new(move |page: Vec<u8>| {
        parse_page(&page, &header, &mut parsed);
        let ids = |ev: &crate::ftrace::ring::RawEvent| -> Option<(u16, i32)> {
            let p = page.get(ev.offset..ev.offset + ev.len).filter(|p| p.len() >= 8)?;
            Some((u16::from_ne_bytes([p[0], p[1]]), i32::from_ne_bytes([p[4], p[5], p[6], p[7]])))
        };
        for ev in &parsed.events {
            let Some((id, pid)) = ids(ev) else { continue };
            let payload = &page[ev.offset..ev.offset + ev.len];
            if let Some(fork) = decoding.fork.filter(|f| f.id == id) {
                if let Some((parent, child)) = fork.parse(payload) {
                    resolver.forked(parent, child, ev.ts, fork.comm(payload));
                    // A new thread: whatever was cached under its id was another's.
                    cache.remove(&(child as i32));
                }
            } else if let Some(exit) = decoding.exit.filter(|e| e.id == id) {
                if let Ok(tid) = u32::try_from(pid) {
                    resolver.exited(tid, ev.ts, exit.comm(payload));
                }
            }
        }
        let Some(last_ts) = parsed.events.last().map(|e| e.ts) else { return };
        progress.consumed(last_ts);
        // The start stores it microseconds after the filter write returns; bounded anyway.
        let wait = std::time::Instant::now();
        let mut from = decoding.from_ts.load(Ordering::Acquire);
        while from == 0 && wait.elapsed() < CATCH_UP {
            std::thread::sleep(std::time::Duration::from_micros(200));
            from = decoding.from_ts.load(Ordering::Acquire);
        }

        let mut records = Vec::with_capacity(parsed.events.len());
        let mut caught_up = false;
        let mut unknown: Vec<i32> = Vec::new();
        for ev in &parsed.events {
            let Some((event_id, pid)) = ids(ev) else { continue };
            if decoding.hidden.contains(&event_id) || ev.ts < from {
                continue;
            }
            // After an exec the thread has a new command: ask procfs again.
            let stale =
                decoding.exec_ids.contains(&event_id) || cache.get(&pid).is_some_and(|t| t.seen.elapsed() > TASK_TTL);
            if stale {
                cache.remove(&pid);
            }
            if cache.len() >= MAX_CACHED_TASKS {
                cache.clear();
            }
            let task = match cache.get(&pid) {
                Some(t) => t.clone(),
                None => {
                    let mut info = resolver.resolve(pid, ev.ts);
                    if info.container.is_none() && !caught_up {
                        caught_up = true;
                        if !progress.wait_for_others(last_ts, CATCH_UP) {
                            debug!(cpu, "the other CPUs' readers did not catch up in time");
                        }
                        info = resolver.resolve(pid, ev.ts);
                    }
                    if info.container.is_none() {
                        unknown.push(pid);
                    }
                    let info = Arc::new(info);
                    cache.insert(pid, info.clone());
                    info
                }
            };
            records.push(Record { ts: ev.ts, pid, event_id, offset: ev.offset as u32, len: ev.len as u32, task });
        }
        // Not known yet is not known for good: the next page asks again.
        for pid in unknown {
            cache.remove(&pid);
        }
        store.push(Batch { cpu: cpu as u32, page, records });
    })
}

/// Turns a record into its wire form.
pub fn to_wire(
    batch: &Batch,
    rec: &Record,
    formats: &HashMap<u16, EventFormat>,
    node: &str,
    session: &str,
) -> TraceEvent {
    let (system, event, fields) = match formats.get(&rec.event_id) {
        Some(f) => (f.system.clone(), f.name.clone(), f.decode(batch.payload(rec))),
        None => (String::new(), format!("event_{}", rec.event_id), serde_json::Map::new()),
    };
    let tag = rec.task.container.as_deref();
    TraceEvent {
        timestamp: rec.ts,
        cpu: batch.cpu,
        pid: rec.pid,
        tgid: rec.task.tgid,
        comm: rec.task.comm.to_string(),
        event,
        system,
        fields,
        node: node.to_owned(),
        namespace: tag.map(|t| t.namespace.clone()).unwrap_or_default(),
        pod: tag.map(|t| t.pod.clone()).unwrap_or_default(),
        container: tag.map(|t| t.name.clone()).unwrap_or_default(),
        container_id: tag.map(|t| t.id.clone()).unwrap_or_default(),
        session: session.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        batch::ContainerTag,
        ftrace::{barrier::Barrier, ring::tests::PageBuilder},
        registry::procfs::Procfs,
    };

    fn decoding(fork: Option<ForkEvent>, hidden: Vec<u16>) -> Decoding {
        Decoding {
            header: crate::ftrace::ring::tests::HEADER,
            exec_ids: Arc::new(vec![]),
            fork,
            exit: None,
            hidden: Arc::new(hidden),
            from_ts: Arc::new(AtomicU64::new(1)),
        }
    }

    fn alone() -> Progress {
        Progress::new(Barrier::new(1).expect("eventfd"), 0)
    }

    fn tag(id: &str) -> Arc<ContainerTag> {
        Arc::new(ContainerTag {
            id: id.into(),
            pod: id.into(),
            namespace: "n".into(),
            name: id.into(),
            runtime: String::new(),
            workload: Vec::new(),
        })
    }

    /// A `sched_process_fork` payload as the kernel lays it out here (id 9).
    fn fork_payload(by: i32, parent: i32, child: i32) -> Vec<u8> {
        let mut p = payload(9, by);
        p.resize(48, 0);
        p[24..28].copy_from_slice(&parent.to_ne_bytes());
        p[44..48].copy_from_slice(&child.to_ne_bytes());
        p
    }

    fn fork_event() -> ForkEvent {
        let text = "name: sched_process_fork\nID: 9\nformat:\n\
            \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
            \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
            \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        ForkEvent::from_format(&crate::ftrace::format::parse_event_format("sched", text).expect("format"))
            .expect("fork layout")
    }

    /// CPU 1's reader meets the events of a child that is gone before CPU 0's reader has read
    /// the fork: it waits for CPU 0, and the child is tied to the right one of two containers.
    /// The fork events the hook did not ask for are not shown.
    #[test]
    fn a_gone_child_read_before_its_fork_is_attributed_once_the_other_cpu_caught_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolver = Arc::new(Resolver::new(Procfs::new(dir.path(), dir.path()), Arc::default()));
        resolver.add_container(100, tag("a"));
        resolver.add_container(200, tag("b"));
        let barrier = Barrier::new(2).expect("eventfds");
        let store = Arc::new(EventStore::new(1000, Arc::default()));
        let mut cpu0 = page_consumer(
            0,
            decoding(Some(fork_event()), vec![9]),
            resolver.clone(),
            store.clone(),
            Progress::new(barrier.clone(), 0),
        );
        let mut cpu1 = page_consumer(
            1,
            decoding(Some(fork_event()), vec![9]),
            resolver.clone(),
            store.clone(),
            Progress::new(barrier.clone(), 1),
        );
        let child = PageBuilder::new(2000).event(1, &payload(5, 4242)).finish(0);
        let reader1 = std::thread::spawn(move || cpu1(child));
        while barrier.requests() == 0 {
            std::thread::yield_now();
        }
        // The fork (by 200's shell 300, itself forked by 200) was recorded earlier on CPU 0.
        let forks = PageBuilder::new(1000)
            .event(1, &fork_payload(200, 200, 300))
            .event(1, &fork_payload(300, 300, 4242))
            .event(1, &payload(5, 300))
            .finish(0);
        cpu0(forks);
        reader1.join().expect("reader of cpu 1");
        let batches = store.snapshot();
        let records: Vec<&Record> = batches.iter().flat_map(|b| b.records.iter()).collect();
        assert_eq!(records.len(), 2, "the fork events were read for attribution only");
        for r in records {
            assert_eq!(r.task.container.as_ref().map(|t| t.id.as_str()), Some("b"), "pid {}", r.pid);
        }
    }

    fn payload(id: u16, pid: i32) -> Vec<u8> {
        let mut p = vec![0u8; 16];
        p[0..2].copy_from_slice(&id.to_ne_bytes());
        p[4..8].copy_from_slice(&pid.to_ne_bytes());
        p
    }

    #[test]
    fn pages_become_tagged_records_and_retention_is_bounded() {
        let store = Arc::new(EventStore::new(3, Arc::default()));
        let resolver = Arc::new(Resolver::new(Procfs::new("/proc", "/sys"), Arc::default()));
        let me = std::process::id();
        let tag = tag("c");
        resolver.add_container(me, tag.clone());
        let mut consume = page_consumer(1, decoding(None, vec![]), resolver, store.clone(), alone());
        let page = PageBuilder::new(10).event(1, &payload(5, me as i32)).event(1, &payload(5, me as i32)).finish(0);
        consume(page.clone());
        consume(page);
        let snap = store.snapshot();
        assert_eq!(snap.len(), 1, "the oldest page aged out");
        let rec = &snap[0].records[0];
        assert_eq!(rec.task.tgid, me as i32);
        assert_eq!(rec.task.container.as_deref(), Some(&*tag));
        let s = store.stats(true, 7, (0, 0, 0));
        assert_eq!((s.events_read, s.events_aged_out, s.events_retained, s.events_lost_kernel), (4, 2, 2, 7));
    }

    #[test]
    fn a_slow_follower_is_counted_as_dropped_and_never_blocks() {
        let store = EventStore::new(1_000_000, Arc::default());
        let (snap, mut rx) = store.follow().expect("a follower");
        assert!(snap.is_empty());
        let resolver = Resolver::new(Procfs::new("/proc", "/sys"), Arc::default());
        let info = Arc::new(resolver.resolve(1, 0));
        for _ in 0..FOLLOWER_QUEUE + 10 {
            let rec = Record { ts: 0, pid: 1, event_id: 1, offset: 0, len: 0, task: info.clone() };
            store.push(Batch { cpu: 0, page: vec![], records: vec![rec] });
        }
        let s = store.stats(true, 0, (0, 0, 0));
        assert_eq!(s.events_dropped, 10);
        assert!(rx.try_recv().is_ok());
        store.close_followers();
        while rx.try_recv().is_ok() {}
        assert!(matches!(rx.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)));
    }

    fn one_batch() -> Batch {
        let info = Arc::new(Resolver::new(Procfs::new("/proc", "/sys"), Arc::default()).resolve(1, 0));
        Batch {
            cpu: 0,
            page: vec![],
            records: vec![Record { ts: 0, pid: 1, event_id: 1, offset: 0, len: 0, task: info }],
        }
    }

    #[test]
    fn followers_are_capped_per_session_and_per_node_and_a_stalled_one_is_cut_off() {
        let metrics = Arc::new(Metrics::default());
        let store = EventStore::new(1000, metrics.clone());
        let mut kept: Vec<_> = (0..MAX_FOLLOWERS_PER_SESSION).map(|_| store.follow().expect("follower").1).collect();
        assert_eq!(store.follow().err(), Some(FollowError::Session(MAX_FOLLOWERS_PER_SESSION)));
        drop(kept.pop());
        store.follow().expect("a client that left frees its place");
        store.close_followers();
        drop(kept);
        assert_eq!(metrics.followers.load(Ordering::Relaxed), 0);

        // Node-wide, over many sessions.
        let stores: Vec<EventStore> = (0..MAX_FOLLOWERS as usize / MAX_FOLLOWERS_PER_SESSION + 1)
            .map(|_| EventStore::new(1000, metrics.clone()))
            .collect();
        let mut open = Vec::new();
        let refused = stores
            .iter()
            .flat_map(|s| (0..MAX_FOLLOWERS_PER_SESSION).map(move |_| s.follow()))
            .filter_map(|r| match r {
                Ok((_, rx)) => {
                    open.push(rx);
                    None
                }
                Err(e) => Some(e),
            })
            .collect::<Vec<_>>();
        assert_eq!(open.len() as u64, MAX_FOLLOWERS);
        assert!(refused.iter().all(|e| *e == FollowError::Node(MAX_FOLLOWERS)), "{refused:?}");
        for s in &stores {
            s.close_followers();
        }
        drop(open);

        // A follower that never reads is cut off once its queue stayed full past the cut-off.
        let mut store = EventStore::new(1000, metrics.clone());
        store.stall_cutoff = std::time::Duration::from_millis(20);
        let (_, mut stalled) = store.follow().expect("follower");
        for _ in 0..FOLLOWER_QUEUE + 1 {
            store.push(one_batch());
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
        store.push(one_batch());
        assert_eq!(metrics.followers_cut_off.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.followers.load(Ordering::Relaxed), 0);
        let mut queued = 0;
        while stalled.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, FOLLOWER_QUEUE, "what was queued is delivered, then the stream ends");
        assert!(matches!(stalled.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)));
    }
}
