//! Which thread created which, and when each lived, from a session's own fork and exit events.
//!
//! Thread ids are reused: with the default `pid_max` of 32768, a container forking 1,500
//! processes a second goes through every id in about 20 s. An edge "4242 was forked by 300"
//! is therefore only true between that fork and the exit of 4242; an event of 4242 is tied to
//! the life of 4242 that its timestamp falls in, never to an earlier one.

use std::{collections::HashMap, sync::Arc};

use crate::ftrace::format::EventFormat;

/// Lives kept per generation; two generations are kept, so a life is remembered for at least
/// this many later forks, and memory stays bounded whatever the fork rate.
const LIVES_PER_GENERATION: usize = 65_536;

/// Lives of one thread id kept at most (the newest).
const LIVES_PER_TID: usize = 4;

/// One life of a thread id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Life {
    /// When it was forked (trace clock); 0 for a thread that ran before the session.
    pub start: u64,
    /// When it exited, `u64::MAX` while that is not known.
    pub end: u64,
    /// The thread that created it.
    pub parent: u32,
    /// Its command: its creator's at the fork, its own last one once it exited.
    pub comm: Option<Arc<str>>,
}

/// Fork and exit events seen so far.
#[derive(Debug, Default)]
pub struct Lineage {
    current: HashMap<u32, Vec<Life>>,
    previous: HashMap<u32, Vec<Life>>,
    lives: usize,
}

impl Lineage {
    /// The lives of `tid`, moved into the current generation.
    fn lives_mut(&mut self, tid: u32) -> &mut Vec<Life> {
        if self.lives >= LIVES_PER_GENERATION {
            self.previous = std::mem::take(&mut self.current);
            self.lives = 0;
        }
        if !self.current.contains_key(&tid) {
            let old = self.previous.remove(&tid).unwrap_or_default();
            self.lives += old.len();
            self.current.insert(tid, old);
        }
        self.current.entry(tid).or_default()
    }

    /// `parent` forked `child` at `ts`; `comm` is the child's command then.
    pub fn forked(&mut self, parent: u32, child: u32, ts: u64, comm: Option<Arc<str>>) {
        let lives = self.lives_mut(child);
        lives.push(Life { start: ts, end: u64::MAX, parent, comm });
        lives.sort_by_key(|l| l.start);
        let extra = lives.len().saturating_sub(LIVES_PER_TID);
        lives.drain(..extra);
        // Counts what was added to the generation, an upper bound of what it holds.
        self.lives += 1;
    }

    /// `tid` exited at `ts`, its command then `comm`.
    pub fn exited(&mut self, tid: u32, ts: u64, comm: Option<Arc<str>>) {
        let lives = self.lives_mut(tid);
        if let Some(life) = lives.iter_mut().rev().find(|l| l.start <= ts) {
            life.end = life.end.min(ts);
            if comm.is_some() {
                life.comm = comm;
            }
        }
    }

    /// `tid` runs now, in the container of `init`, and was forked before the session saw it:
    /// what was known of the id is over.
    pub fn running(&mut self, init: u32, tid: u32) {
        let lives = self.lives_mut(tid);
        lives.clear();
        lives.push(Life { start: 0, end: u64::MAX, parent: init, comm: None });
        self.lives += 1;
    }

    /// The life of `tid` that time `ts` falls in, when known.
    pub fn life(&self, tid: u32, ts: u64) -> Option<&Life> {
        let lives = self.current.get(&tid).or_else(|| self.previous.get(&tid))?;
        lives.iter().rev().find(|l| l.start <= ts).filter(|l| ts <= l.end)
    }
}

/// Where an event keeps a command: a `char[16]` in place, or (kernels since 6.10 for the fork
/// event) a `__data_loc char[]`, a 32-bit word holding the string's offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CommField {
    at: usize,
    len: usize,
    data_loc: bool,
}

impl CommField {
    fn of(f: &EventFormat, name: &str) -> Option<Self> {
        let x = f.fields.iter().find(|x| x.name == name)?;
        let data_loc = x.ctype.starts_with("__data_loc");
        (data_loc || x.ctype.starts_with("char")).then_some(Self { at: x.offset, len: x.size, data_loc })
    }
}

/// The command an event payload holds at `c`.
fn comm_at(payload: &[u8], c: CommField) -> Option<Arc<str>> {
    let mut raw = payload.get(c.at..c.at + c.len)?;
    if c.data_loc {
        let word = u32::from_ne_bytes(raw.get(..4)?.try_into().ok()?);
        let (off, len) = ((word & 0xffff) as usize, (word >> 16) as usize);
        raw = payload.get(off..off + len)?;
    }
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    Some(Arc::from(String::from_utf8_lossy(&raw[..end]).as_ref()))
}

fn field(f: &EventFormat, name: &str, size: Option<usize>) -> Option<(usize, usize)> {
    f.fields.iter().find(|x| x.name == name && size.is_none_or(|s| x.size == s)).map(|x| (x.offset, x.size))
}

/// Where `sched_process_fork` keeps the parent and child thread ids and the child's command,
/// read from its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForkEvent {
    /// Its event id.
    pub id: u16,
    parent: usize,
    child: usize,
    comm: Option<CommField>,
}

impl ForkEvent {
    /// The layout of `sched_process_fork`, when its format has both pid fields.
    pub fn from_format(f: &EventFormat) -> Option<Self> {
        Some(Self {
            id: f.id,
            parent: field(f, "parent_pid", Some(4))?.0,
            child: field(f, "child_pid", Some(4))?.0,
            comm: CommField::of(f, "child_comm"),
        })
    }

    /// (parent, child) of a fork event's payload.
    pub fn parse(&self, payload: &[u8]) -> Option<(u32, u32)> {
        let read = |at: usize| payload.get(at..at + 4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        let (parent, child) = (read(self.parent)?, read(self.child)?);
        Some((u32::try_from(parent).ok()?, u32::try_from(child).ok()?))
    }

    /// The child's command in a fork event's payload.
    pub fn comm(&self, payload: &[u8]) -> Option<Arc<str>> {
        comm_at(payload, self.comm?)
    }
}

/// Where `sched_process_exit` keeps the exiting thread's command (the thread is the event's
/// own `common_pid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitEvent {
    /// Its event id.
    pub id: u16,
    comm: Option<CommField>,
}

impl ExitEvent {
    /// The layout of `sched_process_exit`.
    pub fn from_format(f: &EventFormat) -> Self {
        Self { id: f.id, comm: CommField::of(f, "comm") }
    }

    /// The exiting thread's command.
    pub fn comm(&self, payload: &[u8]) -> Option<Arc<str>> {
        comm_at(payload, self.comm?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_belongs_to_the_life_its_timestamp_falls_in() {
        let mut l = Lineage::default();
        l.forked(300, 4242, 100, Some(Arc::from("sh")));
        l.exited(4242, 200, Some(Arc::from("cat")));
        l.forked(900, 4242, 300, None);
        assert_eq!(l.life(4242, 150).map(|x| x.parent), Some(300));
        assert_eq!(l.life(4242, 150).and_then(|x| x.comm.clone()).as_deref(), Some("cat"), "its last command");
        assert_eq!(l.life(4242, 250), None, "between two lives: not known");
        assert_eq!(l.life(4242, 350).map(|x| x.parent), Some(900));
        assert_eq!(l.life(4242, 50), None, "before its first fork");
        // An exit read before the next fork of the id (other CPU) still closes the right life.
        l.exited(4242, 400, None);
        l.forked(7, 4242, 500, None);
        assert_eq!(l.life(4242, 450), None);
        assert_eq!(l.life(4242, 600).map(|x| x.parent), Some(7));
        // A thread found running replaces what was known.
        l.running(1000, 4242);
        assert_eq!(l.life(4242, 10).map(|x| x.parent), Some(1000));
    }

    #[test]
    fn lives_are_bounded() {
        let mut l = Lineage::default();
        for i in 0..(3 * LIVES_PER_GENERATION as u32) {
            l.forked(1, i % 50_000 + 2, u64::from(i), None);
        }
        let kept: usize = l.current.values().chain(l.previous.values()).map(Vec::len).sum();
        assert!(kept <= 2 * LIVES_PER_GENERATION, "{kept} lives kept");
        assert!(l.current.values().all(|v| v.len() <= LIVES_PER_TID));
        let newest = 3 * LIVES_PER_GENERATION as u64 - 1;
        assert!(l.life((newest % 50_000) as u32 + 2, newest).is_some(), "the newest is kept");
    }

    #[test]
    fn the_fork_layout_comes_from_the_format() {
        let text = "name: sched_process_fork\nID: 317\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
            \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
            \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
            \tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
            \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
            \tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\
            \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        let f = crate::ftrace::format::parse_event_format("sched", text).expect("format");
        let fork = ForkEvent::from_format(&f).expect("pid fields");
        let mut payload = vec![0u8; 48];
        payload[24..28].copy_from_slice(&77i32.to_ne_bytes());
        payload[44..48].copy_from_slice(&78i32.to_ne_bytes());
        assert_eq!(fork.parse(&payload), Some((77, 78)));
        payload[28..31].copy_from_slice(b"cat");
        assert_eq!(fork.comm(&payload).as_deref(), Some("cat"));
        assert_eq!(fork.parse(&payload[..40]), None, "a short payload is no fork");
    }

    /// Since 6.10 the fork event's commands are `__data_loc` strings (this machine's kernel):
    /// reading the location word as text gave commands like "\u{1b}".
    #[test]
    fn a_data_loc_child_command_is_read_where_it_points() {
        let text = "name: sched_process_fork\nID: 366\nformat:\n\
            \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
            \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
            \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
            \tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
            \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        let f = crate::ftrace::format::parse_event_format("sched", text).expect("format");
        let fork = ForkEvent::from_format(&f).expect("pid fields");
        let mut payload = vec![0u8; 24];
        payload[8..12].copy_from_slice(&(24u32 | (3 << 16)).to_ne_bytes());
        payload[12..16].copy_from_slice(&77i32.to_ne_bytes());
        payload[16..20].copy_from_slice(&(27u32 | (4 << 16)).to_ne_bytes());
        payload[20..24].copy_from_slice(&78i32.to_ne_bytes());
        payload.extend_from_slice(b"sh\0cat\0");
        assert_eq!(fork.parse(&payload), Some((77, 78)));
        assert_eq!(fork.comm(&payload).as_deref(), Some("cat"));
        payload[16..20].copy_from_slice(&(27u32 | (40 << 16)).to_ne_bytes());
        assert_eq!(fork.comm(&payload), None, "a location past the payload is no command");
    }
}
