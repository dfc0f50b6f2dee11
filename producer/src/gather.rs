//! Gathering jobs published one at a time into one publish: the first job to arrive waits up to
//! `producer.bulk_wait_ms` (less once `producer.bulk_max_jobs` have come) for company, then
//! publishes everything gathered and hands each caller its own outcome. No job waits longer than
//! that for company; if the caller that gathered is dropped before it publishes, a later caller
//! takes the gathered jobs over.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

/// Items waiting to be published together, each with the way back to its caller.
pub(crate) struct Gather<T, R> {
    pending: Mutex<Vec<(T, oneshot::Sender<R>)>>,
    full: Notify,
}

impl<T, R> Default for Gather<T, R> {
    fn default() -> Self {
        Self { pending: Mutex::new(Vec::new()), full: Notify::new() }
    }
}

impl<T, R> Gather<T, R> {
    /// Adds `item` and returns its outcome: the first caller of a round waits `wait` (or until
    /// `max` items are there), then passes every item gathered to `flush`, which returns one
    /// outcome per item in order. `None` when the caller publishing it was dropped mid-publish.
    pub(crate) async fn submit<F, Fut>(&self, item: T, max: usize, wait: Duration, flush: F) -> Option<R>
    where
        F: FnOnce(Vec<T>) -> Fut,
        Fut: Future<Output = Vec<R>>,
    {
        let (tx, mut rx) = oneshot::channel();
        let first = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.push((item, tx));
            if pending.len() >= max {
                self.full.notify_one();
            }
            pending.len() == 1
        };
        if first {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.full.notified() => {}
            }
        } else {
            // The first caller publishes this round; should it be dropped before it takes the
            // items, whoever waits longest takes them over.
            if let Ok(r) = tokio::time::timeout(wait * 2 + TAKE_OVER_SLACK, &mut rx).await {
                return r.ok();
            }
        }
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if !taken.is_empty() {
            let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = taken.into_iter().unzip();
            for (reply, outcome) in replies.into_iter().zip(flush(items).await) {
                let _ = reply.send(outcome);
            }
        }
        rx.await.ok()
    }
}

/// Beyond twice the wait, a caller whose round was not taken takes it over.
const TAKE_OVER_SLACK: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Flushes by recording the round's items and answering each with itself times ten.
    async fn flush(rounds: Arc<Mutex<Vec<Vec<u32>>>>, items: Vec<u32>) -> Vec<u32> {
        rounds.lock().expect("rounds").push(items.clone());
        items.into_iter().map(|i| i * 10).collect()
    }

    #[tokio::test]
    async fn callers_within_the_wait_share_one_flush_and_get_their_own_outcome() {
        let gather: Arc<Gather<u32, u32>> = Arc::default();
        let rounds: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let mut calls = Vec::new();
        for i in 0..3 {
            let (g, r) = (gather.clone(), rounds.clone());
            calls.push(tokio::spawn(async move { g.submit(i, 100, Duration::from_millis(300), |items| flush(r, items)).await }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut outcomes = Vec::new();
        for c in calls {
            outcomes.push(c.await.expect("task"));
        }
        assert_eq!(outcomes, vec![Some(0), Some(10), Some(20)]);
        assert_eq!(*rounds.lock().expect("rounds"), vec![vec![0, 1, 2]]);
    }

    #[tokio::test]
    async fn a_full_round_is_flushed_without_waiting() {
        let gather: Arc<Gather<u32, u32>> = Arc::default();
        let rounds: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let started = std::time::Instant::now();
        let calls: Vec<_> = (0..2)
            .map(|i| {
                let (g, r) = (gather.clone(), rounds.clone());
                tokio::spawn(async move { g.submit(i, 2, Duration::from_secs(60), |items| flush(r, items)).await })
            })
            .collect();
        for c in calls {
            assert!(c.await.expect("task").is_some());
        }
        assert!(started.elapsed() < Duration::from_secs(1), "waited {:?}", started.elapsed());
        assert_eq!(rounds.lock().expect("rounds").len(), 1);
    }

    #[tokio::test]
    async fn a_round_whose_first_caller_is_dropped_is_taken_over() {
        let gather: Arc<Gather<u32, u32>> = Arc::default();
        let rounds: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let (g, r) = (gather.clone(), rounds.clone());
        let first = tokio::spawn(async move { g.submit(1, 100, Duration::from_millis(20), |items| flush(r, items)).await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        first.abort();
        let outcome = gather.submit(2, 100, Duration::from_millis(20), |items| flush(rounds.clone(), items)).await;
        assert_eq!(outcome, Some(20));
        assert_eq!(*rounds.lock().expect("rounds"), vec![vec![1, 2]]);
    }
}
