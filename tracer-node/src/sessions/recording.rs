//! A recording: one ftrace instance, read once by one reader per CPU, shared by any number of
//! running sessions (design: `docs/design/shared-recording.md`).
//!
//! The kernel records an event once per instance that wants it, and each instance holds a ring
//! buffer per CPU and a reader thread per CPU. So the node keeps **one** recording for every
//! built-in session it can share: it enables the union of their events (reference-counted, an
//! event is disabled when the last session wanting it leaves), its pid filter is the union of
//! their containers' threads, and its readers route each record to the sessions it belongs to
//! ([`super::routing`]). Kernel memory and reader threads no longer grow with the sessions.
//!
//! A session whose hook needs what cannot be shared (a kernel filter, which applies to every
//! reader of the event, or the function tracer, which is per instance) gets a recording of its
//! own through the same type.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tracing::{info, warn};

use super::{
    events::EventStore,
    program::{overrun, plan_formats, program, StartFailure},
    resolver::Resolver,
    routing::{EventSet, Router, Slot},
};
use crate::{
    ftrace::{barrier::Barrier, format::EventFormat, pid_filter::PidFilter, reader::Readers, Instance, Tracefs},
    hooks::{EventSel, FtracePlan},
};

/// How long a stopping session waits for the readers to deliver what was recorded up to its
/// stop (they answer within a drain; bounded all the same).
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// A recording and the sessions on it.
#[derive(Debug)]
pub struct Recording {
    instance: Arc<Instance>,
    filter: Arc<PidFilter>,
    router: Arc<Router>,
    readers: Mutex<Option<Readers>>,
    barrier: Arc<Barrier>,
    /// Sessions wanting each selection (the base ones forever). Changed only under the
    /// caller's serialisation of joins and leaves.
    wanted: Mutex<HashMap<EventSel, usize>>,
    base: Vec<EventSel>,
    /// Containers whose threads were written to the pid filter. They stay in it while the
    /// recording lives (replacing the list would, for an RCU grace period, stop following
    /// the forks of the threads kept): a later session holding one needs no write.
    held: Mutex<HashSet<String>>,
    /// One session only, ever (kernel filter or function tracer).
    dedicated: bool,
}

/// What a session gets when it joins a recording.
pub struct Joined {
    /// Its slot in the routing table, not open yet.
    pub slot: Arc<Slot>,
    /// The formats of its events.
    pub formats: HashMap<u16, EventFormat>,
}

impl Recording {
    /// Opens a recording on a new instance `name`: programmed, its readers running, recording
    /// off until the first threads are written to its filter. `functions`: the function
    /// tracer (a dedicated recording).
    pub fn open(
        tracefs: &Tracefs,
        name: &str,
        buffer_kb: u64,
        functions: Option<&[String]>,
        dedicated: bool,
        resolver: Arc<Resolver>,
    ) -> Result<Arc<Self>, StartFailure> {
        let p = program(tracefs, name, buffer_kb, functions)?;
        let instance = Arc::new(p.instance);
        // Set by the filter's first write: what the instance recorded before is the host's.
        let started = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let router = Arc::new(Router::new(p.header, p.fork, p.exit, resolver, started.clone()));
        let readers = Readers::start(&instance, p.page_size, |cpu, progress| router.consumer(cpu, progress))
            .map_err(StartFailure::kernel("ring-buffer readers"))?;
        let filter = Arc::new(PidFilter::new(instance.clone(), functions.is_some(), started));
        info!(instance = %instance.name(), dedicated, "ftrace recording opened");
        Ok(Arc::new(Self {
            instance,
            filter,
            router,
            barrier: readers.barrier(),
            readers: Mutex::new(Some(readers)),
            wanted: Mutex::new(p.base.iter().map(|s| (s.clone(), usize::MAX)).collect()),
            base: p.base,
            held: Mutex::default(),
            dedicated,
        }))
    }

    /// The instance's name.
    pub fn name(&self) -> &str {
        self.instance.name()
    }

    /// The pid filter (the union of every session's threads).
    pub fn filter(&self) -> &Arc<PidFilter> {
        &self.filter
    }

    /// The resolver of its threads.
    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.router.resolver
    }

    /// Whether it holds one session only, ever.
    pub fn dedicated(&self) -> bool {
        self.dedicated
    }

    /// Sessions on it now.
    pub fn sessions(&self) -> usize {
        self.router.slots().len()
    }

    /// Records that no session could be told were its.
    pub fn unattributed(&self) -> u64 {
        self.router.unattributed()
    }

    /// The kernel's overrun count of the instance, over its CPUs. Blocking (stats files).
    pub fn overrun(&self) -> u64 {
        overrun(&self.instance)
    }

    /// Whether `container`'s threads have to be written to the filter: true the first time
    /// it is asked for a container (the caller writes them), false once they are in.
    pub fn hold(&self, container: &str) -> bool {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(container.to_owned())
    }

    /// `container` is gone, or its threads could not be written: asked again next time.
    pub fn unhold(&self, container: &str) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(container);
    }

    /// Adds session `session` taking `plan`'s events: they are enabled (those no session had
    /// yet), and its slot is published, closed until [`Slot::open_at`]. On failure nothing of
    /// it is left. Blocking; the caller serialises joins and leaves of this recording.
    pub fn join(
        &self,
        tracefs: &Tracefs,
        session: u64,
        plan: &FtracePlan,
        store: Arc<EventStore>,
    ) -> Result<Joined, StartFailure> {
        let formats = plan_formats(tracefs, plan)?;
        let mut enabled = Vec::new();
        for sel in &plan.events {
            if let Err(e) = self.want(sel) {
                for sel in enabled.iter().rev() {
                    self.unwant(sel);
                }
                return Err(e);
            }
            enabled.push(sel.clone());
        }
        // A kernel filter applies to every reader of the event: only a dedicated recording
        // takes one (its events are this session's alone).
        if let (true, Some(expr)) = (self.dedicated, &plan.filter) {
            for sel in &plan.events {
                let Some(event) = sel.event.as_deref() else { continue };
                if let Err(source) = self.instance.set_filter(&sel.system, event, expr) {
                    for sel in enabled.iter().rev() {
                        self.unwant(sel);
                    }
                    return Err(StartFailure::Kernel {
                        what: format!("kernel refused the filter on {}:{event}", sel.system),
                        source,
                    });
                }
            }
        }
        let exec = formats
            .values()
            .filter(|f| matches!(f.name.as_str(), "sched_process_exec" | "sys_exit_execve" | "sys_exit_execveat"))
            .map(|f| f.id)
            .collect();
        let base = if self.dedicated { 0 } else { self.overrun() };
        // On a dedicated recording the kernel filters; on the shared one, the router does.
        let filter = if self.dedicated { None } else { plan.compiled.clone() };
        let slot = Arc::new(Slot::filtered(session, EventSet::of(formats.keys().copied()), exec, store, base, filter));
        self.router.publish(slot.clone());
        Ok(Joined { slot, formats })
    }

    /// Ends a session's part: its run ends now, what the kernel recorded up to now is
    /// delivered to it (unless `discard`: nothing could see it), then its slot leaves the
    /// table. Answers the kernel losses of its time on the recording. Blocking; its events
    /// are released with [`Self::release`].
    pub fn close(&self, slot: &Arc<Slot>, discard: bool) -> u64 {
        let now = crate::ftrace::pid_filter::monotonic_ns();
        slot.close_at(now);
        if !discard && !self.barrier.wait_delivered(now, DRAIN_WAIT) {
            warn!(session = slot.session, instance = %self.name(), "the readers did not deliver the session's last events in time");
        }
        let lost = self.overrun().saturating_sub(slot.overrun_base);
        self.router.withdraw(slot);
        lost
    }

    /// The events `plan` asked for are no longer wanted by that session: those no other
    /// session wants are disabled. Blocking; the caller serialises joins and leaves.
    pub fn release(&self, plan: &FtracePlan) {
        for sel in &plan.events {
            self.unwant(sel);
        }
    }

    /// Stops the recording: the filter closed, recording off, the readers stopped (what the
    /// kernel still holds is thrown away: no session is left to take it) and the instance
    /// removed. Blocking.
    pub fn shut(&self) {
        self.filter.close();
        let _ = self.instance.set_tracing_on(false);
        let _ = self.instance.clear_buffers();
        if let Some(r) = self.readers.lock().unwrap_or_else(|p| p.into_inner()).take() {
            r.stop_and_join();
        }
        if let Err(e) = self.instance.remove() {
            warn!(instance = %self.name(), error = %e, "cannot remove the ftrace instance");
        }
        info!(instance = %self.name(), unattributed = self.unattributed(), "ftrace recording closed");
    }

    fn wanted(&self) -> std::sync::MutexGuard<'_, HashMap<EventSel, usize>> {
        self.wanted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more session wants `sel`: enabled when it is the first.
    fn want(&self, sel: &EventSel) -> Result<(), StartFailure> {
        let mut wanted = self.wanted();
        let n = wanted.entry(sel.clone()).or_insert(0);
        if *n == 0 {
            let target = sel.event.as_deref().map_or(sel.system.clone(), |e| format!("{}:{e}", sel.system));
            self.instance.enable_event(&sel.system, sel.event.as_deref()).map_err(|source| StartFailure::Kernel {
                what: format!("kernel refused to enable {target}"),
                source,
            })?;
        }
        *n = n.saturating_add(1);
        Ok(())
    }

    /// One session less wants `sel`: disabled when none does. A whole system is disabled at
    /// once, so the events of it still wanted one by one are enabled again right after.
    fn unwant(&self, sel: &EventSel) {
        let mut wanted = self.wanted();
        let Some(n) = wanted.get_mut(sel) else { return };
        *n = n.saturating_sub(1);
        if *n > 0 {
            return;
        }
        wanted.remove(sel);
        let whole = EventSel { system: sel.system.clone(), event: None };
        let result = match &sel.event {
            // Still on through its system.
            Some(_) if wanted.contains_key(&whole) => Ok(()),
            Some(e) => self.instance.disable_event(&sel.system, Some(e)),
            None => self.instance.disable_event(&sel.system, None).and_then(|()| {
                wanted
                    .keys()
                    .filter(|w| w.system == sel.system)
                    .try_for_each(|w| self.instance.enable_event(&w.system, w.event.as_deref()))
            }),
        };
        if let Err(e) = result {
            warn!(instance = %self.name(), system = %sel.system, event = ?sel.event, error = %e, "cannot disable an event no session wants");
        }
        debug_assert!(self.base.iter().all(|b| wanted.contains_key(b)));
    }
}
