//! A deterministic engine with no model: sequence `i`'s n-th token is the n-th word of its prompt
//! (cycling), so results are predictable (a job's `n` samples are all the same echo). Used by tests and to measure genq's own overhead.
//!
//! Fault injection for tests: with `GENQ_ECHO_CRASH_ON=<word>` in its environment, the echo
//! engine aborts the process in any step where a running prompt contains that word — a stand-in
//! for a job that crashes the model — and with `GENQ_ECHO_STEP_MS=<ms>` each step takes that
//! long, like a model's forward pass, so tests can interrupt work in flight. The llama engine
//! has no such hooks.

use std::collections::BTreeMap;
use std::sync::Arc;

use genq_shared::job::JobKind;
use genq_shared::result::Choice;
use genq_shared::valid::PromptInput;
use genq_shared::{FinishReason, ValidJob};

use super::stops::StopMatcher;
use super::{check_score_length, AdmitError, Admitted, Engine, EngineError, EngineInfo, PromptEncoder, Score, SeqDone, SeqId, SeqUpdate, StepLimits};

/// Context length the echo engine pretends to have.
pub(crate) const ECHO_CONTEXT_LENGTH: usize = 8192;

/// A prompt's words: the text once, and where each word lies in it (one allocation each rather
/// than one per word, so the echo engine costs next to nothing per job).
struct Words {
    text: String,
    spans: Vec<std::ops::Range<usize>>,
}

/// A prompt's text: the whole text, or each chat message's content in turn.
fn parts(input: &PromptInput) -> impl Iterator<Item = &str> {
    let (text, messages) = match input {
        PromptInput::Text(t) => (Some(t.as_str()), &[][..]),
        PromptInput::Chat(msgs) => (None, msgs.as_slice()),
    };
    text.into_iter().chain(messages.iter().map(|m| m.content.as_str()))
}

impl Words {
    /// The words of a prompt of `count` words (see [`Words::count`]).
    fn of(input: &PromptInput, count: usize) -> Self {
        let mut words = Words { text: String::with_capacity(input.bytes()), spans: Vec::with_capacity(count) };
        parts(input).for_each(|part| words.extend(part));
        if words.spans.is_empty() {
            words.spans.push(0..0);
        }
        words
    }

    /// How many words [`Words::of`] finds in a prompt (one for a prompt without any), counted
    /// without copying it.
    fn count(input: &PromptInput) -> usize {
        parts(input).map(|part| part.split_whitespace().count()).sum::<usize>().max(1)
    }

    fn extend(&mut self, part: &str) {
        let base = self.text.len();
        self.text.push_str(part);
        // Each word's offset in `part`, from where its slice starts.
        let offset = |w: &str| w.as_ptr() as usize - part.as_ptr() as usize;
        self.spans.extend(part.split_whitespace().map(|w| base + offset(w)..base + offset(w) + w.len()));
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn get(&self, i: usize) -> &str {
        &self.text[self.spans[i].clone()]
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }
}

struct EchoSeq {
    words: Words,
    kind: JobKind,
    generated: usize,
    max_new: usize,
    min_new: usize,
    stops: StopMatcher,
    /// Samples asked for (`n`); every sample is the same echo.
    samples: usize,
    /// Text so far, kept for the other samples when there are several.
    text: String,
}

/// The echo engine's "tokenizer": one id per word (its index).
struct WordEncoder;

impl PromptEncoder for WordEncoder {
    fn encode(&self, job: &ValidJob) -> Result<Vec<u32>, AdmitError> {
        Ok((0..Words::count(&job.input) as u32).collect())
    }
}

/// The echo engine. Every sequence decodes one word per step, like a real model decodes a token.
pub(crate) struct EchoEngine {
    info: EngineInfo,
    seqs: BTreeMap<SeqId, EchoSeq>,
    crash_on: Option<String>,
    step_delay: Option<std::time::Duration>,
}

/// Environment variable naming the prompt word that makes the echo engine abort (tests only).
pub(crate) const CRASH_ON_ENV: &str = "GENQ_ECHO_CRASH_ON";
/// Environment variable giving each echo step a duration in ms (tests only).
pub(crate) const STEP_MS_ENV: &str = "GENQ_ECHO_STEP_MS";

impl EchoEngine {
    /// An echo engine answering for `model`.
    pub(crate) fn new(model: &str) -> Self {
        Self {
            info: EngineInfo { model: model.to_string(), device: "cpu".into(), kernel: "none".into(), context_length: ECHO_CONTEXT_LENGTH },
            seqs: BTreeMap::new(),
            crash_on: std::env::var(CRASH_ON_ENV).ok().filter(|w| !w.is_empty()),
            step_delay: std::env::var(STEP_MS_ENV).ok().and_then(|v| v.parse().ok()).map(std::time::Duration::from_millis),
        }
    }
}

impl Engine for EchoEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn encoder(&self) -> Arc<dyn PromptEncoder> {
        Arc::new(WordEncoder)
    }

    fn admit(&mut self, id: SeqId, job: &ValidJob, prompt: Vec<u32>, _seed: u64) -> Result<Admitted, AdmitError> {
        let prompt_tokens = prompt.len();
        let words = Words::of(&job.input, prompt_tokens);
        check_score_length(job, prompt_tokens)?;
        for (field, asked) in [("logprobs", job.logprobs.is_some()), ("prompt_logprobs", job.prompt_logprobs.is_some())] {
            if asked {
                return Err(AdmitError { field, message: "is not served by the echo engine (it has no probabilities)".into() });
            }
        }
        if job.format.is_some() {
            return Err(AdmitError { field: "format", message: "is not served by the echo engine (it repeats the prompt)".into() });
        }
        let max_new = job.new_token_budget(prompt_tokens);
        if prompt_tokens + max_new > self.info.context_length {
            return Err(AdmitError {
                field: "max_new_tokens",
                message: format!("plus the prompt's {prompt_tokens} tokens exceeds the context length {}", self.info.context_length),
            });
        }
        self.seqs.insert(
            id,
            EchoSeq {
                words,
                kind: job.kind,
                generated: 0,
                max_new,
                min_new: (job.min_new_tokens as usize).min(max_new),
                stops: StopMatcher::new(job.stop.clone()),
                samples: job.n as usize,
                text: String::new(),
            },
        );
        Ok(Admitted { prompt_tokens })
    }

    fn step(&mut self, _limits: &StepLimits) -> Result<Vec<SeqUpdate>, EngineError> {
        if let Some(word) = &self.crash_on {
            if self.seqs.values().any(|s| s.words.iter().any(|w| w == word)) {
                tracing::error!(word, "fault injection: a prompt holds {CRASH_ON_ENV}; aborting the process");
                std::process::abort();
            }
        }
        if let Some(delay) = self.step_delay {
            std::thread::sleep(delay);
        }
        let mut updates = Vec::with_capacity(self.seqs.len());
        let mut finished = Vec::new();
        for (&id, seq) in self.seqs.iter_mut() {
            if seq.kind == JobKind::Score {
                let logprobs: Vec<f64> = seq.words.iter().skip(1).map(|w| -(w.chars().count() as f64) / 10.0).collect();
                let mean = if logprobs.is_empty() { 0.0 } else { logprobs.iter().sum::<f64>() / logprobs.len() as f64 };
                updates.push(SeqUpdate {
                    id,
                    text: String::new(),
                    new_tokens: 0,
                    done: Some(SeqDone {
                        finish_reason: None,
                        score: Some(Score { logprobs, perplexity: (-mean).exp() }),
                        logprobs: Default::default(),
                        samples: Vec::new(),
                        error: None,
                    }),
                });
                finished.push(id);
                continue;
            }
            let word = seq.words.get(seq.generated % seq.words.len());
            let piece = if seq.generated == 0 { word.to_string() } else { format!(" {word}") };
            seq.generated += 1;
            let check = seq.stops.push(&piece, seq.generated >= seq.min_new);
            let mut text = check.emit;
            let done = if check.stopped {
                Some(FinishReason::Stop)
            } else if seq.generated >= seq.max_new {
                text.push_str(&seq.stops.flush());
                Some(FinishReason::Length)
            } else {
                None
            };
            if done.is_some() {
                finished.push(id);
            }
            if seq.samples > 1 {
                seq.text.push_str(&text);
            }
            let others = |r| Choice { text: seq.text.clone(), finish_reason: Some(r), completion_tokens: seq.generated as u64, token_logprobs: None };
            updates.push(SeqUpdate {
                id,
                text,
                new_tokens: seq.samples,
                done: done.map(|r| SeqDone {
                    finish_reason: Some(r),
                    score: None,
                    logprobs: Default::default(),
                    samples: (1..seq.samples).map(|_| others(r)).collect(),
                    error: None,
                }),
            });
        }
        for id in finished {
            self.seqs.remove(&id);
        }
        Ok(updates)
    }

    fn release(&mut self, id: SeqId) {
        self.seqs.remove(&id);
    }

    fn active(&self) -> usize {
        self.seqs.len()
    }

    /// What a real model would cache: every prompt word plus every word generated.
    fn cached_tokens(&self) -> usize {
        self.seqs.values().map(|s| s.words.len() + s.generated).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genq_shared::valid::{validate, Limits};
    use genq_shared::JobRequest;

    fn job(json: &str) -> ValidJob {
        let req: JobRequest = serde_json::from_str(json).expect("json");
        validate(&req, &Limits::default()).expect("valid")
    }

    #[test]
    fn words_split_like_split_whitespace_across_chat_messages() {
        // The words, and how many `Words::count` says there are (the prompt's token count).
        let words = |input: PromptInput| (Words::of(&input, 0), Words::count(&input));
        let (text, n) = words(PromptInput::Text("  one two\tthree \n".into()));
        assert_eq!(text.iter().collect::<Vec<_>>(), ["one", "two", "three"]);
        assert_eq!(n, 3);
        let msg = |c: &str| genq_shared::job::ChatMessage { role: "user".into(), content: c.into() };
        let (chat, n) = words(PromptInput::Chat(vec![msg("a b"), msg(""), msg(" c")]));
        assert_eq!(chat.iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!((chat.len(), chat.get(2), n), (3, "c", 3));
        let (empty, n) = words(PromptInput::Text("   ".into()));
        assert_eq!((empty.len(), empty.get(0), n), (1, "", 1), "an empty prompt echoes one empty word");
    }

    fn run_to_end(engine: &mut EchoEngine) -> BTreeMap<SeqId, (String, Option<SeqDone>)> {
        let mut out: BTreeMap<SeqId, (String, Option<SeqDone>)> = BTreeMap::new();
        while engine.active() > 0 {
            for u in engine.step(&StepLimits { max_prefill_tokens: 512 }).expect("step") {
                let e = out.entry(u.id).or_default();
                e.0.push_str(&u.text);
                if u.done.is_some() {
                    e.1 = u.done;
                }
            }
        }
        out
    }

    #[test]
    fn several_samples_are_the_same_echo_and_count_every_token() {
        let mut e = EchoEngine::new("m");
        e.encode_and_admit(1, &job(r#"{"id":"a","prompt":"one two","max_new_tokens":3,"n":3}"#), 0).expect("admit");
        let mut tokens = 0;
        let mut done = None;
        while e.active() > 0 {
            for u in e.step(&StepLimits { max_prefill_tokens: 512 }).expect("step") {
                tokens += u.new_tokens;
                done = u.done.or(done);
            }
        }
        let done = done.expect("done");
        let samples: Vec<(&str, u64)> = done.samples.iter().map(|c| (c.text.as_str(), c.completion_tokens)).collect();
        assert_eq!(samples, vec![("one two one", 3), ("one two one", 3)]);
        assert_eq!(tokens, 9, "three samples of three tokens");
    }

    #[test]
    fn echo_cycles_prompt_words_up_to_max_new_tokens() {
        let mut e = EchoEngine::new("m");
        e.encode_and_admit(1, &job(r#"{"id":"a","prompt":"one two","max_new_tokens":5}"#), 0).expect("admit");
        e.encode_and_admit(2, &job(r#"{"id":"b","prompt":"x y z","max_new_tokens":2}"#), 0).expect("admit");
        let out = run_to_end(&mut e);
        assert_eq!(out[&1].0, "one two one two one");
        assert_eq!(out[&2].0, "x y");
        assert_eq!(out[&1].1.as_ref().and_then(|d| d.finish_reason), Some(FinishReason::Length));
    }

    #[test]
    fn max_length_counts_the_prompt_and_one_word_scores_are_refused() {
        let mut e = EchoEngine::new("m");
        let admitted = e.encode_and_admit(1, &job(r#"{"id":"a","prompt":"one two three","max_length":5}"#), 0).expect("admit");
        assert_eq!(admitted.prompt_tokens, 3);
        e.encode_and_admit(2, &job(r#"{"id":"b","prompt":"x y z","max_length":2}"#), 0).expect("admit");
        let out = run_to_end(&mut e);
        assert_eq!(out[&1].0, "one two", "5 in total: 3 prompt words, 2 new");
        assert_eq!(out[&2].0, "x", "a prompt past max_length still gets one new word");
        let err = e.encode_and_admit(3, &job(r#"{"id":"c","kind":"score","prompt":"alone"}"#), 0).expect_err("one word");
        assert_eq!(err.field, "prompt");
        e.encode_and_admit(4, &job(r#"{"id":"d","kind":"score","prompt":"two words"}"#), 0).expect("two words score");
    }

    #[test]
    fn echo_honours_stop_strings() {
        let mut e = EchoEngine::new("m");
        e.encode_and_admit(1, &job(r#"{"id":"a","prompt":"a b STOP c","max_new_tokens":9,"stop":["STOP"]}"#), 0).expect("admit");
        let out = run_to_end(&mut e);
        assert_eq!(out[&1].0, "a b ");
        assert_eq!(out[&1].1.as_ref().and_then(|d| d.finish_reason), Some(FinishReason::Stop));
    }
}
