//! Parsing of `/proc/<pid>/stat`, shared by the hook (which records the init's start time) and
//! tracer-node (which checks it). Pure parsing: callers do the reading.

/// The fields of `/proc/<pid>/stat` container-tracer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Process state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Parent pid (field 4).
    pub ppid: u32,
    /// Start time in clock ticks since boot (field 22): with the pid, identifies a process for good.
    pub start_time: u64,
}

/// Parses the content of `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the *last* `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    // After ppid (field 4), skip fields 5..=21 to reach starttime (field 22).
    let start_time = fields.nth(17)?.parse().ok()?;
    Some(Stat { state, ppid, start_time })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_parentheses_in_comm_parses() {
        let line = "2534 (runc:[2:INIT]) S 1 2534 2534 0 -1 4194624 675 0 0 0 0 0 0 0 20 0 5 0 11737 1040629760 2474 18446744073709551615";
        let st = parse_stat(line).expect("parses");
        assert_eq!(st, Stat { state: 'S', ppid: 1, start_time: 11737 });
        let odd = "7 (a) b) (c) R 3 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0";
        assert_eq!(parse_stat(odd).expect("parses").start_time, 99);
    }

    #[test]
    fn truncated_stat_is_none() {
        assert_eq!(parse_stat("1 (init) S 0 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }
}
