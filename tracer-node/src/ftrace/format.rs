//! Event format descriptions (`events/<system>/<event>/format`, `events/header_page`) and the
//! decoding of a raw event payload into named fields, following the kernel's own description
//! rather than hard-coded layouts.

use serde_json::{Map, Value};

/// One field of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// C type as the kernel wrote it (`const char *`, `__data_loc char[]`, `pid_t`...).
    pub ctype: String,
    /// Field name.
    pub name: String,
    /// Byte offset in the payload.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
    /// Whether the integer is signed.
    pub signed: bool,
    /// Element count for fixed arrays (`char comm[16]` → 16).
    pub array_len: Option<usize>,
}

impl Field {
    fn is_data_loc(&self) -> bool {
        self.ctype.starts_with("__data_loc")
    }

    /// Whether the field points to data after the fixed fields (`__data_loc`, `__rel_loc`),
    /// of a size each record says.
    pub fn is_dynamic(&self) -> bool {
        self.is_data_loc() || self.is_rel_loc()
    }

    fn is_rel_loc(&self) -> bool {
        self.ctype.starts_with("__rel_loc")
    }
    /// Whether it is of characters (a string when an array).
    pub fn is_char(&self) -> bool {
        let base = self.ctype.trim_start_matches("__data_loc").trim_start_matches("__rel_loc").trim();
        base.starts_with("char") || base.starts_with("const char") || base.starts_with("unsigned char")
    }
    fn is_pointer(&self) -> bool {
        self.ctype.contains('*')
    }
}

/// The format of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    /// Subsystem (`syscalls`, `sched`, ...).
    pub system: String,
    /// Event name (`sys_enter_openat`).
    pub name: String,
    /// The id in `common_type`.
    pub id: u16,
    /// Event-specific fields (the `common_*` ones are left out).
    pub fields: Vec<Field>,
}

/// Errors parsing a format file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A line or key is missing or malformed.
    #[error("malformed format description: {0}")]
    Malformed(String),
}

fn parse_field_line(line: &str) -> Result<Field, FormatError> {
    let bad = || FormatError::Malformed(line.trim().to_owned());
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in line.trim().split(';') {
        let part = part.trim();
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d.trim().to_owned());
        } else if let Some(v) = part.strip_prefix("offset:") {
            offset = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("signed:") {
            signed = v.trim() == "1";
        }
    }
    let decl = decl.ok_or_else(bad)?;
    // `<type> <name>` or `<type> <name>[N]`; the name is the last token.
    let (ctype, mut name) = decl.rsplit_once(' ').map(|(t, n)| (t.trim().to_owned(), n.to_owned())).ok_or_else(bad)?;
    let mut array_len = None;
    if let Some(open) = name.find('[') {
        let n = name[open + 1..].trim_end_matches(']');
        array_len = n.parse().ok();
        name.truncate(open);
    }
    Ok(Field { ctype, name, offset: offset.ok_or_else(bad)?, size: size.ok_or_else(bad)?, signed, array_len })
}

/// Parses the text of `events/<system>/<event>/format`.
pub fn parse_event_format(system: &str, text: &str) -> Result<EventFormat, FormatError> {
    let mut name = None;
    let mut id = None;
    let mut fields = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(n) = t.strip_prefix("name:") {
            name = Some(n.trim().to_owned());
        } else if let Some(i) = t.strip_prefix("ID:") {
            id = i.trim().parse().ok();
        } else if t.starts_with("field:") {
            let f = parse_field_line(t)?;
            if !f.name.starts_with("common_") {
                fields.push(f);
            }
        }
    }
    Ok(EventFormat {
        system: system.to_owned(),
        name: name.ok_or_else(|| FormatError::Malformed("no name".into()))?,
        id: id.ok_or_else(|| FormatError::Malformed("no ID".into()))?,
        fields,
    })
}

/// The layout of a ring-buffer page, from `events/header_page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    /// Offset and size of the page timestamp.
    pub timestamp: (usize, usize),
    /// Offset and size of the commit word (data length plus flags).
    pub commit: (usize, usize),
    /// Offset of the event data.
    pub data_offset: usize,
    /// Size of the data area.
    pub data_size: usize,
}

/// Parses `events/header_page`.
pub fn parse_header_page(text: &str) -> Result<PageHeader, FormatError> {
    let mut ts = None;
    let mut commit = None;
    let mut data = None;
    for line in text.lines().filter(|l| l.trim().starts_with("field:")) {
        let f = parse_field_line(line)?;
        match f.name.as_str() {
            "timestamp" => ts = Some((f.offset, f.size)),
            "commit" => commit = Some((f.offset, f.size)),
            "data" => data = Some((f.offset, f.size)),
            _ => {}
        }
    }
    let missing = |what: &str| FormatError::Malformed(format!("header_page has no {what}"));
    let (data_offset, data_size) = data.ok_or_else(|| missing("data"))?;
    Ok(PageHeader {
        timestamp: ts.ok_or_else(|| missing("timestamp"))?,
        commit: commit.ok_or_else(|| missing("commit"))?,
        data_offset,
        data_size,
    })
}

fn read_uint(buf: &[u8], size: usize) -> Option<u64> {
    let b = buf.get(..size)?;
    Some(match size {
        1 => u64::from(b[0]),
        2 => u64::from(u16::from_ne_bytes([b[0], b[1]])),
        4 => u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        8 => u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        _ => return None,
    })
}

fn int_field(raw: u64, size: usize, signed: bool) -> FieldValue<'static> {
    if !signed {
        return FieldValue::UInt(raw);
    }
    FieldValue::Int(match size {
        1 => i64::from(raw as u8 as i8),
        2 => i64::from(raw as u16 as i16),
        4 => i64::from(raw as u32 as i32),
        _ => raw as i64,
    })
}

impl EventFormat {
    /// `system:name`.
    pub fn full_name(&self) -> String {
        format!("{}:{}", self.system, self.name)
    }

    /// Whether `name` is one of the event's own fields.
    pub fn has_field(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.name == name)
    }

    /// Decodes the event-specific fields of `payload` (a whole event record, common fields
    /// included). Pointers become hex strings, `char` arrays and `__data_loc` strings become
    /// strings, other arrays lists of numbers; a field that does not fit is skipped.
    pub fn decode(&self, payload: &[u8]) -> Map<String, Value> {
        let mut out = Map::new();
        self.visit(payload, |name, v| {
            out.insert(name.to_owned(), v.to_json());
        });
        out
    }

    /// Calls `f` with each event-specific field of `payload` that fits, in the format's order,
    /// borrowing from the payload: what [`Self::decode`] makes values of, without allocating
    /// (export encodes them straight into its buffer).
    pub fn visit<'a>(&'a self, payload: &'a [u8], mut f: impl FnMut(&'a str, FieldValue<'a>)) {
        for field in &self.fields {
            let Some(raw) = payload.get(field.offset..field.offset + field.size) else { continue };
            let value = if field.is_data_loc() || field.is_rel_loc() {
                // 32 bits: offset in the low half, length in the high half; __rel_loc offsets
                // count from the end of the field itself.
                let Some(word) = read_uint(raw, 4) else { continue };
                let (mut off, len) = ((word & 0xffff) as usize, (word >> 16) as usize);
                if field.is_rel_loc() {
                    off += field.offset + field.size;
                }
                let Some(data) = payload.get(off..off + len) else { continue };
                if field.is_char() {
                    FieldValue::Str(until_nul(data))
                } else {
                    FieldValue::Ints { raw: data, elem: 1, signed: false }
                }
            } else if let Some(n) = field.array_len {
                if field.is_char() {
                    FieldValue::Str(until_nul(raw))
                } else {
                    let elem = field.size.checked_div(n).unwrap_or(0);
                    FieldValue::Ints { raw: &raw[..(elem * n).min(raw.len())], elem, signed: field.signed }
                }
            } else if field.is_pointer() {
                match read_uint(raw, field.size) {
                    Some(v) => FieldValue::Pointer(v),
                    None => continue,
                }
            } else {
                match read_uint(raw, field.size) {
                    Some(v) => int_field(v, field.size, field.signed),
                    None => continue,
                }
            };
            f(&field.name, value);
        }
    }
}

/// One decoded field, borrowing from its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValue<'a> {
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A pointer (shown in hex).
    Pointer(u64),
    /// A C string, up to its NUL (not checked for UTF-8).
    Str(&'a [u8]),
    /// An array of integers of `elem` bytes each (elements that do not fit are skipped).
    Ints {
        /// The array's bytes.
        raw: &'a [u8],
        /// Bytes per element.
        elem: usize,
        /// Whether the elements are signed.
        signed: bool,
    },
}

impl FieldValue<'_> {
    /// The elements of an [`FieldValue::Ints`] array (nothing for the other kinds).
    pub fn elements(&self) -> impl Iterator<Item = FieldValue<'static>> + '_ {
        let (raw, elem, signed) = match *self {
            FieldValue::Ints { raw, elem, signed } => (raw, elem, signed),
            _ => (&[][..], 0, false),
        };
        raw.chunks_exact(elem.max(1))
            .take(if elem == 0 { 0 } else { usize::MAX })
            .filter_map(move |c| read_uint(c, elem).map(|v| int_field(v, elem, signed)))
    }

    /// The JSON value of the events endpoint.
    pub fn to_json(&self) -> Value {
        match *self {
            FieldValue::Int(v) => Value::from(v),
            FieldValue::UInt(v) => Value::from(v),
            FieldValue::Pointer(v) => Value::from(format!("{v:#x}")),
            FieldValue::Str(b) => Value::from(String::from_utf8_lossy(b).into_owned()),
            FieldValue::Ints { .. } => Value::from(self.elements().map(|e| e.to_json()).collect::<Vec<_>>()),
        }
    }
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXEC: &str = "name: sched_process_exec\nID: 365\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\
\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n\n\
print fmt: \"filename=%s pid=%d old_pid=%d\", __get_str(filename), REC->pid, REC->old_pid\n";

    #[test]
    fn exec_format_parses_and_decodes_its_data_loc_string() {
        let f = parse_event_format("sched", EXEC).expect("parse");
        assert_eq!((f.id, f.name.as_str(), f.fields.len()), (365, "sched_process_exec", 3));
        let mut payload = vec![0u8; 20];
        payload[0..2].copy_from_slice(&365u16.to_ne_bytes());
        payload[4..8].copy_from_slice(&42i32.to_ne_bytes());
        let name = b"/bin/sh\0";
        payload[8..12].copy_from_slice(&((20u32) | ((name.len() as u32) << 16)).to_ne_bytes());
        payload[12..16].copy_from_slice(&42i32.to_ne_bytes());
        payload[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        payload.extend_from_slice(name);
        let m = f.decode(&payload);
        assert_eq!(m["filename"], "/bin/sh");
        assert_eq!(m["pid"], 42);
        assert_eq!(m["old_pid"], -1);
    }

    #[test]
    fn char_arrays_pointers_and_truncated_payloads() {
        let text = "name: x\nID: 7\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
                    \tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;\n";
        let f = parse_event_format("s", text).expect("parse");
        let mut payload = vec![0u8; 32];
        payload[8..12].copy_from_slice(b"busy");
        payload[24..32].copy_from_slice(&0x7fe7u64.to_ne_bytes());
        let m = f.decode(&payload);
        assert_eq!(m["comm"], "busy");
        assert_eq!(m["filename"], "0x7fe7");
        assert!(f.decode(&payload[..20]).get("filename").is_none(), "a field past the end is skipped");
    }

    #[test]
    fn header_page_of_this_kernel_parses() {
        let text = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n\
                    \tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;\n\
                    \tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;\n\
                    \tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;\n";
        let h = parse_header_page(text).expect("parse");
        assert_eq!(h, PageHeader { timestamp: (0, 8), commit: (8, 8), data_offset: 16, data_size: 4080 });
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_event_format("s", "nothing here").is_err());
        assert!(parse_event_format("s", "name: a\nID: 1\n\tfield:int;offset:x;").is_err());
        assert!(parse_header_page("").is_err());
    }
}
