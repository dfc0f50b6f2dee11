//! What `genq status` reads, one source per module; rendering lives in the CLI.
//!
//! - [`http`]: a minimal HTTP/1.0 GET (worker `/metrics`, the RabbitMQ management API).
//! - [`queues`]: queue depths, from the management API when reachable, else passive declares.
//! - [`workers`]: a worker's metrics, sampled twice to give its throughput.
//! - [`batch`]: a batch's counts per final status.

pub mod batch;
pub mod http;
pub mod queues;
pub mod workers;
