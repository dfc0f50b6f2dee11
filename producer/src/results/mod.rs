//! Results in Redis, for clients: [`ResultClient`] reads them (`get`), waits for them
//! ([`wait`]: blocking on each job's done list), cancels jobs, and records jobs `queued`
//! ([`marks`]) before a producer publishes them.

mod marks;
mod wait;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use genq_protocol::redis_conn::RedisConn;
use genq_protocol::scripts::{self, scripts, ScriptError};
use genq_protocol::url::redact_url;
use genq_shared::keys::KeySchema;
use genq_shared::{JobResult, JobStatus};

/// Reading a result failed.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// Redis is unreachable or answered with an error.
    #[error("redis: {0}")]
    Redis(String),
    /// Redis has no record of the job: it was never submitted through genq, or its result
    /// expired after the TTL.
    #[error("job {id} is unknown or its result expired (results are kept for the configured TTL)")]
    Unknown {
        /// Job id.
        id: String,
    },
    /// The job did not reach a final status in time.
    #[error("timed out waiting for job {id} (status: {status})")]
    Timeout {
        /// Job id.
        id: String,
        /// Last status seen, or `unknown`.
        status: String,
    },
}

fn redis_err(e: redis::RedisError) -> ResultError {
    ResultError::Redis(e.to_string())
}

fn script_err(e: ScriptError) -> ResultError {
    ResultError::Redis(e.to_string())
}

/// The result in an HGETALL answer (RESP2 flat array or RESP3 map); `None` for an empty hash.
/// A string answer's text.
fn value_text(v: &redis::Value) -> Option<&str> {
    match v {
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok(),
        redis::Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn result_of_hash(id: &str, hash: &redis::Value) -> Option<JobResult> {
    use redis::Value;
    let text = value_text;
    let pairs: Vec<(&str, &str)> = match hash {
        Value::Array(items) => items.chunks_exact(2).filter_map(|kv| Some((text(&kv[0])?, text(&kv[1])?))).collect(),
        Value::Map(items) => items.iter().filter_map(|(k, v)| Some((text(k)?, text(v)?))).collect(),
        _ => Vec::new(),
    };
    (!pairs.is_empty()).then(|| JobResult::from_pairs(id, pairs))
}

/// A job's result from an `HMGET` of `fields`; `None` without a status.
fn result_of_fields(id: &str, fields: &[&str], values: &redis::Value) -> Option<JobResult> {
    let redis::Value::Array(items) = values else { return None };
    let pairs: Vec<(&str, &str)> = fields.iter().zip(items).filter_map(|(k, v)| Some((*k, value_text(v)?))).collect();
    pairs.iter().any(|(k, _)| *k == "status").then(|| JobResult::from_pairs(id, pairs))
}

/// Reads results. Cheap to clone.
#[derive(Clone)]
pub struct ResultClient {
    urls: String,
    conn: RedisConn,
    keys: KeySchema,
    ttl_secs: u64,
    unknown_after: Duration,
    /// Blocking connections of finished waits, reused by the next ones (a gateway waits once per
    /// synchronous request; connecting each time would cost a TCP and RESP handshake).
    idle_waiters: Arc<Mutex<Vec<RedisConn>>>,
}

/// What `cancel` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job is queued or running; it ends `cancelled` at the worker's next check.
    Requested,
    /// The job had already finished with this status; nothing changed.
    AlreadyFinal(JobStatus),
}

/// TTL of the keys a client writes unless `with_ttl` says otherwise: 24 h, like the workers.
const DEFAULT_TTL_SECS: u64 = 86_400;

/// How long `wait` lets a job with no record at all stay missing before answering "unknown":
/// jobs published with [`Producer`](crate::Producer) are recorded `queued` at once, but one
/// published by a bare AMQP client appears only when a worker starts it.
const DEFAULT_UNKNOWN_AFTER: Duration = Duration::from_secs(10);

/// Most results read in one pipelined round trip by `wait_many`.
pub(super) const READ_WINDOW: usize = 512;

impl ResultClient {
    /// Connects to Redis; keys start with `key_prefix`.
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self, ResultError> {
        let conn = RedisConn::connect(url, Some(Duration::from_secs(10)))
            .await
            .map_err(|e| ResultError::Redis(format!("cannot connect to {}: {e}", redact_url(url))))?;
        Ok(Self {
            urls: url.to_string(),
            conn,
            keys: KeySchema::new(key_prefix),
            ttl_secs: DEFAULT_TTL_SECS,
            unknown_after: DEFAULT_UNKNOWN_AFTER,
            idle_waiters: Arc::default(),
        })
    }

    /// Sets the TTL of the keys this client writes (queued marks); the
    /// `redis.result_ttl_secs` setting.
    pub fn with_ttl(mut self, ttl_secs: u64) -> Self {
        self.ttl_secs = ttl_secs.max(1);
        self
    }

    /// Sets how long `wait` tolerates a job Redis has no record of before answering
    /// [`ResultError::Unknown`] (default 10 s).
    pub fn with_unknown_after(mut self, after: Duration) -> Self {
        self.unknown_after = after;
        self
    }

    /// Asks for a queued or running job to be cancelled. A worker that has not started it yet
    /// finishes it `cancelled` without running it; a running one stops it between engine steps
    /// and keeps the text generated so far.
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, ResultError> {
        let mut cmd = scripts().cancel.call(&self.conn, &[self.keys.job(id)]);
        cmd.arg(genq_shared::keys::CANCEL_FIELD);
        let answer = scripts::run(&self.conn, &[cmd]).await.map_err(redis_err)?;
        let answer: Vec<String> = answer.first().and_then(|v| redis::from_redis_value_ref(v).ok()).unwrap_or_default();
        match answer.first().map(String::as_str) {
            Some("requested") => Ok(CancelOutcome::Requested),
            Some("final") => {
                let status = answer.get(1).and_then(|s| JobStatus::parse(s)).unwrap_or(JobStatus::Done);
                Ok(CancelOutcome::AlreadyFinal(status))
            }
            _ => Err(ResultError::Unknown { id: id.to_string() }),
        }
    }

    /// The job's result as stored now; `None` when Redis has no record of it (not started yet,
    /// unknown, or expired after the TTL).
    pub async fn get(&self, id: &str) -> Result<Option<JobResult>, ResultError> {
        Ok(self.get_many(&[id.to_string()]).await?.pop().flatten())
    }

    /// Many results in one round trip, in the order of `ids`.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Option<JobResult>>, ResultError> {
        let cmds: Vec<redis::Cmd> = ids
            .iter()
            .map(|id| {
                let mut c = redis::cmd("HGETALL");
                c.arg(self.keys.job(id));
                c
            })
            .collect();
        let values = self.conn.query_all(&cmds).await.map_err(redis_err)?;
        Ok(ids.iter().zip(&values).map(|(id, v)| result_of_hash(id, v)).collect())
    }

    /// Like [`ResultClient::get_many`], reading only the hash fields `fields` (less for Redis to
    /// send and for this client to parse when most of the record is not needed); a job whose
    /// `status` is not among them, or has none, reads as `None`.
    pub async fn get_many_fields(&self, ids: &[String], fields: &[&str]) -> Result<Vec<Option<JobResult>>, ResultError> {
        let cmds: Vec<redis::Cmd> = ids
            .iter()
            .map(|id| {
                let mut c = redis::cmd("HMGET");
                c.arg(self.keys.job(id)).arg(fields);
                c
            })
            .collect();
        let values = self.conn.query_all(&cmds).await.map_err(redis_err)?;
        Ok(ids.iter().zip(&values).map(|(id, v)| result_of_fields(id, fields, v)).collect())
    }

    /// Deletes the stored results of `ids` (hash, done list, stream), in pipelined chunks.
    pub async fn forget_many(&self, ids: &[String]) -> Result<(), ResultError> {
        for chunk in ids.chunks(READ_WINDOW) {
            let cmds: Vec<redis::Cmd> = chunk
                .iter()
                .map(|id| {
                    let mut c = redis::cmd("UNLINK");
                    c.arg(self.keys.job(id)).arg(self.keys.done(id)).arg(self.keys.stream(id));
                    c
                })
                .collect();
            self.conn.query_all(&cmds).await.map_err(redis_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn an_hgetall_answer_reads_the_same_in_resp2_and_resp3() {
        let pairs = [("status", "done"), ("text", "hi there"), ("completion_tokens", "2"), ("finished_ms", "9"), ("unknown_field", "x")];
        let resp2 = Value::Array(pairs.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect());
        let resp3 = Value::Map(pairs.iter().map(|(k, v)| (bulk(k), bulk(v))).collect());
        for answer in [resp2, resp3] {
            let r = result_of_hash("j", &answer).expect("a result");
            assert_eq!(r.id, "j");
            assert_eq!(r.status, Some(JobStatus::Done));
            assert_eq!(r.text.as_deref(), Some("hi there"));
            assert_eq!(r.completion_tokens, Some(2));
            assert_eq!(r.finished_ms, Some(9));
        }
        assert!(result_of_hash("j", &Value::Array(vec![])).is_none(), "an empty hash is no result");
        assert!(result_of_hash("j", &Value::Nil).is_none());
    }
}
