//! The built-in hooks and their argument grammar, checked without a kernel: what the admission
//! webhook refuses at admission is exactly what tracer-node's parser refuses. What only the
//! node's kernel can tell (is this system call or event there, does the filter name a field of
//! it) is checked by tracer-node afterwards.

use std::time::Duration;

use clap::Parser;

use crate::filter::{self, FilterError};

/// Why a hook's arguments are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// Not one of the built-in hooks.
    #[error("{0:?} is not a built-in trace hook (trace_syscalls, trace_exec, trace_events, trace_functions)")]
    UnknownHook(String),
    /// The command line does not parse (clap's first line: an unknown flag, a missing value).
    #[error("{0}")]
    Usage(String),
    /// A system call name with characters no system call has.
    #[error("{0:?} is not a system call name")]
    Syscall(String),
    /// A function name or glob with other characters than a kernel symbol's, `*` and `?`.
    #[error("{0:?} is not a function name or glob")]
    Function(String),
    /// An event not written `SYSTEM:EVENT` with plain names.
    #[error("{0:?} is not SYSTEM:EVENT")]
    Event(String),
    /// `--time` of zero or more than a week.
    #[error("--time must be from 1 ms to a week")]
    Time,
    /// The filter expression.
    #[error("invalid filter: {0}")]
    Filter(#[from] FilterError),
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
}

impl Builtin {
    /// The built-in hook named `name`.
    pub fn from_name(name: &str) -> Result<Self, ArgsError> {
        Self::ALL.into_iter().find(|b| b.name() == name).ok_or_else(|| ArgsError::UnknownHook(name.to_owned()))
    }
}

/// What a hook's arguments ask for, before the kernel is asked whether it has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `trace_syscalls`: these system calls (names, or `sys_enter_*`/`sys_exit_*`), or all.
    Syscalls {
        /// The names; empty for every system call.
        syscalls: Vec<String>,
        /// `--time`.
        time: Option<Duration>,
    },
    /// `trace_exec`.
    Exec {
        /// `--time`.
        time: Option<Duration>,
    },
    /// `trace_events`: tracepoints and an optional filter on their fields.
    Events {
        /// `(system, event)` pairs.
        events: Vec<(String, String)>,
        /// The filter, its grammar checked.
        filter: Option<String>,
        /// `--time`.
        time: Option<Duration>,
    },
    /// `trace_functions`: the function tracer, limited to these functions (all when empty).
    Functions {
        /// Names or globs.
        functions: Vec<String>,
        /// `--time`.
        time: Option<Duration>,
    },
}

impl Request {
    /// `--time`, for every hook.
    pub fn time(&self) -> Option<Duration> {
        match self {
            Request::Syscalls { time, .. }
            | Request::Exec { time }
            | Request::Events { time, .. }
            | Request::Functions { time, .. } => *time,
        }
    }
}

/// Parses `hook`'s `args` (one string, split on whitespace as the REST API and the annotation
/// give them).
pub fn parse(hook: Builtin, args: &str) -> Result<Request, ArgsError> {
    let argv = std::iter::once(hook.name().to_owned()).chain(args.split_whitespace().map(str::to_owned));
    let usage = |e: clap::Error| ArgsError::Usage(first_line(&e.to_string()));
    match hook {
        Builtin::Syscalls => {
            let a = SyscallArgs::try_parse_from(argv).map_err(usage)?;
            if let Some(bad) = a.syscall.iter().find(|s| !valid_name(s)) {
                return Err(ArgsError::Syscall(bad.clone()));
            }
            Ok(Request::Syscalls { syscalls: a.syscall, time: duration(a.time)? })
        }
        Builtin::Exec => {
            let a = TimeArgs::try_parse_from(argv).map_err(usage)?;
            Ok(Request::Exec { time: duration(a.time)? })
        }
        Builtin::Functions => {
            let a = FunctionArgs::try_parse_from(argv).map_err(usage)?;
            for f in &a.function {
                let ok = !f.is_empty()
                    && f.len() <= 256
                    && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'*' || b == b'?');
                if !ok {
                    return Err(ArgsError::Function(f.clone()));
                }
            }
            Ok(Request::Functions { functions: a.function, time: duration(a.time)? })
        }
        Builtin::Events => {
            let a = EventArgs::try_parse_from(argv).map_err(usage)?;
            let mut events = Vec::new();
            for e in &a.event {
                let (system, event) = e
                    .split_once(':')
                    .filter(|(s, n)| valid_name(s) && valid_name(n))
                    .ok_or_else(|| ArgsError::Event(e.clone()))?;
                events.push((system.to_owned(), event.to_owned()));
            }
            let filter = match a.filter {
                None => None,
                Some(words) => {
                    let expr = words.join(" ");
                    filter::validate_grammar(&expr)?;
                    Some(expr)
                }
            };
            Ok(Request::Events { events, filter, time: duration(a.time)? })
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim_start_matches("error: ").to_owned()
}

/// A system call, event system or event name.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn duration(ms: Option<u64>) -> Result<Option<Duration>, ArgsError> {
    match ms {
        Some(0) => Err(ArgsError::Time),
        Some(ms) if ms > 7 * 24 * 3600 * 1000 => Err(ArgsError::Time),
        other => Ok(other.map(Duration::from_millis)),
    }
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

    #[test]
    fn every_hook_parses_its_grammar_and_refuses_with_a_reason() {
        let p = parse(Builtin::Syscalls, "-s openat connect -t 500").expect("syscalls");
        assert_eq!(
            p,
            Request::Syscalls {
                syscalls: vec!["openat".into(), "connect".into()],
                time: Some(Duration::from_millis(500))
            }
        );
        assert_eq!(parse(Builtin::Exec, "").expect("exec"), Request::Exec { time: None });
        let p = parse(Builtin::Events, "-e sched:sched_switch -f prev_pid == 1").expect("events");
        assert_eq!(
            p,
            Request::Events {
                events: vec![("sched".into(), "sched_switch".into())],
                filter: Some("prev_pid == 1".into()),
                time: None
            }
        );
        assert!(matches!(parse(Builtin::Functions, "-f vfs_* do_sys_open"), Ok(Request::Functions { .. })));
        assert!(matches!(parse(Builtin::Syscalls, "-s ../x"), Err(ArgsError::Syscall(_))));
        assert!(matches!(parse(Builtin::Syscalls, "--bogus"), Err(ArgsError::Usage(_))));
        assert!(matches!(parse(Builtin::Exec, "-t 0"), Err(ArgsError::Time)));
        assert!(matches!(parse(Builtin::Events, "-e sched_switch"), Err(ArgsError::Event(_))));
        assert!(matches!(parse(Builtin::Events, ""), Err(ArgsError::Usage(_))));
        assert!(matches!(parse(Builtin::Events, "-e a:b -f x = 1"), Err(ArgsError::Filter(_))));
        assert!(matches!(parse(Builtin::Functions, "-f a;b"), Err(ArgsError::Function(_))));
        assert!(matches!(Builtin::from_name("trace_nothing"), Err(ArgsError::UnknownHook(_))));
    }
}
