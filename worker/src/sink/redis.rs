//! Redis result sink. Two Lua scripts make each job's state change atomic: `begin` marks a job
//! running unless it is already final; `finish` writes the final hash, pushes the done list, counts
//! the batch and sets the TTL — only if no final status exists, so redeliveries never overwrite.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redis::aio::ConnectionManager;

use crate::metrics::WorkerMetrics;

use genq_shared::keys::KeySchema;

use super::{Begin, FinalResult, JobStart, ResultSink, SinkError};

/// Returns `{0}` for a duplicate, `{2}` for a cancelled job, else `{1, suspect, solo_runs}`.
const BEGIN_LUA: &str = r#"
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'done' or st == 'failed' or st == 'expired' or st == 'cancelled' then return {0} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {2} end
local suspect = 0
if st == 'running' and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then suspect = 1 end
local solo = tonumber(redis.call('HGET', KEYS[1], 'solo_runs') or '0')
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[2], 'started_ms', ARGV[3], 'kind', ARGV[5], 'model', ARGV[6])
if ARGV[4] ~= '' then redis.call('HSETNX', KEYS[1], 'created_ms', ARGV[4]) end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {1, suspect, solo}
"#;

const FINISH_LUA: &str = r#"
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'done' or st == 'failed' or st == 'expired' or st == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
  redis.call('EXPIRE', KEYS[3], ARGV[1])
end
if ARGV[4] == '1' then
  redis.call('XADD', KEYS[4], '*', 'end', ARGV[2])
  redis.call('EXPIRE', KEYS[4], ARGV[1])
end
return 1
"#;

/// Where and how to write.
#[derive(Debug, Clone)]
pub struct RedisSinkSettings {
    /// Redis URL.
    pub url: String,
    /// Key prefix.
    pub key_prefix: String,
    /// TTL of every key, in seconds.
    pub ttl_secs: u64,
}

/// Writes results to Redis through a reconnecting connection manager.
#[derive(Clone)]
pub struct RedisSink {
    conn: ConnectionManager,
    keys: KeySchema,
    ttl_secs: u64,
    begin: redis::Script,
    finish: redis::Script,
    /// Set while Redis answers with errors; cleared (and counted as a reconnect) on the first
    /// success after.
    failing: Arc<AtomicBool>,
    metrics: Option<WorkerMetrics>,
}

fn sink_err(what: &str, e: redis::RedisError) -> SinkError {
    SinkError(format!("redis {what}: {e}"))
}

impl RedisSink {
    /// Connects to Redis.
    pub async fn connect(settings: &RedisSinkSettings) -> Result<Self, SinkError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| SinkError(format!("redis URL {}: {e}", crate::broker::redact_url(&settings.url))))?;
        let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(std::time::Duration::from_secs(10)));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| SinkError(format!("cannot connect to Redis at {}: {e}", crate::broker::redact_url(&settings.url))))?;
        Ok(Self {
            conn,
            keys: KeySchema::new(settings.key_prefix.clone()),
            ttl_secs: settings.ttl_secs,
            begin: redis::Script::new(BEGIN_LUA),
            finish: redis::Script::new(FINISH_LUA),
            failing: Arc::default(),
            metrics: None,
        })
    }

    /// Counts recoveries from an outage in `metrics` (`genq_reconnects_total{target="redis"}`).
    pub fn with_metrics(mut self, metrics: WorkerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Notes whether Redis answered, logging the start and end of an outage.
    fn observe<T>(&self, result: Result<T, SinkError>) -> Result<T, SinkError> {
        match &result {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!("Redis reachable again");
                    if let Some(m) = &self.metrics {
                        m.reconnected("redis");
                    }
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "Redis unreachable; writes are retried and deliveries held until it is back");
                }
            }
        }
        result
    }

    /// Runs `pipe`; on NOSCRIPT (Redis restarted and lost its script cache) loads the scripts
    /// and runs it once more.
    async fn run_pipeline<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, SinkError> {
        let result = self.try_pipeline(pipe).await;
        self.observe(result)
    }

    async fn try_pipeline<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, SinkError> {
        let mut conn = self.conn.clone();
        match pipe.query_async::<T>(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                for script in [&self.begin, &self.finish] {
                    script.prepare_invoke().load_async(&mut conn).await.map_err(|e| sink_err("script load", e))?;
                }
                pipe.query_async::<T>(&mut conn).await.map_err(|e| sink_err("pipeline", e))
            }
            other => other.map_err(|e| sink_err("pipeline", e)),
        }
    }

}

impl ResultSink for RedisSink {
    async fn begin(&self, start: &JobStart) -> Result<Begin, SinkError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA")
            .arg(self.begin.get_hash())
            .arg(2)
            .arg(self.keys.job(&start.id))
            .arg(self.keys.cancel(&start.id))
            .arg(self.ttl_secs)
            .arg(&start.worker)
            .arg(start.started_ms)
            .arg(start.created_ms.map(|v| v.to_string()).unwrap_or_default())
            .arg(&start.kind)
            .arg(&start.model);
        let (answer,): (Vec<i64>,) = self.run_pipeline(&pipe).await?;
        Ok(match answer.as_slice() {
            [1, suspect, solo] => Begin::Fresh { suspect: *suspect == 1, solo_runs: (*solo).max(0) as u64 },
            [2] => Begin::Cancelled,
            _ => Begin::Duplicate,
        })
    }

    async fn record_solo_run(&self, id: &str) -> Result<(), SinkError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HINCRBY").arg(self.keys.job(id)).arg("solo_runs").arg(1).ignore();
        self.run_pipeline::<()>(&pipe).await
    }

    async fn cancel_requested(&self, ids: &[String]) -> Result<Vec<bool>, SinkError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("EXISTS").arg(self.keys.cancel(id));
        }
        let found: Vec<i64> = self.run_pipeline(&pipe).await?;
        Ok(found.into_iter().map(|n| n == 1).collect())
    }

    async fn finish(&self, results: &[FinalResult]) -> Result<Vec<bool>, SinkError> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for f in results {
            let id = &f.result.id;
            let status = f.result.status.map(|s| s.as_str()).unwrap_or("failed");
            let batch_key = f.batch.as_deref().map(|b| self.keys.batch(b)).unwrap_or_else(|| self.keys.job(id));
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.finish.get_hash())
                .arg(4)
                .arg(self.keys.job(id))
                .arg(self.keys.done(id))
                .arg(batch_key)
                .arg(self.keys.stream(id))
                .arg(self.ttl_secs)
                .arg(status)
                .arg(if f.batch.is_some() { "1" } else { "0" })
                .arg(if f.stream { "1" } else { "0" });
            for (k, v) in f.result.to_fields() {
                cmd.arg(k).arg(v);
            }
        }
        let written: Vec<i64> = self.run_pipeline(&pipe).await?;
        Ok(written.into_iter().map(|w| w == 1).collect())
    }

    async fn append_chunks(&self, chunks: &[(String, String)]) -> Result<(), SinkError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (id, text) in chunks {
            let key = self.keys.stream(id);
            pipe.cmd("XADD").arg(&key).arg("*").arg("text").arg(text).ignore();
            pipe.cmd("EXPIRE").arg(&key).arg(self.ttl_secs).ignore();
        }
        self.run_pipeline::<()>(&pipe).await
    }
}
