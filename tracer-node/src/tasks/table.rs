//! Every registered container's processes and threads, kept current from fork, exit and exec
//! events and corrected by rescans: pure state, no I/O.
//!
//! The kernel orders events per CPU only, and the tracker drains the CPUs one after the
//! other: a child's exit recorded on CPU 1 can be read before its fork recorded on CPU 0 (the
//! fork was committed after CPU 0 was drained). Every change is therefore checked against
//! timestamps: an exit leaves a tombstone, and a fork older than the tombstone of its id is a
//! life already over; an exit older than the life it would end belongs to an earlier one.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use super::events::{TaskEvent, CLONE_INTO_CGROUP, CLONE_THREAD};

/// Events held back for want of their creator, at most (the oldest go first).
const MAX_ORPHANS: usize = 65_536;

/// Tombstones kept per generation; two generations are kept (the reordering the tombstones
/// guard against spans one drain, far fewer exits than this).
const TOMBSTONES_PER_GENERATION: usize = 65_536;

/// One container's tracked state.
#[derive(Debug, Clone)]
struct Tracked {
    init: u32,
    /// Its processes (thread-group ids).
    procs: BTreeSet<u32>,
    /// Whether `procs` is known to be exact: false until its first rescan merged, and again
    /// after events may have been lost. Requests read such a container live.
    fresh: bool,
    /// Its cgroup, relative to the hierarchy's root (`/system.slice/x.scope`), when it has one.
    cgroup: Option<String>,
    /// Its init's parent.
    ppid: u32,
}

#[derive(Debug, Clone)]
struct Thread {
    tgid: u32,
    container: Arc<str>,
    /// When this life of the id began (its fork, or its exec under the leader's id); 0 for a
    /// thread found by a rescan.
    born: u64,
}

#[derive(Debug, Clone)]
struct Proc {
    container: Arc<str>,
    threads: u32,
}

/// A rescan's view of a container: each process with its threads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// (process, its thread ids).
    pub procs: Vec<(u32, Vec<u32>)>,
    /// The init's parent, read with it.
    pub ppid: Option<u32>,
}

impl Scan {
    /// Every thread id of the scan.
    pub fn tids(&self) -> impl Iterator<Item = u32> + '_ {
        self.procs.iter().flat_map(|(_, t)| t.iter().copied())
    }
}

/// What a request gets of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tasks {
    /// The init first, then the other processes in ascending order.
    pub pids: Vec<u32>,
    /// The init's parent.
    pub ppid: u32,
}

/// The tracked containers.
#[derive(Debug, Default)]
pub struct Table {
    containers: HashMap<Arc<str>, Tracked>,
    threads: HashMap<u32, Thread>,
    procs: HashMap<u32, Proc>,
    /// Container of each tracked cgroup path.
    cgroups: HashMap<String, Arc<str>>,
    tombstones: [HashMap<u32, u64>; 2],
    /// Containers that need a rescan (an event said something the table cannot follow).
    rescan: BTreeSet<Arc<str>>,
    /// Creations (and execs) whose thread was unknown when they were applied, with the drain
    /// that read them: the creator's own creation, recorded earlier on another CPU, can be read
    /// by the next drain only (see the module's comment).
    orphans: Vec<(u64, TaskEvent)>,
    /// Drains ended so far.
    drains: u64,
}

impl Table {
    /// Starts tracking a container (not fresh until its first [`Table::merge`]).
    pub fn track(&mut self, id: &str, init: u32, cgroup: Option<String>, ppid: u32) {
        self.untrack(id);
        let id: Arc<str> = Arc::from(id);
        if let Some(path) = &cgroup {
            self.cgroups.insert(path.clone(), id.clone());
        }
        self.containers.insert(id.clone(), Tracked { init, procs: BTreeSet::new(), fresh: false, cgroup, ppid });
        self.rescan.insert(id);
    }

    /// Forgets a container and its tasks.
    pub fn untrack(&mut self, id: &str) {
        let Some(c) = self.containers.remove(id) else { return };
        if let Some(path) = &c.cgroup {
            if self.cgroups.get(path).is_some_and(|x| &**x == id) {
                self.cgroups.remove(path);
            }
        }
        self.threads.retain(|_, t| &*t.container != id);
        self.procs.retain(|_, p| &*p.container != id);
        self.rescan.remove(id);
    }

    /// Whether `id` is tracked.
    pub fn tracks(&self, id: &str) -> bool {
        self.containers.contains_key(id)
    }

    /// The init and cgroup of a tracked container, to rescan it.
    pub fn target(&self, id: &str) -> Option<u32> {
        self.containers.get(id).map(|c| c.init)
    }

    /// A container's tasks, when the table knows them exactly. `None` for a container whose
    /// init is no longer among them (it exited; the registry removes it).
    pub fn tasks(&self, id: &str) -> Option<Tasks> {
        let c = self.containers.get(id).filter(|c| c.fresh)?;
        if !c.procs.contains(&c.init) {
            return Some(Tasks { pids: Vec::new(), ppid: c.ppid });
        }
        let mut pids = Vec::with_capacity(c.procs.len());
        pids.push(c.init);
        pids.extend(c.procs.iter().copied().filter(|p| *p != c.init));
        Some(Tasks { pids, ppid: c.ppid })
    }

    /// Sets a container's init parent (it was reparented).
    pub fn set_ppid(&mut self, id: &str, ppid: u32) {
        if let Some(c) = self.containers.get_mut(id) {
            c.ppid = ppid;
        }
    }

    /// Whether `tid` is a known thread of any tracked container (so the kernel filter has it).
    pub fn knows(&self, tid: u32) -> bool {
        self.threads.contains_key(&tid)
    }

    /// Containers waiting for a rescan, taken.
    pub fn take_rescans(&mut self) -> BTreeSet<Arc<str>> {
        std::mem::take(&mut self.rescan)
    }

    /// Something changed in container `id` that no event tells exactly (a process moved in or
    /// out): it is read live until it has been rescanned.
    fn unsure(&mut self, id: &Arc<str>) {
        if let Some(c) = self.containers.get_mut(id) {
            c.fresh = false;
        }
        self.rescan.insert(id.clone());
    }

    /// Events may have been lost: every container is read live until it was rescanned.
    pub fn lost_events(&mut self) {
        for (id, c) in &mut self.containers {
            c.fresh = false;
            self.rescan.insert(id.clone());
        }
    }

    /// Number of tracked containers, processes and threads.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.containers.len(), self.procs.len(), self.threads.len())
    }

    fn tombstone(&mut self, tid: u32, ts: u64) {
        if self.tombstones[0].len() >= TOMBSTONES_PER_GENERATION {
            self.tombstones[1] = std::mem::take(&mut self.tombstones[0]);
        }
        let t = self.tombstones[0].entry(tid).or_insert(ts);
        *t = (*t).max(ts);
    }

    /// Whether `tid` exited after `ts`.
    fn died_after(&self, tid: u32, ts: u64) -> bool {
        self.tombstones.iter().any(|g| g.get(&tid).is_some_and(|d| *d > ts))
    }

    fn add_thread(&mut self, tid: u32, tgid: u32, container: &Arc<str>, born: u64) {
        if self.threads.contains_key(&tid) {
            // An earlier life whose end was missed.
            self.remove_thread(tid);
        }
        let proc = self.procs.entry(tgid).or_insert_with(|| Proc { container: container.clone(), threads: 0 });
        if proc.container != *container {
            // The process id was another container's (a missed exit): that one is rescanned.
            self.rescan.insert(proc.container.clone());
            if let Some(c) = self.containers.get_mut(&proc.container) {
                c.procs.remove(&tgid);
            }
            *proc = Proc { container: container.clone(), threads: 0 };
        }
        proc.threads += 1;
        if let Some(c) = self.containers.get_mut(container) {
            c.procs.insert(tgid);
        }
        self.threads.insert(tid, Thread { tgid, container: container.clone(), born });
    }

    fn remove_thread(&mut self, tid: u32) {
        let Some(t) = self.threads.remove(&tid) else { return };
        let Some(p) = self.procs.get_mut(&t.tgid) else { return };
        p.threads = p.threads.saturating_sub(1);
        if p.threads == 0 {
            self.procs.remove(&t.tgid);
            if let Some(c) = self.containers.get_mut(&t.container) {
                c.procs.remove(&t.tgid);
            }
        }
    }

    /// The tracked container whose cgroup is `path` or holds it.
    fn container_of_path(&self, path: &str) -> Option<&Arc<str>> {
        let mut p = path;
        loop {
            if let Some(id) = self.cgroups.get(p) {
                return Some(id);
            }
            match p.rfind('/') {
                Some(0) | None => return None,
                Some(i) => p = &p[..i],
            }
        }
    }

    /// Applies one event; events of threads no container has are ignored.
    pub fn apply(&mut self, ev: &TaskEvent) {
        match *ev {
            TaskEvent::NewTask { ts, creator, child, flags } => {
                let Some(parent) = self.threads.get(&creator) else {
                    self.orphan(ev);
                    return;
                };
                let (container, tgid) = (parent.container.clone(), parent.tgid);
                if self.died_after(child, ts) {
                    return;
                }
                if flags & CLONE_THREAD != 0 {
                    self.add_thread(child, tgid, &container, ts);
                } else {
                    self.add_thread(child, child, &container, ts);
                }
                if flags & CLONE_INTO_CGROUP != 0 {
                    // Born into a cgroup of its creator's choosing, maybe not the container's.
                    self.unsure(&container);
                }
            }
            TaskEvent::Exit { ts, tid } => {
                self.tombstone(tid, ts);
                if self.threads.get(&tid).is_some_and(|t| t.born <= ts) {
                    self.remove_thread(tid);
                }
            }
            TaskEvent::Exec { ts, tid, old } => {
                if old == tid {
                    return;
                }
                // A thread other than the leader called exec: the others (the leader too) have
                // exited, and it goes on under the leader's id, which begins a new life.
                let Some(t) = self.threads.get(&old).cloned() else {
                    self.orphan(ev);
                    return;
                };
                self.remove_thread(old);
                self.add_thread(tid, t.tgid, &t.container, ts);
            }
            TaskEvent::Attach { tid, ref path } => {
                if let Some(id) = self.container_of_path(path).cloned() {
                    self.unsure(&id);
                }
                // Moved out of its container (a cgroup v1 move in one hierarchy only is
                // found unchanged by the rescan).
                if let Some(t) = self.threads.get(&tid) {
                    let c = t.container.clone();
                    let inside = self.containers.get(&c).and_then(|c| c.cgroup.as_deref()).is_some_and(|cg| {
                        path.strip_prefix(cg).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                    });
                    if !inside {
                        self.unsure(&c);
                    }
                }
            }
        }
    }

    fn orphan(&mut self, ev: &TaskEvent) {
        if self.orphans.len() >= MAX_ORPHANS {
            self.orphans.remove(0);
        }
        self.orphans.push((self.drains, ev.clone()));
    }

    /// Retries the held-back events (in timestamp order: a creator's creation before its
    /// children's); those still without their thread after the drain that followed the one
    /// that read them belong to no container.
    fn retry_orphans(&mut self, drop_old: bool) {
        if self.orphans.is_empty() {
            return;
        }
        let mut held = std::mem::take(&mut self.orphans);
        held.sort_by_key(|(_, e)| match e {
            TaskEvent::NewTask { ts, .. } | TaskEvent::Exec { ts, .. } | TaskEvent::Exit { ts, .. } => *ts,
            TaskEvent::Attach { .. } => 0,
        });
        for (read, ev) in held {
            let known = match &ev {
                TaskEvent::NewTask { creator, .. } => self.threads.contains_key(creator),
                TaskEvent::Exec { old, .. } => self.threads.contains_key(old),
                _ => true,
            };
            if known {
                self.apply(&ev);
            } else if !(drop_old && read < self.drains) {
                self.orphans.push((read, ev));
            }
        }
    }

    /// A drain's events were all applied: the held-back ones are tried again.
    pub fn end_drain(&mut self) {
        self.retry_orphans(true);
        self.drains += 1;
    }

    /// Threads a rescan found and just wrote to the kernel's filter, taken at once (before the
    /// rescan is merged) so that their children's creations find them.
    pub fn adopt(&mut self, id: &str, scan: &Scan, tids: &[u32], t0: u64) {
        let Some((id, _)) = self.containers.get_key_value(id) else { return };
        let id = id.clone();
        let wanted: HashSet<u32> = tids.iter().copied().collect();
        for (pid, threads) in &scan.procs {
            for &tid in threads.iter().filter(|t| wanted.contains(t)) {
                if !self.threads.contains_key(&tid) && !self.died_after(tid, t0) {
                    self.add_thread(tid, *pid, &id, 0);
                }
            }
        }
        self.retry_orphans(false);
    }

    /// Merges a rescan of container `id` that began at `t0` (trace clock), after every event
    /// recorded before the scan ended has been applied: what the scan found is taken, except
    /// ids that exited after it began; what it did not find is dropped, except lives that
    /// began after it did (it may have missed them).
    pub fn merge(&mut self, id: &str, scan: &Scan, t0: u64) {
        let Some((id, _)) = self.containers.get_key_value(id) else { return };
        let id = id.clone();
        let seen: HashSet<u32> = scan.tids().collect();
        let stale: Vec<u32> = self
            .threads
            .iter()
            .filter(|(tid, t)| t.container == id && t.born < t0 && !seen.contains(tid))
            .map(|(tid, _)| *tid)
            .collect();
        for tid in stale {
            self.remove_thread(tid);
        }
        for (pid, tids) in &scan.procs {
            for &tid in tids {
                let known = self.threads.get(&tid).is_some_and(|t| t.container == id && t.tgid == *pid);
                if !known && !self.died_after(tid, t0) {
                    self.add_thread(tid, *pid, &id, 0);
                }
            }
        }
        self.retry_orphans(false);
        if let Some(c) = self.containers.get_mut(&id) {
            // A process whose threads all went while its record stayed cannot be listed.
            c.procs.retain(|p| self.procs.get(p).is_some_and(|p| p.container == id));
            c.fresh = true;
            if let Some(ppid) = scan.ppid {
                c.ppid = ppid;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(ts: u64, creator: u32, child: u32, flags: u64) -> TaskEvent {
        TaskEvent::NewTask { ts, creator, child, flags }
    }
    fn exit(ts: u64, tid: u32) -> TaskEvent {
        TaskEvent::Exit { ts, tid }
    }
    fn scan(procs: &[(u32, &[u32])]) -> Scan {
        Scan { procs: procs.iter().map(|(p, t)| (*p, t.to_vec())).collect(), ppid: Some(9) }
    }
    fn pids(t: &Table, id: &str) -> Vec<u32> {
        t.tasks(id).expect("fresh").pids
    }

    fn table() -> Table {
        let mut t = Table::default();
        t.track("c", 100, Some("/ct/c".into()), 1);
        assert_eq!(t.tasks("c"), None, "not fresh before its first rescan");
        assert_eq!(t.take_rescans().len(), 1);
        t.merge("c", &scan(&[(100, &[100]), (101, &[101, 102])]), 10);
        t
    }

    #[test]
    fn processes_and_threads_come_and_go_with_their_events() {
        let mut t = table();
        assert_eq!(pids(&t, "c"), vec![100, 101]);
        assert_eq!(t.tasks("c").map(|x| x.ppid), Some(9));
        t.apply(&new(20, 101, 110, 0));
        t.apply(&new(21, 110, 111, CLONE_THREAD));
        t.apply(&new(22, 555, 600, 0));
        assert_eq!(pids(&t, "c"), vec![100, 101, 110], "a host thread's fork is not the container's");
        // The leader of 110 exits first: the process lives on while a thread does.
        t.apply(&exit(30, 110));
        assert_eq!(pids(&t, "c"), vec![100, 101, 110]);
        t.apply(&exit(31, 111));
        assert_eq!(pids(&t, "c"), vec![100, 101]);
        t.apply(&exit(32, 101));
        assert_eq!(pids(&t, "c"), vec![100, 101], "102 still runs");
        t.apply(&exit(33, 102));
        assert_eq!(pids(&t, "c"), vec![100]);
        assert_eq!(t.sizes(), (1, 1, 1));
    }

    #[test]
    fn an_exit_read_before_its_fork_wins_and_a_reused_id_starts_again() {
        let mut t = table();
        t.apply(&exit(25, 120));
        t.apply(&new(20, 100, 120, 0));
        assert_eq!(pids(&t, "c"), vec![100, 101], "the fork of a life already over");
        t.apply(&new(40, 101, 120, 0));
        assert_eq!(pids(&t, "c"), vec![100, 101, 120], "the id forked again later");
        // An exit older than the life it would end belongs to the earlier life.
        t.apply(&exit(35, 120));
        assert_eq!(pids(&t, "c"), vec![100, 101, 120]);
    }

    #[test]
    fn exec_from_a_thread_takes_the_leader_s_id() {
        let mut t = table();
        t.apply(&new(20, 100, 130, 0));
        t.apply(&new(21, 130, 131, CLONE_THREAD));
        // 131 calls exec: 130 (the leader) exits, then 131 becomes 130. The exec may be read
        // before the leader's exit.
        t.apply(&TaskEvent::Exec { ts: 50, tid: 130, old: 131 });
        t.apply(&exit(45, 130));
        assert_eq!(pids(&t, "c"), vec![100, 101, 130]);
        t.apply(&exit(60, 130));
        assert_eq!(pids(&t, "c"), vec![100, 101]);
        assert_eq!(t.sizes(), (1, 2, 3));
    }

    #[test]
    fn a_rescan_takes_what_it_saw_but_not_what_began_or_ended_after_it() {
        let mut t = table();
        t.apply(&new(20, 100, 140, 0));
        // The scan began at 30: 140 was gone by then unseen (its exit lost); 150 was born
        // after the scan began and not found; 160 was found but exited after.
        t.apply(&new(35, 100, 150, 0));
        t.apply(&exit(36, 160));
        t.merge("c", &scan(&[(100, &[100]), (101, &[101, 102]), (160, &[160]), (170, &[170, 171])]), 30);
        assert_eq!(pids(&t, "c"), vec![100, 101, 150, 170]);
        t.apply(&exit(40, 171));
        t.apply(&exit(41, 170));
        assert_eq!(pids(&t, "c"), vec![100, 101, 150]);
    }

    #[test]
    fn cgroup_moves_and_lost_events_ask_for_rescans() {
        let mut t = table();
        t.track("d", 200, None, 1);
        t.merge("d", &scan(&[(200, &[200])]), 10);
        t.take_rescans();
        t.apply(&TaskEvent::Attach { tid: 999, path: "/ct/c/sub".into() });
        assert_eq!(t.tasks("c"), None, "read live until rescanned");
        t.apply(&TaskEvent::Attach { tid: 998, path: "/ct/cc".into() });
        t.apply(&TaskEvent::Attach { tid: 997, path: "/elsewhere".into() });
        assert_eq!(t.take_rescans().into_iter().map(|x| x.to_string()).collect::<Vec<_>>(), vec!["c"]);
        t.apply(&TaskEvent::Attach { tid: 101, path: "/ct/c/inner".into() });
        t.take_rescans();
        t.apply(&TaskEvent::Attach { tid: 101, path: "/user.slice".into() });
        assert_eq!(t.take_rescans().len(), 1, "moved out of its container");
        t.apply(&new(20, 100, 140, CLONE_INTO_CGROUP));
        assert_eq!(t.take_rescans().len(), 1, "born into a cgroup the table cannot see");
        t.lost_events();
        assert_eq!(t.tasks("c"), None);
        assert_eq!(t.take_rescans().len(), 2);
        t.untrack("c");
        assert_eq!(t.sizes(), (1, 1, 1));
        assert!(t.container_of_path("/ct/c").is_none());
    }

    #[test]
    fn a_child_read_before_its_creator_s_creation_waits_for_it_one_drain() {
        let mut t = table();
        // 120 was created by 101 on CPU 0, then created 121 on CPU 1; this drain read CPU 1's.
        t.apply(&new(21, 120, 121, 0));
        t.end_drain();
        assert_eq!(pids(&t, "c"), vec![100, 101]);
        t.apply(&new(20, 101, 120, 0));
        t.end_drain();
        assert_eq!(pids(&t, "c"), vec![100, 101, 120, 121]);
        // An unknown creator still unknown a drain later is nobody's.
        t.apply(&new(30, 999, 130, 0));
        t.end_drain();
        t.end_drain();
        t.apply(&new(29, 100, 999, 0));
        t.end_drain();
        assert_eq!(pids(&t, "c"), vec![100, 101, 120, 121, 999]);
    }

    #[test]
    fn threads_adopted_during_a_rescan_take_their_children_before_the_merge() {
        let mut t = Table::default();
        t.track("c", 100, None, 1);
        let found = scan(&[(100, &[100]), (105, &[105])]);
        t.apply(&new(12, 105, 106, 0));
        t.adopt("c", &found, &[100, 105], 10);
        t.merge("c", &found, 10);
        assert_eq!(pids(&t, "c"), vec![100, 105, 106]);
    }

    #[test]
    fn an_init_that_exited_lists_nothing() {
        let mut t = table();
        t.apply(&exit(20, 100));
        assert_eq!(pids(&t, "c"), Vec::<u32>::new());
    }
}
