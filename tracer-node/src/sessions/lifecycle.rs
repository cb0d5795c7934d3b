//! Starting and stopping sessions' runs: the kernel side of a built-in hook (one ftrace
//! instance, its readers and its pid filter) or an external hook's process.

use std::{sync::Arc, time::Duration};

use tracer_api::v1::SessionStats;
use tracing::{info, warn};

use super::{
    attach::container_tids,
    events,
    pid_filter::PidFilter,
    program::{overrun, program, StartFailure},
    Attached, Run, Session, SessionError, SessionManager, Settings,
};
use crate::{
    export::model::SessionContext,
    ftrace::{reader::Readers, Tracefs},
    hooks::{FtracePlan, Plan},
    registry::Registry,
};

impl SessionManager {
    /// (sessions, running sessions, kernel overrun of the runs in progress). The per-CPU stats
    /// files are read on a blocking thread, with no session lock held.
    pub async fn gauges(&self) -> (u64, u64, u64) {
        let sessions: Vec<Arc<Session>> = self.map().values().cloned().collect();
        let mut running = 0;
        let mut instances = Vec::new();
        for s in &sessions {
            match &s.lock().run {
                Some(Run::Ftrace { filter, .. }) => {
                    running += 1;
                    instances.push(filter.instance().clone());
                }
                Some(Run::External(_)) => running += 1,
                None => {}
            }
        }
        let overruns = if instances.is_empty() {
            0
        } else {
            tokio::task::spawn_blocking(move || instances.iter().map(|i| overrun(i)).sum()).await.unwrap_or(0)
        };
        (sessions.len() as u64, running, overruns)
    }

    /// The session's statistics (per-CPU stats files read as in [`Self::gauges`]).
    pub async fn stats(&self, id: u64) -> Result<SessionStats, SessionError> {
        let s = self.get(id)?;
        let (running, instance) = {
            let st = s.lock();
            let instance = match &st.run {
                Some(Run::Ftrace { filter, .. }) => Some(filter.instance().clone()),
                _ => None,
            };
            (st.run.is_some(), instance)
        };
        let live = match instance {
            Some(i) => tokio::task::spawn_blocking(move || overrun(&i)).await.unwrap_or(0),
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
        self.check_running_limits()?;
        let result = match s.plan.clone() {
            Err(reason) => Err(StartFailure::Unusable(reason)),
            Ok(Plan::Ftrace(plan)) => {
                let (s2, tracefs, registry, settings, node) =
                    (s.clone(), self.tracefs.clone(), self.registry.clone(), self.settings.clone(), self.node.clone());
                tokio::task::spawn_blocking(move || start_ftrace(&s2, &plan, &tracefs, &registry, &settings, &node))
                    .await
                    .map_err(|source| SessionError::Task { what: "start", source })?
            }
            Ok(Plan::External { provider, hook, args }) => {
                // The containers are listed under the lock, their threads read from procfs
                // without it.
                let containers: Vec<Attached> = s.lock().containers.values().cloned().collect();
                let tids: Vec<u32> =
                    containers.iter().flat_map(|a| container_tids(&self.registry, a, &s.resolver)).collect();
                match provider.run(&hook, &args, &tids, id).await {
                    Ok(run) => {
                        let mut st = s.lock();
                        st.output = Some(vec![run.output.clone()]);
                        st.error = None;
                        st.run = Some(Run::External(run));
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

    /// Refuses a start when the running sessions are at `--max-running-sessions`, or when one
    /// more ring buffer would pass the kernel memory budget. The caller holds the start gate.
    fn check_running_limits(&self) -> Result<(), SessionError> {
        let running = self.map().values().filter(|s| s.lock().run.is_some()).count();
        if running >= self.settings.max_running {
            return Err(SessionError::Limit {
                what: "too many running trace sessions on this node",
                limit: self.settings.max_running as u64,
                flag: "--max-running-sessions",
            });
        }
        let per_run = self.settings.buffer_kb.saturating_mul(self.cpus);
        if (running as u64 + 1).saturating_mul(per_run) > self.settings.memory_budget_kb {
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
            let s2 = s.clone();
            let discard = deleting && s.lock().export.is_none();
            tokio::task::spawn_blocking(move || end_ftrace_run(&s2, discard))
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

/// A run's consumers are done once it ended: the exporter hears of the stop first, then its
/// queue closes (it sends the rest and ends the spans at the stop time, on its own time: a slow
/// collector does not hold us), and the followers' streams end.
fn close_consumers(s: &Session) {
    if let Some(export) = s.lock().export.take() {
        export.finish();
    }
    s.store.close_followers();
}

/// Ends a built-in session's run, if it has one: the filter closed (no attachment writes to it
/// nor turns recording on from then on), recording off, the readers drained (they need the
/// instance open) and joined, then the instance removed, and only then the run taken away, so
/// a client that sees the session stopped finds nothing left in the kernel. With `discard`
/// what the kernel still holds is thrown away instead of read. Blocking; the kernel work is
/// done without the session lock (removal retries EBUSY for seconds at worst): GET, stats and
/// /metrics answer meanwhile, and show the session running until its instance is gone.
fn end_ftrace_run(s: &Session, discard: bool) {
    let (filter, readers) = match &mut s.lock().run {
        Some(Run::Ftrace { filter, readers }) => (filter.clone(), readers.take()),
        _ => return,
    };
    filter.close();
    let instance = filter.instance();
    let _ = instance.set_tracing_on(false);
    if discard {
        let _ = instance.clear_buffers();
    }
    if let Some(r) = readers {
        r.stop_and_join();
    }
    s.store.add_lost_kernel(overrun(instance));
    if let Err(e) = instance.remove() {
        warn!(session = s.id, error = %e, "cannot remove the ftrace instance");
    }
    // Dropped outside the lock: an instance whose removal failed is retried by Drop.
    let run = s.lock().run.take();
    drop(run);
}

/// Starts a built-in session's run; returns the plan's duration. Blocking; the caller holds the
/// session's operation lock (no stop or delete meanwhile) but not its state lock, which is
/// taken only to publish the run. From then on a container that registers is attached by
/// [`SessionManager::registered`] and those listed at that moment are this start's to write:
/// each is in the filter either way, and the procfs reads and filter writes (tens of ms each)
/// keep no GET, stats or attachment waiting.
fn start_ftrace(
    s: &Session,
    plan: &FtracePlan,
    tracefs: &Tracefs,
    registry: &Registry,
    settings: &Settings,
    node: &str,
) -> Result<Option<Duration>, StartFailure> {
    let p = program(tracefs, &s.id.to_string(), plan, settings.buffer_kb, s.id)?;
    let instance = Arc::new(p.instance);
    let from_ts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let decoding = events::Decoding {
        header: p.header,
        exec_ids: Arc::new(p.exec_ids),
        fork: p.fork,
        exit: p.exit,
        hidden: Arc::new(p.hidden),
        from_ts: from_ts.clone(),
    };
    let (resolver, store) = (s.resolver.clone(), s.store.clone());
    let readers = Readers::start(&instance, p.page_size, |cpu, progress| {
        events::page_consumer(cpu, decoding.clone(), resolver.clone(), store.clone(), progress)
    })
    .map_err(StartFailure::kernel("ring-buffer readers"))?;
    let formats = Arc::new(p.formats);
    let filter = Arc::new(PidFilter::new(instance.clone(), p.functions, p.mono, from_ts));
    let containers: Vec<Attached> = {
        let mut st = s.lock();
        // Export is wired before recording starts, so it sees every event of the run.
        let export = settings.exporter.as_ref().map(|ex| {
            let ctx = SessionContext {
                id: s.id,
                trace_id: s.trace_id,
                node: node.to_owned(),
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
            format!("ftrace instance {}", instance.name()),
            format!("events: GET /v1/trace-session/{}/events", s.id),
        ];
        if export.is_some() {
            output.push(format!("OTLP trace id {}", crate::export::hex(&s.trace_id)));
        }
        st.output = Some(output);
        st.export = export;
        st.error = None;
        st.formats = formats;
        st.run = Some(Run::Ftrace { filter: filter.clone(), readers: Some(readers) });
        st.containers.values().cloned().collect()
    };
    // With no thread yet the run records nothing until its first container comes: an empty
    // filter would record the whole host.
    let tids: Vec<u32> = containers.iter().flat_map(|a| container_tids(registry, a, &s.resolver)).collect();
    if !tids.is_empty() {
        if let Err(e) = filter.commit(filter.push(&tids)) {
            end_ftrace_run(s, true);
            close_consumers(s);
            return Err(StartFailure::PidFilter(e));
        }
        // Threads forked between the first look and the filter write were not in the filter
        // (nor followed, their parents not being in it yet): those still running are added now.
        let seen: std::collections::HashSet<u32> = tids.iter().copied().collect();
        let late: Vec<u32> = containers
            .iter()
            .flat_map(|a| container_tids(registry, a, &s.resolver))
            .filter(|t| !seen.contains(t))
            .collect();
        if !late.is_empty() {
            if let Err(e) = filter.commit(filter.push(&late)) {
                warn!(session = s.id, error = %e, threads = late.len(), "cannot add threads forked during the start");
            }
        }
    }
    info!(session = s.id, instance = %instance.name(), threads = tids.len(), "ftrace instance recording");
    Ok(plan.duration)
}
