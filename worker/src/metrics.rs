//! The worker's Prometheus metrics, registered once in their own registry. Names come from
//! `genq_shared::metrics`; labels stay low-cardinality (never a job id).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use genq_shared::metrics as names;

use crate::engine::PrefixStats;

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
    /// Messages dead-lettered whole: not jobs, or not valid bulk messages.
    pub dead_lettered: IntCounter,
    /// Constant 1 with model, device and version labels.
    pub worker_info: IntGaugeVec,
    /// Tokens held in the running sequences' KV caches.
    pub kv_cache_tokens: IntGauge,
    /// Prompt tokens copied from the prefix cache.
    pub prefix_hit_tokens: IntCounter,
    /// Tokens held in the prefix cache.
    pub prefix_tokens: IntGauge,
    /// Prefix cache blocks evicted.
    pub prefix_evictions: IntCounter,
    /// Reconnects by target; use [`WorkerMetrics::reconnected`].
    pub reconnects: IntCounterVec,
    /// Estimated tokens of jobs received and not yet admitted (see `crate::backlog`).
    pub waiting_tokens: IntGauge,
    /// Ready messages per job queue, polled.
    pub queue_ready_messages: IntGaugeVec,
    /// Consumers per job queue, polled.
    pub queue_consumers: IntGaugeVec,
    /// Estimated tokens of the ready messages per job queue.
    pub queue_backlog_tokens: IntGaugeVec,
    /// Estimated tokens of every job received, and how many: the mean sizes the queue's backlog.
    received: Arc<(AtomicU64, AtomicU64)>,
    /// Liveness and readiness flags, which the parts reporting metrics also set.
    pub health: crate::health::Health,
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
            IntGaugeVec::new(Opts::new(names::WORKER_INFO, "Worker build, model and kernel."), &["model", "device", "kernel", "version"])?;
        registry.register(Box::new(worker_info.clone()))?;
        let reconnects = IntCounterVec::new(
            Opts::new(names::RECONNECTS_TOTAL, "Connections re-established after a loss, by target."),
            &["target"],
        )?;
        registry.register(Box::new(reconnects.clone()))?;
        for target in names::RECONNECT_TARGETS {
            reconnects.with_label_values(&[target]);
        }
        let per_queue = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["queue"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let queue_ready_messages = per_queue(names::QUEUE_READY_MESSAGES, "Messages ready in the job queue, as last polled.")?;
        let queue_consumers = per_queue(names::QUEUE_CONSUMERS, "Consumers of the job queue, as last polled.")?;
        let queue_backlog_tokens = per_queue(
            names::QUEUE_BACKLOG_TOKENS,
            "Estimated tokens (prompt + max_new_tokens) of the ready messages: ready x mean received job.",
        )?;
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
            inflight_deliveries: gauge(&registry, names::INFLIGHT_DELIVERIES, "Jobs received and not yet settled (each job of a bulk message counts).")?,
            dead_lettered: counter(&registry, names::DEAD_LETTERED_TOTAL, "Messages dead-lettered whole: not jobs, or not valid bulk messages.")?,
            worker_info,
            kv_cache_tokens: gauge(&registry, names::KV_CACHE_TOKENS, "Tokens held in the running sequences' KV caches.")?,
            prefix_hit_tokens: counter(&registry, names::PREFIX_CACHE_HIT_TOKENS_TOTAL, "Prompt tokens copied from the prefix cache instead of computed.")?,
            prefix_tokens: gauge(&registry, names::PREFIX_CACHE_TOKENS, "Tokens held in the prefix cache.")?,
            prefix_evictions: counter(&registry, names::PREFIX_CACHE_EVICTIONS_TOTAL, "Prefix cache blocks evicted to make room.")?,
            reconnects,
            waiting_tokens: gauge(
                &registry,
                names::WAITING_TOKENS,
                "Estimated tokens (prompt + max_new_tokens) of jobs received and not yet admitted.",
            )?,
            queue_ready_messages,
            queue_consumers,
            queue_backlog_tokens,
            received: Arc::default(),
            registry,
            health: crate::health::Health::new(),
        })
    }

    /// Brings the prefix cache metrics to `now`, `before` being what they showed last.
    pub fn prefix_cache(&self, before: PrefixStats, now: PrefixStats) {
        self.prefix_hit_tokens.inc_by(now.hit_tokens.saturating_sub(before.hit_tokens));
        self.prefix_evictions.inc_by(now.evicted_blocks.saturating_sub(before.evicted_blocks));
        self.prefix_tokens.set(i64::try_from(now.held_tokens).unwrap_or(i64::MAX));
    }

    /// Counts a connection to `target` (`amqp`, `redis`) re-established after a loss.
    pub fn reconnected(&self, target: &str) {
        self.reconnects.with_label_values(&[target]).inc();
    }

    /// A job of `tokens` estimated tokens arrived and waits for the engine.
    pub fn job_received(&self, tokens: u64) {
        self.waiting_tokens.add(i64::try_from(tokens).unwrap_or(i64::MAX));
        self.received.0.fetch_add(tokens, Ordering::Relaxed);
        self.received.1.fetch_add(1, Ordering::Relaxed);
    }

    /// Mean estimated tokens of the jobs received so far; `None` before the first.
    pub fn mean_received_tokens(&self) -> Option<f64> {
        let count = self.received.1.load(Ordering::Relaxed);
        (count > 0).then(|| self.received.0.load(Ordering::Relaxed) as f64 / count as f64)
    }

    /// Sets `genq_worker_info{model,device,kernel,version} 1`.
    pub fn set_info(&self, model: &str, device: &str, kernel: &str) {
        self.worker_info.with_label_values(&[model, device, kernel, env!("CARGO_PKG_VERSION")]).set(1);
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}
