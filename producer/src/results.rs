//! Reading results from Redis: `get` one hash, or `wait` for a final status by blocking on the
//! job's done list (BLMOVE from the list to itself, so the element stays for other waiters).

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use genq_shared::keys::KeySchema;
use genq_shared::{JobResult, JobStatus};
use genq_worker::broker::redact_url;

/// Reading a result failed.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// Redis is unreachable or answered with an error.
    #[error("redis: {0}")]
    Redis(String),
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

/// Reads results. Cheap to clone.
#[derive(Clone)]
pub struct ResultClient {
    client: redis::Client,
    conn: MultiplexedConnection,
    keys: KeySchema,
}

/// Longest single block on a done list; waits re-check the hash at least this often.
const BLOCK_SLICE: Duration = Duration::from_secs(5);

impl ResultClient {
    /// Connects to Redis; keys start with `key_prefix`.
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self, ResultError> {
        let client =
            redis::Client::open(url).map_err(|e| ResultError::Redis(format!("bad URL {}: {e}", redact_url(url))))?;
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| ResultError::Redis(format!("cannot connect to {}: {e}", redact_url(url))))?;
        Ok(Self { client, conn, keys: KeySchema::new(key_prefix) })
    }

    /// The job's result as stored now; `None` when Redis has no record of it (not started yet,
    /// unknown, or expired after the TTL).
    pub async fn get(&self, id: &str) -> Result<Option<JobResult>, ResultError> {
        Ok(self.get_many(&[id.to_string()]).await?.pop().flatten())
    }

    /// Many results in one round trip, in the order of `ids`.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Option<JobResult>>, ResultError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(self.keys.job(id));
        }
        let mut conn = self.conn.clone();
        let maps: Vec<std::collections::HashMap<String, String>> = pipe.query_async(&mut conn).await.map_err(redis_err)?;
        Ok(ids
            .iter()
            .zip(maps)
            .map(|(id, m)| if m.is_empty() { None } else { Some(JobResult::from_fields(id, &m)) })
            .collect())
    }

    async fn blocking_connection(&self) -> Result<MultiplexedConnection, ResultError> {
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        self.client.get_multiplexed_async_connection_with_config(&config).await.map_err(redis_err)
    }

    async fn wait_on(&self, blocking: &mut MultiplexedConnection, id: &str, deadline: Option<Instant>) -> Result<JobResult, ResultError> {
        let done = self.keys.done(id);
        loop {
            let current = self.get(id).await?;
            if let Some(r) = &current {
                if r.status.is_some_and(JobStatus::is_final) {
                    return Ok(current.unwrap_or_default());
                }
            }
            let slice = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        let status = current.and_then(|r| r.status).map(|s| s.as_str().to_string()).unwrap_or_else(|| "unknown".into());
                        return Err(ResultError::Timeout { id: id.to_string(), status });
                    }
                    left.min(BLOCK_SLICE)
                }
                None => BLOCK_SLICE,
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
        self.wait_on(&mut blocking, id, timeout.map(|t| Instant::now() + t)).await
    }

    /// Waits for every job, handing each result to `on_result` in the order of `ids`. Reads
    /// finished results in pipelined chunks and blocks only on the first unfinished one.
    pub async fn wait_many(
        &self,
        ids: &[String],
        timeout: Option<Duration>,
        mut on_result: impl FnMut(Result<JobResult, ResultError>),
    ) -> Result<(), ResultError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut blocking = self.blocking_connection().await?;
        for chunk in ids.chunks(512) {
            let found = self.get_many(chunk).await?;
            for (id, r) in chunk.iter().zip(found) {
                match r {
                    Some(r) if r.status.is_some_and(JobStatus::is_final) => on_result(Ok(r)),
                    _ => on_result(self.wait_on(&mut blocking, id, deadline).await),
                }
            }
        }
        Ok(())
    }
}
