//! A finished batch's output and error files, in OpenAI's line shapes: each line
//! `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`, `body`
//! being what the synchronous route answers. Requests that ended `done` go to the output file;
//! refused, failed, expired and cancelled ones to the error file.

use std::collections::{HashMap, VecDeque};

use genq_producer::{ResultClient, ResultError};
use tokio::task::JoinHandle;

use genq_shared::{JobResult, JobStatus};
use serde_json::{json, Value};

use super::input::job_id;
use super::record::{BatchLines, BatchRecord};
use crate::error::ApiError;
use crate::files::put_file;
use crate::openai::{full_response, Route};
use crate::state::Gateway;

/// Results read per round trip.
const READ_CHUNK: usize = 256;
/// Reads in flight ahead of the lines being written.
const READS_AHEAD: usize = 8;

/// Writes the batch's output and error files (each only if it has a line) and records their ids;
/// `end` is the status the batch ends with.
pub async fn write_files(gw: &Gateway, rec: &mut BatchRecord, end: &str) -> Result<(), ApiError> {
    let mut writer = FileWriter::new(rec, BatchLines::load(gw, &rec.id).await?);
    let lines = writer.job_lines();
    let mut results = AheadReader::start(gw.results().await?, &rec.id, &lines);
    for line in lines {
        let result = results.next(line).await?;
        writer.push(line, result.as_ref(), end);
    }
    writer.save(gw, rec).await
}

/// A batch's output and error files, built line by line in input order.
pub(crate) struct FileWriter {
    route: Route,
    batch: String,
    custom_ids: Vec<String>,
    /// Refused lines and why.
    refused: HashMap<usize, String>,
    /// Lines written so far.
    next: usize,
    out: String,
    err: String,
}

impl FileWriter {
    /// The files of batch `rec`, whose input lines are `lines`.
    pub(crate) fn new(rec: &BatchRecord, lines: BatchLines) -> Self {
        let job_route = Route::from_path(&rec.endpoint).unwrap_or(Route::Completions);
        let refused = lines.invalid.into_iter().collect();
        Self { route: job_route, batch: rec.id.clone(), custom_ids: lines.custom_ids, refused, next: 0, out: String::new(), err: String::new() }
    }

    /// The lines that ran as jobs, in order: what [`FileWriter::push`] takes.
    pub(crate) fn job_lines(&self) -> Vec<usize> {
        (0..self.custom_ids.len()).filter(|l| !self.refused.contains_key(l)).collect()
    }

    /// Writes the refused lines before job line `line`, then `line` with `result` (`None`: no
    /// result stored; `end` says why: `expired` or not).
    pub(crate) fn push(&mut self, line: usize, result: Option<&JobResult>, end: &str) {
        self.refused_until(line);
        let request_id = job_id(&self.batch, line);
        let custom_id = &self.custom_ids[line];
        let (file, entry) = match result {
            Some(r) if r.status == Some(JobStatus::Done) => {
                let model = r.model.clone().unwrap_or_default();
                let response = json!({ "status_code": 200, "request_id": request_id, "body": full_response(self.route, r, 1, &model, None) });
                (&mut self.out, json!({ "id": format!("batch_req_{request_id}"), "custom_id": custom_id, "response": response, "error": null }))
            }
            Some(r) if r.status == Some(JobStatus::Cancelled) => {
                (&mut self.err, error_line(&request_id, custom_id, "batch_cancelled", "cancelled before it finished"))
            }
            Some(r) if r.status == Some(JobStatus::Failed) || r.status == Some(JobStatus::Expired) => {
                let e = ApiError::from_final(r, crate::openai::openai_names).unwrap_or_else(|| ApiError::internal("not finished"));
                let response = json!({ "status_code": e.status.as_u16(), "request_id": request_id, "body": e.body() });
                (&mut self.err, json!({ "id": format!("batch_req_{request_id}"), "custom_id": custom_id, "response": response, "error": null }))
            }
            _ if end == "expired" => {
                (&mut self.err, error_line(&request_id, custom_id, "batch_expired", "the batch's completion window ended before it finished"))
            }
            _ => (&mut self.err, error_line(&request_id, custom_id, "result_missing", "the result expired or was never stored")),
        };
        file.push_str(&entry.to_string());
        file.push('\n');
        self.next = line + 1;
    }

    /// Writes the refused lines before `line`.
    fn refused_until(&mut self, line: usize) {
        for l in self.next..line {
            if let Some(message) = self.refused.get(&l) {
                let entry = error_line(&job_id(&self.batch, l), &self.custom_ids[l], "invalid_request", message);
                self.err.push_str(&entry.to_string());
                self.err.push('\n');
            }
        }
        self.next = self.next.max(line);
    }

    /// Stores the files (each only if it has a line) and records their ids in `rec`.
    pub(crate) async fn save(mut self, gw: &Gateway, rec: &mut BatchRecord) -> Result<(), ApiError> {
        self.refused_until(self.custom_ids.len());
        if !self.out.is_empty() {
            rec.output_file_id = Some(put_file(gw, "batch_output", &format!("{}_output.jsonl", rec.id), self.out.as_bytes()).await?.id);
        }
        if !self.err.is_empty() {
            rec.error_file_id = Some(put_file(gw, "batch_output", &format!("{}_error.jsonl", rec.id), self.err.as_bytes()).await?.id);
        }
        Ok(())
    }
}

/// Reads a batch's results in line order, a few chunks ahead on other tasks, so the reading
/// overlaps the writing of the lines already read.
struct AheadReader {
    client: ResultClient,
    batch: String,
    /// Chunks of job lines not yet asked for.
    todo: std::vec::IntoIter<Vec<usize>>,
    reads: VecDeque<JoinHandle<Result<Vec<(usize, Option<JobResult>)>, ResultError>>>,
    ready: VecDeque<(usize, Option<JobResult>)>,
}

impl AheadReader {
    fn start(client: ResultClient, batch: &str, lines: &[usize]) -> Self {
        let chunks: Vec<Vec<usize>> = lines.chunks(READ_CHUNK).map(<[usize]>::to_vec).collect();
        let mut reader = Self { client, batch: batch.to_string(), todo: chunks.into_iter(), reads: VecDeque::new(), ready: VecDeque::new() };
        for _ in 0..READS_AHEAD {
            reader.ask_next();
        }
        reader
    }

    fn ask_next(&mut self) {
        let Some(chunk) = self.todo.next() else { return };
        let ids: Vec<String> = chunk.iter().map(|&l| job_id(&self.batch, l)).collect();
        let client = self.client.clone();
        self.reads.push_back(tokio::spawn(async move { client.get_many(&ids).await.map(|got| chunk.into_iter().zip(got).collect()) }));
    }

    /// The result of job line `line` (the next one in order), if it has one.
    async fn next(&mut self, line: usize) -> Result<Option<JobResult>, ApiError> {
        if self.ready.is_empty() {
            let read = self.reads.pop_front().ok_or_else(|| ApiError::internal(format!("no result read for line {line}")))?;
            self.ask_next();
            let got = read.await.map_err(|e| ApiError::internal(format!("reading results: {e}")))?;
            self.ready.extend(got.map_err(|e| ApiError::from_result(&e))?);
        }
        match self.ready.pop_front() {
            Some((l, result)) if l == line => Ok(result),
            other => Err(ApiError::internal(format!("results out of order: line {line}, read {:?}", other.map(|(l, _)| l)))),
        }
    }
}

fn error_line(request_id: &str, custom_id: &str, code: &str, message: &str) -> Value {
    json!({ "id": format!("batch_req_{request_id}"), "custom_id": custom_id, "response": null, "error": { "code": code, "message": message } })
}
