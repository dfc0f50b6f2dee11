//! Which workers are alive, by model: each worker announces itself in Redis with a heartbeat
//! ([`beat`], [`leave`]), so `genq models` and the gateway can list the models that have live
//! workers without the RabbitMQ management API ([`live_models`], [`live_workers`]).
//!
//! Keys (under the configured prefix, `genq` by default; built by `KeySchema`):
//! - `genq:workers:{<model>}`: sorted set, member = worker id, score = its last heartbeat (Unix
//!   ms). The `{…}` hash tag keeps one model's key in one Redis Cluster slot.
//! - `genq:models`: sorted set, member = model name, score = the last heartbeat of any of its
//!   workers.
//!
//! A worker refreshes both every [`HEARTBEAT_INTERVAL`] and removes itself when it stops; one
//! that dies silently drops out once its score is older than [`LIVE_FOR`]. Both keys expire
//! after [`LIVE_FOR`] without any heartbeat, so a fleet that is gone leaves nothing behind.
//! The registry is advisory (what is running), never used to route jobs: routing is RabbitMQ's.

use std::time::Duration;

use genq_shared::keys::KeySchema;
use genq_shared::now_ms;

use crate::redis_conn::RedisConn;

/// How often a worker refreshes its entry.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How long an entry counts as live after its last heartbeat (three missed heartbeats).
pub const LIVE_FOR: Duration = Duration::from_secs(15);

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
#[error("worker registry (Redis): {0}")]
pub struct RegistryError(#[from] redis::RedisError);

/// Who announces itself, and where.
#[derive(Debug, Clone)]
pub struct Announcement {
    /// Key prefix (`redis.key_prefix`).
    pub key_prefix: String,
    /// Model served.
    pub model: String,
    /// The worker's id (`worker.worker_id` or `<hostname>-<pid>`).
    pub worker_id: String,
}

/// A model and its live workers, newest heartbeat first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelWorkers {
    /// Model name.
    pub model: String,
    /// Ids of the workers whose heartbeat is younger than [`LIVE_FOR`].
    pub workers: Vec<String>,
}

/// A connection for registry reads and heartbeats (5 s response timeout).
pub async fn connect(url: &str) -> Result<RedisConn, RegistryError> {
    Ok(RedisConn::connect(url, Some(Duration::from_secs(5))).await?)
}

/// One heartbeat: refreshes the worker's and its model's entries and drops stale workers.
pub async fn beat(conn: &mut RedisConn, s: &Announcement) -> Result<(), RegistryError> {
    let now = now_ms();
    let live_ms = LIVE_FOR.as_millis() as u64;
    let ttl = LIVE_FOR.as_secs() as i64;
    let keys = KeySchema::new(&s.key_prefix);
    let (workers, models) = (keys.workers(&s.model), keys.models());
    // One pipeline per key: the two keys may live in different cluster slots. Each command is
    // idempotent, so a partial heartbeat is simply completed by the next one.
    for (key, member) in [(&workers, &s.worker_id), (&models, &s.model)] {
        let mut pipe = redis::pipe();
        pipe.zadd(key, member, now)
            .ignore()
            .zrembyscore(key, "-inf", now.saturating_sub(live_ms))
            .ignore()
            .expire(key, ttl)
            .ignore();
        pipe.query_async::<()>(&mut *conn).await?;
    }
    Ok(())
}

/// Removes the worker; its model too when it was the model's last live worker.
pub async fn leave(conn: &mut RedisConn, s: &Announcement) -> Result<(), RegistryError> {
    let keys = KeySchema::new(&s.key_prefix);
    let workers = keys.workers(&s.model);
    let mut pipe = redis::pipe();
    pipe.zrem(&workers, &s.worker_id).ignore();
    pipe.query_async::<()>(&mut *conn).await?;
    // The model stays listed while another of its workers is live; the next heartbeat of any
    // worker refreshes it, and without one it drops out after LIVE_FOR.
    let left: usize = redis::cmd("ZCARD").arg(&workers).query_async(&mut *conn).await?;
    if left == 0 {
        redis::cmd("ZREM").arg(keys.models()).arg(&s.model).query_async::<()>(&mut *conn).await?;
    }
    Ok(())
}

/// The models with at least one live worker, each with its live workers, sorted by model name.
pub async fn live_models(url: &str, key_prefix: &str) -> Result<Vec<ModelWorkers>, RegistryError> {
    let mut conn = connect(url).await?;
    let since = now_ms().saturating_sub(LIVE_FOR.as_millis() as u64);
    let mut models: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(KeySchema::new(key_prefix).models())
        .arg(since)
        .arg("+inf")
        .query_async(&mut conn)
        .await?;
    models.sort();
    let mut out = Vec::with_capacity(models.len());
    for model in models {
        let workers = live_workers_on(&mut conn, key_prefix, &model, since).await?;
        if !workers.is_empty() {
            out.push(ModelWorkers { model, workers });
        }
    }
    Ok(out)
}

/// The live workers of `model`, newest heartbeat first.
pub async fn live_workers(url: &str, key_prefix: &str, model: &str) -> Result<Vec<String>, RegistryError> {
    let mut conn = connect(url).await?;
    let since = now_ms().saturating_sub(LIVE_FOR.as_millis() as u64);
    live_workers_on(&mut conn, key_prefix, model, since).await
}

async fn live_workers_on(
    conn: &mut RedisConn,
    key_prefix: &str,
    model: &str,
    since_ms: u64,
) -> Result<Vec<String>, RegistryError> {
    Ok(redis::cmd("ZREVRANGEBYSCORE")
        .arg(KeySchema::new(key_prefix).workers(model))
        .arg("+inf")
        .arg(since_ms)
        .query_async(conn)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_two_missed_heartbeats() {
        assert!(LIVE_FOR >= HEARTBEAT_INTERVAL * 3);
    }
}
