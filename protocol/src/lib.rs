//! The protocol genq's producers, gateways and workers speak, in one place for both sides: the
//! RabbitMQ connection and topology, the Redis connection and every Lua script that reads or
//! writes a job's keys, worker heartbeats, one backoff and URL handling. The contract it follows
//! (types, keys, names) is `genq-shared`'s; `docs/protocol.md` documents it for other languages.
//!
//! - [`broker`]: connecting to RabbitMQ, declaring the topology, probing a queue's counts.
//! - [`redis_conn`]: one Redis connection type for a single server or a Redis Cluster.
//! - [`scripts`]: the Lua scripts of a job's lifecycle, with the final statuses from `JobStatus`.
//! - [`registry`]: worker heartbeats by model (what `genq models` lists).
//! - [`backoff`]: exponential backoff for reconnect and retry loops.
//! - [`batch`]: filling a batch from a channel until it is full or a deadline passes.
//! - [`url`]: URL lists and redaction for logs.
//! - `process` (feature `process`): the shutdown signal and log set-up of every `main`.

pub mod backoff;
pub mod batch;
pub mod broker;
#[cfg(feature = "process")]
pub mod process;
pub mod redis_conn;
pub mod registry;
pub mod scripts;
pub mod url;

pub use broker::BrokerError;
pub use redis_conn::RedisConn;
