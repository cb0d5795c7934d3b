//! Containers joining and leaving sessions as the registry learns of them; a running session's
//! recording takes a new container's threads into its pid filter while its creation hook
//! still waits.

use std::sync::Arc;

use tracing::{error, info, warn};

use super::{recording::Recording, resolver::Resolver, Attached, Run, Session, SessionManager};
use crate::{
    batch::ContainerTag,
    registry::{Entry, Registry, RegistryObserver},
};

/// Every thread id of a container's processes, each also told to the recording's resolver: a
/// thread alive now may be gone by the time its events are read, and its fork was before the
/// run (so no fork event ties it to its container).
pub(super) fn container_tids(registry: &Registry, a: &Attached, resolver: &Resolver) -> Vec<u32> {
    let tids = threads_of(registry, a.init, a.cgroup.as_deref());
    resolver.known_threads(a.init, &tids);
    tids
}

pub(super) fn threads_of(registry: &Registry, init: u32, cgroup: Option<&std::path::Path>) -> Vec<u32> {
    let procfs = registry.procfs();
    procfs.tasks(init, cgroup).into_iter().flat_map(|pid| procfs.threads(pid)).collect()
}

impl SessionManager {
    /// Adds a container to a session; answers the session's recording when it runs (the
    /// container is in its slot and its resolver by then), for the caller to add the
    /// container's threads to its filter.
    pub(super) fn attach(&self, s: &Session, e: &Entry) -> Option<Arc<Recording>> {
        let r = &e.record;
        let tag = Arc::new(ContainerTag {
            id: r.id.clone(),
            pod: r.pod.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            runtime: r.runtime.clone().unwrap_or_default(),
            workload: tracer_spec::annotations::workload_attributes(&r.annotations),
        });
        let a = Attached {
            tag: tag.clone(),
            init: r.pid,
            cgroup: e.cgroup.clone(),
            created_unix_ns: r.created_unix_ns,
            at_creation: false,
        };
        let mut st = s.lock();
        if st.containers.contains_key(&r.id) {
            return None;
        }
        if let Some(export) = &st.export {
            // Attached while running means attached at its creation (or its late
            // registration): its span starts when the runtime created it.
            let at = if r.created_unix_ns > 0 { r.created_unix_ns } else { crate::export::model::unix_now() };
            export.container_started(tag.clone(), r.pid, at, true);
        }
        let recording = match &st.run {
            Some(Run::Ftrace { recording, slot }) => {
                slot.add_container(&r.id);
                recording.resolver().add_container(r.pid, tag);
                Some(recording.clone())
            }
            Some(Run::External(_)) => {
                warn!(session = s.id, container_id = %r.id, "external hooks cannot take new containers while running; attached at next start");
                None
            }
            _ => None,
        };
        // Listed before its threads are filtered: a start that comes next programs it, and
        // a run in progress gets them from the caller.
        st.containers.insert(r.id.clone(), a);
        recording
    }
}

impl RegistryObserver for SessionManager {
    /// The container joins every matching session; the recordings of the running ones get its
    /// threads, read once, pushed to all their filters before any is written, so that each
    /// filter's next batch holds them whoever writes it (a recording shared by several of
    /// those sessions once). The procfs reads and the kernel writes happen without any
    /// session lock: GET, stats and other attachments go on meanwhile.
    fn registered(&self, entry: &Entry) {
        // Its pod's own session first, started with the container attached, so its first
        // exec is traced; then every other matching session.
        self.auto_trace(entry);
        let sessions: Vec<Arc<Session>> = self.map().values().cloned().collect();
        let mut recordings: Vec<(Arc<Recording>, Vec<u64>)> = Vec::new();
        for s in sessions.iter().filter(|s| s.matches(entry)) {
            if let Some(r) = self.attach(s, entry) {
                match recordings.iter_mut().find(|(x, _)| Arc::ptr_eq(x, &r)) {
                    Some((_, ids)) => ids.push(s.id),
                    None => recordings.push((r, vec![s.id])),
                }
            }
        }
        let (init, id) = (entry.record.pid, &entry.record.id);
        // A recording that follows the container's threads already needs no write.
        recordings.retain(|(r, _)| r.hold(id));
        if recordings.is_empty() {
            return;
        }
        let tids = threads_of(&self.registry, init, entry.cgroup.as_deref());
        let left: Vec<_> = recordings
            .into_iter()
            .map(|(r, sessions)| {
                r.resolver().known_threads(init, &tids);
                let ticket = r.filter().push(&tids);
                (r, sessions, ticket)
            })
            .collect();
        // In turn: the kernel serialises filter writes of every instance (20 appends to two
        // instances from two threads took as long as 20 to one), so what saves time is fewer
        // writes, each carrying every container that waited for it.
        let mut written = Vec::new();
        for (r, sessions, ticket) in left {
            match r.filter().commit(ticket) {
                Ok(()) => {
                    info!(sessions = ?sessions, instance = %r.name(), container_id = %id, threads = tids.len(), "container attached to running sessions");
                    written.push(r);
                }
                Err(e) => {
                    r.unhold(id);
                    error!(sessions = ?sessions, container_id = %id, error = %e, "cannot add container to pid filter")
                }
            }
        }
        // Threads created between the look and a filter's write were not followed by that
        // filter (their creator was not in it yet): those still running are added now. Their
        // later children are followed, their creators being in every filter by then.
        if written.is_empty() {
            return;
        }
        let seen: std::collections::HashSet<u32> = tids.iter().copied().collect();
        let late: Vec<u32> = threads_of(&self.registry, init, entry.cgroup.as_deref())
            .into_iter()
            .filter(|t| !seen.contains(t))
            .collect();
        if late.is_empty() {
            return;
        }
        let tickets: Vec<_> = written
            .iter()
            .map(|r| {
                r.resolver().known_threads(init, &late);
                r.filter().push(&late)
            })
            .collect();
        for (r, ticket) in written.iter().zip(tickets) {
            if let Err(e) = r.filter().commit(ticket) {
                warn!(instance = %r.name(), container_id = %id, error = %e, threads = late.len(), "cannot add threads created while the container was attached");
            }
        }
    }

    fn unregistered(&self, id: &str) {
        let sessions: Vec<Arc<Session>> = self.map().values().cloned().collect();
        for s in sessions {
            // The kernel drops exited threads from the filter itself (event-fork); this keeps
            // the session's container list true.
            let mut st = s.lock();
            if st.containers.remove(id).is_some() {
                if let Some(Run::Ftrace { recording, .. }) = &st.run {
                    recording.resolver().remove_container(id);
                    recording.unhold(id);
                }
                if let Some(export) = &st.export {
                    export.container_exited(id);
                }
                let pod_gone = s.auto && st.containers.is_empty();
                drop(st);
                if pod_gone {
                    self.auto_pod_gone(&s);
                }
            }
        }
    }
}
