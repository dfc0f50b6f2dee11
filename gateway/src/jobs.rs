//! Jobs over HTTP: the asynchronous API (`POST /v1/jobs` -> 202 + id, `GET /v1/jobs/{id}`,
//! `DELETE /v1/jobs/{id}`), and [`run_to_end`], which the synchronous routes use to publish a
//! job and wait for it, cancelling it when the client goes away or the wait times out.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use genq_shared::{JobRequest, JobResult, JobStatus};

use super::error::{same_name, ApiError};
use super::request::{body_bytes, parse_json};
use super::state::Gateway;
use genq_producer::{CancelOutcome, ResultClient, ResultError};

/// Cancels a job when dropped, unless disarmed first. Handlers hold one while a client waits:
/// when the client disconnects, hyper drops the handler's future and with it the guard, so the
/// job stops using a worker nobody is waiting for.
pub struct CancelOnDrop {
    id: String,
    results: Option<ResultClient>,
}

impl CancelOnDrop {
    /// Guards job `id`.
    pub fn new(id: String, results: ResultClient) -> Self {
        Self { id, results: Some(results) }
    }

    /// The job reached a final status (or someone else owns it now): nothing to cancel.
    pub fn disarm(mut self) {
        self.results = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(results) = self.results.take() else { return };
        let id = std::mem::take(&mut self.id);
        // Drop cannot await: the cancel request runs as its own task.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                match results.cancel(&id).await {
                    Ok(CancelOutcome::Requested) => tracing::info!(job = %id, "client gone: job cancelled"),
                    Ok(CancelOutcome::AlreadyFinal(_)) => {}
                    Err(e) => tracing::warn!(job = %id, error = %e, "client gone, but the job could not be cancelled"),
                }
            });
        }
    }
}

/// Publishes `job` and waits for its final result, within the request timeout. Answers the
/// job's result when it is `done`, else the error its status means. The job is cancelled when
/// the wait ends any other way (timeout, Redis failure, or the caller's future being dropped).
pub async fn run_to_end(gw: &Gateway, job: JobRequest, rename: impl Fn(&'static str) -> &'static str) -> Result<JobResult, ApiError> {
    let results = gw.results().await?;
    let id = gw.submit(job, &rename).await?;
    let guard = CancelOnDrop::new(id.clone(), results.clone());
    let timeout = gw.request_timeout();
    match results.wait(&id, Some(timeout)).await {
        Ok(r) => {
            guard.disarm();
            match ApiError::from_final(&r, rename) {
                None => Ok(r),
                Some(e) => Err(e),
            }
        }
        Err(ResultError::Timeout { .. }) => Err(ApiError::timeout(&id, timeout.as_secs())),
        Err(e) => {
            gw.redis_failed(&e).await;
            Err(ApiError::from_result(&e))
        }
    }
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `POST /v1/jobs`: a wire-format v1 job (`docs/protocol.md`), published; 202 with its id. The client
/// polls `GET /v1/jobs/{id}`, or sets `stream` and reads the Redis stream itself.
pub async fn submit(State(gw): State<Gateway>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let bytes = body_bytes(body, gw.settings().gateway.max_body_bytes)?;
    let job: JobRequest = parse_json(&bytes)?;
    let id = gw.submit(job, same_name).await?;
    let mut response = json(StatusCode::ACCEPTED, &serde_json::json!({ "id": id, "status": JobStatus::Queued }));
    if let Ok(location) = header::HeaderValue::from_str(&format!("/v1/jobs/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /v1/jobs/{id}`: the job's record as it is now (the Redis hash as JSON); 404 when unknown.
pub async fn get(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Response, ApiError> {
    if genq_shared::valid::check_job_id(&id).is_err() {
        return Err(ApiError::unknown_job(&id));
    }
    let results = gw.results().await?;
    match results.get(&id).await {
        Ok(Some(r)) => Ok(json(StatusCode::OK, &r)),
        Ok(None) => Err(ApiError::unknown_job(&id)),
        Err(e) => {
            gw.redis_failed(&e).await;
            Err(ApiError::from_result(&e))
        }
    }
}

/// `DELETE /v1/jobs/{id}`: asks for the job to be cancelled: 202 when it was queued or running
/// (it ends `cancelled` at its worker's next check), 409 when already final, 404 when unknown.
pub async fn cancel(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Response, ApiError> {
    if genq_shared::valid::check_job_id(&id).is_err() {
        return Err(ApiError::unknown_job(&id));
    }
    let results = gw.results().await?;
    match results.cancel(&id).await {
        Ok(CancelOutcome::Requested) => Ok(json(StatusCode::ACCEPTED, &serde_json::json!({ "id": id, "status": "cancelling" }))),
        Ok(CancelOutcome::AlreadyFinal(status)) => Err(ApiError::already_final(&id, status)),
        Err(e) => {
            gw.redis_failed(&e).await;
            Err(ApiError::from_result(&e))
        }
    }
}
