//! Where jobs come from: the [`JobSource`] trait and its implementations.
//!
//! - [`amqp`]: RabbitMQ consumer on a model's two queues, manual acks, `basic_qos(prefetch)`.
//! - [`memory`]: an in-process queue, for `genq run --embedded` and tests.
//! - [`acks`]: the AMQP source's settling task (acks combined with `multiple=true` where safe).
//! - [`bulk`]: a bulk message's delivery split into one settler per job.

pub(crate) mod acks;
pub mod amqp;
pub(crate) mod bulk;
pub mod memory;

use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;

/// How a delivery is settled once its outcome is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Done with: the result is stored (or the job was a duplicate).
    Ack,
    /// Reject without requeue, so it is dead-lettered for a person to read: a message that is
    /// not a job at all, or a poison job (after its `failed` result is stored).
    DeadLetter,
    /// Could not be finished here: put it back for another try.
    Requeue,
}

/// A source operation failed.
#[derive(Debug, thiserror::Error)]
#[error("job source: {0}")]
pub struct SourceError(pub String);

/// A boxed future returned by [`Settle::settle`].
pub type SettleFuture = Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>>;

/// Settles one delivery with its source.
pub trait Settle: Send + Sync {
    /// Acks, dead-letters or requeues the delivery.
    fn settle(self: Box<Self>, how: Settlement) -> SettleFuture;
}

/// Publishes one job of a bulk message to the dead-letter exchange on its own (a poison job),
/// so the rest of its message can be acked.
pub trait DeadLetterJob: Send + Sync {
    /// Publishes `body`, the job `id`'s JSON, as a v1 message into `genq.dead`; resolves once the
    /// broker has confirmed it.
    fn dead_letter(&self, id: String, body: Vec<u8>) -> SettleFuture;
}

/// One message taken from a source, not yet settled.
pub struct Delivery {
    /// The raw body; parsed and validated by the intake.
    pub body: Vec<u8>,
    /// AMQP `content_type`, when set: it tells a bulk (v2) message from a job (v1).
    pub content_type: Option<String>,
    /// AMQP `message_id` (the job id), when set.
    pub message_id: Option<String>,
    /// When the producer published it (Unix ms), when known.
    pub created_ms: Option<u64>,
    /// 1 for the first delivery, more after requeues and crashes.
    pub attempt: u64,
    /// Settles this delivery.
    pub settler: Box<dyn Settle>,
    /// Dead-letters one job of a bulk message on its own, where the source can.
    pub dead_letters: Option<Arc<dyn DeadLetterJob>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("message_id", &self.message_id).field("bytes", &self.body.len()).finish()
    }
}

/// A stream of deliveries.
pub trait JobSource: Send {
    /// The next delivery; `Ok(None)` when the source is exhausted or stopped.
    fn next(&mut self) -> impl Future<Output = Result<Option<Delivery>, SourceError>> + Send;

    /// Waits for the next delivery, then appends it and every further one already available
    /// without waiting, up to `max` in `out`. `Ok(false)` when the source is exhausted or stopped.
    fn next_batch(&mut self, max: usize, out: &mut Vec<Delivery>) -> impl Future<Output = Result<bool, SourceError>> + Send;

    /// Stops taking new deliveries; those already taken can still be settled.
    fn stop(&mut self) -> impl Future<Output = ()> + Send;

    /// Closes the source; deliveries not settled by now go back to their queue.
    fn close(self) -> impl Future<Output = ()> + Send;
}
