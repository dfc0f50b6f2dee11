//! genq's worker: takes jobs from a [`source`], runs them through the [`scheduler`] and an
//! [`engine`], stores results in a [`sink`], and settles deliveries only after the write.
//!
//! - [`broker`]: RabbitMQ connection and topology declaration.
//! - [`source`]: `JobSource` (AMQP, in-memory).
//! - [`intake`]: raw body -> dead-letter / failed / valid job.
//! - [`scheduler`]: continuous batching on the engine thread.
//! - [`engine`]: the `Engine` trait, the candle Llama engine, the echo engine.
//! - [`sink`]: `ResultSink` (Redis, in-memory).
//! - [`pipeline`]: the stages wired together, with shutdown and drain.
//! - [`metrics`], [`http`], [`health`]: Prometheus metrics, liveness and readiness, and the
//!   `/metrics` + `/livez` + `/readyz` listener.
//! - [`backlog`]: the autoscaling signal: queue depth polling and token estimates of waiting jobs.
//! - [`bench`]: the engine benchmark behind `genq bench engine`.
//! - [`runner`]: builds a worker from settings (used by `genq-worker` and `genq run`).
//! - [`redis_conn`]: one Redis connection type for a single server or a Redis Cluster.
//! - [`registry`]: worker heartbeats in Redis, by model (what `genq models` lists).

pub mod backlog;
pub mod bench;
pub mod broker;
pub mod engine;
pub mod health;
pub mod http;
pub mod intake;
pub mod metrics;
pub mod pipeline;
pub mod process;
pub mod redis_conn;
pub mod registry;
pub mod runner;
pub mod scheduler;
pub mod sink;
pub mod source;
