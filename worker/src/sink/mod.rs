//! Where results go: the [`ResultSink`] trait and its implementations.
//!
//! - [`redis`]: the job hash, done list, stream and batch counters of `docs/protocol.md`,
//!   written by `genq_protocol`'s scripts so a final status is written once and every key gets
//!   the TTL.
//! - [`memory`]: a map in process memory, for `genq run --embedded` and tests.

pub mod memory;
pub mod redis;

use std::future::Future;

use genq_shared::JobResult;

/// A sink operation failed; the deliveries concerned are not acked.
#[derive(Debug, thiserror::Error)]
#[error("result sink: {0}")]
pub struct SinkError(pub String);

/// What is known when a worker starts on a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStart {
    /// Job id.
    pub id: String,
    /// `generate` or `score`.
    pub kind: String,
    /// Model name.
    pub model: String,
    /// Worker name (stable across restarts: results, metrics and logs show it).
    pub worker: String,
    /// This start of the worker process (its name plus a per-start nonce): a job left `running`
    /// by another instance is a suspect, even when that instance had the same name.
    pub instance: String,
    /// Publish time, when known.
    pub created_ms: Option<u64>,
    /// Now.
    pub started_ms: u64,
}

/// A final result to store, with the batch it counts towards.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalResult {
    /// The result; its `status` must be final.
    pub result: JobResult,
    /// Batch id, if the job named one.
    pub batch: Option<String>,
    /// Whether the job streams (an end marker is appended to its stream).
    pub stream: bool,
}

/// What `begin` found for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Marked `running`: run it.
    Fresh {
        /// Another worker had started it and never finished it (that worker died or lost its
        /// connection): the job may be what killed it, so it runs alone.
        suspect: bool,
        /// Times it was started alone before (see [`ResultSink::record_solo_run`]).
        solo_runs: u64,
    },
    /// It already has a final result: this delivery is a duplicate; ack it without running.
    Duplicate,
    /// A client asked to cancel it before it started: finish it `cancelled` without running.
    Cancelled,
}

/// Stores job state where clients read it.
pub trait ResultSink: Send + Sync + 'static {
    /// Marks each job `running` unless it already has a final result (a duplicate delivery) or a
    /// cancel request (it is not started), all in one round trip; answers in the order of `starts`.
    fn begin_many(&self, starts: &[JobStart]) -> impl Future<Output = Result<Vec<Begin>, SinkError>> + Send;

    /// Counts one more run of job `id` alone in the batch; stored before the run starts, so a
    /// job that kills its worker each time it runs alone is recognised as poison.
    fn record_solo_run(&self, id: &str) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Which of these jobs a client asked to cancel, in the order of `ids`.
    fn cancel_requested(&self, ids: &[String]) -> impl Future<Output = Result<Vec<bool>, SinkError>> + Send;

    /// Stores final results in one round trip. Each is written only if the job has no final
    /// status yet; returns, per result, whether it was written (false: a duplicate lost the race).
    fn finish(&self, results: &[FinalResult]) -> impl Future<Output = Result<Vec<bool>, SinkError>> + Send;

    /// Appends text chunks to the streams of streaming jobs, `(job id, text)`.
    fn append_chunks(&self, chunks: &[(String, String)]) -> impl Future<Output = Result<(), SinkError>> + Send;
}
