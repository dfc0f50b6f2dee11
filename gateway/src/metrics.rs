//! The gateway's Prometheus metrics: the producer library's own (`genq_published_total{outcome}`,
//! publish latency; see [`genq_producer::metrics`]) counted by the gateway's publisher, plus HTTP requests
//! by route and status (`genq_http_requests_total`). Labels stay low-cardinality: routes are
//! patterns (`/v1/jobs/{id}`), never a job id.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{IntCounterVec, Opts, Registry};

use genq_shared::metrics as names;

use genq_producer::ProducerMetrics;

/// Every gateway metric. Clones share the same series.
#[derive(Clone)]
pub struct GatewayMetrics {
    /// Publishes, counted by the gateway's [`Producer`](genq_producer::Producer).
    pub producer: ProducerMetrics,
    /// The registry of the gateway's own series.
    pub registry: Registry,
    /// Requests by route pattern and status code.
    pub http_requests: IntCounterVec,
}

impl GatewayMetrics {
    /// Registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests =
            IntCounterVec::new(Opts::new(names::HTTP_REQUESTS_TOTAL, "HTTP requests answered, by route and status"), &["route", "status"])?;
        registry.register(Box::new(http_requests.clone()))?;
        Ok(Self { producer: ProducerMetrics::new()?, registry, http_requests })
    }

    /// Both registries in the Prometheus text format.
    pub fn render(&self) -> String {
        let own = prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default();
        format!("{}{own}", self.producer.render())
    }
}

/// The route pattern a path belongs to: a fixed set, so a label never carries an id.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/generate" => "/generate",
        "/v1/completions" => "/v1/completions",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/models" => "/v1/models",
        "/v1/jobs" => "/v1/jobs",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        p if p.starts_with("/v1/jobs/") => "/v1/jobs/{id}",
        p if p.starts_with("/v1/models/") => "/v1/models/{model}",
        _ => "other",
    }
}

/// Middleware: counts every answered request (a streamed one when its headers go out).
pub async fn count_requests(State(metrics): State<GatewayMetrics>, request: Request, next: Next) -> Response {
    let route = route_label(request.uri().path());
    let response = next.run(request).await;
    metrics.http_requests.with_label_values(&[route, response.status().as_str()]).inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_never_become_labels() {
        assert_eq!(route_label("/v1/jobs/5f1c-aa"), "/v1/jobs/{id}");
        assert_eq!(route_label("/v1/models/smollm2-135m-instruct"), "/v1/models/{model}");
        assert_eq!(route_label("/anything/else"), "other");
    }

    #[test]
    fn metrics_show_publishes_and_requests() {
        let m = GatewayMetrics::new().expect("registers");
        m.producer.record(Err(&genq_producer::PublishError::Nacked), 1, std::time::Duration::from_millis(3));
        m.http_requests.with_label_values(&["/generate", "200"]).inc();
        let text = m.render();
        assert!(text.contains("genq_published_total{outcome=\"nacked\"} 1"), "{text}");
        assert!(text.contains("genq_published_total{outcome=\"confirmed\"} 0"), "{text}");
        assert!(text.contains("genq_http_requests_total{route=\"/generate\",status=\"200\"} 1"), "{text}");
    }
}
