//! `/metrics`: reviews by outcome and their latency (OpenMetrics text via `prometheus-client`).

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// How a review ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed with no change.
    Admitted,
    /// Allowed with a patch.
    Mutated,
    /// Refused (invalid annotations, a sidecar name clash).
    Denied,
    /// Not an AdmissionReview we can answer (400 or 413).
    Invalid,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The webhook's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reviews: Family<ResultLabel, Counter>,
    warnings: Counter,
    latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("container_tracer_webhook");
        let reviews = Family::<ResultLabel, Counter>::default();
        registry.register("admission_reviews", "AdmissionReviews answered, by result", reviews.clone());
        let warnings = Counter::default();
        registry.register("admission_warnings", "Warnings given with admitted pods (--lenient)", warnings.clone());
        // 50 µs to 1.6 s: a review takes well under a millisecond; the API server waits 2 s.
        let latency = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "admission_duration_seconds",
            "Time to answer a review, reading it included",
            latency.clone(),
        );
        Self { registry, reviews, warnings, latency }
    }
}

impl Metrics {
    /// Counts a review.
    pub fn observe(&self, outcome: Outcome, warnings: usize, seconds: f64) {
        let result = match outcome {
            Outcome::Admitted => "admitted",
            Outcome::Mutated => "mutated",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
        };
        self.reviews.get_or_create(&ResultLabel { result }).inc();
        self.warnings.inc_by(warnings as u64);
        self.latency.observe(seconds);
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
