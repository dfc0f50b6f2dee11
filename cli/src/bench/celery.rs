//! The Celery baseline of `genq bench fleet --vs-celery`: runs `scripts/celery-bench.sh` (which
//! installs Celery 5 into a venv under `.cache/` and measures a no-op task end to end with the
//! same RabbitMQ and Redis) and reads its JSON line.

use std::process::Command;

use anyhow::Context;

use genq_shared::settings::Settings;
use genq_worker::setup::resolve_model_path;

/// Runs the baseline on `jobs` tasks; returns its figures.
pub fn run(settings: &Settings, jobs: usize) -> anyhow::Result<serde_json::Value> {
    let script = resolve_model_path("scripts/celery-bench.sh").context("scripts/celery-bench.sh not found (run from the repository)")?;
    let out = Command::new(&script)
        .args(["--jobs", &jobs.to_string(), "--amqp-url", &settings.amqp.url, "--redis-url", &settings.redis.url])
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "the Celery baseline failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).context("no JSON line from the Celery baseline")?;
    serde_json::from_str(line).context("read the Celery baseline's figures")
}
