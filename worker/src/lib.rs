//! genq's worker: takes jobs from a [`source`], runs them through the [`scheduler`] and an
//! [`engine`], stores results in a [`sink`], and settles deliveries only after the write.
//!
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
//! - [`setup`]: builds a worker from settings (used by `genq-worker` and `genq run`).
//! - [`heartbeat`]: the worker's registry heartbeat (what `genq models` lists).
//!
//! The RabbitMQ and Redis protocol both sides speak (connections, topology, Lua scripts) is
//! `genq-protocol`'s.

// Items the crate does not export are `pub(crate)`: what is `pub` is the library's API.
#![deny(unreachable_pub)]

pub mod backlog;
pub mod bench;
pub mod engine;
pub(crate) mod health;
pub mod heartbeat;
pub mod http;
pub(crate) mod intake;
pub mod metrics;
pub mod pipeline;
pub mod process;
pub(crate) mod scheduler;
pub mod setup;
pub mod sink;
pub mod source;
