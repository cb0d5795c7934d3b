//! Validation of ftrace filter expressions before they reach `events/.../filter`. Only the
//! kernel's documented grammar is let through: field names of the selected events, comparison
//! and bit operators, numbers, quoted strings, `&&`, `||`, `!` and parentheses.

use std::collections::HashSet;

/// Longest expression accepted.
pub const MAX_LEN: usize = 4096;

/// What is wrong with a filter expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Nothing but blanks.
    #[error("empty filter")]
    Empty,
    /// Longer than [`MAX_LEN`].
    #[error("filter longer than {MAX_LEN} characters")]
    TooLong,
    /// `=` used for a comparison.
    #[error("'=' is not an operator; use '=='")]
    SingleEquals,
    /// A quote with no closing quote.
    #[error("unterminated string")]
    UnterminatedString,
    /// What the kernel's string parser would take otherwise.
    #[error("control characters or backslashes in a string")]
    StringCharacters,
    /// A token starting with a digit or `-` that is no number.
    #[error("{0:?} is not a number")]
    NotANumber(String),
    /// A character outside the grammar.
    #[error("character {0:?} is not allowed in a filter")]
    Character(char),
    /// More after a complete expression.
    #[error("unexpected text after the end of the filter")]
    TrailingText,
    /// Parentheses nested past the bound.
    #[error("filter nested too deeply")]
    TooDeep,
    /// `(` never closed.
    #[error("missing ')'")]
    MissingClose,
    /// A field not in every selected event.
    #[error("unknown field {0:?} in filter")]
    UnknownField(String),
    /// A field with no operator after it.
    #[error("expected a comparison after {0:?}")]
    ExpectedComparison(String),
    /// An operator with no value after it.
    #[error("expected a number or a quoted string after {0:?} and its operator")]
    ExpectedValue(String),
    /// Neither a comparison nor `(` where a term begins.
    #[error("expected a field comparison or '('")]
    ExpectedTerm,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `&` (bits in common)
    Band,
    /// `~` (glob match of a string)
    Glob,
}

/// The value a field is compared with, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A number as written (`42`, `-1`, `0x1f`, `010`): how it reads depends on the field
    /// (the kernel parses it with base prefixes, signed or not as the field is).
    Num(String),
    /// A quoted string, without its quotes.
    Str(String),
}

/// A parsed filter. `&&` binds tighter than `||`, as in the kernel (measured: with `a` true
/// and `b`, `c` false, `a || b && c` lets events through).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Any of them.
    Or(Vec<Expr>),
    /// All of them.
    And(Vec<Expr>),
    /// Not it.
    Not(Box<Expr>),
    /// `field op value`.
    Cmp {
        /// The field's name.
        field: String,
        /// The operator.
        op: Op,
        /// The value.
        value: Value,
    },
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Num(String),
    Str(String),
    Cmp(Op),
    And,
    Or,
    Not,
    Open,
    Close,
}

fn tokens(expr: &str) -> Result<Vec<Tok>, FilterError> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' => i += 1,
            b'(' => {
                out.push(Tok::Open);
                i += 1
            }
            b')' => {
                out.push(Tok::Close);
                i += 1
            }
            b'&' if b.get(i + 1) == Some(&b'&') => {
                out.push(Tok::And);
                i += 2
            }
            b'|' if b.get(i + 1) == Some(&b'|') => {
                out.push(Tok::Or);
                i += 2
            }
            b'=' | b'!' | b'<' | b'>' | b'~' | b'&' => {
                let two = b.get(i + 1) == Some(&b'=');
                let op = match (c, two) {
                    (b'!', false) => {
                        out.push(Tok::Not);
                        i += 1;
                        continue;
                    }
                    (b'=', false) => return Err(FilterError::SingleEquals),
                    (b'=', true) => Op::Eq,
                    (b'!', true) => Op::Ne,
                    (b'<', false) => Op::Lt,
                    (b'<', true) => Op::Le,
                    (b'>', false) => Op::Gt,
                    (b'>', true) => Op::Ge,
                    (b'~', false) => Op::Glob,
                    (b'&', false) => Op::Band,
                    // `~=` and `&=` are no operators of the kernel's.
                    _ => return Err(FilterError::Character('=')),
                };
                out.push(Tok::Cmp(op));
                i += if two { 2 } else { 1 };
            }
            b'"' | b'\'' => {
                let end = b[i + 1..].iter().position(|x| *x == c).ok_or(FilterError::UnterminatedString)?;
                let s = &b[i + 1..i + 1 + end];
                if s.iter().any(|x| x.is_ascii_control() || *x == b'\\') {
                    return Err(FilterError::StringCharacters);
                }
                out.push(Tok::Str(expr[i + 1..i + 1 + end].to_owned()));
                i += end + 2;
            }
            b'0'..=b'9' | b'-' => {
                let start = i;
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                let n = &expr[start..i];
                let ok = n.parse::<i64>().is_ok()
                    || n.strip_prefix("0x").is_some_and(|h| u64::from_str_radix(h, 16).is_ok());
                if !ok {
                    return Err(FilterError::NotANumber(n.to_owned()));
                }
                out.push(Tok::Num(n.to_owned()));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(Tok::Ident(expr[start..i].to_owned()));
            }
            other => return Err(FilterError::Character(other as char)),
        }
    }
    Ok(out)
}

/// Checks `expr`; every field must exist in every selected event (`fields`, one set per
/// event), since the same filter is written to each. Errors say what is wrong.
pub fn validate(expr: &str, fields: &[HashSet<String>]) -> Result<(), FilterError> {
    check(expr, Some(fields)).map(drop)
}

/// Checks `expr` against the grammar alone, field names unchecked: what can be known without
/// the node's kernel (the admission webhook), which checks the fields later.
pub fn validate_grammar(expr: &str) -> Result<(), FilterError> {
    check(expr, None).map(drop)
}

/// Parses a filter the grammar accepts (field names unchecked).
pub fn parse(expr: &str) -> Result<Expr, FilterError> {
    check(expr, None)
}

fn check(expr: &str, fields: Option<&[HashSet<String>]>) -> Result<Expr, FilterError> {
    if expr.trim().is_empty() {
        return Err(FilterError::Empty);
    }
    if expr.len() > MAX_LEN {
        return Err(FilterError::TooLong);
    }
    let toks = tokens(expr)?;
    // Grammar: expr := and ("||" and)* ; and := term ("&&" term)* ;
    // term := "!"* ( "(" expr ")" | IDENT CMP value )
    let mut pos = 0;
    let parsed = parse_expr(&toks, &mut pos, fields, 0)?;
    if pos != toks.len() {
        return Err(FilterError::TrailingText);
    }
    Ok(parsed)
}

type Fields<'a> = Option<&'a [HashSet<String>]>;

fn parse_expr(t: &[Tok], pos: &mut usize, fields: Fields<'_>, depth: usize) -> Result<Expr, FilterError> {
    if depth > 32 {
        return Err(FilterError::TooDeep);
    }
    let mut any = vec![parse_and(t, pos, fields, depth)?];
    while t.get(*pos) == Some(&Tok::Or) {
        *pos += 1;
        any.push(parse_and(t, pos, fields, depth)?);
    }
    Ok(if any.len() == 1 { any.remove(0) } else { Expr::Or(any) })
}

fn parse_and(t: &[Tok], pos: &mut usize, fields: Fields<'_>, depth: usize) -> Result<Expr, FilterError> {
    let mut all = vec![parse_term(t, pos, fields, depth)?];
    while t.get(*pos) == Some(&Tok::And) {
        *pos += 1;
        all.push(parse_term(t, pos, fields, depth)?);
    }
    Ok(if all.len() == 1 { all.remove(0) } else { Expr::And(all) })
}

fn parse_term(t: &[Tok], pos: &mut usize, fields: Fields<'_>, depth: usize) -> Result<Expr, FilterError> {
    let mut nots = 0;
    while t.get(*pos) == Some(&Tok::Not) {
        *pos += 1;
        nots += 1;
    }
    let term = match t.get(*pos) {
        Some(Tok::Open) => {
            *pos += 1;
            let inner = parse_expr(t, pos, fields, depth + 1)?;
            if t.get(*pos) != Some(&Tok::Close) {
                return Err(FilterError::MissingClose);
            }
            *pos += 1;
            inner
        }
        Some(Tok::Ident(name)) => {
            let common = matches!(
                name.as_str(),
                "common_pid" | "common_flags" | "common_preempt_count" | "CPU" | "COMM" | "comm"
            );
            if !common && fields.is_some_and(|fields| !fields.iter().all(|f| f.contains(name))) {
                return Err(FilterError::UnknownField(name.clone()));
            }
            *pos += 1;
            let Some(Tok::Cmp(op)) = t.get(*pos) else {
                return Err(FilterError::ExpectedComparison(name.clone()));
            };
            *pos += 1;
            let value = match t.get(*pos) {
                Some(Tok::Num(n)) => Value::Num(n.clone()),
                Some(Tok::Str(s)) => Value::Str(s.clone()),
                _ => return Err(FilterError::ExpectedValue(name.clone())),
            };
            *pos += 1;
            Expr::Cmp { field: name.clone(), op: *op, value }
        }
        _ => return Err(FilterError::ExpectedTerm),
    };
    Ok((0..nots).fold(term, |e, _| Expr::Not(Box::new(e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> Vec<HashSet<String>> {
        vec![["prev_pid", "prio", "prev_comm"].iter().map(|s| (*s).to_owned()).collect()]
    }

    #[test]
    fn the_documented_grammar_passes() {
        for ok in [
            "prev_pid == 1",
            "prev_pid != 1 && prio < 100",
            "(prev_pid >= 0x10 || prio <= -5) && !(prev_comm ~ \"ba*\")",
            "prio & 4",
            "common_pid == 42",
        ] {
            validate(ok, &f()).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_takes_the_next_term() {
        let cmp = |f: &str, n: &str| Expr::Cmp { field: f.into(), op: Op::Eq, value: Value::Num(n.into()) };
        assert_eq!(
            parse("a == 1 || b == 2 && c == 3").expect("parse"),
            Expr::Or(vec![cmp("a", "1"), Expr::And(vec![cmp("b", "2"), cmp("c", "3")])])
        );
        assert_eq!(
            parse("!a == 1 && (b == 2 || c == 3)").expect("parse"),
            Expr::And(vec![Expr::Not(Box::new(cmp("a", "1"))), Expr::Or(vec![cmp("b", "2"), cmp("c", "3")])])
        );
        assert_eq!(
            parse("comm ~ 'ba*' && x & 0x10 && y >= -1").expect("parse"),
            Expr::And(vec![
                Expr::Cmp { field: "comm".into(), op: Op::Glob, value: Value::Str("ba*".into()) },
                Expr::Cmp { field: "x".into(), op: Op::Band, value: Value::Num("0x10".into()) },
                Expr::Cmp { field: "y".into(), op: Op::Ge, value: Value::Num("-1".into()) },
            ])
        );
        assert!(parse("a &= 1").is_err() && parse("a ~= 'x'").is_err(), "no kernel operators");
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        for bad in [
            "",
            "prev_pid = 1",
            "nope == 1",
            "prev_pid == 1 &&",
            "prev_pid == 1; echo x",
            "prev_pid == \"a\\\"",
            "prev_pid == `id`",
            "((prev_pid == 1)",
            "prev_pid == 12abc",
            "prev_pid prio",
        ] {
            assert!(validate(bad, &f()).is_err(), "{bad:?} must be refused");
        }
    }
}
