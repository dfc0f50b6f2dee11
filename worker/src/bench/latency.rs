//! The latency benchmark behind `genq bench latency`: inter-token latency of running sequences
//! through the worker's own pipeline (in-memory queue and results, the real intake, encoder and
//! engine thread) while long prompts arrive, to compare with the same run without them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use genq_shared::JobRequest;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::engine::{AdmitError, Admitted, Engine, EngineError, EngineInfo, PromptEncoder, SeqId, SeqUpdate, StepLimits};
use crate::metrics::WorkerMetrics;
use crate::pipeline::{self, PipelineSettings};
use crate::sink::memory::MemorySink;
use crate::source::memory::memory_queue;

/// One run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySpec {
    /// Sequences decoding together (their gaps are measured).
    pub running: usize,
    /// Tokens each of them generates (end of text ignored).
    pub new_tokens: usize,
    /// Long prompts that arrive while they decode.
    pub long_prompts: usize,
    /// Bytes of each long prompt.
    pub long_prompt_bytes: usize,
}

/// Figures of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyResult {
    /// Sequences decoding together.
    pub running: usize,
    /// Long prompts that arrived meanwhile.
    pub long_prompts: usize,
    /// Bytes of each.
    pub long_prompt_bytes: usize,
    /// Gaps measured (between consecutive tokens of one sequence).
    pub gaps: usize,
    /// Median gap, ms.
    pub p50_ms: f64,
    /// 99th percentile gap, ms.
    pub p99_ms: f64,
    /// Longest gap, ms.
    pub max_ms: f64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Jobs that ended `done` (the running ones; long prompts past the context end `failed`).
    pub done: u64,
}

/// Delegates to an engine and records, for each sequence, the time between its tokens.
struct Stamped {
    inner: Box<dyn Engine>,
    last: HashMap<SeqId, Instant>,
    gaps: Arc<Mutex<Vec<f64>>>,
}

impl Engine for Stamped {
    fn info(&self) -> &EngineInfo {
        self.inner.info()
    }

    fn encoder(&self) -> Arc<dyn PromptEncoder> {
        self.inner.encoder()
    }

    fn admit(&mut self, id: SeqId, job: &genq_shared::ValidJob, prompt: Vec<u32>, seed: u64) -> Result<Admitted, AdmitError> {
        self.inner.admit(id, job, prompt, seed)
    }

    fn step(&mut self, limits: &StepLimits) -> Result<Vec<SeqUpdate>, EngineError> {
        let updates = self.inner.step(limits)?;
        let now = Instant::now();
        let mut gaps = self.gaps.lock().map_err(|_| EngineError("gap log poisoned".into()))?;
        for u in &updates {
            if u.new_tokens > 0 {
                if let Some(before) = self.last.insert(u.id, now) {
                    gaps.push(now.duration_since(before).as_secs_f64() * 1000.0);
                }
            }
            if u.done.is_some() {
                self.last.remove(&u.id);
            }
        }
        Ok(updates)
    }

    fn release(&mut self, id: SeqId) {
        self.last.remove(&id);
        self.inner.release(id);
    }

    fn active(&self) -> usize {
        self.inner.active()
    }

    fn cached_tokens(&self) -> usize {
        self.inner.cached_tokens()
    }

    fn prefix_cache(&self) -> crate::engine::PrefixStats {
        self.inner.prefix_cache()
    }
}

/// About `bytes` of lowercase pseudo-words (seeded), so a tokenizer cannot take shortcuts on
/// repeated text.
pub fn long_prompt(bytes: usize, seed: u64) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut text = String::with_capacity(bytes + 16);
    while text.len() < bytes {
        let len = rng.random_range(2..10);
        text.extend((0..len).map(|_| char::from(b'a' + rng.random_range(0..26u8))));
        text.push(' ');
    }
    text.truncate(bytes);
    text
}

/// Value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (q * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn body(req: JobRequest) -> Vec<u8> {
    serde_json::to_vec(&req).unwrap_or_default()
}

/// Runs `spec` through a pipeline around `engine`: the running jobs first, then, once each has
/// decoded a few tokens, the long prompts.
pub async fn run_latency_bench(engine: Box<dyn Engine>, mut settings: PipelineSettings, spec: &LatencySpec) -> std::io::Result<LatencyResult> {
    let model = engine.info().model.clone();
    let gaps: Arc<Mutex<Vec<f64>>> = Arc::default();
    let engine = Box::new(Stamped { inner: engine, last: HashMap::new(), gaps: gaps.clone() });
    settings.scheduler.max_batch_size = settings.scheduler.max_batch_size.max(spec.running);
    settings.shutdown_grace = Duration::from_secs(3600);
    let (queue, source, _log) = memory_queue(spec.running + spec.long_prompts + 1);
    let sink = MemorySink::new();
    let metrics = WorkerMetrics::new().map_err(std::io::Error::other)?;
    let started = Instant::now();
    let feed = async move {
        for i in 0..spec.running {
            let req = JobRequest {
                id: Some(format!("run-{i}")),
                model: Some(model.clone()),
                max_new_tokens: Some(spec.new_tokens as u32),
                min_new_tokens: Some(spec.new_tokens as u32),
                temperature: Some(0.0),
                ..JobRequest::prompt(super::bench_prompt(32, i))
            };
            queue.push(body(req)).await.map_err(|e| std::io::Error::other(e.0))?;
        }
        // Long prompts arrive once every running sequence has decoded a few tokens.
        let warm = spec.running * 4;
        while gaps.lock().map(|g| g.len()).unwrap_or(usize::MAX) < warm {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for i in 0..spec.long_prompts {
            let req = JobRequest { id: Some(format!("long-{i}")), model: Some(model.clone()), max_new_tokens: Some(1), ..JobRequest::prompt(long_prompt(spec.long_prompt_bytes, i as u64)) };
            queue.push(body(req)).await.map_err(|e| std::io::Error::other(e.0))?;
        }
        Ok::<_, std::io::Error>(gaps)
    };
    let (report, gaps) = tokio::join!(pipeline::run(source, sink, engine, settings, metrics, std::future::pending()), feed);
    let report = report?;
    let mut gaps = gaps?.lock().map(|g| g.clone()).unwrap_or_default();
    gaps.sort_by(f64::total_cmp);
    Ok(LatencyResult {
        running: spec.running,
        long_prompts: spec.long_prompts,
        long_prompt_bytes: spec.long_prompt_bytes,
        gaps: gaps.len(),
        p50_ms: quantile(&gaps, 0.5),
        p99_ms: quantile(&gaps, 0.99),
        max_ms: gaps.last().copied().unwrap_or(f64::NAN),
        seconds: started.elapsed().as_secs_f64(),
        done: report.finished.get("done").copied().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::echo::EchoEngine;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn long_prompts_have_the_asked_size_and_differ_by_seed() {
        let a = long_prompt(10_000, 1);
        assert_eq!(a.len(), 10_000);
        assert_ne!(a, long_prompt(10_000, 2));
        assert_eq!(a, long_prompt(10_000, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_running_job_is_measured_and_long_prompts_pass_through() {
        let mut settings = crate::setup::pipeline_settings(&genq_shared::settings::Settings::default(), 8192);
        settings.rules.model = "m".into();
        let spec = LatencySpec { running: 4, new_tokens: 12, long_prompts: 2, long_prompt_bytes: 32 * 1024 };
        let r = run_latency_bench(Box::new(EchoEngine::new("m")), settings, &spec).await.expect("runs");
        assert_eq!(r.done, 6, "the running jobs and the long echo prompts (which fit) end done: {r:?}");
        assert_eq!(r.gaps, 4 * 11, "one gap between each pair of a sequence's tokens: {r:?}");
        assert!(r.p50_ms <= r.p99_ms && r.p99_ms <= r.max_ms, "{r:?}");
    }
}
