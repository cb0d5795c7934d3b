//! Direct protobuf encoding of `ExportLogsServiceRequest`. Building the generated message
//! structs costs a dozen allocations per event (a `String` per attribute key, `Vec`s for the
//! ids, the body map) and prost then walks nested messages again for their lengths; written
//! straight into one buffer, an event costs its bytes. The unit tests check the output against
//! the generated types.

use opentelemetry_proto::tonic::{common::v1::InstrumentationScope, resource::v1::Resource};
use prost::Message;

use super::model::Wall;
use crate::batch::{Batch, Record};

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

fn bytes_field(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(buf, field, LEN);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

fn fixed64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Width of the length placeholder of a nested message (a u32 length needs at most 5 bytes).
const PLACEHOLDER: usize = 5;

/// Writes a length-delimited field whose content `f` writes: the content goes after a
/// placeholder and is moved back once its length (and so the length's own size) is known.
fn nested(buf: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.extend_from_slice(&[0; PLACEHOLDER]);
    f(buf);
    let len = buf.len() - at - PLACEHOLDER;
    let mut prefix = Vec::with_capacity(PLACEHOLDER);
    varint(&mut prefix, len as u64);
    buf[at..at + prefix.len()].copy_from_slice(&prefix);
    buf.copy_within(at + PLACEHOLDER.., at + prefix.len());
    buf.truncate(buf.len() - (PLACEHOLDER - prefix.len()));
}

/// An `AnyValue` holding a JSON value (as `model` maps them).
fn any_value(buf: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value as J;
    match v {
        J::Null => {}
        J::Bool(b) => {
            key(buf, 2, VARINT);
            varint(buf, u64::from(*b));
        }
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => {
                key(buf, 3, VARINT);
                varint(buf, i as u64);
            }
            (None, Some(u)) => bytes_field(buf, 1, u.to_string().as_bytes()),
            (None, None) => {
                key(buf, 4, FIXED64);
                buf.extend_from_slice(&n.as_f64().unwrap_or_default().to_bits().to_le_bytes());
            }
        },
        J::String(s) => bytes_field(buf, 1, s.as_bytes()),
        J::Array(items) => nested(buf, 5, |buf| {
            for item in items {
                nested(buf, 1, |buf| any_value(buf, item));
            }
        }),
        J::Object(map) => nested(buf, 6, |buf| {
            for (k, v) in map {
                nested(buf, 1, |buf| key_value_json(buf, k, v));
            }
        }),
    }
}

fn key_value_json(buf: &mut Vec<u8>, k: &str, v: &serde_json::Value) {
    bytes_field(buf, 1, k.as_bytes());
    nested(buf, 2, |buf| any_value(buf, v));
}

fn attr_str(buf: &mut Vec<u8>, k: &str, v: &str) {
    nested(buf, 6, |buf| {
        bytes_field(buf, 1, k.as_bytes());
        nested(buf, 2, |buf| bytes_field(buf, 1, v.as_bytes()));
    });
}

fn attr_int(buf: &mut Vec<u8>, k: &str, v: i64) {
    nested(buf, 6, |buf| {
        bytes_field(buf, 1, k.as_bytes());
        nested(buf, 2, |buf| {
            key(buf, 3, VARINT);
            varint(buf, v as u64);
        });
    });
}

/// The names of an event, precomputed per format.
#[derive(Debug, Clone)]
pub struct EventNames {
    /// `system:event`.
    pub full: String,
    /// System.
    pub system: String,
    /// Event.
    pub event: String,
}

/// Appends one `LogRecord` (as field 2 of a `ScopeLogs`): the same record as
/// [`super::model::log_record`] builds.
#[allow(clippy::too_many_arguments)]
pub fn log_record(
    buf: &mut Vec<u8>,
    batch: &Batch,
    rec: &Record,
    names: Option<&EventNames>,
    fields: &serde_json::Map<String, serde_json::Value>,
    wall: &Wall,
    observed: u64,
    trace_id: &[u8; 16],
    span_id: &[u8; 8],
) {
    nested(buf, 2, |buf| {
        fixed64_field(buf, 1, wall.unix(rec.ts));
        // body: the fields as a key/value list.
        nested(buf, 5, |buf| {
            nested(buf, 6, |buf| {
                for (k, v) in fields {
                    nested(buf, 1, |buf| key_value_json(buf, k, v));
                }
            });
        });
        if let Some(n) = names {
            attr_str(buf, "ftrace.system", &n.system);
            attr_str(buf, "ftrace.event", &n.event);
        }
        attr_int(buf, "ftrace.cpu", i64::from(batch.cpu));
        attr_int(buf, "ftrace.timestamp", rec.ts as i64);
        attr_int(buf, "process.pid", i64::from(rec.task.tgid));
        attr_int(buf, "thread.id", i64::from(rec.pid));
        attr_str(buf, "thread.name", &rec.task.comm);
        key(buf, 8, FIXED32);
        buf.extend_from_slice(&1u32.to_le_bytes());
        bytes_field(buf, 9, trace_id);
        bytes_field(buf, 10, span_id);
        fixed64_field(buf, 11, observed);
        match names {
            Some(n) => bytes_field(buf, 12, n.full.as_bytes()),
            None => bytes_field(buf, 12, format!("event_{}", rec.event_id).as_bytes()),
        }
    });
}

/// Appends a `ResourceLogs` (field 1 of the request) of `resource` with the encoded records.
pub fn resource_logs(buf: &mut Vec<u8>, resource: &Resource, scope: &InstrumentationScope, records: &[u8]) {
    nested(buf, 1, |buf| {
        bytes_field(buf, 1, &resource.encode_to_vec());
        nested(buf, 2, |buf| {
            bytes_field(buf, 1, &scope.encode_to_vec());
            buf.extend_from_slice(records);
        });
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::{
        collector::logs::v1::ExportLogsServiceRequest,
        logs::v1::{ResourceLogs, ScopeLogs},
    };

    use super::*;
    use crate::{
        export::model::{self, Decoded},
        registry::procfs::Procfs,
        sessions::resolver::Resolver,
    };

    #[test]
    fn direct_encoding_equals_the_generated_types() {
        let resolver = Resolver::new(Procfs::new("/proc", "/sys"), Arc::default());
        let task = Arc::new(resolver.resolve(std::process::id() as i32, 0));
        let rec = Record { ts: 123_456_789, pid: -5, event_id: 7, offset: 0, len: 0, task };
        let batch = Batch { cpu: 3, page: Arc::default(), records: vec![] };
        let fields = serde_json::json!({
            "fd": -3, "big": u64::MAX, "name": "x\u{e9}", "ok": true, "ratio": 0.5,
            "list": [1, -2, "s"], "none": null, "nested": {"a": 1}, "long": "y".repeat(300)
        });
        let fields = fields.as_object().expect("map").clone();
        let names =
            EventNames { full: "syscalls:sys_enter_x".into(), system: "syscalls".into(), event: "sys_enter_x".into() };
        let wall = Wall::now();
        let (trace, span) = ([7u8; 16], [9u8; 8]);
        let resource = Resource { attributes: vec![model::s("k8s.pod.name", "p")], ..Default::default() };

        let mut records = Vec::new();
        log_record(&mut records, &batch, &rec, Some(&names), &fields, &wall, 42, &trace, &span);
        log_record(&mut records, &batch, &rec, None, &serde_json::Map::new(), &wall, 43, &trace, &span);
        let mut buf = Vec::new();
        resource_logs(&mut buf, &resource, &model::scope(), &records);
        let got = ExportLogsServiceRequest::decode(buf.as_slice()).expect("valid protobuf");

        let format = crate::ftrace::format::EventFormat {
            system: "syscalls".into(),
            name: "sys_enter_x".into(),
            id: 7,
            fields: vec![],
        };
        let d1 = Decoded { format: Some(&format), name: names.full.clone(), fields };
        let d2 = Decoded { format: None, name: "event_7".into(), fields: serde_json::Map::new() };
        let want = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![ScopeLogs {
                    scope: Some(model::scope()),
                    log_records: vec![
                        model::log_record(&batch, &rec, d1, &wall, 42, &trace, &span),
                        model::log_record(&batch, &rec, d2, &wall, 43, &trace, &span),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(got, want);
    }

    #[test]
    fn nested_lengths_of_every_size_class_are_exact() {
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 2_097_152] {
            let mut buf = Vec::new();
            nested(&mut buf, 1, |b| b.extend(std::iter::repeat_n(b'a', len)));
            let mut expect = Vec::new();
            bytes_field(&mut expect, 1, &vec![b'a'; len]);
            assert_eq!(buf, expect, "len {len}");
        }
    }
}
