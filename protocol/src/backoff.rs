//! Exponential backoff for the loops that reconnect or retry: each wait doubles, up to a cap.

use std::time::Duration;

/// The next wait of a retry loop: starts at `first`, doubles after each wait, never above `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// A backoff whose first wait is `first` and whose waits stop growing at `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first.min(max), max }
    }

    /// The wait the next [`Backoff::sleep`] will take.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Returns the current wait and doubles the next one.
    pub fn advance(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    /// Sleeps for the current wait, then doubles the next one.
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.advance()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<u64> = (0..5).map(|_| b.advance().as_millis() as u64).collect();
        assert_eq!(waits, vec![100, 200, 400, 500, 500]);
        assert_eq!(b.peek(), Duration::from_millis(500));
    }
}
