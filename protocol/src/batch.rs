//! The one "fill a batch until it is full or a deadline passes" loop: what the worker's result
//! writer and its engine thread (when idle, giving jobs a moment to join the first) both do.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// Takes items from `rx` into `take` for at most `wait` (what is ready now is always taken), as
/// long as `take` answers true (room for more). Answers false when the channel is closed and
/// empty, true otherwise.
pub async fn gather<T>(rx: &mut mpsc::Receiver<T>, wait: Duration, mut take: impl FnMut(T) -> bool) -> bool {
    let until = Instant::now() + wait;
    loop {
        let item = match rx.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
            Err(mpsc::error::TryRecvError::Empty) => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return true;
                }
                match tokio::time::timeout(left, rx.recv()).await {
                    Ok(Some(item)) => item,
                    Ok(None) => return false,
                    Err(_) => return true,
                }
            }
        };
        if !take(item) {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stops_when_full_when_the_wait_is_over_or_when_the_channel_closes() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 0..5 {
            tx.send(i).await.expect("send");
        }
        let mut got = Vec::new();
        let open = gather(&mut rx, Duration::from_secs(60), |i| {
            got.push(i);
            got.len() < 3
        })
        .await;
        assert_eq!((open, got.clone()), (true, vec![0, 1, 2]), "full after three");

        let started = Instant::now();
        let open = gather(&mut rx, Duration::from_millis(50), |i| {
            got.push(i);
            true
        })
        .await;
        assert!(open && started.elapsed() >= Duration::from_millis(50), "waited out the rest");
        assert_eq!(got, vec![0, 1, 2, 3, 4]);

        drop(tx);
        assert!(!gather(&mut rx, Duration::from_secs(60), |_| true).await, "closed and empty");
    }
}
