//! Every Lua script that changes a job's keys, for both sides: clients mark jobs `queued`, take
//! marks back and ask for cancels; workers begin and finish jobs and count them towards their
//! batch. Each script makes one job's state change atomic, and none overwrites a final status:
//! the set of final statuses is generated from `JobStatus::is_final`, never written out by hand.
//!
//! One calling scheme serves them all ([`ScriptCalls`]): on one server a call covers up to
//! [`JOBS_PER_CALL`] jobs through `EVALSHA`; on a Redis Cluster each call covers one job (its keys
//! share one `{id}` slot) and sends the source with `EVAL`.

use std::sync::OnceLock;

use redis::{Cmd, RedisResult, Value};

use genq_shared::JobStatus;

use crate::redis_conn::{array_items, RedisConn};

/// Jobs per script call on one server: one call for a whole write batch saves the per-call cost
/// (about a third of a per-job call's Redis CPU), while a call of this size holds Redis for about
/// a millisecond at most.
pub const JOBS_PER_CALL: usize = 128;

/// Marks jobs `queued` unless they already have a status. KEYS: the jobs' hashes; ARGV:
/// created_ms, TTL, then each job's model. A job that has a status already (published before
/// under the same id) is left alone entirely. Answers per job 1 when it marked it, else 0.
const MARK_QUEUED: &str = r#"
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
const UNMARK_QUEUED: &str = r#"
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

/// Asks for a job to be cancelled (sets ARGV[1], the cancel field, in its hash) unless it is
/// unknown or final: `{'requested'}`, `{'final', status}` or `{'unknown'}`.
const CANCEL: &str = r#"
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'unknown'} end
if FINAL[st] then return {'final', st} end
redis.call('HSET', KEYS[1], ARGV[1], '1')
return {'requested'}
"#;

/// Begins several jobs in one call. KEYS: each job's hash; ARGV: TTL, the cancel field's name,
/// then `worker`, `started_ms`, `created_ms`, `kind`, `model`, `instance` per job. A job left
/// `running` by another instance (a worker start that died with it) is a suspect. Answers three
/// integers per job in one flat array: `0,0,0` for a duplicate, `2,0,0` for a cancelled job, else
/// `1, suspect, solo_runs`. Per job one HMGET reads what the decision needs (the cancel request
/// included) and one HSET writes the running state (attempts and, when absent, created_ms
/// included); the TTL is set unless the hash is a `queued` mark, which has it already.
const BEGIN: &str = r#"
local out = {}
for i = 1, #KEYS do
  local job = KEYS[i]
  local a = 6 * i - 3
  local h = redis.call('HMGET', job, 'status', 'instance', 'solo_runs', 'created_ms', 'attempts', ARGV[2])
  local st = h[1]
  local o = 3 * i - 2
  if FINAL[st] then
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
/// per job in a flat array: `1` when written, else the final status already stored. A streamed
/// job's stream ends with an entry whose `end` field holds the status.
const FINISH: &str = r#"
local out = {}
local a = 2
for i = 1, #KEYS / 3 do
  local job, done, stream = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local n = tonumber(ARGV[a + 2])
  local st = redis.call('HGET', job, 'status')
  if FINAL[st] then
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

/// Counts finished jobs towards their batch once each, whatever the number of deliveries: the
/// batch's member set makes it idempotent. KEYS: the batch's counts and members; ARGV: TTL, then
/// a job id and its status for each job. Its keys share the batch's `{id}` slot (the jobs' keys
/// are in others, hence a script of its own).
const COUNT_IN_BATCH: &str = r#"
for i = 2, #ARGV, 2 do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[1], ARGV[i + 1], 1)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"#;

/// The Lua prelude every script starts with: `FINAL[status]` is true for the final statuses.
fn final_statuses_prelude() -> String {
    let entries: Vec<String> =
        JobStatus::ALL.into_iter().filter(|s| s.is_final()).map(|s| format!("['{}'] = true", s.as_str())).collect();
    format!("local FINAL = {{{}}}\n", entries.join(", "))
}

/// One script: its full source (prelude included) and its SHA for `EVALSHA`.
pub struct JobScript {
    source: String,
    script: redis::Script,
}

impl JobScript {
    fn new(body: &str) -> Self {
        let source = format!("{}{}", final_statuses_prelude(), body);
        let script = redis::Script::new(&source);
        Self { source, script }
    }

    /// The full Lua source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A call of this script on `keys`, ready for its ARGV: `EVALSHA` on one server (loaded once,
    /// see [`run`]), `EVAL` with the source on a cluster (every node would need it loaded).
    pub fn call(&self, conn: &RedisConn, keys: &[String]) -> Cmd {
        let mut cmd = if conn.is_cluster() {
            let mut c = redis::cmd("EVAL");
            c.arg(&self.source);
            c
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(self.script.get_hash());
            c
        };
        cmd.arg(keys.len()).arg(keys);
        cmd
    }
}

/// The scripts, compiled once per process.
pub struct Scripts {
    /// Clients: mark jobs `queued` before publishing them.
    pub mark_queued: JobScript,
    /// Clients: take back the marks of jobs that were never published.
    pub unmark_queued: JobScript,
    /// Clients: ask for a job to be cancelled.
    pub cancel: JobScript,
    /// Workers: mark jobs running (or report them duplicate, cancelled, suspect).
    pub begin: JobScript,
    /// Workers: store final results, push the done lists, end the streams.
    pub finish: JobScript,
    /// Workers: count a final job towards its batch once.
    pub count_in_batch: JobScript,
}

impl Scripts {
    fn all(&self) -> [&JobScript; 6] {
        [&self.mark_queued, &self.unmark_queued, &self.cancel, &self.begin, &self.finish, &self.count_in_batch]
    }
}

/// The scripts.
pub fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        mark_queued: JobScript::new(MARK_QUEUED),
        unmark_queued: JobScript::new(UNMARK_QUEUED),
        cancel: JobScript::new(CANCEL),
        begin: JobScript::new(BEGIN),
        finish: JobScript::new(FINISH),
        count_in_batch: JobScript::new(COUNT_IN_BATCH),
    })
}

/// Jobs per script call on `conn`: [`JOBS_PER_CALL`] on one server; one on a cluster, where
/// different jobs' keys live in different slots.
pub fn jobs_per_call(conn: &RedisConn) -> usize {
    if conn.is_cluster() {
        1
    } else {
        JOBS_PER_CALL
    }
}

/// Runs independent commands (script calls among them) in one round trip on a single server; on
/// NOSCRIPT (Redis restarted and lost its script cache) loads every script and runs them again.
pub async fn run(conn: &RedisConn, cmds: &[Cmd]) -> RedisResult<Vec<Value>> {
    match conn.query_all(cmds).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            let mut loader = conn.clone();
            for script in scripts().all() {
                script.script.prepare_invoke().load_async(&mut loader).await?;
            }
            conn.query_all(cmds).await
        }
        other => other,
    }
}

/// A per-job script call failed.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// Redis is unreachable or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The calls answered a number of values that does not match the jobs.
    #[error("redis scripts answered {answers} values for {jobs} jobs, not {per_job} per job")]
    AnswerCount {
        /// Values answered.
        answers: usize,
        /// Jobs asked about.
        jobs: usize,
        /// Values expected per job.
        per_job: usize,
    },
}

/// Runs a per-job script over `jobs`, [`jobs_per_call`] jobs per call: KEYS are `keys_of(job)`
/// for each job of a call, ARGV are `common` then `args_of(job)` for each. Answers the per-job
/// answers of every call flattened, checked to be `per_job` for each job so no answer is matched
/// to the wrong job.
pub async fn per_job<J>(
    conn: &RedisConn,
    script: &JobScript,
    jobs: &[J],
    common: &[String],
    per_job: usize,
    keys_of: impl Fn(&J) -> Vec<String>,
    args_of: impl Fn(&J, &mut Cmd),
) -> Result<Vec<Value>, ScriptError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let cmds: Vec<Cmd> = jobs
        .chunks(jobs_per_call(conn))
        .map(|chunk| {
            let keys: Vec<String> = chunk.iter().flat_map(&keys_of).collect();
            let mut cmd = script.call(conn, &keys);
            cmd.arg(common);
            for job in chunk {
                args_of(job, &mut cmd);
            }
            cmd
        })
        .collect();
    let answers: Vec<Value> = run(conn, &cmds).await?.into_iter().flat_map(array_items).collect();
    if answers.len() != jobs.len() * per_job {
        return Err(ScriptError::AnswerCount { answers: answers.len(), jobs: jobs.len(), per_job });
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_statuses_come_from_job_status() {
        let prelude = final_statuses_prelude();
        for status in JobStatus::ALL {
            let listed = prelude.contains(&format!("['{}'] = true", status.as_str()));
            assert_eq!(listed, status.is_final(), "{} in {prelude}", status.as_str());
        }
    }

    #[test]
    fn no_script_names_a_final_status_by_hand() {
        for script in scripts().all() {
            let body = script.source().strip_prefix(&final_statuses_prelude()).expect("every script starts with the prelude");
            for status in JobStatus::ALL.into_iter().filter(|s| s.is_final()) {
                assert!(!body.contains(&format!("'{}'", status.as_str())), "a script spells out '{}':\n{body}", status.as_str());
            }
        }
    }
}
