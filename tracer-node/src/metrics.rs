//! Node-wide counters and the exposition of `/metrics` (OpenMetrics text, through the
//! `prometheus-client` crate). Counters are atomics bumped where things happen; gauges are read
//! from their owners at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};
use tracer_http::ServerStats;

/// Counters of the event pipeline and the exporter, over every session this daemon ran.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events read from the kernel.
    pub events_read: AtomicU64,
    /// Kernel overruns of finished runs (running ones are added at scrape time).
    pub events_lost_kernel: AtomicU64,
    /// Events a following `events` stream missed.
    pub events_dropped_streams: AtomicU64,
    /// Following event streams now (a gauge).
    pub followers: AtomicU64,
    /// Following streams cut off for not reading.
    pub followers_cut_off: AtomicU64,
    /// Auto-trace sessions started at a container's creation.
    pub auto_sessions_started: AtomicU64,
    /// Auto-trace sessions refused: over `--max-auto-sessions`, or their hook unusable here.
    pub auto_sessions_refused: AtomicU64,
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
    /// Export requests (attempts) that succeeded.
    pub export_request_successes: AtomicU64,
    /// Export requests (attempts) that failed.
    pub export_request_failures: AtomicU64,
}

/// Counters of the registry's inputs.
#[derive(Debug, Default)]
pub struct RegistryCounters {
    /// Hook messages applied, by event (`created`, `stopped`).
    pub hook_created: AtomicU64,
    /// See above.
    pub hook_stopped: AtomicU64,
    /// `created` messages refused (invalid, dead or reused pid, not a container).
    pub hook_created_refused: AtomicU64,
    /// `stopped` messages refused (the init still runs).
    pub hook_stopped_refused: AtomicU64,
    /// Messages refused before their event was known (malformed, too large, too slow).
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
    /// Whether the task tracker runs.
    pub task_tracker_up: bool,
    /// The task tracker's counters: (containers read by it, losses of events, containers
    /// `/v1/pods` took from memory, containers it read live).
    pub task_tracker: [u64; 4],
}

/// One scrape's values, encoded by `prometheus-client`. Every counter is a single atomic that
/// only grows (nothing is derived by subtraction, which could go down between two reads), and
/// the series of one metric all have the same label names.
#[derive(Debug)]
struct Scrape {
    counters: Vec<(&'static str, &'static str, Vec<Series>)>,
    gauges: Vec<(&'static str, &'static str, u64)>,
}

/// One series of a counter: up to two labels (unused ones have an empty name), and the value.
type Series = ([(&'static str, &'static str); 2], u64);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (name, help, value) in &self.gauges {
            encoder.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(value)?;
        }
        for (name, help, series) in &self.counters {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, value) in series {
                // An unlabelled counter is one series with no label (the names are empty).
                let labels: Vec<(&str, &str)> = labels.iter().filter(|(k, _)| !k.is_empty()).copied().collect();
                if labels.is_empty() {
                    metric.encode_counter::<NoLabelSet, _, u64>(value, None)?;
                } else {
                    metric.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(value, None)?;
                }
            }
        }
        Ok(())
    }
}

/// The highest kernel overrun total reported so far: finished runs' overruns are added when a
/// run stops, live ones are read at scrape time, and a scrape between the two must not make
/// the counter go down.
static OVERRUNS_REPORTED: AtomicU64 = AtomicU64::new(0);

/// The OpenMetrics text exposition of everything (what Prometheus scrapes).
pub fn render(m: &Metrics, r: &RegistryCounters, http: &ServerStats, g: &Gauges) -> String {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    const NONE: [(&str, &str); 2] = [("", ""), ("", "")];
    let one = |v: u64| vec![(NONE, v)];
    let overruns = OVERRUNS_REPORTED
        .fetch_max(l(&m.events_lost_kernel) + g.live_overrun, Ordering::Relaxed)
        .max(l(&m.events_lost_kernel) + g.live_overrun);
    let scrape = Scrape {
        gauges: vec![
            ("registered_containers", "Containers in the live registry.", g.containers),
            (
                "exit_watcher_up",
                "1 while the thread that sees container inits exit runs; 0 means exits are seen at poststop only.",
                u64::from(g.exit_watcher_up),
            ),
            (
                "task_tracker_up",
                "1 while the task tracker runs; 0 means GET /v1/pods reads every container from procfs.",
                u64::from(g.task_tracker_up),
            ),
            ("sessions", "Trace sessions.", g.sessions),
            ("sessions_running", "Running trace sessions.", g.sessions_running),
            ("export_enabled", "1 when OTLP export is configured.", u64::from(g.export_enabled)),
            ("export_queue_events", "Events waiting for OTLP export.", l(&m.export_queue)),
            ("followers", "Following event streams (?follow=true) open now.", l(&m.followers)),
            ("http_connections", "REST API connections open now.", l(&http.open)),
        ],
        counters: vec![
            ("events_read", "Kernel events read from ftrace.", one(l(&m.events_read))),
            ("kernel_overruns", "Events the kernel overwrote before they were read.", one(overruns)),
            (
                "stream_dropped_events",
                "Events a following events stream missed for being too slow.",
                one(l(&m.events_dropped_streams)),
            ),
            (
                "exported_records",
                "Records exported over OTLP.",
                vec![
                    ([("signal", "events"), ("", "")], l(&m.exported_events)),
                    ([("signal", "spans"), ("", "")], l(&m.exported_spans)),
                ],
            ),
            (
                "export_dropped_records",
                "Records dropped by the exporter (queue full, collector down or refusing).",
                vec![
                    ([("signal", "events"), ("", "")], l(&m.export_dropped)),
                    ([("signal", "spans"), ("", "")], l(&m.export_spans_dropped)),
                ],
            ),
            (
                "export_requests",
                "OTLP export requests (each attempt), by outcome.",
                vec![
                    ([("result", "ok"), ("", "")], l(&m.export_request_successes)),
                    ([("result", "failed"), ("", "")], l(&m.export_request_failures)),
                ],
            ),
            (
                "hook_deliveries",
                "Runtime hook messages received on the registry socket, by event and outcome.",
                vec![
                    ([("event", "created"), ("result", "applied")], l(&r.hook_created)),
                    ([("event", "stopped"), ("result", "applied")], l(&r.hook_stopped)),
                    ([("event", "created"), ("result", "refused")], l(&r.hook_created_refused)),
                    ([("event", "stopped"), ("result", "refused")], l(&r.hook_stopped_refused)),
                    ([("event", "unknown"), ("result", "refused")], l(&r.hook_refused)),
                ],
            ),
            (
                "spool_replays",
                "Spooled hook events replayed, by outcome.",
                vec![
                    ([("result", "applied"), ("", "")], l(&r.spool_applied)),
                    ([("result", "stale"), ("", "")], l(&r.spool_refused)),
                    ([("result", "unreadable"), ("", "")], l(&r.spool_unreadable)),
                ],
            ),
            (
                "auto_trace_sessions",
                "Sessions started by container-tracer.io/trace-hook annotations at a container's creation, by outcome.",
                vec![
                    ([("result", "started"), ("", "")], l(&m.auto_sessions_started)),
                    ([("result", "refused"), ("", "")], l(&m.auto_sessions_refused)),
                ],
            ),
            (
                "followers_cut_off",
                "Following event streams ended because their client did not read for 10 s.",
                one(l(&m.followers_cut_off)),
            ),
            ("http_connections_accepted", "REST API connections accepted.", one(l(&http.accepted))),
            (
                "http_connections_closed",
                "REST API connections closed by the server before the client was done, by reason.",
                vec![
                    ([("reason", "idle_at_cap"), ("", "")], l(&http.evicted)),
                    ([("reason", "refused_at_cap"), ("", "")], l(&http.refused)),
                    ([("reason", "header_timeout"), ("", "")], l(&http.header_timeouts)),
                    ([("reason", "body_timeout"), ("", "")], l(&http.body_timeouts)),
                    ([("reason", "write_timeout"), ("", "")], l(&http.write_timeouts)),
                    ([("reason", "tls_handshake"), ("", "")], l(&http.handshake_failures)),
                ],
            ),
            (
                "pod_task_reads",
                "Containers listed by GET /v1/pods, by where their processes came from (memory: the task tracker).",
                vec![
                    ([("source", "memory"), ("", "")], g.task_tracker[2]),
                    ([("source", "procfs"), ("", "")], g.task_tracker[3]),
                ],
            ),
            (
                "task_tracker_rescans",
                "Containers the task tracker read from procfs (registration, cgroup moves, reparenting, losses).",
                one(g.task_tracker[0]),
            ),
            (
                "task_tracker_losses",
                "Times the kernel lost task events and every container was read again.",
                one(g.task_tracker[1]),
            ),
            (
                "late_attachments",
                "New containers whose hook was answered before they were attached to every running session.",
                one(l(&r.attach_late)),
            ),
        ],
    };
    let mut registry = Registry::with_prefix("container_tracer");
    registry.register_collector(Box::new(scrape));
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_text_with_one_label_set_per_metric() {
        let m = Metrics::default();
        m.events_read.store(5, Ordering::Relaxed);
        m.export_request_successes.store(7, Ordering::Relaxed);
        let r = RegistryCounters::default();
        r.hook_created.store(2, Ordering::Relaxed);
        let text =
            render(&m, &r, &ServerStats::default(), &Gauges { containers: 3, live_overrun: 4, ..Gauges::default() });
        assert!(text.contains("# TYPE container_tracer_events_read counter\n"), "{text}");
        assert!(text.contains("\ncontainer_tracer_events_read_total 5\n"), "{text}");
        assert!(text.contains("\ncontainer_tracer_registered_containers 3\n"), "{text}");
        assert!(text.contains("\ncontainer_tracer_kernel_overruns_total 4\n"), "{text}");
        assert!(text.contains("container_tracer_hook_deliveries_total{event=\"created\",result=\"applied\"} 2\n"));
        assert!(text.contains("container_tracer_export_requests_total{result=\"ok\"} 7\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').expect("name value");
            v.parse::<u64>().expect("numeric value");
        }
        // The kernel overrun counter never goes down, even if a scrape sees a run's overrun both
        // live and finished, and the next one only finished.
        let again = render(&m, &r, &ServerStats::default(), &Gauges::default());
        assert!(again.contains("\ncontainer_tracer_kernel_overruns_total 4\n"), "{again}");
    }
}
