//! Validation at the edge: a wire [`JobRequest`] becomes a [`ValidJob`], or a [`ValidationError`]
//! naming the field that broke a rule. Nothing past this point sees raw JSON.

use crate::job::{ChatMessage, JobKind, JobRequest, Priority, DEFAULT_MODEL, WIRE_VERSION};

/// Most stop strings a job may carry.
pub const MAX_STOP_STRINGS: usize = 8;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 64;
/// Longest job id, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// `max_new_tokens` when the job gives none.
pub const DEFAULT_MAX_NEW_TOKENS: u32 = 64;
/// Most alternatives `logprobs` and `prompt_logprobs` may ask for at each position.
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Most samples (`n`) one job may ask for.
pub const MAX_SAMPLES: u32 = 16;

/// Bounds that depend on the worker (its model and settings), not on the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `max_new_tokens` accepted (the model's context length at most).
    pub max_new_tokens: u32,
    /// Largest prompt (or sum of message contents), in bytes.
    pub max_prompt_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_new_tokens: 8192, max_prompt_bytes: 256 * 1024 }
    }
}

/// A job broke a rule. `field` names it; `message` says what the rule is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{field}` {message}")]
pub struct ValidationError {
    /// The offending field, as spelled on the wire.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ValidationError {
    ValidationError { field, message: message.into() }
}

/// The input to the model.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    /// A plain prompt, used as is.
    Text(String),
    /// Chat messages, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
}

impl PromptInput {
    /// The prompt's bytes, or the sum of the messages' contents.
    pub fn bytes(&self) -> usize {
        match self {
            PromptInput::Text(text) => text.len(),
            PromptInput::Chat(messages) => messages.iter().map(|m| m.content.len()).sum(),
        }
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus mass in (0, 1].
    pub top_p: f64,
    /// `None` when off.
    pub top_k: Option<usize>,
    /// 1.0 means none.
    pub repetition_penalty: f32,
    /// `None`: the worker draws one at random.
    pub seed: Option<u64>,
}

/// A job that obeys every rule of the wire format. Built only by [`validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    /// The job id.
    pub id: String,
    /// What to do.
    pub kind: JobKind,
    /// The prompt or chat.
    pub input: PromptInput,
    /// Model name.
    pub model: String,
    /// At most this many new tokens.
    pub max_new_tokens: u32,
    /// Prompt plus new tokens at most (see [`ValidJob::new_token_budget`]).
    pub max_length: Option<u32>,
    /// EOS and stops are ignored until this many tokens exist.
    pub min_new_tokens: u32,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Generated tokens' log-probs with this many alternatives each.
    pub logprobs: Option<u32>,
    /// Prompt tokens' log-probs with this many alternatives each.
    pub prompt_logprobs: Option<u32>,
    /// Samples of the prompt (1 unless the job asked for more).
    pub n: u32,
    /// The output format the generated text must follow.
    pub format: Option<crate::format::OutputFormat>,
    /// Queue priority.
    pub priority: Priority,
    /// Unix ms after which the job expires.
    pub deadline_ms: Option<u64>,
    /// Stream chunks to Redis.
    pub stream: bool,
    /// Batch id.
    pub batch: Option<String>,
}

impl ValidJob {
    /// New tokens this job may generate after a prompt of `prompt_tokens`: `max_new_tokens`,
    /// within `max_length` (prompt plus new) when given, and at least one (as a Hugging Face
    /// pipeline does when the prompt alone reaches `max_length`).
    pub fn new_token_budget(&self, prompt_tokens: usize) -> usize {
        let max_new = self.max_new_tokens as usize;
        match self.max_length {
            Some(total) => max_new.min((total as usize).saturating_sub(prompt_tokens)).max(1),
            None => max_new,
        }
    }
}

fn check_id(field: &'static str, id: &str) -> Result<(), ValidationError> {
    if id.is_empty() || id.chars().count() > MAX_ID_CHARS {
        return Err(invalid(field, format!("must be 1..={MAX_ID_CHARS} characters")));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))) {
        return Err(invalid(field, format!("may contain only [A-Za-z0-9._:-], found {c:?}")));
    }
    Ok(())
}

/// Checks a job id against the wire-format rule (1..128 chars of `[A-Za-z0-9._:-]`).
pub fn check_job_id(id: &str) -> Result<(), ValidationError> {
    check_id("id", id)
}

fn check_input(req: &JobRequest, limits: &Limits) -> Result<PromptInput, ValidationError> {
    let input = match (&req.prompt, &req.messages) {
        (Some(_), Some(_)) => return Err(invalid("prompt", "and `messages` are exclusive: give exactly one")),
        (None, None) => return Err(invalid("prompt", "is required (or `messages`)")),
        (Some(p), None) => {
            if p.is_empty() {
                return Err(invalid("prompt", "must not be empty"));
            }
            if p.len() > limits.max_prompt_bytes {
                return Err(invalid("prompt", format!("is {} bytes, over the limit of {}", p.len(), limits.max_prompt_bytes)));
            }
            PromptInput::Text(p.clone())
        }
        (None, Some(msgs)) => {
            if msgs.is_empty() {
                return Err(invalid("messages", "must hold at least one message"));
            }
            if let Some(m) = msgs.iter().find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant")) {
                return Err(invalid("messages", format!("role {:?} is not one of system, user, assistant", m.role)));
            }
            let total: usize = msgs.iter().map(|m| m.content.len()).sum();
            if total > limits.max_prompt_bytes {
                return Err(invalid("messages", format!("hold {total} bytes, over the limit of {}", limits.max_prompt_bytes)));
            }
            PromptInput::Chat(msgs.clone())
        }
    };
    Ok(input)
}

fn check_sampling(req: &JobRequest) -> Result<SamplingParams, ValidationError> {
    let temperature = req.temperature.unwrap_or(1.0);
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(invalid("temperature", "must be a number >= 0"));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid("top_p", "must be > 0.0 and <= 1.0"));
    }
    let repetition_penalty = req.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
        return Err(invalid("repetition_penalty", "must be > 0"));
    }
    let top_k = match req.top_k.unwrap_or(0) {
        0 => None,
        k => Some(k as usize),
    };
    Ok(SamplingParams { temperature, top_p, top_k, repetition_penalty: repetition_penalty as f32, seed: req.seed })
}

fn check_stop(req: &JobRequest) -> Result<Vec<String>, ValidationError> {
    let stop = req.stop.clone().unwrap_or_default();
    if stop.len() > MAX_STOP_STRINGS {
        return Err(invalid("stop", format!("holds {} strings, at most {MAX_STOP_STRINGS} are allowed", stop.len())));
    }
    if let Some(s) = stop.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(invalid("stop", format!("entry {s:?} must be 1..={MAX_STOP_BYTES} bytes")));
    }
    Ok(stop)
}

/// Checks every rule of wire format v1. `id` must already be set (the producer fills it in;
/// a worker receiving a job without one uses the AMQP `message_id`).
pub fn validate(req: &JobRequest, limits: &Limits) -> Result<ValidJob, ValidationError> {
    if req.v != WIRE_VERSION {
        return Err(invalid("v", format!("is {}, only {WIRE_VERSION} is accepted", req.v)));
    }
    let id = req.id.clone().ok_or_else(|| invalid("id", "is required"))?;
    check_id("id", &id)?;
    let input = check_input(req, limits)?;
    let model = req.model.clone().unwrap_or_else(|| DEFAULT_MODEL.to_string());
    if model.is_empty() || model.len() > 128 || !model.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(invalid("model", "must be 1..=128 characters of [A-Za-z0-9._-]"));
    }
    if req.max_length == Some(0) {
        return Err(invalid("max_length", "must be >= 1"));
    }
    let max_new_tokens = match (req.max_new_tokens, req.max_length) {
        (Some(n), _) => n,
        (None, Some(total)) => total.min(limits.max_new_tokens),
        (None, None) => DEFAULT_MAX_NEW_TOKENS,
    };
    if max_new_tokens == 0 || max_new_tokens > limits.max_new_tokens {
        return Err(invalid("max_new_tokens", format!("must be 1..={}", limits.max_new_tokens)));
    }
    let min_new_tokens = req.min_new_tokens.unwrap_or(0);
    if min_new_tokens > max_new_tokens {
        return Err(invalid("min_new_tokens", format!("must be <= max_new_tokens ({max_new_tokens})")));
    }
    let sampling = check_sampling(req)?;
    let stop = check_stop(req)?;
    if let Some(b) = &req.batch {
        check_id("batch", b)?;
    }
    for (field, k) in [("logprobs", req.logprobs), ("prompt_logprobs", req.prompt_logprobs)] {
        if k.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return Err(invalid(field, format!("must be 0..={MAX_TOP_LOGPROBS}")));
        }
    }
    if req.kind == JobKind::Score && req.logprobs.is_some() {
        return Err(invalid("logprobs", "is for generated tokens; a score job generates none (use prompt_logprobs)"));
    }
    let n = req.n.unwrap_or(1);
    if n == 0 || n > MAX_SAMPLES {
        return Err(invalid("n", format!("must be 1..={MAX_SAMPLES}")));
    }
    if n > 1 && req.kind == JobKind::Score {
        return Err(invalid("n", "is for generate jobs; a score job samples nothing"));
    }
    if n > 1 && req.stream == Some(true) {
        return Err(invalid("n", "above 1 cannot be streamed"));
    }
    if let Some(format) = &req.format {
        if req.kind == JobKind::Score {
            return Err(invalid("format", "is for generate jobs; a score job generates nothing"));
        }
        format.check().map_err(|e| invalid("format", e))?;
    }
    Ok(ValidJob {
        id,
        kind: req.kind,
        input,
        model,
        max_new_tokens,
        max_length: req.max_length,
        min_new_tokens,
        sampling,
        stop,
        logprobs: req.logprobs,
        prompt_logprobs: req.prompt_logprobs,
        n,
        format: req.format.clone(),
        priority: req.priority(),
        deadline_ms: req.deadline_ms,
        stream: req.stream.unwrap_or(false),
        batch: req.batch.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(json: &str) -> Result<ValidJob, ValidationError> {
        let req: JobRequest = serde_json::from_str(json).expect("parses");
        validate(&req, &Limits::default())
    }

    #[test]
    fn defaults_fill_every_optional_field() {
        let j = job(r#"{"id":"a","prompt":"hi"}"#).expect("valid");
        assert_eq!(j.model, DEFAULT_MODEL);
        assert_eq!(j.max_new_tokens, 64);
        assert_eq!(j.sampling.temperature, 1.0);
        assert_eq!(j.sampling.top_k, None);
        assert_eq!(j.priority, Priority::Normal);
        assert!(!j.stream);
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let cases = [
            (r#"{"id":"a","prompt":"hi","v":2}"#, "v"),
            (r#"{"id":"a b","prompt":"hi"}"#, "id"),
            (r#"{"id":"a"}"#, "prompt"),
            (r#"{"id":"a","prompt":""}"#, "prompt"),
            (r#"{"id":"a","prompt":"x","messages":[{"role":"user","content":"y"}]}"#, "prompt"),
            (r#"{"id":"a","messages":[]}"#, "messages"),
            (r#"{"id":"a","messages":[{"role":"robot","content":"y"}]}"#, "messages"),
            (r#"{"id":"a","prompt":"hi","max_new_tokens":0}"#, "max_new_tokens"),
            (r#"{"id":"a","prompt":"hi","max_new_tokens":9000}"#, "max_new_tokens"),
            (r#"{"id":"a","prompt":"hi","max_new_tokens":4,"min_new_tokens":5}"#, "min_new_tokens"),
            (r#"{"id":"a","prompt":"hi","logprobs":21}"#, "logprobs"),
            (r#"{"id":"a","prompt":"hi","prompt_logprobs":21}"#, "prompt_logprobs"),
            (r#"{"id":"a","kind":"score","prompt":"hi there","logprobs":1}"#, "logprobs"),
            (r#"{"id":"a","prompt":"hi","n":0}"#, "n"),
            (r#"{"id":"a","prompt":"hi","n":17}"#, "n"),
            (r#"{"id":"a","kind":"score","prompt":"hi there","n":2}"#, "n"),
            (r#"{"id":"a","prompt":"hi","n":2,"stream":true}"#, "n"),
            (r#"{"id":"a","prompt":"hi","max_length":0}"#, "max_length"),
            (r#"{"id":"a","prompt":"hi","temperature":-1}"#, "temperature"),
            (r#"{"id":"a","prompt":"hi","top_p":0}"#, "top_p"),
            (r#"{"id":"a","prompt":"hi","top_p":1.5}"#, "top_p"),
            (r#"{"id":"a","prompt":"hi","repetition_penalty":0}"#, "repetition_penalty"),
            (r#"{"id":"a","prompt":"hi","stop":["1","2","3","4","5","6","7","8","9"]}"#, "stop"),
            (r#"{"id":"a","prompt":"hi","stop":[""]}"#, "stop"),
            (r#"{"id":"a","prompt":"hi","model":"no/slash"}"#, "model"),
            (r#"{"id":"a","prompt":"hi","batch":"b c"}"#, "batch"),
        ];
        for (json, field) in cases {
            let err = job(json).expect_err(json);
            assert_eq!(err.field, field, "{json}: {err}");
            assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
        }
    }

    #[test]
    fn max_length_bounds_prompt_plus_new_tokens_with_at_least_one_new() {
        let j = job(r#"{"id":"a","prompt":"hi","max_length":50}"#).expect("valid");
        assert_eq!(j.max_new_tokens, 50, "max_length alone sets the new-token bound");
        assert_eq!(j.new_token_budget(30), 20);
        assert_eq!(j.new_token_budget(50), 1);
        assert_eq!(j.new_token_budget(80), 1);
        let j = job(r#"{"id":"a","prompt":"hi","max_length":50,"max_new_tokens":8}"#).expect("valid");
        assert_eq!(j.new_token_budget(30), 8, "the smaller bound wins");
        assert_eq!(j.new_token_budget(45), 5);
        let j = job(r#"{"id":"a","prompt":"hi","max_length":100000}"#).expect("valid");
        assert_eq!(j.max_new_tokens, Limits::default().max_new_tokens, "capped by the model");
        assert_eq!(job(r#"{"id":"a","prompt":"hi"}"#).expect("valid").new_token_budget(10_000), 64);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<JobRequest>(r#"{"prompt":"hi","max_tokens":5}"#).expect_err("unknown");
        assert!(err.to_string().contains("max_tokens"), "{err}");
    }

    #[test]
    fn oversized_prompt_is_refused() {
        let req = JobRequest { id: Some("a".into()), ..JobRequest::prompt("x".repeat(100)) };
        let err = validate(&req, &Limits { max_new_tokens: 10, max_prompt_bytes: 50 }).expect_err("too big");
        assert_eq!(err.field, "prompt");
    }
}
