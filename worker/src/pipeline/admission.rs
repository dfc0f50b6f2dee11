//! Admission: what happens to a valid delivery after its batch was marked running. It runs (its
//! prompt encoded, then handed to the engine thread with its [`InFlight`]), finishes without
//! running (cancelled, poison, a prompt the model refuses), or is acked as a duplicate.

use std::sync::Arc;

use tokio::sync::mpsc;

use genq_protocol::backoff::Backoff;
use genq_shared::result::error_kind;
use genq_shared::{JobStatus, ValidJob};

use crate::engine::{AdmitError, PromptEncoder};
use crate::metrics::WorkerMetrics;
use crate::scheduler::{self, JobOutcome, ScheduledJob};
use crate::sink::{Begin, JobStart, ResultSink};
use crate::source::{Settle, Settlement};

use super::inflight::{settle, InFlight, Taken, ToWriter, WriterSender};
use super::writer::{SINK_FIRST_RETRY, SINK_MAX_RETRY};
use super::PipelineSettings;

/// A valid delivery waiting for its begin.
pub(crate) struct Admit {
    pub settler: Box<dyn Settle>,
    pub attempt: u64,
    pub taken: Taken,
    pub job: Box<ValidJob>,
}

/// What became of an admitted delivery.
pub(crate) enum AdmitOutcome {
    /// Handed to the engine, or finished without running (cancelled, poison): settled later.
    Queued,
    /// A duplicate of a final job: acked now.
    Duplicate,
    /// The engine thread or the writer is gone; the delivery is handed back to be requeued.
    Stopped(InFlight),
}

/// Marks a batch of jobs running, retrying with backoff while the sink is unreachable: the
/// deliveries stay unacked meanwhile (requeueing them would spend one of their broker delivery
/// attempts per retry).
pub(crate) async fn begin_with_retry<K: ResultSink>(sink: &K, starts: &[JobStart]) -> Vec<Begin> {
    let mut backoff = Backoff::new(SINK_FIRST_RETRY, SINK_MAX_RETRY);
    loop {
        match sink.begin_many(starts).await {
            Ok(b) if b.len() == starts.len() => return b,
            Ok(b) => tracing::warn!(asked = starts.len(), answered = b.len(), "short answer marking jobs running; retrying"),
            Err(e) => {
                tracing::warn!(jobs = starts.len(), error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "cannot mark jobs running; retrying");
            }
        }
        backoff.sleep().await;
    }
}

/// Prompts of at least this many bytes are encoded on a blocking thread rather than on the
/// intake task's runtime thread (shorter ones take microseconds).
pub(crate) const ENCODE_INLINE_BYTES: usize = 16 * 1024;

/// Renders and tokenizes a job's prompt before it goes to the engine thread, so the running
/// batch never waits for a long prompt's tokenizer.
async fn encode(encoder: &Arc<dyn PromptEncoder>, job: Box<ValidJob>) -> (Box<ValidJob>, Result<Vec<u32>, AdmitError>) {
    if job.input.bytes() < ENCODE_INLINE_BYTES {
        let prompt = encoder.encode(&job);
        return (job, prompt);
    }
    let encoder = encoder.clone();
    let id = job.id.clone();
    match tokio::task::spawn_blocking(move || {
        let prompt = encoder.encode(&job);
        (job, prompt)
    })
    .await
    {
        Ok(done) => done,
        Err(e) => std::panic::resume_unwind(e.try_into_panic().unwrap_or_else(|_| Box::new(format!("encoding job {id} was cancelled")))),
    }
}

/// What the intake hands admitted jobs to: the encoder, the engine thread's job channel and the
/// writer.
pub(crate) struct Admission<'a> {
    pub settings: &'a PipelineSettings,
    pub encoder: &'a Arc<dyn PromptEncoder>,
    pub engine: &'a mpsc::Sender<ScheduledJob<InFlight>>,
    pub writer: &'a WriterSender,
    pub metrics: &'a WorkerMetrics,
}

impl Admission<'_> {
    /// Sends an outcome decided without running the job to the writer; hands the delivery back
    /// when the writer is gone.
    pub(super) async fn finish_unrun(&self, job: InFlight, outcome: JobOutcome) -> AdmitOutcome {
        match self.writer.send(ToWriter::Final { job, outcome }).await {
            Ok(()) => AdmitOutcome::Queued,
            Err(item) => match item.into_job() {
                Some(job) => AdmitOutcome::Stopped(job),
                None => unreachable!("a final outcome carries its delivery"),
            },
        }
    }

    /// Acts on what `begin` found for one job: run it, finish it without running, or ack a duplicate.
    pub(super) async fn admit(&self, a: Admit, begun: Begin) -> AdmitOutcome {
        let Admit { settler, attempt, taken, job } = a;
        let in_flight = |settle_as: Settlement, job: &ValidJob, settler: Box<dyn Settle>| {
            let mut f = InFlight::new(settler, &taken, Some(job.kind.as_str().to_string()), self.metrics.inflight_deliveries.clone());
            f.batch = job.batch.clone();
            f.stream = job.stream;
            f.settle_as = settle_as;
            f
        };
        let isolated = match begun {
            Begin::Fresh { suspect, solo_runs } if solo_runs >= self.settings.poison_after_solo_runs => {
                tracing::error!(job = %job.id, solo_runs, suspect, "poison job: its worker died each time it ran alone; failing and dead-lettering it");
                let error = format!("the job's worker died each of the {solo_runs} times it ran alone; it is not run again");
                let outcome = scheduler::outcome(JobStatus::Failed, String::new(), Some((error, error_kind::POISON)));
                return self.finish_unrun(in_flight(Settlement::DeadLetter, &job, settler), outcome).await;
            }
            Begin::Fresh { suspect, solo_runs } => suspect || solo_runs > 0,
            Begin::Cancelled => {
                tracing::info!(job = %job.id, "job cancelled before it started");
                let outcome = scheduler::outcome(JobStatus::Cancelled, String::new(), None);
                return self.finish_unrun(in_flight(Settlement::Ack, &job, settler), outcome).await;
            }
            Begin::Duplicate => {
                tracing::info!(job = %job.id, "duplicate delivery of a finished job; acking it");
                settle(settler, Settlement::Ack).await;
                return AdmitOutcome::Duplicate;
            }
        };
        if let Some(created) = taken.created_ms {
            self.metrics.queue_wait.observe(taken.started_ms.saturating_sub(created) as f64 / 1000.0);
        }
        let (job, prompt) = match encode(self.encoder, job).await {
            (job, Ok(prompt)) => (job, prompt),
            (job, Err(e)) => {
                tracing::info!(job = %job.id, error = %e, "the model cannot take the job's prompt");
                let outcome = scheduler::outcome(JobStatus::Failed, String::new(), Some((e.to_string(), error_kind::UNSUPPORTED)));
                return self.finish_unrun(in_flight(Settlement::Ack, &job, settler), outcome).await;
            }
        };
        tracing::debug!(job = %job.id, attempt, "job admitted to the engine queue");
        self.metrics.job_received(crate::backlog::estimated_tokens(&job));
        let reply = in_flight(Settlement::Ack, &job, settler);
        let scheduled = ScheduledJob { reply, job: *job, prompt, started_ms: taken.started_ms, isolated };
        match self.engine.send(scheduled).await {
            Ok(()) => AdmitOutcome::Queued,
            Err(refused) => AdmitOutcome::Stopped(refused.0.reply),
        }
    }
}
