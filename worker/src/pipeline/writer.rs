//! The result writer: gathers what the engine thread and the intake send ([`ToWriter`]) into
//! batches, stores each batch in one round trip (retrying while the sink is unreachable), and
//! settles each delivery only after its result is stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use genq_protocol::backoff::Backoff;
use genq_protocol::batch::gather;
use genq_shared::JobResult;

use crate::metrics::WorkerMetrics;
use crate::scheduler::JobOutcome;
use crate::sink::{FinalResult, ResultSink};
use crate::source::Settlement;

use super::inflight::{InFlight, ToWriter};

/// First wait before retrying a sink write that failed; doubles up to [`SINK_MAX_RETRY`].
pub(crate) const SINK_FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest wait between retries of a sink write.
pub(crate) const SINK_MAX_RETRY: Duration = Duration::from_secs(5);

/// What the writer did.
#[derive(Default)]
pub(crate) struct WriterReport {
    /// Final results stored, by status.
    pub finished: HashMap<&'static str, u64>,
    /// Deliveries put back.
    pub requeued: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
}

/// How the writer batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteBatching {
    /// Items per batch at most.
    pub max_items: usize,
    /// How long a batch waits to fill after its first item.
    pub wait: Duration,
}

fn final_result(job: &InFlight, o: JobOutcome) -> FinalResult {
    let (logprobs, perplexity) = match o.score {
        Some(s) => (Some(s.logprobs), Some(s.perplexity)),
        None => (None, None),
    };
    FinalResult {
        result: JobResult {
            id: job.id.clone(),
            status: Some(o.status),
            kind: job.kind.clone(),
            model: Some(job.model.clone()),
            text: Some(o.text),
            finish_reason: o.finish_reason,
            prompt_tokens: Some(o.prompt_tokens),
            completion_tokens: Some(o.completion_tokens),
            logprobs,
            perplexity,
            token_logprobs: o.logprobs.generated,
            prompt_logprobs: o.logprobs.prompt,
            choices: o.choices,
            error: o.error,
            error_kind: o.error_kind.map(str::to_string),
            worker: Some(job.worker.clone()),
            attempts: None,
            created_ms: job.created_ms,
            started_ms: Some(job.started_ms),
            first_token_ms: o.first_token_ms,
            finished_ms: Some(o.finished_ms),
        },
        batch: job.batch.clone(),
        stream: job.stream,
    }
}

/// Receives into `batch` up to `batching.max_items` items: the first one waits as long as it
/// takes, the others at most `batching.wait` after it. False once the channel is closed and empty.
async fn fill<T>(rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, batching: WriteBatching) -> bool {
    let Some(first) = rx.recv().await else { return false };
    batch.push(first);
    if batch.len() < batching.max_items {
        gather(rx, batching.wait, |item| {
            batch.push(item);
            batch.len() < batching.max_items
        })
        .await;
    }
    true
}

/// Stores results until the channel closes; counts in `stored` every item that ends a delivery
/// once it is stored (or put back).
pub(crate) async fn write_results<K: ResultSink>(
    mut items: mpsc::Receiver<ToWriter>,
    sink: Arc<K>,
    batching: WriteBatching,
    metrics: WorkerMetrics,
    stored: Arc<AtomicU64>,
) -> WriterReport {
    let mut report = WriterReport::default();
    let mut batch: Vec<ToWriter> = Vec::with_capacity(batching.max_items);
    while fill(&mut items, &mut batch, batching).await {
        let mut chunks = Vec::new();
        let mut finals = Vec::new();
        let mut jobs = Vec::new();
        let endings = batch.iter().filter(|i| i.ends_a_delivery()).count() as u64;
        for item in batch.drain(..) {
            match item {
                ToWriter::Chunk { id, text } => chunks.push((id, text)),
                ToWriter::Final { job, outcome } => {
                    let duration = outcome.finished_ms.saturating_sub(job.started_ms) as f64 / 1000.0;
                    metrics.job_duration.observe(duration);
                    metrics.prompt_tokens.inc_by(outcome.prompt_tokens);
                    report.generated_tokens += outcome.completion_tokens;
                    tracing::debug!(job = %job.id, status = outcome.status.as_str(), tokens = outcome.completion_tokens, "job finished");
                    finals.push(final_result(&job, outcome));
                    jobs.push(job);
                }
                ToWriter::Requeue { job, reason } => {
                    tracing::warn!(job = %job.id, reason, "requeueing job");
                    report.requeued += 1;
                    job.settle(Settlement::Requeue).await;
                }
            }
        }
        if let Err(e) = sink.append_chunks(&chunks).await {
            tracing::warn!(error = %e, "could not append stream chunks");
        }
        let mut backoff = Backoff::new(SINK_FIRST_RETRY, SINK_MAX_RETRY);
        let written = loop {
            match sink.finish(&finals).await {
                Ok(w) => break w,
                Err(e) => {
                    tracing::error!(error = %e, results = finals.len(), retry_in_ms = backoff.peek().as_millis() as u64, "cannot store results; retrying");
                    backoff.sleep().await;
                }
            }
        };
        for ((f, job), fresh) in finals.iter().zip(jobs).zip(written) {
            if fresh {
                let status = f.result.status.map(|s| s.as_str()).unwrap_or("failed");
                metrics.jobs.with_label_values(&[status]).inc();
                *report.finished.entry(status).or_default() += 1;
            }
            job.settle_as_decided().await;
        }
        stored.fetch_add(endings, Ordering::SeqCst);
    }
    report
}
