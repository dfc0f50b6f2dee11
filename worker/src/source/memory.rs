//! An in-process job source: bodies pushed through a bounded channel, settlements recorded so
//! callers (and tests) can see that every job was acked exactly once.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::{Delivery, JobSource, Settle, SettleFuture, Settlement, SourceError};

/// Record of how each delivery was settled, by sequence number.
/// A `std::sync::Mutex`: no `.await` happens while it is held.
pub type SettlementLog = Arc<Mutex<Vec<(u64, Settlement)>>>;

/// Sends job bodies into a [`MemorySource`]. Dropping every sender ends the source.
#[derive(Clone)]
pub struct MemoryQueue {
    tx: mpsc::Sender<Message>,
}

/// A body and its content type.
type Message = (Vec<u8>, Option<String>);

impl MemoryQueue {
    /// Enqueues one body (a v1 job); waits while the queue is full.
    pub async fn push(&self, body: Vec<u8>) -> Result<(), SourceError> {
        self.push_typed(body, None).await
    }

    /// Enqueues one body with a content type (a bulk message has its own); waits while the queue
    /// is full.
    pub async fn push_typed(&self, body: Vec<u8>, content_type: Option<&str>) -> Result<(), SourceError> {
        self.tx.send((body, content_type.map(str::to_string))).await.map_err(|_| SourceError("memory source closed".into()))
    }
}

/// The consuming side.
pub struct MemorySource {
    rx: mpsc::Receiver<Message>,
    next_seq: u64,
    log: SettlementLog,
}

/// A bounded in-memory queue holding at most `capacity` bodies.
pub fn memory_queue(capacity: usize) -> (MemoryQueue, MemorySource, SettlementLog) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let log: SettlementLog = Arc::default();
    (MemoryQueue { tx }, MemorySource { rx, next_seq: 0, log: log.clone() }, log)
}

struct MemorySettler {
    seq: u64,
    log: SettlementLog,
}

impl Settle for MemorySettler {
    fn settle(self: Box<Self>, how: Settlement) -> SettleFuture {
        if let Ok(mut log) = self.log.lock() {
            log.push((self.seq, how));
        }
        Box::pin(async { Ok(()) })
    }
}

impl MemorySource {
    fn delivery(&mut self, (body, content_type): Message) -> Delivery {
        let seq = self.next_seq;
        self.next_seq += 1;
        Delivery {
            body,
            content_type,
            dead_letters: None,
            message_id: None,
            created_ms: Some(genq_shared::now_ms()),
            attempt: 1,
            settler: Box::new(MemorySettler { seq, log: self.log.clone() }),
        }
    }
}

impl JobSource for MemorySource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        let Some(body) = self.rx.recv().await else { return Ok(None) };
        Ok(Some(self.delivery(body)))
    }

    async fn next_batch(&mut self, max: usize, out: &mut Vec<Delivery>) -> Result<bool, SourceError> {
        let Some(body) = self.rx.recv().await else { return Ok(false) };
        out.push(self.delivery(body));
        while out.len() < max {
            let Ok(body) = self.rx.try_recv() else { break };
            out.push(self.delivery(body));
        }
        Ok(true)
    }

    async fn stop(&mut self) {
        self.rx.close();
    }

    async fn close(self) {}
}
