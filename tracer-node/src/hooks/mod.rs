//! Trace hooks: what a session runs. Built-in hooks drive tracefs directly (provider
//! `trace-hooks/ftrace`); external providers follow the original's `manager` protocol.

pub mod builtin;
pub mod external;

use std::{collections::BTreeMap, sync::Arc};

use tracer_api::v1::{Provider, TraceHook, TraceHooks};

pub use self::builtin::{Builtin, EventSel, FtracePlan};
use self::external::ExternalProvider;
use crate::ftrace::Tracefs;

/// Provider of the built-in hooks.
pub const BUILTIN_PROVIDER: &str = "trace-hooks/ftrace";

/// Why a hook cannot be used as asked.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// No hook of that name.
    #[error("unknown trace hook {0:?}")]
    Unknown(String),
    /// The arguments are wrong.
    #[error("bad trace arguments: {0}")]
    BadArguments(String),
    /// The filter expression is refused before it reaches the kernel.
    #[error("bad trace arguments: invalid filter: {0}")]
    Filter(#[from] tracer_spec::filter::FilterError),
    /// The arguments do not parse (the grammar shared with the admission webhook).
    #[error("bad trace arguments: {0}")]
    Args(#[from] tracer_spec::args::ArgsError),
    /// tracefs could not be read.
    #[error("kernel tracing unavailable: {0}")]
    Kernel(#[source] crate::ftrace::TracefsError),
}

/// What a session will run.
#[derive(Debug, Clone)]
pub enum Plan {
    /// A built-in hook on an ftrace instance of ours.
    Ftrace(FtracePlan),
    /// An external provider's hook.
    External {
        /// The provider.
        provider: Arc<ExternalProvider>,
        /// Hook name.
        hook: String,
        /// Arguments as split.
        args: Vec<String>,
    },
}

/// Every hook this node offers.
#[derive(Debug)]
pub struct Catalog {
    tracefs: Tracefs,
    external: Vec<Arc<ExternalProvider>>,
}

impl Catalog {
    /// A catalog of the built-in hooks and the given external providers.
    pub fn new(tracefs: Tracefs, external: Vec<Arc<ExternalProvider>>) -> Self {
        Self { tracefs, external }
    }

    /// The external providers.
    pub fn external(&self) -> &[Arc<ExternalProvider>] {
        &self.external
    }

    /// `GET /v1/trace-hooks`.
    pub fn describe(&self) -> TraceHooks {
        let builtin = Provider {
            tracers: Builtin::ALL
                .iter()
                .map(|b| (b.name().to_owned(), TraceHook { description: b.description(), name: b.name().to_owned() }))
                .collect(),
        };
        let mut out = vec![BTreeMap::from([(BUILTIN_PROVIDER.to_owned(), builtin)])];
        for p in &self.external {
            let tracers = p
                .hooks
                .iter()
                .filter(|(name, _)| Builtin::ALL.iter().all(|b| b.name() != name.as_str()))
                .map(|(name, d)| (name.clone(), TraceHook { description: d.clone(), name: name.clone() }))
                .collect();
            out.push(BTreeMap::from([(p.name.clone(), Provider { tracers })]));
        }
        out
    }

    /// Checks `hook` with `args` (one string, split on whitespace) and returns the plan.
    /// Built-in names win over an external hook of the same name.
    pub fn plan(&self, hook: &str, args: &str) -> Result<Plan, HookError> {
        if let Some(b) = Builtin::ALL.iter().find(|b| b.name() == hook) {
            return builtin::plan(*b, args, &self.tracefs).map(Plan::Ftrace);
        }
        let split: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
        for p in &self.external {
            if p.hooks.contains_key(hook) {
                return Ok(Plan::External { provider: p.clone(), hook: hook.to_owned(), args: split });
            }
        }
        Err(HookError::Unknown(hook.to_owned()))
    }
}
