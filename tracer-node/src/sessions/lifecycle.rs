//! Starting and stopping sessions' runs: a built-in hook's place on a recording (the node's
//! shared one, or one of its own) or an external hook's process.

use std::{sync::Arc, time::Duration};

use tracer_api::v1::SessionStats;
use tracing::{info, warn};

use super::{
    attach::{container_tids, threads_of},
    program::StartFailure,
    recording::{Joined, Recording},
    resolver::Resolver,
    Attached, Run, Session, SessionError, SessionManager,
};
use crate::{
    export::model::SessionContext,
    ftrace::pid_filter::monotonic_ns,
    hooks::{FtracePlan, Plan},
};

impl SessionManager {
    /// (sessions, running sessions, kernel overrun of the runs in progress). The per-CPU stats
    /// files are read on a blocking thread, with no session lock held.
    pub async fn gauges(&self) -> (u64, u64, u64) {
        let sessions: Vec<Arc<Session>> = self.map().values().cloned().collect();
        let (running, recordings) = running(&sessions);
        let overruns = if recordings.is_empty() {
            0
        } else {
            tokio::task::spawn_blocking(move || recordings.iter().map(|r| r.overrun()).sum()).await.unwrap_or(0)
        };
        (sessions.len() as u64, running as u64, overruns)
    }

    /// The session's statistics (per-CPU stats files read as in [`Self::gauges`]).
    pub async fn stats(&self, id: u64) -> Result<SessionStats, SessionError> {
        let s = self.get(id)?;
        let (running, run) = {
            let st = s.lock();
            let run = match &st.run {
                Some(Run::Ftrace { recording, slot }) => Some((recording.clone(), slot.overrun_base)),
                _ => None,
            };
            (st.run.is_some(), run)
        };
        // The recording's losses since the session joined it: a loss of a shared recording
        // is one for every session that could have seen those events.
        let live = match run {
            Some((r, base)) => tokio::task::spawn_blocking(move || r.overrun().saturating_sub(base)).await.unwrap_or(0),
            None => 0,
        };
        Ok(s.store.stats(running, live, s.export.snapshot()))
    }

    /// Starts session `id`. Runs as a task of its own: a client that hangs up must not cancel
    /// a start halfway (instance made, no timer set).
    pub async fn start(self: &Arc<Self>, id: u64) -> Result<(), SessionError> {
        self.detached("start", move |m| async move { m.start_inner(id).await }).await
    }

    /// Runs a lifecycle operation as a task of its own and waits for it: dropping the caller's
    /// future (a client that hung up) then cannot leave the operation half done.
    pub(super) async fn detached<F, Fut>(self: &Arc<Self>, what: &'static str, op: F) -> Result<(), SessionError>
    where
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: std::future::Future<Output = Result<(), SessionError>> + Send + 'static,
    {
        tokio::spawn(op(self.clone())).await.map_err(|source| SessionError::Task { what, source })?
    }

    async fn start_inner(&self, id: u64) -> Result<(), SessionError> {
        let s = self.get(id)?;
        let op = s.op.lock().await;
        if op.deleted {
            return Err(SessionError::NotFound(id.to_string()));
        }
        if s.lock().run.is_some() {
            return Err(SessionError::AlreadyRunning(id));
        }
        let _gate = self.start_gate.lock().await;
        let ftrace_plan = match &s.plan {
            Ok(Plan::Ftrace(p)) => Some(p),
            _ => None,
        };
        self.check_running_limits(ftrace_plan)?;
        let result = match s.plan.clone() {
            Err(reason) => Err(StartFailure::Unusable(reason)),
            Ok(Plan::Ftrace(plan)) => {
                let (s2, m) = (s.clone(), self.me.upgrade().ok_or(SessionError::ShuttingDown)?);
                tokio::task::spawn_blocking(move || m.start_ftrace(&s2, &plan))
                    .await
                    .map_err(|source| SessionError::Task { what: "start", source })?
            }
            Ok(Plan::External { provider, hook, args }) => {
                // The containers are listed under the lock, their threads read from procfs
                // without it.
                let containers: Vec<Attached> = s.lock().containers.values().cloned().collect();
                let tids: Vec<u32> =
                    containers.iter().flat_map(|a| threads_of(&self.registry, a.init, a.cgroup.as_deref())).collect();
                match provider.run(&hook, &args, &tids, id).await {
                    Ok(run) => {
                        let mut st = s.lock();
                        st.output = Some(vec![run.output.clone()]);
                        st.error = None;
                        st.run = Some(Run::External(Box::new(run)));
                        Ok(None)
                    }
                    Err(lines) => Err(StartFailure::External(lines)),
                }
            }
        };
        match result {
            Ok(duration) => {
                let generation = {
                    let mut st = s.lock();
                    st.generation += 1;
                    st.generation
                };
                if let Some(d) = duration {
                    self.stop_after(id, generation, d);
                }
                info!(session = id, "session started");
                Ok(())
            }
            Err(failure) => {
                let (reason, kernel_short) = (failure.to_string(), failure.kernel_short());
                let mut st = s.lock();
                st.error = Some(vec![reason.clone()]);
                st.output = None;
                warn!(session = id, %reason, kernel_short, "session failed to start");
                if kernel_short {
                    Err(SessionError::KernelShort { id, reason })
                } else {
                    Err(SessionError::StartFailed { id, reason })
                }
            }
        }
    }

    /// Refuses a start when the running sessions are at `--max-running-sessions`, or when the
    /// ring buffer it needs would pass the kernel memory budget: a session that can share the
    /// node's recording needs none once that recording is open; one that cannot (kernel filter,
    /// function tracer) needs one of its own. The caller holds the start gate.
    fn check_running_limits(&self, plan: Option<&FtracePlan>) -> Result<(), SessionError> {
        let sessions: Vec<Arc<Session>> = self.map().values().cloned().collect();
        let (running, recordings) = running(&sessions);
        if running >= self.settings.max_running {
            return Err(SessionError::Limit {
                what: "too many running trace sessions on this node",
                limit: self.settings.max_running as u64,
                flag: "--max-running-sessions",
            });
        }
        let needs_buffer = match plan {
            Some(p) if p.shareable() => !recordings.iter().any(|r| !r.dedicated()),
            Some(_) => true,
            None => false,
        };
        let per_run = self.settings.buffer_kb.saturating_mul(self.cpus);
        if needs_buffer && (recordings.len() as u64 + 1).saturating_mul(per_run) > self.settings.memory_budget_kb {
            return Err(SessionError::Limit {
                what: "starting it would pass the kernel memory budget of the ring buffers (MiB)",
                limit: self.settings.memory_budget_kb / 1024,
                flag: "--trace-memory-budget-mb",
            });
        }
        Ok(())
    }

    fn stop_after(&self, id: u64, generation: u64, d: Duration) {
        let me = self.me.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            if let Some(m) = me.upgrade() {
                if let Ok(s) = m.get(id) {
                    if s.lock().generation == generation {
                        info!(session = id, "trace time elapsed");
                        let _ = m.stop(id).await;
                    }
                }
            }
        });
    }

    /// Stops session `id` (a stopped one stays stopped). The session shows `Running: true`
    /// until its instance is gone, so a client that sees it stopped finds nothing left.
    pub async fn stop(self: &Arc<Self>, id: u64) -> Result<(), SessionError> {
        self.detached("stop", move |m| async move { m.stop_inner(id).await }).await
    }

    async fn stop_inner(&self, id: u64) -> Result<(), SessionError> {
        let s = self.get(id)?;
        let op = s.op.lock().await;
        if op.deleted {
            return Err(SessionError::NotFound(id.to_string()));
        }
        self.stop_locked(&s, false).await
    }

    /// Stops `s`; the caller holds its operation lock. With `deleting`, what the kernel still
    /// holds is thrown away instead of drained when nothing could ever see it (no export): the
    /// session's events go with it, and draining full buffers took 6 s per busy session.
    pub(super) async fn stop_locked(&self, s: &Arc<Session>, deleting: bool) -> Result<(), SessionError> {
        let id = s.id;
        let external = {
            let mut st = s.lock();
            st.generation += 1;
            match st.run {
                Some(Run::External(_)) => match st.run.take() {
                    Some(Run::External(ext)) => Some(ext),
                    _ => None,
                },
                _ => None,
            }
        };
        if let Some(ext) = external {
            let stderr = ext.stop().await;
            if !stderr.is_empty() {
                s.lock().error = Some(stderr);
            }
        } else {
            let (s2, m) = (s.clone(), self.me.upgrade().ok_or(SessionError::ShuttingDown)?);
            let discard = deleting && s.lock().export.is_none();
            tokio::task::spawn_blocking(move || m.end_ftrace_run(&s2, discard))
                .await
                .map_err(|source| SessionError::Task { what: "stop", source })?;
        }
        close_consumers(s);
        let stats = s.store.stats(false, 0, s.export.snapshot());
        info!(
            session = id,
            events_read = stats.events_read,
            events_lost_kernel = stats.events_lost_kernel,
            events_dropped = stats.events_dropped,
            events_exported = stats.events_exported,
            events_export_dropped = stats.events_export_dropped,
            "session stopped"
        );
        Ok(())
    }
}

/// How many of `sessions` run, and the distinct recordings they run on.
fn running(sessions: &[Arc<Session>]) -> (usize, Vec<Arc<Recording>>) {
    let mut running = 0;
    let mut recordings: Vec<Arc<Recording>> = Vec::new();
    for s in sessions {
        match &s.lock().run {
            Some(Run::Ftrace { recording, .. }) => {
                running += 1;
                if !recordings.iter().any(|r| Arc::ptr_eq(r, recording)) {
                    recordings.push(recording.clone());
                }
            }
            Some(Run::External(_)) => running += 1,
            None => {}
        }
    }
    (running, recordings)
}

/// A run's consumers are done once it ended: the exporter hears of the stop first, then its
/// queue closes (it sends the rest and ends the spans at the stop time, on its own time: a slow
/// collector does not hold us), and the followers' streams end.
fn close_consumers(s: &Session) {
    if let Some(export) = s.lock().export.take() {
        export.finish();
    }
    s.store.close_followers();
}

/// Name of the node's shared recording's instance (under the tracefs prefix).
const SHARED: &str = "rec";

impl SessionManager {
    /// A new resolver for a recording's threads.
    fn recording_resolver(&self) -> Arc<Resolver> {
        Arc::new(Resolver::new(self.registry.procfs().clone(), self.saved.clone()))
    }

    /// Joins `s` to the node's shared recording (opened for it when there is none) or, when
    /// its plan cannot share, to a recording of its own.
    fn join_recording(&self, s: &Session, plan: &FtracePlan) -> Result<(Arc<Recording>, Joined), StartFailure> {
        let buffer_kb = self.settings.buffer_kb;
        if !plan.shareable() {
            let rec = Recording::open(
                &self.tracefs,
                &s.id.to_string(),
                buffer_kb,
                plan.functions.as_deref(),
                true,
                self.recording_resolver(),
            )?;
            return match rec.join(&self.tracefs, s.id, plan, s.store.clone()) {
                Ok(j) => Ok((rec, j)),
                Err(e) => {
                    rec.shut();
                    Err(e)
                }
            };
        }
        // Joins and leaves of the shared recording take this lock, so a leave that finds it
        // empty and closes it cannot race a join.
        let mut shared = self.shared();
        let rec = match &*shared {
            Some(r) => r.clone(),
            None => {
                let r = Recording::open(&self.tracefs, SHARED, buffer_kb, None, false, self.recording_resolver())?;
                *shared = Some(r.clone());
                r
            }
        };
        match rec.join(&self.tracefs, s.id, plan, s.store.clone()) {
            Ok(j) => Ok((rec, j)),
            Err(e) => {
                if rec.sessions() == 0 {
                    rec.shut();
                    *shared = None;
                }
                Err(e)
            }
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Option<Arc<Recording>>> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends a built-in session's run, if it has one: its window closed at now, what was
    /// recorded up to then delivered to it (with `discard`, not waited for: nothing could see
    /// it), its slot withdrawn, its events released, and the recording closed when no session
    /// is left on it; only then is the run taken away, so a client that sees the session
    /// stopped finds nothing of it left in the kernel. Blocking; done without the session lock:
    /// GET, stats and /metrics answer meanwhile.
    fn end_ftrace_run(&self, s: &Session, discard: bool) {
        let (recording, slot) = match &s.lock().run {
            Some(Run::Ftrace { recording, slot }) => (recording.clone(), slot.clone()),
            _ => return,
        };
        s.store.add_lost_kernel(recording.close(&slot, discard));
        if recording.dedicated() {
            recording.shut();
        } else {
            let mut shared = self.shared();
            if let Ok(Plan::Ftrace(plan)) = &s.plan {
                recording.release(plan);
            }
            if recording.sessions() == 0 {
                recording.shut();
                if shared.as_ref().is_some_and(|r| Arc::ptr_eq(r, &recording)) {
                    *shared = None;
                }
            }
        }
        // Dropped outside the lock.
        let run = s.lock().run.take();
        drop(run);
    }

    /// Starts a built-in session's run; returns the plan's duration. Blocking; the caller holds
    /// the session's operation lock (no stop or delete meanwhile) but not its state lock, which
    /// is taken only to publish the run. From then on a container that registers is attached
    /// by [`SessionManager::registered`] and those listed at that moment are this start's to
    /// write: each is in the filter either way, and the procfs reads and filter writes (tens
    /// of ms each) keep no GET, stats or attachment waiting.
    fn start_ftrace(&self, s: &Session, plan: &FtracePlan) -> Result<Option<Duration>, StartFailure> {
        let (recording, Joined { slot, formats }) = self.join_recording(s, plan)?;
        let formats = Arc::new(formats);
        let containers: Vec<Attached> = {
            let mut st = s.lock();
            // Export is wired before the session's window opens, so it sees every event of the run.
            let export = self.settings.exporter.as_ref().map(|ex| {
                let ctx = SessionContext {
                    id: s.id,
                    trace_id: s.trace_id,
                    node: self.node.clone(),
                    service_name: ex.config().service_name.clone(),
                    hook: s.spec.trace_hook.clone(),
                    arguments: s.spec.trace_arguments.clone(),
                    user_context: s.spec.trace_user_context.clone(),
                    extra: ex.config().resource.clone(),
                };
                let containers = st
                    .containers
                    .values()
                    .map(|a| (a.tag.clone(), a.init, a.at_creation.then_some(a.created_unix_ns).filter(|t| *t > 0)))
                    .collect();
                let (sink, handle) = ex.start_session(ctx, formats.clone(), s.export.clone(), containers);
                s.store.add_sink(Box::new(sink));
                handle
            });
            let mut output = vec![
                format!("ftrace instance {}", recording.name()),
                format!("events: GET /v1/trace-session/{}/events", s.id),
            ];
            if export.is_some() {
                output.push(format!("OTLP trace id {}", crate::export::hex(&s.trace_id)));
            }
            st.output = Some(output);
            st.export = export;
            st.error = None;
            st.formats = formats;
            st.run = Some(Run::Ftrace { recording: recording.clone(), slot: slot.clone() });
            let containers: Vec<Attached> = st.containers.values().cloned().collect();
            // In the session's slot and known to the resolver before their threads are in
            // the filter: nothing they do from then on is missed.
            for a in &containers {
                slot.add_container(&a.tag.id);
                recording.resolver().add_container(a.init, a.tag.clone());
            }
            containers
        };
        // Only the containers whose threads the recording does not follow yet need a write:
        // with an empty filter the instance would record the whole host, so it records
        // nothing until its first container comes.
        let fresh: Vec<&Attached> = containers.iter().filter(|a| recording.hold(&a.tag.id)).collect();
        let tids: Vec<u32> =
            fresh.iter().flat_map(|a| container_tids(&self.registry, a, recording.resolver())).collect();
        if !tids.is_empty() {
            let filter = recording.filter();
            if let Err(e) = filter.commit(filter.push(&tids)) {
                for a in &fresh {
                    recording.unhold(&a.tag.id);
                }
                self.end_ftrace_run(s, true);
                close_consumers(s);
                return Err(StartFailure::PidFilter(e));
            }
            // Threads forked between the first look and the filter write were not in the filter
            // (nor followed, their parents not being in it yet): those still running are added now.
            let seen: std::collections::HashSet<u32> = tids.iter().copied().collect();
            let late: Vec<u32> = fresh
                .iter()
                .flat_map(|a| container_tids(&self.registry, a, recording.resolver()))
                .filter(|t| !seen.contains(t))
                .collect();
            if !late.is_empty() {
                if let Err(e) = filter.commit(filter.push(&late)) {
                    warn!(session = s.id, error = %e, threads = late.len(), "cannot add threads forked during the start");
                }
            }
        }
        slot.open_at(monotonic_ns());
        info!(session = s.id, instance = %recording.name(), sessions = recording.sessions(), threads = tids.len(), "session recording");
        Ok(plan.duration)
    }
}
