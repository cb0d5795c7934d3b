//! The OpenTelemetry shape of a session: resources after the k8s and container semantic
//! conventions, one span per (session, container) under a span of the session's run, and
//! kernel events as log records (or span events) tied to their container's span.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::{
    common::v1::{any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList},
    resource::v1::Resource,
    trace::v1::span::Event,
};

use crate::{
    batch::{Batch, ContainerTag, Record},
    ftrace::format::EventFormat,
};

/// Name of the instrumentation scope of everything exported.
pub const SCOPE: &str = "container-tracer";

/// The instrumentation scope.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope { name: SCOPE.into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }
}

/// A string attribute.
pub fn s(key: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

/// An integer attribute.
pub fn i(key: &str, v: i64) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(Value::IntValue(v)) }), ..Default::default() }
}

/// A boolean attribute.
pub fn b(key: &str, v: bool) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(Value::BoolValue(v)) }), ..Default::default() }
}

fn any(v: &serde_json::Value) -> AnyValue {
    use serde_json::Value as J;
    let value = match v {
        J::Null => None,
        J::Bool(x) => Some(Value::BoolValue(*x)),
        J::Number(n) => Some(match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(x), _, _) => Value::IntValue(x),
            // u64 beyond i64 (addresses, flags): kept exact as text.
            (None, Some(x), _) => Value::StringValue(x.to_string()),
            (_, _, x) => Value::DoubleValue(x.unwrap_or_default()),
        }),
        J::String(x) => Some(Value::StringValue(x.clone())),
        J::Array(a) => Some(Value::ArrayValue(ArrayValue { values: a.iter().map(any).collect() })),
        J::Object(o) => Some(Value::KvlistValue(KeyValueList {
            values: o
                .iter()
                .map(|(k, v)| KeyValue { key: k.clone(), value: Some(any(v)), ..Default::default() })
                .collect(),
        })),
    };
    AnyValue { value }
}

/// Nanoseconds since the epoch now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Converts the instances' `mono` trace clock to wall time, with the offset read now (an NTP
/// step moves later conversions with it, as it moves the wall clock).
#[derive(Debug, Clone, Copy)]
pub struct Wall {
    offset: i128,
}

impl Wall {
    /// The offset between CLOCK_REALTIME and CLOCK_MONOTONIC now.
    pub fn now() -> Self {
        use rustix::time::{clock_gettime, ClockId};
        let ns = |t: rustix::time::Timespec| i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec);
        let mono = ns(clock_gettime(ClockId::Monotonic));
        let real = ns(clock_gettime(ClockId::Realtime));
        Self { offset: real - mono }
    }

    /// Unix nanoseconds of a kernel timestamp.
    pub fn unix(&self, mono_ns: u64) -> u64 {
        u64::try_from(i128::from(mono_ns) + self.offset).unwrap_or(0)
    }
}

/// What every resource of a session carries.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// Session id.
    pub id: u64,
    /// Trace of the session (all its runs).
    pub trace_id: [u8; 16],
    /// Node name.
    pub node: String,
    /// `service.name` of the node resource.
    pub service_name: String,
    /// Trace hook.
    pub hook: String,
    /// Its arguments.
    pub arguments: String,
    /// The user's context.
    pub user_context: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`.
    pub extra: Vec<(String, String)>,
}

impl SessionContext {
    fn common(&self, attrs: &mut Vec<KeyValue>) {
        attrs.push(s("k8s.node.name", &self.node));
        attrs.push(s("host.name", &self.node));
        attrs.push(s("container_tracer.session.id", self.id.to_string()));
        attrs.push(s("container_tracer.trace_hook", &self.hook));
        if !self.arguments.is_empty() {
            attrs.push(s("container_tracer.trace_arguments", &self.arguments));
        }
        if !self.user_context.is_empty() {
            attrs.push(s("container_tracer.user_context", &self.user_context));
        }
        for (k, v) in &self.extra {
            if !attrs.iter().any(|a| &a.key == k) {
                attrs.push(s(k, v));
            }
        }
    }

    /// The node's own resource: the session span and events of no known container.
    pub fn session_resource(&self) -> Resource {
        let mut attrs = vec![s("service.name", &self.service_name)];
        self.common(&mut attrs);
        Resource { attributes: attrs, ..Default::default() }
    }

    /// A container's resource. `service.name` is the container's name, as the OpenTelemetry
    /// operator sets it for workloads.
    pub fn container_resource(&self, tag: &ContainerTag) -> Resource {
        let mut attrs = vec![
            s("service.name", &tag.name),
            s("k8s.pod.name", &tag.pod),
            s("k8s.container.name", &tag.name),
            s("container.id", &tag.id),
        ];
        if !tag.namespace.is_empty() {
            attrs.push(s("k8s.namespace.name", &tag.namespace));
            attrs.push(s("service.namespace", &tag.namespace));
        }
        if !tag.runtime.is_empty() {
            attrs.push(s("container.runtime", &tag.runtime));
        }
        attrs.extend(tag.workload.iter().map(|(k, v)| s(k, v)));
        self.common(&mut attrs);
        Resource { attributes: attrs, ..Default::default() }
    }
}

/// One decoded kernel event.
pub struct Decoded<'a> {
    /// Its format, when known.
    pub format: Option<&'a EventFormat>,
    /// `system:event`.
    pub name: String,
    /// Its fields.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Decodes `rec`.
pub fn decode<'a>(
    batch: &Batch,
    rec: &Record,
    formats: &'a std::collections::HashMap<u16, EventFormat>,
) -> Decoded<'a> {
    match formats.get(&rec.event_id) {
        Some(f) => {
            Decoded { format: Some(f), name: format!("{}:{}", f.system, f.name), fields: f.decode(batch.payload(rec)) }
        }
        None => Decoded { format: None, name: format!("event_{}", rec.event_id), fields: serde_json::Map::new() },
    }
}

fn event_attributes(batch: &Batch, rec: &Record, d: &Decoded<'_>, extra: usize) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(7 + extra);
    if let Some(f) = d.format {
        a.push(s("ftrace.system", &f.system));
        a.push(s("ftrace.event", &f.name));
    }
    a.push(i("ftrace.cpu", i64::from(batch.cpu)));
    a.push(i("ftrace.timestamp", rec.ts as i64));
    a.push(i("process.pid", i64::from(batch.task(rec).tgid)));
    a.push(i("thread.id", i64::from(rec.pid)));
    a.push(s("thread.name", &*batch.task(rec).comm));
    a
}

/// A kernel event as a log record of span `span_id` of `trace_id`; its fields are the body.
/// The reference that `encode::log_record` (what is sent) is checked against.
#[cfg(test)]
pub fn log_record(
    batch: &Batch,
    rec: &Record,
    d: Decoded<'_>,
    wall: &Wall,
    observed: u64,
    trace_id: &[u8; 16],
    span_id: &[u8; 8],
) -> opentelemetry_proto::tonic::logs::v1::LogRecord {
    let attributes = event_attributes(batch, rec, &d, 0);
    let body = any(&serde_json::Value::Object(d.fields));
    opentelemetry_proto::tonic::logs::v1::LogRecord {
        time_unix_nano: wall.unix(rec.ts),
        observed_time_unix_nano: observed,
        event_name: d.name,
        body: Some(body),
        attributes,
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        // W3C "sampled": everything exported was recorded.
        flags: 1,
        ..Default::default()
    }
}

/// A kernel event as a span event; its fields are attributes under their own names.
pub fn span_event(batch: &Batch, rec: &Record, d: Decoded<'_>, wall: &Wall) -> Event {
    let mut attributes = event_attributes(batch, rec, &d, d.fields.len());
    for (k, v) in &d.fields {
        attributes.push(KeyValue { key: k.clone(), value: Some(any(v)), ..Default::default() });
    }
    Event { time_unix_nano: wall.unix(rec.ts), name: d.name, attributes, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_become_typed_any_values() {
        let v = serde_json::json!({"fd": -3, "addr": u64::MAX, "name": "x", "ok": true, "l": [1, 2]});
        let Some(Value::KvlistValue(kv)) = any(&v).value else { panic!("kvlist") };
        let get = |k: &str| kv.values.iter().find(|x| x.key == k).and_then(|x| x.value.clone()).and_then(|v| v.value);
        assert_eq!(get("fd"), Some(Value::IntValue(-3)));
        assert_eq!(get("addr"), Some(Value::StringValue(u64::MAX.to_string())));
        assert_eq!(get("name"), Some(Value::StringValue("x".into())));
        assert_eq!(get("ok"), Some(Value::BoolValue(true)));
        assert!(matches!(get("l"), Some(Value::ArrayValue(a)) if a.values.len() == 2));
    }

    #[test]
    fn mono_timestamps_convert_to_wall_time() {
        let wall = Wall::now();
        let mono = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let mono_ns = mono.tv_sec as u64 * 1_000_000_000 + mono.tv_nsec as u64;
        let diff = wall.unix(mono_ns).abs_diff(unix_now());
        assert!(diff < 1_000_000_000, "converted time is {diff} ns off");
    }
}
