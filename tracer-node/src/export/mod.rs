//! OTLP export of running sessions. Each running built-in session gets a worker fed by its
//! event store through a queue bounded in events: the kernel readers never wait for the
//! collector, and what does not fit is dropped and counted (session stats, `/metrics`, logs).
//! The worker batches events into log records (or span events), retries retryable failures
//! with backoff, keeps one span per attached container, and ends them all when the run stops.

pub mod config;
pub mod encode;
pub mod model;
pub mod transport;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    resource::v1::Resource,
    trace::v1::{span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

pub use self::config::{ExportArgs, ExportConfig, ExportConfigError};
use self::{
    config::EventsAs,
    model::{SessionContext, Wall},
    transport::{SendError, Transport, TransportError},
};
use crate::{
    batch::{Batch, BatchSink, ContainerTag},
    ftrace::format::EventFormat,
    metrics::Metrics,
};

/// Export counters of one session (all its runs), mirrored into the node's metrics.
#[derive(Debug)]
pub struct ExportCounters {
    queued: AtomicU64,
    exported: AtomicU64,
    dropped: AtomicU64,
    metrics: Arc<Metrics>,
}

impl ExportCounters {
    /// Counters reporting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { queued: AtomicU64::new(0), exported: AtomicU64::new(0), dropped: AtomicU64::new(0), metrics }
    }

    /// Takes `n` events into the queue if they fit under `capacity`; counts them dropped if not.
    ///
    /// One `fetch_update`: a load-then-add let two readers racing past the check both get in,
    /// overshooting the capacity by a batch per CPU.
    pub fn offer(&self, n: u64, capacity: u64) -> bool {
        let taken = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| q.checked_add(n).filter(|t| *t <= capacity));
        if taken.is_err() {
            self.drop_events(n);
            return false;
        }
        self.metrics.export_queue.fetch_add(n, Ordering::Relaxed);
        true
    }

    /// `n` queued events are done with (exported or dropped).
    fn done(&self, n: u64) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
        self.metrics.export_queue.fetch_sub(n, Ordering::Relaxed);
    }

    fn drop_events(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.metrics.export_dropped.fetch_add(n, Ordering::Relaxed);
    }

    fn exported(&self, n: u64) {
        self.exported.fetch_add(n, Ordering::Relaxed);
        self.metrics.exported_events.fetch_add(n, Ordering::Relaxed);
    }

    /// (queued, exported, dropped) now.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.queued.load(Ordering::Relaxed),
            self.exported.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

/// Where a session's store sends batches for export.
#[derive(Debug)]
pub struct Sink {
    tx: mpsc::Sender<Arc<Batch>>,
    counters: Arc<ExportCounters>,
    capacity: u64,
}

impl BatchSink for Sink {
    /// Offers a batch; never blocks. False once the worker is gone.
    fn offer(&self, batch: &Arc<Batch>) -> bool {
        let n = batch.records.len() as u64;
        if !self.counters.offer(n, self.capacity) {
            return true;
        }
        match self.tx.try_send(batch.clone()) {
            Ok(()) => true,
            // More batches than the channel holds, each under the event capacity: the events
            // are dropped and counted as any over the capacity are; the reader never waits.
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.done(n);
                self.counters.drop_events(n);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters.done(n);
                self.counters.drop_events(n);
                false
            }
        }
    }
}

enum Control {
    Started { tag: Arc<ContainerTag>, init: u32, at: u64, at_creation: bool },
    Exited { id: String, at: u64 },
    Stop { at: u64 },
}

/// The export side of one running session; dropping it without [`SessionExport::finish`]
/// still ends the worker when the store closes its sinks.
#[derive(Debug)]
pub struct SessionExport {
    ctl: mpsc::Sender<Control>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

impl SessionExport {
    /// A container joined the running session (at its creation when `at_creation`).
    pub fn container_started(&self, tag: Arc<ContainerTag>, init: u32, at: u64, at_creation: bool) {
        self.control(Control::Started { tag, init, at, at_creation });
    }

    /// A container of the session exited.
    pub fn container_exited(&self, id: &str) {
        self.control(Control::Exited { id: id.to_owned(), at: model::unix_now() });
    }

    /// The run stopped: the worker exports what is queued, ends the spans and exits.
    pub fn finish(self) {
        self.control(Control::Stop { at: model::unix_now() });
    }

    /// Hands a lifecycle message to the worker without waiting. The queue holds a message per
    /// container of a node many times over; should a stalled worker fill it, the container's
    /// span is lost (logged), and a lost `Stop` still ends the worker when the store closes its
    /// sinks.
    fn control(&self, c: Control) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.ctl.try_send(c) {
            warn!("OTLP export worker is not keeping up: a container lifecycle message was dropped");
        }
    }
}

/// Lifecycle messages a worker may have queued.
const CONTROL_QUEUE: usize = 4096;

/// Batches a worker may have queued: a batch holds at least one event, so as many as the event
/// capacity, but no more than a ring of batches far beyond what readers produce between two
/// polls of the worker (tokio allocates the channel's blocks as they fill, not up front).
fn batch_queue(queue_events: u64) -> usize {
    usize::try_from(queue_events).unwrap_or(usize::MAX).clamp(1, 65_536)
}

/// Lower-case hex of an id.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long a failed request is retried while the session runs.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long a stopped session's remaining events may take to export.
const FINAL_DRAIN: Duration = Duration::from_secs(15);
/// How often partial batches are sent.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long an exited container's span waits for its last events (the exit code) before export.
const SPAN_GRACE: Duration = Duration::from_secs(2);
/// At most one warning per session this often; the counts in between are summed.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The node's exporter: one configuration and connection, a worker per running session.
#[derive(Debug)]
pub struct Exporter {
    config: ExportConfig,
    transport: Transport,
    metrics: Arc<Metrics>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Exporter {
    /// An exporter for `config`; inside the tokio runtime.
    pub fn new(config: ExportConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, TransportError> {
        let transport = Transport::new(&config)?;
        info!(
            protocol = ?config.protocol,
            traces = %config.traces_endpoint,
            logs = %config.logs_endpoint,
            events_as = ?config.events_as,
            "OTLP export on"
        );
        Ok(Arc::new(Self { config, transport, metrics, workers: Mutex::new(Vec::new()) }))
    }

    /// The configuration.
    pub fn config(&self) -> &ExportConfig {
        &self.config
    }

    /// Starts exporting a run of a session: returns the sink for its store and the handle for
    /// its container lifecycle. `containers` are attached from the run's start.
    pub fn start_session(
        self: &Arc<Self>,
        ctx: SessionContext,
        formats: Arc<HashMap<u16, EventFormat>>,
        counters: Arc<ExportCounters>,
        containers: Vec<(Arc<ContainerTag>, u32)>,
    ) -> (Sink, SessionExport) {
        let (tx, batches) = mpsc::channel(batch_queue(self.config.queue_events));
        let (ctl_tx, ctl) = mpsc::channel(CONTROL_QUEUE.max(containers.len() + 1));
        let started = model::unix_now();
        for (tag, init) in containers {
            let _ = ctl_tx.try_send(Control::Started { tag, init, at: started, at_creation: false });
        }
        let sink = Sink { tx, counters: counters.clone(), capacity: self.config.queue_events };
        let root = ctx.session_resource();
        let already_dropped = counters.snapshot().2;
        let names = formats
            .iter()
            .map(|(id, f)| {
                let n = encode::EventNames {
                    full: format!("{}:{}", f.system, f.name),
                    system: f.system.clone(),
                    event: f.name.clone(),
                };
                (*id, n)
            })
            .collect();
        let worker = Worker {
            names,
            ex: self.clone(),
            root_span: crate::ids::random_u64().to_be_bytes(),
            root_resource: root,
            ctx,
            formats,
            counters,
            spans: BTreeMap::new(),
            by_init: HashMap::new(),
            pending: Vec::new(),
            pending_events: 0,
            started,
            stopped: None,
            last_warn: None,
            logged_dropped: already_dropped,
            last_reason: String::new(),
            retry_warned: None,
            drain_by: None,
        };
        let handle = tokio::runtime::Handle::current().spawn(worker.run(batches, ctl));
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        workers.retain(|h| !h.is_finished());
        workers.push(handle);
        (sink, SessionExport { ctl: ctl_tx })
    }

    /// Waits up to `limit` for the workers of stopped sessions to send what they hold.
    pub async fn drain(&self, limit: Duration) {
        let workers: Vec<JoinHandle<()>> = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        let all = futures_util::future::join_all(workers);
        if tokio::time::timeout(limit, all).await.is_err() {
            warn!("OTLP export did not finish in {limit:?} at shutdown; the rest is lost");
        }
    }
}

struct SpanState {
    span_id: [u8; 8],
    tag: Arc<ContainerTag>,
    init: u32,
    resource: Resource,
    start: u64,
    end: Option<(u64, Instant)>,
    at_creation: bool,
    exit_code: Option<i64>,
    events: u64,
    exported: bool,
}

struct Worker {
    ex: Arc<Exporter>,
    names: HashMap<u16, encode::EventNames>,
    ctx: SessionContext,
    formats: Arc<HashMap<u16, EventFormat>>,
    counters: Arc<ExportCounters>,
    root_span: [u8; 8],
    root_resource: Resource,
    spans: BTreeMap<String, SpanState>,
    by_init: HashMap<u32, String>,
    pending: Vec<Arc<Batch>>,
    pending_events: usize,
    started: u64,
    stopped: Option<u64>,
    last_warn: Option<Instant>,
    logged_dropped: u64,
    last_reason: String,
    retry_warned: Option<Instant>,
    drain_by: Option<Instant>,
}

impl Worker {
    async fn run(mut self, mut batches: mpsc::Receiver<Arc<Batch>>, mut ctl: mpsc::Receiver<Control>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                b = batches.recv() => match b {
                    Some(b) => {
                        self.pending_events += b.records.len();
                        self.pending.push(b);
                        if self.pending_events >= self.ex.config.batch_events {
                            self.flush(self.deadline()).await;
                        }
                    }
                    // The store closed its sinks: the run is over and everything is queued.
                    None => break,
                },
                Some(c) = ctl.recv() => self.control(c),
                _ = tick.tick() => {
                    self.flush(self.deadline()).await;
                    self.export_spans(false, self.deadline()).await;
                    self.report(false);
                }
            }
        }
        while let Ok(c) = ctl.try_recv() {
            self.control(c);
        }
        self.drain_by.get_or_insert(Instant::now() + FINAL_DRAIN);
        // Spans get their own attempt even when the events used up the drain time.
        let deadline = self.deadline();
        self.flush(deadline).await;
        self.export_spans(true, deadline.max(Instant::now() + self.ex.config.timeout)).await;
        self.report(true);
        let (queued, exported, dropped) = self.counters.snapshot();
        info!(session = self.ctx.id, exported, dropped, queued, "OTLP export of the run finished");
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Started { tag, init, at, at_creation } => {
                let resource = self.ctx.container_resource(&tag);
                self.by_init.insert(init, tag.id.clone());
                self.spans.entry(tag.id.clone()).or_insert(SpanState {
                    span_id: crate::ids::random_u64().to_be_bytes(),
                    tag,
                    init,
                    resource,
                    start: at,
                    end: None,
                    at_creation,
                    exit_code: None,
                    events: 0,
                    exported: false,
                });
            }
            Control::Exited { id, at } => {
                if let Some(s) = self.spans.get_mut(&id) {
                    s.end.get_or_insert((at, Instant::now()));
                }
            }
            Control::Stop { at } => {
                self.stopped = Some(at);
                self.drain_by.get_or_insert(Instant::now() + FINAL_DRAIN);
            }
        }
    }

    /// The span of a container, created on first sight when an event beats its start message.
    fn span_of(&mut self, tag: &Arc<ContainerTag>, at: u64) -> &mut SpanState {
        let ctx = &self.ctx;
        self.spans.entry(tag.id.clone()).or_insert_with(|| SpanState {
            span_id: crate::ids::random_u64().to_be_bytes(),
            tag: tag.clone(),
            init: 0,
            resource: ctx.container_resource(tag),
            start: at,
            end: None,
            at_creation: false,
            exit_code: None,
            events: 0,
            exported: false,
        })
    }

    /// The time limit of a flush: retries while running, one shared limit once stopped.
    fn deadline(&self) -> Instant {
        let retry = Instant::now() + MAX_RETRY;
        self.drain_by.map_or(retry, |d| d.min(retry))
    }

    async fn flush(&mut self, deadline: Instant) {
        if self.pending.is_empty() {
            return;
        }
        let batches = std::mem::take(&mut self.pending);
        let n = std::mem::take(&mut self.pending_events) as u64;
        if Instant::now() >= deadline {
            // The stopped run's drain time is used up (collector down or hanging): counted, not sent.
            self.counters.done(n);
            self.counters.drop_events(n);
            self.note_loss("the stopped session's export time ran out");
            return;
        }
        let (wall, observed) = (Wall::now(), model::unix_now());
        let trace_id = self.ctx.trace_id;
        let mut logs: BTreeMap<Option<String>, Vec<u8>> = BTreeMap::new();
        let mut chunks: BTreeMap<Option<String>, Vec<opentelemetry_proto::tonic::trace::v1::span::Event>> =
            BTreeMap::new();
        let formats = self.formats.clone();
        for batch in &batches {
            for rec in &batch.records {
                let d = model::decode(batch, rec, &formats);
                let key = match &rec.task.container {
                    Some(tag) => {
                        let span = self.span_of(tag, wall.unix(rec.ts));
                        span.events += 1;
                        // The exit status of the container is its init's exit_group argument.
                        if d.format.is_some_and(|f| f.name == "sys_enter_exit_group")
                            && u32::try_from(rec.task.tgid).is_ok_and(|t| t == span.init)
                        {
                            span.exit_code = d.fields.get("error_code").and_then(serde_json::Value::as_i64);
                        }
                        Some(tag.id.clone())
                    }
                    None => None,
                };
                let span_id = key.as_ref().and_then(|k| self.spans.get(k)).map_or(self.root_span, |s| s.span_id);
                match self.ex.config.events_as {
                    EventsAs::Logs => encode::log_record(
                        logs.entry(key).or_insert_with(|| Vec::with_capacity(256 * self.ex.config.batch_events)),
                        batch,
                        rec,
                        self.names.get(&rec.event_id),
                        &d.fields,
                        &wall,
                        observed,
                        &trace_id,
                        &span_id,
                    ),
                    EventsAs::SpanEvents => {
                        chunks.entry(key).or_default().push(model::span_event(batch, rec, d, &wall))
                    }
                }
            }
        }
        drop(batches);
        let result = match self.ex.config.events_as {
            EventsAs::Logs => {
                let mut body = Vec::with_capacity(logs.values().map(Vec::len).sum::<usize>() + 4096);
                let scope = model::scope();
                for (key, records) in &logs {
                    encode::resource_logs(&mut body, &self.resource_of(key.as_deref()), &scope, records);
                }
                drop(logs);
                let body = bytes::Bytes::from(body);
                let t = self.ex.transport.clone();
                send(|| t.logs(body.clone()), deadline, &self.ex.metrics, &mut self.retry_warned, self.ctx.id).await
            }
            EventsAs::SpanEvents => {
                let resource_spans = chunks
                    .into_iter()
                    .map(|(key, events)| {
                        let parent = key.as_ref().and_then(|k| self.spans.get(k)).map_or(self.root_span, |s| s.span_id);
                        let start = events.iter().map(|e| e.time_unix_nano).min().unwrap_or_default();
                        let end = events.iter().map(|e| e.time_unix_nano).max().unwrap_or_default();
                        let span = Span {
                            trace_id: trace_id.to_vec(),
                            span_id: crate::ids::random_u64().to_be_bytes().to_vec(),
                            parent_span_id: parent.to_vec(),
                            name: format!("kernel events ({})", events.len()),
                            kind: SpanKind::Internal as i32,
                            start_time_unix_nano: start,
                            end_time_unix_nano: end,
                            attributes: vec![model::i("container_tracer.events", events.len() as i64)],
                            events,
                            flags: 1,
                            ..Default::default()
                        };
                        self.resource_spans(key.as_deref(), vec![span])
                    })
                    .collect();
                let req = ExportTraceServiceRequest { resource_spans };
                let t = self.ex.transport.clone();
                let body = bytes::Bytes::from(prost::Message::encode_to_vec(&req));
                drop(req);
                send(|| t.traces(body.clone()), deadline, &self.ex.metrics, &mut self.retry_warned, self.ctx.id).await
            }
        };
        self.counters.done(n);
        match result {
            Ok(rejected) => {
                self.counters.exported(n.saturating_sub(rejected));
                if rejected > 0 {
                    self.counters.drop_events(rejected);
                    self.note_loss(&format!("the collector rejected {rejected} records"));
                }
            }
            Err(e) => {
                self.counters.drop_events(n);
                self.note_loss(&e.message);
            }
        }
    }

    fn resource_of(&self, key: Option<&str>) -> Resource {
        key.and_then(|k| self.spans.get(k)).map_or_else(|| self.root_resource.clone(), |s| s.resource.clone())
    }

    fn resource_spans(&self, key: Option<&str>, spans: Vec<Span>) -> ResourceSpans {
        ResourceSpans {
            resource: Some(self.resource_of(key)),
            scope_spans: vec![ScopeSpans { scope: Some(model::scope()), spans, ..Default::default() }],
            ..Default::default()
        }
    }

    /// Exports the spans of exited containers (after a grace period for their last events), or
    /// at the end of the run every span, ended at the stop, and the run's own span.
    async fn export_spans(&mut self, all: bool, deadline: Instant) {
        let stop = self.stopped.unwrap_or_else(model::unix_now);
        let trace_id = self.ctx.trace_id;
        let mut out: Vec<ResourceSpans> = Vec::new();
        let mut done = Vec::new();
        for (id, s) in &self.spans {
            if s.exported || !(all || s.end.is_some_and(|(_, seen)| seen.elapsed() >= SPAN_GRACE)) {
                continue;
            }
            let end = s.end.map_or(stop, |(at, _)| at).max(s.start);
            let mut attributes = vec![
                model::s("container_tracer.session.id", self.ctx.id.to_string()),
                model::b("container_tracer.attached_at_creation", s.at_creation),
                model::b("container_tracer.container_exited", s.end.is_some()),
                model::i("container_tracer.events", s.events as i64),
            ];
            if s.init != 0 {
                attributes.push(model::i("process.pid", i64::from(s.init)));
            }
            let status = match s.exit_code {
                Some(code) => {
                    attributes.push(model::i("process.exit.code", code));
                    Some(if code == 0 {
                        Status { code: StatusCode::Ok as i32, ..Default::default() }
                    } else {
                        Status { code: StatusCode::Error as i32, message: format!("exit code {code}") }
                    })
                }
                None => None,
            };
            let ns = if s.tag.namespace.is_empty() { String::new() } else { format!("{}/", s.tag.namespace) };
            let span = Span {
                trace_id: trace_id.to_vec(),
                span_id: s.span_id.to_vec(),
                parent_span_id: self.root_span.to_vec(),
                name: format!("{ns}{}/{}", s.tag.pod, s.tag.name),
                kind: SpanKind::Internal as i32,
                start_time_unix_nano: s.start,
                end_time_unix_nano: end,
                attributes,
                status,
                flags: 1,
                ..Default::default()
            };
            out.push(self.resource_spans(Some(id), vec![span]));
            done.push(id.clone());
        }
        if all {
            let root = Span {
                trace_id: trace_id.to_vec(),
                span_id: self.root_span.to_vec(),
                name: format!("trace-session {}", self.ctx.id),
                kind: SpanKind::Internal as i32,
                start_time_unix_nano: self.started,
                end_time_unix_nano: stop.max(self.started),
                attributes: vec![
                    model::s("container_tracer.session.id", self.ctx.id.to_string()),
                    model::i("container_tracer.containers", self.spans.len() as i64),
                ],
                flags: 1,
                ..Default::default()
            };
            out.push(self.resource_spans(None, vec![root]));
        }
        if out.is_empty() {
            return;
        }
        let n = out.len() as u64;
        for id in &done {
            if let Some(s) = self.spans.get_mut(id) {
                s.exported = true;
            }
        }
        let req = ExportTraceServiceRequest { resource_spans: out };
        let t = self.ex.transport.clone();
        let body = bytes::Bytes::from(prost::Message::encode_to_vec(&req));
        match send(|| t.traces(body.clone()), deadline, &self.ex.metrics, &mut self.retry_warned, self.ctx.id).await {
            Ok(_) => {
                self.ex.metrics.exported_spans.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.ex.metrics.export_spans_dropped.fetch_add(n, Ordering::Relaxed);
                warn!(session = self.ctx.id, spans = n, error = %e, "OTLP span export failed; spans lost");
            }
        }
    }

    /// Notes why events were just lost, and logs the losses (rate-limited).
    fn note_loss(&mut self, why: &str) {
        why.clone_into(&mut self.last_reason);
        self.report(false);
    }

    /// Logs the events dropped since the last report, at most once per [`WARN_EVERY`] unless
    /// `now`: queue overflows (counted by the sink) as well as failed and rejected batches.
    fn report(&mut self, now: bool) {
        let (queued, exported, dropped) = self.counters.snapshot();
        if dropped <= self.logged_dropped || !(now || self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY)) {
            return;
        }
        let reason = if self.last_reason.is_empty() {
            "export queue full (collector slow or down)"
        } else {
            self.last_reason.as_str()
        };
        warn!(
            session = self.ctx.id,
            lost = dropped - self.logged_dropped,
            dropped_total = dropped,
            exported_total = exported,
            queued,
            reason,
            "OTLP export dropped events"
        );
        self.logged_dropped = dropped;
        self.last_warn = Some(Instant::now());
        self.last_reason.clear();
    }
}

/// Sends with retries (exponential backoff from 200 ms to 5 s, or the server's Retry-After)
/// until `deadline`.
async fn send<F, Fut>(
    mut attempt: F,
    deadline: Instant,
    metrics: &Metrics,
    warned: &mut Option<Instant>,
    session: u64,
) -> Result<u64, SendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, SendError>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(rejected) => {
                metrics.export_request_successes.fetch_add(1, Ordering::Relaxed);
                return Ok(rejected);
            }
            Err(e) => {
                metrics.export_request_failures.fetch_add(1, Ordering::Relaxed);
                let wait = e.retry_after.unwrap_or(backoff).min(Duration::from_secs(30));
                if !e.retryable || Instant::now() + wait >= deadline {
                    return Err(e);
                }
                if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    *warned = Some(Instant::now());
                    warn!(session, error = %e, "OTLP export failed; retrying (new events queue meanwhile, bounded)");
                }
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racing_offers_never_queue_more_than_the_capacity_and_count_every_refusal() {
        let metrics = Arc::new(Metrics::default());
        let counters = Arc::new(ExportCounters::new(metrics.clone()));
        let (capacity, threads, offers, n) = (10_000u64, 8u64, 5_000u64, 3u64);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..offers {
                        counters.offer(n, capacity);
                    }
                });
            }
        });
        let (queued, _, dropped) = counters.snapshot();
        assert_eq!(queued, capacity / n * n, "filled to the last whole batch under the capacity");
        assert_eq!(queued + dropped, threads * offers * n, "every event queued or counted dropped");
        assert_eq!(metrics.export_queue.load(Ordering::Relaxed), queued);
        assert_eq!(metrics.export_dropped.load(Ordering::Relaxed), dropped);
        assert!(!counters.offer(1, 0), "nothing fits a zero capacity");
    }
}
