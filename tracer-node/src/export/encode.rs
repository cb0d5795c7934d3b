//! Direct protobuf encoding of `ExportLogsServiceRequest`. Building the generated message
//! structs costs a dozen allocations per event (a `String` per attribute key, `Vec`s for the
//! ids, the body map) and prost then walks nested messages again for their lengths; written
//! straight into one buffer, an event costs its bytes. The unit tests check the output against
//! the generated types.

use opentelemetry_proto::tonic::{common::v1::InstrumentationScope, resource::v1::Resource};
use prost::Message;

use super::model::Wall;
use crate::{
    batch::{Batch, Record},
    ftrace::format::{EventFormat, FieldValue},
};

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

/// Writes a length-delimited field whose content `f` writes. The length goes in a one-byte
/// placeholder, right for the small messages that most are (attributes, values); only a
/// longer content is moved to make room for its length. See [`nested_hint`].
fn nested(buf: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    nested_hint(buf, field, 1, f);
}

/// [`nested`] with a placeholder of `hint` bytes: the content is moved only when its length
/// needs another number of bytes (a record of 128 bytes to 16 KiB takes 2).
fn nested_hint(buf: &mut Vec<u8>, field: u32, hint: usize, f: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.resize(at + hint, 0);
    f(buf);
    let len = buf.len() - at - hint;
    let mut prefix = [0u8; 10];
    let n = varint_into(&mut prefix, len as u64);
    if n != hint {
        // Shift the content to fit the length's real size.
        buf.splice(at..at + hint, prefix[..n].iter().copied());
    } else {
        buf[at..at + n].copy_from_slice(&prefix[..n]);
    }
}

/// Writes `v` as a varint into `out`; answers its size.
fn varint_into(out: &mut [u8; 10], mut v: u64) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

/// Size of `v` as a varint.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros()).div_ceil(7) as usize
}

/// Size of a length-delimited field of `len` bytes with a one-byte key.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// An attribute (`KeyValue`, field 6 of a `LogRecord`) whose value, an `AnyValue` of
/// `value_len` bytes, `value` writes. Every length is known beforehand: nothing is moved.
fn attr(buf: &mut Vec<u8>, k: &str, value_len: usize, value: impl FnOnce(&mut Vec<u8>)) {
    let kv = field_len(k.len()) + field_len(value_len);
    key(buf, 6, LEN);
    varint(buf, kv as u64);
    bytes_field(buf, 1, k.as_bytes());
    key(buf, 2, LEN);
    varint(buf, value_len as u64);
    value(buf);
}

fn attr_str(buf: &mut Vec<u8>, k: &str, v: &str) {
    attr(buf, k, field_len(v.len()), |buf| bytes_field(buf, 1, v.as_bytes()));
}

fn attr_int(buf: &mut Vec<u8>, k: &str, v: i64) {
    attr(buf, k, 1 + varint_len(v as u64), |buf| {
        key(buf, 3, VARINT);
        varint(buf, v as u64);
    });
}

/// The names of an event, precomputed per format, with the parts of a record that only
/// depend on them encoded once.
#[derive(Debug, Clone)]
pub struct EventNames {
    /// `system:event`.
    pub full: String,
    /// System.
    pub system: String,
    /// Event.
    pub event: String,
    /// The `ftrace.system` and `ftrace.event` attributes, encoded.
    attrs: Vec<u8>,
    /// The `event_name` field, encoded.
    name_field: Vec<u8>,
}

impl EventNames {
    /// The names of event `event` of `system`.
    pub fn new(system: &str, event: &str) -> Self {
        let full = format!("{system}:{event}");
        let mut attrs = Vec::new();
        attr_str(&mut attrs, "ftrace.system", system);
        attr_str(&mut attrs, "ftrace.event", event);
        let mut name_field = Vec::new();
        bytes_field(&mut name_field, 12, full.as_bytes());
        Self { full, system: system.to_owned(), event: event.to_owned(), attrs, name_field }
    }
}

/// What consecutive records share, encoded once: a page's records are mostly of one thread.
#[derive(Debug, Default)]
pub struct RecordCache {
    /// (thread, process, command) whose attributes `thread_attrs` holds.
    thread: Option<(i32, i32, std::sync::Arc<str>)>,
    thread_attrs: Vec<u8>,
}

impl RecordCache {
    /// The `process.pid`, `thread.id` and `thread.name` attributes of `rec`'s thread.
    fn thread_attrs(&mut self, rec: &Record) -> &[u8] {
        let same = self.thread.as_ref().is_some_and(|(pid, tgid, comm)| {
            *pid == rec.pid && *tgid == rec.task.tgid && std::sync::Arc::ptr_eq(comm, &rec.task.comm)
        });
        if !same {
            self.thread_attrs.clear();
            attr_int(&mut self.thread_attrs, "process.pid", i64::from(rec.task.tgid));
            attr_int(&mut self.thread_attrs, "thread.id", i64::from(rec.pid));
            attr_str(&mut self.thread_attrs, "thread.name", &rec.task.comm);
            self.thread = Some((rec.pid, rec.task.tgid, rec.task.comm.clone()));
        }
        &self.thread_attrs
    }
}

/// An `AnyValue` holding a decoded field: what the generated types make of its JSON value
/// ([`FieldValue::to_json`], then `model::any`).
fn field_value(buf: &mut Vec<u8>, v: &FieldValue<'_>) {
    match *v {
        FieldValue::Int(i) => {
            key(buf, 3, VARINT);
            varint(buf, i as u64);
        }
        FieldValue::UInt(u) => match i64::try_from(u) {
            Ok(i) => {
                key(buf, 3, VARINT);
                varint(buf, i as u64);
            }
            // Past i64 (what OTLP integers hold): its decimal text, as the JSON path gives.
            Err(_) => {
                let mut text = [0u8; 20];
                bytes_field(buf, 1, decimal(&mut text, u));
            }
        },
        FieldValue::Pointer(p) => {
            let mut text = [0u8; 18];
            bytes_field(buf, 1, hex(&mut text, p));
        }
        FieldValue::Str(b) => match std::str::from_utf8(b) {
            Ok(_) => bytes_field(buf, 1, b),
            Err(_) => bytes_field(buf, 1, String::from_utf8_lossy(b).as_bytes()),
        },
        FieldValue::Ints { .. } => nested_hint(buf, 5, 2, |buf| {
            for e in v.elements() {
                nested(buf, 1, |buf| field_value(buf, &e));
            }
        }),
    }
}

/// `v` in decimal, written into `out`.
fn decimal(out: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &out[i..];
        }
    }
}

/// `v` as `0x...` (lowercase, no leading zeros), as `format!("{v:#x}")` writes it.
fn hex(out: &mut [u8; 18], mut v: u64) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b"0123456789abcdef"[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out[i - 2..i].copy_from_slice(b"0x");
    &out[i - 2..]
}

/// Appends one `LogRecord` (as field 2 of a `ScopeLogs`): the event's fields, decoded from its
/// payload straight into the buffer, are its body. The same record as
/// [`super::model::log_record`] builds, but for the body's order (the format's, not sorted).
#[allow(clippy::too_many_arguments)]
pub fn log_record(
    buf: &mut Vec<u8>,
    cache: &mut RecordCache,
    batch: &Batch,
    rec: &Record,
    format: Option<&EventFormat>,
    names: Option<&EventNames>,
    wall: &Wall,
    observed: u64,
    trace_id: &[u8; 16],
    span_id: &[u8; 8],
) {
    nested_hint(buf, 2, 2, |buf| {
        fixed64_field(buf, 1, wall.unix(rec.ts));
        // body: the fields as a key/value list (mostly under 128 bytes: one-byte lengths).
        nested(buf, 5, |buf| {
            nested(buf, 6, |buf| {
                if let Some(f) = format {
                    f.visit(batch.payload(rec), |name, v| {
                        nested(buf, 1, |buf| {
                            bytes_field(buf, 1, name.as_bytes());
                            nested(buf, 2, |buf| field_value(buf, &v));
                        });
                    });
                }
            });
        });
        if let Some(n) = names {
            buf.extend_from_slice(&n.attrs);
        }
        attr_int(buf, "ftrace.cpu", i64::from(batch.cpu));
        attr_int(buf, "ftrace.timestamp", rec.ts as i64);
        buf.extend_from_slice(cache.thread_attrs(rec));
        key(buf, 8, FIXED32);
        buf.extend_from_slice(&1u32.to_le_bytes());
        bytes_field(buf, 9, trace_id);
        bytes_field(buf, 10, span_id);
        fixed64_field(buf, 11, observed);
        match names {
            Some(n) => buf.extend_from_slice(&n.name_field),
            None => bytes_field(buf, 12, format!("event_{}", rec.event_id).as_bytes()),
        }
    });
}

/// Appends a `ResourceLogs` (field 1 of the request) of `resource` with the encoded records.
/// Their lengths are known beforehand, so the records are copied once, never moved.
pub fn resource_logs(buf: &mut Vec<u8>, resource: &Resource, scope: &InstrumentationScope, records: &[u8]) {
    let (resource, scope) = (resource.encode_to_vec(), scope.encode_to_vec());
    let scope_logs = field_len(scope.len()) + records.len();
    let resource_logs = field_len(resource.len()) + field_len(scope_logs);
    buf.reserve(field_len(resource_logs));
    key(buf, 1, LEN);
    varint(buf, resource_logs as u64);
    bytes_field(buf, 1, &resource);
    key(buf, 2, LEN);
    varint(buf, scope_logs as u64);
    bytes_field(buf, 1, &scope);
    buf.extend_from_slice(records);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::{
        collector::logs::v1::ExportLogsServiceRequest,
        common::v1::{any_value::Value, AnyValue},
        logs::v1::{ResourceLogs, ScopeLogs},
    };

    use super::*;
    use crate::{
        export::model::{self, Decoded},
        registry::procfs::Procfs,
        sessions::resolver::Resolver,
    };

    /// Every kind of field (signed, unsigned past i64, pointer, C string and invalid UTF-8,
    /// `__data_loc` string and bytes, int array), encoded straight from the payload, equals
    /// the generated types' record of the same event (body order aside: the JSON map sorts).
    #[test]
    fn direct_encoding_equals_the_generated_types() {
        let text = "name: sys_enter_x\nID: 7\nformat:\n\
            \tfield:int fd;\toffset:8;\tsize:4;\tsigned:1;\n\
            \tfield:unsigned long big;\toffset:16;\tsize:8;\tsigned:0;\n\
            \tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;\n\
            \tfield:char comm[8];\toffset:32;\tsize:8;\tsigned:0;\n\
            \tfield:char bad[4];\toffset:40;\tsize:4;\tsigned:0;\n\
            \tfield:__data_loc char[] path;\toffset:44;\tsize:4;\tsigned:0;\n\
            \tfield:__data_loc u8[] blob;\toffset:48;\tsize:4;\tsigned:0;\n\
            \tfield:short vals[3];\toffset:52;\tsize:6;\tsigned:1;\n\
            \tfield:int past_end;\toffset:400;\tsize:4;\tsigned:1;\n";
        let format = crate::ftrace::format::parse_event_format("syscalls", text).expect("format");
        let mut payload = vec![0u8; 64];
        payload[8..12].copy_from_slice(&(-3i32).to_ne_bytes());
        payload[16..24].copy_from_slice(&u64::MAX.to_ne_bytes());
        payload[24..32].copy_from_slice(&0x7fe7_0000_12abu64.to_ne_bytes());
        payload[32..36].copy_from_slice(b"cat\0");
        payload[40..44].copy_from_slice(&[b'x', 0xff, b'y', 0]);
        payload[44..48].copy_from_slice(&(64u32 | (6 << 16)).to_ne_bytes());
        payload[48..52].copy_from_slice(&(70u32 | (3 << 16)).to_ne_bytes());
        for (i, v) in [-1i16, 2, 300].iter().enumerate() {
            payload[52 + 2 * i..54 + 2 * i].copy_from_slice(&v.to_ne_bytes());
        }
        payload.extend_from_slice(b"/etc/\0");
        payload.extend_from_slice(&[1, 2, 250]);

        let resolver = Resolver::new(Procfs::new("/proc", "/sys"), Arc::default());
        let task = Arc::new(resolver.resolve(std::process::id() as i32, 0));
        let rec = Record { ts: 123_456_789, pid: -5, event_id: 7, offset: 0, len: payload.len() as u32, task };
        let batch = Batch { cpu: 3, page: Arc::new(payload), records: vec![] };
        let names = EventNames::new("syscalls", "sys_enter_x");
        let wall = Wall::now();
        let (trace, span) = ([7u8; 16], [9u8; 8]);
        let resource = Resource { attributes: vec![model::s("k8s.pod.name", "p")], ..Default::default() };

        let (mut records, mut cache) = (Vec::new(), RecordCache::default());
        log_record(&mut records, &mut cache, &batch, &rec, Some(&format), Some(&names), &wall, 42, &trace, &span);
        // The second record reuses the thread's encoded attributes.
        log_record(&mut records, &mut cache, &batch, &rec, None, None, &wall, 43, &trace, &span);
        let mut buf = Vec::new();
        resource_logs(&mut buf, &resource, &model::scope(), &records);
        let mut got = ExportLogsServiceRequest::decode(buf.as_slice()).expect("valid protobuf");

        let formats = std::collections::HashMap::from([(7u16, format.clone())]);
        let d1 = model::decode(&batch, &rec, &formats);
        assert_eq!(d1.fields.len(), 8, "every field but the one past the end: {:?}", d1.fields);
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
        // The body in the format's order here, sorted by name in the JSON map.
        let body = &mut got.resource_logs[0].scope_logs[0].log_records[0].body;
        if let Some(AnyValue { value: Some(Value::KvlistValue(kv)) }) = body {
            kv.values.sort_by(|a, b| a.key.cmp(&b.key));
        }
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
            for hint in [1, 2, 3] {
                let mut hinted = Vec::new();
                nested_hint(&mut hinted, 1, hint, |b| b.extend(std::iter::repeat_n(b'a', len)));
                assert_eq!(hinted, expect, "len {len}, hint {hint}");
            }
            assert_eq!(varint_len(len as u64), {
                let mut v = Vec::new();
                varint(&mut v, len as u64);
                v.len()
            });
        }
    }

    #[test]
    fn numbers_are_written_as_the_formatter_writes_them() {
        for v in [0u64, 9, 10, 255, 0xdead_beef, u64::MAX] {
            assert_eq!(decimal(&mut [0; 20], v), v.to_string().as_bytes());
            assert_eq!(hex(&mut [0; 18], v), format!("{v:#x}").as_bytes());
        }
    }
}
