//! genq's contract, shared by the client library, the gateway, the worker and the tests. No I/O
//! here. `docs/protocol.md` documents it for producers and workers in other languages; the I/O
//! that follows it (AMQP, Redis scripts) is `genq-protocol`'s.
//!
//! - [`job`]: wire format v1 of a job, exactly as published to RabbitMQ.
//! - [`bulk`]: wire format v2, one message carrying many jobs.
//! - [`format`]: a job's output format (JSON Schema, JSON object, regex, Lark grammar).
//! - [`valid`]: validation of a wire job into a [`valid::ValidJob`], with errors that name the field.
//! - [`result`]: job statuses, finish reasons and the result record kept in Redis.
//! - [`keys`]: the Redis key schema and the field names of a job's stream.
//! - [`topology`]: AMQP exchange, queue and routing-key names and queue arguments.
//! - [`settings`]: configuration structs and their layered loading (defaults < file < env < flags).
//! - [`metrics`]: Prometheus metric names, declared once.

pub mod bulk;
pub mod format;
pub mod job;
pub mod keys;
pub mod metrics;
pub mod result;
pub mod settings;
pub mod topology;
pub mod valid;

pub use format::OutputFormat;
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
