//! `/metrics`: calls to nodes by node and result, answers that left nodes out, answer latency
//! per endpoint, discovery's state (OpenMetrics text via `prometheus-client`).

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeResult {
    node: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

/// How one call to a node ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// An answer (any status the endpoint expects, a 404 for "not here" included).
    Ok,
    /// No usable answer: refused, reset, TLS, an unexpected status, a body too large.
    Error,
    /// No answer within `--node-timeout`.
    Timeout,
}

/// tracer-svc's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    node_calls: Family<NodeResult, Counter>,
    partial: Family<EndpointLabel, Counter>,
    latency: Family<EndpointLabel, Histogram>,
    /// Nodes known now.
    pub nodes: Gauge,
    /// 1 once discovery listed the nodes (always 1 with `--nodes`).
    pub synced: Gauge,
    /// Watch failures (each re-lists after a backoff).
    pub discovery_errors: Counter,
    /// Node event streams that broke before their end.
    pub stream_breaks: Counter<u64, AtomicU64>,
    /// The nodes with counters.
    seen: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("container_tracer_svc");
        let node_calls = Family::<NodeResult, Counter>::default();
        registry.register("node_requests", "Requests to tracer-nodes, by node and result", node_calls.clone());
        let partial = Family::<EndpointLabel, Counter>::default();
        registry.register(
            "partial_answers",
            "Answers that left out at least one node (named in X-Tracer-Missing-Nodes), by endpoint",
            partial.clone(),
        );
        // 1 ms to 65 s: one node answers in a millisecond; the default node timeout is 5 s.
        let latency = Family::<EndpointLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17))
        });
        registry.register(
            "request_duration_seconds",
            "Time to answer a request (to its headers for streams), by endpoint",
            latency.clone(),
        );
        let nodes = Gauge::default();
        registry.register("nodes", "tracer-nodes known now", nodes.clone());
        let synced = Gauge::default();
        registry.register("discovery_synced", "1 once the node list is complete", synced.clone());
        let discovery_errors = Counter::default();
        registry.register("discovery_errors", "EndpointSlice watch failures (each re-lists)", discovery_errors.clone());
        let stream_breaks = Counter::default();
        registry.register(
            "node_stream_breaks",
            "Node event streams that broke before their end",
            stream_breaks.clone(),
        );
        Self {
            registry,
            node_calls,
            partial,
            latency,
            nodes,
            synced,
            discovery_errors,
            stream_breaks,
            seen: Default::default(),
        }
    }
}

impl Metrics {
    /// Counts one call to `node`.
    pub fn node_call(&self, node: &str, result: CallResult) {
        let result = match result {
            CallResult::Ok => "ok",
            CallResult::Error => "error",
            CallResult::Timeout => "timeout",
        };
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !seen.contains(node) {
                seen.insert(node.to_owned());
            }
        }
        self.node_calls.get_or_create(&NodeResult { node: node.to_owned(), result }).inc();
    }

    /// Drops the counters of the nodes not in `current` (they left the cluster), so a churning
    /// node pool does not grow the exposition without bound. Done when scraped: a call that
    /// was in flight as its node left is dropped at the next scrape.
    pub fn forget_absent(&self, current: &[crate::nodes::NodeEndpoint]) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|node| {
            let present = current.iter().any(|n| &n.name == node);
            if !present {
                for result in ["ok", "error", "timeout"] {
                    self.node_calls.remove(&NodeResult { node: node.clone(), result });
                }
            }
            present
        });
    }

    /// Counts one answer: its time, and whether nodes were missing from it.
    pub fn answered(&self, endpoint: &'static str, seconds: f64, partial: bool) {
        self.latency.get_or_create(&EndpointLabel { endpoint }).observe(seconds);
        if partial {
            self.partial.get_or_create(&EndpointLabel { endpoint }).inc();
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
