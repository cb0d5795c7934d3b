//! OCI runtime hook of container-tracer: tells tracer-node about a container at creation and at
//! poststop, within a deadline, spooling what it could not deliver. Never breaks a container start.

pub mod cli;
pub mod error;
pub mod notify;
pub mod spool;
pub mod state;

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub use cli::Cli;
pub use error::HookError;
use state::Action;

/// How one invocation ended (all of them let the container proceed).
#[derive(Debug)]
pub enum Outcome {
    /// The stage needs nothing from us.
    Ignored,
    /// tracer-node applied the event.
    Delivered,
    /// tracer-node read the event and refused it (for instance, the init already exited).
    Refused(String),
    /// The event could not be delivered and was spooled for replay.
    Spooled {
        /// Why delivery failed.
        reason: String,
        /// The spool file.
        path: PathBuf,
    },
}

fn now_unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Runs the hook: reads the state from `stdin`, then registers or unregisters the container.
/// `start` is when the process started; the deadline counts from it.
pub fn run(cli: &Cli, stdin: File, start: Instant) -> Result<Outcome, HookError> {
    run_with_proc(cli, stdin, start, Path::new("/proc"))
}

/// [`run`] with another procfs root (tests).
pub fn run_with_proc(cli: &Cli, stdin: File, start: Instant, proc_root: &Path) -> Result<Outcome, HookError> {
    let deadline = start + Duration::from_millis(cli.deadline_ms);
    // Check the stage before reading anything: a misconfigured hook is reported the same way
    // whatever the runtime passes.
    let stage_action = cli.stage.as_deref().map(state::action_for_stage).transpose()?;
    if stage_action == Some(Action::Ignore) {
        return Ok(Outcome::Ignored);
    }
    let bytes = state::read_state(stdin, deadline, cli.deadline_ms)?;
    let st = state::parse_state(&bytes)?;
    let action = stage_action.unwrap_or_else(|| state::action_for_status(st.status()));
    let now = now_unix_ns();
    let Some(event) = state::build_event(&st, action, now, proc_root, deadline)? else {
        return Ok(Outcome::Ignored);
    };
    match notify::deliver(&cli.socket, &event, deadline, cli.deadline_ms) {
        Ok(reply) if reply.ok => Ok(Outcome::Delivered),
        Ok(reply) => Ok(Outcome::Refused(reply.error.unwrap_or_else(|| "no reason given".into()))),
        Err(source) => {
            let reason = HookError::Deliver { socket: cli.socket.clone(), source }.to_string();
            let path = spool::write(&cli.spool_dir, &event, &reason, now)
                .map_err(|source| HookError::Spool { dir: cli.spool_dir.clone(), source })?;
            Ok(Outcome::Spooled { reason, path })
        }
    }
}
