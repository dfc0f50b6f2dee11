//! The engine benchmark behind `genq bench engine`: drives an [`Engine`] directly (no queue, no
//! Redis) with B identical-length jobs and measures prefill and decode throughput and memory.
//!
//! - [`latency`]: `genq bench latency`, inter-token latency through the pipeline while long
//!   prompts arrive.

pub mod latency;

use std::time::Instant;

use genq_shared::valid::{validate, Limits};
use genq_shared::{JobRequest, OutputFormat};
use serde::Serialize;

use crate::engine::{Engine, EngineError, StepLimits};

/// One benchmark run.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineBenchSpec {
    /// Sequences in the batch.
    pub batch: usize,
    /// Approximate prompt length in tokens.
    pub prompt_tokens: usize,
    /// Tokens generated per sequence (EOS ignored).
    pub new_tokens: usize,
    /// Prompt tokens prefilled per step at most.
    pub max_prefill_tokens: usize,
    /// Tokens of a prompt prefix every sequence shares, before its own `prompt_tokens` (0: none).
    pub shared_prefix_tokens: usize,
    /// The output format every job follows (none: free text).
    pub format: Option<OutputFormat>,
}

/// Figures of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineBenchResult {
    /// Always `genq`.
    pub engine: String,
    /// What multiplied the weights ([`crate::engine::EngineInfo::kernel`]).
    pub kernel: String,
    /// Sequences.
    pub batch: usize,
    /// Mean prompt tokens per sequence, as tokenized.
    pub prompt_tokens: f64,
    /// Tokens generated per sequence.
    pub new_tokens: usize,
    /// Prompt tokens per second until every sequence had its first token.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after that.
    pub decode_tokens_per_s: f64,
    /// All generated tokens over the whole run time.
    pub total_generated_tokens_per_s: f64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Peak resident memory of the process so far, MiB.
    pub peak_rss_mib: f64,
    /// Approximate tokens of the prefix every prompt shared.
    pub shared_prefix_tokens: usize,
    /// Prompt tokens the engine copied from its prefix cache during the run.
    pub prefix_hit_tokens: u64,
    /// Seconds of the run the prefix cache took (lookups and copies in and out).
    pub prefix_cache_seconds: f64,
    /// Whether every job had an output format.
    pub constrained: bool,
}

/// A prompt of roughly `tokens` tokens for a BPE vocabulary (~1 token per short word). Prompts
/// of different `salt`s (below 132) differ from their second word on, so they share no prefix.
pub fn bench_prompt(tokens: usize, salt: usize) -> String {
    const WORDS: &[&str] = &["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs", "far", "away"];
    let stride = 1 + salt / WORDS.len();
    (0..tokens.max(1)).map(|i| WORDS[(i * stride + salt) % WORDS.len()]).collect::<Vec<_>>().join(" ")
}

/// Peak resident set size of this process in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Runs `spec` on `engine` to completion.
pub fn run_engine_bench(engine: &mut dyn Engine, spec: &EngineBenchSpec) -> Result<EngineBenchResult, EngineError> {
    let mut prompt_total = 0usize;
    let cache_before = engine.prefix_cache();
    let shared = match spec.shared_prefix_tokens {
        0 => String::new(),
        n => format!("{} | ", bench_prompt(n, 0)),
    };
    for i in 0..spec.batch {
        let req = JobRequest {
            id: Some(format!("bench-{i}")),
            max_new_tokens: Some(spec.new_tokens as u32),
            min_new_tokens: Some(spec.new_tokens as u32),
            temperature: Some(0.0),
            model: Some(engine.info().model.clone()),
            format: spec.format.clone(),
            ..JobRequest::prompt(format!("{shared}{}", bench_prompt(spec.prompt_tokens, i)))
        };
        let job = validate(&req, &Limits::default()).map_err(|e| EngineError(e.to_string()))?;
        let admitted = engine.encode_and_admit(i as u64 + 1, &job, 0).map_err(|e| EngineError(e.to_string()))?;
        prompt_total += admitted.prompt_tokens;
    }
    let limits = StepLimits { max_prefill_tokens: spec.max_prefill_tokens };
    let started = Instant::now();
    let mut first_token = vec![false; spec.batch + 1];
    let mut with_token = 0usize;
    let mut prefill_done_at = None;
    let mut generated = 0usize;
    while engine.active() > 0 {
        for u in engine.step(&limits)? {
            generated += u.new_tokens;
            let slot = u.id as usize;
            if u.new_tokens > 0 && slot < first_token.len() && !first_token[slot] {
                first_token[slot] = true;
                with_token += 1;
            }
        }
        if prefill_done_at.is_none() && with_token == spec.batch {
            prefill_done_at = Some((started.elapsed().as_secs_f64(), generated));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let (prefill_s, tokens_at_prefill) = prefill_done_at.unwrap_or((seconds, generated));
    let decode_s = (seconds - prefill_s).max(1e-9);
    Ok(EngineBenchResult {
        engine: "genq".into(),
        kernel: engine.info().kernel.clone(),
        batch: spec.batch,
        prompt_tokens: prompt_total as f64 / spec.batch.max(1) as f64,
        new_tokens: spec.new_tokens,
        prefill_tokens_per_s: prompt_total as f64 / prefill_s.max(1e-9),
        decode_tokens_per_s: (generated - tokens_at_prefill) as f64 / decode_s,
        total_generated_tokens_per_s: generated as f64 / seconds.max(1e-9),
        seconds,
        peak_rss_mib: peak_rss_mib(),
        shared_prefix_tokens: spec.shared_prefix_tokens,
        prefix_hit_tokens: engine.prefix_cache().hit_tokens - cache_before.hit_tokens,
        prefix_cache_seconds: (engine.prefix_cache().busy_micros - cache_before.busy_micros) as f64 / 1e6,
        constrained: spec.format.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::echo::EchoEngine;

    #[test]
    fn bench_prompts_share_no_prefix() {
        let firsts: std::collections::HashSet<String> =
            (0..128).map(|salt| bench_prompt(8, salt).split(' ').take(2).collect::<Vec<_>>().join(" ")).collect();
        assert_eq!(firsts.len(), 128, "every prompt starts with its own two words");
    }

    #[test]
    fn engine_bench_counts_every_generated_token() {
        let mut e = EchoEngine::new("m");
        let spec = EngineBenchSpec { batch: 4, prompt_tokens: 8, new_tokens: 10, max_prefill_tokens: 512, shared_prefix_tokens: 0, format: None };
        let r = run_engine_bench(&mut e, &spec).expect("bench");
        assert_eq!(r.prompt_tokens, 8.0);
        assert!(r.total_generated_tokens_per_s > 0.0);
        assert!((r.total_generated_tokens_per_s * r.seconds - 40.0).abs() < 1e-6);
    }
}
