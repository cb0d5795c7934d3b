//! Protobuf wire encoding by hand, for `ExportLogsServiceRequest` (see [`super::logs`]).
//! Building the generated message structs costs a dozen allocations per event (a `String` per
//! attribute key, `Vec`s for the ids, the body map) and prost then walks nested messages again
//! for their lengths; written straight into one buffer, an event costs its bytes.

use crate::ftrace::format::FieldValue;

pub(super) const VARINT: u32 = 0;
pub(super) const FIXED64: u32 = 1;
pub(super) const LEN: u32 = 2;
pub(super) const FIXED32: u32 = 5;

pub(super) fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

pub(super) fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

pub(super) fn bytes_field(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(buf, field, LEN);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

pub(super) fn fixed64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Writes a length-delimited field whose content `f` writes. The length goes in a one-byte
/// placeholder, right for the small messages that most are (attributes, values); only a
/// longer content is moved to make room for its length. See [`nested_hint`].
pub(super) fn nested(buf: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    nested_hint(buf, field, 1, f);
}

/// [`nested`] with a placeholder of `hint` bytes: the content is moved only when its length
/// needs another number of bytes (a record of 128 bytes to 16 KiB takes 2).
pub(super) fn nested_hint(buf: &mut Vec<u8>, field: u32, hint: usize, f: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.resize(at + hint, 0);
    f(buf);
    let len = buf.len() - at - hint;
    if varint_len(len as u64) == hint {
        // In place, byte by byte: through a stack array, the bytes written one at a time were
        // read back as one word, a store-forwarding stall on every record.
        let mut v = len;
        for b in &mut buf[at..at + hint] {
            *b = (v as u8 & 0x7f) | 0x80;
            v >>= 7;
        }
        buf[at + hint - 1] &= 0x7f;
    } else {
        // Shift the content to fit the length's real size.
        let mut prefix = [0u8; 10];
        let n = varint_into(&mut prefix, len as u64);
        buf.splice(at..at + hint, prefix[..n].iter().copied());
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
pub(super) fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros()).div_ceil(7) as usize
}

/// Size of a length-delimited field of `len` bytes with a one-byte key.
pub(super) fn field_len(len: usize) -> usize {
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

/// The `key` field of a `KeyValue` (field 1, a string of under 128 bytes), encoded at
/// compile time: `N` is the key's length plus 2.
pub(super) const fn key_field<const N: usize>(k: &str) -> [u8; N] {
    let b = k.as_bytes();
    assert!(b.len() + 2 == N && b.len() < 128);
    let mut out = [0u8; N];
    out[0] = 1 << 3 | LEN as u8;
    out[1] = b.len() as u8;
    let mut i = 0;
    while i < b.len() {
        out[i + 2] = b[i];
        i += 1;
    }
    out
}

/// [`attr_int`] with a key encoded by [`key_field`]: copied as a constant (a known size, no
/// call), for the attribute every record has.
pub(super) fn attr_int_keyed<const N: usize>(buf: &mut Vec<u8>, key_field: &[u8; N], v: i64) {
    let value = 1 + varint_len(v as u64);
    key(buf, 6, LEN);
    varint(buf, (N + field_len(value)) as u64);
    buf.extend_from_slice(key_field);
    key(buf, 2, LEN);
    varint(buf, value as u64);
    key(buf, 3, VARINT);
    varint(buf, v as u64);
}

pub(super) fn attr_str(buf: &mut Vec<u8>, k: &str, v: &str) {
    attr(buf, k, field_len(v.len()), |buf| bytes_field(buf, 1, v.as_bytes()));
}

pub(super) fn attr_int(buf: &mut Vec<u8>, k: &str, v: i64) {
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
    pub(super) attrs: Vec<u8>,
    /// The `event_name` field, encoded.
    pub(super) name_field: Vec<u8>,
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

/// An `AnyValue` holding a decoded field: what the generated types make of its JSON value
/// ([`FieldValue::to_json`], then `model::any`).
pub(super) fn field_value(buf: &mut Vec<u8>, v: &FieldValue<'_>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_keys_encode_as_the_others() {
        const KEY: [u8; 18] = key_field("ftrace.timestamp");
        for v in [0i64, 1, 127, 128, 1 << 40, -1, i64::MIN, i64::MAX] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            attr_int(&mut a, "ftrace.timestamp", v);
            attr_int_keyed(&mut b, &KEY, v);
            assert_eq!(a, b, "{v}");
        }
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
