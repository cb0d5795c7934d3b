//! The spans of a run: one per attached container and one for the run, exported when a
//! container's span ends (after a grace period for its last events) and at the run's end.

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    resource::v1::Resource,
    trace::v1::{span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status},
};

use std::{sync::atomic::Ordering, time::Instant};

use tracing::warn;

use super::{model, retry::send, worker::Worker, SPAN_GRACE};

impl Worker {
    pub(super) fn resource_of(&self, key: Option<&str>) -> Resource {
        key.and_then(|k| self.spans.get(k)).map_or_else(|| self.root_resource.clone(), |s| s.resource.clone())
    }

    pub(super) fn resource_spans(&self, key: Option<&str>, spans: Vec<Span>) -> ResourceSpans {
        ResourceSpans {
            resource: Some(self.resource_of(key)),
            scope_spans: vec![ScopeSpans { scope: Some(model::scope()), spans, ..Default::default() }],
            ..Default::default()
        }
    }

    /// Exports the spans of exited containers (after a grace period for their last events), or
    /// at the end of the run every span, ended at the stop, and the run's own span.
    pub(super) async fn export_spans(&mut self, all: bool, deadline: Instant) {
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
        let body = super::payload::Payload::from(prost::Message::encode_to_vec(&req));
        match send(|| t.traces(body.clone()), deadline, &self.ex.metrics, &self.retry_warned, self.ctx.id).await {
            Ok(_) => {
                self.ex.metrics.exported_spans.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.ex.metrics.export_spans_dropped.fetch_add(n, Ordering::Relaxed);
                warn!(session = self.ctx.id, spans = n, error = %e, "OTLP span export failed; spans lost");
            }
        }
    }
}
