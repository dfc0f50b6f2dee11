//! `genq bench fleet`: the whole path end to end against real RabbitMQ and Redis. N jobs are
//! published with the producer library while K `genq-worker` processes (started here, on queues
//! private to the run) consume them and a reader waits for every result. Prints one JSON line:
//! publish rate, end-to-end jobs/s, generated tokens/s, p50/p99 job latency (created_ms to
//! finished_ms of the stored results), and each worker's CPU time and memory (read from `/proc`
//! before it exits, with RSS sampled through the run to show whether it stays flat). With
//! `--vs-engine` the engine alone runs the same jobs in this process afterwards, with
//! `--vs-llamacpp` llama.cpp's llama-batched-bench runs the same workload, with `--vs-broker`
//! RabbitMQ alone carries the same jobs one message each (the queue's ceiling without bulk
//! messages), with `--vs-batch` the same jobs
//! run again as one OpenAI batch on the same workers, and with `--vs-celery` the Celery baseline
//! runs in the same invocation; each prints its ratio line.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;

use genq_producer::{Producer, ResultClient};
use genq_shared::settings::{Overrides, ProducerSettings, Settings};
use genq_shared::{JobRequest, JobStatus};
use genq_worker::bench::{bench_prompt, run_engine_bench, EngineBenchSpec};
use genq_worker::process::WorkerProcess;

use super::{broker, celery, workers};
use super::procstat::{self, RssTrace};
use crate::CommonArgs;

/// Arguments of `genq bench fleet`.
#[derive(Args, Debug)]
pub struct FleetBenchArgs {
    /// Jobs to publish.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Jobs per bulk (v2) message [producer.bulk_max_jobs]; 1 publishes one v1 message per job.
    #[arg(long, default_value_t = 1)]
    bulk: usize,
    /// `genq-worker` processes to start.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Engine of the workers: echo (genq's own overhead) or llama (the real model).
    #[arg(long, default_value = "echo")]
    engine: String,
    /// GGUF file or safetensors folder for `--engine llama` [worker.model_path].
    #[arg(long)]
    model_path: Option<String>,
    /// Weights in memory for `--engine llama` [worker.weights].
    #[arg(long)]
    weights: Option<String>,
    /// Most sequences in each worker's running batch (`--max-batch-size`).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Approximate prompt length in tokens (the engine benchmark's prompts).
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// Tokens generated per job (EOS ignored).
    #[arg(long, default_value_t = 1)]
    new_tokens: u32,
    /// Each worker's prefetch (`--prefetch`); its default when absent.
    #[arg(long)]
    prefetch: Option<u16>,
    /// More flags for every worker, e.g. `--worker-arg=--write-batch-size=256`.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    worker_args: Vec<String>,
    /// Skip the producer's `queued` marks in Redis (to measure what they cost).
    #[arg(long)]
    no_queued_marks: bool,
    /// Publish everything before starting the workers: measures draining a backlog of N
    /// queued jobs (memory bounded by prefetch) rather than a steady flow.
    #[arg(long)]
    backlog: bool,
    /// Give up waiting for results after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
    /// Also run the same jobs through the engine alone, in this process (`genq bench engine`'s
    /// measurement at `--batch`), and print the fleet/engine ratio.
    #[arg(long)]
    vs_engine: bool,
    /// Also run llama.cpp's llama-batched-bench on the same model and workload (`--batch`
    /// sequences; built by scripts/build-llamacpp.sh) and print the fleet/llama.cpp ratio.
    /// Needs `--engine llama` and a GGUF model.
    #[arg(long)]
    vs_llamacpp: bool,
    /// Also run the same jobs through RabbitMQ alone (the producer library publishing, a bare
    /// consumer acking; no Redis, no worker) and print the fleet/RabbitMQ-alone ratio.
    #[arg(long)]
    vs_broker: bool,
    /// Also run the Celery baseline (scripts/celery-bench.sh) and print the ratio.
    #[arg(long)]
    vs_celery: bool,
    /// Also run the same jobs as one OpenAI batch (file, create, status polled until its
    /// output is written) on the same workers, and print the batch/fleet ratio.
    #[arg(long)]
    vs_batch: bool,
    /// Jobs of the Celery baseline (default: `--jobs`, like for like).
    #[arg(long)]
    celery_jobs: Option<usize>,
}

/// What the reader saw.
#[derive(Default)]
struct Collected {
    done: usize,
    other: usize,
    missing: usize,
    tokens: u64,
    latencies_ms: Vec<u64>,
}

/// A number of a benchmark's JSON line; NaN when absent, so a ratio with it reads as NaN.
fn figure(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn make_jobs(args: &FleetBenchArgs, run: &str) -> Vec<JobRequest> {
    (0..args.jobs)
        .map(|i| JobRequest {
            id: Some(format!("{run}-{i}")),
            max_new_tokens: Some(args.new_tokens),
            min_new_tokens: Some(args.new_tokens),
            temperature: Some(0.0),
            ..JobRequest::prompt(bench_prompt(args.prompt_tokens, i))
        })
        .collect()
}

fn worker_args(args: &FleetBenchArgs, settings: &Settings, run: &str, i: usize) -> Vec<String> {
    let mut a: Vec<String> = [
        "--amqp-url",
        &settings.amqp.url,
        "--redis-url",
        &settings.redis.url,
        "--key-prefix",
        run,
        "--model-name",
        run,
        "--metrics-addr",
        "127.0.0.1:0",
        "--engine",
        &args.engine,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(["--worker-id".into(), format!("{run}-w{i}"), "--max-batch-size".into(), args.batch.to_string()]);
    // Prefill the whole batch in one step, as `genq bench engine` does.
    a.extend(["--max-prefill-tokens".into(), (args.batch * args.prompt_tokens * 2).max(512).to_string()]);
    if let Some(p) = args.prefetch {
        a.extend(["--prefetch".into(), p.to_string()]);
    }
    if let Some(p) = &args.model_path {
        a.extend(["--model-path".into(), p.clone()]);
    }
    if let Some(w) = &args.weights {
        a.extend(["--weights".into(), w.clone()]);
    }
    a.extend(args.worker_args.iter().cloned());
    a
}

fn start_workers(args: &FleetBenchArgs, settings: &Settings, run: &str) -> anyhow::Result<Vec<WorkerProcess>> {
    let started = (0..args.workers.max(1))
        .map(|i| workers::spawn(&worker_args(args, settings, run, i), &format!("{run}-w{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for w in &started {
        w.wait_ready(Duration::from_secs(600)).map_err(anyhow::Error::msg)?;
    }
    Ok(started)
}

pub async fn run(common: &CommonArgs, args: FleetBenchArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.vs_llamacpp {
        // Fail before the fleet run, not after it.
        anyhow::ensure!(args.engine == "llama", "--vs-llamacpp compares the real model: add --engine llama");
        super::LlamacppBuild::Native.binary()?;
    }
    let settings = common.settings(Overrides::default())?;
    let run = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let results = ResultClient::connect(&settings.redis.url, &run).await?;
    let producer_settings = ProducerSettings { default_model: run.clone(), bulk_max_jobs: args.bulk, ..settings.producer.clone() };
    let mut producer = Producer::connect(&settings.amqp.url, &producer_settings, &settings.queue).await?;
    if !args.no_queued_marks {
        producer = producer.with_results(results.clone());
    }
    let jobs = make_jobs(&args, &run);
    let ids: Vec<String> = jobs.iter().filter_map(|j| j.id.clone()).collect();

    let mut workers = Vec::new();
    let mut backlog_publish = None;
    let mut outcomes = Vec::new();
    if args.backlog {
        let t = Instant::now();
        outcomes = producer.submit_many(jobs.clone(), |_| {}).await;
        backlog_publish = Some(t.elapsed());
    }
    let started_workers = tokio::task::block_in_place(|| start_workers(&args, &settings, &run));
    let mut workers_ok = started_workers.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"));
    if let Ok(w) = started_workers {
        workers = w;
    }
    if let Err(e) = workers_ok.clone() {
        cleanup(&settings, &run, &results, &ids).await;
        anyhow::bail!(e);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tracers: Vec<_> =
        workers.iter().map(|w| tokio::spawn(procstat::trace_rss(w.pid(), Duration::from_millis(200), stop_rx.clone()))).collect();
    let before: Vec<_> = workers.iter().map(|w| procstat::sample(w.pid()).unwrap_or_default()).collect();
    let cpu = procstat::CpuMeter::start(workers.iter().map(|w| w.pid()).collect());

    let started = Instant::now();
    let reader = {
        let (results, ids) = (results.clone(), ids.clone());
        let timeout = Duration::from_secs(args.timeout_secs);
        tokio::spawn(async move {
            let mut c = Collected::default();
            let r = results
                .wait_many(&ids, Some(timeout), |r| match r {
                    Ok(r) => {
                        if r.status == Some(JobStatus::Done) {
                            c.done += 1;
                        } else {
                            c.other += 1;
                        }
                        c.tokens += r.completion_tokens.unwrap_or(0);
                        if let (Some(a), Some(b)) = (r.created_ms, r.finished_ms) {
                            c.latencies_ms.push(b.saturating_sub(a));
                        }
                    }
                    Err(_) => c.missing += 1,
                })
                .await;
            (c, r, started.elapsed())
        })
    };
    let publish_time = if args.backlog {
        backlog_publish.unwrap_or_default()
    } else {
        outcomes = producer.submit_many(jobs, |_| {}).await;
        started.elapsed()
    };
    let refused = outcomes.iter().filter(|o| o.is_err()).count();
    if let Some(Err(e)) = outcomes.iter().find(|o| o.is_err()) {
        tracing::error!(error = %e, refused, "some publishes were refused");
    }
    let (mut collected, read, wall) = reader.await.context("result reader")?;
    let after: Vec<_> = workers.iter().map(|w| procstat::sample(w.pid()).unwrap_or_default()).collect();
    let cpu_us_per_job = cpu.per_job(args.jobs);
    let _ = stop_tx.send(true);
    let mut traces: Vec<RssTrace> = Vec::new();
    for t in tracers {
        traces.push(t.await.unwrap_or_default());
    }
    let batch_run = match args.vs_batch && workers_ok.is_ok() {
        true => Some(
            super::batch::run(
                &settings,
                &run,
                &make_jobs(&args, &run),
                workers.iter().map(|w| w.pid()).collect(),
                Duration::from_secs(args.timeout_secs),
            )
            .await,
        ),
        false => None,
    };
    producer.close().await;
    tokio::task::block_in_place(|| workers.iter().for_each(|w| w.stop(Duration::from_secs(30))));
    if let Err(e) = read {
        workers_ok = Err(format!("reading results: {e}"));
    }
    cleanup(&settings, &run, &results, &ids).await;

    collected.latencies_ms.sort_unstable();
    let secs = wall.as_secs_f64().max(1e-9);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let worker_figures: Vec<_> = before
        .iter()
        .zip(&after)
        .zip(&traces)
        .map(|((b, a), t)| {
            json!({
                "cpu_secs": a.cpu_secs - b.cpu_secs,
                "cpu_us_per_job": 1e6 * (a.cpu_secs - b.cpu_secs) / (args.jobs.max(1) as f64 / args.workers.max(1) as f64),
                "peak_rss_mib": mib(a.peak_rss_bytes),
                "rss_mib_at_start": mib(b.rss_bytes),
                "rss_mib_at_25_50_75_100pct": ([0.25, 0.5, 0.75, 1.0].map(|f| (mib(t.at_fraction(f)) * 10.0).round() / 10.0)),
                "rss_mib_max_during_run": mib(t.max()),
            })
        })
        .collect();
    let fleet = json!({
        "system": "genq",
        "run": run,
        "engine": args.engine,
        "workers": args.workers,
        "jobs": args.jobs,
        "bulk": args.bulk,
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "backlog": args.backlog,
        "queued_marks": !args.no_queued_marks,
        "done": collected.done,
        "not_done": collected.other,
        "missing": collected.missing + refused,
        "publish_jobs_per_s": args.jobs as f64 / publish_time.as_secs_f64().max(1e-9),
        "jobs_per_s": args.jobs as f64 / secs,
        "generated_tokens_per_s": collected.tokens as f64 / secs,
        "seconds": secs,
        "p50_latency_ms": percentile(&collected.latencies_ms, 0.5),
        "p99_latency_ms": percentile(&collected.latencies_ms, 0.99),
        "worker": worker_figures,
        "cpu_us_per_job": cpu_us_per_job,
    });
    println!("{fleet}");
    if let Err(e) = workers_ok {
        anyhow::bail!(e);
    }
    let batch = batch_run.transpose()?;
    if let Some(batch) = &batch {
        println!("{batch}");
        println!("{}", json!({"ratio": "batch/fleet", "jobs_per_s": figure(batch, "jobs_per_s") / figure(&fleet, "jobs_per_s")}));
    }
    if args.vs_engine {
        let engine = tokio::task::block_in_place(|| engine_alone(common, &args))?;
        println!("{engine}");
        let alone = engine["total_generated_tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        let ratio = fleet["generated_tokens_per_s"].as_f64().unwrap_or(0.0) / alone;
        println!("{}", json!({"ratio": "fleet/engine", "generated_tokens_per_s": ratio}));
        if let Some(batch) = &batch {
            println!("{}", json!({"ratio": "batch/engine", "generated_tokens_per_s": figure(batch, "generated_tokens_per_s") / alone}));
        }
    }
    if args.vs_llamacpp {
        let theirs = tokio::task::block_in_place(|| llamacpp_alone(common, &args))?;
        println!("{theirs}");
        let ratio = fleet["generated_tokens_per_s"].as_f64().unwrap_or(0.0) / theirs["total_generated_tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        println!("{}", json!({"ratio": "fleet/llama.cpp", "generated_tokens_per_s": ratio}));
    }
    if args.vs_broker {
        let alone_run = format!("{run}-broker");
        let prefetch = args.prefetch.unwrap_or(settings.worker.prefetch);
        let alone = broker::run(&settings, &alone_run, make_jobs(&args, &alone_run), prefetch, Duration::from_secs(args.timeout_secs)).await?;
        println!("{alone}");
        println!("{}", json!({"ratio": "fleet/rabbitmq-alone", "jobs_per_s": figure(&fleet, "jobs_per_s") / figure(&alone, "jobs_per_s")}));
    }
    if args.vs_celery {
        let theirs = tokio::task::block_in_place(|| celery::run(&settings, args.celery_jobs.unwrap_or(args.jobs)))?;
        println!("{theirs}");
        println!(
            "{}",
            json!({
                "ratio": "genq/celery",
                "jobs_per_s": figure(&fleet, "jobs_per_s") / figure(&theirs, "jobs_per_s"),
                "publish_jobs_per_s": figure(&fleet, "publish_jobs_per_s") / figure(&theirs, "publish_jobs_per_s"),
            })
        );
    }
    let lost = collected.missing + refused + collected.other;
    Ok(if lost == 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(3) })
}

/// The engine alone on `args.jobs` jobs in batches of `args.batch`, as `genq bench engine` does.
fn engine_alone(common: &CommonArgs, args: &FleetBenchArgs) -> anyhow::Result<serde_json::Value> {
    let mut more = Overrides::default();
    more.set("worker.engine", Some(&args.engine))
        .set("worker.model_path", args.model_path.as_ref())
        .set("worker.weights", args.weights.as_ref())
        .set("worker.max_batch_size", Some(args.batch));
    let settings = common.settings(more)?;
    let mut engine = genq_worker::setup::build_engine(&settings.worker)?;
    let spec = EngineBenchSpec {
        batch: args.batch.min(args.jobs.max(1)),
        prompt_tokens: args.prompt_tokens,
        new_tokens: args.new_tokens as usize,
        max_prefill_tokens: args.batch * args.prompt_tokens * 2,
        shared_prefix_tokens: 0,
        format: None,
    };
    let r = run_engine_bench(engine.as_mut(), &spec)?;
    Ok(serde_json::to_value(&r)?)
}

/// llama.cpp's llama-batched-bench on the workers' model: `args.batch` sequences (at most
/// `args.jobs`) with the fleet's prompt length and new tokens.
fn llamacpp_alone(common: &CommonArgs, args: &FleetBenchArgs) -> anyhow::Result<serde_json::Value> {
    let mut more = Overrides::default();
    more.set("worker.model_path", args.model_path.as_ref());
    let settings = common.settings(more)?;
    let model = genq_worker::setup::resolve_model_path(&settings.worker.model_path).context("model not found")?;
    let batch = [args.batch.min(args.jobs.max(1))];
    let workload = super::LlamacppWorkload { batch_sizes: &batch, prompt_tokens: args.prompt_tokens, new_tokens: args.new_tokens as usize, threads: None };
    super::llamacpp_bench(&model, &workload, super::LlamacppBuild::Native)?.into_iter().next().context("llama-batched-bench gave no result")
}

/// Deletes the run's job queues (best effort).
pub(super) async fn delete_queues(channel: &lapin::Channel, run: &str) {
    for p in genq_shared::Priority::ALL {
        let q = genq_shared::topology::queue_name(run, p);
        if let Err(e) = channel.queue_delete(q.as_str().into(), Default::default()).await {
            tracing::warn!(error = %e, queue = %q, "could not delete the run's queue");
        }
    }
}

/// Deletes the run's queues and Redis keys (best effort).
async fn cleanup(settings: &Settings, run: &str, results: &ResultClient, ids: &[String]) {
    if let Ok(conn) = genq_protocol::broker::connect(&settings.amqp.url, "genq-bench").await {
        if let Ok(ch) = conn.create_channel().await {
            delete_queues(&ch, run).await;
            // Closed before the connection: a channel closing on drop races the connection's
            // close, and lapin logs that as an error.
            let _ = ch.close(200, "bye".into()).await;
        }
        let _ = conn.close(200, "bye".into()).await;
    }
    if let Err(e) = results.forget_many(ids).await {
        tracing::warn!(error = %e, "could not delete the run's results");
    }
}
