//! The HTTP gateway (`genq serve`, or the `genq-gateway` binary, which links no model code): the
//! original `POST /generate` API and OpenAI-compatible routes in front of the queue. It publishes
//! jobs to RabbitMQ and answers from Redis, so any number of gateways and workers scale
//! independently.
//!
//! - [`server`]: the router and its layers, `/healthz`, `/metrics`, serving with shutdown.
//! - [`args`]: the flags of `genq serve` and `genq-gateway`.
//! - [`state`]: [`Gateway`], what handlers share: settings and (re)connecting clients.
//! - [`generate`]: `POST /generate`, the original contract.
//! - [`openai`]: `POST /v1/completions` and `/v1/chat/completions`, plain or streamed.
//! - [`models`]: `GET /v1/models`, the models with live workers.
//! - [`logprobs`]: OpenAI's log-prob shapes from a result's token log-probs.
//! - [`response_format`]: OpenAI's `response_format` as the job's output `format`.
//! - [`files`], [`batches`]: OpenAI's Files and Batch APIs; a batch's requests run as jobs.
//! - [`jobs`]: `/v1/jobs` (submit, status, cancel) and waiting with cancel-on-disconnect.
//! - [`sse`]: following a job's Redis stream into Server-Sent Events.
//! - [`request`]: reading bodies into typed requests, errors naming the field.
//! - [`error`]: errors in OpenAI's shape and their HTTP statuses.
//! - [`auth`]: optional bearer tokens.
//! - [`metrics`]: publishes by outcome and requests by route and status.

pub mod args;
pub mod auth;
pub mod batches;
pub mod completion;
pub mod error;
pub mod files;
pub mod generate;
pub mod jobs;
pub mod logprobs;
pub mod metrics;
pub mod models;
pub mod openai;
pub mod request;
pub mod response_format;
pub mod server;
pub mod sse;
pub mod state;

pub use error::ApiError;
pub use server::{router, run, serve};
pub use state::Gateway;
