//! The prefix cache on the real model: on the packed CPU path, jobs sharing a long prompt prefix
//! get the same tokens and log-probs, bit for bit, with the cache on (the prefix copied, in the
//! same batch or a later one), off, or too small to hold it all (blocks evicted); on the device
//! path (run on the CPU here), the same tokens and log-probs within its tolerance.

use std::collections::BTreeMap;

use candle_core::quantized::gguf_file;
use candle_core::Device;

use super::{gguf_path, job, run_to_end, smollm2, Outcome};
use crate::engine::llama::backend::Backend;
use crate::engine::llama::device::DeviceModel;
use crate::engine::llama::{LlamaEngine, WeightFormat};
use crate::engine::{Engine, PrefixStats, SeqId};

const SYSTEM: &str = "You are a careful assistant. Answer in one short sentence, plainly, without lists, \
    without greetings and without repeating the question. If you do not know, say so. Facts only, please, \
    and keep the tone friendly but brief. Use plain words a child would know, give numbers as digits, name \
    places the way an atlas does, and when a question has two readings, answer the more common one. Never \
    guess a date, never invent a source, and never add a second sentence to explain the first.";

/// Jobs on one shared prefix: greedy with log-probs, seeded sampling, a score job, a chat job.
fn wave(tag: &str) -> Vec<String> {
    let q = |i: usize| format!("{SYSTEM} Question {tag}{i}: what is {i} plus {i}?");
    vec![
        format!(r#"{{"id":"g","prompt":"{}","max_new_tokens":8,"temperature":0,"logprobs":2}}"#, q(1)),
        format!(r#"{{"id":"s","prompt":"{}","max_new_tokens":8,"temperature":0.9,"seed":5}}"#, q(2)),
        format!(r#"{{"id":"k","kind":"score","prompt":"{}"}}"#, q(3)),
        format!(r#"{{"id":"c","messages":[{{"role":"system","content":"{SYSTEM}"}},{{"role":"user","content":"Name a {tag} colour."}}],"max_new_tokens":6,"temperature":0}}"#),
        format!(r#"{{"id":"l","prompt":"{}","max_new_tokens":4,"temperature":0,"prompt_logprobs":1}}"#, q(4)),
    ]
}

/// Runs two waves of jobs (the second after the first finished) on `e` with a prefix cache of
/// `budget` bytes (none for 0); their outcomes by (wave, job), and what the cache did.
fn run_on(e: LlamaEngine, budget: usize) -> (BTreeMap<(usize, usize), Outcome>, PrefixStats) {
    let mut e = e.with_prefix_cache(budget);
    let mut all = BTreeMap::new();
    for (w, tag) in ["a", "b"].into_iter().enumerate() {
        for (i, json) in wave(tag).iter().enumerate() {
            e.encode_and_admit((w * 10 + i) as SeqId, &job(json), 11).expect("admit");
        }
        for (id, out) in run_to_end(&mut e, 64) {
            all.insert((w, id as usize % 10), out);
        }
    }
    (all, e.prefix_cache())
}

/// Runs the waves on engines from `engine` with the cache off, on, and at `tight` bytes; checks
/// every job with the cache against the same job without it by `same(name, job, got, want)`, and
/// that the prefix was reused and held, and evicted at `tight`.
fn check_against_no_cache(engine: impl Fn() -> LlamaEngine, tight: usize, same: impl Fn(&str, (usize, usize), &Outcome, &Outcome)) {
    let (off, none) = run_on(engine(), 0);
    assert_eq!(none, PrefixStats::default(), "no cache, nothing done");
    let (on, stats) = run_on(engine(), 64 << 20);
    let (tight_out, squeezed) = run_on(engine(), tight);
    for (key, want) in &off {
        for (name, got) in [("on", &on[key]), ("tight", &tight_out[key])] {
            same(name, *key, got, want);
        }
    }
    // Over 100 tokens shared: in the first wave the sampled job copies what the greedy one
    // computed (it waits a step for it); in the second, both and the chat job copy theirs. The
    // score and prompt log-prob jobs read every prompt row, so they compute their own.
    assert!(stats.hit_tokens >= 4 * 96, "the shared prefix was reused: {stats:?}");
    assert!(stats.held_tokens > 0 && stats.evicted_blocks == 0, "{stats:?}");
    assert!(squeezed.evicted_blocks > 0, "a budget of a few blocks evicts: {squeezed:?}");
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn the_prefix_cache_changes_no_token_and_no_log_prob() {
    check_against_no_cache(|| smollm2(WeightFormat::Packed), 600 << 10, |name, key, got, want| {
        assert_eq!(got.text, want.text, "{name}: text of job {key:?}");
        assert_eq!(got.tokens, want.tokens, "{name}: tokens of job {key:?}");
        assert_eq!(got.done, want.done, "{name}: log-probs, scores and finish of job {key:?}");
    });
}

/// The default model on the device path, on the CPU, with its GGUF weights as they are.
fn smollm2_on_device() -> LlamaEngine {
    let mut e = smollm2(WeightFormat::Native);
    let mut file = std::fs::File::open(gguf_path()).expect("the default model");
    let content = gguf_file::Content::read(&mut file).expect("gguf");
    e.model = Backend::Device(DeviceModel::from_gguf(&content, &mut file, WeightFormat::Native, &Device::Cpu).expect("device model"));
    e
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn the_device_path_reuses_prefixes_with_the_same_tokens() {
    check_against_no_cache(smollm2_on_device, 3 << 20, |name, key, got, want| {
        assert_eq!((&got.text, got.tokens), (&want.text, want.tokens), "{name}: text of job {key:?}");
        let (g, w) = (got.done.as_ref().expect("done"), want.done.as_ref().expect("done"));
        assert_eq!(g.finish_reason, w.finish_reason, "{name}: finish of job {key:?}");
        let logprobs = |d: &crate::engine::SeqDone| -> Vec<f64> {
            let all = d.logprobs.prompt.iter().chain(&d.logprobs.generated).flatten();
            all.filter_map(|t| t.logprob).chain(d.score.iter().flat_map(|s| s.logprobs.iter().copied())).collect()
        };
        let (a, b) = (logprobs(g), logprobs(w));
        assert_eq!(a.len(), b.len(), "{name}: log-probs of job {key:?}");
        // The device path's tolerance against the CPU path on these weights (its test: 2.0 on
        // logits); a copied prefix changes only the shape of the step that computes the rest.
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(worst < 0.5, "{name}: job {key:?} log-probs differ by {worst}");
    });
}
