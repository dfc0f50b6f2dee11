//! A batch's record in Redis (`genq:openai-batch:{id}`, listed in `genq:openai-batches`): what
//! it runs, its status and timestamps, and OpenAI's batch object built from it and from the
//! counts workers keep for its jobs (`genq:batch:{id}`). Its lines ([`BatchLines`]: each
//! request's `custom_id`, the refused ones' reasons) sit beside it in the same hash, read only
//! to write the output files or cancel the jobs, so a status look stays small however long the
//! batch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::files::redis_error;
use crate::state::Gateway;

/// Field of the record's hash that holds it as JSON.
const RECORD_FIELD: &str = "record";
/// Field of the record's hash that holds its [`BatchLines`] as JSON.
const LINES_FIELD: &str = "lines";
/// Field holding when (Unix seconds) a gateway claimed the writing of a batch's output files.
pub const FINALIZER_FIELD: &str = "finalizer";
/// A claim older than this is taken over (its gateway stopped or failed midway).
const FINALIZER_LEASE_SECS: u64 = 300;

/// Replaces the record only if its status is still ARGV[1]. KEYS: the record's hash; ARGV:
/// expected status, new record JSON, TTL.
const SAVE_IF_STATUS: &str = r#"
local raw = redis.call('HGET', KEYS[1], 'record')
if not raw or cjson.decode(raw)['status'] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// Claims the writing of the output files unless a live claim exists. KEYS: the record's hash;
/// ARGV: now (Unix seconds), lease seconds.
const CLAIM: &str = r#"
local t = tonumber(redis.call('HGET', KEYS[1], 'finalizer') or '0')
if t + tonumber(ARGV[2]) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'finalizer', ARGV[1])
return 1
"#;

/// One batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// `batch-<hex>`.
    pub id: String,
    /// `/v1/completions` or `/v1/chat/completions`.
    pub endpoint: String,
    /// The input file.
    pub input_file_id: String,
    /// `24h`.
    pub completion_window: String,
    /// OpenAI's status names.
    pub status: String,
    /// The caller's metadata, as given.
    pub metadata: Option<Value>,
    /// Unix seconds of each step.
    pub created_at: u64,
    /// When publishing ended.
    pub in_progress_at: Option<u64>,
    /// When it will expire if unfinished.
    pub expires_at: u64,
    /// When the output began to be written.
    pub finalizing_at: Option<u64>,
    /// When it completed.
    pub completed_at: Option<u64>,
    /// When it failed.
    pub failed_at: Option<u64>,
    /// When a cancel was asked.
    pub cancelling_at: Option<u64>,
    /// When it ended cancelled.
    pub cancelled_at: Option<u64>,
    /// When it expired (the completion window passed with requests unfinished).
    #[serde(default)]
    pub expired_at: Option<u64>,
    /// Requests (lines) in the input file.
    pub total: u64,
    /// Lines refused before running.
    pub refused: u64,
    /// The results file.
    pub output_file_id: Option<String>,
    /// The errors file.
    pub error_file_id: Option<String>,
    /// Why the batch failed as a whole.
    pub errors: Option<Value>,
}

/// Counts of a batch's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestCounts {
    /// Every line.
    pub total: u64,
    /// Finished `done`.
    pub completed: u64,
    /// Refused, failed, expired or cancelled.
    pub failed: u64,
}

impl RequestCounts {
    /// Whether every request has an outcome.
    pub fn all_final(&self) -> bool {
        self.completed + self.failed >= self.total
    }
}

/// A record stored before the lines moved beside it holds them instead of their counts: count them.
fn counts_from_lines(record: &mut Value) {
    let Some(fields) = record.as_object_mut() else { return };
    if fields.contains_key("total") {
        return;
    }
    let len = |k: &str| fields.get(k).and_then(Value::as_array).map_or(0, Vec::len);
    let (total, refused) = (len("custom_ids"), len("invalid"));
    fields.insert("total".into(), json!(total));
    fields.insert("refused".into(), json!(refused));
}

/// 404 for a batch that does not exist or expired.
pub fn unknown_batch(id: &str) -> ApiError {
    ApiError::not_found("batch_not_found", "batch_id", format!("batch {id:?} does not exist or expired"))
}

/// What each line of a batch's input became.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchLines {
    /// Each request's `custom_id`, by line.
    pub custom_ids: Vec<String>,
    /// Lines refused before running, with why, by line.
    pub invalid: Vec<(usize, String)>,
}

impl BatchLines {
    /// The lines that run as jobs: every line but the refused ones.
    pub fn job_lines(&self) -> Vec<usize> {
        let refused: std::collections::HashSet<usize> = self.invalid.iter().map(|(l, _)| *l).collect();
        (0..self.custom_ids.len()).filter(|l| !refused.contains(l)).collect()
    }

    fn to_json(&self) -> Result<String, ApiError> {
        serde_json::to_string(self).map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Batch `id`'s lines (from its record, for a batch stored before they moved beside it).
    pub async fn load(gw: &Gateway, id: &str) -> Result<BatchLines, ApiError> {
        let mut conn = gw.records().await?;
        let (lines, record): (Option<String>, Option<String>) =
            redis::cmd("HMGET").arg(gw.keys().openai_batch(id)).arg(LINES_FIELD).arg(RECORD_FIELD).query_async(&mut conn).await.map_err(redis_error)?;
        let raw = lines.or(record).ok_or_else(|| unknown_batch(id))?;
        serde_json::from_str(&raw).map_err(|e| ApiError::internal(format!("batch {id} has unreadable lines: {e}")))
    }

    /// Replaces batch `id`'s lines (more refused after publishing).
    pub async fn save(&self, gw: &Gateway, id: &str) -> Result<(), ApiError> {
        let mut conn = gw.records().await?;
        redis::cmd("HSET").arg(gw.keys().openai_batch(id)).arg(LINES_FIELD).arg(self.to_json()?).query_async::<()>(&mut conn).await.map_err(redis_error)
    }
}

impl BatchRecord {
    /// Stores a new record and its lines (with the files' TTL) and lists it.
    pub async fn save_new(&self, gw: &Gateway, lines: &BatchLines) -> Result<(), ApiError> {
        let mut conn = gw.records().await?;
        let key = gw.keys().openai_batch(&self.id);
        let json = serde_json::to_string(self).map_err(|e| ApiError::internal(e.to_string()))?;
        redis::pipe()
            .cmd("HSET")
            .arg(&key)
            .arg(RECORD_FIELD)
            .arg(json)
            .arg(LINES_FIELD)
            .arg(lines.to_json()?)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(gw.settings().gateway.file_ttl_secs)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_error)?;
        redis::cmd("ZADD").arg(gw.keys().openai_batches()).arg(self.created_at).arg(&self.id).query_async::<()>(&mut conn).await.map_err(redis_error)?;
        Ok(())
    }

    /// Batch `id`'s record.
    pub async fn load(gw: &Gateway, id: &str) -> Result<BatchRecord, ApiError> {
        let mut conn = gw.records().await?;
        let raw: Option<String> = redis::cmd("HGET").arg(gw.keys().openai_batch(id)).arg(RECORD_FIELD).query_async(&mut conn).await.map_err(redis_error)?;
        let raw = raw.ok_or_else(|| unknown_batch(id))?;
        let unreadable = |e: serde_json::Error| ApiError::internal(format!("batch {id} has an unreadable record: {e}"));
        let mut value: Value = serde_json::from_str(&raw).map_err(unreadable)?;
        counts_from_lines(&mut value);
        serde_json::from_value(value).map_err(unreadable)
    }

    /// Saves the record only if its stored status is still `expected` (statuses only move
    /// forward, so two gateways never undo each other's step); false when it was not.
    pub async fn save_if_status(&self, gw: &Gateway, expected: &str) -> Result<bool, ApiError> {
        let mut conn = gw.records().await?;
        let json = serde_json::to_string(self).map_err(|e| ApiError::internal(e.to_string()))?;
        let saved: u32 = redis::Script::new(SAVE_IF_STATUS)
            .key(gw.keys().openai_batch(&self.id))
            .arg(expected)
            .arg(json)
            .arg(gw.settings().gateway.file_ttl_secs)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(saved == 1)
    }

    /// Claims the writing of the output files for a few minutes; false while another gateway
    /// holds the claim.
    pub async fn claim_finalizing(&self, gw: &Gateway, now: u64) -> Result<bool, ApiError> {
        let mut conn = gw.records().await?;
        let claimed: u32 = redis::Script::new(CLAIM)
            .key(gw.keys().openai_batch(&self.id))
            .arg(now)
            .arg(FINALIZER_LEASE_SECS)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(claimed == 1)
    }

    /// Gives the claim up (after a failure), so the next look at the batch tries again.
    pub async fn release_finalizing(&self, gw: &Gateway) {
        if let Ok(mut conn) = gw.records().await {
            let _: Result<(), _> = redis::cmd("HDEL").arg(gw.keys().openai_batch(&self.id)).arg(FINALIZER_FIELD).query_async(&mut conn).await;
        }
    }

    /// Counts from the workers' per-status counters of the batch's jobs, plus the refused lines.
    pub async fn counts(&self, gw: &Gateway) -> Result<RequestCounts, ApiError> {
        let mut conn = gw.records().await?;
        let raw: BTreeMap<String, u64> = redis::cmd("HGETALL").arg(gw.keys().batch(&self.id)).query_async(&mut conn).await.map_err(redis_error)?;
        let n = |k: &str| raw.get(k).copied().unwrap_or(0);
        Ok(RequestCounts {
            total: self.total,
            completed: n("done"),
            failed: self.refused + n("failed") + n("expired") + n("cancelled"),
        })
    }

    /// OpenAI's batch object.
    pub fn json(&self, counts: RequestCounts) -> Value {
        json!({
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": self.errors,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window, "status": self.status,
            "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at, "in_progress_at": self.in_progress_at, "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at, "completed_at": self.completed_at, "failed_at": self.failed_at,
            "expired_at": self.expired_at, "cancelling_at": self.cancelling_at, "cancelled_at": self.cancelled_at,
            "request_counts": { "total": counts.total, "completed": counts.completed, "failed": counts.failed },
            "metadata": self.metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_stored_with_its_lines_inside_still_reads() {
        let old = json!({
            "id": "batch-1", "endpoint": "/v1/completions", "input_file_id": "file-1", "completion_window": "24h",
            "status": "in_progress", "metadata": null, "created_at": 1, "in_progress_at": 2, "expires_at": 3,
            "finalizing_at": null, "completed_at": null, "failed_at": null, "cancelling_at": null, "cancelled_at": null,
            "custom_ids": ["a", "b", "c"], "invalid": [[1, "`top_p` must be ..."]],
            "output_file_id": null, "error_file_id": null, "errors": null
        });
        let mut value = old.clone();
        counts_from_lines(&mut value);
        let rec: BatchRecord = serde_json::from_value(value).expect("reads");
        assert_eq!((rec.total, rec.refused), (3, 1));
        let lines: BatchLines = serde_json::from_value(old).expect("its lines read from the record");
        assert_eq!(lines.job_lines(), vec![0, 2]);
    }
}
