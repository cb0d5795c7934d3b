//! The built-in hooks of provider `trace-hooks/ftrace`, written against tracefs directly. Each
//! turns its arguments into an [`FtracePlan`]: which events to enable, which filter, how long.
//! Everything user-supplied is checked here, before anything is written to the kernel.

use std::{collections::HashSet, time::Duration};

use clap::Parser;

use super::{filter, HookError};
use crate::ftrace::Tracefs;

/// An event to enable: a whole subsystem, or one event of it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    /// Run the function tracer, limited to these functions (globs; empty = all).
    pub functions: Option<Vec<String>>,
}

/// The built-in hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `trace_syscalls`.
    Syscalls,
    /// `trace_exec`.
    Exec,
    /// `trace_events`.
    Events,
    /// `trace_functions`.
    Functions,
}

impl Builtin {
    /// All of them.
    pub const ALL: [Builtin; 4] = [Builtin::Syscalls, Builtin::Exec, Builtin::Events, Builtin::Functions];

    /// The hook name.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Syscalls => "trace_syscalls",
            Builtin::Exec => "trace_exec",
            Builtin::Events => "trace_events",
            Builtin::Functions => "trace_functions",
        }
    }

    /// Description lines for `GET /v1/trace-hooks`.
    pub fn description(self) -> Vec<String> {
        let lines: &[&str] = match self {
            Builtin::Syscalls => &[
                "Trace system calls, used by given container",
                "-s, --syscall [SYSCALL ...] : list of System call names to be traced, optional argument.",
                "If no system calls are specified, all available are traced.",
                "-t, --time TIME : Duration of the trace in milliseconds, optional argument",
            ],
            Builtin::Exec => &[
                "Trace the process lifecycle of given container: fork, exec (with the file name) and exit (with the exit code)",
                "-t, --time TIME : Duration of the trace in milliseconds, optional argument",
            ],
            Builtin::Events => &[
                "Trace any kernel tracepoints in given container",
                "-e, --event SYSTEM:EVENT [SYSTEM:EVENT ...] : tracepoints to enable, as listed in available_events, mandatory argument.",
                "-f, --filter EXPR : kernel filter expression on the events' fields, e.g. \"prev_pid == 1 && prio < 100\", optional argument.",
                "-t, --time TIME : Duration of the trace in milliseconds, optional argument",
            ],
            Builtin::Functions => &[
                "Trace kernel functions called by given container (the function tracer; refused by kernels in lockdown)",
                "-f, --function [FUNCTION ...] : functions to trace, shell globs allowed, optional argument. If none, all are traced.",
                "-t, --time TIME : Duration of the trace in milliseconds, optional argument",
            ],
        };
        lines.iter().map(|l| (*l).to_owned()).collect()
    }

    /// Parses `args` (already split on whitespace) into a plan, checking names against the
    /// kernel's `available_events` and the filter against the events' formats.
    pub fn plan(self, args: &[String], tracefs: &Tracefs) -> Result<FtracePlan, HookError> {
        let argv = std::iter::once(self.name().to_owned()).chain(args.iter().cloned());
        let bad = |e: clap::Error| HookError::BadArguments(first_line(&e.to_string()));
        let available = || tracefs.available_events().map_err(HookError::Kernel);
        match self {
            Builtin::Syscalls => {
                let a = SyscallArgs::try_parse_from(argv).map_err(bad)?;
                let events = if a.syscall.is_empty() {
                    vec![EventSel { system: "syscalls".into(), event: None }]
                } else {
                    syscall_events(&a.syscall, &available()?)?
                };
                Ok(FtracePlan { events, filter: None, duration: duration(a.time)?, functions: None })
            }
            Builtin::Exec => {
                let a = TimeArgs::try_parse_from(argv).map_err(bad)?;
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
                Ok(FtracePlan { events, filter: None, duration: duration(a.time)?, functions: None })
            }
            Builtin::Functions => {
                let a = FunctionArgs::try_parse_from(argv).map_err(bad)?;
                for f in &a.function {
                    let ok = !f.is_empty()
                        && f.len() <= 256
                        && f.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'*' || b == b'?');
                    if !ok {
                        return Err(HookError::BadArguments(format!("{f:?} is not a function name or glob")));
                    }
                }
                Ok(FtracePlan {
                    events: Vec::new(),
                    filter: None,
                    duration: duration(a.time)?,
                    functions: Some(a.function),
                })
            }
            Builtin::Events => {
                let a = EventArgs::try_parse_from(argv).map_err(bad)?;
                let available = available()?;
                let mut events = Vec::new();
                for e in &a.event {
                    let (system, event) = e
                        .split_once(':')
                        .filter(|(s, n)| valid_name(s) && valid_name(n))
                        .ok_or_else(|| HookError::BadArguments(format!("{e:?} is not SYSTEM:EVENT")))?;
                    if !available.contains(e) {
                        return Err(HookError::BadArguments(format!("unknown event {e:?} (not in available_events)")));
                    }
                    events.push(EventSel { system: system.into(), event: Some(event.into()) });
                }
                let filter = match &a.filter {
                    None => None,
                    Some(words) => {
                        let expr = words.join(" ");
                        let mut fields: Vec<HashSet<String>> = Vec::new();
                        for e in &events {
                            let fmt = tracefs
                                .event_format(&e.system, e.event.as_deref().unwrap_or_default())
                                .map_err(HookError::Kernel)?;
                            fields.push(fmt.fields.iter().map(|f| f.name.clone()).collect());
                        }
                        filter::validate(&expr, &fields)?;
                        Some(expr)
                    }
                };
                Ok(FtracePlan { events, filter, duration: duration(a.time)?, functions: None })
            }
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim_start_matches("error: ").to_owned()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn duration(ms: Option<u64>) -> Result<Option<Duration>, HookError> {
    match ms {
        Some(0) => Err(HookError::BadArguments("--time must be at least 1 ms".into())),
        Some(ms) if ms > 7 * 24 * 3600 * 1000 => Err(HookError::BadArguments("--time is longer than a week".into())),
        other => Ok(other.map(Duration::from_millis)),
    }
}

/// `openat` selects entry and exit; `sys_enter_openat` / `sys_exit_openat` only that one.
fn syscall_events(names: &[String], available: &HashSet<String>) -> Result<Vec<EventSel>, HookError> {
    let mut out = Vec::new();
    for name in names {
        if !valid_name(name) {
            return Err(HookError::BadArguments(format!("{name:?} is not a system call name")));
        }
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

#[derive(Debug, Parser)]
#[command(no_binary_name = false, disable_help_flag = true, disable_version_flag = true)]
struct SyscallArgs {
    #[arg(short = 's', long = "syscall", num_args = 1..)]
    syscall: Vec<String>,
    #[arg(short = 't', long = "time")]
    time: Option<u64>,
}

#[derive(Debug, Parser)]
#[command(disable_help_flag = true, disable_version_flag = true)]
struct TimeArgs {
    #[arg(short = 't', long = "time")]
    time: Option<u64>,
}

#[derive(Debug, Parser)]
#[command(disable_help_flag = true, disable_version_flag = true)]
struct FunctionArgs {
    #[arg(short = 'f', long = "function", num_args = 1..)]
    function: Vec<String>,
    #[arg(short = 't', long = "time")]
    time: Option<u64>,
}

#[derive(Debug, Parser)]
#[command(disable_help_flag = true, disable_version_flag = true)]
struct EventArgs {
    #[arg(short = 'e', long = "event", num_args = 1.., required = true)]
    event: Vec<String>,
    #[arg(short = 'f', long = "filter", num_args = 1.., allow_hyphen_values = true)]
    filter: Option<Vec<String>>,
    #[arg(short = 't', long = "time")]
    time: Option<u64>,
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
             \tfield:int prio;\toffset:12;\tsize:4;\tsigned:1;\n",
        )
        .expect("write");
        let t = Tracefs::at(dir.path());
        (dir, t)
    }

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn syscall_names_select_entry_and_exit_and_unknown_ones_are_named() {
        let (_d, t) = fake_tracefs();
        let p = Builtin::Syscalls.plan(&args("-s openat -t 500"), &t).expect("plan");
        assert_eq!(p.events.len(), 2);
        assert_eq!(p.duration, Some(Duration::from_millis(500)));
        let p = Builtin::Syscalls.plan(&args("--syscall sys_enter_openat"), &t).expect("plan");
        assert_eq!(p.events, vec![EventSel { system: "syscalls".into(), event: Some("sys_enter_openat".into()) }]);
        let p = Builtin::Syscalls.plan(&[], &t).expect("all");
        assert_eq!(p.events, vec![EventSel { system: "syscalls".into(), event: None }]);
        let err = Builtin::Syscalls.plan(&args("-s openat nosuchcall"), &t).expect_err("unknown");
        assert!(err.to_string().contains("nosuchcall"), "{err}");
        assert!(Builtin::Syscalls.plan(&args("-t zero"), &t).is_err());
        assert!(Builtin::Syscalls.plan(&args("-t 0"), &t).is_err());
        assert!(Builtin::Syscalls.plan(&args("--bogus"), &t).is_err());
        assert!(Builtin::Syscalls.plan(&args("-s ../../x"), &t).is_err());
    }

    #[test]
    fn events_are_checked_against_the_kernel_and_filters_against_their_fields() {
        let (_d, t) = fake_tracefs();
        let p = Builtin::Events.plan(&args("-e sched:sched_switch -f prev_pid == 1 && prio < 100"), &t).expect("plan");
        assert_eq!(p.filter.as_deref(), Some("prev_pid == 1 && prio < 100"));
        assert!(Builtin::Events.plan(&args("-e sched:nope"), &t).is_err());
        assert!(Builtin::Events.plan(&args("-e sched_switch"), &t).is_err());
        assert!(Builtin::Events.plan(&[], &t).is_err());
        let err = Builtin::Events.plan(&args("-e sched:sched_switch -f nofield == 1"), &t).expect_err("bad field");
        assert!(err.to_string().contains("nofield"), "{err}");
        assert!(Builtin::Events.plan(&args("-e sched:sched_switch -f prev_pid == 1 ; echo"), &t).is_err());
    }

    #[test]
    fn exec_hook_adds_exit_codes_when_the_kernel_has_them() {
        let (_d, t) = fake_tracefs();
        let p = Builtin::Exec.plan(&[], &t).expect("plan");
        let names: Vec<_> = p.events.iter().filter_map(|e| e.event.clone()).collect();
        assert_eq!(names, ["sched_process_fork", "sched_process_exec", "sched_process_exit", "sys_enter_exit_group"]);
    }
}
