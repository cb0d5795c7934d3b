//! A `trace_events` filter evaluated in user space, on the records of a shared recording, with
//! the kernel's own semantics: a filtered session then needs no ftrace instance of its own.
//!
//! Only what can be mirrored exactly is compiled: comparisons of integer fields (the event's,
//! `common_*`, `CPU`) with numbers. Strings (char arrays, `__data_loc`, `char *` pointers the
//! kernel follows), `COMM` (the current task's name, not in the record) and anything the
//! kernel would refuse are not: such a filter goes to the kernel, on a recording of its own, as
//! before. The semantics, as in `kernel/trace/trace_events_filter.c` and checked against this
//! kernel by a differential test (`tracer-node/tests/filters.rs`):
//! - a number reads like `kstrtoll`/`kstrtoull` with base 0 (`0x` hex, a leading `0` octal),
//!   signed or not as the field is, then is cut to the field's width;
//! - `<`, `<=`, `>`, `>=` compare as the field's type; `&` is true when a bit is in common;
//! - `CPU` is the CPU that recorded the event;
//! - `&&` binds tighter than `||`; `!` negates the term after it.

use tracer_spec::filter::{Expr, Op, Value};

use crate::ftrace::format::EventFormat;

/// A compiled filter for one event's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Predicate(Node);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Or(Vec<Node>),
    And(Vec<Node>),
    Not(Box<Node>),
    /// An integer field at `at` of `size` bytes, compared with `val` (already cut to the size).
    Int {
        at: usize,
        size: u8,
        signed: bool,
        op: Op,
        val: u64,
    },
    /// The recording CPU.
    Cpu {
        op: Op,
        val: i32,
    },
}

/// Where a filter's field is.
enum Place {
    Int { at: usize, size: u8, signed: bool },
    Cpu,
}

/// The common fields every record starts with: (name, offset, size, signed).
const COMMON: [(&str, usize, u8, bool); 4] = [
    ("common_type", 0, 2, false),
    ("common_flags", 2, 1, false),
    ("common_preempt_count", 3, 1, false),
    ("common_pid", 4, 4, true),
];

fn place(format: &EventFormat, name: &str) -> Result<Place, String> {
    // The kernel looks in the event's fields first, then `CPU`/`cpu`/`COMM`/`comm`, then the
    // common fields.
    if let Some(f) = format.fields.iter().find(|f| f.name == name) {
        let t = f.ctype.as_str();
        let stringy = t.contains("__data_loc") || t.contains("__rel_loc") || (t.contains("char") && t.contains('*'));
        if stringy || f.array_len.is_some() || t.contains("cpumask") || t.contains('[') {
            return Err(format!("{name} is not an integer field"));
        }
        return match f.size {
            1 | 2 | 4 | 8 => Ok(Place::Int { at: f.offset, size: f.size as u8, signed: f.signed }),
            n => Err(format!("{name} is {n} bytes")),
        };
    }
    match name {
        "CPU" | "cpu" => return Ok(Place::Cpu),
        "COMM" | "comm" => return Err("COMM is the current task's name, not in the record".into()),
        _ => {}
    }
    COMMON
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|&(_, at, size, signed)| Place::Int { at, size, signed })
        .ok_or_else(|| format!("no field {name}"))
}

/// `kstrtoull`/`kstrtoll` with base 0: `0x` hex, a leading `0` octal, else decimal; the
/// whole text, no overflow. The bits of the value.
fn kernel_number(text: &str, signed: bool) -> Option<u64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) if signed => (true, rest),
        Some(_) => return None,
        None => (false, text),
    };
    let (radix, digits) = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        (16, hex)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    if digits.is_empty() {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if !signed {
        return Some(magnitude);
    }
    if negative {
        // Down to i64::MIN.
        (magnitude <= 1 << 63).then(|| magnitude.wrapping_neg())
    } else {
        (magnitude <= i64::MAX as u64).then_some(magnitude)
    }
}

fn cut(val: u64, size: u8) -> u64 {
    match size {
        1 => val & 0xff,
        2 => val & 0xffff,
        4 => val & 0xffff_ffff,
        _ => val,
    }
}

fn compile_node(e: &Expr, format: &EventFormat) -> Result<Node, String> {
    Ok(match e {
        Expr::Or(v) => Node::Or(v.iter().map(|x| compile_node(x, format)).collect::<Result<_, _>>()?),
        Expr::And(v) => Node::And(v.iter().map(|x| compile_node(x, format)).collect::<Result<_, _>>()?),
        Expr::Not(x) => Node::Not(Box::new(compile_node(x, format)?)),
        Expr::Cmp { field, op, value } => {
            let Value::Num(text) = value else { return Err(format!("{field} is compared with a string")) };
            if *op == Op::Glob {
                return Err(format!("{field}: '~' takes a string"));
            }
            match place(format, field)? {
                Place::Int { at, size, signed } => {
                    let val = kernel_number(text, signed).ok_or_else(|| format!("{text} does not read as {field}"))?;
                    Node::Int { at, size, signed, op: *op, val: cut(val, size) }
                }
                Place::Cpu => {
                    if *op == Op::Band {
                        return Err("'&' on CPU".into());
                    }
                    let val = kernel_number(text, true).ok_or_else(|| format!("{text} does not read as CPU"))?;
                    Node::Cpu { op: *op, val: val as i32 }
                }
            }
        }
    })
}

impl Predicate {
    /// Compiles `expr` for the records of `format`; `Err` says why the kernel must evaluate
    /// it instead.
    pub fn compile(expr: &Expr, format: &EventFormat) -> Result<Self, String> {
        compile_node(expr, format).map(Self)
    }

    /// Whether a record (its payload from `common_type` on, recorded on `cpu`) passes. A record
    /// too short for a field does not.
    pub fn matches(&self, payload: &[u8], cpu: u32) -> bool {
        eval(&self.0, payload, cpu)
    }
}

/// One filter compiled for each event it is written to (a `trace_events -f` applies to every
/// selected event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledFilter {
    by_event: Vec<(u16, Predicate)>,
}

impl CompiledFilter {
    /// Compiles `expr` for every format; `Err` (why) when any of them needs the kernel.
    pub fn compile<'a>(expr: &Expr, formats: impl IntoIterator<Item = &'a EventFormat>) -> Result<Self, String> {
        let by_event = formats
            .into_iter()
            .map(|f| {
                Predicate::compile(expr, f).map(|p| (f.id, p)).map_err(|why| format!("{}:{}: {why}", f.system, f.name))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { by_event })
    }

    /// Whether a record of event `id` passes (an event the filter was not compiled for does not).
    pub fn matches(&self, id: u16, payload: &[u8], cpu: u32) -> bool {
        self.by_event.iter().find(|(e, _)| *e == id).is_some_and(|(_, p)| p.matches(payload, cpu))
    }
}

fn read(payload: &[u8], at: usize, size: u8) -> Option<u64> {
    let b = payload.get(at..at + size as usize)?;
    Some(match size {
        1 => u64::from(b[0]),
        2 => u64::from(u16::from_ne_bytes([b[0], b[1]])),
        4 => u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        _ => u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
    })
}

/// Sign-extends a `size`-byte value.
fn signed_value(v: u64, size: u8) -> i64 {
    match size {
        1 => i64::from(v as u8 as i8),
        2 => i64::from(v as u16 as i16),
        4 => i64::from(v as u32 as i32),
        _ => v as i64,
    }
}

fn order<T: Ord>(op: Op, a: T, b: T) -> bool {
    match op {
        Op::Lt => a < b,
        Op::Le => a <= b,
        Op::Gt => a > b,
        Op::Ge => a >= b,
        Op::Eq => a == b,
        Op::Ne => a != b,
        Op::Band | Op::Glob => false,
    }
}

fn eval(n: &Node, payload: &[u8], cpu: u32) -> bool {
    match n {
        Node::Or(v) => v.iter().any(|x| eval(x, payload, cpu)),
        Node::And(v) => v.iter().all(|x| eval(x, payload, cpu)),
        Node::Not(x) => !eval(x, payload, cpu),
        &Node::Int { at, size, signed, op, val } => {
            let Some(field) = read(payload, at, size) else { return false };
            match op {
                Op::Band => field & val != 0,
                Op::Eq | Op::Ne => order(op, field, val),
                _ if signed => order(op, signed_value(field, size), signed_value(val, size)),
                _ => order(op, field, val),
            }
        }
        &Node::Cpu { op, val } => order(op, cpu as i32, val),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftrace::format::parse_event_format;

    fn format() -> EventFormat {
        let text = "name: sys_exit_read\nID: 700\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
            \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
            \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
            \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
            \tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n\
            \tfield:unsigned int fd;\toffset:24;\tsize:4;\tsigned:0;\n\
            \tfield:char * buf;\toffset:32;\tsize:8;\tsigned:0;\n\
            \tfield:char comm[16];\toffset:40;\tsize:16;\tsigned:0;\n\
            \tfield:short prio;\toffset:56;\tsize:2;\tsigned:1;\n\
            \nprint fmt: \"\"\n";
        parse_event_format("syscalls", text).expect("format")
    }

    fn record(pid: i32, ret: i64, fd: u32, prio: i16) -> Vec<u8> {
        let mut p = vec![0u8; 64];
        p[4..8].copy_from_slice(&pid.to_ne_bytes());
        p[16..24].copy_from_slice(&ret.to_ne_bytes());
        p[24..28].copy_from_slice(&fd.to_ne_bytes());
        p[56..58].copy_from_slice(&prio.to_ne_bytes());
        p
    }

    fn check(expr: &str, rec: &[u8], cpu: u32) -> bool {
        let e = tracer_spec::filter::parse(expr).expect("parse");
        Predicate::compile(&e, &format()).unwrap_or_else(|why| panic!("{expr}: {why}")).matches(rec, cpu)
    }

    #[test]
    fn integers_compare_as_their_field_s_type() {
        let r = record(42, -11, 3, -5);
        assert!(check("ret == -11 && ret < 0 && ret >= -11", &r, 0));
        assert!(check("fd == 3 && fd < 010 && fd != 0x4 && fd & 2", &r, 0), "octal 010 is 8");
        assert!(!check("fd & 4", &r, 0));
        assert!(check("prio < 0 && prio == 0xfffb", &r, 0), "cut to 16 bits: 0xfffb is -5");
        assert!(check("fd == 4294967299 && !(fd < 4294967299)", &r, 0), "cut to 32 bits: 4294967299 is 3");
        assert!(check("common_pid == 42 && CPU == 1 && cpu != 0", &r, 1));
        assert!(check("common_pid == 1 || ret == -11 && fd == 3", &r, 0));
        assert!(!check("(common_pid == 1 || ret == -11) && fd == 4", &r, 0));
        assert!(check("!fd == 4 && !!(fd == 3)", &r, 0));
    }

    #[test]
    fn what_the_kernel_must_evaluate_or_would_refuse_is_not_compiled() {
        for expr in [
            "buf == 0",
            "comm == \"sh\"",
            "comm ~ \"s*\"",
            "COMM == \"x\"",
            "fd == -1",
            "fd ~ \"1\"",
            "fd == 08",
            "ret == 0xffffffffffffffff",
            "CPU & 1",
            "nope == 1",
        ] {
            let e = tracer_spec::filter::parse(expr).expect("parse");
            assert!(Predicate::compile(&e, &format()).is_err(), "{expr} must go to the kernel");
        }
    }

    #[test]
    fn numbers_read_as_the_kernel_reads_them() {
        assert_eq!(kernel_number("0x1f", false), Some(31));
        assert_eq!(kernel_number("017", false), Some(15));
        assert_eq!(kernel_number("0", false), Some(0));
        assert_eq!(kernel_number("-9223372036854775808", true), Some(1 << 63));
        assert_eq!(kernel_number("-1", true), Some(u64::MAX));
        assert_eq!(kernel_number("-1", false), None);
        assert_eq!(kernel_number("18446744073709551615", false), Some(u64::MAX));
        assert_eq!(kernel_number("18446744073709551616", false), None);
        assert_eq!(kernel_number("9", true), Some(9));
        assert_eq!(kernel_number("09", true), None);
    }

    #[test]
    fn a_short_record_does_not_match() {
        assert!(!check("fd == 0", &[0u8; 10], 0));
        assert!(check("!(fd == 0)", &[0u8; 10], 0));
    }
}
