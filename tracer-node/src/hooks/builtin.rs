//! The built-in hooks of provider `trace-hooks/ftrace`, written against tracefs directly. Each
//! turns its arguments into an [`FtracePlan`]: which events to enable, which filter, how long.
//! The arguments' grammar is `tracer-spec`'s, shared with the admission webhook; what only this
//! node's kernel can tell (is the system call or event there, is the filter's field in it) is
//! checked here, before anything is written to the kernel.

use std::{collections::HashSet, sync::Arc, time::Duration};

pub use tracer_spec::args::Builtin;
use tracer_spec::{
    args::{self, Request},
    filter,
};

use super::HookError;
use crate::ftrace::{predicate::CompiledFilter, Tracefs};

/// An event to enable: a whole subsystem, or one event of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventSel {
    /// Subsystem (`syscalls`).
    pub system: String,
    /// Event (`sys_enter_openat`), or `None` for every event of the subsystem.
    pub event: Option<String>,
}

/// What a built-in hook asks of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtracePlan {
    /// Events to enable.
    pub events: Vec<EventSel>,
    /// Kernel filter expression for every selected event (validated).
    pub filter: Option<String>,
    /// The filter compiled for user space, when every selected event's can be: the session
    /// then shares the node's recording and its records are filtered as they are routed.
    pub compiled: Option<Arc<CompiledFilter>>,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    /// Run the function tracer, limited to these functions (globs; empty = all).
    pub functions: Option<Vec<String>>,
}

impl FtracePlan {
    /// Whether its events can come from the node's shared recording: a kernel filter applies
    /// to every reader of an event, and the function tracer is per instance, so a plan with
    /// either needs a recording of its own; a filter evaluated in user space does not.
    pub fn shareable(&self) -> bool {
        self.functions.is_none() && (self.filter.is_none() || self.compiled.is_some())
    }
}

/// Parses `hook`'s `args` into a plan, checking names against the kernel's `available_events`
/// and the filter against the events' formats.
pub fn plan(hook: Builtin, args: &str, tracefs: &Tracefs) -> Result<FtracePlan, HookError> {
    let request = args::parse(hook, args)?;
    let duration = request.time();
    let available = || tracefs.available_events().map_err(HookError::Kernel);
    let plan = |events, filter, functions| FtracePlan { events, filter, compiled: None, duration, functions };
    match request {
        Request::Syscalls { syscalls, .. } => {
            let events = if syscalls.is_empty() {
                vec![EventSel { system: "syscalls".into(), event: None }]
            } else {
                syscall_events(&syscalls, &available()?)?
            };
            Ok(plan(events, None, None))
        }
        Request::Exec { .. } => {
            let available = available()?;
            let mut events: Vec<EventSel> = ["sched_process_fork", "sched_process_exec", "sched_process_exit"]
                .iter()
                .map(|e| EventSel { system: "sched".into(), event: Some((*e).into()) })
                .collect();
            // Exit codes are not in sched_process_exit: they are the argument of exit_group.
            for e in ["sys_enter_exit_group", "sys_enter_exit"] {
                if available.contains(&format!("syscalls:{e}")) {
                    events.push(EventSel { system: "syscalls".into(), event: Some(e.into()) });
                }
            }
            Ok(plan(events, None, None))
        }
        Request::Functions { functions, .. } => Ok(plan(Vec::new(), None, Some(functions))),
        Request::Events { events: wanted, filter: expr, .. } => {
            let available = available()?;
            let mut events = Vec::new();
            for (system, event) in wanted {
                let name = format!("{system}:{event}");
                if !available.contains(&name) {
                    return Err(HookError::BadArguments(format!("unknown event {name:?} (not in available_events)")));
                }
                events.push(EventSel { system, event: Some(event) });
            }
            let mut compiled = None;
            if let Some(expr) = &expr {
                let mut formats = Vec::new();
                for e in &events {
                    formats.push(
                        tracefs
                            .event_format(&e.system, e.event.as_deref().unwrap_or_default())
                            .map_err(HookError::Kernel)?,
                    );
                }
                let fields: Vec<HashSet<String>> =
                    formats.iter().map(|f| f.fields.iter().map(|x| x.name.clone()).collect()).collect();
                filter::validate(expr, &fields)?;
                // What cannot be mirrored exactly (strings, COMM, what the kernel would refuse)
                // stays the kernel's, on a recording of the session's own.
                compiled = match CompiledFilter::compile(&filter::parse(expr)?, &formats) {
                    Ok(c) => Some(Arc::new(c)),
                    Err(why) => {
                        tracing::debug!(filter = %expr, reason = %why, "filter left to the kernel");
                        None
                    }
                };
            }
            Ok(FtracePlan { compiled, ..plan(events, expr, None) })
        }
    }
}

/// `openat` selects entry and exit; `sys_enter_openat` / `sys_exit_openat` only that one.
fn syscall_events(names: &[String], available: &HashSet<String>) -> Result<Vec<EventSel>, HookError> {
    let mut out = Vec::new();
    for name in names {
        let wanted: Vec<String> = if name.starts_with("sys_enter_") || name.starts_with("sys_exit_") {
            vec![name.clone()]
        } else {
            vec![format!("sys_enter_{name}"), format!("sys_exit_{name}")]
        };
        let present: Vec<String> =
            wanted.into_iter().filter(|e| available.contains(&format!("syscalls:{e}"))).collect();
        if present.is_empty() {
            return Err(HookError::BadArguments(format!("unknown system call {name:?}")));
        }
        out.extend(present.into_iter().map(|e| EventSel { system: "syscalls".into(), event: Some(e) }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_tracefs() -> (tempfile::TempDir, Tracefs) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("available_events"),
            "syscalls:sys_enter_openat\nsyscalls:sys_exit_openat\nsyscalls:sys_enter_exit_group\nsched:sched_switch\n\
             sched:sched_process_fork\nsched:sched_process_exec\nsched:sched_process_exit\n",
        )
        .expect("write");
        let fmt = dir.path().join("events/sched/sched_switch");
        std::fs::create_dir_all(&fmt).expect("mkdir");
        std::fs::write(
            fmt.join("format"),
            "name: sched_switch\nID: 1\n\tfield:pid_t prev_pid;\toffset:8;\tsize:4;\tsigned:1;\n\
             \tfield:int prio;\toffset:12;\tsize:4;\tsigned:1;\n\
             \tfield:char prev_comm[16];\toffset:16;\tsize:16;\tsigned:0;\n",
        )
        .expect("write");
        let t = Tracefs::at(dir.path());
        (dir, t)
    }

    #[test]
    fn syscall_names_select_entry_and_exit_and_unknown_ones_are_named() {
        let (_d, t) = fake_tracefs();
        let p = plan(Builtin::Syscalls, "-s openat -t 500", &t).expect("plan");
        assert_eq!(p.events.len(), 2);
        assert_eq!(p.duration, Some(Duration::from_millis(500)));
        let p = plan(Builtin::Syscalls, "--syscall sys_enter_openat", &t).expect("plan");
        assert_eq!(p.events, vec![EventSel { system: "syscalls".into(), event: Some("sys_enter_openat".into()) }]);
        let p = plan(Builtin::Syscalls, "", &t).expect("all");
        assert_eq!(p.events, vec![EventSel { system: "syscalls".into(), event: None }]);
        let err = plan(Builtin::Syscalls, "-s openat nosuchcall", &t).expect_err("unknown");
        assert!(err.to_string().contains("nosuchcall"), "{err}");
        assert!(plan(Builtin::Syscalls, "-t zero", &t).is_err());
        assert!(plan(Builtin::Syscalls, "-t 0", &t).is_err());
        assert!(plan(Builtin::Syscalls, "--bogus", &t).is_err());
        assert!(plan(Builtin::Syscalls, "-s ../../x", &t).is_err());
    }

    #[test]
    fn events_are_checked_against_the_kernel_and_filters_against_their_fields() {
        let (_d, t) = fake_tracefs();
        let p = plan(Builtin::Events, "-e sched:sched_switch -f prev_pid == 1 && prio < 100", &t).expect("plan");
        assert_eq!(p.filter.as_deref(), Some("prev_pid == 1 && prio < 100"));
        assert!(p.compiled.is_some() && p.shareable(), "integers are compared in user space, on the shared recording");
        let p = plan(Builtin::Events, "-e sched:sched_switch -f prev_comm == \"sh\"", &t).expect("plan");
        assert!(p.compiled.is_none() && !p.shareable(), "strings are the kernel's, on a recording of its own");
        assert!(plan(Builtin::Events, "-e sched:nope", &t).is_err());
        assert!(plan(Builtin::Events, "-e sched_switch", &t).is_err());
        assert!(plan(Builtin::Events, "", &t).is_err());
        let err = plan(Builtin::Events, "-e sched:sched_switch -f nofield == 1", &t).expect_err("bad field");
        assert!(err.to_string().contains("nofield"), "{err}");
        assert!(plan(Builtin::Events, "-e sched:sched_switch -f prev_pid == 1 ; echo", &t).is_err());
    }

    #[test]
    fn exec_hook_adds_exit_codes_when_the_kernel_has_them() {
        let (_d, t) = fake_tracefs();
        let p = plan(Builtin::Exec, "", &t).expect("plan");
        let names: Vec<_> = p.events.iter().filter_map(|e| e.event.clone()).collect();
        assert_eq!(names, ["sched_process_fork", "sched_process_exec", "sched_process_exit", "sys_enter_exit_group"]);
    }
}
