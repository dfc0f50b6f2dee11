//! OpenAI-compatible routes: `POST /v1/completions` and `POST /v1/chat/completions`, answered
//! in OpenAI's shapes with `usage`, or with `stream: true` as Server-Sent Events (`data:` chunks,
//! then `data: [DONE]`).
//!
//! Log-probs: `logprobs: k` and `echo` on completions (`echo` with `max_tokens: 0` scores the
//! prompt alone, as evaluation harnesses ask), `logprobs` and `top_logprobs` on chat; not with
//! `stream: true`.
//!
//! Structured output: `response_format` (`json_object`, `json_schema`; genq's `regex` and
//! `lark`) on both routes, read by [`crate::response_format`] into the job's `format`.
//!
//! Fields OpenAI defines that genq cannot honour are refused (400 naming the field) unless they
//! hold their neutral value (`n: 1`, `presence_penalty: 0`, ...); fields OpenAI does not define
//! are refused too, so a typo never silently changes the answer. genq's own `top_k`,
//! `repetition_penalty`, `min_tokens` and `priority` are accepted as extensions.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use genq_shared::{ChatMessage, FinishReason, JobRequest, JobResult, Priority};

use super::completion::{full_response, response_id, usage};
use super::error::ApiError;
use super::jobs::{run_to_end, CancelOnDrop};
use super::logprobs;
use super::request::{body_bytes, parse_json, StopField};
use super::sse::{self, json_event, StreamItem};
use super::state::Gateway;

/// OpenAI's default `max_tokens` for completions.
const COMPLETIONS_DEFAULT_MAX_TOKENS: u32 = 16;

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and no choices) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The body of either route: one struct (serde cannot deny unknown fields through `flatten`),
/// each route refusing the other's fields.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiRequest {
    /// Model; `producer.default_model` when absent.
    pub model: Option<String>,
    /// Completions: a string, or a list holding one string.
    pub prompt: Option<PromptField>,
    /// Chat: the conversation.
    pub messages: Option<Vec<ChatIn>>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Chat: newer name of `max_tokens`.
    pub max_completion_tokens: Option<u32>,
    /// 0 is greedy.
    pub temperature: Option<f64>,
    /// Nucleus mass.
    pub top_p: Option<f64>,
    /// Seed for reproducible sampling.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Option<StopField>,
    /// Choices wanted (1 to `gateway.max_n`): samples of one job, which prefills the prompt once.
    pub n: Option<u32>,
    /// Answer as Server-Sent Events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// End-user id: accepted and ignored.
    pub user: Option<String>,
    /// Only 0.
    pub presence_penalty: Option<f64>,
    /// Only 0.
    pub frequency_penalty: Option<f64>,
    /// Only empty.
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    /// Completions: alternatives per token (0..=20); chat: a flag.
    pub logprobs: Option<serde_json::Value>,
    /// Chat: alternatives per token (0..=20), with `logprobs: true`.
    pub top_logprobs: Option<u32>,
    /// Chat: only `{"type":"text"}`.
    pub response_format: Option<serde_json::Value>,
    /// Completions: return the prompt before the completion (and its tokens' log-probs).
    pub echo: Option<bool>,
    /// Completions: only 1.
    pub best_of: Option<u32>,
    /// Completions: only absent.
    pub suffix: Option<String>,
    /// genq extension: keep the k most likely tokens.
    pub top_k: Option<u32>,
    /// genq extension: penalty on repeated tokens.
    pub repetition_penalty: Option<f64>,
    /// genq extension (vLLM's name): stop strings and the end of the turn are ignored until
    /// this many tokens exist.
    pub min_tokens: Option<u32>,
    /// genq extension: queue priority.
    pub priority: Option<Priority>,
}

/// `prompt`: OpenAI allows a string or a list; genq answers one prompt per request.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    /// One prompt.
    One(String),
    /// Several prompts (only one is accepted).
    Many(Vec<String>),
}

/// One chat message as OpenAI sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatIn {
    /// `system`, `developer` (treated as system), `user` or `assistant`.
    pub role: String,
    /// A string, or a list of `{"type":"text","text":...}` parts.
    pub content: ContentField,
    /// Participant name: accepted and ignored.
    #[serde(default)]
    pub name: Option<String>,
}

/// Message content: a string or text parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ContentField {
    /// Plain text.
    Text(String),
    /// Content parts; only `text` parts are accepted.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// `text` (others are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// Wire field names as an OpenAI client knows them.
pub fn openai_names(field: &'static str) -> &'static str {
    match field {
        "max_new_tokens" => "max_tokens",
        "min_new_tokens" => "min_tokens",
        "format" => "response_format",
        other => other,
    }
}

fn refuse_unless(neutral: bool, field: &str, what: &str) -> Result<(), ApiError> {
    if neutral {
        Ok(())
    } else {
        Err(ApiError::bad_field(field, format!("is not supported by genq: {what}")))
    }
}

fn not_on_route(present: bool, field: &str, route: &str) -> Result<(), ApiError> {
    refuse_unless(!present, field, &format!("it is not a field of {route}"))
}

impl OpenAiRequest {
    /// Checks the fields genq cannot honour and fills a job's sampling fields.
    fn apply(&self, job: &mut JobRequest, default_max_tokens: Option<u32>) -> Result<(), ApiError> {
        refuse_unless(self.presence_penalty.unwrap_or(0.0) == 0.0, "presence_penalty", "use `repetition_penalty`")?;
        refuse_unless(self.frequency_penalty.unwrap_or(0.0) == 0.0, "frequency_penalty", "use `repetition_penalty`")?;
        refuse_unless(self.logit_bias.as_ref().is_none_or(|m| m.is_empty()), "logit_bias", "it must be empty")?;
        if self.stream_options.is_some() && !self.streaming() {
            return Err(ApiError::bad_field("stream_options", "is only allowed with `stream: true`"));
        }
        job.model = self.model.clone();
        job.max_new_tokens = self.max_tokens.or(default_max_tokens);
        job.min_new_tokens = self.min_tokens;
        job.temperature = self.temperature;
        job.top_p = self.top_p;
        job.seed = self.seed;
        job.stop = self.stop.clone().map(StopField::into_vec);
        job.top_k = self.top_k;
        job.repetition_penalty = self.repetition_penalty;
        job.priority = self.priority;
        job.stream = self.streaming().then_some(true);
        job.format = crate::response_format::output_format(self.response_format.as_ref())?;
        Ok(())
    }

    fn streaming(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// How many choices: `n`, within 1..=`max_n` (at most the wire format's 16); one when
    /// streaming.
    pub(crate) fn choices(&self, max_n: u32) -> Result<u32, ApiError> {
        let max_n = max_n.min(genq_shared::valid::MAX_SAMPLES);
        let n = self.n.unwrap_or(1);
        if n == 0 || n > max_n {
            return Err(ApiError::invalid_value("n", format!("must be 1..={max_n} (gateway.max_n)")));
        }
        if n > 1 && self.streaming() {
            return Err(ApiError::bad_field("n", "is not supported above 1 with `stream: true`"));
        }
        Ok(n)
    }

    fn echo(&self) -> bool {
        self.echo.unwrap_or(false)
    }

    /// `/v1/completions`' `logprobs`: alternatives per token, or `None` when not asked.
    fn completion_logprobs(&self) -> Result<Option<u32>, ApiError> {
        match &self.logprobs {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(k) if k <= u64::from(logprobs::MAX_TOP) => Ok(Some(k as u32)),
                _ => Err(ApiError::invalid_value("logprobs", format!("must be an integer 0..={} on /v1/completions", logprobs::MAX_TOP))),
            },
        }
    }

    /// `/v1/chat/completions`' `logprobs` and `top_logprobs`: alternatives per token, or `None`.
    fn chat_logprobs(&self) -> Result<Option<u32>, ApiError> {
        let asked = match &self.logprobs {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::invalid_value("logprobs", "must be true or false on /v1/chat/completions")),
        };
        match (asked, self.top_logprobs) {
            (false, None) => Ok(None),
            (false, Some(_)) => Err(ApiError::bad_field("top_logprobs", "requires `logprobs: true`")),
            (true, Some(k)) if k > logprobs::MAX_TOP => Err(ApiError::invalid_value("top_logprobs", format!("must be 0..={}", logprobs::MAX_TOP))),
            (true, k) => Ok(Some(k.unwrap_or(0))),
        }
    }

    fn refuse_streamed_logprobs(&self, asked: bool) -> Result<(), ApiError> {
        if self.streaming() && asked {
            return Err(ApiError::bad_field("logprobs", "is not supported with `stream: true`"));
        }
        Ok(())
    }

    fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }

    /// The job a `/v1/completions` request asks for.
    pub fn completion_job(&self) -> Result<JobRequest, ApiError> {
        const ROUTE: &str = "/v1/completions";
        not_on_route(self.messages.is_some(), "messages", ROUTE)?;
        not_on_route(self.max_completion_tokens.is_some(), "max_completion_tokens", ROUTE)?;
        not_on_route(self.top_logprobs.is_some(), "top_logprobs", ROUTE)?;
        let k = self.completion_logprobs()?;
        self.refuse_streamed_logprobs(k.is_some())?;
        if self.echo() && self.streaming() {
            return Err(ApiError::bad_field("echo", "is not supported with `stream: true`"));
        }
        refuse_unless(self.best_of.unwrap_or(1) == 1, "best_of", "only best_of=1")?;
        refuse_unless(self.suffix.is_none(), "suffix", "insertion is not supported")?;
        let prompt = match &self.prompt {
            Some(PromptField::One(p)) => p.clone(),
            Some(PromptField::Many(v)) if v.len() == 1 => v[0].clone(),
            Some(PromptField::Many(_)) => return Err(ApiError::bad_field("prompt", "must be one string (one prompt per request)")),
            None => return Err(ApiError::bad_field("prompt", "is required")),
        };
        let mut job = JobRequest::prompt(prompt);
        self.apply(&mut job, Some(COMPLETIONS_DEFAULT_MAX_TOKENS))?;
        job.logprobs = k;
        if self.echo() {
            job.prompt_logprobs = k;
        }
        if self.max_tokens == Some(0) {
            if !self.echo() {
                return Err(ApiError::invalid_value("max_tokens", "must be >= 1 (0 only with `echo: true`, to score the prompt)"));
            }
            // The prompt alone, scored: a score job.
            job.kind = genq_shared::JobKind::Score;
            job.max_new_tokens = None;
            job.logprobs = None;
        }
        Ok(job)
    }

    /// The job a `/v1/chat/completions` request asks for.
    pub fn chat_job(&self) -> Result<JobRequest, ApiError> {
        const ROUTE: &str = "/v1/chat/completions";
        not_on_route(self.prompt.is_some(), "prompt", ROUTE)?;
        not_on_route(self.echo.is_some(), "echo", ROUTE)?;
        not_on_route(self.best_of.is_some(), "best_of", ROUTE)?;
        not_on_route(self.suffix.is_some(), "suffix", ROUTE)?;
        let k = self.chat_logprobs()?;
        self.refuse_streamed_logprobs(k.is_some())?;
        let Some(messages_in) = &self.messages else { return Err(ApiError::bad_field("messages", "is required")) };
        let mut messages = Vec::with_capacity(messages_in.len());
        for m in messages_in {
            let role = match m.role.as_str() {
                "developer" => "system",
                r @ ("system" | "user" | "assistant") => r,
                other => return Err(ApiError::invalid_value("messages", format!("role {other:?} is not one of system, developer, user, assistant"))),
            };
            let content = match &m.content {
                ContentField::Text(t) => t.clone(),
                ContentField::Parts(parts) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => return Err(ApiError::bad_field("messages", format!("content part {kind:?} is not supported (text only)"))),
                        }
                    }
                    text
                }
            };
            messages.push(ChatMessage { role: role.to_string(), content });
        }
        let mut job = JobRequest { v: genq_shared::job::WIRE_VERSION, messages: Some(messages), ..JobRequest::default() };
        self.apply(&mut job, None)?;
        job.logprobs = k;
        if self.max_completion_tokens.is_some() {
            job.max_new_tokens = self.max_completion_tokens;
        }
        Ok(job)
    }
}

/// OpenAI's finish reason: `length`, or `stop` for a stop string or the end of the turn.
pub fn finish_reason(r: &JobResult) -> &'static str {
    match r.finish_reason {
        Some(FinishReason::Length) => "length",
        Some(FinishReason::Stop) | Some(FinishReason::Eos) | None => "stop",
    }
}

/// Unix seconds, as OpenAI's objects give times.
pub(crate) fn now_secs() -> u64 {
    genq_shared::now_ms() / 1000
}

/// Which route is answering: decides the ids, object names and chunk shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions`.
    Chat,
}

impl Route {
    /// The route's path.
    pub fn path(self) -> &'static str {
        match self {
            Route::Completions => "/v1/completions",
            Route::Chat => "/v1/chat/completions",
        }
    }

    /// The route at `path`, if it is one of the two.
    pub fn from_path(path: &str) -> Option<Route> {
        [Route::Completions, Route::Chat].into_iter().find(|r| r.path() == path)
    }
}

/// Renders stream items as OpenAI chunks.
struct ChunkWriter {
    route: Route,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
}

impl ChunkWriter {
    fn chunk(&self, choices: serde_json::Value) -> serde_json::Value {
        let object = if self.route == Route::Chat { "chat.completion.chunk" } else { "text_completion" };
        serde_json::json!({ "id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices })
    }

    fn choice(&self, text: Option<&str>, finish: Option<&str>) -> serde_json::Value {
        match self.route {
            Route::Completions => serde_json::json!([{ "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish }]),
            Route::Chat => {
                let delta = match text {
                    Some(t) => serde_json::json!({ "content": t }),
                    None => serde_json::json!({}),
                };
                serde_json::json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }])
            }
        }
    }

    /// The chat stream's first chunk: the assistant role, before any text.
    fn opening(&self) -> Option<Event> {
        (self.route == Route::Chat).then(|| {
            json_event(&self.chunk(serde_json::json!([{ "index": 0, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null }])))
        })
    }

    fn render(&mut self, item: StreamItem) -> Vec<Event> {
        match item {
            StreamItem::Text(t) => vec![json_event(&self.chunk(self.choice(Some(&t), None)))],
            StreamItem::Done(r) => {
                let mut events = vec![json_event(&self.chunk(self.choice(None, Some(finish_reason(&r)))))];
                if self.include_usage {
                    let mut last = self.chunk(serde_json::json!([]));
                    last["usage"] = serde_json::to_value(usage(&r)).unwrap_or_default();
                    events.push(json_event(&last));
                }
                events
            }
            StreamItem::Error(e) => vec![json_event(&e.body())],
        }
    }
}

/// `job` asking for `n` samples: one job whose prompt is prefilled once, sample `i` drawing with
/// seed `seed + i`. A scored prompt (`echo` with `max_tokens: 0`) is the same for every choice,
/// so it runs once.
pub(crate) fn with_samples(job: JobRequest, n: u32) -> JobRequest {
    if n <= 1 || job.kind == genq_shared::JobKind::Score {
        return job;
    }
    JobRequest { n: Some(n), ..job }
}

fn with_job_header(mut response: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-genq-job-id", v);
    }
    response
}

async fn answer(gw: Gateway, route: Route, job: JobRequest, common: &OpenAiRequest) -> Result<Response, ApiError> {
    let model = job.model.clone().unwrap_or_else(|| gw.default_model().to_string());
    let n = common.choices(gw.settings().gateway.max_n)?;
    if !common.streaming() {
        let prompt = job.prompt.clone().unwrap_or_default();
        let job = with_samples(job, n);
        let result = run_to_end(&gw, job, openai_names).await?;
        let echo = (route == Route::Completions && common.echo()).then_some(prompt.as_str());
        let body = serde_json::to_string(&full_response(route, &result, n, &model, echo)).map_err(|e| ApiError::internal(e.to_string()))?;
        let response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        return Ok(with_job_header(response, &result.id));
    }
    let results = gw.results().await?;
    let id = gw.submit(job, openai_names).await?;
    let guard = CancelOnDrop::new(id.clone(), results);
    let items = sse::follow(gw, id.clone(), guard);
    let mut writer = ChunkWriter { route, id: response_id(route, &id), model, created: now_secs(), include_usage: common.include_usage() };
    let mut opening = writer.opening();
    let response = sse::respond(items, move |item| {
        let mut events: Vec<Event> = opening.take().into_iter().collect();
        events.extend(writer.render(item));
        events
    });
    Ok(with_job_header(response, &id))
}

/// `POST /v1/completions`.
pub async fn completions(State(gw): State<Gateway>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let bytes = body_bytes(body, gw.settings().gateway.max_body_bytes)?;
    let req: OpenAiRequest = parse_json(&bytes)?;
    let job = req.completion_job()?;
    answer(gw, Route::Completions, job, &req).await
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(gw): State<Gateway>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let bytes = body_bytes(body, gw.settings().gateway.max_body_bytes)?;
    let req: OpenAiRequest = parse_json(&bytes)?;
    let job = req.chat_job()?;
    answer(gw, Route::Chat, job, &req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn a_completion_request_becomes_a_job_with_openai_defaults() {
        let req: OpenAiRequest =
            parse_json(br#"{"model":"m","prompt":["Once"],"temperature":0,"stop":"\n","seed":3,"n":1,"user":"u"}"#).expect("parses");
        let job = req.completion_job().expect("valid");
        assert_eq!(job.prompt.as_deref(), Some("Once"));
        assert_eq!(job.max_new_tokens, Some(16), "OpenAI's default max_tokens");
        assert_eq!(job.stop, Some(vec!["\n".to_string()]));
        assert_eq!(job.model.as_deref(), Some("m"));
        assert_eq!(job.stream, None);
    }

    #[test]
    fn choices_are_samples_of_one_job_within_the_limit() {
        let req: OpenAiRequest = parse_json(br#"{"prompt":"x","n":3,"seed":7}"#).expect("parses");
        assert_eq!(req.choices(8).expect("within the limit"), 3);
        let job = with_samples(req.completion_job().expect("valid"), 3);
        assert_eq!((job.n, job.seed), (Some(3), Some(7)));
        let scored: OpenAiRequest = parse_json(br#"{"prompt":"x y","echo":true,"max_tokens":0,"logprobs":0,"n":2}"#).expect("parses");
        assert_eq!(with_samples(scored.completion_job().expect("valid"), 2).n, None, "a scored prompt runs once");
        let e = req.choices(2).expect_err("above gateway.max_n");
        assert_eq!((e.status, e.param.as_deref()), (StatusCode::UNPROCESSABLE_ENTITY, Some("n")));
        let streamed: OpenAiRequest = parse_json(br#"{"prompt":"x","n":2,"stream":true}"#).expect("parses");
        assert_eq!(streamed.choices(8).expect_err("streamed").param.as_deref(), Some("n"));
        let zero: OpenAiRequest = parse_json(br#"{"prompt":"x","n":0}"#).expect("parses");
        assert!(zero.choices(8).is_err());
    }

    #[test]
    fn an_unknown_field_is_refused_naming_it() {
        let e = parse_json::<OpenAiRequest>(br#"{"messages":[],"temprature":1}"#).expect_err("typo");
        assert_eq!(e.param.as_deref(), Some("temprature"), "{e}");
    }

    #[test]
    fn chat_content_parts_and_developer_role_are_understood() {
        let req: OpenAiRequest = parse_json(
            br#"{"messages":[{"role":"developer","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],"max_completion_tokens":5,"stream":true}"#,
        )
        .expect("parses");
        let job = req.chat_job().expect("valid");
        let msgs = job.messages.expect("messages");
        assert_eq!(msgs[0].role, "system");
        assert_eq!(msgs[1].content, "Hi there");
        assert_eq!(job.max_new_tokens, Some(5));
        assert_eq!(job.stream, Some(true));
    }

    #[test]
    fn a_field_of_the_other_route_is_refused() {
        let req: OpenAiRequest = parse_json(br#"{"prompt":"x","messages":[{"role":"user","content":"y"}]}"#).expect("parses");
        assert_eq!(req.completion_job().expect_err("messages").param.as_deref(), Some("messages"));
        assert_eq!(req.chat_job().expect_err("prompt").param.as_deref(), Some("prompt"));
    }

    #[test]
    fn a_tool_message_is_422_naming_messages() {
        let req: OpenAiRequest = parse_json(br#"{"messages":[{"role":"tool","content":"x"}]}"#).expect("parses");
        let e = req.chat_job().expect_err("tool role");
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.param.as_deref(), Some("messages"));
    }

    #[test]
    fn log_prob_requests_become_job_fields() {
        let job = |body: &[u8]| parse_json::<OpenAiRequest>(body).expect("parses").completion_job();
        let j = job(br#"{"prompt":"a b","logprobs":2}"#).expect("valid");
        assert_eq!((j.logprobs, j.prompt_logprobs), (Some(2), None));
        let j = job(br#"{"prompt":"a b","logprobs":1,"echo":true,"max_tokens":0}"#).expect("valid");
        assert_eq!((j.kind, j.logprobs, j.prompt_logprobs, j.max_new_tokens), (genq_shared::JobKind::Score, None, Some(1), None));
        let refused = |body: &[u8]| job(body).expect_err("refused").param;
        assert_eq!(refused(br#"{"prompt":"a","max_tokens":0}"#).as_deref(), Some("max_tokens"));
        assert_eq!(refused(br#"{"prompt":"a","logprobs":21}"#).as_deref(), Some("logprobs"));
        assert_eq!(refused(br#"{"prompt":"a","logprobs":true}"#).as_deref(), Some("logprobs"));
        assert_eq!(refused(br#"{"prompt":"a","logprobs":1,"stream":true}"#).as_deref(), Some("logprobs"));
        let chat = |body: &[u8]| parse_json::<OpenAiRequest>(body).expect("parses").chat_job();
        let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
        let j = chat(format!(r#"{{{msgs},"logprobs":true,"top_logprobs":3}}"#).as_bytes()).expect("valid");
        assert_eq!((j.logprobs, j.prompt_logprobs), (Some(3), None));
        assert_eq!(chat(format!(r#"{{{msgs},"logprobs":false}}"#).as_bytes()).expect("valid").logprobs, None);
        let e = chat(format!(r#"{{{msgs},"top_logprobs":3}}"#).as_bytes()).expect_err("needs logprobs");
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
    }
}
