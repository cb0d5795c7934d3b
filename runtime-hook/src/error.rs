//! Errors of the runtime hook. Every one of them is fail-open by default: the container starts.

use std::{io, path::PathBuf};

/// What can go wrong in one hook invocation.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Reading the OCI state from stdin failed.
    #[error("cannot read the container state from stdin: {0}")]
    ReadState(#[source] io::Error),
    /// stdin stayed open past the deadline.
    #[error("the container state did not arrive on stdin within {0} ms")]
    StateTimeout(u64),
    /// stdin was empty.
    #[error("stdin is empty: the runtime must pass the container state JSON")]
    EmptyState,
    /// stdin was larger than any real state.
    #[error("the container state on stdin is larger than {limit} bytes")]
    StateTooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// stdin was not an OCI state.
    #[error("stdin is not an OCI container state: {0}")]
    ParseState(#[source] serde_json::Error),
    /// The state parsed but lacks what the stage needs.
    #[error("invalid container state: {0}")]
    InvalidState(&'static str),
    /// The stage argument is not an OCI hook stage.
    #[error("unknown hook stage {0:?} (expected prestart, createRuntime, createContainer, startContainer, poststart or poststop)")]
    UnknownStage(String),
    /// Delivering the event to tracer-node failed.
    #[error("cannot deliver to tracer-node at {socket}: {source}")]
    Deliver {
        /// The registry socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: DeliverError,
    },
    /// Writing the spool file failed too: the event is lost, say so loudly.
    #[error("cannot spool the event in {dir}: {source}")]
    Spool {
        /// The spool directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// Connecting, writing or reading failed (daemon down, socket missing).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The daemon accepted the connection but did not answer in time (hung or overloaded).
    #[error("no answer within the {0} ms deadline")]
    Timeout(u64),
    /// The answer was not a [`tracer_api::HookReply`].
    #[error("unreadable answer: {0}")]
    BadReply(String),
}
