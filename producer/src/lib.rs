//! genq's client library: [`Producer`] publishes jobs to RabbitMQ with publisher confirms;
//! [`ResultClient`] reads, waits for and cancels results in Redis. It links the contract
//! (`genq-shared`) and the protocol (`genq-protocol`) only: no model code, no HTTP server.
//!
//! - [`producer`]: publishing, confirms, returned and nacked messages as errors.
//! - `pack`: packing jobs that route alike into bulk (v2) messages.
//! - `gather`: jobs submitted one at a time, gathered for `producer.bulk_wait_ms` to share them.
//! - [`results`]: `get` and `wait` (BLMOVE on the job's done list, never a sleep loop), `cancel`.
//! - [`metrics`]: Prometheus metrics of publishing (`genq_published_total`, publish latency).
//! - [`input`]: reading JSONL job files (a line is a job object or a bare prompt string).

mod gather;
pub mod input;
pub mod metrics;
mod pack;
pub mod producer;
pub mod results;

pub use genq_protocol::BrokerError;
pub use metrics::ProducerMetrics;
pub use producer::{Producer, PublishError};
pub use results::{CancelOutcome, ResultClient, ResultError};
