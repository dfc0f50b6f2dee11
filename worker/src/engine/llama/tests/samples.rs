//! Jobs with several samples (`n`) on the real model: the prompt is prefilled once, and each
//! sample is what a job of its own with seed `seed + i` generates, token for token.

use super::{job, run_to_end, smollm2};
use crate::engine::llama::WeightFormat;
use crate::engine::{Engine, StepLimits};

const PROMPT: &str = "Write one sentence about the sea, the wind and a small boat that sails at night.";

fn sampled(n: u32) -> String {
    format!(r#"{{"id":"a","prompt":"{PROMPT}","max_new_tokens":10,"min_new_tokens":10,"temperature":0.9,"top_p":0.95,"n":{n},"logprobs":2}}"#)
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn samples_share_one_prefill_and_match_jobs_of_their_own() {
    let seed = 41;
    let mut e = smollm2(WeightFormat::Packed);
    let admitted = e.encode_and_admit(1, &job(&sampled(3)), seed).expect("admit");
    // A prefill budget of exactly the prompt: had the other samples to prefill it too, they
    // could not draw their first token in the first step.
    let first = e.step(&StepLimits { max_prefill_tokens: admitted.prompt_tokens }).expect("step");
    assert_eq!(first.len(), 1, "one update per job");
    assert_eq!(first[0].new_tokens, 3, "every sample drew its first token from the one prefill");
    let mut together = run_to_end(&mut e, admitted.prompt_tokens).remove(&1).expect("outcome");
    together.text = format!("{}{}", first[0].text, together.text);
    let done = together.done.expect("finished");
    assert_eq!(done.samples.len(), 2);
    assert_eq!(together.tokens + 3, 10 * 3, "the update counts tokens of every sample");

    // Each sample alone, with its own seed, on a fresh engine.
    let mut alone = smollm2(WeightFormat::Packed);
    for i in 0..3u64 {
        alone.encode_and_admit(10 + i, &job(&sampled(1)), seed + i).expect("admit");
    }
    let alone = run_to_end(&mut alone, 512);
    assert_eq!(together.text, alone[&10].text, "sample 1 is the job's own text");
    assert_eq!(done.logprobs.generated, alone[&10].done.as_ref().expect("done").logprobs.generated);
    for (i, sample) in done.samples.iter().enumerate() {
        let own = &alone[&(11 + i as u64)];
        assert_eq!(sample.text, own.text, "sample {} draws with seed + {}", i + 2, i + 1);
        assert_eq!(sample.token_logprobs, own.done.as_ref().expect("done").logprobs.generated, "bitwise the same log-probs");
        assert_eq!(sample.completion_tokens, own.tokens as u64);
    }
    let texts: std::collections::BTreeSet<&str> = std::iter::once(together.text.as_str()).chain(done.samples.iter().map(|c| c.text.as_str())).collect();
    assert!(texts.len() > 1, "different seeds give different samples: {texts:?}");
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn releasing_a_job_drops_its_other_samples() {
    let mut e = smollm2(WeightFormat::Packed);
    e.encode_and_admit(1, &job(&sampled(4)), 1).expect("admit");
    assert_eq!(e.active(), 4, "four sequences");
    e.step(&StepLimits { max_prefill_tokens: 512 }).expect("step");
    assert!(e.cached_tokens() > 0);
    e.release(1);
    assert_eq!((e.active(), e.cached_tokens()), (0, 0), "nothing left behind");
}
