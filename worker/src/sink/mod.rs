//! Where results go: the [`ResultSink`] trait and its implementations.
//!
//! - [`redis`]: the job hash, done list, stream and batch counters of DESIGN.md, written by Lua
//!   scripts so a final status is written once and every key gets the TTL.
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
    /// Worker name.
    pub worker: String,
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

/// Stores job state where clients read it.
pub trait ResultSink: Send + Sync + 'static {
    /// Marks the job `running` unless it already has a final result, in which case this delivery
    /// is a duplicate: returns `false` and the caller acks it without running it again.
    fn begin(&self, start: &JobStart) -> impl Future<Output = Result<bool, SinkError>> + Send;

    /// Stores final results in one round trip. Each is written only if the job has no final
    /// status yet; returns, per result, whether it was written (false: a duplicate lost the race).
    fn finish(&self, results: &[FinalResult]) -> impl Future<Output = Result<Vec<bool>, SinkError>> + Send;

    /// Appends text chunks to the streams of streaming jobs, `(job id, text)`.
    fn append_chunks(&self, chunks: &[(String, String)]) -> impl Future<Output = Result<(), SinkError>> + Send;
}
