//! A session's events: parsed from raw pages by the per-CPU readers, tagged with the thread's
//! process, command and container, kept in a bounded retention buffer and fanned out to live
//! followers. The kernel-reading side never waits for a consumer: a follower that cannot keep
//! up loses batches, and those losses are counted.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Instant,
};

use tokio::sync::mpsc;
use tracer_api::v1::{SessionStats, TraceEvent};

use crate::{
    ftrace::{
        format::{EventFormat, PageHeader},
        ring::{parse_page, Page},
    },
    metrics::Metrics,
    registry::procfs::Procfs,
};

/// The container a thread belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerTag {
    /// Runtime id.
    pub id: String,
    /// Pod name.
    pub pod: String,
    /// Namespace.
    pub namespace: String,
    /// Container name.
    pub name: String,
    /// Runtime that created it (`runc`, `crun`, ...), empty when unknown.
    pub runtime: String,
}

/// What is known of a thread.
#[derive(Debug)]
pub struct TaskInfo {
    /// Its process.
    pub tgid: i32,
    /// Its command name.
    pub comm: Arc<str>,
    /// Its container, if it could be tied to one of the session's.
    pub container: Option<Arc<ContainerTag>>,
    seen: Instant,
}

/// One event, pointing into its page.
#[derive(Debug, Clone)]
pub struct Record {
    /// Kernel timestamp (ns, instance clock).
    pub ts: u64,
    /// Thread id (`common_pid`).
    pub pid: i32,
    /// Event id (`common_type`).
    pub event_id: u16,
    pub(crate) offset: u32,
    pub(crate) len: u32,
    /// The thread.
    pub task: Arc<TaskInfo>,
}

/// The events of one page.
#[derive(Debug)]
pub struct Batch {
    /// CPU the page came from.
    pub cpu: u32,
    pub(crate) page: Vec<u8>,
    /// The events.
    pub records: Vec<Record>,
}

impl Batch {
    /// The raw payload of `record`.
    pub fn payload(&self, record: &Record) -> &[u8] {
        let start = record.offset as usize;
        self.page.get(start..start + record.len as usize).unwrap_or_default()
    }
}

/// Ties thread ids to processes, commands and the session's containers.
#[derive(Debug)]
pub struct Resolver {
    procfs: Procfs,
    tracefs: Option<std::path::PathBuf>,
    /// Container inits, with the time a container was removed: its last events are read up to
    /// a poll interval after its exit (and resolved on another CPU's reader than its earlier
    /// ones), so a removed container is still known for [`REMOVED_KEPT`].
    inits: RwLock<HashMap<u32, KnownContainer>>,
    saved: Mutex<Saved>,
}

/// A container and, once removed, when.
type KnownContainer = (Arc<ContainerTag>, Option<Instant>);

/// How long a removed container's threads are still tied to it.
const REMOVED_KEPT: std::time::Duration = std::time::Duration::from_secs(10);

/// The kernel's `saved_cmdlines` and `saved_tgids`, parsed. Both files list every thread the
/// kernel remembers (tens of thousands of lines): they are read once for a burst of exited
/// threads, not once per thread, or a fork-heavy container would slow the readers down.
#[derive(Debug, Default)]
struct Saved {
    read_at: Option<Instant>,
    comms: HashMap<i32, String>,
    tgids: HashMap<i32, i32>,
}

/// How often the saved tables may be read again for a thread they do not know.
const SAVED_REFRESH: std::time::Duration = std::time::Duration::from_millis(20);

/// Depth bound of the walk from a process up to its container's init.
const MAX_ANCESTRY: usize = 64;

impl Resolver {
    /// A resolver reading `procfs`, and the kernel's `saved_cmdlines` / `saved_tgids` under
    /// `tracefs` for threads that exited before they could be looked up.
    pub fn new(procfs: Procfs, tracefs: Option<std::path::PathBuf>) -> Self {
        Self { procfs, tracefs, inits: RwLock::new(HashMap::new()), saved: Mutex::default() }
    }

    /// What the kernel remembered of `tid` (command, process) when it recorded its events.
    fn saved(&self, tid: i32) -> (Option<String>, Option<i32>) {
        let Some(root) = self.tracefs.as_ref() else { return (None, None) };
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        let known = saved.comms.contains_key(&tid) && saved.tgids.contains_key(&tid);
        if !known && saved.read_at.is_none_or(|t| t.elapsed() >= SAVED_REFRESH) {
            let table = |file: &str| -> Vec<(i32, String)> {
                crate::ftrace::tracefs::read_file(&root.join(file))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| {
                        let (pid, rest) = l.split_once(' ')?;
                        Some((pid.parse().ok()?, rest.trim().to_owned()))
                    })
                    .collect()
            };
            saved.comms = table("saved_cmdlines").into_iter().collect();
            saved.tgids = table("saved_tgids").into_iter().filter_map(|(p, t)| Some((p, t.parse().ok()?))).collect();
            saved.read_at = Some(Instant::now());
        }
        (saved.comms.get(&tid).cloned(), saved.tgids.get(&tid).copied())
    }

    /// Declares `init` as the init pid of `tag`'s container.
    pub fn add_container(&self, init: u32, tag: Arc<ContainerTag>) {
        let mut inits = self.inits.write().unwrap_or_else(|p| p.into_inner());
        inits.retain(|_, (_, gone)| gone.is_none_or(|t| t.elapsed() < REMOVED_KEPT));
        inits.insert(init, (tag, None));
    }

    /// Forgets a container.
    pub fn remove_container(&self, id: &str) {
        let mut inits = self.inits.write().unwrap_or_else(|p| p.into_inner());
        inits.retain(|_, (_, gone)| gone.is_none_or(|t| t.elapsed() < REMOVED_KEPT));
        for (tag, gone) in inits.values_mut() {
            if tag.id == id {
                gone.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Reads what procfs says of thread `tid`: process, command, and the container whose init
    /// is the process or one of its ancestors.
    pub fn resolve(&self, tid: i32) -> TaskInfo {
        let seen = Instant::now();
        let Ok(utid) = u32::try_from(tid) else {
            return TaskInfo { tgid: tid, comm: Arc::from(""), container: None, seen };
        };
        let status =
            std::fs::read_to_string(self.procfs.root().join(utid.to_string()).join("status")).unwrap_or_default();
        let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
        let (comm, tgid): (Arc<str>, i32) = if status.is_empty() {
            // Gone already (a short-lived process): the kernel's own records of it.
            let (comm, tgid) = self.saved(tid);
            (Arc::from(comm.unwrap_or_default().as_str()), tgid.unwrap_or(tid))
        } else {
            (Arc::from(field("Name:").unwrap_or("")), field("Tgid:").and_then(|v| v.parse().ok()).unwrap_or(tid))
        };
        let inits = self.inits.read().unwrap_or_else(|p| p.into_inner());
        let mut pid = u32::try_from(tgid).unwrap_or(utid);
        let mut container = None;
        for _ in 0..MAX_ANCESTRY {
            if let Some((tag, _)) = inits.get(&pid) {
                container = Some(tag.clone());
                break;
            }
            match self.procfs.stat(pid) {
                Ok(st) if st.ppid > 1 => pid = st.ppid,
                _ => break,
            }
        }
        // A thread gone before its ancestry could be read: the pid filter only lets the
        // session's containers' threads through, so with one container it can only be that one.
        if container.is_none() && inits.len() == 1 {
            container = inits.values().next().map(|(t, _)| t.clone());
        }
        TaskInfo { tgid, comm, container, seen }
    }
}

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

/// Depth of a follower's queue, in pages.
const FOLLOWER_QUEUE: usize = 1024;

/// The retention buffer and the followers of one session.
#[derive(Debug)]
pub struct EventStore {
    retained: Mutex<Retained>,
    followers: Mutex<Vec<mpsc::Sender<Arc<Batch>>>>,
    sinks: Mutex<Vec<crate::export::Sink>>,
    counters: Counters,
    capacity: usize,
    metrics: Arc<Metrics>,
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
        }
    }

    /// Adds an export sink: every batch from now on is offered to it.
    pub fn add_sink(&self, sink: crate::export::Sink) {
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
        followers.retain(|tx| match tx.try_send(batch.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(n as u64, Ordering::Relaxed);
                self.metrics.events_dropped_streams.fetch_add(n as u64, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        drop(followers);
        self.sinks.lock().unwrap_or_else(|p| p.into_inner()).retain(|sink| sink.offer(&batch));
    }

    /// The retained events.
    pub fn snapshot(&self) -> Vec<Arc<Batch>> {
        self.retained.lock().unwrap_or_else(|p| p.into_inner()).batches.iter().cloned().collect()
    }

    /// The retained events, then every new batch on the returned channel until the session
    /// stops.
    pub fn follow(&self) -> (Vec<Arc<Batch>>, mpsc::Receiver<Arc<Batch>>) {
        let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
        let r = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        self.followers.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
        (r.batches.iter().cloned().collect(), rx)
    }

    /// A channel that is already closed: the tail of a non-following events stream.
    pub fn follow_closed(&self) -> mpsc::Receiver<Arc<Batch>> {
        mpsc::channel(1).1
    }

    /// Ends every follower's stream and export sink (the session stopped).
    pub fn close_followers(&self) {
        self.followers.lock().unwrap_or_else(|p| p.into_inner()).clear();
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

/// Builds the consumer of one CPU's pages.
pub fn page_consumer(
    cpu: usize,
    header: PageHeader,
    exec_ids: Arc<Vec<u16>>,
    resolver: Arc<Resolver>,
    store: Arc<EventStore>,
) -> crate::ftrace::reader::PageConsumer {
    let mut parsed = Page::default();
    let mut cache: HashMap<i32, Arc<TaskInfo>> = HashMap::new();
    Box::new(move |page: Vec<u8>| {
        parse_page(&page, &header, &mut parsed);
        let mut records = Vec::with_capacity(parsed.events.len());
        for ev in &parsed.events {
            let Some(p) = page.get(ev.offset..ev.offset + ev.len) else { continue };
            if p.len() < 8 {
                continue;
            }
            let event_id = u16::from_ne_bytes([p[0], p[1]]);
            let pid = i32::from_ne_bytes([p[4], p[5], p[6], p[7]]);
            // After an exec the thread has a new command: ask procfs again.
            let stale = exec_ids.contains(&event_id) || cache.get(&pid).is_some_and(|t| t.seen.elapsed() > TASK_TTL);
            if stale {
                cache.remove(&pid);
            }
            if cache.len() >= MAX_CACHED_TASKS {
                cache.clear();
            }
            let task = cache.entry(pid).or_insert_with(|| Arc::new(resolver.resolve(pid))).clone();
            records.push(Record { ts: ev.ts, pid, event_id, offset: ev.offset as u32, len: ev.len as u32, task });
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
    use crate::ftrace::ring::tests::{PageBuilder, HEADER};

    fn payload(id: u16, pid: i32) -> Vec<u8> {
        let mut p = vec![0u8; 16];
        p[0..2].copy_from_slice(&id.to_ne_bytes());
        p[4..8].copy_from_slice(&pid.to_ne_bytes());
        p
    }

    #[test]
    fn pages_become_tagged_records_and_retention_is_bounded() {
        let store = Arc::new(EventStore::new(3, Arc::default()));
        let resolver = Arc::new(Resolver::new(Procfs::new("/proc", "/sys"), None));
        let me = std::process::id();
        let tag = Arc::new(ContainerTag {
            id: "c".into(),
            pod: "p".into(),
            namespace: "n".into(),
            name: "x".into(),
            runtime: String::new(),
        });
        resolver.add_container(me, tag.clone());
        let mut consume = page_consumer(1, HEADER, Arc::new(vec![]), resolver, store.clone());
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
        let (snap, mut rx) = store.follow();
        assert!(snap.is_empty());
        let resolver = Resolver::new(Procfs::new("/proc", "/sys"), None);
        let info = Arc::new(resolver.resolve(1));
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
}
