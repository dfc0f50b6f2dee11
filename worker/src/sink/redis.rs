//! Redis result sink, through the scripts of `genq_protocol::scripts`: `begin` marks a job
//! running unless it is already final; `finish` writes the final hash, pushes the done list and
//! sets the TTL (only if no final status exists, so redeliveries never overwrite); the batch
//! count adds the job to its batch exactly once. Works on one server or a Redis Cluster
//! ([`RedisConn`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redis::{Cmd, Value};

use crate::metrics::WorkerMetrics;

use genq_protocol::redis_conn::RedisConn;
use genq_protocol::scripts::{self, scripts, ScriptError};
use genq_protocol::url::redact_url;
use genq_shared::keys::{KeySchema, CANCEL_FIELD, STREAM_TEXT_FIELD};

use super::{Begin, FinalResult, JobStart, ResultSink, SinkError};

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

/// Writes results to Redis (or a Redis Cluster) through a reconnecting connection.
#[derive(Clone)]
pub struct RedisSink {
    conn: RedisConn,
    keys: KeySchema,
    ttl_secs: u64,
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
        let conn = RedisConn::connect(&settings.url, Some(std::time::Duration::from_secs(10)))
            .await
            .map_err(|e| SinkError(format!("cannot connect to Redis at {}: {e}", redact_url(&settings.url))))?;
        Ok(Self {
            conn,
            keys: KeySchema::new(settings.key_prefix.clone()),
            ttl_secs: settings.ttl_secs,
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
        if let Some(m) = &self.metrics {
            m.health.set_redis_reachable(result.is_ok());
        }
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

    /// Runs independent commands (one round trip on a single server).
    async fn run(&self, cmds: &[Cmd]) -> Result<Vec<Value>, SinkError> {
        let result = scripts::run(&self.conn, cmds).await.map_err(|e| sink_err("commands", e));
        self.observe(result)
    }

    /// Runs a per-job script (see [`scripts::per_job`]); its common arguments are the TTL, then
    /// `more`.
    async fn per_job<J>(
        &self,
        script: &scripts::JobScript,
        more: &[&str],
        jobs: &[J],
        per_job: usize,
        keys_of: impl Fn(&J) -> Vec<String>,
        args_of: impl Fn(&J, &mut Cmd),
    ) -> Result<Vec<Value>, SinkError> {
        let common: Vec<String> = std::iter::once(self.ttl_secs.to_string()).chain(more.iter().map(|s| s.to_string())).collect();
        let result = scripts::per_job(&self.conn, script, jobs, &common, per_job, keys_of, args_of).await.map_err(|e| match e {
            ScriptError::Redis(e) => sink_err("scripts", e),
            other => SinkError(other.to_string()),
        });
        self.observe(result)
    }
}

/// A finish answer: `1` -> (true, None); the stored status -> (false, Some(status)).
fn written_or_status(v: &Value) -> (bool, Option<String>) {
    match v {
        Value::Int(1) => (true, None),
        other => (false, redis::from_redis_value_ref::<String>(other).ok()),
    }
}

/// A begin answer: three integers per job.
fn begin_of(answer: &[Value]) -> Begin {
    let int = |i: usize| answer.get(i).and_then(|v| redis::from_redis_value_ref::<i64>(v).ok()).unwrap_or(0);
    match int(0) {
        1 => Begin::Fresh { suspect: int(1) == 1, solo_runs: int(2).max(0) as u64 },
        2 => Begin::Cancelled,
        _ => Begin::Duplicate,
    }
}

impl ResultSink for RedisSink {
    async fn begin_many(&self, starts: &[JobStart]) -> Result<Vec<Begin>, SinkError> {
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let flat = self
            .per_job(
                &scripts().begin,
                &[CANCEL_FIELD],
                starts,
                3,
                |s| vec![self.keys.job(&s.id)],
                |start, cmd| {
                    cmd.arg(&start.worker)
                        .arg(start.started_ms)
                        .arg(start.created_ms.map(|v| v.to_string()).unwrap_or_default())
                        .arg(&start.kind)
                        .arg(&start.model)
                        .arg(&start.instance);
                },
            )
            .await?;
        Ok(flat.chunks(3).map(begin_of).collect())
    }

    async fn record_solo_run(&self, id: &str) -> Result<(), SinkError> {
        let mut cmd = redis::cmd("HINCRBY");
        cmd.arg(self.keys.job(id)).arg("solo_runs").arg(1);
        self.run(&[cmd]).await.map(|_| ())
    }

    async fn cancel_requested(&self, ids: &[String]) -> Result<Vec<bool>, SinkError> {
        let cmds: Vec<Cmd> = ids
            .iter()
            .map(|id| {
                let mut c = redis::cmd("HEXISTS");
                c.arg(self.keys.job(id)).arg(CANCEL_FIELD);
                c
            })
            .collect();
        let found = self.run(&cmds).await?;
        Ok(found.iter().map(|v| redis::from_redis_value_ref::<i64>(v).unwrap_or(0) == 1).collect())
    }

    async fn finish(&self, results: &[FinalResult]) -> Result<Vec<bool>, SinkError> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let answers = self
            .per_job(
                &scripts().finish,
                &[],
                results,
                1,
                |f| vec![self.keys.job(&f.result.id), self.keys.done(&f.result.id), self.keys.stream(&f.result.id)],
                |f, cmd| {
                    let status = f.result.status.map(|s| s.as_str()).unwrap_or("failed");
                    let fields = f.result.to_fields();
                    cmd.arg(status).arg(if f.stream { "1" } else { "0" }).arg(fields.len() * 2);
                    for (k, v) in fields {
                        cmd.arg(k).arg(v);
                    }
                },
            )
            .await?;
        let mut written = Vec::with_capacity(results.len());
        // One count per batch for all its jobs here (a bulk file's jobs finish together).
        let mut by_batch: BTreeMap<&str, Vec<(&str, String)>> = BTreeMap::new();
        for (f, answer) in results.iter().zip(&answers) {
            let answer = written_or_status(answer);
            let fresh = answer.0;
            written.push(fresh);
            // A duplicate still counts (idempotently) with the stored status: the first delivery
            // may have died between its write and its count.
            let status = if fresh { f.result.status.map(|s| s.as_str().to_string()) } else { answer.1 };
            if let (Some(batch), Some(status)) = (&f.batch, status) {
                by_batch.entry(batch).or_default().push((&f.result.id, status));
            }
        }
        let counts: Vec<Cmd> = by_batch
            .into_iter()
            .map(|(batch, jobs)| {
                let mut cmd = scripts().count_in_batch.call(&self.conn, &[self.keys.batch(batch), self.keys.batch_members(batch)]);
                cmd.arg(self.ttl_secs);
                for (id, status) in jobs {
                    cmd.arg(id).arg(status);
                }
                cmd
            })
            .collect();
        self.run(&counts).await?;
        Ok(written)
    }

    async fn append_chunks(&self, chunks: &[(String, String)]) -> Result<(), SinkError> {
        let mut cmds = Vec::with_capacity(chunks.len() * 2);
        for (id, text) in chunks {
            let key = self.keys.stream(id);
            let mut add = redis::cmd("XADD");
            add.arg(&key).arg("*").arg(STREAM_TEXT_FIELD).arg(text);
            let mut ttl = redis::cmd("EXPIRE");
            ttl.arg(&key).arg(self.ttl_secs);
            cmds.extend([add, ttl]);
        }
        self.run(&cmds).await.map(|_| ())
    }
}
