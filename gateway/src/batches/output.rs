//! A finished batch's output and error files, in OpenAI's line shapes: each line
//! `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`, `body`
//! being what the synchronous route answers. Requests that ended `done` go to the output file;
//! refused, failed, expired and cancelled ones to the error file.

use std::collections::HashMap;

use genq_shared::{JobResult, JobStatus};
use serde_json::{json, Value};

use super::input::job_id;
use super::record::BatchRecord;
use crate::error::ApiError;
use crate::files::put_file;
use crate::openai::{full_response, Route};
use crate::state::Gateway;

/// Results read per round trip.
const READ_CHUNK: usize = 512;

/// Writes the batch's output and error files (each only if it has a line) and records their ids;
/// `end` is the status the batch ends with.
pub async fn write_files(gw: &Gateway, rec: &mut BatchRecord, end: &str) -> Result<(), ApiError> {
    let route = Route::from_path(&rec.endpoint).unwrap_or(Route::Completions);
    let refused: HashMap<usize, &str> = rec.invalid.iter().map(|(l, m)| (*l, m.as_str())).collect();
    let lines = rec.job_lines();
    let results_client = gw.results().await?;
    let mut results: HashMap<usize, JobResult> = HashMap::new();
    // A few reads in flight at once.
    for group in lines.chunks(READ_CHUNK * 4) {
        let reads = group.chunks(READ_CHUNK).map(|chunk| {
            let ids: Vec<String> = chunk.iter().map(|&l| job_id(&rec.id, l)).collect();
            let client = results_client.clone();
            async move { client.get_many(&ids).await.map(|got| chunk.iter().copied().zip(got).collect::<Vec<_>>()) }
        });
        for read in futures::future::try_join_all(reads).await.map_err(|e| ApiError::from_result(&e))? {
            results.extend(read.into_iter().filter_map(|(l, r)| Some((l, r?))));
        }
    }
    let (mut out, mut err) = (String::new(), String::new());
    for (line, custom_id) in rec.custom_ids.iter().enumerate() {
        let request_id = job_id(&rec.id, line);
        let (file, entry) = match (refused.get(&line), results.get(&line)) {
            (Some(message), _) => (&mut err, error_line(&request_id, custom_id, None, "invalid_request", message)),
            (None, Some(r)) if r.status == Some(JobStatus::Done) => {
                let model = r.model.clone().unwrap_or_default();
                let response = json!({ "status_code": 200, "request_id": request_id, "body": full_response(route, r, 1, &model, None) });
                (&mut out, json!({ "id": format!("batch_req_{request_id}"), "custom_id": custom_id, "response": response, "error": null }))
            }
            (None, Some(r)) if r.status == Some(JobStatus::Cancelled) => {
                (&mut err, error_line(&request_id, custom_id, None, "batch_cancelled", "cancelled before it finished"))
            }
            (None, Some(r)) if r.status == Some(JobStatus::Failed) || r.status == Some(JobStatus::Expired) => {
                let e = ApiError::from_final(r).unwrap_or_else(|| ApiError::internal("not finished"));
                let response = json!({ "status_code": e.status.as_u16(), "request_id": request_id, "body": e.body() });
                (&mut err, json!({ "id": format!("batch_req_{request_id}"), "custom_id": custom_id, "response": response, "error": null }))
            }
            (None, _) if end == "expired" => {
                (&mut err, error_line(&request_id, custom_id, None, "batch_expired", "the batch's completion window ended before it finished"))
            }
            (None, _) => (&mut err, error_line(&request_id, custom_id, None, "result_missing", "the result expired or was never stored")),
        };
        file.push_str(&entry.to_string());
        file.push('\n');
    }
    if !out.is_empty() {
        rec.output_file_id = Some(put_file(gw, "batch_output", &format!("{}_output.jsonl", rec.id), out.as_bytes()).await?.id);
    }
    if !err.is_empty() {
        rec.error_file_id = Some(put_file(gw, "batch_output", &format!("{}_error.jsonl", rec.id), err.as_bytes()).await?.id);
    }
    Ok(())
}

fn error_line(request_id: &str, custom_id: &str, response: Option<Value>, code: &str, message: &str) -> Value {
    json!({ "id": format!("batch_req_{request_id}"), "custom_id": custom_id, "response": response, "error": { "code": code, "message": message } })
}
