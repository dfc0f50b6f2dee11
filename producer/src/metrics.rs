//! The producer's Prometheus metrics: jobs published by outcome and publish-to-confirm latency,
//! in a registry of their own that a gateway renders on its `/metrics`. Names come from
//! `genq_shared::metrics`; labels stay low-cardinality (never a job id or a model).

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use genq_shared::metrics as names;

use crate::PublishError;

/// How a publish ended, as counted in `genq_published_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The broker confirmed the message into a queue.
    Confirmed,
    /// The broker refused it (queue full: backpressure).
    Nacked,
    /// No queue was bound for it (unknown model).
    Returned,
    /// The channel or connection failed before a confirm arrived.
    Error,
}

impl PublishOutcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            PublishOutcome::Confirmed => "confirmed",
            PublishOutcome::Nacked => "nacked",
            PublishOutcome::Returned => "returned",
            PublishOutcome::Error => "error",
        }
    }
}

/// The producer's metrics. Clones share the same series, so one registry can count the publishes
/// of every producer in a process.
#[derive(Clone)]
pub struct ProducerMetrics {
    /// The registry a `/metrics` endpoint renders.
    pub registry: Registry,
    /// Publishes by outcome.
    pub published: IntCounterVec,
    /// Publish to broker confirm (every outcome that got an answer).
    pub publish_duration: Histogram,
    /// Jobs published again on a new connection after theirs was lost unconfirmed.
    pub publish_retries: IntCounter,
}

impl ProducerMetrics {
    /// Registers the metrics in a fresh registry, every outcome starting at 0.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let published =
            IntCounterVec::new(Opts::new(names::PUBLISHED_TOTAL, "Jobs published, by broker outcome."), &["outcome"])?;
        registry.register(Box::new(published.clone()))?;
        for outcome in names::PUBLISH_OUTCOMES {
            published.with_label_values(&[outcome]);
        }
        let publish_duration = Histogram::with_opts(
            HistogramOpts::new(names::PUBLISH_DURATION_SECONDS, "Publish to broker confirm, seconds.")
                .buckets(names::LATENCY_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(publish_duration.clone()))?;
        let publish_retries = IntCounter::new(
            names::PUBLISH_RETRIES_TOTAL,
            "Jobs published again (same ids) after their publish or confirm was lost with the connection.",
        )?;
        registry.register(Box::new(publish_retries.clone()))?;
        Ok(Self { registry, published, publish_duration, publish_retries })
    }

    /// Counts the `jobs` of one publish (one message) that ended with `outcome` after `elapsed`.
    pub fn observe(&self, outcome: PublishOutcome, jobs: u64, elapsed: Duration) {
        self.published.with_label_values(&[outcome.as_str()]).inc_by(jobs);
        if outcome != PublishOutcome::Error {
            self.publish_duration.observe(elapsed.as_secs_f64());
        }
    }

    /// Counts the `jobs` of one publish by its result: ok is `confirmed`; a nack, a return and a
    /// broker error are `nacked`, `returned` and `error`. Jobs refused before publishing are not
    /// counted.
    pub fn record(&self, result: Result<(), &PublishError>, jobs: u64, elapsed: Duration) {
        let outcome = match result {
            Ok(()) => PublishOutcome::Confirmed,
            Err(PublishError::Nacked) => PublishOutcome::Nacked,
            Err(PublishError::Unroutable { .. }) => PublishOutcome::Returned,
            Err(PublishError::Broker(_)) => PublishOutcome::Error,
            // Refused before reaching the broker (invalid, unencodable): not a publish.
            Err(_) => return,
        };
        self.observe(outcome, jobs, elapsed);
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_exported_before_the_first_publish() {
        let m = ProducerMetrics::new().expect("metrics");
        let text = m.render();
        for outcome in names::PUBLISH_OUTCOMES {
            assert!(text.contains(&format!("genq_published_total{{outcome=\"{outcome}\"}} 0")), "{text}");
        }
    }

    #[test]
    fn a_nack_is_counted_with_its_latency() {
        let m = ProducerMetrics::new().expect("metrics");
        m.observe(PublishOutcome::Nacked, 1, Duration::from_millis(3));
        m.observe(PublishOutcome::Error, 1, Duration::from_millis(3));
        assert_eq!(m.published.with_label_values(&["nacked"]).get(), 1);
        assert_eq!(m.published.with_label_values(&["error"]).get(), 1);
        assert_eq!(m.publish_duration.get_sample_count(), 1, "errors have no broker answer to time");
    }
}
