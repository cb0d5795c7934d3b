//! What events travel in, from a session's kernel readers to its consumers (the retention
//! buffer, followers and export): a page's worth of records, each tied to its thread and its
//! container, and the trait export implements to take them. A leaf module, so the consumers
//! depend on it and not on each other (export does not import sessions).

use std::{sync::Arc, time::Instant};

/// The container a thread belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerTag {
    /// Runtime id.
    pub id: String,
    /// Pod name.
    pub pod: String,
    /// Namespace.
    pub namespace: String,
    /// Container name.
    pub name: String,
    /// Runtime that created it (`runc`, `crun`, ...), empty when unknown.
    pub runtime: String,
    /// OpenTelemetry `k8s.*` workload attributes from the admission webhook's stamps
    /// (`k8s.replicaset.name`, `k8s.deployment.name`, ...); empty without them.
    pub workload: Vec<(&'static str, String)>,
}

/// One event, pointing into its page.
#[derive(Debug, Clone)]
pub struct Record {
    /// Kernel timestamp (ns, instance clock).
    pub ts: u64,
    /// Thread id (`common_pid`).
    pub pid: i32,
    /// Event id (`common_type`).
    pub event_id: u16,
    pub(crate) offset: u32,
    pub(crate) len: u32,
    /// Its thread: an index into its batch's threads ([`Batch::task`]).
    pub(crate) task: u16,
}

/// The events of one page.
#[derive(Debug)]
pub struct Batch {
    /// CPU the page came from.
    pub cpu: u32,
    /// The raw page, shared by the batches of every session that takes events of it.
    pub(crate) page: Arc<Vec<u8>>,
    /// The events.
    pub records: Vec<Record>,
    /// The threads of the records. A page's records are of few threads: a reference to each
    /// once per batch, not one per record (an atomic count shared by the reader's and the
    /// consumers' cores, changed twice a record).
    pub(crate) tasks: Vec<Arc<TaskInfo>>,
}

impl Record {
    /// The record of an event whose payload is `len` bytes at `offset` of its page, of the
    /// batch's thread number `task`.
    pub fn new(ts: u64, pid: i32, event_id: u16, offset: u32, len: u32, task: u16) -> Self {
        Self { ts, pid, event_id, offset, len, task }
    }
}

impl Batch {
    /// A batch of `records` of `page`, read from `cpu`, whose threads are `tasks`.
    pub fn new(cpu: u32, page: Arc<Vec<u8>>, records: Vec<Record>, tasks: Vec<Arc<TaskInfo>>) -> Self {
        Self { cpu, page, records, tasks }
    }

    /// The thread of `record` (a thread of no name nor container if the record is not of
    /// this batch).
    pub fn task(&self, record: &Record) -> &TaskInfo {
        static UNKNOWN: std::sync::LazyLock<TaskInfo> =
            std::sync::LazyLock::new(|| TaskInfo::new(0, Arc::from(""), None));
        self.tasks.get(usize::from(record.task)).map_or(&UNKNOWN, |t| t)
    }

    /// The raw payload of `record`.
    pub fn payload(&self, record: &Record) -> &[u8] {
        let start = record.offset as usize;
        self.page.get(start..start + record.len as usize).unwrap_or_default()
    }
}

/// What is known of a thread.
#[derive(Debug)]
pub struct TaskInfo {
    /// Its process.
    pub tgid: i32,
    /// Its command name.
    pub comm: Arc<str>,
    /// Its container, if it could be tied to one of the session's.
    pub container: Option<Arc<ContainerTag>>,
    pub(crate) seen: Instant,
    /// The time (trace clock) of the record it was resolved for.
    pub(crate) resolved_at: u64,
}

impl TaskInfo {
    /// A thread known now, of process `tgid`, running `comm`, in `container`.
    pub fn new(tgid: i32, comm: Arc<str>, container: Option<Arc<ContainerTag>>) -> Self {
        Self { tgid, comm, container, seen: Instant::now(), resolved_at: 0 }
    }
}

/// A consumer of a session's batches other than its followers: export. Offered every batch
/// the session reads, from the reader threads, so it must never block.
pub trait BatchSink: Send + Sync + std::fmt::Debug {
    /// Takes (or drops, counting it) a batch. False once the consumer is gone for good: the
    /// session forgets it then.
    fn offer(&self, batch: &Arc<Batch>) -> bool;
}
