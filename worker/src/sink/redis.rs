//! Redis result sink. Lua scripts make each job's state change atomic: `begin` marks a job
//! running unless it is already final; `finish` writes the final hash, pushes the done list and
//! sets the TTL — only if no final status exists, so redeliveries never overwrite; `batch` counts
//! the job towards its batch exactly once. Works on one server or a Redis Cluster
//! ([`RedisConn`]): on one server a `begin` or `finish` call covers up to 128 jobs of a write
//! batch; on a cluster each call covers one job, so it touches keys of one `{id}` slot only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redis::{Cmd, Value};

use crate::metrics::WorkerMetrics;
use crate::redis_conn::{array_items, RedisConn};

use genq_shared::keys::{KeySchema, CANCEL_FIELD};

use super::{Begin, FinalResult, JobStart, ResultSink, SinkError};

/// Begins several jobs in one call. KEYS: each job's hash; ARGV: TTL, the cancel field's name,
/// then `worker`, `started_ms`, `created_ms`, `kind`, `model`, `instance` per job. A job left
/// `running` by another instance (a worker start that died with it) is a suspect. Answers three integers
/// per job in one flat array: `0,0,0` for a duplicate, `2,0,0` for a cancelled job, else
/// `1, suspect, solo_runs`. Per job one HMGET reads what the decision needs (the cancel request
/// included) and one HSET writes the running state (attempts and, when absent, created_ms
/// included); the TTL is set unless the hash is a `queued` mark, which has it already.
const BEGIN_LUA: &str = r#"
local out = {}
for i = 1, #KEYS do
  local job = KEYS[i]
  local a = 6 * i - 3
  local h = redis.call('HMGET', job, 'status', 'instance', 'solo_runs', 'created_ms', 'attempts', ARGV[2])
  local st = h[1]
  local o = 3 * i - 2
  if st == 'done' or st == 'failed' or st == 'expired' or st == 'cancelled' then
    out[o], out[o + 1], out[o + 2] = 0, 0, 0
  elseif h[6] then
    out[o], out[o + 1], out[o + 2] = 2, 0, 0
  else
    local suspect = 0
    if st == 'running' and h[2] ~= ARGV[a + 5] then suspect = 1 end
    local attempts = tonumber(h[5] or '0') + 1
    if ARGV[a + 2] ~= '' and not h[4] then
      redis.call('HSET', job, 'status', 'running', 'worker', ARGV[a], 'instance', ARGV[a + 5], 'started_ms', ARGV[a + 1], 'kind', ARGV[a + 3], 'model', ARGV[a + 4], 'attempts', attempts, 'created_ms', ARGV[a + 2])
    else
      redis.call('HSET', job, 'status', 'running', 'worker', ARGV[a], 'instance', ARGV[a + 5], 'started_ms', ARGV[a + 1], 'kind', ARGV[a + 3], 'model', ARGV[a + 4], 'attempts', attempts)
    end
    if st ~= 'queued' then redis.call('EXPIRE', job, ARGV[1]) end
    out[o], out[o + 1], out[o + 2] = 1, suspect, tonumber(h[3] or '0')
  end
end
return out
"#;

/// Finishes several jobs in one call. KEYS: each job's hash, done list and stream, in threes;
/// ARGV: TTL, then per job its status, `1` if it streams, the number of hash arguments and those
/// field/value arguments. Writes a job only if it has no final status yet; answers one element
/// per job in a flat array: `1` when written, else the final status already stored.
const FINISH_LUA: &str = r#"
local out = {}
local a = 2
for i = 1, #KEYS / 3 do
  local job, done, stream = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local n = tonumber(ARGV[a + 2])
  local st = redis.call('HGET', job, 'status')
  if st == 'done' or st == 'failed' or st == 'expired' or st == 'cancelled' then
    out[i] = st
  else
    if n > 0 then redis.call('HSET', job, unpack(ARGV, a + 3, a + 2 + n)) end
    redis.call('EXPIRE', job, ARGV[1])
    redis.call('RPUSH', done, ARGV[a])
    redis.call('EXPIRE', done, ARGV[1])
    if ARGV[a + 1] == '1' then
      redis.call('XADD', stream, '*', 'end', ARGV[a])
      redis.call('EXPIRE', stream, ARGV[1])
    end
    out[i] = 1
  end
  a = a + 3 + n
end
return out
"#;

/// Jobs per `begin`/`finish` script call on one server: one call for a whole write batch saves
/// the per-call cost (about a third of a per-job call's Redis CPU), while a call of this size
/// holds Redis for about a millisecond at most.
const JOBS_PER_SCRIPT_CALL: usize = 128;

/// Counts a finished job towards its batch once, whatever the number of deliveries: the batch's
/// member set makes it idempotent. Its keys share the batch's `{id}` slot (the job's keys are in
/// another slot, hence a second script rather than one).
const BATCH_LUA: &str = r#"
if redis.call('SADD', KEYS[2], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
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

/// Writes results to Redis (or a Redis Cluster) through a reconnecting connection.
#[derive(Clone)]
pub struct RedisSink {
    conn: RedisConn,
    keys: KeySchema,
    ttl_secs: u64,
    begin: redis::Script,
    finish: redis::Script,
    batch: redis::Script,
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
            .map_err(|e| SinkError(format!("cannot connect to Redis at {}: {e}", crate::broker::redact_url(&settings.url))))?;
        Ok(Self {
            conn,
            keys: KeySchema::new(settings.key_prefix.clone()),
            ttl_secs: settings.ttl_secs,
            begin: redis::Script::new(BEGIN_LUA),
            finish: redis::Script::new(FINISH_LUA),
            batch: redis::Script::new(BATCH_LUA),
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

    /// Jobs per script call: [`JOBS_PER_SCRIPT_CALL`] on one server; one on a cluster, where
    /// different jobs' keys live in different slots.
    fn jobs_per_script_call(&self) -> usize {
        if self.conn.is_cluster() {
            1
        } else {
            JOBS_PER_SCRIPT_CALL
        }
    }

    /// A script call: `EVALSHA` on one server (the scripts are loaded once), `EVAL` on a cluster
    /// (every node would need the scripts loaded; sending the source keeps that simple).
    fn script(&self, script: &redis::Script, source: &str, keys: &[String]) -> Cmd {
        let mut cmd = if self.conn.is_cluster() {
            let mut c = redis::cmd("EVAL");
            c.arg(source);
            c
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(script.get_hash());
            c
        };
        cmd.arg(keys.len());
        for k in keys {
            cmd.arg(k);
        }
        cmd
    }

    /// Runs independent commands (one round trip on a single server); on NOSCRIPT (Redis
    /// restarted and lost its script cache) loads the scripts and runs them once more.
    async fn run(&self, cmds: &[Cmd]) -> Result<Vec<Value>, SinkError> {
        let result = self.try_run(cmds).await;
        self.observe(result)
    }

    async fn try_run(&self, cmds: &[Cmd]) -> Result<Vec<Value>, SinkError> {
        match self.conn.query_all(cmds).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut conn = self.conn.clone();
                for script in [&self.begin, &self.finish, &self.batch] {
                    script.prepare_invoke().load_async(&mut conn).await.map_err(|e| sink_err("script load", e))?;
                }
                self.conn.query_all(cmds).await.map_err(|e| sink_err("commands", e))
            }
            other => other.map_err(|e| sink_err("commands", e)),
        }
    }
}

/// Checks that the script calls answered `per_job` values for each of `jobs` jobs, so no answer
/// is matched to the wrong job.
fn answer_count<T>(answers: Vec<T>, jobs: usize, per_job: usize) -> Result<Vec<T>, SinkError> {
    if answers.len() == jobs * per_job {
        Ok(answers)
    } else {
        Err(SinkError(format!("redis scripts answered {} values for {jobs} jobs, not {per_job} per job", answers.len())))
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
        let cmds: Vec<Cmd> = starts
            .chunks(self.jobs_per_script_call())
            .map(|chunk| {
                let keys: Vec<String> = chunk.iter().map(|s| self.keys.job(&s.id)).collect();
                let mut cmd = self.script(&self.begin, BEGIN_LUA, &keys);
                cmd.arg(self.ttl_secs).arg(CANCEL_FIELD);
                for start in chunk {
                    cmd.arg(&start.worker)
                        .arg(start.started_ms)
                        .arg(start.created_ms.map(|v| v.to_string()).unwrap_or_default())
                        .arg(&start.kind)
                        .arg(&start.model)
                        .arg(&start.instance);
                }
                cmd
            })
            .collect();
        let answers = self.run(&cmds).await?;
        let flat: Vec<Value> = answers.into_iter().flat_map(array_items).collect();
        let flat = answer_count(flat, starts.len(), 3)?;
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
        let cmds: Vec<Cmd> = results
            .chunks(self.jobs_per_script_call())
            .map(|chunk| {
                let keys: Vec<String> = chunk
                    .iter()
                    .flat_map(|f| [self.keys.job(&f.result.id), self.keys.done(&f.result.id), self.keys.stream(&f.result.id)])
                    .collect();
                let mut cmd = self.script(&self.finish, FINISH_LUA, &keys);
                cmd.arg(self.ttl_secs);
                for f in chunk {
                    let status = f.result.status.map(|s| s.as_str()).unwrap_or("failed");
                    let fields = f.result.to_fields();
                    cmd.arg(status).arg(if f.stream { "1" } else { "0" }).arg(fields.len() * 2);
                    for (k, v) in fields {
                        cmd.arg(k).arg(v);
                    }
                }
                cmd
            })
            .collect();
        let answers = answer_count(self.run(&cmds).await?.into_iter().flat_map(array_items).collect(), results.len(), 1)?;
        let mut written = Vec::with_capacity(results.len());
        let mut counts = Vec::new();
        for (f, answer) in results.iter().zip(&answers) {
            let answer = written_or_status(answer);
            let fresh = answer.0;
            written.push(fresh);
            // A duplicate still counts (idempotently) with the stored status: the first delivery
            // may have died between its write and its count.
            let status = if fresh { f.result.status.map(|s| s.as_str().to_string()) } else { answer.1 };
            if let (Some(batch), Some(status)) = (&f.batch, status) {
                let mut cmd = self.script(&self.batch, BATCH_LUA, &[self.keys.batch(batch), self.keys.batch_members(batch)]);
                cmd.arg(self.ttl_secs).arg(&f.result.id).arg(status);
                counts.push(cmd);
            }
        }
        self.run(&counts).await?;
        Ok(written)
    }

    async fn append_chunks(&self, chunks: &[(String, String)]) -> Result<(), SinkError> {
        let mut cmds = Vec::with_capacity(chunks.len() * 2);
        for (id, text) in chunks {
            let key = self.keys.stream(id);
            let mut add = redis::cmd("XADD");
            add.arg(&key).arg("*").arg("text").arg(text);
            let mut ttl = redis::cmd("EXPIRE");
            ttl.arg(&key).arg(self.ttl_secs);
            cmds.extend([add, ttl]);
        }
        self.run(&cmds).await.map(|_| ())
    }
}
