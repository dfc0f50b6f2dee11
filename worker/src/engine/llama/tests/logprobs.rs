//! Token log-probs on the real model: generated tokens' (`logprobs`) agree with greedy picks,
//! prompt tokens' (`prompt_logprobs`) agree with a score job's and do not depend on how the
//! prompt was chunked.

use genq_shared::result::TokenLogprob;

use super::{job, run_to_end, smollm2};
use crate::engine::llama::WeightFormat;
use crate::engine::Engine;

const PROMPT: &str = "The quick brown fox jumps over the lazy dog because";

/// A finished job's prompt log-probs, generated log-probs, score log-probs and text.
type Logprobs = (Option<Vec<TokenLogprob>>, Option<Vec<TokenLogprob>>, Option<Vec<f64>>, String);

fn logprobs_of(json: &str, prefill_budget: usize) -> Logprobs {
    let mut e = smollm2(WeightFormat::for_this_cpu(64));
    e.encode_and_admit(1, &job(json), 0).expect("admit");
    let out = run_to_end(&mut e, prefill_budget).remove(&1).expect("an outcome");
    let done = out.done.expect("finished");
    (done.logprobs.prompt, done.logprobs.generated, done.score.map(|s| s.logprobs), out.text)
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn greedy_tokens_are_the_most_likely_and_their_text_is_the_output() {
    let json = format!(r#"{{"id":"a","prompt":"{PROMPT}","max_new_tokens":12,"min_new_tokens":12,"temperature":0,"logprobs":3}}"#);
    let (prompt, generated, _, text) = logprobs_of(&json, 512);
    assert!(prompt.is_none(), "not asked for");
    let generated = generated.expect("asked for");
    assert_eq!(generated.len(), 12);
    for t in &generated {
        assert_eq!(t.top.len(), 3, "{t:?}");
        assert_eq!(t.top[0].id, t.id, "greedy takes the most likely token: {t:?}");
        assert_eq!(Some(t.top[0].logprob), t.logprob);
        assert!(t.top.windows(2).all(|w| w[0].logprob >= w[1].logprob), "{t:?}");
        assert!(t.logprob.is_some_and(|l| l <= 0.0 && l.is_finite()), "{t:?}");
    }
    let joined: String = generated.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(joined, text);
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn prompt_log_probs_match_a_score_job_whatever_the_chunking() {
    let generate = format!(r#"{{"id":"a","prompt":"{PROMPT}","max_new_tokens":2,"temperature":0,"prompt_logprobs":2}}"#);
    let score = format!(r#"{{"id":"b","kind":"score","prompt":"{PROMPT}","prompt_logprobs":0}}"#);
    let (whole, _, _, _) = logprobs_of(&generate, 512);
    let (chunked, _, _, _) = logprobs_of(&generate, 3);
    let (scored, _, score_logprobs, _) = logprobs_of(&score, 512);
    let (whole, chunked, scored) = (whole.expect("asked"), chunked.expect("asked"), scored.expect("asked"));
    let score_logprobs = score_logprobs.expect("a score");
    assert_eq!(whole.len(), score_logprobs.len() + 1, "one per prompt token");
    assert_eq!(whole[0].logprob, None, "the first token has nothing before it");
    assert!(whole[0].top.is_empty());
    for (i, t) in whole.iter().enumerate().skip(1) {
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-4);
        assert!(close(t.logprob, score_logprobs[i - 1]), "token {i}: {t:?} vs score {}", score_logprobs[i - 1]);
        assert!(close(chunked[i].logprob, score_logprobs[i - 1]), "token {i} chunked: {:?}", chunked[i]);
        assert_eq!(t.id, chunked[i].id);
        assert_eq!(t.top.len(), 2);
        assert!(scored[i].top.is_empty(), "0 alternatives asked");
        assert_eq!(scored[i].id, t.id);
    }
    let text: String = whole.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(text, PROMPT, "the prompt's tokens spell the prompt");
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn asking_for_log_probs_does_not_change_the_output() {
    let plain = format!(r#"{{"id":"a","prompt":"{PROMPT}","max_new_tokens":10,"temperature":0.8,"seed":5}}"#);
    let asked = format!(r#"{{"id":"a","prompt":"{PROMPT}","max_new_tokens":10,"temperature":0.8,"seed":5,"logprobs":5,"prompt_logprobs":5}}"#);
    let (_, _, _, a) = logprobs_of(&plain, 4);
    let (_, _, _, b) = logprobs_of(&asked, 4);
    assert_eq!(a, b);
}
