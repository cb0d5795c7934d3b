//! Demultiplexing one recording's events to its sessions.
//!
//! Every record a recording's readers take is tied once to its thread and container (through
//! the recording's resolver, fed by the fork and exit events), then offered to the
//! recording's routing table: each session has a slot with the event ids it asked for, the
//! containers attached to it and the window of its run (`from_ts` to `until_ts`, trace clock).
//! A record goes into the batch of every slot that wants its event, holds its container and
//! whose window holds its time; nothing of one session reaches another. The table is swapped
//! whole (copy on write) when a session joins or leaves; a slot's containers likewise.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use tracing::debug;

use super::{
    events::{EventStore, ExitEvent, ForkEvent},
    resolver::Resolver,
};
use crate::{
    batch::{Batch, ContainerTag, Record, TaskInfo},
    ftrace::{
        barrier::Progress,
        format::PageHeader,
        predicate::CompiledFilter,
        reader::PageConsumer,
        ring::{parse_page, Page, RawEvent},
    },
};

/// How long a thread's command and process are trusted before procfs is asked again.
const TASK_TTL: std::time::Duration = std::time::Duration::from_secs(2);
/// Threads remembered per CPU reader.
const MAX_CACHED_TASKS: usize = 65_536;

/// How long a reader waits for the other CPUs' readers before it gives up on a thread it
/// cannot tie to a container. They answer within a drain, but a drain of a full backlog on a
/// loaded machine took over 500 ms (6 of 11,708 events lost their container at load 5); the
/// waiting CPU's ring buffer holds seconds of events, so waiting longer loses nothing.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

/// A set of event ids (`common_type`, 16 bits): one bit each.
#[derive(Clone)]
pub struct EventSet(Box<[u64]>);

impl Default for EventSet {
    fn default() -> Self {
        Self(vec![0; 1 << 10].into_boxed_slice())
    }
}

impl std::fmt::Debug for EventSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventSet({} ids)", self.0.iter().map(|w| w.count_ones()).sum::<u32>())
    }
}

impl EventSet {
    /// The set of `ids`.
    pub fn of(ids: impl IntoIterator<Item = u16>) -> Self {
        let mut s = Self::default();
        for id in ids {
            s.insert(id);
        }
        s
    }

    /// Adds `id`.
    pub fn insert(&mut self, id: u16) {
        self.0[usize::from(id >> 6)] |= 1 << (id & 63);
    }

    /// Whether `id` is in.
    pub fn contains(&self, id: u16) -> bool {
        self.0[usize::from(id >> 6)] & (1 << (id & 63)) != 0
    }

    /// Adds every id of `other`.
    pub fn union(&mut self, other: &EventSet) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= b;
        }
    }
}

/// Not started yet, or not stopped yet.
const OPEN: u64 = u64::MAX;

/// One session's place in a recording's routing table.
#[derive(Debug)]
pub struct Slot {
    /// The session.
    pub session: u64,
    events: EventSet,
    /// Events after which a thread has a new command.
    exec: Vec<u16>,
    /// Ids of the containers attached to the session (copy on write).
    containers: RwLock<Arc<HashSet<String>>>,
    /// Its run's first timestamp ([`OPEN`] until its threads are in the pid filter).
    from_ts: AtomicU64,
    /// Its run's last timestamp ([`OPEN`] while it runs).
    until_ts: AtomicU64,
    /// Where its events go.
    pub store: Arc<EventStore>,
    /// The recording's overrun count when the session joined: its kernel losses are those
    /// after it.
    pub overrun_base: u64,
    /// Its `trace_events` filter, evaluated here on a shared recording.
    filter: Option<Arc<CompiledFilter>>,
}

impl Slot {
    /// A slot for `session`, taking `events`, not started.
    pub fn new(session: u64, events: EventSet, exec: Vec<u16>, store: Arc<EventStore>, overrun_base: u64) -> Self {
        Self::filtered(session, events, exec, store, overrun_base, None)
    }

    /// [`Slot::new`] whose records must also pass `filter`.
    pub fn filtered(
        session: u64,
        events: EventSet,
        exec: Vec<u16>,
        store: Arc<EventStore>,
        overrun_base: u64,
        filter: Option<Arc<CompiledFilter>>,
    ) -> Self {
        Self {
            session,
            events,
            exec,
            containers: RwLock::default(),
            from_ts: AtomicU64::new(OPEN),
            until_ts: AtomicU64::new(OPEN),
            store,
            overrun_base,
            filter,
        }
    }

    /// Attaches container `id`: its events are the session's from now on.
    pub fn add_container(&self, id: &str) {
        let mut c = self.containers.write().unwrap_or_else(|p| p.into_inner());
        if !c.contains(id) {
            Arc::make_mut(&mut c).insert(id.to_owned());
        }
    }

    fn containers(&self) -> Arc<HashSet<String>> {
        self.containers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The run begins at `ts`: events before are not the session's.
    pub fn open_at(&self, ts: u64) {
        self.from_ts.store(ts, Ordering::Release);
    }

    /// The run ends at `ts`: events after are not the session's.
    pub fn close_at(&self, ts: u64) {
        self.until_ts.store(ts, Ordering::Release);
    }

    fn window(&self) -> (u64, u64) {
        (self.from_ts.load(Ordering::Acquire), self.until_ts.load(Ordering::Acquire))
    }
}

/// The routing table: the slots, and what any of them wants.
#[derive(Debug, Default)]
pub struct Routes {
    slots: Vec<Arc<Slot>>,
    wanted: EventSet,
    exec: EventSet,
    /// The slots' distinct filters: ten sessions with the same filter evaluate it once a
    /// record (measured: evaluated per session, ten filtered sessions on a 5.7 M events/s
    /// workload made the reader fall behind and lose a quarter of the events).
    filters: Vec<Arc<CompiledFilter>>,
    /// Each slot's filter, as an index in `filters`.
    filter_of: Vec<Option<usize>>,
}

impl Routes {
    fn of(slots: Vec<Arc<Slot>>) -> Self {
        let (mut wanted, mut exec) = (EventSet::default(), EventSet::default());
        let mut filters: Vec<Arc<CompiledFilter>> = Vec::new();
        let mut filter_of = Vec::with_capacity(slots.len());
        for s in &slots {
            wanted.union(&s.events);
            for id in &s.exec {
                exec.insert(*id);
            }
            filter_of.push(s.filter.as_ref().map(|f| match filters.iter().position(|x| **x == **f) {
                Some(i) => i,
                None => {
                    filters.push(f.clone());
                    filters.len() - 1
                }
            }));
        }
        Self { slots, wanted, exec, filters, filter_of }
    }
}

/// What a recording's readers share: the page layout, the attribution events, the resolver
/// and the routing table.
#[derive(Debug)]
pub struct Router {
    header: PageHeader,
    fork: Option<ForkEvent>,
    exit: Option<ExitEvent>,
    /// Ties threads to the containers of the recording's sessions.
    pub resolver: Arc<Resolver>,
    routes: RwLock<Arc<Routes>>,
    /// Where the recording's events begin (trace clock): 0 until its first threads are in its
    /// pid filter. Recording is turned on before that first write (so that no fork of a
    /// container's process goes unrecorded), and until the write returns the instance records
    /// the whole host: those events are followed for their forks and exits, never routed.
    started: Arc<AtomicU64>,
    /// Records wanted by some session whose thread could be tied to no container while more
    /// than one session shared the recording: no session can be told they are its.
    unattributed: AtomicU64,
}

impl Router {
    /// A router with no session; `started` is set once the recording's filter holds threads.
    pub fn new(
        header: PageHeader,
        fork: Option<ForkEvent>,
        exit: Option<ExitEvent>,
        resolver: Arc<Resolver>,
        started: Arc<AtomicU64>,
    ) -> Self {
        Self { header, fork, exit, resolver, routes: RwLock::default(), unattributed: AtomicU64::new(0), started }
    }

    fn routes(&self) -> Arc<Routes> {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds a slot to the table.
    pub fn publish(&self, slot: Arc<Slot>) {
        let mut r = self.routes.write().unwrap_or_else(|p| p.into_inner());
        let mut slots = r.slots.clone();
        slots.push(slot);
        *r = Arc::new(Routes::of(slots));
    }

    /// Takes a slot out of the table.
    pub fn withdraw(&self, slot: &Arc<Slot>) {
        let mut r = self.routes.write().unwrap_or_else(|p| p.into_inner());
        let slots: Vec<Arc<Slot>> = r.slots.iter().filter(|s| !Arc::ptr_eq(s, slot)).cloned().collect();
        *r = Arc::new(Routes::of(slots));
    }

    /// The slots in the table.
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.routes().slots.clone()
    }

    /// Records no session could be told were its (see the field).
    pub fn unattributed(&self) -> u64 {
        self.unattributed.load(Ordering::Relaxed)
    }

    /// Builds the consumer of one CPU's pages.
    ///
    /// A page is taken in two passes: its fork and exit events first (so the other CPUs'
    /// readers, which may be waiting for them, can go on), then every event some session wants
    /// is tied to its thread and routed. A thread that can be tied to no container (gone, and
    /// its fork not read yet) makes the reader wait once per page for the other CPUs to catch
    /// up to the page's end, then try again.
    pub fn consumer(self: &Arc<Self>, cpu: usize, progress: Progress) -> PageConsumer {
        let router = self.clone();
        let mut parsed = Page::default();
        let mut cache: HashMap<i32, Arc<TaskInfo>> = HashMap::new();
        Box::new(move |page: Vec<u8>| {
            parse_page(&page, &router.header, &mut parsed);
            let half_full = parsed.half_full(&router.header);
            for ev in &parsed.events {
                let Some((id, pid)) = ids(&page, ev) else { continue };
                let payload = &page[ev.offset..ev.offset + ev.len];
                if let Some(fork) = router.fork.filter(|f| f.id == id) {
                    if let Some((parent, child)) = fork.parse(payload) {
                        router.resolver.forked(parent, child, ev.ts, fork.comm(payload));
                        // A new thread: whatever was cached under its id was another's.
                        cache.remove(&(child as i32));
                    }
                } else if let Some(exit) = router.exit.filter(|e| e.id == id) {
                    if let Ok(tid) = u32::try_from(pid) {
                        router.resolver.exited(tid, ev.ts, exit.comm(payload));
                    }
                }
            }
            let Some(last_ts) = parsed.events.last().map(|e| e.ts) else { return half_full };
            progress.consumed(last_ts);
            // Read after the page: a slot published after this was opened after every event
            // of the page was recorded.
            let routes = router.routes();
            if !routes.slots.is_empty() {
                // The first filter write stores it microseconds after it returns; bounded anyway.
                let wait = std::time::Instant::now();
                let mut started = router.started.load(Ordering::Acquire);
                while started == 0 && wait.elapsed() < CATCH_UP {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    started = router.started.load(Ordering::Acquire);
                }
                router.route(cpu as u32, Arc::new(page), &parsed, &routes, &mut cache, &progress, last_ts, started);
            }
            progress.delivered(last_ts);
            half_full
        })
    }

    /// Ties the wanted events of one parsed page to their threads and hands each to the
    /// batches of the slots it belongs to.
    #[allow(clippy::too_many_arguments)]
    fn route(
        &self,
        cpu: u32,
        page: Arc<Vec<u8>>,
        parsed: &Page,
        routes: &Routes,
        cache: &mut HashMap<i32, Arc<TaskInfo>>,
        progress: &Progress,
        last_ts: u64,
        started: u64,
    ) {
        let slots = &routes.slots;
        let windows: Vec<(u64, u64)> = slots.iter().map(|s| s.window()).collect();
        let containers: Vec<Arc<HashSet<String>>> = slots.iter().map(|s| s.containers()).collect();
        // The page's records any session takes, once, and which of them each session takes: a
        // bit per session and record (`words` words a record), and how many each took. Pushing
        // a record's index to every taker's list cost ten pushes a record with ten sessions, as
        // much as the rest of the routing.
        // Sized for the page at once: grown by doubling, it was moved 6 or 7 times a page.
        let mut records: Vec<Record> = Vec::with_capacity(parsed.events.len());
        let words = slots.len().div_ceil(64).max(1);
        let mut bits: Vec<u64> = Vec::new();
        let mut counts: Vec<usize> = vec![0; slots.len()];
        // The slots holding each container met in this page, by its tag (a page holds few).
        let mut holders: Vec<(*const ContainerTag, Vec<usize>)> = Vec::new();
        let mut caught_up = false;
        // Each filter's verdict on the record being routed, valid where `verdict_of[f]` is that
        // record's number: no per-record reset (a `fill` here was a `memset` call per record,
        // 10 % of the readers' time even with no filter at all).
        let mut verdicts = vec![false; routes.filters.len()];
        let mut verdict_of = vec![u32::MAX; routes.filters.len()];
        let mut unknown: Vec<i32> = Vec::new();
        let now = std::time::Instant::now();
        let mut last: Option<(i32, u16)> = None;
        let mut tasks: Vec<Arc<TaskInfo>> = Vec::new();
        for (seq, ev) in (0u32..).zip(&parsed.events) {
            let Some((event_id, pid)) = ids(&page, ev) else { continue };
            if ev.ts < started
                || !routes.wanted.contains(event_id)
                || windows.iter().all(|&(from, until)| ev.ts < from || ev.ts > until)
            {
                continue;
            }
            // After an exec the thread has a new command, and what is older than the TTL may
            // be stale: ask procfs again. One clock read per page, one lookup per record.
            // A page's events are mostly of one thread: the last one is tried before the map.
            let exec = routes.exec.contains(event_id);
            let fresh = |t: &TaskInfo| {
                now.saturating_duration_since(t.seen) <= TASK_TTL
                // The id forked or exited since: maybe another life of it (pids are reused
                // within seconds by a forking container), its fork read by another CPU's
                // reader only.
                    && !self.resolver.changed_after(pid, t.resolved_at)
            };
            let same = match last {
                Some((p, i)) if p == pid && !exec && fresh(&tasks[usize::from(i)]) => Some(i),
                _ => None,
            };
            let index = match same {
                Some(i) => i,
                None => {
                    let task = match cache.get(&pid).filter(|t| !exec && fresh(t)) {
                        Some(t) => t.clone(),
                        None => {
                            if cache.len() >= MAX_CACHED_TASKS {
                                cache.clear();
                            }
                            let mut info = self.resolver.resolve(pid, ev.ts);
                            if info.container.is_none() && !caught_up {
                                caught_up = true;
                                if !progress.wait_for_others(last_ts, CATCH_UP) {
                                    debug!(cpu, "the other CPUs' readers did not catch up in time");
                                }
                                info = self.resolver.resolve(pid, ev.ts);
                            }
                            if info.container.is_none() {
                                unknown.push(pid);
                            }
                            let info = Arc::new(info);
                            cache.insert(pid, info.clone());
                            info
                        }
                    };
                    // The batch's threads: a page holds a few (at most 512 records a page).
                    match tasks.iter().position(|t| Arc::ptr_eq(t, &task)) {
                        Some(i) => i as u16,
                        None => {
                            tasks.push(task);
                            (tasks.len() - 1) as u16
                        }
                    }
                }
            };
            last = Some((pid, index));
            let task = &tasks[usize::from(index)];
            let at = match &task.container {
                Some(tag) => {
                    let key = Arc::as_ptr(tag);
                    match holders.iter().position(|(k, _)| *k == key) {
                        Some(i) => i,
                        None => {
                            let held = (0..slots.len()).filter(|&i| containers[i].contains(&tag.id)).collect();
                            holders.push((key, held));
                            holders.len() - 1
                        }
                    }
                }
                // Alone in the recording, the session holds every thread the pid filter lets
                // through; shared, an unknown thread is no session's for sure.
                None if slots.len() == 1 => usize::MAX,
                None => {
                    self.unattributed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            let targets: &[usize] = if at == usize::MAX { &[0] } else { &holders[at].1 };
            let mut taken = false;
            let row = bits.len();
            bits.resize(row + words, 0);
            for &i in targets {
                let (from, until) = windows[i];
                let mut passes = || match routes.filter_of[i] {
                    None => true,
                    Some(f) => {
                        if verdict_of[f] != seq {
                            let payload = &page[ev.offset..ev.offset + ev.len];
                            verdicts[f] = routes.filters[f].matches(event_id, payload, cpu);
                            verdict_of[f] = seq;
                        }
                        verdicts[f]
                    }
                };
                if slots[i].events.contains(event_id) && ev.ts >= from && ev.ts <= until && passes() {
                    bits[row + i / 64] |= 1 << (i % 64);
                    counts[i] += 1;
                    taken = true;
                }
            }
            if taken {
                records.push(Record {
                    ts: ev.ts,
                    pid,
                    event_id,
                    offset: ev.offset as u32,
                    len: ev.len as u32,
                    task: index,
                });
            } else {
                bits.truncate(row);
            }
        }
        // Not known yet is not known for good: the next page asks again.
        for pid in unknown {
            cache.remove(&pid);
        }
        // Sessions that take the same records of the page share one batch: ten sessions on the
        // same events cost one batch, not ten copies of its records.
        let all = records.len();
        let mut batches: Vec<Option<Arc<Batch>>> = vec![None; slots.len()];
        // The records of the sessions that took some but not all of them (rare: another
        // container, another event, a window ending in this page).
        let mut partial: Vec<(usize, Vec<u32>)> = Vec::new();
        for i in 0..slots.len() {
            if counts[i] == 0 || counts[i] == all {
                continue;
            }
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            let mine: Vec<u32> = (0..all).filter(|r| bits[r * words + word] & bit != 0).map(|r| r as u32).collect();
            batches[i] = match partial.iter().find(|(_, p)| *p == mine) {
                Some((j, _)) => batches[*j].clone(),
                None => {
                    let taken = mine.iter().map(|&k| records[k as usize].clone()).collect();
                    Some(Arc::new(Batch { cpu, page: page.clone(), records: taken, tasks: tasks.clone() }))
                }
            };
            partial.push((i, mine));
        }
        if all > 0 && counts.contains(&all) {
            // Kept as long as the sessions retain the batch: not the room of the whole page.
            if records.capacity() > 2 * records.len() {
                records.shrink_to_fit();
            }
            let full = Arc::new(Batch { cpu, page, records, tasks });
            for (b, n) in batches.iter_mut().zip(&counts) {
                if *n == all {
                    *b = Some(full.clone());
                }
            }
        }
        for (slot, batch) in slots.iter().zip(batches) {
            if let Some(b) = batch {
                slot.store.push(b);
            }
        }
    }
}

/// (event id, thread id) of an event of `page`.
fn ids(page: &[u8], ev: &RawEvent) -> Option<(u16, i32)> {
    let p = page.get(ev.offset..ev.offset + ev.len).filter(|p| p.len() >= 8)?;
    Some((u16::from_ne_bytes([p[0], p[1]]), i32::from_ne_bytes([p[4], p[5], p[6], p[7]])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ftrace::{barrier::Barrier, ring::tests::PageBuilder},
        registry::procfs::Procfs,
    };

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

    fn payload(id: u16, pid: i32) -> Vec<u8> {
        let mut p = vec![0u8; 16];
        p[0..2].copy_from_slice(&id.to_ne_bytes());
        p[4..8].copy_from_slice(&pid.to_ne_bytes());
        p
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

    fn router(resolver: Arc<Resolver>, fork: Option<ForkEvent>) -> Arc<Router> {
        Arc::new(Router::new(crate::ftrace::ring::tests::HEADER, fork, None, resolver, Arc::new(AtomicU64::new(1))))
    }

    /// A slot open from `from`, taking `events` of `containers`.
    fn slot(session: u64, events: &[u16], containers: &[&str], from: u64) -> (Arc<Slot>, Arc<EventStore>) {
        let store = Arc::new(EventStore::new(100_000, Arc::default()));
        let s = Arc::new(Slot::new(session, EventSet::of(events.iter().copied()), vec![], store.clone(), 0));
        for c in containers {
            s.add_container(c);
        }
        s.open_at(from);
        (s, store)
    }

    fn alone() -> Progress {
        Progress::new(Barrier::new(1).expect("eventfd"), 0)
    }

    fn got(store: &EventStore) -> Vec<(u16, i32, u64)> {
        store.snapshot().iter().flat_map(|b| b.records.iter().map(|r| (r.event_id, r.pid, r.ts))).collect()
    }

    /// CPU 1's reader meets the events of a child that is gone before CPU 0's reader has read
    /// the fork: it waits for CPU 0, and the child is tied to the right one of two containers.
    /// The fork events no session asked for are not shown.
    #[test]
    fn a_gone_child_read_before_its_fork_is_attributed_once_the_other_cpu_caught_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolver = Arc::new(Resolver::new(Procfs::new(dir.path(), dir.path()), Arc::default()));
        resolver.add_container(100, tag("a"));
        resolver.add_container(200, tag("b"));
        let r = router(resolver, Some(fork_event()));
        let (s, store) = slot(1, &[5], &["a", "b"], 1);
        r.publish(s);
        let barrier = Barrier::new(2).expect("eventfds");
        let mut cpu0 = r.consumer(0, Progress::new(barrier.clone(), 0));
        let mut cpu1 = r.consumer(1, Progress::new(barrier.clone(), 1));
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
        let records: Vec<(&Batch, &Record)> =
            batches.iter().flat_map(|b| b.records.iter().map(move |r| (&**b, r))).collect();
        assert_eq!(records.len(), 2, "the fork events were read for attribution only");
        for (b, r) in records {
            assert_eq!(b.task(r).container.as_ref().map(|t| t.id.as_str()), Some("b"), "pid {}", r.pid);
        }
    }

    #[test]
    fn pages_become_tagged_records_and_retention_is_bounded() {
        let store = Arc::new(EventStore::new(3, Arc::default()));
        let resolver = Arc::new(Resolver::new(Procfs::new("/proc", "/sys"), Arc::default()));
        let me = std::process::id();
        let tag = tag("c");
        resolver.add_container(me, tag.clone());
        let r = router(resolver, None);
        let s = Arc::new(Slot::new(1, EventSet::of([5]), vec![], store.clone(), 0));
        s.add_container("c");
        s.open_at(1);
        r.publish(s);
        let mut consume = r.consumer(1, alone());
        let page = PageBuilder::new(10).event(1, &payload(5, me as i32)).event(1, &payload(5, me as i32)).finish(0);
        consume(page.clone());
        consume(page);
        let snap = store.snapshot();
        assert_eq!(snap.len(), 1, "the oldest page aged out");
        let rec = &snap[0].records[0];
        assert_eq!(snap[0].task(rec).tgid, me as i32);
        assert_eq!(snap[0].task(rec).container.as_deref(), Some(&*tag));
        assert_eq!(snap[0].tasks.len(), 1, "both records' thread, held once");
        let s = store.stats(true, 7, (0, 0, 0));
        assert_eq!((s.events_read, s.events_aged_out, s.events_retained, s.events_lost_kernel), (4, 2, 2, 7));
    }

    /// Two sessions on one recording: each gets exactly the events it asked for, of the
    /// containers attached to it, inside its own window; the page is shared, not copied.
    #[test]
    fn each_session_gets_exactly_its_events_containers_and_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolver = Arc::new(Resolver::new(Procfs::new(dir.path(), dir.path()), Arc::default()));
        resolver.add_container(100, tag("a"));
        resolver.add_container(200, tag("b"));
        let r = router(resolver, None);
        // Session 1: event 5 of container a, from ts 1000. Session 2: events 5 and 6 of a and
        // b, from ts 1010, until 1030.
        let (s1, st1) = slot(1, &[5], &["a"], 1000);
        let (s2, st2) = slot(2, &[5, 6], &["a", "b"], 1010);
        s2.close_at(1030);
        r.publish(s1.clone());
        r.publish(s2.clone());
        let mut consume = r.consumer(0, alone());
        let mut page = PageBuilder::new(1000);
        for (delta, id, pid) in [(0, 5, 100), (5, 6, 100), (5, 5, 200), (5, 6, 200), (5, 5, 100), (5, 7, 100)] {
            page.event(delta, &payload(id, pid));
        }
        page.event(10, &payload(5, 100)).event(0, &payload(6, 200));
        consume(page.finish(0));
        assert_eq!(got(&st1), vec![(5, 100, 1000), (5, 100, 1020), (5, 100, 1035)]);
        assert_eq!(got(&st2), vec![(5, 200, 1010), (6, 200, 1015), (5, 100, 1020)], "none after its stop at 1030");
        let (b1, b2) = (st1.snapshot(), st2.snapshot());
        assert!(Arc::ptr_eq(&b1[0].page, &b2[0].page), "one page for both sessions");
        assert!(!Arc::ptr_eq(&b1[0], &b2[0]), "each its own records");
        assert_eq!((st1.stats(true, 0, (0, 0, 0)).events_read, st2.stats(true, 0, (0, 0, 0)).events_read), (3, 3));

        // A session that left gets nothing more; a container attached later is routed.
        r.withdraw(&s2);
        s1.add_container("b");
        consume(PageBuilder::new(2000).event(0, &payload(5, 200)).event(0, &payload(6, 200)).finish(0));
        assert_eq!(got(&st1).last(), Some(&(5, 200, 2000)));
        assert_eq!(got(&st2).len(), 3);
    }

    /// A thread tied to no container: the session alone on the recording takes it (the pid
    /// filter only lets its threads through); shared, no session can be told it is its own.
    #[test]
    fn an_unknown_thread_goes_to_a_lone_session_and_to_none_of_several() {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolver = Arc::new(Resolver::new(Procfs::new(dir.path(), dir.path()), Arc::default()));
        resolver.add_container(100, tag("a"));
        resolver.add_container(200, tag("b"));
        let r = router(resolver, None);
        let (s1, st1) = slot(1, &[5], &["a"], 1);
        r.publish(s1);
        let mut consume = r.consumer(0, alone());
        consume(PageBuilder::new(10).event(0, &payload(5, 4242)).finish(0));
        assert_eq!(got(&st1), vec![(5, 4242, 10)]);
        let (s2, st2) = slot(2, &[5], &["b"], 1);
        r.publish(s2);
        consume(PageBuilder::new(20).event(0, &payload(5, 4243)).finish(0));
        assert_eq!((got(&st1).len(), got(&st2).len(), r.unattributed()), (1, 0, 1));
    }

    /// Sessions taking the same records of a page share one batch, whether they take all of
    /// the page's routed records or the same part of them.
    #[test]
    fn sessions_taking_the_same_records_share_one_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolver = Arc::new(Resolver::new(Procfs::new(dir.path(), dir.path()), Arc::default()));
        resolver.add_container(100, tag("a"));
        let r = router(resolver, None);
        let stores: Vec<Arc<EventStore>> = [&[5, 6][..], &[5, 6], &[5], &[5]]
            .iter()
            .enumerate()
            .map(|(i, events)| {
                let (s, st) = slot(i as u64, events, &["a"], 1);
                r.publish(s);
                st
            })
            .collect();
        let mut consume = r.consumer(0, alone());
        consume(PageBuilder::new(10).event(0, &payload(5, 100)).event(1, &payload(6, 100)).finish(0));
        let b: Vec<Arc<Batch>> = stores.iter().map(|s| s.snapshot().remove(0)).collect();
        assert!(Arc::ptr_eq(&b[0], &b[1]) && Arc::ptr_eq(&b[2], &b[3]) && !Arc::ptr_eq(&b[0], &b[2]));
        assert_eq!((b[0].records.len(), b[2].records.len()), (2, 1));
    }

    /// Until the recording's first filter write returned, the instance recorded the whole
    /// host: those events are no session's, even one alone whose window is open (a host
    /// process would be taken for its container's).
    #[test]
    fn what_was_recorded_before_the_first_filter_write_is_not_routed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolver = Arc::new(Resolver::new(Procfs::new(dir.path(), dir.path()), Arc::default()));
        resolver.add_container(100, tag("a"));
        let started = Arc::new(AtomicU64::new(500));
        let r = Arc::new(Router::new(crate::ftrace::ring::tests::HEADER, None, None, resolver, started));
        let (s, st) = slot(1, &[5], &["a"], 1);
        r.publish(s);
        let mut consume = r.consumer(0, alone());
        consume(PageBuilder::new(400).event(0, &payload(5, 4242)).event(0, &payload(5, 100)).finish(0));
        assert!(got(&st).is_empty(), "recorded before the filter held threads");
        consume(PageBuilder::new(600).event(0, &payload(5, 100)).finish(0));
        assert_eq!(got(&st), vec![(5, 100, 600)]);
    }

    #[test]
    fn event_sets_hold_every_16_bit_id() {
        let mut s = EventSet::of([0, 63, 64, u16::MAX]);
        assert!(s.contains(0) && s.contains(63) && s.contains(64) && s.contains(u16::MAX));
        assert!(!s.contains(1) && !s.contains(65_534));
        s.union(&EventSet::of([7]));
        assert!(s.contains(7));
    }
}
