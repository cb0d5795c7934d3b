//! A running session's export worker: batches its events into OTLP requests, retries, keeps the
//! spans of its containers, and reports what it dropped.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Instant,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    resource::v1::Resource,
    trace::v1::{span::SpanKind, Span},
};
use tokio::{sync::mpsc, task::JoinSet};
use tracing::{info, warn};

use super::{
    config::EventsAs,
    encode,
    logs::{LogsEncoder, SizeEstimate},
    model::{self, SessionContext, Wall},
    payload::Payload,
    retry::send,
    session::Control,
    transport::SendError,
    ExportCounters, Exporter, FINAL_DRAIN, FLUSH_EVERY, MAX_RETRY, WARN_EVERY,
};
use crate::{
    batch::{Batch, ContainerTag},
    ftrace::format::EventFormat,
};

/// Requests of a session on the wire at once. The next request is encoded while one is sent;
/// a second one sent at once cost both sides more CPU (10 % here, the receiver's threads
/// contending) and dropped no fewer events at 1 M/s (measured with the export benchmark).
const IN_FLIGHT: usize = 1;

/// A request's outcome (records the collector rejected), and the request.
pub(super) type Sent = (Result<u64, SendError>, Payload);

/// Sent requests' buffers kept for the next flushes: a flush is mostly of one container, and
/// the next one is encoded while one is sent.
const MAX_SPARE: usize = 2;

/// The size a request is kept under (estimated before encoding, see [`SizeEstimate`]):
/// an OpenTelemetry Collector refuses gRPC messages over 4 MiB unless configured otherwise.
const MAX_REQUEST_BYTES: usize = 3 << 20;

pub(super) struct SpanState {
    pub(super) span_id: [u8; 8],
    pub(super) tag: Arc<ContainerTag>,
    pub(super) init: u32,
    pub(super) resource: Resource,
    pub(super) start: u64,
    pub(super) end: Option<(u64, Instant)>,
    pub(super) at_creation: bool,
    pub(super) exit_code: Option<i64>,
    pub(super) events: u64,
    pub(super) exported: bool,
}

pub(super) struct Worker {
    pub(super) ex: Arc<Exporter>,
    pub(super) names: HashMap<u16, encode::EventNames>,
    pub(super) ctx: SessionContext,
    pub(super) formats: Arc<HashMap<u16, EventFormat>>,
    pub(super) counters: Arc<ExportCounters>,
    pub(super) root_span: [u8; 8],
    pub(super) root_resource: Resource,
    pub(super) spans: BTreeMap<String, SpanState>,
    pub(super) by_init: HashMap<u32, String>,
    pub(super) pending: Vec<Arc<Batch>>,
    pub(super) pending_events: usize,
    pub(super) pending_bytes: usize,
    pub(super) sizes: SizeEstimate,
    pub(super) started: u64,
    pub(super) stopped: Option<u64>,
    pub(super) last_warn: Option<Instant>,
    pub(super) logged_dropped: u64,
    pub(super) last_reason: String,
    pub(super) retry_warned: Arc<Mutex<Option<Instant>>>,
    /// The requests being sent, and how many events each holds.
    pub(super) in_flight: JoinSet<Sent>,
    /// Buffers of sent requests, for the next flushes (see `payload`).
    pub(super) spare: Vec<Vec<u8>>,
    pub(super) in_flight_events: HashMap<tokio::task::Id, u64>,
    pub(super) drain_by: Option<Instant>,
}

impl Worker {
    /// The worker of a run of `ctx` that started at `started` (unix ns); `already_dropped`
    /// events of the session's earlier runs were reported then.
    pub(super) fn new(
        ex: Arc<Exporter>,
        ctx: SessionContext,
        formats: Arc<HashMap<u16, EventFormat>>,
        counters: Arc<ExportCounters>,
        started: u64,
        already_dropped: u64,
    ) -> Self {
        let names = formats
            .iter()
            .map(|(id, f)| {
                let n = encode::EventNames::new(&f.system, &f.name);
                (*id, n)
            })
            .collect();
        Worker {
            sizes: SizeEstimate::new(&formats),
            names,
            ex,
            root_span: crate::ids::random_u64().to_be_bytes(),
            root_resource: ctx.session_resource(),
            ctx,
            formats,
            counters,
            spans: BTreeMap::new(),
            by_init: HashMap::new(),
            pending: Vec::new(),
            pending_events: 0,
            pending_bytes: 0,
            started,
            stopped: None,
            last_warn: None,
            logged_dropped: already_dropped,
            last_reason: String::new(),
            retry_warned: Arc::default(),
            in_flight: JoinSet::new(),
            spare: Vec::new(),
            in_flight_events: HashMap::new(),
            drain_by: None,
        }
    }

    pub(super) async fn run(mut self, mut batches: mpsc::Receiver<Arc<Batch>>, mut ctl: mpsc::Receiver<Control>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                b = batches.recv() => match b {
                    Some(b) => {
                        self.pending_events += b.records.len();
                        self.pending_bytes += self.sizes.batch(&b);
                        self.pending.push(b);
                        if self.pending_events >= self.ex.config.batch_events || self.pending_bytes >= MAX_REQUEST_BYTES {
                            self.flush(self.deadline()).await;
                        }
                    }
                    // The store closed its sinks: the run is over and everything is queued.
                    None => break,
                },
                Some(c) = ctl.recv() => self.control(c),
                Some(sent) = self.in_flight.join_next_with_id(), if !self.in_flight.is_empty() => self.settle(sent),
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
        while let Some(sent) = self.in_flight.join_next_with_id().await {
            self.settle(sent);
        }
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
    /// Looked up by a borrowed id: the id is copied only when a span is made (this runs for
    /// every exported event).
    fn span_of(&mut self, tag: &Arc<ContainerTag>, at: u64) -> Option<&mut SpanState> {
        if !self.spans.contains_key(&tag.id) {
            self.new_span(tag, at);
        }
        self.spans.get_mut(&tag.id)
    }

    fn new_span(&mut self, tag: &Arc<ContainerTag>, at: u64) {
        let ctx = &self.ctx;
        self.spans.insert(
            tag.id.clone(),
            SpanState {
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
            },
        );
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
        let estimate = std::mem::take(&mut self.pending_bytes);
        if Instant::now() >= deadline {
            // The stopped run's drain time is used up (collector down or hanging): counted, not sent.
            self.counters.done(n);
            self.counters.drop_events(n);
            self.note_loss("the stopped session's export time ran out");
            return;
        }
        let (wall, observed) = (Wall::now(), model::unix_now());
        let trace_id = self.ctx.trace_id;
        // One group per container (and one for events of none): its encoded log records or
        // its span events. Records of a page are mostly of one container and one event, so
        // the last group and the last event's format are tried first: a container's id is
        // copied and its span looked up once per flush, not per event.
        struct Group {
            tag: Option<Arc<ContainerTag>>,
            init: u32,
            events: u64,
        }
        let mut groups: Vec<Group> = Vec::new();
        let mut chunks: Vec<Vec<opentelemetry_proto::tonic::trace::v1::span::Event>> = Vec::new();
        let mut last_group = usize::MAX;
        let formats = self.formats.clone();
        let names = std::mem::take(&mut self.names);
        let mut logs = LogsEncoder::new(&formats, &names, wall, observed, trace_id, estimate);
        // A quiet session does not keep the megabytes of its busy seconds.
        self.spare.retain(|b| b.capacity() <= 4 * estimate.max(64 << 10));
        self.spare.truncate(MAX_SPARE);
        logs.reuse(&mut self.spare);
        for batch in &batches {
            for rec in &batch.records {
                let format = logs.format(rec.event_id);
                let tag = batch.task(rec).container.as_ref();
                let same = |g: &Group| g.tag.as_ref().map(Arc::as_ptr) == tag.map(Arc::as_ptr);
                if groups.get(last_group).is_none_or(|g| !same(g)) {
                    let id = tag.map(|t| t.id.as_str());
                    last_group = match groups.iter().position(|g| g.tag.as_ref().map(|t| t.id.as_str()) == id) {
                        Some(g) => g,
                        None => {
                            let (span_id, init) = match tag.and_then(|t| self.span_of(t, wall.unix(rec.ts))) {
                                Some(span) => (span.span_id, span.init),
                                None => (self.root_span, 0),
                            };
                            groups.push(Group { tag: tag.cloned(), init, events: 0 });
                            logs.group(span_id);
                            chunks.push(Vec::new());
                            groups.len() - 1
                        }
                    };
                }
                let group = &mut groups[last_group];
                if let Some(tag) = &group.tag {
                    group.events += 1;
                    // The exit status of the container is its init's exit_group argument.
                    if format.is_some_and(|f| f.name == "sys_enter_exit_group")
                        && u32::try_from(batch.task(rec).tgid).is_ok_and(|t| t == group.init)
                    {
                        let code = model::decode(batch, rec, &formats)
                            .fields
                            .get("error_code")
                            .and_then(serde_json::Value::as_i64);
                        if let Some(span) = self.spans.get_mut(&tag.id) {
                            span.exit_code = code;
                        }
                    }
                }
                match self.ex.config.events_as {
                    EventsAs::Logs => logs.record(last_group, batch, rec),
                    EventsAs::SpanEvents => chunks[last_group].push(model::span_event(
                        batch,
                        rec,
                        model::decode(batch, rec, &formats),
                        &wall,
                    )),
                }
            }
        }
        let keys: Vec<Option<String>> = groups
            .iter()
            .map(|g| {
                let tag = g.tag.as_ref()?;
                if let Some(span) = self.spans.get_mut(&tag.id) {
                    span.events += g.events;
                }
                Some(tag.id.clone())
            })
            .collect();
        drop(groups);
        drop(batches);
        let (body, traces) = match self.ex.config.events_as {
            EventsAs::Logs => {
                let resources: Vec<Resource> = keys.iter().map(|k| self.resource_of(k.as_deref())).collect();
                let body = logs.finish(resources, &model::scope());
                self.names = names;
                (body, false)
            }
            EventsAs::SpanEvents => {
                let resource_spans = keys
                    .into_iter()
                    .zip(chunks)
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
                let body = Payload::from(prost::Message::encode_to_vec(&req));
                drop(req);
                drop(logs);
                self.names = names;
                (body, true)
            }
        };
        // The next flush is encoded while this one is on the wire and the collector decodes
        // it: one request at a time left both sides waiting for each other half the time.
        while self.in_flight.len() >= IN_FLIGHT {
            match self.in_flight.join_next_with_id().await {
                Some(sent) => self.settle(sent),
                None => break,
            }
        }
        let (t, metrics, warned, session) =
            (self.ex.transport.clone(), self.ex.metrics.clone(), self.retry_warned.clone(), self.ctx.id);
        let sending = self.in_flight.spawn(async move {
            let result = if traces {
                send(|| t.traces(body.clone()), deadline, &metrics, &warned, session).await
            } else {
                send(|| t.logs(body.clone()), deadline, &metrics, &warned, session).await
            };
            (result, body)
        });
        self.in_flight_events.insert(sending.id(), n);
    }

    /// Counts what a request that ended exported, or lost.
    fn settle(&mut self, sent: Result<(tokio::task::Id, Sent), tokio::task::JoinError>) {
        let id = match &sent {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let n = self.in_flight_events.remove(&id).unwrap_or_default();
        self.counters.done(n);
        let result = sent.map_err(|e| SendError {
            retryable: false,
            retry_after: None,
            message: format!("export request failed: {e}"),
        });
        let result = result.and_then(|(_, (r, body))| {
            if self.spare.len() < MAX_SPARE {
                self.spare.extend(body.reclaim());
            }
            r
        });
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
