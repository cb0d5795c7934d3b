//! OTLP export of running sessions. Each running built-in session gets a worker fed by its
//! event store through a queue bounded in events: the kernel readers never wait for the
//! collector, and what does not fit is dropped and counted (session stats, `/metrics`, logs).
//! The worker batches events into log records (or span events), retries retryable failures
//! with backoff, keeps one span per attached container, and ends them all when the run stops.

pub mod config;
mod counters;
pub mod encode;
pub mod logs;
pub mod model;
pub mod payload;
mod retry;
mod session;
mod spans;
pub mod transport;
mod worker;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

pub use self::{
    config::{ExportArgs, ExportConfig, ExportConfigError},
    counters::ExportCounters,
    session::{SessionExport, Sink},
};
use self::{
    model::SessionContext,
    session::{batch_queue, Control, CONTROL_QUEUE},
    transport::{Transport, TransportError},
    worker::Worker,
};
use crate::{batch::ContainerTag, ftrace::format::EventFormat, metrics::Metrics};

/// Lower-case hex of an id.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long a failed request is retried while the session runs.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long a stopped session's remaining events may take to export.
const FINAL_DRAIN: Duration = Duration::from_secs(15);
/// How often partial batches are sent.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long an exited container's span waits for its last events (the exit code) before export.
const SPAN_GRACE: Duration = Duration::from_secs(2);
/// At most one warning per session this often; the counts in between are summed.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The node's exporter: one configuration and connection, a worker per running session.
#[derive(Debug)]
pub struct Exporter {
    config: ExportConfig,
    transport: Transport,
    metrics: Arc<Metrics>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Exporter {
    /// An exporter for `config`; inside the tokio runtime.
    pub fn new(config: ExportConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, TransportError> {
        let transport = Transport::new(&config)?;
        info!(
            protocol = ?config.protocol,
            traces = %config.traces_endpoint,
            logs = %config.logs_endpoint,
            events_as = ?config.events_as,
            "OTLP export on"
        );
        Ok(Arc::new(Self { config, transport, metrics, workers: Mutex::new(Vec::new()) }))
    }

    /// The configuration.
    pub fn config(&self) -> &ExportConfig {
        &self.config
    }

    /// Starts exporting a run of a session: returns the sink for its store and the handle for
    /// its container lifecycle. `containers` are attached from the run's start, or from their creation
    /// when it is given (a session started for a container being created).
    pub fn start_session(
        self: &Arc<Self>,
        ctx: SessionContext,
        formats: Arc<HashMap<u16, EventFormat>>,
        counters: Arc<ExportCounters>,
        containers: Vec<(Arc<ContainerTag>, u32, Option<u64>)>,
    ) -> (Sink, SessionExport) {
        let (tx, batches) = mpsc::channel(batch_queue(self.config.queue_events));
        let (ctl_tx, ctl) = mpsc::channel(CONTROL_QUEUE.max(containers.len() + 1));
        let started = model::unix_now();
        for (tag, init, created) in containers {
            let (at, at_creation) = created.map_or((started, false), |c| (c, true));
            let _ = ctl_tx.try_send(Control::Started { tag, init, at, at_creation });
        }
        let sink = Sink { tx, counters: counters.clone(), capacity: self.config.queue_events };
        let already_dropped = counters.snapshot().2;
        let worker = Worker::new(self.clone(), ctx, formats, counters, started, already_dropped);
        let handle = tokio::runtime::Handle::current().spawn(worker.run(batches, ctl));
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        workers.retain(|h| !h.is_finished());
        workers.push(handle);
        (sink, SessionExport { ctl: ctl_tx })
    }

    /// Waits up to `limit` for the workers of stopped sessions to send what they hold.
    pub async fn drain(&self, limit: Duration) {
        let workers: Vec<JoinHandle<()>> = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        let all = futures_util::future::join_all(workers);
        if tokio::time::timeout(limit, all).await.is_err() {
            warn!("OTLP export did not finish in {limit:?} at shutdown; the rest is lost");
        }
    }
}
