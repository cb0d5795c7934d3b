//! Trace sessions: a set of containers (chosen by pod and container patterns, and kept up to
//! date as containers come and go), one trace hook with its arguments, a user context, and a
//! running state. A running built-in session has a slot on a recording: the node's one ftrace
//! instance shared by every session that can share it (or one of its own), filtered to every
//! thread of its sessions' containers, read losslessly through the per-CPU raw pipes and
//! routed to each session.

mod attach;
mod auto;
mod crud;
pub mod events;
pub mod glob;
mod lifecycle;
pub mod lineage;
pub mod program;
pub mod recording;
pub mod resolver;
pub mod routing;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, Weak},
};

use tracer_api::v1::NewSession;

use self::{events::EventStore, recording::Recording, resolver::SavedTasks, routing::Slot};
use crate::{
    batch::ContainerTag,
    export::{ExportCounters, Exporter, SessionExport},
    ftrace::{format::EventFormat, Tracefs},
    hooks::{external::RunningExternal, Catalog, HookError, Plan},
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
    /// A caller-chosen `session-id` that names a session already.
    #[error("trace session {0} exists already")]
    IdTaken(u64),
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
    /// A task of ours failed (panicked or was cancelled at shutdown).
    #[error("internal error: the {what} task failed: {source}")]
    Task {
        /// Which task.
        what: &'static str,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// tracefs could not be cleaned up.
    #[error("tracefs: {0}")]
    Tracefs(#[from] crate::ftrace::TracefsError),
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
    /// Auto-trace sessions running at once at most.
    pub max_auto_running: usize,
    /// How long a finished auto-trace session is kept before it is deleted.
    pub auto_retention: std::time::Duration,
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
            max_auto_running: 16,
            auto_retention: std::time::Duration::from_secs(600),
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
    /// When the runtime created it (unix ns, 0 when unknown).
    created_unix_ns: u64,
    /// Attached at its creation to a session not running yet, that starts for it (auto-trace):
    /// its span begins at its creation.
    at_creation: bool,
}

enum Run {
    /// The session's slot on a recording; the recording is shared so that statistics are read
    /// and threads added without the session lock.
    Ftrace {
        recording: Arc<Recording>,
        slot: Arc<Slot>,
    },
    External(Box<RunningExternal>),
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Run::Ftrace { recording, .. } => write!(f, "Ftrace({})", recording.name()),
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
    /// `pod-selector`, parsed.
    selector: Option<tracer_spec::selector::LabelSelector>,
    /// What the hook does; why it cannot run here for an auto-trace session whose annotations
    /// the node refuses (the session shows the reason in `Error`).
    plan: Result<Plan, String>,
    /// Made by a pod's trace annotations.
    auto: bool,
    store: Arc<EventStore>,
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
            && self.selector.as_ref().is_none_or(|s| {
                s.matches(&tracer_spec::annotations::stamped_labels(&r.annotations).unwrap_or_default())
            })
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
    /// What the kernel remembers of gone threads, shared by every recording's resolver.
    saved: Arc<SavedTasks>,
    /// The recording shared by the sessions that can share one, while any runs. Held by the
    /// joins and leaves of it (blocking threads only), never by a request's answer.
    shared: Mutex<Option<Arc<Recording>>>,
    /// Held from the check of the running limits to the end of a start, so two starts cannot
    /// both take the last place.
    start_gate: tokio::sync::Mutex<()>,
    /// CPUs with a ring buffer in each instance.
    cpus: u64,
    /// Auto-trace sessions by (namespace, pod, hook); taken while one is found or made.
    auto: Mutex<std::collections::HashMap<(String, String, String), u64>>,
    /// The runtime, for work started from the registry's threads (auto-trace starts and
    /// their stop and removal).
    runtime: Option<tokio::runtime::Handle>,
    me: Weak<SessionManager>,
}

/// The namespace a pod pattern is confined to (see [`Session::namespace`]).
pub use tracer_spec::session::namespace_of;

/// Parses a session id.
pub fn parse_id(s: &str) -> Result<u64, SessionError> {
    tracer_spec::session::parse_id(s).ok_or_else(|| SessionError::BadId(s.chars().take(64).collect()))
}

fn check_pattern(what: &str, p: &str) -> Result<(), SessionError> {
    if p.is_empty() || p.len() > 253 || p.chars().any(char::is_control) {
        return Err(SessionError::Invalid(format!("{what} pattern must be 1 to 253 printable characters")));
    }
    Ok(())
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
        let cpus =
            tracefs.cpu_count().unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64));
        let m = Arc::new_cyclic(|me| SessionManager {
            node,
            tracefs,
            catalog,
            registry: registry.clone(),
            settings,
            sessions: Mutex::new(BTreeMap::new()),
            saved: saved.clone(),
            shared: Mutex::default(),
            start_gate: tokio::sync::Mutex::new(()),
            cpus,
            auto: Mutex::default(),
            runtime: tokio::runtime::Handle::try_current().ok(),
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
}
