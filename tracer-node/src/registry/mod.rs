//! The live container registry: containers registered by the runtime hook at creation, removed
//! at poststop or as soon as their init exits (pidfd, event-driven), persisted across restarts.

pub mod exits;
pub mod files;
pub mod lock;
pub mod procfs;
pub mod socket;
pub mod spool;
pub mod store;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
};

use rustix::process::{pidfd_open, Pid, PidfdFlags};
use tracer_api::{hook::MESSAGE_VERSION, ContainerCreated, ContainerKind, RegistryEvent};
use tracing::{error, info, warn};

use crate::tasks::TaskTracker;

use self::{
    exits::{ExitWatcher, OnExit},
    procfs::{ProcError, Procfs},
    store::{Store, StoreError},
};

/// Why an event was refused. The hook logs the message; nothing is changed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The message is of a format version this daemon does not speak.
    #[error("message version {0} is not supported (this tracer-node speaks {MESSAGE_VERSION})")]
    Version(u32),
    /// A field is empty, too long or holds characters that do not belong in it.
    #[error("container {id:?}: invalid {field}")]
    Invalid {
        /// Container id as sent.
        id: String,
        /// The offending field.
        field: &'static str,
    },
    /// The init is not running: nothing to register.
    #[error("container {id}: init pid {pid} has already exited")]
    InitGone {
        /// Container id.
        id: String,
        /// Its init pid.
        pid: u32,
    },
    /// The pid now belongs to another process than the one the hook saw.
    #[error("container {id}: pid {pid} was reused (start time {found}, the hook saw {expected})")]
    PidReused {
        /// Container id.
        id: String,
        /// The pid.
        pid: u32,
        /// Start time the hook recorded.
        expected: u64,
        /// Start time now.
        found: u64,
    },
    /// Reading the init's procfs files failed.
    #[error("container {id}: {source}")]
    Proc {
        /// Container id.
        id: String,
        /// Why.
        #[source]
        source: ProcError,
    },
    /// The exit watcher thread could not be started (the daemon refuses to run without it).
    #[error("cannot start the exit watcher: {source}")]
    ExitWatcher {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pid is not a container's init: pid 1 of the host, the daemon itself, or a process
    /// in the host's pid namespace that is not in a cgroup of that container.
    #[error("container {id}: pid {pid} is not a container's init: {reason}")]
    NotAContainer {
        /// Container id.
        id: String,
        /// The pid.
        pid: u32,
        /// What the kernel showed.
        reason: &'static str,
    },
    /// A stop for a container whose init still runs (runtimes send poststop only once the
    /// container is gone): refused, or a forged stop could hide a live container.
    #[error("container {id}: its init (pid {pid}) still runs; a stop is sent only after it exits")]
    StillRunning {
        /// Container id.
        id: String,
        /// The init pid.
        pid: u32,
    },
    /// pidfd_open failed for another reason than a dead process.
    #[error("container {id}: cannot watch pid {pid} for exit: {source}")]
    Pidfd {
        /// Container id.
        id: String,
        /// The pid.
        pid: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Told of every registration and removal, synchronously: a registration is reported before
/// the hook gets its answer, so running sessions can trace a container from its first exec.
pub trait RegistryObserver: Send + Sync {
    /// A container was registered.
    fn registered(&self, entry: &Entry);
    /// A container was removed.
    fn unregistered(&self, id: &str);
}

/// How much of a registration is checked against the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Isolation {
    /// The init must be in a pid namespace of its own, or (a `hostPID` pod) in a cgroup named
    /// after its container id. What the daemon always uses.
    #[default]
    Required,
    /// Any live process but pid 1 and the daemon may be registered: for tests of the registry's
    /// logic with plain child processes standing in for container inits.
    NotChecked,
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new container is registered.
    Registered,
    /// The same container (id, pid, start time) was registered already: replay is idempotent.
    AlreadyRegistered,
    /// The container was removed.
    Unregistered,
    /// A stop for a container the registry does not hold (already removed at init exit).
    NotRegistered,
}

/// One registered container.
#[derive(Debug, Clone)]
pub struct Entry {
    /// What the hook reported, with the verified start time filled in.
    pub record: Arc<ContainerCreated>,
    /// Start time of the init (identifies the process with its pid).
    pub start_time: u64,
    /// Parent of the init when it registered.
    pub ppid: u32,
    /// The container's own cgroup directory, when it has one.
    pub cgroup: Option<PathBuf>,
    generation: u64,
}

/// The registry. Cheap to share (`Arc`); all mutation goes through [`Registry::apply`].
#[derive(Debug)]
pub struct Registry {
    containers: Mutex<HashMap<String, Entry>>,
    procfs: Procfs,
    store: Option<Store>,
    generation: AtomicU64,
    exits: Arc<ExitWatcher>,
    isolation: Isolation,
    /// The daemon's (the host's) pid namespace, read once at start.
    own_pid_namespace: Option<PathBuf>,
    observer: std::sync::OnceLock<Weak<dyn RegistryObserver>>,
    /// Keeps every container's processes in memory, when the kernel allows it.
    tracker: std::sync::OnceLock<Arc<TaskTracker>>,
    /// Counters of hook deliveries and spool replays, for `/metrics`.
    pub counters: crate::metrics::RegistryCounters,
}

impl std::fmt::Debug for dyn RegistryObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryObserver")
    }
}

const MAX_NAME: usize = 253;
/// Longest id: `.<id>.tmp`, the state file's temp name, must fit a file name (255 bytes).
const MAX_ID: usize = 250;

fn valid_text(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)
}

impl Registry {
    /// A registry reading `procfs`, persisting to `store` when given (tests may go without).
    /// Fails when the exit watcher cannot start: without it a kill -9 of an init would leave
    /// its container listed forever.
    pub fn new(procfs: Procfs, store: Option<Store>) -> Result<Arc<Self>, RegistryError> {
        Self::with_isolation(procfs, store, Isolation::Required)
    }

    /// [`Registry::new`] with the given isolation checks.
    pub fn with_isolation(
        procfs: Procfs,
        store: Option<Store>,
        isolation: Isolation,
    ) -> Result<Arc<Self>, RegistryError> {
        let exits = ExitWatcher::new().map_err(|source| RegistryError::ExitWatcher { source })?;
        let own_pid_namespace = procfs.own_pid_namespace();
        let registry = Arc::new(Self {
            containers: Mutex::new(HashMap::new()),
            procfs,
            store,
            generation: AtomicU64::new(1),
            exits: exits.clone(),
            isolation,
            own_pid_namespace,
            observer: std::sync::OnceLock::new(),
            tracker: std::sync::OnceLock::new(),
            counters: crate::metrics::RegistryCounters::default(),
        });
        // Only now that the registry exists may the thread look for it.
        exits.spawn(Arc::downgrade(&registry)).map_err(|source| RegistryError::ExitWatcher { source })?;
        Ok(registry)
    }

    /// Whether the exit watcher runs; a dead one makes the daemon unready.
    pub fn exit_watcher_alive(&self) -> bool {
        self.exits.is_alive()
    }

    /// Sets the observer (once).
    pub fn set_observer(&self, observer: Weak<dyn RegistryObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Sets the task tracker (once), before containers are loaded: it follows every
    /// container registered from then on.
    pub fn set_tracker(&self, tracker: Arc<TaskTracker>) {
        let _ = self.tracker.set(tracker);
    }

    /// The task tracker, when it runs.
    pub fn tracker(&self) -> Option<&Arc<TaskTracker>> {
        self.tracker.get()
    }

    fn observer(&self) -> Option<Arc<dyn RegistryObserver>> {
        self.observer.get().and_then(Weak::upgrade)
    }

    /// The procfs the registry reads.
    pub fn procfs(&self) -> &Procfs {
        &self.procfs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave the map half-updated (every update is one
        // insert or remove), so a poisoned lock is still consistent.
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the persisted containers that are still alive and forgets the others.
    pub fn load_persisted(&self) -> Result<usize, StoreError> {
        let Some(store) = &self.store else { return Ok(0) };
        let mut loaded = 0;
        for (path, record) in store.load_all()? {
            match record {
                Ok(rec) => match self.register(rec.clone(), false) {
                    Ok(_) => loaded += 1,
                    Err(e) => {
                        info!(container_id = %rec.id, reason = %e, "forgetting persisted container");
                        store.discard(&path);
                    }
                },
                Err(e) => {
                    warn!(path = ?path, error = %e, "discarding unreadable registry file");
                    store.discard(&path);
                }
            }
        }
        Ok(loaded)
    }

    /// Applies one event from the hook (live or spooled), running sessions included.
    pub fn apply(&self, event: RegistryEvent) -> Result<Applied, RegistryError> {
        let (applied, entry) = self.apply_quietly(event)?;
        if let Some(entry) = entry {
            self.announce(&entry);
        }
        Ok(applied)
    }

    /// Applies one event, but leaves telling the observer of a new container to the caller
    /// ([`Registry::announce`]): attaching it to running sessions writes to the kernel, which
    /// the registry socket bounds by the hook's time.
    pub fn apply_quietly(&self, event: RegistryEvent) -> Result<(Applied, Option<Entry>), RegistryError> {
        match event {
            RegistryEvent::Created(rec) => self.register(rec, true),
            RegistryEvent::Stopped(stop) => {
                if stop.version != MESSAGE_VERSION {
                    return Err(RegistryError::Version(stop.version));
                }
                self.refuse_stop_of_a_live_init(&stop.id)?;
                Ok((self.remove(&stop.id, None, "poststop"), None))
            }
        }
    }

    /// Tells the observer (the sessions) of a container registered by
    /// [`Registry::apply_quietly`].
    pub fn announce(&self, entry: &Entry) {
        if let Some(o) = self.observer() {
            o.registered(entry);
        }
    }

    /// Checks what a `created` message claims about itself before anything is looked up: its
    /// version, and ids and names that are printable, bounded and usable as file names.
    pub fn validate(rec: &ContainerCreated) -> Result<(), RegistryError> {
        if rec.version != MESSAGE_VERSION {
            return Err(RegistryError::Version(rec.version));
        }
        let invalid = |field| Err(RegistryError::Invalid { id: rec.id.clone(), field });
        if !valid_text(&rec.id, MAX_ID) || rec.id.contains('/') || rec.id.starts_with('.') {
            return invalid("id");
        }
        if !valid_text(&rec.pod, MAX_NAME) || rec.pod.contains('/') {
            return invalid("pod");
        }
        if !valid_text(&rec.name, MAX_NAME) {
            return invalid("name");
        }
        if !rec.namespace.is_empty() && (!valid_text(&rec.namespace, MAX_NAME) || rec.namespace.contains('/')) {
            return invalid("namespace");
        }
        if rec.pid == 0 {
            return invalid("pid");
        }
        Ok(())
    }

    /// Refuses a stop of `id` while its registered init still runs.
    fn refuse_stop_of_a_live_init(&self, id: &str) -> Result<(), RegistryError> {
        let Some((pid, start_time)) = self.lock().get(id).map(|e| (e.record.pid, e.start_time)) else { return Ok(()) };
        match self.procfs.stat(pid) {
            Ok(st) if st.start_time == start_time && st.state != 'Z' && st.state != 'X' => {
                Err(RegistryError::StillRunning { id: id.to_owned(), pid })
            }
            _ => Ok(()),
        }
    }

    /// Checks that `pid` can be a container's init (see [`Isolation`]); the pidfd is open, so
    /// the pid cannot be reused meanwhile.
    fn check_isolation(&self, id: &str, pid: u32) -> Result<(), RegistryError> {
        let refuse = |reason| Err(RegistryError::NotAContainer { id: id.to_owned(), pid, reason });
        if pid == 1 {
            return refuse("pid 1 is the host's init");
        }
        if pid == std::process::id() {
            return refuse("it is tracer-node itself");
        }
        if self.isolation == Isolation::NotChecked {
            return Ok(());
        }
        match (self.procfs.pid_namespace(pid), &self.own_pid_namespace) {
            (Some(t), Some(o)) if &t != o => Ok(()),
            (Some(_), Some(_)) if self.procfs.container_cgroup(pid, id).is_some() => Ok(()),
            (Some(_), Some(_)) => {
                refuse("it is in the host's pid namespace and in no cgroup named after the container")
            }
            _ => refuse("its pid namespace cannot be read"),
        }
    }

    fn register(&self, mut rec: ContainerCreated, persist: bool) -> Result<(Applied, Option<Entry>), RegistryError> {
        Self::validate(&rec)?;
        let (id, pid) = (rec.id.clone(), rec.pid);
        let gone = || RegistryError::InitGone { id: id.clone(), pid };
        // Open the pidfd first: from here on the pid cannot be recycled under us, so a start
        // time read afterwards that matches the hook's proves it is the container's init.
        let raw = Pid::from_raw(i32::try_from(pid).map_err(|_| gone())?).ok_or_else(gone)?;
        let pidfd = match pidfd_open(raw, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Err(gone()),
            Err(e) => return Err(RegistryError::Pidfd { id, pid, source: e.into() }),
        };
        let stat = self.procfs.stat(pid).map_err(|source| match source {
            ProcError::Gone { .. } => gone(),
            source => RegistryError::Proc { id: id.clone(), source },
        })?;
        if stat.state == 'Z' || stat.state == 'X' {
            return Err(gone());
        }
        self.check_isolation(&id, pid)?;
        match rec.pid_start_time {
            Some(expected) if expected != stat.start_time => {
                return Err(RegistryError::PidReused { id, pid, expected, found: stat.start_time })
            }
            _ => rec.pid_start_time = Some(stat.start_time),
        }

        // Everything that reads or writes files happens before the map is locked: the lock
        // only ever guards memory (as a reflector's store does), so `GET /v1/pods` and other
        // registrations never wait for a disk or procfs.
        let known = |map: &HashMap<String, Entry>| {
            map.get(&id).is_some_and(|e| e.record.pid == pid && e.start_time == stat.start_time)
        };
        if known(&self.lock()) {
            return Ok((Applied::AlreadyRegistered, None));
        }
        let cgroup = self.procfs.container_cgroup(pid, &id);
        if persist {
            if let Some(store) = &self.store {
                if let Err(e) = store.save(&rec) {
                    // Still register: the container is live now; only a restart would forget it.
                    error!(container_id = %id, error = %e, "cannot persist registration");
                }
            }
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let entry = Entry { record: Arc::new(rec), start_time: stat.start_time, ppid: stat.ppid, cgroup, generation };
        let track = self.tracker.get().and_then(|t| t.prepare(&entry));
        let mut map = self.lock();
        // A concurrent registration of the same container won meanwhile.
        if known(&map) {
            return Ok((Applied::AlreadyRegistered, None));
        }
        if let Err(e) = self.exits.watch(generation, pidfd) {
            error!(container_id = %id, error = %e, "cannot watch init for exit; relying on poststop");
        }
        let old = map.insert(id.clone(), entry.clone());
        // Under the map's lock, so that a removal racing with this registration is queued
        // after it (the tracker only queues here).
        if let (Some(t), Some(track)) = (self.tracker.get(), track) {
            t.track(track);
        }
        drop(map);
        if let Some(old) = old {
            self.unwatch(old.generation);
        }
        let r = &entry.record;
        info!(
            container_id = %id, pod = %r.pod, namespace = %r.namespace, container = %r.name,
            pid, kind = ?r.kind, cgroup = ?entry.cgroup, "registered"
        );
        Ok((Applied::Registered, Some(entry)))
    }

    /// Removes `id`; with `generation`, only if the entry is still that registration (an exit
    /// watcher of a replaced entry must not remove its successor).
    fn remove(&self, id: &str, generation: Option<u64>, why: &'static str) -> Applied {
        let mut map = self.lock();
        match map.get(id) {
            Some(e) if generation.is_none_or(|g| g == e.generation) => {}
            _ => return Applied::NotRegistered,
        }
        let Some(entry) = map.remove(id) else { return Applied::NotRegistered };
        if let Some(t) = self.tracker.get() {
            t.untrack(id);
        }
        drop(map);
        self.unwatch(entry.generation);
        if let Some(store) = &self.store {
            if let Err(e) = store.remove(id) {
                error!(container_id = %id, error = %e, "cannot remove persisted registration");
            }
        }
        info!(container_id = %id, pod = %entry.record.pod, container = %entry.record.name, reason = why, "unregistered");
        if let Some(o) = self.observer() {
            o.unregistered(id);
        }
        Applied::Unregistered
    }

    fn unwatch(&self, generation: u64) {
        self.exits.unwatch(generation);
    }

    /// Removes the container of registration `generation`, if it is still registered.
    fn remove_generation(&self, generation: u64) {
        let id = self.lock().iter().find(|(_, e)| e.generation == generation).map(|(id, _)| id.clone());
        if let Some(id) = id {
            self.remove(&id, Some(generation), "init exited");
        }
    }

    /// A copy of every entry, for answering queries without holding the lock during I/O.
    pub fn snapshot(&self) -> Vec<Entry> {
        self.lock().values().cloned().collect()
    }

    /// Number of registered workload containers and sandboxes.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is registered.
    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }
}

impl Entry {
    /// Whether the entry is a workload container (sandboxes are not listed in `/v1/pods`).
    pub fn is_workload(&self) -> bool {
        self.record.kind == ContainerKind::Container
    }
}

impl OnExit for Registry {
    fn exited(&self, generation: u64) {
        self.remove_generation(generation);
    }
}
