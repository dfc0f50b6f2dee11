//! OpenAI's Batch API: `POST /v1/batches`, `GET /v1/batches/{id}`, `GET /v1/batches` (`after`,
//! `limit`) and `POST /v1/batches/{id}/cancel`, over files uploaded to `/v1/files`.
//!
//! A batch's requests become ordinary jobs on the model's queue (ids `<batch>.<line>`, counted in
//! the batch's counters by the workers that finish them), so any number of workers serve it.
//! Records and files live in Redis, so every gateway sees every batch and a restart loses
//! nothing; whichever gateway first sees all of a batch's requests final writes its output and
//! error files, once.
//!
//! - [`input`]: the input file read into jobs and refused lines.
//! - [`record`]: the batch's record and OpenAI's batch object.
//! - [`output`]: the output and error files.

pub mod input;
pub mod output;
pub mod record;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use self::input::{read_input, InputLimits};
use self::record::{BatchLines, BatchRecord, RequestCounts};
use crate::error::ApiError;
use crate::files::{file_content, file_meta, json_response, redis_error};
use crate::openai::{now_secs, openai_names, Route};
use crate::request::{body_bytes, parse_json};
use crate::state::Gateway;

/// The only completion window served.
const COMPLETION_WINDOW: &str = "24h";
const COMPLETION_WINDOW_SECS: u64 = 86_400;
/// A batch still `validating` this long after its creation lost the gateway that was publishing
/// it (its creator never got an answer): it is marked `failed`.
const ABANDONED_AFTER_SECS: u64 = 600;

/// `POST /v1/batches`' body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    /// A file uploaded with `purpose=batch`.
    pub input_file_id: String,
    /// `/v1/completions` or `/v1/chat/completions`.
    pub endpoint: String,
    /// `24h`.
    pub completion_window: String,
    /// Kept and returned as given.
    pub metadata: Option<Value>,
}

/// `POST /v1/batches`: reads the input file, publishes its valid requests as jobs, and answers
/// the batch (`in_progress`).
pub async fn create(State(gw): State<Gateway>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let bytes = body_bytes(body, gw.settings().gateway.max_body_bytes)?;
    let req: CreateBatch = parse_json(&bytes)?;
    let (rec, counts) = create_batch(&gw, req).await?;
    Ok(json_response(&rec.json(counts)))
}

/// Creates a batch (what `POST /v1/batches` and `genq batch create` do): reads the input file,
/// publishes its valid requests as jobs; the batch is `in_progress` (or already over).
pub async fn create_batch(gw: &Gateway, req: CreateBatch) -> Result<(BatchRecord, RequestCounts), ApiError> {
    let gw = gw.clone();
    let route = Route::from_path(&req.endpoint)
        .ok_or_else(|| ApiError::invalid_value("endpoint", format!("{:?} is not served in batches (/v1/completions, /v1/chat/completions)", req.endpoint)))?;
    if req.completion_window != COMPLETION_WINDOW {
        return Err(ApiError::invalid_value("completion_window", format!("must be {COMPLETION_WINDOW:?}")));
    }
    let meta = file_meta(&gw, &req.input_file_id).await?;
    if meta.purpose != "batch" {
        return Err(ApiError::invalid_value("input_file_id", format!("file {} has purpose {:?}, not \"batch\"", meta.id, meta.purpose)));
    }
    let content = file_content(&gw, &meta.id).await?;
    let id = format!("batch-{}", uuid::Uuid::new_v4().simple());
    let limits = InputLimits { max_requests: gw.settings().gateway.batch_max_requests, max_n: gw.settings().gateway.max_n };
    // Parsing takes every core for a few milliseconds per 10,000 lines: off the async threads.
    let batch_id = id.clone();
    let input = tokio::task::spawn_blocking(move || read_input(&content, &batch_id, route, limits))
        .await
        .map_err(|e| ApiError::internal(format!("reading the batch input: {e}")))??;
    let now = now_secs();
    let mut rec = BatchRecord {
        id,
        endpoint: route.path().to_string(),
        input_file_id: meta.id,
        completion_window: req.completion_window,
        status: "validating".into(),
        metadata: req.metadata,
        created_at: now,
        in_progress_at: None,
        expires_at: now + COMPLETION_WINDOW_SECS,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        cancelling_at: None,
        cancelled_at: None,
        expired_at: None,
        total: input.custom_ids.len() as u64,
        refused: input.invalid.len() as u64,
        output_file_id: None,
        error_file_id: None,
        errors: None,
    };
    let mut lines = BatchLines { custom_ids: input.custom_ids, invalid: input.invalid };
    rec.save_new(&gw, &lines).await?;
    let producer = gw.producer().await?;
    let (job_lines, jobs): (Vec<usize>, Vec<_>) = input.jobs.into_iter().unzip();
    let published = producer.submit_many(jobs, |_| {}).await;
    let refused_before = lines.invalid.len();
    for (line, outcome) in job_lines.into_iter().zip(published) {
        if let Err(e) = outcome {
            lines.invalid.push((line, ApiError::from_publish(&e, openai_names).message));
        }
    }
    if lines.invalid.len() > refused_before {
        lines.invalid.sort_unstable_by_key(|(line, _)| *line);
        lines.save(&gw, &rec.id).await?;
        rec.refused = lines.invalid.len() as u64;
    }
    rec.status = "in_progress".into();
    rec.in_progress_at = Some(now_secs());
    rec.save_if_status(&gw, "validating").await?;
    let counts = refresh(&gw, &mut rec).await?;
    Ok((rec, counts))
}

/// Batch `id` as it is now (what `GET /v1/batches/{id}` and `genq batch status` answer).
pub async fn batch_status(gw: &Gateway, id: &str) -> Result<(BatchRecord, RequestCounts), ApiError> {
    let mut rec = BatchRecord::load(gw, id).await?;
    let counts = refresh(gw, &mut rec).await?;
    Ok((rec, counts))
}

/// Current counts; when every request is final, the output files are written (by this gateway
/// if no other has claimed them) and the batch ends `completed` (or `cancelled`).
async fn refresh(gw: &Gateway, rec: &mut BatchRecord) -> Result<RequestCounts, ApiError> {
    let counts = rec.counts(gw).await?;
    if rec.status == "validating" && now_secs() >= rec.created_at + ABANDONED_AFTER_SECS {
        rec.status = "failed".into();
        rec.failed_at = Some(now_secs());
        let message = "the gateway creating this batch stopped before it had published its requests; create it again";
        rec.errors = Some(json!({ "object": "list", "data": [{ "code": "publish_interrupted", "message": message, "param": null, "line": null }] }));
        rec.save_if_status(gw, "validating").await?;
        return Ok(counts);
    }
    let now = now_secs();
    let running = matches!(rec.status.as_str(), "in_progress" | "cancelling");
    let window_over = now >= rec.expires_at;
    let stuck_finalizing = rec.status == "finalizing";
    if !(running && (counts.all_final() || window_over) || stuck_finalizing) {
        return Ok(counts);
    }
    if !rec.claim_finalizing(gw, now).await? {
        rec.status = "finalizing".into();
        return Ok(counts);
    }
    let end = match (rec.cancelling_at.is_some(), counts.all_final()) {
        (true, _) => "cancelled",
        (false, true) => "completed",
        (false, false) => "expired",
    };
    // In a task of its own, so a client that hangs up cannot stop it halfway; a failure gives
    // the claim up so the next look tries again.
    let (gw2, mut done) = (gw.clone(), rec.clone());
    let task = tokio::spawn(async move {
        match finalize(&gw2, &mut done, end).await {
            Ok(()) => Ok(done),
            Err(e) => {
                done.release_finalizing(&gw2).await;
                Err(e)
            }
        }
    });
    *rec = task.await.map_err(|e| ApiError::internal(format!("writing the batch's files: {e}")))??;
    Ok(counts)
}

/// Moves a batch to `finalizing`, writes its files, and ends it `end`.
async fn finalize(gw: &Gateway, rec: &mut BatchRecord, end: &'static str) -> Result<(), ApiError> {
    let from = rec.status.clone();
    if from != "finalizing" {
        rec.status = "finalizing".into();
        rec.finalizing_at = Some(now_secs());
        if !rec.save_if_status(gw, &from).await? {
            // Another gateway moved it meanwhile: show what is stored.
            *rec = BatchRecord::load(gw, &rec.id).await?;
            return Ok(());
        }
    }
    if end == "expired" {
        cancel_jobs(gw, rec).await?;
    }
    let writing = std::time::Instant::now();
    output::write_files(gw, rec, end).await?;
    tracing::info!(batch = %rec.id, status = end, seconds = writing.elapsed().as_secs_f64(), "batch output written");
    let now = now_secs();
    rec.status = end.into();
    match end {
        "cancelled" => rec.cancelled_at = Some(now),
        "expired" => rec.expired_at = Some(now),
        _ => rec.completed_at = Some(now),
    }
    rec.save_if_status(gw, "finalizing").await?;
    Ok(())
}

/// Asks every job of the batch to stop (those already final are left as they are).
async fn cancel_jobs(gw: &Gateway, rec: &BatchRecord) -> Result<(), ApiError> {
    let results = gw.results().await?;
    let lines = BatchLines::load(gw, &rec.id).await?;
    let ids: Vec<String> = lines.job_lines().into_iter().map(|l| input::job_id(&rec.id, l)).collect();
    for chunk in ids.chunks(256) {
        // A job already final, or whose record expired, has nothing to cancel: not an error.
        futures::future::join_all(chunk.iter().map(|j| results.cancel(j))).await;
    }
    Ok(())
}

/// `GET /v1/batches/{id}`.
pub async fn retrieve(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (rec, counts) = batch_status(&gw, &id).await?;
    Ok(json_response(&rec.json(counts)))
}

/// `POST /v1/batches/{id}/cancel`: asks every job of the batch to be cancelled; the batch is
/// `cancelling` until they are all final, then `cancelled`, with the results of those that
/// finished first in its output file.
pub async fn cancel(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let mut rec = BatchRecord::load(&gw, &id).await?;
    if rec.status == "in_progress" {
        rec.status = "cancelling".into();
        rec.cancelling_at = Some(now_secs());
        if !rec.save_if_status(&gw, "in_progress").await? {
            rec = BatchRecord::load(&gw, &id).await?;
        }
    }
    // Sent again on every cancel while cancelling, so one cut short is completed by the next.
    if rec.status == "cancelling" {
        cancel_jobs(&gw, &rec).await?;
    }
    let counts = refresh(&gw, &mut rec).await?;
    Ok(json_response(&rec.json(counts)))
}

/// `GET /v1/batches` pagination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListBatches {
    /// The last id of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<usize>,
}

/// `GET /v1/batches`: newest first.
pub async fn list(State(gw): State<Gateway>, Query(q): Query<ListBatches>) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid_value("limit", "must be 1..=100"));
    }
    let mut conn = gw.records().await?;
    let ids: Vec<String> =
        redis::cmd("ZREVRANGE").arg(gw.keys().openai_batches()).arg(0).arg(-1).query_async(&mut conn).await.map_err(redis_error)?;
    let start = match &q.after {
        Some(after) => ids.iter().position(|i| i == after).map(|p| p + 1).ok_or_else(|| ApiError::invalid_value("after", format!("batch {after:?} is not listed")))?,
        None => 0,
    };
    let mut data = Vec::new();
    let mut rest = ids[start..].iter();
    for id in rest.by_ref() {
        match BatchRecord::load(&gw, id).await {
            Ok(mut rec) => {
                let counts = refresh(&gw, &mut rec).await?;
                data.push(rec.json(counts));
            }
            Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => continue,
            Err(e) => return Err(e),
        }
        if data.len() == limit {
            break;
        }
    }
    let has_more = rest.next().is_some();
    let first = data.first().map(|b| b["id"].clone());
    let last = data.last().map(|b| b["id"].clone());
    Ok(json_response(&json!({ "object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more })))
}
