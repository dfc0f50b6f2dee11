//! Waiting for final results: BLMOVE on each job's done list (from the list to itself, so the
//! element stays for other waiters), never a sleep loop; blocking connections are kept for reuse.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use genq_protocol::redis_conn::RedisConn;
use genq_shared::{JobResult, JobStatus};

use super::{redis_err, ResultClient, ResultError, READ_WINDOW};


/// Results read right after `wait_many` blocked on one (the window then doubles up to
/// [`READ_WINDOW`] while every job in it is final).
const MIN_READ_WINDOW: usize = 16;

/// Idle blocking connections a client keeps for later waits, at most.
const MAX_IDLE_WAITERS: usize = 16;

/// Longest single block on a done list; waits re-check the hash at least this often.
const BLOCK_SLICE: Duration = Duration::from_secs(5);

impl ResultClient {
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
}
