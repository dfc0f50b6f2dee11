//! The worker pipeline: source -> intake -> engine thread -> result writer -> settle.
//!
//! Three stages joined by bounded channels: the intake validates deliveries, marks them running
//! and admits them ([`admission`]: prompts encoded, long ones on a blocking thread) to the
//! engine thread; the engine thread runs the scheduler; the [`writer`] stores results in batches
//! and settles each delivery only after its result is stored. Each delivery travels as one
//! [`inflight::InFlight`] that exactly one stage owns at a time. The [`cancels`] watcher passes
//! cancel requests of the engine thread's jobs to it. Shutdown stops intake, lets in-flight jobs
//! finish within the grace period, and requeues whatever is left.

mod admission;
mod cancels;
mod inflight;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use genq_shared::{now_ms, JobStatus};

use crate::engine::Engine;
use crate::intake::{self, Inspected, IntakeRules, Verdict};
use crate::metrics::WorkerMetrics;
use crate::scheduler::{self, SchedulerSettings};
use crate::sink::{JobStart, ResultSink};
use crate::source::{bulk, Delivery, JobSource, Settle, Settlement};

use admission::{begin_with_retry, Admission, Admit, AdmitOutcome};
use inflight::{settle, InFlight, Taken, ToWriter, WriterSender};
use writer::{write_results, WriteBatching};

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Name written into results.
    pub worker_id: String,
    /// This process start's identity ([`crate::setup::instance_id`]).
    pub instance: String,
    /// Edge rules.
    pub rules: IntakeRules,
    /// Batching.
    pub scheduler: SchedulerSettings,
    /// Bound of the channel into the engine thread.
    pub engine_queue: usize,
    /// Deliveries validated and marked running together (one Redis round trip) at most.
    pub intake_batch_size: usize,
    /// Results per Redis round trip at most.
    pub write_batch_size: usize,
    /// How long a write batch waits to fill.
    pub write_wait: Duration,
    /// How long shutdown waits for in-flight jobs.
    pub shutdown_grace: Duration,
    /// How often in-flight jobs are checked for cancel requests (zero: never).
    pub cancel_poll: Duration,
    /// Unfinished solo runs after which a suspect job is poison.
    pub poison_after_solo_runs: u64,
}

/// Counts of what the pipeline did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineReport {
    /// Jobs taken from the source (each job of a bulk message counts; so does a message
    /// dead-lettered whole).
    pub received: u64,
    /// Final results stored, by status.
    pub finished: HashMap<&'static str, u64>,
    /// Deliveries that were duplicates of an already-final job.
    pub duplicates: u64,
    /// Messages dead-lettered whole (not a job, or not a valid bulk message).
    pub dead_lettered: u64,
    /// Deliveries put back for another try.
    pub requeued: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Set when the pipeline stopped because its source failed (e.g. the broker connection was
    /// lost), not because it was asked to or ran dry; the process should exit non-zero.
    pub source_error: Option<String>,
}

/// Job `id` for `model`, published at `created_ms`, taken now.
fn taken_now(settings: &PipelineSettings, id: &str, model: &str, created_ms: Option<u64>) -> Taken {
    Taken {
        id: id.to_string(),
        model: model.to_string(),
        worker: settings.worker_id.clone(),
        instance: settings.instance.clone(),
        created_ms,
        started_ms: now_ms(),
    }
}

/// The jobs of one delivery, each with what to do with it and its own settler: a v1 message is
/// one job settled by the delivery; a bulk message is one job per entry, and the delivery is
/// settled once all of them are.
fn unpack(delivery: Delivery, rules: &IntakeRules) -> Vec<(Verdict, Box<dyn Settle>)> {
    let Delivery { body, content_type, message_id, settler, dead_letters, .. } = delivery;
    match intake::inspect_message(&body, content_type.as_deref(), message_id.as_deref(), rules) {
        Inspected::One(Verdict::DeadLetter { reason }) => {
            let reason = format!("{reason} (message_id {message_id:?})");
            vec![(Verdict::DeadLetter { reason }, settler)]
        }
        Inspected::One(verdict) => vec![(verdict, settler)],
        Inspected::Bulk(jobs) => {
            let (verdicts, parts): (Vec<Verdict>, Vec<_>) = jobs.into_iter().map(|j| (j.verdict, (j.id, j.span))).unzip();
            verdicts.into_iter().zip(bulk::split(settler, body, parts, dead_letters)).collect()
        }
    }
}

/// Runs the pipeline until the source ends or `shutdown` resolves, then drains.
pub async fn run<S, K>(
    mut source: S,
    sink: K,
    engine: Box<dyn Engine>,
    settings: PipelineSettings,
    metrics: WorkerMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<PipelineReport>
where
    S: JobSource + 'static,
    K: ResultSink + Clone,
{
    let sink = Arc::new(sink);
    let (tx, writer_rx) = mpsc::channel::<ToWriter>(settings.write_batch_size.max(1) * 4);
    let to_writer = WriterSender::new(tx);
    let stored: Arc<AtomicU64> = Arc::default();
    let runtime = tokio::runtime::Handle::current();
    let (gate_sink, gate_runtime, gate_sent, gate_stored) = (sink.clone(), runtime.clone(), to_writer.clone(), stored.clone());
    let solo_gate: scheduler::SoloGate = Box::new(move |job| {
        // Every earlier outcome must be stored first: if this job kills the worker, a job that
        // finished just before it must not be blamed (and run alone again) for want of a write.
        if gate_stored.load(Ordering::SeqCst) < gate_sent.endings_sent() {
            return false;
        }
        match gate_runtime.block_on(gate_sink.record_solo_run(&job.id)) {
            Ok(()) => {
                tracing::warn!(job = %job.id, "running a suspect job alone (its last worker died while it ran)");
                true
            }
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "cannot record a suspect's solo run; it waits");
                false
            }
        }
    });
    let engine_events = to_writer.clone();
    let emit: scheduler::EmitEvent<InFlight> = Box::new(move |ev| engine_events.blocking_send(ToWriter::from(ev)));
    let encoder = engine.encoder();
    let (engine_jobs, engine_thread) =
        scheduler::spawn_engine_thread(engine, settings.scheduler, settings.engine_queue, emit, Some(metrics.clone()), runtime, solo_gate)?;
    let batching = WriteBatching { max_items: settings.write_batch_size, wait: settings.write_wait };
    let writer = tokio::spawn(write_results(writer_rx, sink.clone(), batching, metrics.clone(), stored));
    let watcher = (!settings.cancel_poll.is_zero()).then(|| {
        let (holding, cancels) = (engine_thread.holding.clone(), engine_thread.cancels.clone());
        tokio::spawn(cancels::watch_cancels(sink.clone(), holding, cancels, settings.cancel_poll))
    });

    let mut report = PipelineReport::default();
    let mut deliveries: Vec<Delivery> = Vec::with_capacity(settings.intake_batch_size);
    let mut admits: Vec<Admit> = Vec::with_capacity(settings.intake_batch_size);
    let mut starts: Vec<JobStart> = Vec::with_capacity(settings.intake_batch_size);
    let admission = Admission { settings: &settings, encoder: &encoder, engine: &engine_jobs, writer: &to_writer, metrics: &metrics };
    let mut stopped: Vec<InFlight> = Vec::new();
    tokio::pin!(shutdown);
    'intake: loop {
        let more = tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutdown requested: no new jobs are taken; finishing in-flight work");
                break;
            }
            d = source.next_batch(settings.intake_batch_size, &mut deliveries) => d,
        };
        match more {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                tracing::error!(error = %e, "job source failed; draining and stopping");
                report.source_error = Some(e.to_string());
                break;
            }
        }
        // Validate every job of the batch; those that will run are begun together below.
        let mut writer_gone = false;
        for delivery in deliveries.drain(..) {
            let (created_ms, attempt) = (delivery.created_ms, delivery.attempt);
            for (verdict, settler) in unpack(delivery, &settings.rules) {
                report.received += 1;
                if writer_gone {
                    report.requeued += 1;
                    settle(settler, Settlement::Requeue).await;
                    continue;
                }
                match verdict {
                    Verdict::DeadLetter { reason } => {
                        tracing::warn!(reason, "message is not a job; dead-lettering it");
                        metrics.dead_lettered.inc();
                        report.dead_lettered += 1;
                        settle(settler, Settlement::DeadLetter).await;
                    }
                    Verdict::Fail(rejected) => {
                        tracing::info!(job = %rejected.id, error = %rejected.error, "job failed validation");
                        let taken = taken_now(&settings, &rejected.id, &settings.rules.model, created_ms);
                        let mut job = InFlight::new(settler, &taken, None, metrics.inflight_deliveries.clone());
                        job.batch = rejected.batch;
                        let outcome = scheduler::outcome(JobStatus::Failed, String::new(), Some((rejected.error, rejected.error_kind)));
                        if let AdmitOutcome::Stopped(job) = admission.finish_unrun(job, outcome).await {
                            tracing::error!("result writer stopped");
                            stopped.push(job);
                            writer_gone = true;
                        }
                    }
                    Verdict::Run(job) => {
                        let taken = taken_now(&settings, &job.id, &job.model, created_ms);
                        starts.push(taken.job_start(job.kind.as_str()));
                        admits.push(Admit { settler, attempt, taken, job });
                    }
                }
            }
        }
        if writer_gone {
            for a in admits.drain(..) {
                report.requeued += 1;
                settle(a.settler, Settlement::Requeue).await;
            }
            starts.clear();
            break;
        }
        // One round trip marks a chunk of the batch running, then its jobs are admitted: the
        // jobs of bulk messages are begun no faster than the engine thread takes them, so a crash
        // leaves few jobs begun but never run (each of those is a suspect, run alone, after it).
        // Taken from the front in chunks without shifting what is left (a backlog of bulk
        // messages makes these vectors thousands of jobs long).
        let chunk_jobs = settings.intake_batch_size.max(1);
        let mut pending = admits.drain(..);
        let mut begun_so_far = 0;
        while pending.len() > 0 {
            let n = pending.len().min(chunk_jobs);
            let begun = tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!(jobs = pending.len(), "shutdown while Redis is unreachable; requeueing the jobs");
                    for a in pending.by_ref() {
                        report.requeued += 1;
                        settle(a.settler, Settlement::Requeue).await;
                    }
                    starts.clear();
                    break 'intake;
                }
                b = begin_with_retry(&*sink, &starts[begun_so_far..begun_so_far + n]) => b,
            };
            begun_so_far += n;
            let mut chunk = pending.by_ref().take(n).zip(begun);
            for (admit, begun) in chunk.by_ref() {
                match admission.admit(admit, begun).await {
                    AdmitOutcome::Queued => {}
                    AdmitOutcome::Duplicate => report.duplicates += 1,
                    AdmitOutcome::Stopped(job) => {
                        tracing::error!("engine thread or result writer stopped");
                        stopped.push(job);
                        for (rest, _) in chunk {
                            report.requeued += 1;
                            settle(rest.settler, Settlement::Requeue).await;
                        }
                        for rest in pending.by_ref() {
                            report.requeued += 1;
                            settle(rest.settler, Settlement::Requeue).await;
                        }
                        break 'intake;
                    }
                }
            }
        }
        starts.clear();
    }
    for job in stopped {
        report.requeued += 1;
        job.settle(Settlement::Requeue).await;
    }
    source.stop().await;
    if let Some(w) = &watcher {
        w.abort();
    }
    // The engine thread finishes its jobs and exits once its job channel is closed; the writer
    // once the engine thread and the intake are gone.
    drop(engine_jobs);
    drop(to_writer);
    let mut writer = writer;
    let grace = settings.shutdown_grace;
    let written = match tokio::time::timeout(grace, &mut writer).await {
        Ok(Ok(w)) => Some(w),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "result writer panicked");
            None
        }
        Err(_) => {
            tracing::warn!(grace_secs = grace.as_secs(), "grace period over; requeueing unfinished jobs");
            // Without its writer the engine thread's next send fails and it hands back its jobs
            // and the events nobody took; deliveries the writer held are requeued by the broker
            // when the source closes.
            writer.abort();
            None
        }
    };
    let left = match tokio::time::timeout(ENGINE_STOP_WAIT, engine_thread.stop()).await {
        Ok(left) => left,
        Err(_) => {
            tracing::error!("the engine thread did not stop; its jobs are requeued by the broker when the source closes");
            Vec::new()
        }
    };
    for job in left {
        report.requeued += 1;
        job.settle(Settlement::Requeue).await;
    }
    metrics.inflight_deliveries.set(0);
    source.close().await;
    if let Some(w) = written {
        report.finished = w.finished;
        report.requeued += w.requeued;
        report.generated_tokens = w.generated_tokens;
    }
    Ok(report)
}

/// How long a stopped engine thread may take to finish its current step and hand back its jobs.
const ENGINE_STOP_WAIT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::admission::ENCODE_INLINE_BYTES;
    use super::*;
    use crate::engine::echo::EchoEngine;
    use crate::engine::{AdmitError, Admitted, EngineError, EngineInfo, PromptEncoder, SeqId, SeqUpdate, StepLimits};
    use genq_shared::ValidJob;
    use crate::sink::memory::MemorySink;
    use crate::source::memory::memory_queue;

    type Threads = Arc<Mutex<Vec<String>>>;

    /// An encoder that notes the thread each prompt is encoded on.
    struct Watched {
        inner: Arc<dyn PromptEncoder>,
        threads: Threads,
    }

    impl PromptEncoder for Watched {
        fn encode(&self, job: &ValidJob) -> Result<Vec<u32>, AdmitError> {
            let name = std::thread::current().name().unwrap_or("unnamed").to_string();
            self.threads.lock().expect("thread log").push(name);
            self.inner.encode(job)
        }
    }

    /// The echo engine with a [`Watched`] encoder.
    struct WatchedEcho {
        inner: EchoEngine,
        threads: Threads,
    }

    impl Engine for WatchedEcho {
        fn info(&self) -> &EngineInfo {
            self.inner.info()
        }
        fn encoder(&self) -> Arc<dyn PromptEncoder> {
            Arc::new(Watched { inner: self.inner.encoder(), threads: self.threads.clone() })
        }
        fn admit(&mut self, id: SeqId, job: &ValidJob, prompt: Vec<u32>, seed: u64) -> Result<Admitted, AdmitError> {
            self.inner.admit(id, job, prompt, seed)
        }
        fn step(&mut self, limits: &StepLimits) -> Result<Vec<SeqUpdate>, EngineError> {
            self.inner.step(limits)
        }
        fn release(&mut self, id: SeqId) {
            self.inner.release(id)
        }
        fn active(&self) -> usize {
            self.inner.active()
        }
        fn cached_tokens(&self) -> usize {
            self.inner.cached_tokens()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prompts_are_encoded_before_the_engine_thread_short_and_long() {
        let threads: Threads = Arc::default();
        let engine = Box::new(WatchedEcho { inner: EchoEngine::new("m"), threads: threads.clone() });
        let mut settings = crate::setup::pipeline_settings(&genq_shared::settings::Settings::default(), 8192);
        settings.rules.model = "m".into();
        let (queue, source, _log) = memory_queue(8);
        let sink = MemorySink::new();
        let long = "word ".repeat(ENCODE_INLINE_BYTES / 4);
        for (id, prompt) in [("short", "a few words"), ("long", long.as_str())] {
            let body = serde_json::json!({"id": id, "model": "m", "prompt": prompt, "max_new_tokens": 3});
            queue.push(body.to_string().into_bytes()).await.expect("push");
        }
        drop(queue);
        let metrics = WorkerMetrics::new().expect("metrics");
        let report = run(source, sink.clone(), engine, settings, metrics, std::future::pending()).await.expect("pipeline");
        assert_eq!(report.finished.get("done"), Some(&2), "{report:?}");
        let threads = threads.lock().expect("thread log").clone();
        assert_eq!(threads.len(), 2, "each prompt encoded once: {threads:?}");
        assert!(threads.iter().all(|t| t != "genq-engine"), "encoded on the engine thread: {threads:?}");
    }
}
