//! genq's client side: [`Producer`] publishes jobs to RabbitMQ with publisher confirms;
//! [`ResultClient`] reads and waits for results in Redis.
//!
//! - [`producer`]: publishing, confirms, returned and nacked messages as errors.
//! - [`results`]: `get` and `wait` (BLMOVE on the job's done list, never a sleep loop).
//! - [`gateway`]: the HTTP gateway behind `genq serve` (`/generate`, OpenAI-compatible routes).
//! - [`metrics`]: Prometheus metrics of publishing (`genq_published_total`, publish latency).
//! - [`status`]: what `genq status` reads: queue depths, worker metrics, batch counts.
//! - [`input`]: reading JSONL job files (a line is a job object or a bare prompt string).

pub mod gateway;
pub mod input;
pub mod metrics;
pub mod producer;
pub mod results;
pub mod status;

pub use metrics::ProducerMetrics;
pub use producer::{Producer, PublishError};
pub use results::{CancelOutcome, ResultClient, ResultError};
