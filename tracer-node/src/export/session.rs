//! The export side of one running session: the sink its event store offers batches to, and the
//! handle its container lifecycle goes through. Both only queue, bounded, and never wait.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

use super::{model, ExportCounters};
use crate::batch::{Batch, BatchSink, ContainerTag};

/// Where a session's store sends batches for export.
#[derive(Debug)]
pub struct Sink {
    pub(super) tx: mpsc::Sender<Arc<Batch>>,
    pub(super) counters: Arc<ExportCounters>,
    pub(super) capacity: u64,
}

impl BatchSink for Sink {
    /// Offers a batch; never blocks. False once the worker is gone.
    fn offer(&self, batch: &Arc<Batch>) -> bool {
        let n = batch.records.len() as u64;
        if !self.counters.offer(n, self.capacity) {
            return true;
        }
        match self.tx.try_send(batch.clone()) {
            Ok(()) => true,
            // More batches than the channel holds, each under the event capacity: the events
            // are dropped and counted as any over the capacity are; the reader never waits.
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.done(n);
                self.counters.drop_events(n);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters.done(n);
                self.counters.drop_events(n);
                false
            }
        }
    }
}

pub(super) enum Control {
    Started { tag: Arc<ContainerTag>, init: u32, at: u64, at_creation: bool },
    Exited { id: String, at: u64 },
    Stop { at: u64 },
}

/// The export side of one running session; dropping it without [`SessionExport::finish`]
/// still ends the worker when the store closes its sinks.
#[derive(Debug)]
pub struct SessionExport {
    pub(super) ctl: mpsc::Sender<Control>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

impl SessionExport {
    /// A container joined the running session (at its creation when `at_creation`).
    pub fn container_started(&self, tag: Arc<ContainerTag>, init: u32, at: u64, at_creation: bool) {
        self.control(Control::Started { tag, init, at, at_creation });
    }

    /// A container of the session exited.
    pub fn container_exited(&self, id: &str) {
        self.control(Control::Exited { id: id.to_owned(), at: model::unix_now() });
    }

    /// The run stopped: the worker exports what is queued, ends the spans and exits.
    pub fn finish(self) {
        self.control(Control::Stop { at: model::unix_now() });
    }

    /// Hands a lifecycle message to the worker without waiting. The queue holds a message per
    /// container of a node many times over; should a stalled worker fill it, the container's
    /// span is lost (logged), and a lost `Stop` still ends the worker when the store closes its
    /// sinks.
    fn control(&self, c: Control) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.ctl.try_send(c) {
            warn!("OTLP export worker is not keeping up: a container lifecycle message was dropped");
        }
    }
}

/// Lifecycle messages a worker may have queued.
pub(super) const CONTROL_QUEUE: usize = 4096;

/// Batches a worker may have queued: a batch holds at least one event, so as many as the event
/// capacity, but no more than a ring of batches far beyond what readers produce between two
/// polls of the worker (tokio allocates the channel's blocks as they fill, not up front).
pub(super) fn batch_queue(queue_events: u64) -> usize {
    usize::try_from(queue_events).unwrap_or(usize::MAX).clamp(1, 65_536)
}
