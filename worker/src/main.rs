//! `genq-worker`: consumes a model's job queues from RabbitMQ, runs the jobs with continuous
//! batching, writes results to Redis, and serves `/metrics`, `/livez` and `/readyz`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use genq_shared::settings::{Overrides, Settings};
use genq_protocol::process::{init_logs, shutdown_signal};
use genq_protocol::registry::Announcement;
use genq_protocol::url::redact_url;
use genq_worker::metrics::WorkerMetrics;
use genq_worker::sink::redis::{RedisSink, RedisSinkSettings};
use genq_worker::source::amqp::{AmqpSource, AmqpSourceSettings};
use genq_worker::{backlog, heartbeat, http, pipeline, setup};

/// genq worker. Every setting can come from the TOML file (`--config`), from the environment as
/// `GENQ__SECTION__KEY` (e.g. `GENQ__WORKER__PREFETCH=32`), or from the flags below; flags win
/// over the environment, which wins over the file, which wins over the defaults.
#[derive(Parser, Debug)]
#[command(name = "genq-worker", version, about = "genq worker: RabbitMQ jobs -> candle -> Redis results", after_long_help = genq_shared::settings::describe_settings())]
struct Cli {
    /// TOML settings file with sections [amqp], [redis], [queue], [worker].
    #[arg(long, env = "GENQ_CONFIG")]
    config: Option<PathBuf>,
    /// RabbitMQ URL [amqp.url; default amqp://guest:guest@127.0.0.1:5672/%2f].
    #[arg(long)]
    amqp_url: Option<String>,
    /// Redis URL [redis.url; default redis://127.0.0.1:6379].
    #[arg(long)]
    redis_url: Option<String>,
    /// Prefix of every Redis key [redis.key_prefix; default genq].
    #[arg(long)]
    key_prefix: Option<String>,
    /// TTL of result keys in seconds [redis.result_ttl_secs; default 86400].
    #[arg(long)]
    result_ttl_secs: Option<u64>,
    /// Deliveries before a job is dead-lettered [queue.delivery_limit; default 5].
    #[arg(long)]
    delivery_limit: Option<u32>,
    /// Ready jobs before publishes are rejected [queue.max_length; default 1000000].
    #[arg(long)]
    max_queue_length: Option<u32>,
    /// Model name served; consumes genq.jobs.<name>, .high and .low [worker.model_name; default smollm2-135m-instruct].
    #[arg(long)]
    model_name: Option<String>,
    /// GGUF file or safetensors folder [worker.model_path; default models/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(long)]
    model_path: Option<String>,
    /// Engine: llama or echo [worker.engine; default llama].
    #[arg(long)]
    engine: Option<String>,
    /// Device: cpu, cuda or cuda:N (a build with the `cuda` feature) [worker.device; default cpu].
    #[arg(long)]
    device: Option<String>,
    /// Weights in memory: auto, packed, native, q8_0, f32 [worker.weights; default auto].
    #[arg(long)]
    weights: Option<String>,
    /// Unacked deliveries per queue [worker.prefetch; default 64].
    #[arg(long)]
    prefetch: Option<u16>,
    /// Most sequences in the running batch [worker.max_batch_size; default 16].
    #[arg(long)]
    max_batch_size: Option<usize>,
    /// When idle, ms the first job waits for others [worker.batch_wait_ms; default 5].
    #[arg(long)]
    batch_wait_ms: Option<u64>,
    /// Prompt tokens prefilled per step at most [worker.max_prefill_tokens; default 512].
    #[arg(long)]
    max_prefill_tokens: Option<usize>,
    /// MiB of prompt prefixes kept for reuse, 0 = off [worker.prefix_cache_mib; default 256].
    #[arg(long)]
    prefix_cache_mib: Option<usize>,
    /// Results per Redis round trip [worker.write_batch_size; default 64].
    #[arg(long)]
    write_batch_size: Option<usize>,
    /// Ms a write batch waits to fill [worker.write_wait_ms; default 2].
    #[arg(long)]
    write_wait_ms: Option<u64>,
    /// Largest message body in bytes [worker.max_body_bytes; default 1048576].
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Largest prompt in bytes [worker.max_prompt_bytes; default 262144].
    #[arg(long)]
    max_prompt_bytes: Option<usize>,
    /// Address of /metrics, /livez and /readyz [worker.metrics_addr; default 127.0.0.1:9464].
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Worker name in results [worker.worker_id; default <hostname>-<pid>].
    #[arg(long)]
    worker_id: Option<String>,
    /// Seconds shutdown waits for in-flight jobs [worker.shutdown_grace_secs; default 30].
    #[arg(long)]
    shutdown_grace_secs: Option<u64>,
    /// How often to check Redis for cancel requests, in ms; 0 never [worker.cancel_poll_ms; default 250].
    #[arg(long)]
    cancel_poll_ms: Option<u64>,
    /// Unfinished solo runs after which a job is poison [worker.poison_after_solo_runs; default 2].
    #[arg(long)]
    poison_after_solo_runs: Option<u64>,
    /// Log as JSON lines (one object per line, with the job id as field `job`) [env GENQ_LOG_JSON].
    #[arg(long, env = "GENQ_LOG_JSON")]
    log_json: bool,
}

impl Cli {
    fn overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        o.set("amqp.url", self.amqp_url.as_ref())
            .set("redis.url", self.redis_url.as_ref())
            .set("redis.key_prefix", self.key_prefix.as_ref())
            .set("redis.result_ttl_secs", self.result_ttl_secs)
            .set("queue.delivery_limit", self.delivery_limit)
            .set("queue.max_length", self.max_queue_length)
            .set("worker.model_name", self.model_name.as_ref())
            .set("worker.model_path", self.model_path.as_ref())
            .set("worker.engine", self.engine.as_ref())
            .set("worker.device", self.device.as_ref())
            .set("worker.weights", self.weights.as_ref())
            .set("worker.prefetch", self.prefetch)
            .set("worker.max_batch_size", self.max_batch_size)
            .set("worker.batch_wait_ms", self.batch_wait_ms)
            .set("worker.max_prefill_tokens", self.max_prefill_tokens)
            .set("worker.prefix_cache_mib", self.prefix_cache_mib)
            .set("worker.write_batch_size", self.write_batch_size)
            .set("worker.write_wait_ms", self.write_wait_ms)
            .set("worker.max_body_bytes", self.max_body_bytes)
            .set("worker.max_prompt_bytes", self.max_prompt_bytes)
            .set("worker.metrics_addr", self.metrics_addr.as_ref())
            .set("worker.worker_id", self.worker_id.as_ref())
            .set("worker.shutdown_grace_secs", self.shutdown_grace_secs)
            .set("worker.cancel_poll_ms", self.cancel_poll_ms)
            .set("worker.poison_after_solo_runs", self.poison_after_solo_runs);
        o
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_json, "info");
    let settings = Settings::load(cli.config.as_deref(), &cli.overrides().0)?;
    let w = &settings.worker;
    let engine = tokio::task::block_in_place(|| setup::build_engine(w))?;
    let info = engine.info().clone();
    let pipeline_settings = setup::pipeline_settings(&settings, info.context_length);
    let metrics = WorkerMetrics::new().context("metrics registry")?;
    metrics.set_info(&info.model, &info.device, &info.kernel);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let addr = http::serve(&w.metrics_addr, metrics.clone(), async move {
        let _ = http_stop.wait_for(|s| *s).await;
    })
    .await
    .with_context(|| format!("bind metrics listener {}", w.metrics_addr))?;

    let sink = RedisSink::connect(&RedisSinkSettings {
        url: settings.redis.url.clone(),
        key_prefix: settings.redis.key_prefix.clone(),
        ttl_secs: settings.redis.result_ttl_secs,
    })
    .await?
    .with_metrics(metrics.clone());
    let source = AmqpSource::connect(&AmqpSourceSettings {
        url: settings.amqp.url.clone(),
        model: w.model_name.clone(),
        prefetch: w.prefetch,
        limits: settings.queue.limits(),
        name: pipeline_settings.worker_id.clone(),
    })
    .await?
    .with_metrics(metrics.clone());
    let monitor = backlog::spawn_queue_monitor(
        backlog::QueueMonitorSettings {
            url: settings.amqp.url.clone(),
            model: w.model_name.clone(),
            name: format!("{}-monitor", pipeline_settings.worker_id),
        },
        metrics.clone(),
        stop_rx.clone(),
    );
    tracing::info!(
        worker = %pipeline_settings.worker_id,
        model = %info.model,
        device = %info.device,
        amqp = %redact_url(&settings.amqp.url),
        redis = %redact_url(&settings.redis.url),
        metrics = %addr,
        "{}",
        genq_worker::process::READY_LINE
    );
    let heartbeat = heartbeat::spawn_heartbeat(
        heartbeat::HeartbeatSettings {
            url: settings.redis.url.clone(),
            announcement: Announcement {
                key_prefix: settings.redis.key_prefix.clone(),
                model: w.model_name.clone(),
                worker_id: pipeline_settings.worker_id.clone(),
            },
            health: Some(metrics.health.clone()),
        },
        stop_rx.clone(),
    );
    let health = metrics.health.clone();
    let shutdown = async move {
        shutdown_signal().await;
        health.draining();
    };
    let report = pipeline::run(source, sink, engine, pipeline_settings, metrics, shutdown).await?;
    let _ = stop_tx.send(true);
    let _ = monitor.await;
    let _ = heartbeat.await;
    tracing::info!(
        received = report.received,
        finished = ?report.finished,
        duplicates = report.duplicates,
        dead_lettered = report.dead_lettered,
        requeued = report.requeued,
        "worker stopped"
    );
    if let Some(e) = report.source_error {
        anyhow::bail!("stopped because the job source failed: {e}");
    }
    Ok(())
}
