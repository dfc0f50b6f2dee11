//! `genq run FILE.jsonl`: the embedded pipeline. The same intake, scheduler, engine and writer as
//! `genq-worker`, with an in-memory source and sink instead of RabbitMQ and Redis.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use genq_producer::input::parse_jobs;
use genq_shared::settings::Overrides;
use genq_shared::JobStatus;
use genq_worker::metrics::WorkerMetrics;
use genq_worker::sink::memory::MemorySink;
use genq_worker::source::memory::memory_queue;
use genq_worker::{pipeline, setup};

use super::{CommonArgs, ModelArgs};

/// Arguments of `genq run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// JSONL file of jobs, or `-` for standard input.
    file: String,
    /// Run in this process with in-memory queue and results (the only mode of `run`; accepted
    /// for clarity).
    #[arg(long)]
    embedded: bool,
    #[command(flatten)]
    model: ModelArgs,
    /// Most sequences in the running batch [worker.max_batch_size].
    #[arg(long)]
    max_batch_size: Option<usize>,
}

pub async fn run(common: &CommonArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut more = Overrides::default();
    args.model.apply(&mut more);
    more.set("worker.max_batch_size", args.max_batch_size)
        .set("worker.model_name", common.model.as_ref());
    let settings = common.settings(more)?;
    let text = if args.file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        s
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("read {}", args.file))?
    };
    let (jobs, bad_lines) = parse_jobs(&text);
    for e in &bad_lines {
        eprintln!("skipped {e}");
    }
    let load_started = Instant::now();
    let engine = tokio::task::block_in_place(|| setup::build_engine(&settings.worker))?;
    let info = engine.info().clone();
    eprintln!("loaded {} on {} in {:.1} s", info.model, info.device, load_started.elapsed().as_secs_f64());

    let mut ids = Vec::with_capacity(jobs.len());
    let mut bodies = Vec::with_capacity(jobs.len());
    for (i, (_, mut job)) in jobs.into_iter().enumerate() {
        let id = job.id.clone().unwrap_or_else(|| format!("job-{}", i + 1));
        job.id = Some(id.clone());
        job.model.get_or_insert_with(|| settings.worker.model_name.clone());
        ids.push(id);
        bodies.push(serde_json::to_vec(&job)?);
    }
    let (queue, source, _log) = memory_queue(settings.worker.prefetch as usize);
    let sink = MemorySink::new();
    let pipeline_settings = setup::pipeline_settings(&settings, info.context_length);
    let metrics = WorkerMetrics::new()?;
    let started = Instant::now();
    let feeder = tokio::spawn(async move {
        for body in bodies {
            if queue.push(body).await.is_err() {
                break;
            }
        }
    });
    let report = pipeline::run(source, sink.clone(), engine, pipeline_settings, metrics, std::future::pending()).await?;
    feeder.await?;
    let elapsed = started.elapsed().as_secs_f64();

    let mut failed = 0usize;
    for id in &ids {
        let r = sink.get(id).unwrap_or_default();
        if r.status != Some(JobStatus::Done) {
            failed += 1;
        }
        println!("{}", serde_json::to_string(&r)?);
    }
    eprintln!(
        "{} jobs ({} not done), {} tokens generated in {:.2} s: {:.1} jobs/s, {:.1} tokens/s",
        ids.len(),
        failed,
        report.generated_tokens,
        elapsed,
        ids.len() as f64 / elapsed.max(1e-9),
        report.generated_tokens as f64 / elapsed.max(1e-9)
    );
    Ok(if failed == 0 && bad_lines.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}
