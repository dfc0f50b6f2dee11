//! The worker's Prometheus metrics, registered once in their own registry. Names come from
//! `genq_shared::metrics`; labels stay low-cardinality (never a job id).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use genq_shared::metrics as names;

/// Every worker metric. Clones share the same underlying series.
#[derive(Clone)]
pub struct WorkerMetrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Jobs by final status.
    pub jobs: IntCounterVec,
    /// Prompt tokens.
    pub prompt_tokens: IntCounter,
    /// Generated tokens.
    pub generated_tokens: IntCounter,
    /// Sequences per step.
    pub batch_size: Histogram,
    /// Tokens per step.
    pub batch_tokens: Histogram,
    /// Publish to start of work.
    pub queue_wait: Histogram,
    /// Start of work to first token.
    pub time_to_first_token: Histogram,
    /// Between tokens of one sequence.
    pub inter_token_latency: Histogram,
    /// Start of work to final status.
    pub job_duration: Histogram,
    /// One engine step.
    pub engine_step_seconds: Histogram,
    /// Sequences running.
    pub running_sequences: IntGauge,
    /// Jobs waiting for admission.
    pub waiting_jobs: IntGauge,
    /// Deliveries not yet acked.
    pub inflight_deliveries: IntGauge,
    /// Bodies dead-lettered because they are not jobs.
    pub dead_lettered: IntCounter,
    /// Constant 1 with model, device and version labels.
    pub worker_info: IntGaugeVec,
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl WorkerMetrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let jobs = IntCounterVec::new(Opts::new(names::JOBS_TOTAL, "Jobs that reached a final status."), &["status"])?;
        registry.register(Box::new(jobs.clone()))?;
        for status in genq_shared::JobStatus::ALL.iter().filter(|s| s.is_final()) {
            jobs.with_label_values(&[status.as_str()]);
        }
        let worker_info =
            IntGaugeVec::new(Opts::new(names::WORKER_INFO, "Worker build and model."), &["model", "device", "version"])?;
        registry.register(Box::new(worker_info.clone()))?;
        let lat = names::LATENCY_BUCKETS;
        let cnt = names::COUNT_BUCKETS;
        Ok(Self {
            jobs,
            prompt_tokens: counter(&registry, names::PROMPT_TOKENS_TOTAL, "Prompt tokens processed.")?,
            generated_tokens: counter(&registry, names::GENERATED_TOKENS_TOTAL, "Tokens generated.")?,
            batch_size: histogram(&registry, names::BATCH_SIZE, "Sequences per engine step.", cnt)?,
            batch_tokens: histogram(&registry, names::BATCH_TOKENS, "Tokens generated per engine step.", cnt)?,
            queue_wait: histogram(&registry, names::QUEUE_WAIT_SECONDS, "Publish to start of work, seconds.", lat)?,
            time_to_first_token: histogram(&registry, names::TIME_TO_FIRST_TOKEN_SECONDS, "Start of work to first token, seconds.", lat)?,
            inter_token_latency: histogram(&registry, names::INTER_TOKEN_LATENCY_SECONDS, "Time between tokens, seconds.", lat)?,
            job_duration: histogram(&registry, names::JOB_DURATION_SECONDS, "Start of work to final status, seconds.", lat)?,
            engine_step_seconds: histogram(&registry, names::ENGINE_STEP_SECONDS, "Wall time of one engine step, seconds.", lat)?,
            running_sequences: gauge(&registry, names::RUNNING_SEQUENCES, "Sequences in the running batch.")?,
            waiting_jobs: gauge(&registry, names::WAITING_JOBS, "Jobs waiting for admission.")?,
            inflight_deliveries: gauge(&registry, names::INFLIGHT_DELIVERIES, "Deliveries received and not yet settled.")?,
            dead_lettered: counter(&registry, names::DEAD_LETTERED_TOTAL, "Messages dead-lettered because they are not jobs.")?,
            worker_info,
            registry,
        })
    }

    /// Sets `genq_worker_info{model,device,version} 1`.
    pub fn set_info(&self, model: &str, device: &str) {
        self.worker_info.with_label_values(&[model, device, env!("CARGO_PKG_VERSION")]).set(1);
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}
