//! The four kernel events the task tracker follows, their layouts read from their formats
//! (never hard-coded), and the decoding of one ring-buffer record into a [`TaskEvent`].

use crate::ftrace::{format::EventFormat, Tracefs, TracefsError};

/// `clone_flags` bit of a new thread of the same process.
pub const CLONE_THREAD: u64 = 0x0001_0000;
/// `clone_flags` bit of a child created straight into another cgroup (clone3).
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What happened to a task, as the tracker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// Thread `creator` created task `child` (`task:task_newtask`).
    NewTask {
        /// Trace clock.
        ts: u64,
        /// The creating thread.
        creator: u32,
        /// The new thread's id.
        child: u32,
        /// Its `clone_flags`.
        flags: u64,
    },
    /// Thread `tid` exited (`sched:sched_process_exit`).
    Exit {
        /// Trace clock.
        ts: u64,
        /// The thread.
        tid: u32,
    },
    /// A thread of a process called exec; when it was not the leader, it now has the leader's
    /// id `tid` and its own `old` is gone (`sched:sched_process_exec`).
    Exec {
        /// Trace clock.
        ts: u64,
        /// The thread's id after the exec (the process's).
        tid: u32,
        /// Its id before.
        old: u32,
    },
    /// Task `tid` was moved into cgroup `path` (`cgroup:cgroup_attach_task`, and
    /// `cgroup_transfer_tasks` of cgroup v1's cpuset).
    Attach {
        /// The task.
        tid: u32,
        /// The destination, relative to its hierarchy's root (`/system.slice/x.scope`).
        path: String,
    },
}

/// Field offsets of an event: (offset, size).
type At = (usize, usize);

fn field(f: &EventFormat, name: &str) -> Option<At> {
    f.fields.iter().find(|x| x.name == name).map(|x| (x.offset, x.size))
}

/// The layouts of the tracker's events.
#[derive(Debug, Clone)]
pub struct Layouts {
    newtask: (u16, At, At),
    exit: (u16, At),
    exec: Option<(u16, At, At)>,
    attach: Vec<(u16, At, At)>,
}

/// The task lifecycle events, which the tracker cannot do without.
pub const TASK_EVENTS: [(&str, &str); 3] =
    [("task", "task_newtask"), ("sched", "sched_process_exit"), ("sched", "sched_process_exec")];

/// The cgroup migration events (for processes entering a container from outside: `runc exec`).
pub const CGROUP_EVENTS: [(&str, &str); 2] = [("cgroup", "cgroup_attach_task"), ("cgroup", "cgroup_transfer_tasks")];

fn malformed(f: &EventFormat) -> TracefsError {
    TracefsError::Io {
        op: "use the format of",
        path: format!("events/{}/{}", f.system, f.name).into(),
        source: std::io::Error::other("a field the task tracker needs is missing or of another size"),
    }
}

impl Layouts {
    /// Reads the formats from tracefs. The exec and cgroup events are optional (kernels
    /// without them are followed through rescans only), fork and exit are not.
    pub fn read(tracefs: &Tracefs) -> Result<Self, TracefsError> {
        let newtask = tracefs.event_format("task", "task_newtask")?;
        let exit = tracefs.event_format("sched", "sched_process_exit")?;
        let exec = tracefs.event_format("sched", "sched_process_exec").ok();
        let attach = CGROUP_EVENTS.iter().filter_map(|(s, e)| tracefs.event_format(s, e).ok()).collect::<Vec<_>>();
        Self::from_formats(&newtask, &exit, exec.as_ref(), &attach)
    }

    /// The layouts in the given formats.
    pub fn from_formats(
        newtask: &EventFormat,
        exit: &EventFormat,
        exec: Option<&EventFormat>,
        attach: &[EventFormat],
    ) -> Result<Self, TracefsError> {
        let int = |f: &EventFormat, n: &str| field(f, n).filter(|a| a.1 == 4).ok_or_else(|| malformed(f));
        let newtask = (
            newtask.id,
            int(newtask, "pid")?,
            field(newtask, "clone_flags").filter(|a| a.1 == 8).ok_or_else(|| malformed(newtask))?,
        );
        let exit = (exit.id, int(exit, "pid")?);
        let exec = exec.and_then(|f| Some((f.id, int(f, "pid").ok()?, int(f, "old_pid").ok()?)));
        let attach = attach
            .iter()
            .filter_map(|f| Some((f.id, int(f, "pid").ok()?, field(f, "dst_path").filter(|a| a.1 == 4)?)))
            .collect();
        Ok(Self { newtask, exit, exec, attach })
    }

    /// Decodes one record (`payload` starts with the common fields).
    pub fn decode(&self, ts: u64, payload: &[u8]) -> Option<TaskEvent> {
        let id = u16::from_ne_bytes(payload.get(..2)?.try_into().ok()?);
        let int = |(at, _): At| -> Option<u32> {
            u32::try_from(i32::from_ne_bytes(payload.get(at..at + 4)?.try_into().ok()?)).ok()
        };
        if id == self.newtask.0 {
            let flags = u64::from_ne_bytes(payload.get(self.newtask.2 .0..self.newtask.2 .0 + 8)?.try_into().ok()?);
            return Some(TaskEvent::NewTask { ts, creator: int((4, 4))?, child: int(self.newtask.1)?, flags });
        }
        if id == self.exit.0 {
            return Some(TaskEvent::Exit { ts, tid: int(self.exit.1)? });
        }
        if let Some((eid, pid, old)) = self.exec {
            if id == eid {
                return Some(TaskEvent::Exec { ts, tid: int(pid)?, old: int(old)? });
            }
        }
        let &(_, pid, path) = self.attach.iter().find(|a| a.0 == id)?;
        let word = u32::from_ne_bytes(payload.get(path.0..path.0 + 4)?.try_into().ok()?);
        let (off, len) = ((word & 0xffff) as usize, (word >> 16) as usize);
        let raw = payload.get(off..off + len)?;
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        Some(TaskEvent::Attach { tid: int(pid)?, path: String::from_utf8_lossy(&raw[..end]).into_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftrace::format::parse_event_format;

    const COMMON: &str = "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
        \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n";

    fn format(name: &str, id: u16, fields: &str) -> EventFormat {
        let text = format!("name: {name}\nID: {id}\nformat:\n{COMMON}{fields}\nprint fmt: \"\"\n");
        parse_event_format("x", &text).expect("format")
    }

    /// The formats of this kernel generation (6.x), as tracefs shows them.
    fn layouts() -> Layouts {
        let newtask = format(
            "task_newtask",
            205,
            "\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;\n\
             \tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;\n",
        );
        let exit = format(
            "sched_process_exit",
            369,
            "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n",
        );
        let exec = format(
            "sched_process_exec",
            365,
            "\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
             \tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n",
        );
        let attach = format(
            "cgroup_attach_task",
            538,
            "\tfield:int dst_root;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:int pid;\toffset:24;\tsize:4;\tsigned:1;\n\
             \tfield:__data_loc char[] dst_path;\toffset:28;\tsize:4;\tsigned:0;\n",
        );
        Layouts::from_formats(&newtask, &exit, Some(&exec), &[attach]).expect("layouts")
    }

    fn record(id: u16, common_pid: i32, len: usize, fields: &[(usize, &[u8])]) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[..2].copy_from_slice(&id.to_ne_bytes());
        p[4..8].copy_from_slice(&common_pid.to_ne_bytes());
        for (at, bytes) in fields {
            p[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        p
    }

    #[test]
    fn each_event_is_decoded_from_its_format() {
        let l = layouts();
        let flags = (CLONE_THREAD | 0x100).to_ne_bytes();
        let p = record(205, 300, 48, &[(8, &301i32.to_ne_bytes()), (32, &flags)]);
        assert_eq!(
            l.decode(7, &p),
            Some(TaskEvent::NewTask { ts: 7, creator: 300, child: 301, flags: CLONE_THREAD | 0x100 })
        );
        let p = record(369, 301, 40, &[(24, &301i32.to_ne_bytes())]);
        assert_eq!(l.decode(8, &p), Some(TaskEvent::Exit { ts: 8, tid: 301 }));
        let p = record(365, 300, 24, &[(12, &300i32.to_ne_bytes()), (16, &305i32.to_ne_bytes())]);
        assert_eq!(l.decode(9, &p), Some(TaskEvent::Exec { ts: 9, tid: 300, old: 305 }));
        let path = b"/ct-1/sub\0";
        let loc = (40u32 | ((path.len() as u32) << 16)).to_ne_bytes();
        let p = record(538, 1, 40 + path.len(), &[(24, &77i32.to_ne_bytes()), (28, &loc), (40, path)]);
        assert_eq!(l.decode(10, &p), Some(TaskEvent::Attach { tid: 77, path: "/ct-1/sub".into() }));
    }

    #[test]
    fn short_foreign_or_negative_records_decode_to_nothing() {
        let l = layouts();
        assert_eq!(l.decode(1, &[]), None);
        assert_eq!(l.decode(1, &record(205, 300, 20, &[])), None, "cut short");
        assert_eq!(l.decode(1, &record(999, 300, 48, &[])), None, "another event");
        assert_eq!(l.decode(1, &record(369, 1, 40, &[(24, &(-1i32).to_ne_bytes())])), None);
        let loc = (4000u32 | (10 << 16)).to_ne_bytes();
        assert_eq!(l.decode(1, &record(538, 1, 40, &[(28, &loc)])), None, "string out of the record");
    }
}
