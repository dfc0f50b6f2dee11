//! Liveness and readiness, as `/livez` and `/readyz` answer them: flags the parts of the worker
//! set as things happen (the engine thread, the RabbitMQ consumer, Redis, a drain).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Asks the job source whether its connection is up right now.
type ConnectionCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// The worker's health flags. Clones share them.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Flags>);

#[derive(Default)]
struct Flags {
    engine_stopped: AtomicBool,
    consuming: AtomicBool,
    /// The live connection's own state, asked at each readiness check: a lost connection shows
    /// here before the consumer next asks for a delivery.
    connection: Mutex<Option<ConnectionCheck>>,
    redis_unreachable: AtomicBool,
    draining: AtomicBool,
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flags")
            .field("engine_stopped", &self.engine_stopped)
            .field("consuming", &self.consuming)
            .field("redis_unreachable", &self.redis_unreachable)
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// New flags: not consuming yet, Redis taken as reachable until an error says otherwise.
    pub fn new() -> Self {
        Self::default()
    }

    /// The engine thread ended (finished or panicked).
    pub fn engine_stopped(&self) {
        self.0.engine_stopped.store(true, Ordering::Relaxed);
    }

    /// Whether the RabbitMQ consumers are up (true after a (re)connect, false on a loss).
    pub fn set_consuming(&self, consuming: bool) {
        self.0.consuming.store(consuming, Ordering::Relaxed);
    }

    /// Consumers are up on a connection whose live state `connected` reports.
    pub fn consuming_on(&self, connected: impl Fn() -> bool + Send + Sync + 'static) {
        if let Ok(mut c) = self.0.connection.lock() {
            *c = Some(Arc::new(connected));
        }
        self.set_consuming(true);
    }

    fn connection_up(&self) -> bool {
        let check = self.0.connection.lock().ok().and_then(|c| c.clone());
        check.is_none_or(|connected| connected())
    }

    /// Whether the last Redis command answered.
    pub fn set_redis_reachable(&self, reachable: bool) {
        self.0.redis_unreachable.store(!reachable, Ordering::Relaxed);
    }

    /// A shutdown began: in-flight jobs finish, nothing new should be sent here.
    pub fn draining(&self) {
        self.0.draining.store(true, Ordering::Relaxed);
    }

    /// Alive: the process serves and its engine thread runs (`/livez`).
    pub fn live(&self) -> bool {
        !self.0.engine_stopped.load(Ordering::Relaxed)
    }

    /// Why the worker should not get traffic now (`/readyz` answers 503 with it), or `None` when
    /// it is ready: model loaded (the listener starts after), consuming, Redis reachable, not
    /// draining.
    pub fn not_ready(&self) -> Option<&'static str> {
        let f = &self.0;
        if f.engine_stopped.load(Ordering::Relaxed) {
            Some("the engine thread stopped")
        } else if f.draining.load(Ordering::Relaxed) {
            Some("draining after a shutdown signal")
        } else if !f.consuming.load(Ordering::Relaxed) || !self.connection_up() {
            Some("not consuming from RabbitMQ")
        } else if f.redis_unreachable.load(Ordering::Relaxed) {
            Some("Redis unreachable")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_consuming_with_redis_and_not_draining() {
        let h = Health::new();
        assert!(h.live());
        assert_eq!(h.not_ready(), Some("not consuming from RabbitMQ"));
        let up = Arc::new(AtomicBool::new(true));
        let probe = up.clone();
        h.consuming_on(move || probe.load(Ordering::Relaxed));
        assert_eq!(h.not_ready(), None);
        up.store(false, Ordering::Relaxed);
        assert_eq!(h.not_ready(), Some("not consuming from RabbitMQ"), "the connection's own state counts");
        up.store(true, Ordering::Relaxed);
        h.set_redis_reachable(false);
        assert_eq!(h.not_ready(), Some("Redis unreachable"));
        h.set_redis_reachable(true);
        h.clone().draining();
        assert_eq!(h.not_ready(), Some("draining after a shutdown signal"));
        h.engine_stopped();
        assert!(!h.live());
        assert_eq!(h.not_ready(), Some("the engine thread stopped"));
    }
}
