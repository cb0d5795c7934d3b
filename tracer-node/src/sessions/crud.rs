//! Creating, describing, listing and deleting sessions.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use futures_util::StreamExt;
use tracer_api::v1::{NewSession, SessionInfo};
use tracing::{info, warn};

use super::{check_pattern, events::EventStore, Lifecycle, Run, Session, SessionError, SessionManager, State};
use crate::export::ExportCounters;

impl SessionManager {
    /// Creates a session (not started). Fails, leaving nothing behind, on a bad pattern, hook
    /// or argument, or when nothing matches and `wait-for-containers` is not set.
    pub fn create(&self, mut spec: NewSession) -> Result<SessionInfo, SessionError> {
        let selector = match &spec.pod_selector {
            Some(text) => Some(
                tracer_spec::selector::LabelSelector::parse(text)
                    .map_err(|e| SessionError::Invalid(format!("pod-selector: {e}")))?,
            ),
            None => None,
        };
        if spec.pod.is_empty() && selector.is_some() {
            spec.pod = "*".into();
        }
        check_pattern("pod", &spec.pod)?;
        check_pattern("container", &spec.container)?;
        if spec.trace_arguments.len() > 16 * 1024 || spec.trace_user_context.len() > 64 * 1024 {
            return Err(SessionError::Invalid("trace-arguments or trace-user-context too long".into()));
        }
        let plan = self.catalog.plan(&spec.trace_hook, &spec.trace_arguments)?;
        let session = self.insert(spec, selector, Ok(plan), false)?;
        let id = session.id;
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

    /// Makes a session of a checked `spec` and attaches the containers registered now.
    pub(super) fn insert(
        &self,
        spec: NewSession,
        selector: Option<tracer_spec::selector::LabelSelector>,
        plan: Result<super::Plan, String>,
        auto: bool,
    ) -> Result<Arc<Session>, SessionError> {
        let chosen = spec.session_id.as_deref().map(super::parse_id).transpose()?;
        // The id is picked (or the chosen one checked) and the session inserted under one hold
        // of the map: two POSTs naming the same id cannot both get it.
        let mut map = self.map();
        if map.len() >= self.settings.max_sessions {
            return Err(SessionError::Limit {
                what: "too many trace sessions on this node",
                limit: self.settings.max_sessions as u64,
                flag: "--max-sessions",
            });
        }
        let id = match chosen {
            Some(id) if map.contains_key(&id) => return Err(SessionError::IdTaken(id)),
            Some(id) => id,
            None => loop {
                let id = crate::ids::session_id();
                if !map.contains_key(&id) {
                    break id;
                }
            },
        };
        let session = Arc::new(Session {
            id,
            spec,
            selector,
            plan,
            auto,
            store: Arc::new(EventStore::new(self.settings.retention_events, self.settings.metrics.clone())),
            trace_id: crate::ids::trace_id(),
            export: Arc::new(ExportCounters::new(self.settings.metrics.clone())),
            state: Mutex::new(State::default()),
            op: tokio::sync::Mutex::new(Lifecycle::default()),
        });
        // In the map first, then the current containers: one registering meanwhile is seen by
        // `registered` or by this snapshot, possibly both (attaching is idempotent).
        map.insert(id, session.clone());
        drop(map);
        for e in self.registry.snapshot() {
            if session.matches(&e) {
                // A new session does not run: there is no filter to write.
                let _ = self.attach(&session, &e);
            }
        }
        Ok(session)
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
            auto_trace: s.auto,
            containers,
            context: s.spec.trace_user_context.clone(),
            error: st.error.clone(),
            id: s.id.to_string(),
            node: self.node.clone(),
            nodes: None,
            namespace: s.namespace().map(str::to_owned),
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
        self.auto.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, v| *v != id);
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
        // The task tracker's instances are live and no session's.
        tokio::task::spawn_blocking(move || tracefs.remove_stale_instances(&crate::tasks::INSTANCES))
            .await
            .map_err(|source| SessionError::Task { what: "tracefs cleanup", source })??;
        for p in self.catalog.external() {
            p.clear().await;
        }
        Ok(())
    }
}

/// Sessions `delete_all` stops at once.
const DELETE_CONCURRENCY: usize = 8;
