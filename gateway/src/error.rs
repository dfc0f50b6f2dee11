//! API errors in OpenAI's shape, `{"error":{"message","type","param","code"}}`, each with its
//! HTTP status, and the one place publish and result errors become HTTP answers.
//!
//! The status rule, the same on every route: 400 when the body cannot be read as the request
//! (not JSON, a field of the wrong type, an unknown or unsupported field); 422 when it can but a
//! field's value breaks a rule (`top_p` of 5); 401 bad token; 404 unknown job or model; 409 a job
//! that is already final; 413 body too large; 429 queue full; 503 RabbitMQ or Redis unreachable;
//! 504 a synchronous request that timed out.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use genq_shared::result::error_kind;
use genq_shared::{JobResult, JobStatus, ValidationError};

use genq_producer::{PublishError, ResultError};

/// An error answer. `kind` is OpenAI's `type`; `code` is a fixed, machine-readable label.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's error `type`: `invalid_request_error`, `authentication_error`, `rate_limit_error`,
    /// `timeout_error` or `server_error`.
    pub kind: &'static str,
    /// What went wrong, naming the field where one is at fault.
    pub message: String,
    /// The request field at fault, as the client spelled it.
    pub param: Option<String>,
    /// Fixed label, e.g. `model_not_found`, `queue_full`.
    pub code: Option<&'static str>,
}

const INVALID_REQUEST: &str = "invalid_request_error";
const SERVER_ERROR: &str = "server_error";

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), param: None, code: Some(code) }
    }

    fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// 400: the body is not JSON, or not the shape of the request.
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, "invalid_json", message)
    }

    /// 400: `field` has the wrong type, is unknown, or asks for something genq does not do.
    pub fn bad_field(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, "invalid_field", format!("`{field}` {message}")).with_param(field)
    }

    /// 422: `field`'s value breaks a rule.
    pub fn invalid_value(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, INVALID_REQUEST, "invalid_value", format!("`{field}` {message}"))
            .with_param(field)
    }

    /// 422 from the wire-format rules, with `rename` mapping a wire field to the name the
    /// route's clients use (`max_new_tokens` is `max_tokens` to an OpenAI client).
    pub fn from_validation(e: &ValidationError, rename: impl Fn(&'static str) -> &'static str) -> Self {
        Self::invalid_value(rename(e.field), &e.message)
    }

    /// 401: missing or unknown bearer token (which is never echoed).
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key", "missing or invalid bearer token (header `Authorization: Bearer <token>`)")
    }

    /// 404: no such job (never submitted, or its result expired).
    pub fn unknown_job(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, INVALID_REQUEST, "job_not_found", format!("job {id:?} is unknown or its result expired"))
            .with_param("id")
    }

    /// 404: no queue for the model, so no worker has ever served it.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, INVALID_REQUEST, "model_not_found", format!("model {model:?} does not exist: no worker serves it"))
            .with_param("model")
    }

    /// 404: an object (a file, a batch) that does not exist; `param` names the id's field.
    pub fn not_found(code: &'static str, param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, INVALID_REQUEST, code, message).with_param(param)
    }

    /// 404: no such route.
    pub fn no_route(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, INVALID_REQUEST, "not_found", format!("no route {path}"))
    }

    /// 409: the job is already final, so it cannot be cancelled.
    pub fn already_final(id: &str, status: JobStatus) -> Self {
        Self::new(StatusCode::CONFLICT, INVALID_REQUEST, "job_final", format!("job {id:?} already finished ({}); nothing to cancel", status.as_str()))
    }

    /// 413: the body is over `limit` bytes.
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, INVALID_REQUEST, "body_too_large", format!("request body is over the limit of {limit} bytes"))
    }

    /// 429: RabbitMQ refused the job because the queue is full.
    pub fn queue_full() -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "queue_full", "the job queue is full (backpressure); retry later")
    }

    /// 503: a service the gateway needs is unreachable.
    pub fn unavailable(service: &'static str, detail: impl std::fmt::Display) -> Self {
        let code = if service == "redis" { "redis_unavailable" } else { "broker_unavailable" };
        Self::new(StatusCode::SERVICE_UNAVAILABLE, SERVER_ERROR, code, format!("{service} is unavailable: {detail}"))
    }

    /// 504: the job did not finish within the gateway's request timeout; it has been cancelled.
    pub fn timeout(id: &str, secs: u64) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout_error", "timeout", format!("job {id} did not finish within {secs} s; it was cancelled"))
    }

    /// 500: something that should not happen.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, SERVER_ERROR, "internal", message)
    }

    /// A publish that was not accepted. `rename` maps wire field names to the route's.
    pub fn from_publish(e: &PublishError, rename: impl Fn(&'static str) -> &'static str) -> Self {
        match e {
            PublishError::Invalid(v) => Self::from_validation(v, rename),
            PublishError::Unroutable { model } => Self::model_not_found(model),
            PublishError::Nacked => Self::queue_full(),
            PublishError::Broker(b) => Self::unavailable("rabbitmq", b),
            PublishError::Encode(m) => Self::internal(format!("cannot encode the job: {m}")),
        }
    }

    /// Reading or waiting for a result failed.
    pub fn from_result(e: &ResultError) -> Self {
        match e {
            ResultError::Redis(m) => Self::unavailable("redis", m),
            ResultError::Unknown { id } => Self::unknown_job(id),
            ResultError::Timeout { id, .. } => Self::internal(format!("timed out waiting for job {id}")),
        }
    }

    /// A job that ended without a result: failed (422 when the job broke a rule the worker
    /// checks, such as the prompt not fitting the model's context; 500 when the engine failed),
    /// expired (504) or cancelled (409). `None` for a job that is done.
    pub fn from_final(r: &JobResult, rename: impl Fn(&'static str) -> &'static str) -> Option<Self> {
        let error = r.error.clone().unwrap_or_default();
        match r.status {
            Some(JobStatus::Done) => None,
            Some(JobStatus::Failed) => match r.error_kind.as_deref() {
                Some(error_kind::INVALID) | Some(error_kind::UNSUPPORTED) => Some(match named_field(&error) {
                    // The worker's message starts with the wire field at fault: the route's name for it.
                    Some((field, rest)) => Self::invalid_value(rename(field), rest),
                    None => Self::new(StatusCode::UNPROCESSABLE_ENTITY, INVALID_REQUEST, "invalid_value", error),
                }),
                _ => Some(Self::new(StatusCode::INTERNAL_SERVER_ERROR, SERVER_ERROR, "job_failed", format!("job {} failed: {error}", r.id))),
            },
            Some(JobStatus::Expired) => {
                Some(Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout_error", "job_expired", format!("job {} passed its deadline", r.id)))
            }
            Some(JobStatus::Cancelled) => {
                Some(Self::new(StatusCode::CONFLICT, INVALID_REQUEST, "job_cancelled", format!("job {} was cancelled", r.id)))
            }
            Some(JobStatus::Queued) | Some(JobStatus::Running) | None => {
                Some(Self::internal(format!("job {} is not finished", r.id)))
            }
        }
    }

    /// The JSON body: `{"error":{"message","type","param","code"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code }
        })
    }
}

/// A worker's message that starts with a wire field in backquotes: the field and the rest.
fn named_field(message: &str) -> Option<(&'static str, &str)> {
    let rest = message.strip_prefix('`')?;
    let (field, rest) = rest.split_once('`')?;
    let field = genq_shared::job::FIELDS.iter().copied().find(|f| *f == field)?;
    Some((field, rest.trim_start_matches(':').trim_start()))
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, [(header::CONTENT_TYPE, "application/json")], self.body().to_string()).into_response()
    }
}

/// Wire names unchanged.
pub fn same_name(field: &'static str) -> &'static str {
    field
}

#[cfg(test)]
mod tests {
    use super::*;
    use genq_protocol::broker::BrokerError;

    fn openai_names(field: &'static str) -> &'static str {
        if field == "max_new_tokens" { "max_tokens" } else { field }
    }

    #[test]
    fn a_rule_breaking_field_is_422_and_names_the_field_as_the_client_spells_it() {
        let e = ValidationError { field: "max_new_tokens", message: "must be 1..=8192".into() };
        let api = ApiError::from_publish(&PublishError::Invalid(e), openai_names);
        assert_eq!(api.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(api.param.as_deref(), Some("max_tokens"));
        assert_eq!(api.message, "`max_tokens` must be 1..=8192");
    }

    #[test]
    fn an_unroutable_publish_is_404_model_not_found() {
        let api = ApiError::from_publish(&PublishError::Unroutable { model: "nope".into() }, same_name);
        assert_eq!(api.status, StatusCode::NOT_FOUND);
        assert_eq!(api.code, Some("model_not_found"));
        assert_eq!(api.param.as_deref(), Some("model"));
    }

    #[test]
    fn a_full_queue_is_429_and_a_broken_broker_is_503() {
        assert_eq!(ApiError::from_publish(&PublishError::Nacked, same_name).status, StatusCode::TOO_MANY_REQUESTS);
        let broken = PublishError::Broker(BrokerError::protocol("basic.publish", lapin::Error::from(lapin::ErrorKind::InvalidChannel(1))));
        let api = ApiError::from_publish(&broken, same_name);
        assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(api.code, Some("broker_unavailable"));
    }

    #[test]
    fn redis_trouble_is_503_and_an_unknown_job_404() {
        assert_eq!(ApiError::from_result(&ResultError::Redis("connection refused".into())).status, StatusCode::SERVICE_UNAVAILABLE);
        let unknown = ApiError::from_result(&ResultError::Unknown { id: "j1".into() });
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        assert_eq!(unknown.code, Some("job_not_found"));
    }

    #[test]
    fn final_results_map_to_statuses() {
        let mut r = JobResult { id: "j".into(), status: Some(JobStatus::Done), ..JobResult::default() };
        assert_eq!(ApiError::from_final(&r, std::convert::identity), None);
        r.status = Some(JobStatus::Failed);
        r.error_kind = Some(error_kind::UNSUPPORTED.into());
        r.error = Some("`prompt` is 9000 tokens, over the context of 8192".into());
        let api = ApiError::from_final(&r, std::convert::identity).expect("an error");
        assert_eq!(api.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(api.message.contains("`prompt`"));
        assert_eq!(api.param.as_deref(), Some("prompt"), "the field a worker names is the param");
        r.error = Some("`format` cannot be compiled: unknown name".into());
        let renamed = ApiError::from_final(&r, crate::openai::openai_names).expect("an error");
        assert_eq!((renamed.param.as_deref(), renamed.message.as_str()), (Some("response_format"), "`response_format` cannot be compiled: unknown name"));
        r.error = Some("`weights` are broken".into());
        assert_eq!(ApiError::from_final(&r, std::convert::identity).and_then(|e| e.param), None, "only wire fields are params");
        r.error = Some("`prompt` is 9000 tokens, over the context of 8192".into());
        r.error_kind = Some(error_kind::ENGINE.into());
        assert_eq!(ApiError::from_final(&r, std::convert::identity).map(|e| e.status), Some(StatusCode::INTERNAL_SERVER_ERROR));
        r.status = Some(JobStatus::Expired);
        assert_eq!(ApiError::from_final(&r, std::convert::identity).map(|e| e.status), Some(StatusCode::GATEWAY_TIMEOUT));
        r.status = Some(JobStatus::Cancelled);
        assert_eq!(ApiError::from_final(&r, std::convert::identity).map(|e| e.status), Some(StatusCode::CONFLICT));
    }

    #[test]
    fn the_body_is_openais_error_shape() {
        let body = ApiError::queue_full().body();
        let e = &body["error"];
        assert_eq!(e["type"], "rate_limit_error");
        assert_eq!(e["code"], "queue_full");
        assert!(e["param"].is_null());
        assert!(e["message"].as_str().is_some_and(|m| m.contains("backpressure")));
    }
}
