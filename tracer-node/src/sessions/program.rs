//! Kernel programming of a built-in session's run: one new ftrace instance with the plan's
//! buffer size, clock, options, events, filters and function tracer, and what the readers need
//! to decode its pages. Nothing here records yet: recording starts with the first pid filter
//! write (see [`super::pid_filter`]).

use std::collections::HashMap;

use tracing::warn;

use super::events::{ExitEvent, ForkEvent};
use crate::{
    ftrace::{
        format::{EventFormat, PageHeader},
        Instance, Tracefs, TracefsError,
    },
    hooks::FtracePlan,
};

/// Why a run could not start. Its text is what the session's `Error` shows.
#[derive(Debug, thiserror::Error)]
pub enum StartFailure {
    /// A step of programming the instance or of starting its run.
    #[error("{what}: {source}")]
    Kernel {
        /// The step.
        what: String,
        /// The kernel's answer.
        #[source]
        source: TracefsError,
    },
    /// The function tracer was refused (kernels in lockdown refuse it).
    #[error("the kernel refused the function tracer ({what}: {source}); kernels in lockdown do not allow it")]
    FunctionTracer {
        /// The control file written.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: TracefsError,
    },
    /// The first pid filter write.
    #[error("pid filter: {0}")]
    PidFilter(#[source] super::pid_filter::PidFilterError),
    /// The hook cannot run here (an auto-trace annotation the node refuses).
    #[error("{0}")]
    Unusable(String),
    /// An external hook failed; its standard error.
    #[error("{}", .0.join("; "))]
    External(Vec<String>),
}

impl StartFailure {
    pub(super) fn kernel(what: impl Into<String>) -> impl FnOnce(TracefsError) -> Self {
        let what = what.into();
        move |source| Self::Kernel { what, source }
    }

    /// Whether the kernel was only short of resources (memory, busy): worth a retry later.
    pub fn kernel_short(&self) -> bool {
        match self {
            Self::Kernel { source, .. } | Self::FunctionTracer { source, .. } => source.is_kernel_short(),
            Self::PidFilter(super::pid_filter::PidFilterError::Kernel(e)) => e.is_kernel_short(),
            Self::PidFilter(_) | Self::External(_) | Self::Unusable(_) => false,
        }
    }
}

/// A programmed instance, recording off, and how to read it.
pub struct Programmed {
    /// The instance.
    pub instance: Instance,
    /// Whether its clock is `mono` (comparable with ours).
    pub mono: bool,
    /// Whether the function tracer is on (its pid filter is `set_ftrace_pid`).
    pub functions: bool,
    /// The formats of the events it records, by id.
    pub formats: HashMap<u16, EventFormat>,
    /// The ring-buffer page layout.
    pub header: PageHeader,
    /// Bytes per ring-buffer page.
    pub page_size: usize,
    /// Events that start a new program in a thread.
    pub exec_ids: Vec<u16>,
    /// The fork event, recorded in every run to tie children to containers.
    pub fork: Option<ForkEvent>,
    /// The exit event, which ends a thread id's life.
    pub exit: Option<ExitEvent>,
    /// Events recorded for attribution only.
    pub hidden: Vec<u16>,
}

/// Creates instance `name` (under the tracefs prefix) and programs it for `plan`. Blocking and
/// slow (enabling a few hundred events takes the kernel 100 ms and more): call it off the async
/// workers and without the session's lock. On failure the instance is removed (dropped).
pub fn program(
    tracefs: &Tracefs,
    name: &str,
    plan: &FtracePlan,
    buffer_kb: u64,
    session: u64,
) -> Result<Programmed, StartFailure> {
    let instance = Instance::create(tracefs, name).map_err(StartFailure::kernel("ftrace instance"))?;
    instance.set_buffer_size_kb(buffer_kb).map_err(StartFailure::kernel("buffer size"))?;
    // The monotonic clock, so timestamps can be converted to wall time (and compared across CPUs).
    let mono = match instance.use_mono_clock() {
        Ok(()) => true,
        Err(e) => {
            warn!(session, error = %e, "cannot use the mono trace clock; keeping the default");
            false
        }
    };
    instance.set_option("event-fork", true).map_err(StartFailure::kernel("event-fork option"))?;
    // The kernel then remembers each thread's process, for threads gone before we look.
    if let Err(e) = instance.set_option("record-tgid", true) {
        warn!(session, error = %e, "cannot set record-tgid; exited threads show tgid = pid");
    }
    let mut formats = HashMap::new();
    let functions = plan.functions.is_some();
    if let Some(list) = &plan.functions {
        let refused = |what| move |source| StartFailure::FunctionTracer { what, source };
        instance.set_option("function-fork", true).map_err(refused("function-fork"))?;
        if !list.is_empty() {
            instance.set_ftrace_filter(list).map_err(refused("set_ftrace_filter"))?;
        }
        instance.use_function_tracer().map_err(refused("current_tracer"))?;
        match tracefs.event_format("ftrace", "function") {
            Ok(f) => {
                formats.insert(f.id, f);
            }
            Err(e) => warn!(session, error = %e, "function event format unreadable"),
        }
    }

    for sel in &plan.events {
        let names = match &sel.event {
            Some(e) => vec![e.clone()],
            None => {
                tracefs.system_events(&sel.system).map_err(StartFailure::kernel(format!("events/{}", sel.system)))?
            }
        };
        for name in names {
            match tracefs.event_format(&sel.system, &name) {
                Ok(f) => {
                    formats.insert(f.id, f);
                }
                Err(e) => warn!(session, error = %e, "event format unreadable; its events are shown undecoded"),
            }
        }
        let target = sel.event.as_deref().map_or(sel.system.clone(), |e| format!("{}:{e}", sel.system));
        instance
            .enable_event(&sel.system, sel.event.as_deref())
            .map_err(StartFailure::kernel(format!("kernel refused to enable {target}")))?;
        if let (Some(expr), Some(e)) = (&plan.filter, &sel.event) {
            instance
                .set_filter(&sel.system, e, expr)
                .map_err(StartFailure::kernel(format!("kernel refused the filter on {target}")))?;
        }
    }
    let header = tracefs.page_header().map_err(StartFailure::kernel("ring-buffer page header"))?;
    let page_size = instance.subbuf_size().unwrap_or(header.data_offset + header.data_size);
    // Fork and exit events tie the threads that are gone before their events are read to their
    // containers: recorded in every run, shown only when the hook asked for them.
    let mut hidden = Vec::new();
    let mut lineage = |name: &str| -> Result<Option<EventFormat>, StartFailure> {
        let format = match tracefs.event_format("sched", name) {
            Ok(f) => f,
            Err(e) => {
                warn!(session, error = %e, "no {name} format; exited processes may lose their container");
                return Ok(None);
            }
        };
        if !formats.contains_key(&format.id) {
            instance.enable_event("sched", Some(name)).map_err(StartFailure::kernel(name))?;
            hidden.push(format.id);
        }
        Ok(Some(format))
    };
    let fork = lineage("sched_process_fork")?.as_ref().and_then(ForkEvent::from_format);
    let exit = lineage("sched_process_exit")?.as_ref().map(ExitEvent::from_format);
    let exec_ids = formats
        .values()
        .filter(|f| matches!(f.name.as_str(), "sched_process_exec" | "sys_exit_execve" | "sys_exit_execveat"))
        .map(|f| f.id)
        .collect();
    Ok(Programmed { instance, mono, functions, formats, header, page_size, exec_ids, fork, exit, hidden })
}

/// The kernel's overrun count of an instance, over its CPUs: events overwritten unread.
pub fn overrun(instance: &Instance) -> u64 {
    instance.cpus().unwrap_or_default().into_iter().map(|c| instance.overrun(c).unwrap_or(0)).sum()
}
