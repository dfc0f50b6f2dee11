//! A batch's progress for `genq status --batch ID`: the counts per final status that workers
//! keep in the `genq:batch:{ID}` hash.

use std::collections::BTreeMap;

use genq_shared::keys::KeySchema;

/// Counts per final status of batch `id` (empty when no job of it has finished, or it expired).
pub async fn counts(redis_url: &str, key_prefix: &str, id: &str) -> Result<BTreeMap<String, u64>, redis::RedisError> {
    let mut conn = genq_protocol::redis_conn::RedisConn::connect(redis_url, Some(std::time::Duration::from_secs(10))).await?;
    let raw: BTreeMap<String, String> = redis::cmd("HGETALL").arg(KeySchema::new(key_prefix).batch(id)).query_async(&mut conn).await?;
    Ok(raw.into_iter().filter_map(|(k, v)| v.parse().ok().map(|n| (k, n))).collect())
}
