//! Queued marks: a client records jobs `queued` in Redis before publishing them (and takes the
//! marks back when a publish fails for good), so a waiter can tell a queued job from an unknown one.

use genq_protocol::scripts::{self, scripts};

use super::{script_err, ResultClient, ResultError};

impl ResultClient {
    /// Records `(id, model)` jobs as `queued` (with `created_ms` and the TTL), so waiters can
    /// tell a queued job from an unknown one; [`Producer`](crate::Producer) does so before it
    /// publishes them, so no worker can have started them yet. Never overwrites a status already
    /// stored (an earlier job with the same id). Answers, per job, whether this call marked it.
    /// One script call per `scripts::JOBS_PER_CALL` jobs on one server, one per job on a cluster.
    pub async fn mark_queued(&self, jobs: &[(String, String)]) -> Result<Vec<bool>, ResultError> {
        let common = [genq_shared::now_ms().to_string(), self.ttl_secs.to_string()];
        let answers = scripts::per_job(
            &self.conn,
            &scripts().mark_queued,
            jobs,
            &common,
            1,
            |(id, _)| vec![self.keys.job(id)],
            |(_, model), cmd| {
                cmd.arg(model);
            },
        )
        .await
        .map_err(script_err)?;
        Ok(answers.iter().map(|v| redis::from_redis_value_ref::<i64>(v).ok() == Some(1)).collect())
    }

    /// Takes back the `queued` marks of jobs that were never published: each job whose status is
    /// still `queued` is deleted, so a waiter answers "unknown" instead of waiting for a job no
    /// queue holds. Jobs a worker began or finished are left alone.
    pub async fn unmark_queued(&self, ids: &[String]) -> Result<(), ResultError> {
        scripts::per_job(&self.conn, &scripts().unmark_queued, ids, &[], 1, |id| vec![self.keys.job(id)], |_, _| {})
            .await
            .map(|_| ())
            .map_err(script_err)
    }
}
