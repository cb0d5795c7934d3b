//! A session's events: routed to it by its recording's readers (see [`super::routing`]),
//! tagged with the thread's process, command and container, kept in a bounded retention buffer and fanned out to live
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

pub use super::lineage::{ExitEvent, ForkEvent};

use crate::{
    batch::{Batch, BatchSink, Record},
    ftrace::format::EventFormat,
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

    /// Adds the events of a page: kept for later readers, offered to every follower. The batch
    /// may be shared with other sessions that took the same events of the page.
    pub fn push(&self, batch: Arc<Batch>) {
        let n = batch.records.len();
        if n == 0 {
            return;
        }
        self.counters.read.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.events_read.fetch_add(n as u64, Ordering::Relaxed);
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
    let tag = batch.task(rec).container.as_deref();
    TraceEvent {
        timestamp: rec.ts,
        cpu: batch.cpu,
        pid: rec.pid,
        tgid: batch.task(rec).tgid,
        comm: batch.task(rec).comm.to_string(),
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
    use crate::{registry::procfs::Procfs, sessions::resolver::Resolver};

    #[test]
    fn a_slow_follower_is_counted_as_dropped_and_never_blocks() {
        let store = EventStore::new(1_000_000, Arc::default());
        let (snap, mut rx) = store.follow().expect("a follower");
        assert!(snap.is_empty());
        let resolver = Resolver::new(Procfs::new("/proc", "/sys"), Arc::default());
        let info = Arc::new(resolver.resolve(1, 0));
        for _ in 0..FOLLOWER_QUEUE + 10 {
            let rec = Record { ts: 0, pid: 1, event_id: 1, offset: 0, len: 0, task: 0 };
            store.push(Arc::new(Batch { cpu: 0, page: Arc::default(), records: vec![rec], tasks: vec![info.clone()] }));
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
            page: Arc::default(),
            records: vec![Record { ts: 0, pid: 1, event_id: 1, offset: 0, len: 0, task: 0 }],
            tasks: vec![info],
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
            store.push(Arc::new(one_batch()));
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
        store.push(Arc::new(one_batch()));
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
