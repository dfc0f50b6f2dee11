//! `genq models [MODEL...]`: the models that have live workers, with their consumers and backlog.
//!
//! Two honest sources, neither needing RabbitMQ's management plugin: the worker registry in Redis
//! (each worker's heartbeat, see `genq_protocol::registry`) names the models and their workers, and
//! a passive `queue.declare` of each model's two queues gives RabbitMQ's own count of consumers
//! and ready jobs. Models named on the command line are probed even without a heartbeat (workers
//! of another version, or any AMQP consumer).

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use genq_shared::topology::queue_name;
use genq_shared::Priority;
use genq_protocol::{broker, registry};

use super::CommonArgs;

/// Arguments of `genq models`.
#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// Models to probe besides those with a live worker heartbeat.
    models: Vec<String>,
    /// One JSON object per model instead of a table.
    #[arg(long)]
    json: bool,
    /// Also list probed models that have no consumer.
    #[arg(long)]
    all: bool,
}

/// What is known of one model.
#[derive(Debug, Default, Serialize)]
struct ModelRow {
    model: String,
    /// Workers with a live heartbeat in Redis.
    workers: Vec<String>,
    /// Consumers of the normal queue, as RabbitMQ counts them (None: no queue).
    consumers: Option<u32>,
    /// Ready jobs in the normal, the `.high` and the `.low` queue.
    ready: u32,
    ready_high: u32,
    ready_low: u32,
}

impl ModelRow {
    fn live(&self) -> bool {
        !self.workers.is_empty() || self.consumers.unwrap_or(0) > 0
    }
}

pub async fn run(common: &CommonArgs, args: ModelsArgs) -> anyhow::Result<ExitCode> {
    let settings = common.settings(Default::default())?;
    let mut rows: BTreeMap<String, ModelRow> = BTreeMap::new();
    match registry::live_models(&settings.redis.url, &settings.redis.key_prefix).await {
        Ok(models) => {
            for m in models {
                rows.insert(m.model.clone(), ModelRow { model: m.model, workers: m.workers, ..Default::default() });
            }
        }
        Err(e) => eprintln!("warning: cannot read worker heartbeats: {e}"),
    }
    for model in &args.models {
        rows.entry(model.clone()).or_insert_with(|| ModelRow { model: model.clone(), ..Default::default() });
    }
    let conn = broker::connect(&settings.amqp.url, "genq-models").await?;
    for row in rows.values_mut() {
        if let Some(q) = broker::probe_queue(&conn, &queue_name(&row.model, Priority::Normal)).await? {
            row.consumers = Some(q.consumers);
            row.ready = q.ready;
        }
        if let Some(q) = broker::probe_queue(&conn, &queue_name(&row.model, Priority::High)).await? {
            row.ready_high = q.ready;
        }
        if let Some(q) = broker::probe_queue(&conn, &queue_name(&row.model, Priority::Low)).await? {
            row.ready_low = q.ready;
        }
    }
    let _ = conn.close(200, "bye".into()).await;

    let shown: Vec<&ModelRow> = rows.values().filter(|r| args.all || r.live()).collect();
    if args.json {
        for row in &shown {
            println!("{}", serde_json::to_string(row)?);
        }
    } else {
        println!("{:<32} {:>8} {:>10} {:>10} {:>10} {:>10}", "MODEL", "WORKERS", "CONSUMERS", "READY", "READY_HIGH", "READY_LOW");
        for row in &shown {
            let consumers = row.consumers.map_or_else(|| "no queue".to_string(), |c| c.to_string());
            println!(
                "{:<32} {:>8} {:>10} {:>10} {:>10} {:>10}",
                row.model,
                row.workers.len(),
                consumers,
                row.ready,
                row.ready_high,
                row.ready_low
            );
        }
    }
    for row in rows.values().filter(|r| !r.live() && args.models.contains(&r.model)) {
        match row.consumers {
            None => eprintln!("{}: no queue: jobs for it are refused as unroutable until a worker starts", row.model),
            Some(_) => eprintln!("{}: no live consumer: jobs wait in its queue until a worker starts", row.model),
        }
    }
    Ok(ExitCode::SUCCESS)
}
