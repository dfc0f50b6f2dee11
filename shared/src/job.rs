//! Wire format v1 of a job: the JSON body of one AMQP message. Parsing only; rules live in `valid`.

use serde::{Deserialize, Serialize};

/// The only wire-format version this build accepts.
pub const WIRE_VERSION: u32 = 1;

/// The model a job is routed to when it names none.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// A job as published: every field of the wire format v1 (`docs/protocol.md`). Unknown fields
/// are an error, so a typo (`max_tokens`) fails loudly instead of silently using a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Wire-format version; only 1 is accepted.
    #[serde(default = "default_version")]
    pub v: u32,
    /// Job id and idempotency key; the producer fills in a UUIDv4 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What to do with the prompt.
    #[serde(default)]
    pub kind: JobKind,
    /// Plain-text prompt; exactly one of `prompt` and `messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Chat messages, rendered with the model's chat template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    /// Model name; routes the job to `genq.jobs.<model>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Upper bound on generated tokens (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<u32>,
    /// Prompt plus new tokens at most, counted by the worker's tokenizer: the job generates
    /// `min(max_new_tokens, max_length - prompt tokens)` tokens, at least one. With it and no
    /// `max_new_tokens`, `max_new_tokens` defaults to `max_length` (capped by the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
    /// EOS and stop strings are ignored until this many tokens exist (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_new_tokens: Option<u32>,
    /// Sampling temperature; 0 means greedy (default 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass in (0, 1] (default 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Keep only the k most likely tokens; 0 is off (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Penalty > 0 on tokens already seen (default 1.0, none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    /// Sampling seed; same seed + prompt + params give the same text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Stop strings (at most 8, each 1..=64 bytes), not included in the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    /// Return the log-prob of each generated token and this many most likely alternatives at
    /// each position (0..=20); absent: no log-probs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// Return the log-prob of each prompt token (the first has none) and this many most likely
    /// alternatives at each position (0..=20); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<u32>,
    /// Samples of the prompt (1..=16, generate jobs, not streamed): the prompt is prefilled once
    /// and sample `i` draws with seed `seed + i`; the result lists them in `choices`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Constrain the generated text to a JSON Schema, any JSON object, a regular expression or a
    /// Lark grammar (generate jobs); absent: free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<crate::format::OutputFormat>,
    /// Queue priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Unix milliseconds after which the job ends `expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Append text chunks to the job's Redis stream as they are generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Batch id for progress counting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
}

/// Every field of wire format v1, as named on the wire (errors name one of these).
pub const FIELDS: &[&str] = &[
    "v", "id", "kind", "prompt", "messages", "model", "max_new_tokens", "max_length", "min_new_tokens", "temperature", "top_p", "top_k",
    "repetition_penalty", "seed", "stop", "logprobs", "prompt_logprobs", "n", "format", "priority", "deadline_ms", "stream", "batch",
];

fn default_version() -> u32 {
    WIRE_VERSION
}

impl JobRequest {
    /// A generate job for a plain prompt with every other field at its default.
    pub fn prompt(text: impl Into<String>) -> Self {
        Self { v: WIRE_VERSION, prompt: Some(text.into()), ..Self::default() }
    }

    /// The model this job routes to.
    pub fn model_name(&self) -> &str {
        self.model.as_deref().unwrap_or(DEFAULT_MODEL)
    }

    /// The priority this job routes with.
    pub fn priority(&self) -> Priority {
        self.priority.unwrap_or_default()
    }
}

/// What a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Generate a continuation of the prompt.
    #[default]
    Generate,
    /// Return per-token log-probs of the prompt and its perplexity.
    Score,
}

impl JobKind {
    /// The name used on the wire and in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Generate => "generate",
            JobKind::Score => "score",
        }
    }
}

/// Queue priority: each has its own queue (`.high`, `.low`); a worker admits high jobs first,
/// then normal, then low.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Admitted after every waiting normal and high job (bulk work: batch files).
    Low,
    /// The default.
    #[default]
    Normal,
    /// Consumed and admitted before normal jobs.
    High,
}

impl Priority {
    /// Every priority, in the order a worker admits them.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// `high`, `normal` or `low`, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}
