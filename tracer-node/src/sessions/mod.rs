//! Trace sessions: a set of containers (chosen by pod and container patterns, and kept up to
//! date as containers come and go), one trace hook with its arguments, a user context, and a
//! running state. A running built-in session is one ftrace instance of ours, filtered to every
//! thread of its containers, read losslessly through the per-CPU raw pipes.

pub mod events;
pub mod glob;
pub mod lineage;
pub mod pid_filter;
pub mod resolver;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use futures_util::StreamExt;
use tracer_api::v1::{NewSession, SessionInfo, SessionStats};
use tracing::{error, info, warn};

use self::{
    events::{ContainerTag, EventStore},
    pid_filter::PidFilter,
    resolver::{Resolver, SavedTasks},
};
use crate::{
    export::{model::SessionContext, ExportCounters, Exporter, SessionExport},
    ftrace::{format::EventFormat, reader::Readers, Instance, Tracefs},
    hooks::{external::RunningExternal, Catalog, FtracePlan, HookError, Plan},
    metrics::Metrics,
    registry::{Entry, Registry, RegistryObserver},
};

/// Why a session request failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No session with that id.
    #[error("no trace session {0}")]
    NotFound(String),
    /// The id is not a decimal u64 (or `all` where that is allowed).
    #[error("{0:?} is not a session id")]
    BadId(String),
    /// A pattern or another field is unusable.
    #[error("{0}")]
    Invalid(String),
    /// The patterns match no container (and the request did not ask to wait for one).
    #[error("no container matches pod {pod:?} and container {container:?}")]
    NoMatch {
        /// Pod pattern.
        pod: String,
        /// Container pattern.
        container: String,
    },
    /// The hook or its arguments.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// Start of a session that runs already.
    #[error("trace session {0} is already running")]
    AlreadyRunning(u64),
    /// The hook could not start; the reason is also in the session's `Error`.
    #[error("trace session {id} could not start: {reason}")]
    StartFailed {
        /// Session id.
        id: u64,
        /// Why.
        reason: String,
    },
    /// The kernel is short of memory or busy: the start may work later.
    #[error("trace session {id} could not start, the kernel is short of resources: {reason}")]
    KernelShort {
        /// Session id.
        id: u64,
        /// The kernel's reason.
        reason: String,
    },
    /// A limit of the node is reached.
    #[error("{what}: the limit is {limit} ({flag})")]
    Limit {
        /// What is at its limit.
        what: &'static str,
        /// The limit.
        limit: u64,
        /// The flag that sets it.
        flag: &'static str,
    },
    /// A fault of ours.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Tunables of every session.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Per-CPU ring buffer of each instance, in KiB.
    pub buffer_kb: u64,
    /// Events a session keeps for `GET .../events`.
    pub retention_events: usize,
    /// Sessions kept at most.
    pub max_sessions: usize,
    /// Sessions running at once at most.
    pub max_running: usize,
    /// Kernel memory (KiB) all running sessions' ring buffers may take.
    pub memory_budget_kb: u64,
    /// OTLP export of running sessions, when configured.
    pub exporter: Option<Arc<Exporter>>,
    /// The node's counters.
    pub metrics: Arc<Metrics>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            buffer_kb: 8192,
            retention_events: 262_144,
            max_sessions: 256,
            max_running: 32,
            memory_budget_kb: 1024 * 1024,
            exporter: None,
            metrics: Arc::default(),
        }
    }
}

#[derive(Debug, Clone)]
struct Attached {
    tag: Arc<ContainerTag>,
    init: u32,
    cgroup: Option<std::path::PathBuf>,
}

enum Run {
    /// The filter (and through it the instance) is shared so that statistics are read and
    /// threads added without the session lock. A stop takes `readers` first and then closes
    /// the filter: from then on nothing is added to the instance.
    Ftrace {
        filter: Arc<PidFilter>,
        readers: Option<Readers>,
    },
    External(RunningExternal),
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Run::Ftrace { filter, .. } => write!(f, "Ftrace({filter:?})"),
            Run::External(_) => write!(f, "External"),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    containers: BTreeMap<String, Attached>,
    run: Option<Run>,
    generation: u64,
    output: Option<Vec<String>>,
    error: Option<Vec<String>>,
    formats: Arc<HashMap<u16, EventFormat>>,
    export: Option<SessionExport>,
}

/// One session.
#[derive(Debug)]
pub struct Session {
    /// The id.
    pub id: u64,
    spec: NewSession,
    plan: Plan,
    store: Arc<EventStore>,
    resolver: Arc<Resolver>,
    /// The OTLP trace of the session (all its runs).
    trace_id: [u8; 16],
    export: Arc<ExportCounters>,
    state: Mutex<State>,
    /// Serialises start, stop and delete of this session. It guards whether the session is
    /// deleted: a start that waited for it while a delete ran must find that out under it,
    /// or it would create an instance (and reader threads) that no one can ever stop.
    op: tokio::sync::Mutex<Lifecycle>,
}

/// What the session's operation lock guards.
#[derive(Debug, Default)]
struct Lifecycle {
    deleted: bool,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The retained events and decoding tables, for the events endpoint.
    pub fn events(&self) -> (Arc<EventStore>, Arc<HashMap<u16, EventFormat>>) {
        (self.store.clone(), self.lock().formats.clone())
    }

    /// The one namespace the session can select containers in: its pod pattern is
    /// `<namespace>/<pod pattern>` with a namespace free of wildcards. `None`: any namespace.
    pub fn namespace(&self) -> Option<&str> {
        namespace_of(&self.spec.pod)
    }

    fn matches(&self, e: &Entry) -> bool {
        let r = &e.record;
        e.is_workload()
            && (glob::matches(&self.spec.pod, &r.pod)
                || glob::matches(&self.spec.pod, &format!("{}/{}", r.namespace, r.pod)))
            && glob::matches(&self.spec.container, &r.name)
    }
}

/// All sessions of this node.
#[derive(Debug)]
pub struct SessionManager {
    node: String,
    tracefs: Tracefs,
    catalog: Arc<Catalog>,
    registry: Arc<Registry>,
    settings: Settings,
    sessions: Mutex<BTreeMap<u64, Arc<Session>>>,
    /// What the kernel remembers of gone threads, shared by every session's resolver.
    saved: Arc<SavedTasks>,
    /// Held from the check of the running limits to the end of a start, so two starts cannot
    /// both take the last place.
    start_gate: tokio::sync::Mutex<()>,
    /// CPUs with a ring buffer in each instance.
    cpus: u64,
    me: Weak<SessionManager>,
}

/// The namespace a pod pattern is confined to (see [`Session::namespace`]).
pub fn namespace_of(pod_pattern: &str) -> Option<&str> {
    let (ns, _) = pod_pattern.split_once('/')?;
    (!ns.is_empty() && !ns.contains(['*', '?'])).then_some(ns)
}

/// Parses a session id.
pub fn parse_id(s: &str) -> Result<u64, SessionError> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SessionError::BadId(s.chars().take(64).collect()));
    }
    s.parse().map_err(|_| SessionError::BadId(s.to_owned()))
}

fn check_pattern(what: &str, p: &str) -> Result<(), SessionError> {
    if p.is_empty() || p.len() > 253 || p.chars().any(char::is_control) {
        return Err(SessionError::Invalid(format!("{what} pattern must be 1 to 253 printable characters")));
    }
    Ok(())
}

/// Every thread id of a container's processes, each also told to the session's resolver: a
/// thread alive now may be gone by the time its events are read, and its fork was before the
/// run (so no fork event ties it to its container).
fn container_tids(registry: &Registry, a: &Attached, resolver: &Resolver) -> Vec<u32> {
    let tids = threads_of(registry, a.init, a.cgroup.as_deref());
    resolver.known_threads(a.init, &tids);
    tids
}

fn threads_of(registry: &Registry, init: u32, cgroup: Option<&std::path::Path>) -> Vec<u32> {
    let procfs = registry.procfs();
    procfs.tasks(init, cgroup).into_iter().flat_map(|pid| procfs.threads(pid)).collect()
}

impl SessionManager {
    /// A manager for `node`, registered as the registry's observer so that containers are
    /// attached to running sessions while their creation hook still waits.
    pub fn new(
        node: String,
        tracefs: Tracefs,
        catalog: Arc<Catalog>,
        registry: Arc<Registry>,
        settings: Settings,
    ) -> Arc<Self> {
        let saved = Arc::new(SavedTasks::new(Some(tracefs.root().to_owned())));
        let cpus = std::fs::read_dir(tracefs.root().join("per_cpu"))
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("cpu")).count() as u64)
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64));
        let m = Arc::new_cyclic(|me| SessionManager {
            node,
            tracefs,
            catalog,
            registry: registry.clone(),
            settings,
            sessions: Mutex::new(BTreeMap::new()),
            saved: saved.clone(),
            start_gate: tokio::sync::Mutex::new(()),
            cpus,
            me: me.clone(),
        });
        let observer: Weak<dyn RegistryObserver> = Arc::downgrade(&m) as Weak<dyn RegistryObserver>;
        registry.set_observer(observer);
        m
    }

    /// The hook catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session `id`.
    pub fn get(&self, id: u64) -> Result<Arc<Session>, SessionError> {
        self.map().get(&id).cloned().ok_or_else(|| SessionError::NotFound(id.to_string()))
    }

    fn new_id(&self) -> u64 {
        let map = self.map();
        loop {
            let id = crate::ids::session_id();
            if !map.contains_key(&id) {
                return id;
            }
        }
    }

    /// Creates a session (not started). Fails, leaving nothing behind, on a bad pattern, hook
    /// or argument, or when nothing matches and `wait-for-containers` is not set.
    pub fn create(&self, spec: NewSession) -> Result<SessionInfo, SessionError> {
        check_pattern("pod", &spec.pod)?;
        check_pattern("container", &spec.container)?;
        if spec.trace_arguments.len() > 16 * 1024 || spec.trace_user_context.len() > 64 * 1024 {
            return Err(SessionError::Invalid("trace-arguments or trace-user-context too long".into()));
        }
        let plan = self.catalog.plan(&spec.trace_hook, &spec.trace_arguments)?;
        if self.map().len() >= self.settings.max_sessions {
            return Err(SessionError::Limit {
                what: "too many trace sessions on this node",
                limit: self.settings.max_sessions as u64,
                flag: "--max-sessions",
            });
        }
        let id = self.new_id();
        let session = Arc::new(Session {
            id,
            spec,
            plan,
            store: Arc::new(EventStore::new(self.settings.retention_events, self.settings.metrics.clone())),
            resolver: Arc::new(Resolver::new(self.registry.procfs().clone(), self.saved.clone())),
            trace_id: crate::ids::trace_id(),
            export: Arc::new(ExportCounters::new(self.settings.metrics.clone())),
            state: Mutex::new(State::default()),
            op: tokio::sync::Mutex::new(Lifecycle::default()),
        });
        // In the map first, then the current containers: one registering meanwhile is seen by
        // `registered` or by this snapshot, possibly both (attaching is idempotent).
        self.map().insert(id, session.clone());
        for e in self.registry.snapshot() {
            if session.matches(&e) {
                // A new session does not run: there is no filter to write.
                let _ = self.attach(&session, &e);
            }
        }
        if session.lock().containers.is_empty() && !session.spec.wait_for_containers {
            self.map().remove(&id);
            return Err(SessionError::NoMatch {
                pod: session.spec.pod.clone(),
                container: session.spec.container.clone(),
            });
        }
        info!(session = id, hook = %session.spec.trace_hook, pod = %session.spec.pod, container = %session.spec.container, "session created");
        Ok(self.info(&session))
    }

    /// The session's wire form.
    pub fn info(&self, s: &Session) -> SessionInfo {
        let mut st = s.lock();
        // An external hook that died on its own is not running any more.
        if let Some(Run::External(ext)) = &mut st.run {
            if ext.exited() {
                let stderr = ext.stderr();
                st.run = None;
                st.error = Some(if stderr.is_empty() { vec!["the trace hook exited".into()] } else { stderr });
            }
        }
        let mut containers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for a in st.containers.values() {
            containers.entry(a.tag.pod.clone()).or_default().push(a.tag.name.clone());
        }
        SessionInfo {
            containers,
            context: s.spec.trace_user_context.clone(),
            error: st.error.clone(),
            id: s.id.to_string(),
            node: self.node.clone(),
            output: st.output.clone(),
            running: st.run.is_some(),
            trace_hook: s.spec.trace_hook.clone(),
            trace_params: s.spec.trace_arguments.split_whitespace().map(str::to_owned).collect(),
        }
    }

    /// Every session now, in the order of their ids as the wire has them (decimal strings), as
    /// a map of `Sessions` is ordered.
    pub fn list(&self) -> Vec<Arc<Session>> {
        let mut sessions: Vec<(String, Arc<Session>)> =
            self.map().values().map(|s| (s.id.to_string(), s.clone())).collect();
        sessions.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        sessions.into_iter().map(|(_, s)| s).collect()
    }

    /// CPUs with a ring buffer: a running session holds one of each per-CPU file per CPU.
    pub fn cpus(&self) -> u64 {
        self.cpus
    }

    /// The node's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.settings.metrics
    }

    /// The exporter, when export is configured.
    pub fn exporter(&self) -> Option<&Arc<Exporter>> {
        self.settings.exporter.as_ref()
    }

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

    /// Adds a container to a session; answers the session's pid filter when it runs, for the
    /// caller to add the container's threads to.
    fn attach(&self, s: &Session, e: &Entry) -> Option<Arc<PidFilter>> {
        let r = &e.record;
        let tag = Arc::new(ContainerTag {
            id: r.id.clone(),
            pod: r.pod.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            runtime: r.runtime.clone().unwrap_or_default(),
        });
        let a = Attached { tag: tag.clone(), init: r.pid, cgroup: e.cgroup.clone() };
        let mut st = s.lock();
        if st.containers.contains_key(&r.id) {
            return None;
        }
        s.resolver.add_container(r.pid, tag.clone());
        if let Some(export) = &st.export {
            // Attached while running means attached at its creation (or its late
            // registration): its span starts when the runtime created it.
            let at = if r.created_unix_ns > 0 { r.created_unix_ns } else { crate::export::model::unix_now() };
            export.container_started(tag, r.pid, at, true);
        }
        let filter = match &st.run {
            Some(Run::Ftrace { filter, readers: Some(_) }) => Some(filter.clone()),
            Some(Run::External(_)) => {
                warn!(session = s.id, container_id = %r.id, "external hooks cannot take new containers while running; attached at next start");
                None
            }
            _ => None,
        };
        // Listed before its threads are filtered: a start that comes next programs it, and
        // a run in progress gets them from the caller.
        st.containers.insert(r.id.clone(), a);
        filter
    }

    /// Starts session `id`. Runs as a task of its own: a client that hangs up must not cancel
    /// a start halfway (instance made, no timer set).
    pub async fn start(self: &Arc<Self>, id: u64) -> Result<(), SessionError> {
        self.detached("start", move |m| async move { m.start_inner(id).await }).await
    }

    /// Runs a lifecycle operation as a task of its own and waits for it: dropping the caller's
    /// future (a client that hung up) then cannot leave the operation half done.
    async fn detached<F, Fut>(self: &Arc<Self>, what: &'static str, op: F) -> Result<(), SessionError>
    where
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: std::future::Future<Output = Result<(), SessionError>> + Send + 'static,
    {
        tokio::spawn(op(self.clone())).await.map_err(|e| SessionError::Internal(format!("{what} task: {e}")))?
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
            Plan::Ftrace(plan) => {
                let (s2, tracefs, registry, settings, node) =
                    (s.clone(), self.tracefs.clone(), self.registry.clone(), self.settings.clone(), self.node.clone());
                tokio::task::spawn_blocking(move || start_ftrace(&s2, &plan, &tracefs, &registry, &settings, &node))
                    .await
                    .map_err(|e| SessionError::Internal(format!("start task: {e}")))?
            }
            Plan::External { provider, hook, args } => {
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
                    Err(lines) => Err(StartFailure::from(lines.join("; "))),
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
            Err(StartFailure { reason, kernel_short }) => {
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
    async fn stop_locked(&self, s: &Arc<Session>, deleting: bool) -> Result<(), SessionError> {
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
            tokio::task::spawn_blocking(move || {
                // The kernel work is done without the session lock (removal retries EBUSY for
                // seconds at worst): GET, stats and /metrics answer meanwhile, and show the
                // session running until its instance is gone.
                let (instance, readers) = match &mut s2.lock().run {
                    Some(Run::Ftrace { filter, readers }) => (Some(filter.clone()), readers.take()),
                    _ => (None, None),
                };
                // No attachment writes to the filter (nor turns recording on) from here on.
                let instance = instance.map(|f| {
                    f.close();
                    f.instance().clone()
                });
                // Recording off and the readers drained first (they need the instance open)...
                if let Some(instance) = &instance {
                    let _ = instance.set_tracing_on(false);
                    if discard {
                        let _ = instance.clear_buffers();
                    }
                }
                if let Some(r) = readers {
                    r.stop_and_join();
                }
                // ...then the instance removed, and only then the session marked stopped.
                if let Some(instance) = instance {
                    s2.store.add_lost_kernel(overrun(&instance));
                    if let Err(e) = instance.remove() {
                        warn!(session = s2.id, error = %e, "cannot remove the ftrace instance");
                    }
                }
                // Dropped outside the lock: an instance whose removal failed is retried by Drop.
                let run = s2.lock().run.take();
                drop(run);
            })
            .await
            .map_err(|e| SessionError::Internal(format!("stop task: {e}")))?;
        }
        // The exporter hears of the stop first, then its queue closes: it sends the rest and
        // ends the spans at the stop time, on its own time (a slow collector does not hold us).
        if let Some(export) = s.lock().export.take() {
            export.finish();
        }
        s.store.close_followers();
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

    /// Deletes session `id`, stopping it first. Marked deleted under its operation lock, so
    /// a start waiting behind this delete fails with 404 instead of starting a lost run.
    pub async fn delete(self: &Arc<Self>, id: u64) -> Result<(), SessionError> {
        self.detached("delete", move |m| async move { m.delete_inner(id).await }).await
    }

    async fn delete_inner(&self, id: u64) -> Result<(), SessionError> {
        let s = self.get(id)?;
        let mut op = s.op.lock().await;
        if op.deleted {
            return Err(SessionError::NotFound(id.to_string()));
        }
        op.deleted = true;
        let stopped = self.stop_locked(&s, true).await;
        self.map().remove(&id);
        drop(op);
        info!(session = id, "session deleted");
        stopped
    }

    /// Deletes every session and resets the tracing subsystems: no instance of ours is left.
    pub async fn delete_all(self: &Arc<Self>) -> Result<(), SessionError> {
        let ids: Vec<u64> = self.map().keys().copied().collect();
        // A few at once: each stop waits on its reader threads and on rmdir's RCU grace
        // periods more than on the CPU (300 sessions one by one took 12 s).
        futures_util::stream::iter(ids)
            .map(|id| async move {
                if let Err(e) = self.delete(id).await {
                    warn!(session = id, error = %e, "delete failed");
                }
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect::<()>()
            .await;
        let tracefs = self.tracefs.clone();
        tokio::task::spawn_blocking(move || tracefs.remove_stale_instances())
            .await
            .map_err(|e| SessionError::Internal(e.to_string()))?
            .map_err(|e| SessionError::Internal(e.to_string()))?;
        for p in self.catalog.external() {
            p.clear().await;
        }
        Ok(())
    }
}

/// Sessions `delete_all` stops at once.
const DELETE_CONCURRENCY: usize = 8;

/// CLOCK_MONOTONIC now, in ns: the instances' `mono` trace clock.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// Why a start failed, and whether the kernel was only short of resources then.
#[derive(Debug)]
struct StartFailure {
    reason: String,
    kernel_short: bool,
}

impl From<String> for StartFailure {
    fn from(reason: String) -> Self {
        Self { reason, kernel_short: false }
    }
}

impl StartFailure {
    fn kernel(what: &str, e: &crate::ftrace::TracefsError) -> Self {
        Self { reason: format!("{what}: {e}"), kernel_short: e.is_kernel_short() }
    }
}

fn overrun(instance: &Instance) -> u64 {
    instance.cpus().unwrap_or_default().into_iter().map(|c| instance.overrun(c).unwrap_or(0)).sum()
}

/// Sets up the instance of a built-in session and starts its readers; returns the plan's
/// duration. Runs on a blocking thread; holds the session's state lock so that a container
/// registering meanwhile is either in the initial pid list or added afterwards, never lost.
fn start_ftrace(
    s: &Session,
    plan: &FtracePlan,
    tracefs: &Tracefs,
    registry: &Registry,
    settings: &Settings,
    node: &str,
) -> Result<Option<Duration>, StartFailure> {
    // The instance is programmed without the session lock (enabling a few hundred events takes
    // the kernel 100 ms and more): GET, stats and attach do not wait for it. The operation lock
    // the caller holds keeps stops and deletes out; a container attached meanwhile is in
    // `containers` when the lock is taken below.
    let instance =
        Instance::create(tracefs, &s.id.to_string()).map_err(|e| StartFailure::kernel("ftrace instance", &e))?;
    let step = |what: &str, r: Result<(), crate::ftrace::TracefsError>| r.map_err(|e| StartFailure::kernel(what, &e));
    step("buffer size", instance.write("buffer_size_kb", &settings.buffer_kb.to_string()))?;
    // The monotonic clock, so timestamps can be converted to wall time (and compared across CPUs).
    let mono = match instance.write("trace_clock", "mono") {
        Ok(()) => true,
        Err(e) => {
            warn!(session = s.id, error = %e, "cannot use the mono trace clock; keeping the default");
            false
        }
    };
    step("event-fork option", instance.set_option("event-fork", true))?;
    // The kernel then remembers each thread's process, for threads gone before we look.
    if let Err(e) = instance.set_option("record-tgid", true) {
        warn!(session = s.id, error = %e, "cannot set record-tgid; exited threads show tgid = pid");
    }
    let mut formats = HashMap::new();
    let functions = plan.functions.is_some();
    let refused = |what: &str, e: crate::ftrace::TracefsError| {
        format!("the kernel refused the function tracer ({what}: {e}); kernels in lockdown do not allow it")
    };
    if let Some(list) = &plan.functions {
        instance.set_option("function-fork", true).map_err(|e| refused("function-fork", e))?;
        if !list.is_empty() {
            instance.write("set_ftrace_filter", &list.join(" ")).map_err(|e| refused("set_ftrace_filter", e))?;
        }
        instance.write("current_tracer", "function").map_err(|e| refused("current_tracer", e))?;
        match tracefs.event_format("ftrace", "function") {
            Ok(f) => {
                formats.insert(f.id, f);
            }
            Err(e) => warn!(session = s.id, error = %e, "function event format unreadable"),
        }
    }

    for sel in &plan.events {
        let names: Vec<String> = match &sel.event {
            Some(e) => vec![e.clone()],
            None => std::fs::read_dir(tracefs.root().join("events").join(&sel.system))
                .map_err(|e| format!("events/{}: {e}", sel.system))?
                .flatten()
                .filter(|d| d.path().is_dir())
                .map(|d| d.file_name().to_string_lossy().into_owned())
                .collect(),
        };
        for name in names {
            match tracefs.event_format(&sel.system, &name) {
                Ok(f) => {
                    formats.insert(f.id, f);
                }
                Err(e) => warn!(session = s.id, error = %e, "event format unreadable; its events are shown undecoded"),
            }
        }
        let target = sel.event.as_deref().map_or(sel.system.clone(), |e| format!("{}:{e}", sel.system));
        step(&format!("kernel refused to enable {target}"), instance.enable_event(&sel.system, sel.event.as_deref()))?;
        if let (Some(expr), Some(e)) = (&plan.filter, &sel.event) {
            step(&format!("kernel refused the filter on {target}"), instance.set_filter(&sel.system, e, expr))?;
        }
    }
    let header = tracefs.page_header().map_err(|e| e.to_string())?;
    let page_size = instance
        .read("buffer_subbuf_size_kb")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(header.data_offset + header.data_size, |kb| kb * 1024);
    // Fork and exit events tie the threads that are gone before their events are read to their
    // containers: recorded in every run, shown only when the hook asked for them.
    let mut hidden = Vec::new();
    let mut lineage = |name: &str| -> Result<Option<EventFormat>, StartFailure> {
        let format = match tracefs.event_format("sched", name) {
            Ok(f) => f,
            Err(e) => {
                warn!(session = s.id, error = %e, "no {name} format; exited processes may lose their container");
                return Ok(None);
            }
        };
        if !formats.contains_key(&format.id) {
            step(name, instance.enable_event("sched", Some(name)))?;
            hidden.push(format.id);
        }
        Ok(Some(format))
    };
    let fork = lineage("sched_process_fork")?.as_ref().and_then(events::ForkEvent::from_format);
    let exit = lineage("sched_process_exit")?.as_ref().map(events::ExitEvent::from_format);
    let exec_ids: Arc<Vec<u16>> = Arc::new(
        formats
            .values()
            .filter(|f| matches!(f.name.as_str(), "sched_process_exec" | "sys_exit_execve" | "sys_exit_execveat"))
            .map(|f| f.id)
            .collect(),
    );
    let mut st = s.lock();
    let (resolver, store) = (s.resolver.clone(), s.store.clone());
    let from_ts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let decoding =
        events::Decoding { header, exec_ids, fork, exit, hidden: Arc::new(hidden), from_ts: from_ts.clone() };
    let readers = Readers::start(&instance, page_size, |cpu, progress| {
        events::page_consumer(cpu, decoding.clone(), resolver.clone(), store.clone(), progress)
    })
    .map_err(|e| e.to_string())?;
    // With an empty filter the instance would record every thread on the host: recording
    // starts only once the session has a thread to trace.
    let formats = Arc::new(formats);
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
        let containers = st.containers.values().map(|a| (a.tag.clone(), a.init)).collect();
        let (sink, handle) = ex.start_session(ctx, formats.clone(), s.export.clone(), containers);
        s.store.add_sink(sink);
        handle
    });
    // Recording starts before the pid filter exists (then the kernel records every thread),
    // and the filter is written as the instance's first list. A later write that replaces a
    // list leaves, for a whole RCU grace period, running tasks in the new list whose forks are
    // still ignored: their children would be recorded with no fork to tie them to their
    // container. Events before the write returned are not shown (the host's of that moment),
    // but the readers follow their forks and exits. Without the mono clock the timestamps
    // cannot be compared with ours: then the filter goes first and recording after it.
    let tids: Vec<u32> = st.containers.values().flat_map(|a| container_tids(registry, a, &s.resolver)).collect();
    let recording = !tids.is_empty();
    let pid_filter =
        |tids: &[u32]| instance.add_pids(tids, functions).map_err(|e| StartFailure::kernel("pid filter", &e));
    let tracing_on = || instance.set_tracing_on(true).map_err(|e| StartFailure::kernel("tracing_on", &e));
    let started = match (recording, mono) {
        (false, _) => Ok(()),
        (true, true) => tracing_on().and_then(|()| pid_filter(&tids)),
        (true, false) => pid_filter(&tids).and_then(|()| tracing_on()),
    };
    // From here on the filter holds, whatever the order above.
    from_ts.store(monotonic_ns().max(1), std::sync::atomic::Ordering::Release);
    if let Err(failure) = started {
        readers.stop_and_join();
        if let Some(export) = export {
            export.finish();
        }
        s.store.close_followers();
        return Err(failure);
    }
    if recording {
        // Threads forked between the first look and the filter write were not in the filter:
        // those still running are added now.
        let seen: std::collections::HashSet<u32> = tids.iter().copied().collect();
        let late: Vec<u32> = st
            .containers
            .values()
            .flat_map(|a| container_tids(registry, a, &s.resolver))
            .filter(|t| !seen.contains(t))
            .collect();
        if let Err(e) = instance.add_pids(&late, functions) {
            warn!(session = s.id, error = %e, threads = late.len(), "cannot add threads forked during the start");
        }
    }
    let mut output =
        vec![format!("ftrace instance {}", instance.name()), format!("events: GET /v1/trace-session/{}/events", s.id)];
    if export.is_some() {
        output.push(format!("OTLP trace id {}", crate::export::hex(&s.trace_id)));
    }
    st.output = Some(output);
    st.export = export;
    st.error = None;
    st.formats = formats;
    info!(session = s.id, instance = %instance.name(), threads = tids.len(), "ftrace instance recording");
    let filter = PidFilter::new(Arc::new(instance), functions, recording);
    st.run = Some(Run::Ftrace { filter: Arc::new(filter), readers: Some(readers) });
    Ok(plan.duration)
}

impl RegistryObserver for SessionManager {
    /// The container joins every matching session; the running ones get its threads, read
    /// once, pushed to all their filters before any is written, so that each filter's next
    /// batch holds them whoever writes it. The procfs reads and the kernel writes happen
    /// without any session lock: GET, stats and other attachments go on meanwhile.
    fn registered(&self, entry: &Entry) {
        let sessions: Vec<Arc<Session>> = self.map().values().cloned().collect();
        let running: Vec<(&Arc<Session>, Arc<PidFilter>)> =
            sessions.iter().filter(|s| s.matches(entry)).filter_map(|s| Some((s, self.attach(s, entry)?))).collect();
        if running.is_empty() {
            return;
        }
        let (init, id) = (entry.record.pid, &entry.record.id);
        let tids = threads_of(&self.registry, init, entry.cgroup.as_deref());
        let left: Vec<_> = running
            .into_iter()
            .map(|(s, filter)| {
                s.resolver.known_threads(init, &tids);
                let ticket = filter.push(&tids);
                (s, filter, ticket)
            })
            .collect();
        // In turn: the kernel serialises filter writes of every instance (20 appends to two
        // instances from two threads took as long as 20 to one), so what saves time is fewer
        // writes, each carrying every container that waited for it.
        for (s, filter, ticket) in left {
            match filter.commit(ticket) {
                Ok(()) => {
                    info!(session = s.id, container_id = %id, threads = tids.len(), "container attached to running session")
                }
                Err(e) => error!(session = s.id, container_id = %id, error = %e, "cannot add container to pid filter"),
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
                s.resolver.remove_container(id);
                if let Some(export) = &st.export {
                    export.container_exited(id);
                }
            }
        }
    }
}
