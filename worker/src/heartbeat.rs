//! The worker's heartbeat task: announces the worker in the registry (`genq_protocol::registry`)
//! every `HEARTBEAT_INTERVAL` until told to stop, then removes it; each beat also tells readiness
//! whether Redis answered.

use tokio::sync::watch;

use genq_protocol::registry::{self, Announcement, HEARTBEAT_INTERVAL};

use crate::health::Health;

/// Who announces itself, and where.
#[derive(Debug, Clone)]
pub struct HeartbeatSettings {
    /// Redis URL.
    pub url: String,
    /// What is announced.
    pub announcement: Announcement,
    /// Told whether each heartbeat reached Redis (readiness while no result is written).
    pub health: Option<Health>,
}

/// Announces the worker now and every [`HEARTBEAT_INTERVAL`] until `stop` turns true, then
/// removes it. Redis errors are logged, never fatal: the registry only informs people.
pub async fn heartbeat(settings: HeartbeatSettings, mut stop: watch::Receiver<bool>) {
    let mut conn = match registry::connect(&settings.url).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "worker registry unavailable; `genq models` will not list this worker");
            return;
        }
    };
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let result = registry::beat(&mut conn, &settings.announcement).await;
                if let Some(h) = &settings.health {
                    h.set_redis_reachable(result.is_ok());
                }
                if let Err(e) = result {
                    tracing::warn!(error = %e, "worker heartbeat failed");
                }
            }
            // The guard `wait_for` returns is dropped inside this block: it is not `Send`.
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    if let Err(e) = registry::leave(&mut conn, &settings.announcement).await {
        tracing::warn!(error = %e, "could not remove this worker from the registry");
    }
}

/// Spawns [`heartbeat`] on the runtime.
pub fn spawn_heartbeat(settings: HeartbeatSettings, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(heartbeat(settings, stop))
}
