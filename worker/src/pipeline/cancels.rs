//! The cancel watcher: every `every`, asks the sink which jobs the engine thread holds a client
//! wants cancelled, and passes their ids to the engine thread.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::sink::ResultSink;

/// Polls until the engine thread is gone. `holding` is the engine thread's own list of the jobs
/// it holds; a request for a job not there yet is seen at a later poll (and a job not begun yet
/// is checked by `begin` itself).
pub(crate) async fn watch_cancels<K: ResultSink>(
    sink: Arc<K>,
    holding: watch::Receiver<Vec<String>>,
    cancels: mpsc::UnboundedSender<String>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ids: Vec<String> = holding.borrow().clone();
        if ids.is_empty() {
            if cancels.is_closed() {
                return;
            }
            continue;
        }
        match sink.cancel_requested(&ids).await {
            Ok(flags) => {
                for (id, _) in ids.into_iter().zip(flags).filter(|(_, f)| *f) {
                    if cancels.send(id).is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot check cancel requests"),
        }
    }
}
