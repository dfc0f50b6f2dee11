//! `genq bench fleet --vs-batch`: the fleet run's jobs again, as one OpenAI batch through the
//! gateway's batch operations (file stored, batch created and its requests published, status
//! polled until its output file is written), served by the same workers. End-to-end jobs/s,
//! to set against the fleet's.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use genq_gateway::batches::{batch_status, create_batch, CreateBatch};
use genq_gateway::files::put_file;
use genq_gateway::Gateway;
use genq_shared::settings::Settings;
use genq_shared::JobRequest;

/// How often the batch's status is read.
const POLL: Duration = Duration::from_millis(20);

/// Runs `jobs` as one batch on model `run` (the fleet's private queues and key prefix); prints
/// nothing, returns the figures line.
pub async fn run(settings: &Settings, run: &str, jobs: &[JobRequest], worker_pids: Vec<u32>, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    let mut s = settings.clone();
    s.redis.key_prefix = run.to_string();
    s.producer.default_model = run.to_string();
    s.gateway.batch_max_requests = s.gateway.batch_max_requests.max(jobs.len());
    let gw = Gateway::new(s).await.context("cannot register metrics")?;
    let api = |e: genq_gateway::ApiError| anyhow::anyhow!(e.message);
    let mut file = String::new();
    for (i, j) in jobs.iter().enumerate() {
        let body = json!({ "model": run, "prompt": j.prompt, "max_tokens": j.max_new_tokens, "min_tokens": j.min_new_tokens, "temperature": 0 });
        file.push_str(&json!({ "custom_id": format!("r{i}"), "method": "POST", "url": "/v1/completions", "body": body }).to_string());
        file.push('\n');
    }
    let cpu = super::procstat::CpuMeter::start(worker_pids);
    let started = Instant::now();
    let input = put_file(&gw, "batch", "bench.jsonl", file.as_bytes()).await.map_err(api)?;
    let req = CreateBatch { input_file_id: input.id.clone(), endpoint: "/v1/completions".into(), completion_window: "24h".into(), metadata: None };
    let (mut rec, mut counts) = create_batch(&gw, req).await.map_err(api)?;
    let published = started.elapsed();
    while !matches!(rec.status.as_str(), "completed" | "failed" | "cancelled") {
        anyhow::ensure!(started.elapsed() < timeout, "batch {} still {} after {timeout:?}", rec.id, rec.status);
        tokio::time::sleep(POLL).await;
        (rec, counts) = batch_status(&gw, &rec.id).await.map_err(api)?;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let cpu_us_per_job = cpu.per_job(jobs.len());
    forget(&gw, &rec.id, jobs.len(), [Some(input.id), rec.output_file_id.clone(), rec.error_file_id.clone()]).await;
    Ok(json!({
        "system": "genq-batch",
        "jobs": jobs.len(),
        "status": rec.status,
        "completed": counts.completed,
        "failed": counts.failed,
        "create_seconds": published.as_secs_f64(),
        "seconds": secs,
        "jobs_per_s": jobs.len() as f64 / secs,
        // Every request generates exactly its max_tokens (min_tokens holds EOS off).
        "generated_tokens_per_s": jobs.iter().map(|j| f64::from(j.max_new_tokens.unwrap_or(0))).sum::<f64>() / secs,
        "cpu_us_per_job": cpu_us_per_job,
    }))
}

/// Deletes the batch's jobs, record, counters and files.
async fn forget(gw: &Gateway, batch: &str, lines: usize, files: [Option<String>; 3]) {
    let ids: Vec<String> = (0..lines).map(|l| genq_gateway::batches::input::job_id(batch, l)).collect();
    if let Ok(results) = gw.results().await {
        let _ = results.forget_many(&ids).await;
    }
    let Ok(mut conn) = gw.records().await else { return };
    let keys = gw.keys();
    let mut doomed = vec![keys.openai_batch(batch), keys.batch(batch), keys.batch_members(batch)];
    doomed.extend(files.into_iter().flatten().map(|f| keys.file(&f)));
    for key in doomed {
        let _: Result<(), _> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
    }
    // The run's own listings (one key each: they may be in different cluster slots).
    for key in [keys.files(), keys.openai_batches()] {
        let _: Result<(), _> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
    }
}
