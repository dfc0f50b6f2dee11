//! genq's contract, shared by the producer, the worker and the tests. No I/O here.
//!
//! - [`job`]: wire format v1 of a job, exactly as published to RabbitMQ.
//! - [`valid`]: validation of a wire job into a [`valid::ValidJob`], with errors that name the field.
//! - [`result`]: job statuses, finish reasons and the result record kept in Redis.
//! - [`keys`]: the Redis key schema.
//! - [`topology`]: AMQP exchange, queue and routing-key names and queue arguments.
//! - [`settings`]: configuration structs and their layered loading (defaults < file < env < flags).
//! - [`metrics`]: Prometheus metric names, declared once.

pub mod job;
pub mod keys;
pub mod metrics;
pub mod result;
pub mod settings;
pub mod topology;
pub mod valid;

pub use job::{ChatMessage, JobKind, JobRequest, Priority};
pub use result::{FinishReason, JobResult, JobStatus};
pub use valid::{ValidJob, ValidationError};

/// Milliseconds since the Unix epoch, the time unit of every `*_ms` field.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
