//! A finished batch's output and error files, in OpenAI's line shapes: each line
//! `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`, `body`
//! being what the synchronous route answers. Requests that ended `done` go to the output file;
//! refused, failed, expired and cancelled ones to the error file.
//!
//! The input's lines are cut into runs of [`CHUNK_LINES`]; each run's results are read and its
//! lines written on a task of its own, a few runs ahead, and the runs are joined in order.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;
use tokio::task::JoinHandle;

use genq_shared::{JobResult, JobStatus};
use serde_json::Value;

use super::input::job_id;
use super::record::{BatchLines, BatchRecord};
use crate::completion::full_response;
use crate::error::ApiError;
use crate::files::put_file;
use crate::openai::Route;
use crate::state::Gateway;

/// Input lines per run (one round trip for their results).
const CHUNK_LINES: usize = 256;
/// The fields of a job's record its line is written from.
const RESULT_FIELDS: [&str; 12] = [
    "status",
    "kind",
    "model",
    "text",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "choices",
    "token_logprobs",
    "prompt_logprobs",
    "error",
    "error_kind",
];
/// Runs in flight ahead of the one being joined.
const RUNS_AHEAD: usize = 8;

/// Writes the batch's output and error files (each only if it has a line) and records their ids;
/// `end` is the status the batch ends with.
pub async fn write_files(gw: &Gateway, rec: &mut BatchRecord, end: &str) -> Result<(), ApiError> {
    let lines = Arc::new(Lines::new(rec, BatchLines::load(gw, &rec.id).await?, end));
    // A connection of its own for each core: answers are parsed on their connection's task.
    let mut clients = vec![gw.results().await?];
    let s = gw.settings();
    for _ in 1..std::thread::available_parallelism().map_or(1, usize::from) {
        match genq_producer::ResultClient::connect(&s.redis.url, &s.redis.key_prefix).await {
            Ok(c) => clients.push(c),
            Err(_) => break,
        }
    }
    let mut runs = (0..lines.custom_ids.len())
        .step_by(CHUNK_LINES)
        .map(|start| start..(start + CHUNK_LINES).min(lines.custom_ids.len()));
    let mut pending: VecDeque<JoinHandle<Result<Files, ApiError>>> = VecDeque::new();
    let spawn = |range: Range<usize>| {
        let (lines, client) = (
            lines.clone(),
            clients[(range.start / CHUNK_LINES) % clients.len()].clone(),
        );
        tokio::spawn(async move {
            let jobs: Vec<usize> = range
                .clone()
                .filter(|l| !lines.refused.contains_key(l))
                .collect();
            let ids: Vec<String> = jobs.iter().map(|&l| job_id(&lines.batch, l)).collect();
            let results = client
                .get_many_fields(&ids, &RESULT_FIELDS)
                .await
                .map_err(|e| ApiError::from_result(&e))?;
            let mut results: HashMap<usize, Option<JobResult>> =
                jobs.into_iter().zip(results).collect();
            let mut files = Files::default();
            for line in range {
                lines.write(line, results.remove(&line), &mut files);
            }
            Ok(files)
        })
    };
    pending.extend(runs.by_ref().take(RUNS_AHEAD).map(spawn));
    let mut written = Vec::new();
    while let Some(run) = pending.pop_front() {
        pending.extend(runs.next().map(spawn));
        written.push(
            run.await
                .map_err(|e| ApiError::internal(format!("writing the batch's files: {e}")))??,
        );
    }
    let all = Files::joined(written);
    for (content, kind, file_id) in [(&all.out, "output", &mut rec.output_file_id), (&all.err, "error", &mut rec.error_file_id)] {
        if !content.is_empty() {
            *file_id = Some(put_file(gw, "batch_output", &format!("{}_{kind}.jsonl", rec.id), content).await?.id);
        }
    }
    Ok(())
}

/// The text of the output and error files (or of a run of their lines).
#[derive(Debug, Default)]
struct Files {
    out: Vec<u8>,
    err: Vec<u8>,
}

impl Files {
    /// Runs of lines joined in order.
    fn joined(runs: Vec<Files>) -> Files {
        let mut all = Files {
            out: Vec::with_capacity(runs.iter().map(|f| f.out.len()).sum()),
            err: Vec::with_capacity(runs.iter().map(|f| f.err.len()).sum()),
        };
        for f in runs {
            all.out.extend_from_slice(&f.out);
            all.err.extend_from_slice(&f.err);
        }
        all
    }
}

/// What every line of a batch's files is written from.
struct Lines {
    route: Route,
    batch: String,
    custom_ids: Vec<String>,
    /// Refused lines and why.
    refused: HashMap<usize, String>,
    /// The status the batch ends with (`expired` explains a missing result).
    expired: bool,
}

/// One line of either file.
#[derive(Serialize)]
struct Line<'a, B: Serialize> {
    id: String,
    custom_id: &'a str,
    response: Option<LineResponse<'a, B>>,
    error: Option<LineError<'a>>,
}

#[derive(Serialize)]
struct LineResponse<'a, B: Serialize> {
    status_code: u16,
    request_id: &'a str,
    body: B,
}

#[derive(Serialize)]
struct LineError<'a> {
    code: &'a str,
    message: &'a str,
}

impl Lines {
    fn new(rec: &BatchRecord, lines: BatchLines, end: &str) -> Self {
        let route = Route::from_path(&rec.endpoint).unwrap_or(Route::Completions);
        let refused = lines.invalid.into_iter().collect();
        Self {
            route,
            batch: rec.id.clone(),
            custom_ids: lines.custom_ids,
            refused,
            expired: end == "expired",
        }
    }

    /// Writes line `line` into `files`: its refusal, or its job's `result` (`None`: no result
    /// stored).
    fn write(&self, line: usize, result: Option<Option<JobResult>>, files: &mut Files) {
        let request_id = job_id(&self.batch, line);
        let custom_id = self.custom_ids[line].as_str();
        let id = format!("batch_req_{request_id}");
        let error = |code, message| Line::<Value> {
            id: id.clone(),
            custom_id,
            response: None,
            error: Some(LineError { code, message }),
        };
        if let Some(message) = self.refused.get(&line) {
            return push(&mut files.err, &error("invalid_request", message));
        }
        match result.flatten() {
            Some(r) if r.status == Some(JobStatus::Done) => {
                let model = r.model.as_deref().unwrap_or_default();
                let body = full_response(self.route, &r, 1, model, None);
                let response = LineResponse {
                    status_code: 200,
                    request_id: &request_id,
                    body,
                };
                push(
                    &mut files.out,
                    &Line {
                        id,
                        custom_id,
                        response: Some(response),
                        error: None,
                    },
                );
            }
            Some(r) if r.status == Some(JobStatus::Cancelled) => push(
                &mut files.err,
                &error("batch_cancelled", "cancelled before it finished"),
            ),
            Some(r)
                if r.status == Some(JobStatus::Failed) || r.status == Some(JobStatus::Expired) =>
            {
                let e = ApiError::from_final(&r, crate::openai::openai_names)
                    .unwrap_or_else(|| ApiError::internal("not finished"));
                let response = LineResponse {
                    status_code: e.status.as_u16(),
                    request_id: &request_id,
                    body: e.body(),
                };
                push(
                    &mut files.err,
                    &Line {
                        id,
                        custom_id,
                        response: Some(response),
                        error: None,
                    },
                );
            }
            _ if self.expired => push(
                &mut files.err,
                &error(
                    "batch_expired",
                    "the batch's completion window ended before it finished",
                ),
            ),
            _ => push(
                &mut files.err,
                &error("result_missing", "the result expired or was never stored"),
            ),
        }
    }
}

/// Appends `line` and a newline to `file`.
fn push<B: Serialize>(file: &mut Vec<u8>, line: &Line<'_, B>) {
    let start = file.len();
    // Serializing these types into memory cannot fail; were it to, the partial line goes.
    match serde_json::to_writer(&mut *file, line) {
        Ok(()) => file.push(b'\n'),
        Err(_) => file.truncate(start),
    }
}
