//! Kernel programming of a recording (see [`super::recording`]): one new ftrace instance with
//! its buffer size, clock, options, attribution events and function tracer, and what the
//! readers need to decode its pages; and the formats of what a session asks for. Nothing here
//! records yet: recording starts with the first pid filter write (see [`crate::ftrace::pid_filter`]).

use std::collections::HashMap;

use tracing::warn;

use super::events::{ExitEvent, ForkEvent};
use crate::{
    ftrace::{
        format::{EventFormat, PageHeader},
        Instance, Tracefs, TracefsError,
    },
    hooks::{EventSel, FtracePlan},
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
    PidFilter(#[source] crate::ftrace::pid_filter::PidFilterError),
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
            Self::PidFilter(crate::ftrace::pid_filter::PidFilterError::Kernel(e)) => e.is_kernel_short(),
            Self::PidFilter(_) | Self::External(_) | Self::Unusable(_) => false,
        }
    }
}

/// A recording's instance, programmed, recording off, and how to read it.
pub struct Programmed {
    /// The instance.
    pub instance: Instance,
    /// The ring-buffer page layout.
    pub header: PageHeader,
    /// Bytes per ring-buffer page.
    pub page_size: usize,
    /// The fork event, recorded in every recording to tie children to containers.
    pub fork: Option<ForkEvent>,
    /// The exit event, which ends a thread id's life.
    pub exit: Option<ExitEvent>,
    /// The selections enabled for attribution, wanted as long as the recording lives.
    pub base: Vec<EventSel>,
}

/// Creates instance `name` (under the tracefs prefix) for a recording: buffer, the `mono`
/// clock, `event-fork`, `record-tgid`, the function tracer when `functions` is given, and the
/// fork and exit events. Blocking: call it off the async workers. On failure the instance is
/// removed (dropped).
pub fn program(
    tracefs: &Tracefs,
    name: &str,
    buffer_kb: u64,
    functions: Option<&[String]>,
) -> Result<Programmed, StartFailure> {
    let instance = Instance::create(tracefs, name).map_err(StartFailure::kernel("ftrace instance"))?;
    instance.set_buffer_size_kb(buffer_kb).map_err(StartFailure::kernel("buffer size"))?;
    // CLOCK_MONOTONIC: comparable across CPUs and with ours, which the sessions' start and
    // stop boundaries in a shared recording need (every kernel since 3.17 has it).
    instance.use_mono_clock().map_err(StartFailure::kernel("the mono trace clock"))?;
    instance.set_option("event-fork", true).map_err(StartFailure::kernel("event-fork option"))?;
    // The kernel then remembers each thread's process, for threads gone before we look.
    if let Err(e) = instance.set_option("record-tgid", true) {
        warn!(instance = name, error = %e, "cannot set record-tgid; exited threads show tgid = pid");
    }
    if let Some(list) = functions {
        let refused = |what| move |source| StartFailure::FunctionTracer { what, source };
        instance.set_option("function-fork", true).map_err(refused("function-fork"))?;
        if !list.is_empty() {
            instance.set_ftrace_filter(list).map_err(refused("set_ftrace_filter"))?;
        }
        instance.use_function_tracer().map_err(refused("current_tracer"))?;
    }
    let header = tracefs.page_header().map_err(StartFailure::kernel("ring-buffer page header"))?;
    let page_size = instance.subbuf_size().unwrap_or(header.data_offset + header.data_size);
    // Fork and exit events tie the threads that are gone before their events are read to their
    // containers: recorded always, routed only to the sessions that asked for them.
    let mut base = Vec::new();
    let mut lineage = |name: &str| -> Result<Option<EventFormat>, StartFailure> {
        let format = match tracefs.event_format("sched", name) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "no {name} format; exited processes may lose their container");
                return Ok(None);
            }
        };
        instance.enable_event("sched", Some(name)).map_err(StartFailure::kernel(name))?;
        base.push(EventSel { system: "sched".into(), event: Some(name.into()) });
        Ok(Some(format))
    };
    let fork = lineage("sched_process_fork")?.as_ref().and_then(ForkEvent::from_format);
    let exit = lineage("sched_process_exit")?.as_ref().map(ExitEvent::from_format);
    Ok(Programmed { instance, header, page_size, fork, exit, base })
}

/// The formats of the events `plan` asks for (a whole system's, for a system), by id; an
/// event whose format cannot be read is left out (it cannot be routed nor decoded).
pub fn plan_formats(tracefs: &Tracefs, plan: &FtracePlan) -> Result<HashMap<u16, EventFormat>, StartFailure> {
    let mut formats = HashMap::new();
    if plan.functions.is_some() {
        match tracefs.event_format("ftrace", "function") {
            Ok(f) => {
                formats.insert(f.id, f);
            }
            Err(e) => warn!(error = %e, "function event format unreadable"),
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
                Err(e) => warn!(error = %e, "event format unreadable; its events cannot be shown"),
            }
        }
    }
    Ok(formats)
}

/// The kernel's overrun count of an instance, over its CPUs: events overwritten unread.
pub fn overrun(instance: &Instance) -> u64 {
    instance.cpus().unwrap_or_default().into_iter().map(|c| instance.overrun(c).unwrap_or(0)).sum()
}
