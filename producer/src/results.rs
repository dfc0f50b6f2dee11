//! Reading results from Redis: `get` one hash, or `wait` for a final status by blocking on the
//! job's done list (BLMOVE from the list to itself, so the element stays for other waiters).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use genq_worker::redis_conn::{array_items, RedisConn};

use genq_shared::keys::KeySchema;
use genq_shared::{JobResult, JobStatus};
use genq_worker::broker::redact_url;

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

/// The result in an HGETALL answer (RESP2 flat array or RESP3 map); `None` for an empty hash.
fn result_of_hash(id: &str, hash: &redis::Value) -> Option<JobResult> {
    use redis::Value;
    fn text(v: &Value) -> Option<&str> {
        match v {
            Value::BulkString(b) => std::str::from_utf8(b).ok(),
            Value::SimpleString(s) => Some(s),
            _ => None,
        }
    }
    let pairs: Vec<(&str, &str)> = match hash {
        Value::Array(items) => items.chunks_exact(2).filter_map(|kv| Some((text(&kv[0])?, text(&kv[1])?))).collect(),
        Value::Map(items) => items.iter().filter_map(|(k, v)| Some((text(k)?, text(v)?))).collect(),
        _ => Vec::new(),
    };
    (!pairs.is_empty()).then(|| JobResult::from_pairs(id, pairs))
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

/// Asks for a job to be cancelled (sets ARGV[1], the cancel field, in its hash) unless it is
/// unknown or final: `{'requested'}`, `{'final', status}` or `{'unknown'}`.
const CANCEL_LUA: &str = r#"
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'unknown'} end
if st == 'done' or st == 'failed' or st == 'expired' or st == 'cancelled' then return {'final', st} end
redis.call('HSET', KEYS[1], ARGV[1], '1')
return {'requested'}
"#;

/// Marks jobs `queued` unless they already have a status. KEYS: the jobs' hashes; ARGV:
/// created_ms, TTL, then each job's model. A job that has a status already (published before
/// under the same id) is left alone entirely. Answers per job 1 when it marked it, else 0.
const MARK_QUEUED_LUA: &str = r#"
local out = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  if redis.call('HSETNX', k, 'status', 'queued') == 1 then
    redis.call('HSET', k, 'model', ARGV[i + 2], 'created_ms', ARGV[1])
    redis.call('EXPIRE', k, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"#;

/// Takes back `queued` marks of jobs whose publish failed for good: deletes each hash whose
/// status is still `queued` (one a worker began or finished is left alone). KEYS: the hashes.
/// Answers per job 1 when it deleted it, else 0.
const UNMARK_QUEUED_LUA: &str = r#"
local out = {}
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], 'status') == 'queued' then
    redis.call('DEL', KEYS[i])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"#;

/// TTL of the keys a client writes unless `with_ttl` says otherwise: 24 h, like the workers.
const DEFAULT_TTL_SECS: u64 = 86_400;

/// How long `wait` lets a job with no record at all stay missing before answering "unknown":
/// jobs published with [`Producer`](crate::Producer) are recorded `queued` at once, but one
/// published by a bare AMQP client appears only when a worker starts it.
const DEFAULT_UNKNOWN_AFTER: Duration = Duration::from_secs(10);

/// Most results read in one pipelined round trip by `wait_many`.
const READ_WINDOW: usize = 512;

/// Results read right after `wait_many` blocked on one (the window then doubles up to
/// [`READ_WINDOW`] while every job in it is final).
const MIN_READ_WINDOW: usize = 16;

/// Jobs per `queued`-mark script call on one server (and per round of one-job calls on a cluster).
const MARKS_PER_CALL: usize = 512;

/// Idle blocking connections a client keeps for later waits, at most.
const MAX_IDLE_WAITERS: usize = 16;

/// Longest single block on a done list; waits re-check the hash at least this often.
const BLOCK_SLICE: Duration = Duration::from_secs(5);

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

    /// Runs a per-job script over `jobs` (id and its own argument, if any), [`MARKS_PER_CALL`]
    /// jobs per EVAL on one server; on a cluster, where jobs' keys live in different slots, one
    /// EVAL per job. KEYS: the jobs' hashes; ARGV: `common`, then each job's argument. Answers
    /// the script's per-job answers, checked to be one per job.
    async fn eval_per_job(&self, source: &str, jobs: &[(&str, Option<&str>)], common: &[String]) -> Result<Vec<redis::Value>, ResultError> {
        let eval = |chunk: &[(&str, Option<&str>)]| {
            let mut c = redis::cmd("EVAL");
            c.arg(source).arg(chunk.len());
            for (id, _) in chunk {
                c.arg(self.keys.job(id));
            }
            c.arg(common);
            for (_, arg) in chunk {
                c.arg(*arg);
            }
            c
        };
        let per_call = if self.conn.is_cluster() { 1 } else { MARKS_PER_CALL };
        let mut answers = Vec::with_capacity(jobs.len());
        for calls in jobs.chunks(MARKS_PER_CALL) {
            let cmds: Vec<redis::Cmd> = calls.chunks(per_call).map(eval).collect();
            answers.extend(self.conn.query_all(&cmds).await.map_err(redis_err)?.into_iter().flat_map(array_items));
        }
        if answers.len() != jobs.len() {
            return Err(ResultError::Redis(format!("a script answered for {} jobs out of {}", answers.len(), jobs.len())));
        }
        Ok(answers)
    }

    /// Records `(id, model)` jobs as `queued` (with `created_ms` and the TTL), so waiters can
    /// tell a queued job from an unknown one; [`Producer`](crate::Producer) does so before it
    /// publishes them, so no worker can have started them yet. Never overwrites a status already
    /// stored (an earlier job with the same id). Answers, per job, whether this call marked it.
    /// One script call per [`MARKS_PER_CALL`] jobs on one server, one per job on a cluster.
    pub async fn mark_queued(&self, jobs: &[(String, String)]) -> Result<Vec<bool>, ResultError> {
        let jobs: Vec<(&str, Option<&str>)> = jobs.iter().map(|(id, model)| (id.as_str(), Some(model.as_str()))).collect();
        let common = [genq_shared::now_ms().to_string(), self.ttl_secs.to_string()];
        let answers = self.eval_per_job(MARK_QUEUED_LUA, &jobs, &common).await?;
        Ok(answers.iter().map(|v| redis::from_redis_value_ref::<i64>(v).ok() == Some(1)).collect())
    }

    /// Takes back the `queued` marks of jobs that were never published: each job whose status is
    /// still `queued` is deleted, so a waiter answers "unknown" instead of waiting for a job no
    /// queue holds. Jobs a worker began or finished are left alone.
    pub async fn unmark_queued(&self, ids: &[String]) -> Result<(), ResultError> {
        let jobs: Vec<(&str, Option<&str>)> = ids.iter().map(|id| (id.as_str(), None)).collect();
        self.eval_per_job(UNMARK_QUEUED_LUA, &jobs, &[]).await.map(|_| ())
    }

    /// Asks for a queued or running job to be cancelled. A worker that has not started it yet
    /// finishes it `cancelled` without running it; a running one stops it between engine steps
    /// and keeps the text generated so far.
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, ResultError> {
        let mut conn = self.conn.clone();
        let answer: Vec<String> = redis::Script::new(CANCEL_LUA)
            .key(self.keys.job(id))
            .arg(genq_shared::keys::CANCEL_FIELD)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
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

    /// A connection without a response timeout, for blocking reads: an idle one from an earlier
    /// wait when there is one, else a new one.
    async fn blocking_connection(&self) -> Result<RedisConn, ResultError> {
        if let Some(conn) = self.idle_waiters.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(conn);
        }
        RedisConn::connect(&self.urls, None).await.map_err(redis_err)
    }

    /// Keeps a blocking connection for the next wait, unless the wait ended in a Redis error (the
    /// connection may be broken) or enough are kept already. A wait whose future is dropped
    /// mid-block never gets here, so no connection with a block in flight is reused.
    fn keep_blocking_connection<T>(&self, conn: RedisConn, outcome: &Result<T, ResultError>) {
        if matches!(outcome, Err(ResultError::Redis(_))) {
            return;
        }
        if let Ok(mut idle) = self.idle_waiters.lock() {
            if idle.len() < MAX_IDLE_WAITERS {
                idle.push(conn);
            }
        }
    }

    async fn wait_on(&self, blocking: &mut RedisConn, id: &str, deadline: Option<Instant>) -> Result<JobResult, ResultError> {
        let done = self.keys.done(id);
        let mut missing_since: Option<Instant> = None;
        loop {
            let current = self.get(id).await?;
            let mut slice_cap = BLOCK_SLICE;
            match &current {
                None => {
                    let since = *missing_since.get_or_insert_with(Instant::now);
                    let left = self.unknown_after.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        return Err(ResultError::Unknown { id: id.to_string() });
                    }
                    slice_cap = left.min(Duration::from_millis(500));
                }
                Some(r) if r.status.is_some_and(JobStatus::is_final) => return Ok(current.unwrap_or_default()),
                Some(_) => missing_since = None,
            }
            let slice = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        let status = current.and_then(|r| r.status).map(|s| s.as_str().to_string()).unwrap_or_else(|| "unknown".into());
                        return Err(ResultError::Timeout { id: id.to_string(), status });
                    }
                    left.min(slice_cap)
                }
                None => slice_cap,
            };
            let _: Option<String> = redis::cmd("BLMOVE")
                .arg(&done)
                .arg(&done)
                .arg("LEFT")
                .arg("LEFT")
                .arg(slice.as_secs_f64().max(0.01))
                .query_async(blocking)
                .await
                .map_err(redis_err)?;
        }
    }

    /// Waits until the job reaches a final status, or `timeout` passes (`None`: no limit).
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<JobResult, ResultError> {
        let mut blocking = self.blocking_connection().await?;
        let outcome = self.wait_on(&mut blocking, id, timeout.map(|t| Instant::now() + t)).await;
        self.keep_blocking_connection(blocking, &outcome);
        outcome
    }

    /// Waits for every job, handing each result to `on_result` in the order of `ids`. Reads
    /// results in pipelined windows (one round trip for up to [`READ_WINDOW`] jobs) and blocks
    /// only on the first unfinished one. A final result read ahead of an unfinished one is kept,
    /// not read again; only the jobs still unfinished are re-read. After a block the window
    /// shrinks to [`MIN_READ_WINDOW`] and doubles while whole windows come back final, so a fast
    /// fleet is read in large pipelines and a slow one is not re-read hundreds of jobs at a time.
    pub async fn wait_many(
        &self,
        ids: &[String],
        timeout: Option<Duration>,
        mut on_result: impl FnMut(Result<JobResult, ResultError>),
    ) -> Result<(), ResultError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut blocking = self.blocking_connection().await?;
        let mut next = 0;
        let mut window = READ_WINDOW;
        // Results of ids[next..], as far as read: `Some` once final, `None` while not (or unread).
        let mut ahead: VecDeque<Option<JobResult>> = VecDeque::new();
        while next < ids.len() {
            let limit = window.min(ids.len() - next);
            if ahead.len() < limit {
                ahead.resize(limit, None);
            }
            let want: Vec<usize> = (0..limit).filter(|&i| ahead[i].is_none()).collect();
            let want_ids: Vec<String> = want.iter().map(|&i| ids[next + i].clone()).collect();
            for (i, r) in want.into_iter().zip(self.get_many(&want_ids).await?) {
                ahead[i] = r.filter(|r| r.status.is_some_and(JobStatus::is_final));
            }
            while let Some(Some(_)) = ahead.front() {
                if let Some(Some(r)) = ahead.pop_front() {
                    on_result(Ok(r));
                }
                next += 1;
            }
            if ahead.is_empty() {
                window = (window * 2).min(READ_WINDOW);
                continue;
            }
            ahead.pop_front();
            on_result(self.wait_on(&mut blocking, &ids[next], deadline).await);
            next += 1;
            window = MIN_READ_WINDOW;
        }
        let outcome = Ok(());
        self.keep_blocking_connection(blocking, &outcome);
        outcome
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
