//! `genq status`: one screen with the model's queue depths (ready, unacked, consumers, and the
//! dead-letter queue), each worker's throughput read from its `/metrics`, and a batch's progress.
//! One source per submodule; the rendering is here.
//!
//! - [`http`]: a minimal HTTP/1.0 GET (worker `/metrics`, the RabbitMQ management API).
//! - [`queues`]: queue depths, from the management API when reachable, else passive declares.
//! - [`workers`]: a worker's metrics, sampled twice to give its throughput.
//! - [`batch`]: a batch's counts per final status.

mod batch;
mod http;
mod queues;
mod workers;

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use queues::{DepthSource, QueueDepth};
use genq_shared::job::Priority;
use genq_shared::topology::{self, DEAD_QUEUE};

use super::CommonArgs;

/// Arguments of `genq status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Worker metrics addresses (`host:port` or `http://host:port/metrics`), repeatable or
    /// comma-separated [env GENQ_STATUS_WORKERS].
    #[arg(long = "worker", env = "GENQ_STATUS_WORKERS", value_delimiter = ',')]
    workers: Vec<String>,
    /// RabbitMQ management API [env GENQ_RABBITMQ_MANAGEMENT_URL; default: the AMQP host, port 15672].
    #[arg(long, env = "GENQ_RABBITMQ_MANAGEMENT_URL")]
    management_url: Option<String>,
    /// Show this batch's progress (`genq:batch:{ID}`).
    #[arg(long)]
    batch: Option<String>,
    /// Seconds between the two reads of each worker's metrics that give its rates.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
}

fn cell(v: Option<u64>) -> String {
    v.map(|n| n.to_string()).unwrap_or_else(|| "n/a".into())
}

fn queue_line(q: &QueueDepth) -> String {
    if !q.exists {
        return format!("{:<48} {:>8} {:>8} {:>10}", q.name, "absent", "", "");
    }
    format!("{:<48} {:>8} {:>8} {:>10}", q.name, cell(q.ready), cell(q.unacked), cell(q.consumers))
}

pub async fn run(common: &CommonArgs, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let s = common.settings(Default::default())?;
    let model = &s.producer.default_model;
    let mut ok = true;
    println!("genq status: model {model}");
    println!();

    let names: Vec<String> = Priority::ALL
        .into_iter()
        .map(|p| topology::queue_name(model, p))
        .chain([DEAD_QUEUE.to_string()])
        .collect();
    match queues::depths(&s.amqp.url, args.management_url.as_deref(), &names).await {
        Ok(report) => {
            println!("{:<48} {:>8} {:>8} {:>10}", "QUEUE", "READY", "UNACKED", "CONSUMERS");
            for q in &report.queues {
                println!("{}", queue_line(q));
            }
            match &report.source {
                DepthSource::Management(url) => println!("(from the RabbitMQ management API at {url})"),
                DepthSource::Amqp { why } => {
                    println!("(from passive declares over AMQP: unacked is unavailable; {why}; pass --management-url)")
                }
            }
        }
        Err(e) => {
            ok = false;
            println!("queues: unavailable: {e}");
        }
    }
    println!();

    if args.workers.is_empty() {
        println!("workers: none given (pass --worker HOST:PORT for each worker's metrics address, or GENQ_STATUS_WORKERS)");
    } else {
        let interval = Duration::from_secs_f64(args.interval.clamp(0.1, 60.0));
        let sampled = futures::future::join_all(args.workers.iter().map(|w| workers::sample(w, interval))).await;
        println!(
            "{:<24} {:<24} {:<6} {:>9} {:>7} {:>7} {:>7} {:>8} {:>9} {:>8} {:>8} {:>7}",
            "WORKER", "MODEL", "DEVICE", "TOKENS/S", "JOBS/S", "RUNNING", "WAITING", "INFLIGHT", "KV-TOKENS", "DONE", "NOT-DONE", "PREFIX%"
        );
        let (mut tokens, mut jobs) = (0.0, 0.0);
        for w in &sampled {
            match &w.error {
                Some(e) => {
                    ok = false;
                    println!("{:<24} unreachable: {e}", w.addr);
                }
                None => {
                    tokens += w.tokens_per_s;
                    jobs += w.jobs_per_s;
                    println!(
                        "{:<24} {:<24} {:<6} {:>9.1} {:>7.1} {:>7} {:>7} {:>8} {:>9} {:>8} {:>8} {:>7.1}",
                        w.addr,
                        w.model,
                        w.device,
                        w.tokens_per_s,
                        w.jobs_per_s,
                        w.running,
                        w.waiting,
                        w.inflight,
                        w.kv_cache_tokens,
                        w.done,
                        w.not_done,
                        w.prefix_hit_pct
                    );
                }
            }
        }
        let up = sampled.iter().filter(|w| w.error.is_none()).count();
        println!("fleet: {up} of {} workers up, {tokens:.1} tokens/s, {jobs:.1} jobs/s", sampled.len());
    }

    if let Some(id) = &args.batch {
        println!();
        match batch::counts(&s.redis.url, &s.redis.key_prefix, id).await {
            Ok(counts) => {
                let finished: u64 = counts.values().sum();
                let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
                if parts.is_empty() {
                    println!("batch {id}: no job finished yet (or the batch expired)");
                } else {
                    println!("batch {id}: {finished} finished: {}", parts.join(", "));
                }
            }
            Err(e) => {
                ok = false;
                println!("batch {id}: unavailable: {e}");
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
