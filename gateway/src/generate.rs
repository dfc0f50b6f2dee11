//! `POST /generate`: the original API, unchanged: `{"text": ...}` in,
//! `{"originalText": ..., "generatedText": ...}` out.
//!
//! The original ran a Hugging Face text-generation pipeline with `max_length=50`, and this route
//! keeps its semantics: greedy unless asked otherwise (the pipeline's `do_sample=False`),
//! `generatedText` is the prompt followed by its continuation (`return_full_text=True`), and at
//! most 50 tokens in total. The job carries `max_length`, and the worker, which holds the
//! model's tokenizer, generates `max_length - prompt tokens` new tokens (at least one, as the
//! pipeline does). Giving `max_new_tokens` sets the number instead. Optional genq fields are
//! accepted too.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use genq_shared::{JobRequest, Priority};

use super::error::{same_name, ApiError};
use super::jobs::run_to_end;
use super::request::{body_bytes, parse_json, StopField};
use super::state::Gateway;

/// The original pipeline's `max_length`: prompt and continuation together, in tokens.
pub const DEFAULT_MAX_LENGTH: u32 = 50;

/// The request: the original's `text`, plus optional genq fields.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// The prompt.
    pub text: String,
    /// Prompt plus continuation, in the model's tokens (default 50).
    pub max_length: Option<u32>,
    /// Exactly this many new tokens at most; overrides `max_length`.
    pub max_new_tokens: Option<u32>,
    /// Stop strings and the end of text are ignored until this many tokens exist.
    pub min_new_tokens: Option<u32>,
    /// Whether `generatedText` starts with the prompt (default true, like the original).
    pub return_full_text: Option<bool>,
    /// Sampling temperature (default 0: greedy, like the original).
    pub temperature: Option<f64>,
    /// Nucleus mass.
    pub top_p: Option<f64>,
    /// Keep the k most likely tokens.
    pub top_k: Option<u32>,
    /// Penalty on repeated tokens.
    pub repetition_penalty: Option<f64>,
    /// Sampling seed.
    pub seed: Option<u64>,
    /// Stop strings (a string or a list).
    pub stop: Option<StopField>,
    /// Model; `producer.default_model` when absent.
    pub model: Option<String>,
    /// Queue priority.
    pub priority: Option<Priority>,
    /// Job id (and idempotency key); a UUID when absent.
    pub id: Option<String>,
}

/// The original response, field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateResponse {
    /// The request's `text`.
    #[serde(rename = "originalText")]
    pub original_text: String,
    /// The prompt and its continuation (or the continuation alone with `return_full_text: false`).
    #[serde(rename = "generatedText")]
    pub generated_text: String,
}

impl GenerateRequest {
    /// The job this request asks for.
    pub fn to_job(&self) -> Result<JobRequest, ApiError> {
        if self.text.is_empty() {
            return Err(ApiError::invalid_value("text", "must not be empty"));
        }
        if self.max_length == Some(0) {
            return Err(ApiError::invalid_value("max_length", "must be >= 1"));
        }
        // `max_new_tokens` overrides `max_length`; without it the worker counts the prompt.
        let max_length = match self.max_new_tokens {
            Some(_) => None,
            None => Some(self.max_length.unwrap_or(DEFAULT_MAX_LENGTH)),
        };
        Ok(JobRequest {
            id: self.id.clone(),
            model: self.model.clone(),
            max_new_tokens: self.max_new_tokens,
            max_length,
            min_new_tokens: self.min_new_tokens,
            temperature: Some(self.temperature.unwrap_or(0.0)),
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            stop: self.stop.clone().map(StopField::into_vec),
            priority: self.priority,
            ..JobRequest::prompt(self.text.clone())
        })
    }
}

/// The wire field `prompt` is `text` here.
fn generate_names(field: &'static str) -> &'static str {
    match field {
        "prompt" => "text",
        other => same_name(other),
    }
}

/// `POST /generate`. The job id is in the `x-genq-job-id` header, so the body stays exactly
/// the original's.
pub async fn generate(State(gw): State<Gateway>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let bytes = body_bytes(body, gw.settings().gateway.max_body_bytes)?;
    let req: GenerateRequest = parse_json(&bytes)?;
    let job = req.to_job()?;
    let result = run_to_end(&gw, job, generate_names).await?;
    let continuation = result.text.clone().unwrap_or_default();
    let generated_text = if req.return_full_text.unwrap_or(true) { format!("{}{continuation}", req.text) } else { continuation };
    let body = serde_json::to_string(&GenerateResponse { original_text: req.text, generated_text })
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Ok(v) = HeaderValue::from_str(&result.id) {
        response.headers_mut().insert("x-genq-job-id", v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn the_original_request_becomes_a_greedy_job() {
        let req: GenerateRequest = parse_json(br#"{"text":"Hello"}"#).expect("parses");
        let job = req.to_job().expect("valid");
        assert_eq!(job.prompt.as_deref(), Some("Hello"));
        assert_eq!(job.temperature, Some(0.0));
        assert_eq!((job.max_length, job.max_new_tokens), (Some(DEFAULT_MAX_LENGTH), None), "the worker counts the prompt");
        let req: GenerateRequest = parse_json(br#"{"text":"Hello","max_length":20}"#).expect("parses");
        assert_eq!(req.to_job().expect("valid").max_length, Some(20));
        let req: GenerateRequest = parse_json(br#"{"text":"Hello","max_new_tokens":7,"temperature":0.8,"seed":1}"#).expect("parses");
        let job = req.to_job().expect("valid");
        assert_eq!((job.max_length, job.max_new_tokens), (None, Some(7)), "max_new_tokens overrides max_length");
    }

    #[test]
    fn the_response_has_exactly_the_original_fields() {
        let body = serde_json::to_value(GenerateResponse { original_text: "a".into(), generated_text: "ab".into() }).expect("json");
        assert_eq!(body, serde_json::json!({"originalText": "a", "generatedText": "ab"}));
    }

    #[test]
    fn an_empty_text_is_422_naming_text() {
        let req: GenerateRequest = parse_json(br#"{"text":""}"#).expect("parses");
        let e = req.to_job().expect_err("empty");
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.param.as_deref(), Some("text"));
    }
}
