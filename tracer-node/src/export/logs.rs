//! A flush's events as an OTLP `ExportLogsServiceRequest`, encoded straight from the ring
//! buffer's records: one `ResourceLogs` per group (a container, or the session for events of
//! none), each record's fields decoded from its payload into the buffer as its body. What
//! consecutive records share is encoded once and copied in one piece: the CPU's and the
//! thread's attributes (a page is of one CPU and mostly of one thread), and per group and
//! event the names, ids and flags. The unit tests check the output against the generated
//! types.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use opentelemetry_proto::tonic::{common::v1::InstrumentationScope, resource::v1::Resource};
use prost::Message;

use super::{
    encode::{
        attr_int, attr_int_keyed, attr_str, bytes_field, field_len, field_value, fixed64_field, key, key_field, nested,
        nested_hint, varint, EventNames, FIXED32, LEN,
    },
    model::Wall,
    payload::Payload,
};
use crate::{
    batch::{Batch, Record},
    ftrace::format::{EventFormat, Field},
};

/// The key of the `ftrace.timestamp` attribute, encoded.
const TIMESTAMP_KEY: [u8; 18] = key_field("ftrace.timestamp");

/// The records of one group.
struct Group {
    span_id: [u8; 8],
    records: Vec<u8>,
    /// Per event id, the encoded attributes and fields every record of it in this group has.
    fixed: Vec<(u16, Vec<u8>)>,
    /// What `tail` was encoded for: (event, CPU, thread, process, command).
    tail_of: Option<(u16, u32, i32, i32, Arc<str>)>,
    /// Everything of a record after its time, body and timestamp: the CPU's and the thread's
    /// attributes, then the event's fixed part. Copied whole (one copy a record, not three).
    tail: Vec<u8>,
}

/// Encodes a flush. See the module.
pub struct LogsEncoder<'a> {
    formats: &'a HashMap<u16, EventFormat>,
    names: &'a HashMap<u16, EventNames>,
    wall: Wall,
    observed: u64,
    trace_id: [u8; 16],
    /// Bytes reserved for the first group's records when it gets its first (the others start
    /// smaller: a flush is mostly of one container).
    reserve: usize,
    groups: Vec<Group>,
    last_format: Option<(u16, Option<&'a EventFormat>)>,
    spare: Vec<Vec<u8>>,
}

impl<'a> LogsEncoder<'a> {
    /// An encoder of records of `formats` (named by `names`), observed at `observed` (unix
    /// ns), in trace `trace_id`; about `expected` bytes of records will come.
    pub fn new(
        formats: &'a HashMap<u16, EventFormat>,
        names: &'a HashMap<u16, EventNames>,
        wall: Wall,
        observed: u64,
        trace_id: [u8; 16],
        expected: usize,
    ) -> Self {
        Self {
            formats,
            names,
            wall,
            observed,
            trace_id,
            reserve: expected,
            groups: Vec::new(),
            last_format: None,
            spare: Vec::new(),
        }
    }

    /// Buffers to encode into before allocating new ones (emptied, from earlier flushes).
    pub fn reuse(&mut self, buffers: &mut Vec<Vec<u8>>) {
        self.spare.append(buffers);
    }

    /// Adds a group whose records belong to span `span_id`; answers its index.
    pub fn group(&mut self, span_id: [u8; 8]) -> usize {
        let records = self.spare.pop().unwrap_or_default();
        self.groups.push(Group { span_id, records, fixed: Vec::new(), tail_of: None, tail: Vec::new() });
        self.groups.len() - 1
    }

    /// The format of event `id` (the last one asked is tried first: a page's records are
    /// mostly of one event).
    pub fn format(&mut self, id: u16) -> Option<&'a EventFormat> {
        match self.last_format {
            Some((last, f)) if last == id => f,
            _ => {
                let f = self.formats.get(&id);
                self.last_format = Some((id, f));
                f
            }
        }
    }

    /// Appends `rec` of `batch` to group `group` as one `LogRecord` (field 2 of the group's
    /// `ScopeLogs`).
    pub fn record(&mut self, group: usize, batch: &Batch, rec: &Record) {
        let format = self.format(rec.event_id);
        let Some(g) = self.groups.get_mut(group) else { return };
        let same = g.tail_of.as_ref().is_some_and(|(id, cpu, pid, tgid, comm)| {
            (*id, *cpu, *pid, *tgid) == (rec.event_id, batch.cpu, rec.pid, batch.task(rec).tgid)
                && Arc::ptr_eq(comm, &batch.task(rec).comm)
        });
        if !same {
            let fixed = match g.fixed.iter().position(|(id, _)| *id == rec.event_id) {
                Some(i) => i,
                None => {
                    let names = self.names.get(&rec.event_id);
                    let part = fixed_part(names, rec.event_id, &self.trace_id, &g.span_id, self.observed);
                    g.fixed.push((rec.event_id, part));
                    g.fixed.len() - 1
                }
            };
            let tail = &mut g.tail;
            tail.clear();
            attr_int(tail, "ftrace.cpu", i64::from(batch.cpu));
            attr_int(tail, "process.pid", i64::from(batch.task(rec).tgid));
            attr_int(tail, "thread.id", i64::from(rec.pid));
            attr_str(tail, "thread.name", &batch.task(rec).comm);
            tail.extend_from_slice(&g.fixed[fixed].1);
            g.tail_of = Some((rec.event_id, batch.cpu, rec.pid, batch.task(rec).tgid, batch.task(rec).comm.clone()));
        }
        let buf = &mut g.records;
        if buf.is_empty() {
            let want = if group == 0 { self.reserve } else { self.reserve.min(64 << 10) };
            buf.reserve(want);
        }
        let (wall, tail) = (&self.wall, &g.tail);
        // Field order: time, body, then the attributes and the rest in field order (the tail
        // starts with attributes).
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
            attr_int_keyed(buf, &TIMESTAMP_KEY, rec.ts as i64);
            buf.extend_from_slice(tail);
        });
    }

    /// The request: each group's records under its resource (`resources`, in the groups'
    /// order) and `scope`. The records are not copied: each `ResourceLogs` header is a piece
    /// of its own.
    pub fn finish(self, resources: impl IntoIterator<Item = Resource>, scope: &InstrumentationScope) -> Payload {
        let scope = scope.encode_to_vec();
        let mut payload = Payload::default();
        for (group, resource) in self.groups.into_iter().zip(resources) {
            let mut head = Vec::with_capacity(64 + resource.encoded_len() + scope.len());
            resource_logs_head(&mut head, &resource, &scope, group.records.len());
            payload.push(Bytes::from(head));
            payload.push_reusable(group.records);
        }
        payload
    }
}

/// Estimates of the encoded size of records, on the high side, so a request can be kept under
/// a size before it is encoded. Per event: what every record has (about 250 bytes of
/// attributes, ids and names, and the event's names twice), and per field its name and tags
/// and at most 10 bytes (a varint) or three bytes a byte of its value (arrays of small
/// numbers); then the record's payload past the fixed fields (the strings and arrays they
/// point to).
#[derive(Debug, Default)]
pub struct SizeEstimate {
    /// Per event with dynamic fields, its records' estimate.
    dynamic: HashMap<u16, Dynamic>,
    /// The largest estimate of a record of the other events (every record of a batch without
    /// dynamic fields is counted at it: no walk over the records).
    fixed: usize,
}

/// A field's encoded size, on the high side: its name and tags (8), then a number's varint
/// and tag (at most 11: a negative one takes 10), a pointer's or a large unsigned number's
/// text (at most 22), a string's bytes, or an array's elements (at most 13 each).
fn field_estimate(x: &Field) -> usize {
    let value = match x.array_len {
        Some(n) if !x.is_char() => 13 * n + 3,
        _ => (3 * x.size).max(12),
    };
    x.name.len() + 8 + value
}

/// The estimate of the records of an event with dynamic fields.
#[derive(Debug, Clone, Copy)]
struct Dynamic {
    /// Without the data after the fixed fields.
    size: usize,
    /// Where the fixed fields end.
    end: usize,
    /// Bytes a byte of the data after them takes.
    per_byte: usize,
}

/// The estimate of a record of an event of no known format (no body), and the base of every
/// record.
const RECORD_BASE: usize = 256;

impl SizeEstimate {
    /// The estimates of events of `formats`.
    pub fn new(formats: &HashMap<u16, EventFormat>) -> Self {
        let mut estimate = Self { dynamic: HashMap::new(), fixed: RECORD_BASE };
        for (id, f) in formats {
            let fields: usize = f.fields.iter().map(field_estimate).sum();
            let size = RECORD_BASE + 2 * (f.system.len() + f.name.len()) + fields;
            if f.fields.iter().any(Field::is_dynamic) {
                let end = f.fields.iter().map(|x| x.offset + x.size).max().unwrap_or(0);
                // A string is its bytes; an array of bytes takes up to 5 a byte (an AnyValue
                // each).
                let strings = f.fields.iter().filter(|x| x.is_dynamic()).all(Field::is_char);
                estimate.dynamic.insert(*id, Dynamic { size, end, per_byte: if strings { 1 } else { 5 } });
            } else {
                // Padding past the fields (records are 4-byte aligned) is in the base.
                estimate.fixed = estimate.fixed.max(size);
            }
        }
        estimate
    }

    /// The estimated size of `b`'s records, encoded.
    pub fn batch(&self, b: &Batch) -> usize {
        if self.dynamic.is_empty() {
            return b.records.len() * self.fixed;
        }
        // A page's records are mostly of one event: looked up once per run of it.
        let mut last: Option<(u16, Option<Dynamic>)> = None;
        let mut total = 0;
        for r in &b.records {
            let of = match last {
                Some((id, of)) if id == r.event_id => of,
                _ => {
                    let of = self.dynamic.get(&r.event_id).copied();
                    last = Some((r.event_id, of));
                    of
                }
            };
            total += match of {
                Some(d) => d.size + d.per_byte * (r.len as usize).saturating_sub(d.end),
                None => self.fixed,
            };
        }
        total
    }
}

/// What follows a record's own attributes, the same for every record of an event in a group:
/// the event's names as attributes, the flags, trace and span ids, the observed time and the
/// event's name.
fn fixed_part(names: Option<&EventNames>, id: u16, trace_id: &[u8; 16], span_id: &[u8; 8], observed: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    if let Some(n) = names {
        buf.extend_from_slice(&n.attrs);
    }
    // W3C "sampled": everything exported was recorded.
    key(&mut buf, 8, FIXED32);
    buf.extend_from_slice(&1u32.to_le_bytes());
    bytes_field(&mut buf, 9, trace_id);
    bytes_field(&mut buf, 10, span_id);
    fixed64_field(&mut buf, 11, observed);
    match names {
        Some(n) => buf.extend_from_slice(&n.name_field),
        None => bytes_field(&mut buf, 12, format!("event_{id}").as_bytes()),
    }
    buf
}

/// The start of a `ResourceLogs` (field 1 of the request) of `resource` whose `ScopeLogs` of
/// `scope` (encoded) holds `records` bytes of log records, which follow it.
fn resource_logs_head(buf: &mut Vec<u8>, resource: &Resource, scope: &[u8], records: usize) {
    let resource_len = resource.encoded_len();
    let scope_logs = field_len(scope.len()) + records;
    let resource_logs = field_len(resource_len) + field_len(scope_logs);
    key(buf, 1, LEN);
    varint(buf, resource_logs as u64);
    key(buf, 1, LEN);
    varint(buf, resource_len as u64);
    resource.encode_raw(buf);
    key(buf, 2, LEN);
    varint(buf, scope_logs as u64);
    bytes_field(buf, 1, scope);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::{
        collector::logs::v1::ExportLogsServiceRequest,
        common::v1::{any_value::Value, AnyValue},
        logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    };

    use super::*;
    use crate::{
        batch::TaskInfo,
        export::model::{self, Decoded},
    };

    /// Attributes and body sorted by key: their order is not part of the protocol.
    fn sorted(mut r: LogRecord) -> LogRecord {
        r.attributes.sort_by(|a, b| a.key.cmp(&b.key));
        if let Some(AnyValue { value: Some(Value::KvlistValue(kv)) }) = &mut r.body {
            kv.values.sort_by(|a, b| a.key.cmp(&b.key));
        }
        r
    }

    /// Every kind of field (signed, unsigned past i64, pointer, C string and invalid UTF-8,
    /// `__data_loc` string and bytes, int array), encoded straight from the payload, equals
    /// the generated types' record of the same event, in two groups, with events of another
    /// thread, another CPU and an unknown format in between (what the caches must not mix).
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
        let len = payload.len() as u32;

        let cat = Arc::new(TaskInfo::new(40, Arc::from("cat"), None));
        let sh = Arc::new(TaskInfo::new(41, Arc::from("sh"), None));
        let page = Arc::new(payload);
        // Both batches hold both threads: cat is number 0, sh number 1.
        let r1 = Record::new(123_456_789, -5, 7, 0, len, 0);
        let r2 = Record::new(123_456_790, 41, 9, 0, len, 1);
        let r3 = Record::new(123_456_791, 42, 7, 0, len, 0);
        let b1 = Batch::new(3, page.clone(), vec![], vec![cat.clone(), sh.clone()]);
        let b2 = Batch::new(1, page, vec![], vec![cat, sh]);
        let formats = HashMap::from([(7u16, format)]);
        let names = HashMap::from([(7u16, EventNames::new("syscalls", "sys_enter_x"))]);
        let wall = Wall::now();
        let trace = [7u8; 16];
        let resources: Vec<Resource> = ["p", "q"]
            .iter()
            .map(|p| Resource { attributes: vec![model::s("k8s.pod.name", *p)], ..Default::default() })
            .collect();

        let mut enc = LogsEncoder::new(&formats, &names, wall, 42, trace, 4);
        let (g1, g2) = (enc.group([1; 8]), enc.group([2; 8]));
        let sent = [(g1, &b1, &r1), (g1, &b1, &r2), (g2, &b2, &r1), (g1, &b2, &r3), (g2, &b1, &r2), (g1, &b1, &r1)];
        for (g, b, r) in sent {
            enc.record(g, b, r);
        }
        let body = enc.finish(resources.clone(), &model::scope());
        assert!(body.parts().len() == 4, "a header and the records per group");
        let got = ExportLogsServiceRequest::decode(body.to_bytes()).expect("valid protobuf");

        let decoded = |b: &Batch, r: &Record| match formats.get(&r.event_id) {
            Some(_) => {
                let d = model::decode(b, r, &formats);
                assert_eq!(d.fields.len(), 8, "every field but the one past the end: {:?}", d.fields);
                d
            }
            None => Decoded { format: None, name: format!("event_{}", r.event_id), fields: serde_json::Map::new() },
        };
        let want_group = |g: usize, span: [u8; 8]| ResourceLogs {
            resource: Some(resources[g].clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(model::scope()),
                log_records: sent
                    .iter()
                    .filter(|(gi, _, _)| *gi == g)
                    .map(|(_, b, r)| sorted(model::log_record(b, r, decoded(b, r), &wall, 42, &trace, &span)))
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let want = ExportLogsServiceRequest { resource_logs: vec![want_group(g1, [1; 8]), want_group(g2, [2; 8])] };
        let mut got = got;
        for rl in &mut got.resource_logs {
            for sl in &mut rl.scope_logs {
                sl.log_records = std::mem::take(&mut sl.log_records).into_iter().map(sorted).collect();
            }
        }
        assert_eq!(got, want);
    }

    /// The estimate that keeps requests under the size limit is on the high side for events
    /// of one field and of many (negative numbers: ten bytes each), of an array of negative
    /// shorts, with a string or bytes after the fixed fields, of no known format, with a long command name and the largest ids; and
    /// not far above for a session of one event.
    #[test]
    fn the_size_estimate_is_not_below_the_encoded_size() {
        let mut many =
            String::from("name: many\nID: 3\nformat:\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n");
        for i in 0..12 {
            many += &format!("\tfield:int a_long_field_name_{i};\toffset:{};\tsize:4;\tsigned:1;\n", 8 + 4 * i);
        }
        let getppid =
            "name: sys_enter_getppid\nID: 5\nformat:\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n";
        let path = "name: open\nID: 7\nformat:\n\tfield:__data_loc char[] path;\toffset:8;\tsize:4;\tsigned:0;\n";
        let blob = "name: blob\nID: 8\nformat:\n\tfield:__data_loc u8[] blob;\toffset:8;\tsize:4;\tsigned:0;\n";
        // Past the string's bytes: every short is -1.
        let shorts = "name: shorts\nID: 10\nformat:\n\tfield:short v[8];\toffset:320;\tsize:16;\tsigned:1;\n\tfield:short w;\toffset:336;\tsize:2;\tsigned:1;\n";
        let parse = |system, text: &str| crate::ftrace::format::parse_event_format(system, text).expect("format");
        let all = HashMap::from([
            (3u16, parse("sched", &many)),
            (5, parse("syscalls", getppid)),
            (7, parse("x", path)),
            (8, parse("x", blob)),
            (10, parse("x", shorts)),
        ]);
        let names: HashMap<u16, EventNames> =
            all.iter().map(|(id, f)| (*id, EventNames::new(&f.system, &f.name))).collect();
        let task = Arc::new(TaskInfo::new(2_000_000_000, Arc::from("a-command-name15"), None));
        let mut page = vec![0xffu8; 400];
        // The string: 300 bytes at 12.
        page[8..12].copy_from_slice(&(12u32 | (300 << 16)).to_ne_bytes());
        page[12..311].fill(b'a');
        page[311] = 0;
        let page = Arc::new(page);
        let encoded = |id: u16, len: u32| {
            let records = (0..100).map(|i| Record::new(u64::MAX - i, 2_000_000_001, id, 0, len, 0)).collect();
            let batch = Batch::new(1, page.clone(), records, vec![task.clone()]);
            let mut enc = LogsEncoder::new(&all, &names, Wall::now(), u64::MAX, [1; 16], 0);
            let g = enc.group([2; 8]);
            for r in &batch.records {
                enc.record(g, &batch, r);
            }
            let size = enc.finish([Resource::default()], &model::scope()).parts()[1].len();
            (batch, size)
        };
        let mixed = SizeEstimate::new(&all);
        for (id, len) in [(3u16, 56u32), (5, 16), (7, 312), (8, 312), (9, 64), (10, 340)] {
            let (batch, size) = encoded(id, len);
            let estimated = mixed.batch(&batch);
            assert!(estimated >= size, "event {id}: estimated {estimated} < {size}");
            if let Some(f) = all.get(&id) {
                let alone = SizeEstimate::new(&HashMap::from([(id, f.clone())])).batch(&batch);
                assert!(alone >= size && alone < 2 * size, "event {id} alone: estimated {alone}, encoded {size}");
            }
        }
    }
}
