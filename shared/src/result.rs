//! Job statuses, finish reasons and the result record kept in the job's Redis hash.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Where a job is in its life. The last four are final: written once, never overwritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Published and confirmed, not yet picked up.
    Queued,
    /// A worker is on it.
    Running,
    /// Finished with a result.
    Done,
    /// Broke a rule or could not run; `error` says why.
    Failed,
    /// Its deadline passed; `text` holds what was generated so far.
    Expired,
    /// Cancelled by a client.
    Cancelled,
}

impl JobStatus {
    /// Every status, in life order.
    pub const ALL: [JobStatus; 6] =
        [JobStatus::Queued, JobStatus::Running, JobStatus::Done, JobStatus::Failed, JobStatus::Expired, JobStatus::Cancelled];

    /// The name used in Redis and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Expired => "expired",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a Redis status string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True for done, failed, expired and cancelled.
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// `max_new_tokens` (or the context length) reached.
    Length,
    /// A stop string matched.
    Stop,
    /// The model produced an end-of-sequence token.
    Eos,
}

impl FinishReason {
    /// The name used in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
            FinishReason::Eos => "eos",
        }
    }
}

/// Fixed error categories, usable as metric labels.
pub mod error_kind {
    /// The job broke a wire-format rule.
    pub const INVALID: &str = "invalid";
    /// The job is valid but this worker's model cannot run it (e.g. the prompt exceeds the context).
    pub const UNSUPPORTED: &str = "unsupported";
    /// The engine failed while running the job.
    pub const ENGINE: &str = "engine";
    /// The job kept killing the workers that ran it, even alone; it is dead-lettered.
    pub const POISON: &str = "poison";
}

/// One token's log-prob, with the most likely tokens at its position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// Token id.
    pub id: u32,
    /// The token's text as it reads inside running text (a piece of a character shows as U+FFFD).
    pub token: String,
    /// `log p(token | the tokens before it)`; `null` for a prompt's first token.
    pub logprob: Option<f64>,
    /// The most likely tokens at this position, most likely first (as many as the job asked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<TopLogprob>,
}

/// One of the most likely tokens at a position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// Token id.
    pub id: u32,
    /// The token decoded alone.
    pub token: String,
    /// Its log-prob at this position.
    pub logprob: f64,
}

/// A job's result as kept in its Redis hash. Every field but `id` and `status` is optional, since
/// a job that failed validation has no tokens and a queued one has no text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct JobResult {
    /// The job id.
    pub id: String,
    /// Current status.
    pub status: Option<JobStatus>,
    /// `generate` or `score`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Model name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Generated text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Why generation stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    /// Tokens in the prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    /// Tokens generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    /// Score jobs: log-prob of each prompt token after the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<f64>>,
    /// Score jobs: `exp(-mean log-prob)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Jobs that asked for `logprobs`: one entry per generated token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_logprobs: Option<Vec<TokenLogprob>>,
    /// Jobs that asked for `prompt_logprobs`: one entry per prompt token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<Vec<TokenLogprob>>,
    /// What went wrong, naming the field where one is at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// One of [`error_kind`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// Worker that wrote the result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Deliveries of this job that reached a worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u64>,
    /// Publish time (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<u64>,
    /// Start of work (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// First generated token (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<u64>,
    /// Final status written (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

impl JobResult {
    /// The hash fields this result sets, as Redis field/value pairs (absent fields are skipped).
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut f: Vec<(&'static str, String)> = Vec::with_capacity(16);
        let mut put = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                f.push((k, v));
            }
        };
        put("status", self.status.map(|s| s.as_str().to_string()));
        put("kind", self.kind.clone());
        put("model", self.model.clone());
        put("text", self.text.clone());
        put("finish_reason", self.finish_reason.map(|r| r.as_str().to_string()));
        put("prompt_tokens", self.prompt_tokens.map(|v| v.to_string()));
        put("completion_tokens", self.completion_tokens.map(|v| v.to_string()));
        put("logprobs", self.logprobs.as_ref().and_then(|v| serde_json::to_string(v).ok()));
        put("perplexity", self.perplexity.map(|v| v.to_string()));
        put("token_logprobs", self.token_logprobs.as_ref().and_then(|v| serde_json::to_string(v).ok()));
        put("prompt_logprobs", self.prompt_logprobs.as_ref().and_then(|v| serde_json::to_string(v).ok()));
        put("error", self.error.clone());
        put("error_kind", self.error_kind.clone());
        put("worker", self.worker.clone());
        put("attempts", self.attempts.map(|v| v.to_string()));
        put("created_ms", self.created_ms.map(|v| v.to_string()));
        put("started_ms", self.started_ms.map(|v| v.to_string()));
        put("first_token_ms", self.first_token_ms.map(|v| v.to_string()));
        put("finished_ms", self.finished_ms.map(|v| v.to_string()));
        f
    }

    /// Rebuilds a result from the job's Redis hash. Unparseable numbers are left out.
    pub fn from_fields(id: &str, h: &HashMap<String, String>) -> Self {
        Self::from_pairs(id, h.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// Rebuilds a result from the job's Redis hash as field/value pairs, in one pass and without
    /// building a map first (results are read by the thousand). Unknown fields and unparseable
    /// numbers are left out.
    pub fn from_pairs<'a>(id: &str, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut r = JobResult { id: id.to_string(), ..JobResult::default() };
        for (k, v) in pairs {
            let num = || v.parse::<u64>().ok();
            match k {
                "status" => r.status = JobStatus::parse(v),
                "kind" => r.kind = Some(v.to_string()),
                "model" => r.model = Some(v.to_string()),
                "text" => r.text = Some(v.to_string()),
                "finish_reason" => r.finish_reason = serde_json::from_value(serde_json::Value::String(v.to_string())).ok(),
                "prompt_tokens" => r.prompt_tokens = num(),
                "completion_tokens" => r.completion_tokens = num(),
                "logprobs" => r.logprobs = serde_json::from_str(v).ok(),
                "perplexity" => r.perplexity = v.parse().ok(),
                "token_logprobs" => r.token_logprobs = serde_json::from_str(v).ok(),
                "prompt_logprobs" => r.prompt_logprobs = serde_json::from_str(v).ok(),
                "error" => r.error = Some(v.to_string()),
                "error_kind" => r.error_kind = Some(v.to_string()),
                "worker" => r.worker = Some(v.to_string()),
                "attempts" => r.attempts = num(),
                "created_ms" => r.created_ms = num(),
                "started_ms" => r.started_ms = num(),
                "first_token_ms" => r.first_token_ms = num(),
                "finished_ms" => r.finished_ms = num(),
                _ => {}
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_survives_a_trip_through_redis_fields() {
        let r = JobResult {
            id: "x".into(),
            status: Some(JobStatus::Done),
            text: Some("hello".into()),
            finish_reason: Some(FinishReason::Eos),
            completion_tokens: Some(3),
            logprobs: Some(vec![-0.5, -1.25]),
            perplexity: Some(2.5),
            token_logprobs: Some(vec![TokenLogprob {
                id: 7,
                token: " hi".into(),
                logprob: Some(-0.25),
                top: vec![TopLogprob { id: 7, token: " hi".into(), logprob: -0.25 }, TopLogprob { id: 9, token: "!".into(), logprob: -2.0 }],
            }]),
            prompt_logprobs: Some(vec![TokenLogprob { id: 1, token: "<s>".into(), logprob: None, top: vec![] }]),
            ..JobResult::default()
        };
        let map: HashMap<String, String> = r.to_fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(JobResult::from_fields("x", &map), r);
    }

    #[test]
    fn only_the_last_four_statuses_are_final() {
        let finals: Vec<_> = JobStatus::ALL.into_iter().filter(|s| s.is_final()).collect();
        assert_eq!(finals, vec![JobStatus::Done, JobStatus::Failed, JobStatus::Expired, JobStatus::Cancelled]);
    }
}
