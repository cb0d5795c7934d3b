//! Auto-trace: a pod annotated `container-tracer.io/trace-hook` gets a session of its own at its
//! first matching container's creation, started before that container's hook is answered, so
//! the container's first `execve` is in the trace. One session per pod and hook, reused by the
//! pod's other containers; stopped when the pod's last container is gone, deleted after
//! `--auto-trace-retention-secs`. Annotations the node refuses (no webhook checked them, or this
//! kernel lacks the system call) make a session that shows why in `Error` and never runs; the
//! container starts regardless.

use std::sync::{atomic::Ordering, Arc};

use tracer_api::v1::NewSession;
use tracer_spec::annotations::{self as ann, AutoTrace};
use tracing::{info, warn};

use super::{glob, Session, SessionManager};
use crate::registry::Entry;

/// How long a container's registration waits for its auto-trace session to start (the hook's
/// own deadline answers it sooner; the start goes on regardless).
const START_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl SessionManager {
    /// Finds or makes the auto-trace session of `entry`'s pod and starts it, when the pod asks
    /// for one. Blocking (it waits for the start): called from `registered`, off the async
    /// workers, before the container is attached to the other running sessions.
    pub(super) fn auto_trace(&self, entry: &Entry) {
        let r = &entry.record;
        if !entry.is_workload() {
            return;
        }
        let wish: Result<AutoTrace, String> = match ann::auto_trace(&r.annotations) {
            Ok(None) => return,
            Ok(Some(w)) => Ok(w),
            Err(e) => Err(e.to_string()),
        };
        if let Ok(w) = &wish {
            if !glob::matches(&w.containers, &r.name) {
                return;
            }
        }
        let Some(session) = self.auto_session(entry, &wish) else { return };
        let refuse = |why: String| {
            self.settings.metrics.auto_sessions_refused.fetch_add(1, Ordering::Relaxed);
            warn!(session = session.id, container_id = %r.id, pod = %r.pod, reason = %why, "auto-trace session not started");
            session.lock().error = Some(vec![why]);
        };
        if let Err(why) = &session.plan {
            return refuse(why.clone());
        }
        if session.lock().run.is_some() {
            // Running already (another container of the pod): `registered` adds this one.
            return;
        }
        let running_auto =
            self.map().values().filter(|s| s.auto && s.id != session.id && s.lock().run.is_some()).count();
        if running_auto >= self.settings.max_auto_running {
            return refuse(format!(
                "refused: {running_auto} auto-trace sessions run already, the most this node starts (--max-auto-sessions)"
            ));
        }
        let (Some(runtime), Some(me)) = (&self.runtime, self.me.upgrade()) else { return };
        // Started as a task and waited for through a channel, not `block_on`: this thread may
        // be one the runtime knows (a blocking one here), and the wait stays bounded.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let id = session.id;
        runtime.spawn(async move {
            let _ = tx.send(me.start(id).await);
        });
        let Ok(started) = rx.recv_timeout(START_WAIT) else {
            warn!(session = id, "the auto-trace start goes on after the container's hook was answered");
            return;
        };
        match started {
            Ok(()) => {
                self.settings.metrics.auto_sessions_started.fetch_add(1, Ordering::Relaxed);
                info!(session = session.id, container_id = %r.id, pod = %r.pod, hook = %session.spec.trace_hook, "auto-trace session started at the container's creation");
            }
            // Another container of the pod started it meanwhile.
            Err(super::SessionError::AlreadyRunning(_)) => {}
            // The reason is in the session's Error already.
            Err(e) => {
                self.settings.metrics.auto_sessions_refused.fetch_add(1, Ordering::Relaxed);
                warn!(session = session.id, container_id = %r.id, error = %e, "auto-trace session failed to start");
            }
        }
    }

    /// The pod's auto-trace session for its hook, made (with the pod's containers registered
    /// now attached) when there is none.
    fn auto_session(&self, entry: &Entry, wish: &Result<AutoTrace, String>) -> Option<Arc<Session>> {
        let r = &entry.record;
        let hook = match wish {
            Ok(w) => w.hook.name().to_owned(),
            Err(_) => r.annotations.get(ann::TRACE_HOOK).cloned().unwrap_or_default(),
        };
        let key = (r.namespace.clone(), r.pod.clone(), hook.clone());
        // Held while the session is found or made: two containers of a pod created at once
        // share one session.
        let mut auto = self.auto.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = auto.get(&key).and_then(|id| self.get(*id).ok()) {
            return Some(s);
        }
        // Pod and namespace names hold no wildcard: the pattern is this pod alone.
        let pod = if r.namespace.is_empty() { r.pod.clone() } else { format!("{}/{}", r.namespace, r.pod) };
        let (container, arguments, context) = match wish {
            Ok(w) => (w.containers.clone(), w.arguments.clone(), w.context.clone()),
            Err(_) => {
                ("*".to_owned(), r.annotations.get(ann::TRACE_ARGUMENTS).cloned().unwrap_or_default(), String::new())
            }
        };
        let spec = NewSession {
            pod,
            pod_selector: None,
            container,
            trace_hook: hook,
            trace_arguments: arguments,
            trace_user_context: context,
            wait_for_containers: true,
            session_id: None,
        };
        // The node's own checks (this kernel's events and formats) on top of the annotation's.
        let plan = match wish {
            Ok(_) => self.catalog.plan(&spec.trace_hook, &spec.trace_arguments).map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        match self.insert(spec, None, plan, true) {
            Ok(s) => {
                // Made for this container, now: it is traced (and its span begins) from its creation.
                if let Some(a) = s.lock().containers.get_mut(&r.id) {
                    a.at_creation = true;
                }
                info!(session = s.id, pod = %r.pod, namespace = %r.namespace, hook = %s.spec.trace_hook, "auto-trace session created");
                auto.insert(key, s.id);
                Some(s)
            }
            Err(e) => {
                self.settings.metrics.auto_sessions_refused.fetch_add(1, Ordering::Relaxed);
                warn!(pod = %r.pod, error = %e, "cannot create the auto-trace session");
                None
            }
        }
    }

    /// The pod of auto-trace session `s` has no container left: stop it now, delete it after the
    /// retention time unless a container of the pod came back meanwhile.
    pub(super) fn auto_pod_gone(&self, s: &Arc<Session>) {
        let (Some(runtime), Some(me)) = (&self.runtime, self.me.upgrade()) else { return };
        let (id, retention) = (s.id, self.settings.auto_retention);
        runtime.spawn(async move {
            if let Err(e) = me.stop(id).await {
                warn!(session = id, error = %e, "cannot stop the auto-trace session of a gone pod");
            }
            info!(session = id, retention_secs = retention.as_secs(), "auto-trace session stopped: its pod is gone");
            tokio::time::sleep(retention).await;
            let Ok(s) = me.get(id) else { return };
            if s.lock().containers.is_empty() {
                let _ = me.delete(id).await;
                info!(session = id, "auto-trace session removed after its retention time");
            }
        });
    }
}
