//! Node-wide counters and the Prometheus text rendering of `/metrics`. Counters are plain
//! atomics bumped where things happen; gauges are read from their owners at scrape time.

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering},
};

/// Counters of the event pipeline and the exporter, over every session this daemon ran.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events read from the kernel.
    pub events_read: AtomicU64,
    /// Kernel overruns of finished runs (running ones are added at scrape time).
    pub events_lost_kernel: AtomicU64,
    /// Events a following `events` stream missed.
    pub events_dropped_streams: AtomicU64,
    /// Events waiting for export now (a gauge).
    pub export_queue: AtomicU64,
    /// Events exported (log records or span events).
    pub exported_events: AtomicU64,
    /// Events dropped by the exporter (queue full, collector down, rejected).
    pub export_dropped: AtomicU64,
    /// Spans exported.
    pub exported_spans: AtomicU64,
    /// Spans that could not be exported.
    pub export_spans_dropped: AtomicU64,
    /// Export requests sent (each attempt).
    pub export_requests: AtomicU64,
    /// Export requests that failed.
    pub export_request_failures: AtomicU64,
}

/// Counters of the registry's inputs.
#[derive(Debug, Default)]
pub struct RegistryCounters {
    /// Hook messages applied, by event (`created`, `stopped`).
    pub hook_created: AtomicU64,
    /// See above.
    pub hook_stopped: AtomicU64,
    /// Hook messages refused (malformed, invalid, dead pid).
    pub hook_refused: AtomicU64,
    /// Spooled events applied at replay.
    pub spool_applied: AtomicU64,
    /// Spooled events that no longer applied (container gone meanwhile).
    pub spool_refused: AtomicU64,
    /// Spool files that could not be read.
    pub spool_unreadable: AtomicU64,
    /// New containers whose hook was answered before they were attached to every running
    /// session (the attach budget ran out).
    pub attach_late: AtomicU64,
}

/// The values that are read from their owners at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Containers in the registry (sandboxes included).
    pub containers: u64,
    /// Sessions.
    pub sessions: u64,
    /// Running sessions.
    pub sessions_running: u64,
    /// Kernel overruns of the runs in progress.
    pub live_overrun: u64,
    /// Whether export is configured.
    pub export_enabled: bool,
    /// Whether the exit watcher runs.
    pub exit_watcher_up: bool,
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP container_tracer_{name} {help}");
    let _ = writeln!(out, "# TYPE container_tracer_{name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "container_tracer_{name} {v}");
        } else {
            let _ = writeln!(out, "container_tracer_{name}{{{labels}}} {v}");
        }
    }
}

/// The Prometheus text exposition (version 0.0.4) of everything.
pub fn render(m: &Metrics, r: &RegistryCounters, g: &Gauges) -> String {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut o = String::with_capacity(4096);
    metric(&mut o, "registered_containers", "gauge", "Containers in the live registry.", &[("", g.containers)]);
    metric(
        &mut o,
        "exit_watcher_up",
        "gauge",
        "1 while the thread that sees container inits exit runs; 0 means exits are seen at poststop only.",
        &[("", u64::from(g.exit_watcher_up))],
    );
    metric(&mut o, "sessions", "gauge", "Trace sessions.", &[("", g.sessions)]);
    metric(&mut o, "sessions_running", "gauge", "Running trace sessions.", &[("", g.sessions_running)]);
    metric(&mut o, "events_read_total", "counter", "Kernel events read from ftrace.", &[("", l(&m.events_read))]);
    metric(
        &mut o,
        "kernel_overruns_total",
        "counter",
        "Events the kernel overwrote before they were read.",
        &[("", l(&m.events_lost_kernel) + g.live_overrun)],
    );
    metric(
        &mut o,
        "stream_dropped_events_total",
        "counter",
        "Events a following events stream missed for being too slow.",
        &[("", l(&m.events_dropped_streams))],
    );
    metric(
        &mut o,
        "export_enabled",
        "gauge",
        "1 when OTLP export is configured.",
        &[("", u64::from(g.export_enabled))],
    );
    metric(&mut o, "export_queue_events", "gauge", "Events waiting for OTLP export.", &[("", l(&m.export_queue))]);
    metric(
        &mut o,
        "exported_records_total",
        "counter",
        "Records exported over OTLP.",
        &[("signal=\"events\"", l(&m.exported_events)), ("signal=\"spans\"", l(&m.exported_spans))],
    );
    metric(
        &mut o,
        "export_dropped_records_total",
        "counter",
        "Records dropped by the exporter (queue full, collector down or refusing).",
        &[("signal=\"events\"", l(&m.export_dropped)), ("signal=\"spans\"", l(&m.export_spans_dropped))],
    );
    metric(
        &mut o,
        "export_requests_total",
        "counter",
        "OTLP export requests, by outcome.",
        &[
            ("result=\"ok\"", l(&m.export_requests).saturating_sub(l(&m.export_request_failures))),
            ("result=\"failed\"", l(&m.export_request_failures)),
        ],
    );
    metric(
        &mut o,
        "hook_deliveries_total",
        "counter",
        "Runtime hook messages received on the registry socket, by outcome.",
        &[
            ("event=\"created\",result=\"applied\"", l(&r.hook_created)),
            ("event=\"stopped\",result=\"applied\"", l(&r.hook_stopped)),
            ("result=\"refused\"", l(&r.hook_refused)),
        ],
    );
    metric(
        &mut o,
        "spool_replays_total",
        "counter",
        "Spooled hook events replayed, by outcome.",
        &[
            ("result=\"applied\"", l(&r.spool_applied)),
            ("result=\"stale\"", l(&r.spool_refused)),
            ("result=\"unreadable\"", l(&r.spool_unreadable)),
        ],
    );
    metric(
        &mut o,
        "late_attachments_total",
        "counter",
        "New containers whose hook was answered before they were attached to every running session.",
        &[("", l(&r.attach_late))],
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.events_read.store(5, Ordering::Relaxed);
        let r = RegistryCounters::default();
        r.hook_created.store(2, Ordering::Relaxed);
        let text = render(&m, &r, &Gauges { containers: 3, live_overrun: 4, ..Gauges::default() });
        assert!(
            text.contains("# TYPE container_tracer_events_read_total counter\ncontainer_tracer_events_read_total 5\n")
        );
        assert!(text.contains("container_tracer_registered_containers 3\n"));
        assert!(text.contains("container_tracer_kernel_overruns_total 4\n"));
        assert!(text.contains("container_tracer_hook_deliveries_total{event=\"created\",result=\"applied\"} 2\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').expect("name value");
            v.parse::<u64>().expect("numeric value");
        }
    }
}
