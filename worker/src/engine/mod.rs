//! The model seam: the [`Engine`] trait the scheduler drives, and its implementations.
//!
//! - [`echo`]: a deterministic engine that echoes the prompt, for tests and overhead benchmarks.
//! - [`llama`]: the candle engine for Llama-family models (GGUF and safetensors).
//! - [`stops`]: text-level stop strings, shared by every engine.
//!
//! The scheduler decides *which* jobs run and when; an engine decides *how* one step of all
//! its admitted sequences is computed. Engines are synchronous and live on one OS thread; their
//! [`PromptEncoder`] (chat template and tokenizer) runs before admission, on other threads, so a
//! huge prompt never holds up the running batch.

pub(crate) mod echo;
pub mod llama;
pub(crate) mod stops;

use std::sync::Arc;

use genq_shared::result::{Choice, TokenLogprob};
use genq_shared::{FinishReason, ValidJob};

/// Identifies one admitted sequence inside one engine.
pub type SeqId = u64;

/// What an engine serves, for metrics and validation.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineInfo {
    /// Model name as routed (`smollm2-135m-instruct`).
    pub model: String,
    /// Device it runs on (`cpu`, `cuda:0`).
    pub device: String,
    /// What multiplies the weights: a packed CPU kernel (`amx`, `avx512-vnni`, `avx-vnni`, `avx2`, `reference`),
    /// `candle` (its own kernels, for the other weight formats and GPUs) or `none` (echo).
    pub kernel: String,
    /// Most tokens (prompt + generated) one sequence may hold.
    pub context_length: usize,
}

/// A sequence was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Tokens in the (rendered) prompt.
    pub prompt_tokens: usize,
}

/// A job cannot run on this engine; it ends `failed` and is not retried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{field}` {message}")]
pub struct AdmitError {
    /// The field at fault (`prompt`, `max_new_tokens`, `messages`).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// A step failed as a whole (a bug or a device error); the jobs in it are retried elsewhere.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("engine step failed: {0}")]
pub struct EngineError(pub String);

/// Result of a score job.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// Log-prob of each prompt token after the first, given the tokens before it.
    pub logprobs: Vec<f64>,
    /// `exp(-mean log-prob)`.
    pub perplexity: f64,
}

/// The token log-probs a job asked for (`logprobs`, `prompt_logprobs`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Logprobs {
    /// One per prompt token, when the job asked for `prompt_logprobs`.
    pub prompt: Option<Vec<TokenLogprob>>,
    /// One per generated token, when the job asked for `logprobs`.
    pub generated: Option<Vec<TokenLogprob>>,
}

/// A sequence finished this step; the engine has already dropped it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqDone {
    /// Why generation stopped (`None` for score jobs).
    pub finish_reason: Option<FinishReason>,
    /// Score jobs only.
    pub score: Option<Score>,
    /// What the job asked for.
    pub logprobs: Logprobs,
    /// A job with `n` above 1: its other samples (2nd to nth), in order.
    pub samples: Vec<Choice>,
    /// The sequence could not go on (its output format failed mid-way): the job ends `failed`
    /// with this message, which names the field.
    pub error: Option<String>,
}

/// What happened to one sequence in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqUpdate {
    /// The sequence.
    pub id: SeqId,
    /// Text that became final this step (may be empty while a stop string could still match).
    pub text: String,
    /// Tokens generated this step (0 while the prompt is still being prefilled).
    pub new_tokens: usize,
    /// Set on the step the sequence finished.
    pub done: Option<SeqDone>,
}

/// What an engine's prefix cache did (all zeros for an engine without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefixStats {
    /// Prompt tokens copied from the cache instead of computed, in all.
    pub hit_tokens: u64,
    /// Tokens held now.
    pub held_tokens: u64,
    /// Blocks evicted to make room, in all.
    pub evicted_blocks: u64,
    /// Time spent looking blocks up and copying them in and out, microseconds, in all: the
    /// cache's whole cost to the engine's thread.
    pub busy_micros: u64,
}

/// Bounds on one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepLimits {
    /// Prompt tokens prefilled in one step at most, so running sequences keep decoding.
    pub max_prefill_tokens: usize,
}

/// Turns a job's prompt or chat into the token ids its engine feeds. Shared across threads.
pub trait PromptEncoder: Send + Sync {
    /// The prompt's token ids (chat rendered with the model's template, BOS when the model adds
    /// one), or the field at fault.
    fn encode(&self, job: &ValidJob) -> Result<Vec<u32>, AdmitError>;
}

/// The wire field holding a job's input: `prompt` or `messages`.
pub fn input_field(job: &ValidJob) -> &'static str {
    match job.input {
        genq_shared::valid::PromptInput::Text(_) => "prompt",
        genq_shared::valid::PromptInput::Chat(_) => "messages",
    }
}

/// A `score` job needs two tokens or more: the first token has no log-prob (nothing precedes
/// it), so a one-token prompt would score nothing.
pub fn check_score_length(job: &ValidJob, prompt_tokens: usize) -> Result<(), AdmitError> {
    if job.kind == genq_shared::job::JobKind::Score && prompt_tokens < 2 {
        return Err(AdmitError {
            field: input_field(job),
            message: format!("has {prompt_tokens} token; a score job needs at least 2 (the first token has no log-prob)"),
        });
    }
    Ok(())
}

/// A model that advances all its admitted sequences one step at a time.
pub trait Engine: Send {
    /// What this engine serves.
    fn info(&self) -> &EngineInfo;

    /// This engine's prompt encoder, to run before [`Engine::admit`] on any thread.
    fn encoder(&self) -> Arc<dyn PromptEncoder>;

    /// Adds `job`, whose prompt [`Engine::encoder`] made `prompt`, to the running batch; it
    /// joins at the next step. `seed` is the job's seed, or one drawn by the caller when the
    /// job gave none.
    ///
    /// A job with `n` above 1 stays one sequence to the caller: its updates carry the first
    /// sample's text, `new_tokens` counts the tokens of every sample, and `done` comes once
    /// every sample has finished, with the others in [`SeqDone::samples`]. Sample `i` draws
    /// with seed `seed + i`.
    fn admit(&mut self, id: SeqId, job: &ValidJob, prompt: Vec<u32>, seed: u64) -> Result<Admitted, AdmitError>;

    /// Encodes on the calling thread, then admits (tests and benchmarks).
    fn encode_and_admit(&mut self, id: SeqId, job: &ValidJob, seed: u64) -> Result<Admitted, AdmitError> {
        let prompt = self.encoder().encode(job)?;
        self.admit(id, job, prompt, seed)
    }

    /// Runs one step over every admitted sequence: prefills pending prompt tokens (within
    /// `limits`) and decodes one token for each sequence whose prompt is in. Finished sequences
    /// are reported once with `done` set and dropped.
    fn step(&mut self, limits: &StepLimits) -> Result<Vec<SeqUpdate>, EngineError>;

    /// Drops a sequence early (cancelled or expired), freeing its state. Unknown ids are ignored.
    fn release(&mut self, id: SeqId);

    /// Sequences admitted and not yet finished.
    fn active(&self) -> usize;

    /// Tokens held in the KV caches of the admitted sequences (prompt tokens prefilled plus
    /// tokens generated), for the `genq_kv_cache_tokens` gauge.
    fn cached_tokens(&self) -> usize;

    /// What the prefix cache did so far, for the `genq_prefix_cache_*` metrics.
    fn prefix_cache(&self) -> PrefixStats {
        PrefixStats::default()
    }
}
