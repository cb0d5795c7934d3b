//! Ties the thread ids of a session's events to processes, commands and the session's
//! containers.
//!
//! A live thread is looked up in procfs: its process, then the parents up to a container's
//! init. A thread that is gone by the time its events are read (a `cat` in a shell loop lives
//! for a millisecond) has no procfs entry left: its command and process come from the kernel's
//! `saved_cmdlines`/`saved_tgids`, and its ancestry from the session's own fork events
//! (`sched_process_fork`, recorded in the session's instance whether or not its hook asked for
//! them), which the readers feed in as parent → child edges.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use super::lineage::Lineage;
use crate::batch::{ContainerTag, TaskInfo};
use crate::registry::procfs::Procfs;

/// A container and, once removed, when.
type KnownContainer = (Arc<ContainerTag>, Option<Instant>);

/// How long a removed container's threads are still tied to it: its last events are read up
/// to a poll interval after its exit, possibly by another CPU's reader than its earlier ones.
const REMOVED_KEPT: Duration = Duration::from_secs(10);

/// How often the saved tables may be read again for a thread they do not know: both files
/// list every thread the kernel remembers (tens of thousands of lines, a few ms to parse).
const SAVED_REFRESH: Duration = Duration::from_millis(50);

/// Depth bound of the walk from a process up to its container's init.
const MAX_ANCESTRY: usize = 64;

#[derive(Debug, Default)]
struct Saved {
    read_at: Option<Instant>,
    comms: HashMap<i32, Arc<str>>,
    tgids: HashMap<i32, i32>,
}

/// The kernel's `saved_cmdlines` and `saved_tgids`, parsed: what it remembered of threads that
/// are gone. The tables are the kernel's, one for the whole host, so the node keeps one copy
/// for all its sessions, read at most every [`SAVED_REFRESH`].
#[derive(Debug, Default)]
pub struct SavedTasks {
    tracefs: Option<std::path::PathBuf>,
    tables: Mutex<Saved>,
}

impl SavedTasks {
    /// The tables under `tracefs` (none: nothing is known of gone threads).
    pub fn new(tracefs: Option<std::path::PathBuf>) -> Self {
        Self { tracefs, tables: Mutex::default() }
    }

    /// (command, process) of `tid`; the tables are read again first when they do not know it
    /// and `refresh` allows.
    fn lookup(&self, tid: i32, refresh: bool) -> (Option<Arc<str>>, Option<i32>) {
        let Some(root) = self.tracefs.as_ref() else { return (None, None) };
        let mut saved = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let known = saved.comms.contains_key(&tid) && saved.tgids.contains_key(&tid);
        if !known && refresh && saved.read_at.is_none_or(|t| t.elapsed() >= SAVED_REFRESH) {
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
            saved.comms = table("saved_cmdlines").into_iter().map(|(p, c)| (p, Arc::from(c.as_str()))).collect();
            saved.tgids = table("saved_tgids").into_iter().filter_map(|(p, t)| Some((p, t.parse().ok()?))).collect();
            saved.read_at = Some(Instant::now());
        }
        (saved.comms.get(&tid).cloned(), saved.tgids.get(&tid).copied())
    }
}

/// The resolver of one session.
#[derive(Debug)]
pub struct Resolver {
    procfs: Procfs,
    saved: Arc<SavedTasks>,
    inits: RwLock<HashMap<u32, KnownContainer>>,
    lineage: RwLock<Lineage>,
    /// The latest fork or exit time of each thread id (ids sharing their low 16 bits share a
    /// slot): the readers' caches of thread-to-container ties check it, since an id's new
    /// life may have been forked on another CPU, whose reader alone saw the fork.
    changes: Box<[AtomicU64]>,
}

/// Slots of [`Resolver::changes`].
const CHANGE_SLOTS: usize = 1 << 16;

impl Resolver {
    /// A resolver reading `procfs`, and the node's `saved` tables for threads that exited
    /// before they could be looked up.
    pub fn new(procfs: Procfs, saved: Arc<SavedTasks>) -> Self {
        Self {
            procfs,
            saved,
            inits: RwLock::new(HashMap::new()),
            lineage: RwLock::default(),
            changes: (0..CHANGE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Declares `init` as the init pid of `tag`'s container.
    pub fn add_container(&self, init: u32, tag: Arc<ContainerTag>) {
        let mut inits = self.inits.write().unwrap_or_else(|p| p.into_inner());
        inits.retain(|_, (_, gone)| gone.is_none_or(|t| t.elapsed() < REMOVED_KEPT));
        inits.insert(init, (tag, None));
    }

    /// Forgets a container (after [`REMOVED_KEPT`]).
    pub fn remove_container(&self, id: &str) {
        let mut inits = self.inits.write().unwrap_or_else(|p| p.into_inner());
        inits.retain(|_, (_, gone)| gone.is_none_or(|t| t.elapsed() < REMOVED_KEPT));
        for (tag, gone) in inits.values_mut() {
            if tag.id == id {
                gone.get_or_insert_with(Instant::now);
            }
        }
    }

    fn lineage_mut(&self) -> std::sync::RwLockWriteGuard<'_, Lineage> {
        self.lineage.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Thread `parent` created thread `child`, with command `comm`, at `ts` (a fork event of
    /// the session's instance).
    pub fn forked(&self, parent: u32, child: u32, ts: u64, comm: Option<Arc<str>>) {
        self.lineage_mut().forked(parent, child, ts, comm);
        self.changed(child, ts);
    }

    /// Thread `tid` exited at `ts`, its last command `comm`.
    pub fn exited(&self, tid: u32, ts: u64, comm: Option<Arc<str>>) {
        self.lineage_mut().exited(tid, ts, comm);
        self.changed(tid, ts);
    }

    /// After the lineage: whoever sees the mark finds the life it marks.
    fn changed(&self, tid: u32, ts: u64) {
        self.changes[tid as usize % CHANGE_SLOTS].fetch_max(ts, Ordering::AcqRel);
    }

    /// Whether thread id `tid` (or one sharing its slot) was forked or exited after `ts`: a
    /// tie of `tid` to a container made at `ts` may be another life's.
    pub fn changed_after(&self, tid: i32, ts: u64) -> bool {
        self.changes[tid as u32 as usize % CHANGE_SLOTS].load(Ordering::Acquire) > ts
    }

    /// `tids` are threads of the container whose init is `init` (read from procfs while they
    /// run): remembered, for when they are gone before their events are read.
    pub fn known_threads(&self, init: u32, tids: &[u32]) {
        let mut lineage = self.lineage_mut();
        for &tid in tids.iter().filter(|t| **t != init) {
            lineage.running(init, tid);
        }
    }

    /// Reads what is known of thread `tid` at time `ts`: process, command, and the container
    /// whose init is the process or one of its ancestors.
    pub fn resolve(&self, tid: i32, ts: u64) -> TaskInfo {
        let seen = Instant::now();
        let Ok(utid) = u32::try_from(tid) else {
            return TaskInfo { tgid: tid, comm: Arc::from(""), container: None, seen, resolved_at: ts };
        };
        let status =
            std::fs::read_to_string(self.procfs.root().join(utid.to_string()).join("status")).unwrap_or_default();
        let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
        let (comm, tgid): (Arc<str>, i32) = if status.is_empty() {
            // Gone already (a short-lived process): its command from the session's own fork
            // and exit events, else the kernel's tables (read again only for a thread the
            // session knows nothing of: they are large, and shared by every session).
            let known = self.lineage.read().unwrap_or_else(|p| p.into_inner()).life(utid, ts).map(|l| l.comm.clone());
            let (saved_comm, tgid) = self.saved.lookup(tid, known.is_none());
            let comm = known.flatten().or(saved_comm).unwrap_or_else(|| Arc::from(""));
            (comm, tgid.unwrap_or(tid))
        } else {
            (Arc::from(field("Name:").unwrap_or("")), field("Tgid:").and_then(|v| v.parse().ok()).unwrap_or(tid))
        };
        let inits = self.inits.read().unwrap_or_else(|p| p.into_inner());
        let mut container = None;
        // From the thread itself up its creators, each in the life that the time falls in (its
        // creator's at the time it was forked); where no fork is known, up procfs' parents.
        let (mut pid, mut at) = (utid, ts);
        let lineage = self.lineage.read().unwrap_or_else(|p| p.into_inner());
        for _ in 0..MAX_ANCESTRY {
            if let Some((tag, _)) = inits.get(&pid) {
                container = Some(tag.clone());
                break;
            }
            let next = match lineage.life(pid, at) {
                Some(life) => {
                    at = life.start;
                    Some(life.parent)
                }
                None => self
                    .procfs
                    .leader_or_parent(pid)
                    // A thread gone with no fork known: on from the process the kernel saved.
                    .or_else(|| (pid == utid).then(|| u32::try_from(tgid).ok()).flatten()),
            };
            match next {
                Some(p) if p > 1 && p != pid => pid = p,
                _ => break,
            }
        }
        drop(lineage);
        // A thread gone before its ancestry could be read: the pid filter only lets the
        // session's containers' threads through, so with one container it can only be that one.
        if container.is_none() && inits.len() == 1 {
            container = inits.values().next().map(|(t, _)| t.clone());
        }
        TaskInfo { tgid, comm, container, seen, resolved_at: ts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(id: &str) -> Arc<ContainerTag> {
        Arc::new(ContainerTag {
            id: id.into(),
            pod: format!("pod-{id}"),
            namespace: "ns".into(),
            name: id.into(),
            runtime: String::new(),
            workload: Vec::new(),
        })
    }

    #[test]
    fn a_thread_gone_from_procfs_is_tied_to_its_container_through_fork_edges() {
        // An empty procfs: every thread is gone.
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Resolver::new(Procfs::new(dir.path(), dir.path()), Arc::default());
        r.add_container(100, tag("a"));
        r.add_container(200, tag("b"));
        let id = |r: &Resolver, tid: i32, ts: u64| r.resolve(tid, ts).container.map(|t| t.id.clone());
        assert_eq!(id(&r, 4242, 10), None, "two containers, no fork known: unknown");
        // 200 forks a shell 300 at 5, which forks 4242 at 8 (gone at 20).
        r.forked(200, 300, 5, None);
        r.forked(300, 4242, 8, None);
        r.exited(4242, 20, Some(Arc::from("cat")));
        assert_eq!(id(&r, 4242, 10).as_deref(), Some("b"));
        assert_eq!(&*r.resolve(4242, 10).comm, "cat", "the command it exited with");
        assert_eq!(id(&r, 100, 10).as_deref(), Some("a"));
        // The id reused in container a: events before its reuse stay b's.
        r.forked(100, 4242, 30, None);
        assert_eq!(id(&r, 4242, 31).as_deref(), Some("a"));
        assert_eq!(id(&r, 4242, 15).as_deref(), Some("b"));
        assert_eq!(id(&r, 4242, 25), None, "not alive then");
        // A reader's cached tie of 4242 made at 31 is stale once another CPU's reader saw the
        // id fork again (or exit) later; not before.
        assert!(!r.changed_after(4242, 31));
        r.exited(4242, 40, None);
        r.forked(200, 4242, 50, None);
        assert!(r.changed_after(4242, 31) && !r.changed_after(4242, 50));
        assert_eq!(id(&r, 4242, 51).as_deref(), Some("b"), "the new life");
        // A cycle of forks ends the walk instead of looping.
        r.forked(5001, 5000, 1, None);
        r.forked(5000, 5001, 1, None);
        assert_eq!(id(&r, 5000, 2), None);
    }
}
