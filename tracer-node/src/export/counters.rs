//! Export counters of a session: events queued for export, exported and dropped.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use crate::metrics::Metrics;

/// Export counters of one session (all its runs), mirrored into the node's metrics.
#[derive(Debug)]
pub struct ExportCounters {
    queued: AtomicU64,
    exported: AtomicU64,
    dropped: AtomicU64,
    metrics: Arc<Metrics>,
}

impl ExportCounters {
    /// Counters reporting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { queued: AtomicU64::new(0), exported: AtomicU64::new(0), dropped: AtomicU64::new(0), metrics }
    }

    /// Takes `n` events into the queue if they fit under `capacity`; counts them dropped if not.
    ///
    /// One `fetch_update`: a load-then-add let two readers racing past the check both get in,
    /// overshooting the capacity by a batch per CPU.
    pub fn offer(&self, n: u64, capacity: u64) -> bool {
        let taken = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| q.checked_add(n).filter(|t| *t <= capacity));
        if taken.is_err() {
            self.drop_events(n);
            return false;
        }
        self.metrics.export_queue.fetch_add(n, Ordering::Relaxed);
        true
    }

    /// `n` queued events are done with (exported or dropped).
    pub(super) fn done(&self, n: u64) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
        self.metrics.export_queue.fetch_sub(n, Ordering::Relaxed);
    }

    pub(super) fn drop_events(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.metrics.export_dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn exported(&self, n: u64) {
        self.exported.fetch_add(n, Ordering::Relaxed);
        self.metrics.exported_events.fetch_add(n, Ordering::Relaxed);
    }

    /// (queued, exported, dropped) now.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.queued.load(Ordering::Relaxed),
            self.exported.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racing_offers_never_queue_more_than_the_capacity_and_count_every_refusal() {
        let metrics = Arc::new(Metrics::default());
        let counters = Arc::new(ExportCounters::new(metrics.clone()));
        let (capacity, threads, offers, n) = (10_000u64, 8u64, 5_000u64, 3u64);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..offers {
                        counters.offer(n, capacity);
                    }
                });
            }
        });
        let (queued, _, dropped) = counters.snapshot();
        assert_eq!(queued, capacity / n * n, "filled to the last whole batch under the capacity");
        assert_eq!(queued + dropped, threads * offers * n, "every event queued or counted dropped");
        assert_eq!(metrics.export_queue.load(Ordering::Relaxed), queued);
        assert_eq!(metrics.export_dropped.load(Ordering::Relaxed), dropped);
        assert!(!counters.offer(1, 0), "nothing fits a zero capacity");
    }
}
