//! The worker pipeline: source -> intake -> engine thread -> result writer -> settle.
//!
//! Three stages joined by bounded channels: the intake task validates deliveries, encodes their
//! prompts (chat template and tokenizer, long ones on a blocking thread) and hands jobs to the
//! engine thread; the engine thread runs the scheduler; the writer task stores results in
//! batches and settles each delivery only after its result is stored. A watcher polls the sink for
//! cancel requests of in-flight jobs and passes them to the engine thread. Shutdown stops intake,
//! lets in-flight jobs finish within the grace period, and requeues whatever is left.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use genq_shared::result::error_kind;
use genq_shared::{now_ms, JobResult, JobStatus, ValidJob};

use crate::engine::{AdmitError, Engine, PromptEncoder};
use crate::intake::{self, IntakeRules};
use crate::metrics::WorkerMetrics;
use crate::scheduler::{self, EngineEvent, EventSender, JobOutcome, ScheduledJob, SchedulerSettings, Ticket};
use crate::sink::{Begin, FinalResult, JobStart, ResultSink};
use crate::source::{Delivery, JobSource, Settle, Settlement};

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Name written into results.
    pub worker_id: String,
    /// This process start's identity ([`crate::runner::instance_id`]).
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
    /// Deliveries taken from the source.
    pub received: u64,
    /// Final results stored, by status.
    pub finished: HashMap<&'static str, u64>,
    /// Deliveries that were duplicates of an already-final job.
    pub duplicates: u64,
    /// Bodies dead-lettered.
    pub dead_lettered: u64,
    /// Deliveries put back for another try.
    pub requeued: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Set when the pipeline stopped because its source failed (e.g. the broker connection was
    /// lost), not because it was asked to or ran dry; the process should exit non-zero.
    pub source_error: Option<String>,
}

struct Pending {
    settler: Box<dyn Settle>,
    start: JobStart,
    batch: Option<String>,
    stream: bool,
    /// How the delivery is settled once its result is stored: `Ack`, or `DeadLetter` for poison.
    settle_as: Settlement,
}

/// In-flight deliveries by ticket. A `std::sync::Mutex`: no `.await` happens while it is held.
type PendingMap = Arc<Mutex<HashMap<Ticket, Pending>>>;

fn take(pending: &PendingMap, ticket: Ticket) -> Option<Pending> {
    pending.lock().ok()?.remove(&ticket)
}

fn put(pending: &PendingMap, ticket: Ticket, p: Pending) {
    if let Ok(mut map) = pending.lock() {
        map.insert(ticket, p);
    }
}

async fn settle(settler: Box<dyn Settle>, how: Settlement) {
    if let Err(e) = settler.settle(how).await {
        tracing::warn!(error = %e, "could not settle a delivery; the broker will redeliver it");
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
    let pending: PendingMap = Arc::default();
    let (tx, events_rx) = mpsc::channel::<EngineEvent>(settings.write_batch_size.max(1) * 4);
    let events_tx = EventSender::new(tx);
    let finals_stored: Arc<AtomicU64> = Arc::default();
    let runtime = tokio::runtime::Handle::current();
    let gate_sink = sink.clone();
    let gate_runtime = runtime.clone();
    let (gate_sent, gate_stored) = (events_tx.clone(), finals_stored.clone());
    let solo_gate = Box::new(move |job: &ScheduledJob| {
        // Every earlier outcome must be stored first: if this job kills the worker, a job that
        // finished just before it must not be blamed (and run alone again) for want of a write.
        if gate_stored.load(Ordering::SeqCst) < gate_sent.finals_sent() {
            return false;
        }
        match gate_runtime.block_on(gate_sink.record_solo_run(&job.job.id)) {
            Ok(()) => {
                tracing::warn!(job = %job.job.id, "running a suspect job alone (its last worker died while it ran)");
                true
            }
            Err(e) => {
                tracing::warn!(job = %job.job.id, error = %e, "cannot record a suspect's solo run; it waits");
                false
            }
        }
    });
    let encoder = engine.encoder();
    let engine_handle = scheduler::spawn_engine_thread(
        engine,
        settings.scheduler,
        settings.engine_queue,
        events_tx.clone(),
        Some(metrics.clone()),
        runtime,
        solo_gate,
    )?;
    let writer = tokio::spawn(write_results(events_rx, sink.clone(), pending.clone(), settings.clone(), metrics.clone(), finals_stored.clone()));
    let watcher = (!settings.cancel_poll.is_zero())
        .then(|| tokio::spawn(watch_cancels(sink.clone(), pending.clone(), engine_handle.cancels.clone(), settings.cancel_poll)));

    let mut report = PipelineReport::default();
    let mut next_ticket: Ticket = 0;
    let mut deliveries: Vec<Delivery> = Vec::with_capacity(settings.intake_batch_size);
    let mut admits: Vec<Admit> = Vec::with_capacity(settings.intake_batch_size);
    let mut starts: Vec<JobStart> = Vec::with_capacity(settings.intake_batch_size);
    let intake = Intake { settings: &settings, encoder: &encoder, pending: &pending, events: &events_tx, metrics: &metrics };
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
        report.received += deliveries.len() as u64;
        // Validate every delivery of the batch; those that will run are begun together below.
        for delivery in deliveries.drain(..) {
            next_ticket += 1;
            let ticket = next_ticket;
            match intake::inspect(&delivery.body, delivery.message_id.as_deref(), &settings.rules) {
                intake::Intake::DeadLetter { reason } => {
                    tracing::warn!(reason, message_id = ?delivery.message_id, "message is not a job; dead-lettering it");
                    metrics.dead_lettered.inc();
                    report.dead_lettered += 1;
                    settle(delivery.settler, Settlement::DeadLetter).await;
                }
                intake::Intake::Fail(rejected) => {
                    tracing::info!(job = %rejected.id, error = %rejected.error, "job failed validation");
                    let start = JobStart {
                        id: rejected.id.clone(),
                        kind: String::new(),
                        model: settings.rules.model.clone(),
                        worker: settings.worker_id.clone(),
                        instance: settings.instance.clone(),
                        created_ms: delivery.created_ms,
                        started_ms: now_ms(),
                    };
                    let pending_job = Pending { settler: delivery.settler, start, batch: rejected.batch, stream: false, settle_as: Settlement::Ack };
                    let outcome = scheduler::outcome(JobStatus::Failed, String::new(), Some((rejected.error, rejected.error_kind)));
                    if !intake.finish_now(ticket, pending_job, outcome).await {
                        break 'intake;
                    }
                }
                intake::Intake::Run(job) => {
                    starts.push(JobStart {
                        id: job.id.clone(),
                        kind: job.kind.as_str().to_string(),
                        model: job.model.clone(),
                        worker: settings.worker_id.clone(),
                        instance: settings.instance.clone(),
                        created_ms: delivery.created_ms,
                        started_ms: now_ms(),
                    });
                    admits.push(Admit { ticket, settler: delivery.settler, attempt: delivery.attempt, job });
                }
            }
        }
        if admits.is_empty() {
            continue;
        }
        // One round trip marks the whole batch running.
        let begun = tokio::select! {
            _ = &mut shutdown => {
                tracing::info!(jobs = admits.len(), "shutdown while Redis is unreachable; requeueing the jobs");
                for a in admits.drain(..) {
                    report.requeued += 1;
                    settle(a.settler, Settlement::Requeue).await;
                }
                break;
            }
            b = begin_with_retry(&*sink, &starts) => b,
        };
        let mut batch = admits.drain(..).zip(starts.drain(..)).zip(begun);
        for ((admit, start), begun) in batch.by_ref() {
            match intake.admit(admit, start, begun, &engine_handle.jobs).await {
                Admitted::Queued => {}
                Admitted::Duplicate => report.duplicates += 1,
                Admitted::Stopped(settler) => {
                    tracing::error!("engine thread or result writer stopped");
                    report.requeued += 1;
                    settle(settler, Settlement::Requeue).await;
                    for ((rest, _), _) in batch {
                        report.requeued += 1;
                        settle(rest.settler, Settlement::Requeue).await;
                    }
                    break 'intake;
                }
            }
        }
        metrics.inflight_deliveries.set(pending.lock().map(|m| m.len() as i64).unwrap_or(0));
    }
    source.stop().await;
    drop(events_tx);
    drop(engine_handle.jobs);
    if let Some(w) = &watcher {
        w.abort();
    }

    let grace = settings.shutdown_grace;
    let written = match tokio::time::timeout(grace, writer).await {
        Ok(Ok(r)) => Some(r),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "result writer panicked");
            None
        }
        Err(_) => {
            tracing::warn!(grace_secs = grace.as_secs(), "grace period over; requeueing unfinished jobs");
            None
        }
    };
    let leftovers: Vec<Pending> = pending.lock().map(|mut m| m.drain().map(|(_, p)| p).collect()).unwrap_or_default();
    for p in leftovers {
        report.requeued += 1;
        settle(p.settler, Settlement::Requeue).await;
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

/// Marks a batch of jobs running, retrying with backoff while the sink is unreachable: the
/// deliveries stay unacked meanwhile (requeueing them would spend one of their broker delivery
/// attempts per retry).
async fn begin_with_retry<K: ResultSink>(sink: &K, starts: &[JobStart]) -> Vec<Begin> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match sink.begin_many(starts).await {
            Ok(b) if b.len() == starts.len() => return b,
            Ok(b) => tracing::warn!(asked = starts.len(), answered = b.len(), "short answer marking jobs running; retrying"),
            Err(e) => {
                tracing::warn!(jobs = starts.len(), error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot mark jobs running; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A valid delivery waiting for its begin.
struct Admit {
    ticket: Ticket,
    settler: Box<dyn Settle>,
    attempt: u64,
    job: Box<ValidJob>,
}

/// What became of an admitted delivery.
enum Admitted {
    /// Handed to the engine, or finished without running (cancelled, poison): settled later.
    Queued,
    /// A duplicate of a final job: acked now.
    Duplicate,
    /// The engine thread or the writer is gone; the delivery is handed back to be requeued.
    Stopped(Box<dyn Settle>),
}

/// Prompts of at least this many bytes are encoded on a blocking thread rather than on the
/// intake task's runtime thread (shorter ones take microseconds).
const ENCODE_INLINE_BYTES: usize = 16 * 1024;

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

/// The intake's view of the pipeline, for the per-delivery steps after validation.
struct Intake<'a> {
    settings: &'a PipelineSettings,
    encoder: &'a Arc<dyn PromptEncoder>,
    pending: &'a PendingMap,
    events: &'a EventSender,
    metrics: &'a WorkerMetrics,
}

impl Intake<'_> {
    /// Records `p` and reports its outcome to the writer at once (no engine run); false when the
    /// writer is gone.
    async fn finish_now(&self, ticket: Ticket, p: Pending, outcome: JobOutcome) -> bool {
        put(self.pending, ticket, p);
        self.events.send(EngineEvent::Finished { ticket, outcome }).await.is_ok()
    }

    /// Finishes a job that does not run (cancelled, poison, a prompt the model refuses): queued
    /// for its settle like any other, or handed back when the writer is gone.
    async fn finish_unrun(&self, ticket: Ticket, p: Pending, outcome: JobOutcome) -> Admitted {
        if self.finish_now(ticket, p, outcome).await {
            return Admitted::Queued;
        }
        Admitted::Stopped(self.take_back(ticket))
    }

    /// Acts on what `begin` found for one job: run it, finish it without running, or ack a duplicate.
    async fn admit(&self, a: Admit, start: JobStart, begun: Begin, engine: &mpsc::Sender<ScheduledJob>) -> Admitted {
        let Admit { ticket, settler, attempt, job } = a;
        let pending = |job: &ValidJob, settler, start, settle_as| Pending { settler, start, batch: job.batch.clone(), stream: job.stream, settle_as };
        let isolated = match begun {
            Begin::Fresh { suspect, solo_runs } if solo_runs >= self.settings.poison_after_solo_runs => {
                tracing::error!(job = %job.id, solo_runs, suspect, "poison job: its worker died each time it ran alone; failing and dead-lettering it");
                let error = format!("the job's worker died each of the {solo_runs} times it ran alone; it is not run again");
                let outcome = scheduler::outcome(JobStatus::Failed, String::new(), Some((error, error_kind::POISON)));
                return self.finish_unrun(ticket, pending(&job, settler, start, Settlement::DeadLetter), outcome).await;
            }
            Begin::Fresh { suspect, solo_runs } => suspect || solo_runs > 0,
            Begin::Cancelled => {
                tracing::info!(job = %job.id, "job cancelled before it started");
                let outcome = scheduler::outcome(JobStatus::Cancelled, String::new(), None);
                return self.finish_unrun(ticket, pending(&job, settler, start, Settlement::Ack), outcome).await;
            }
            Begin::Duplicate => {
                tracing::info!(job = %job.id, "duplicate delivery of a finished job; acking it");
                settle(settler, Settlement::Ack).await;
                return Admitted::Duplicate;
            }
        };
        if let Some(created) = start.created_ms {
            self.metrics.queue_wait.observe(start.started_ms.saturating_sub(created) as f64 / 1000.0);
        }
        let (job, prompt) = match encode(self.encoder, job).await {
            (job, Ok(prompt)) => (job, prompt),
            (job, Err(e)) => {
                tracing::info!(job = %job.id, error = %e, "the model cannot take the job's prompt");
                let outcome = scheduler::outcome(JobStatus::Failed, String::new(), Some((e.to_string(), error_kind::UNSUPPORTED)));
                return self.finish_unrun(ticket, pending(&job, settler, start, Settlement::Ack), outcome).await;
            }
        };
        tracing::debug!(job = %job.id, attempt, "job admitted to the engine queue");
        let started_ms = start.started_ms;
        self.metrics.job_received(crate::backlog::estimated_tokens(&job));
        put(self.pending, ticket, pending(&job, settler, start, Settlement::Ack));
        if engine.send(ScheduledJob { ticket, job: *job, prompt, started_ms, isolated }).await.is_err() {
            return Admitted::Stopped(self.take_back(ticket));
        }
        Admitted::Queued
    }

    /// Removes a delivery the pipeline could not hand on, so it can be requeued.
    fn take_back(&self, ticket: Ticket) -> Box<dyn Settle> {
        match take(self.pending, ticket) {
            Some(p) => p.settler,
            None => Box::new(Settled),
        }
    }
}

/// A settler with nothing left to do (its delivery was settled elsewhere).
struct Settled;

impl Settle for Settled {
    fn settle(self: Box<Self>, _how: Settlement) -> crate::source::SettleFuture {
        Box::pin(async { Ok(()) })
    }
}

/// Every `every`, asks the sink which in-flight jobs a client wants cancelled and sends their
/// tickets to the engine thread (again each time, until the job is gone: a request can arrive
/// before the engine thread has the job).
async fn watch_cancels<K: ResultSink>(
    sink: Arc<K>,
    pending: PendingMap,
    cancels: mpsc::UnboundedSender<Ticket>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (tickets, ids): (Vec<Ticket>, Vec<String>) = match pending.lock() {
            Ok(map) => map.iter().filter(|(_, p)| !p.start.kind.is_empty()).map(|(t, p)| (*t, p.start.id.clone())).unzip(),
            Err(_) => return,
        };
        if ids.is_empty() {
            continue;
        }
        match sink.cancel_requested(&ids).await {
            Ok(flags) => {
                for (ticket, _) in tickets.iter().zip(flags).filter(|(_, f)| *f) {
                    if cancels.send(*ticket).is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot check cancel requests"),
        }
    }
}

#[derive(Default)]
struct WriterReport {
    finished: HashMap<&'static str, u64>,
    requeued: u64,
    generated_tokens: u64,
}

fn final_result(p: &Pending, o: JobOutcome) -> FinalResult {
    let (logprobs, perplexity) = match o.score {
        Some(s) => (Some(s.logprobs), Some(s.perplexity)),
        None => (None, None),
    };
    FinalResult {
        result: JobResult {
            id: p.start.id.clone(),
            status: Some(o.status),
            kind: Some(p.start.kind.clone()).filter(|k| !k.is_empty()),
            model: Some(p.start.model.clone()),
            text: Some(o.text),
            finish_reason: o.finish_reason,
            prompt_tokens: Some(o.prompt_tokens),
            completion_tokens: Some(o.completion_tokens),
            logprobs,
            perplexity,
            error: o.error,
            error_kind: o.error_kind.map(str::to_string),
            worker: Some(p.start.worker.clone()),
            attempts: None,
            created_ms: p.start.created_ms,
            started_ms: Some(p.start.started_ms),
            first_token_ms: o.first_token_ms,
            finished_ms: Some(o.finished_ms),
        },
        batch: p.batch.clone(),
        stream: p.stream,
    }
}

/// Gathers events into batches (up to `write_batch_size`, or `write_wait` after the first) and
/// writes each batch in one round trip; settles deliveries only after their result is stored.
async fn write_results<K: ResultSink>(
    mut events: mpsc::Receiver<EngineEvent>,
    sink: Arc<K>,
    pending: PendingMap,
    settings: PipelineSettings,
    metrics: WorkerMetrics,
    finals_stored: Arc<AtomicU64>,
) -> WriterReport {
    let mut report = WriterReport::default();
    let mut batch: Vec<EngineEvent> = Vec::with_capacity(settings.write_batch_size);
    while let Some(first) = events.recv().await {
        batch.push(first);
        let until = Instant::now() + settings.write_wait;
        while batch.len() < settings.write_batch_size {
            match events.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match tokio::time::timeout(left, events.recv()).await {
                        Ok(Some(ev)) => batch.push(ev),
                        _ => break,
                    }
                }
            }
        }
        let mut chunks = Vec::new();
        let mut finals = Vec::new();
        let mut settlers = Vec::new();
        let finals_in_batch = batch.iter().filter(|e| !matches!(e, EngineEvent::Chunk { .. })).count() as u64;
        for ev in batch.drain(..) {
            match ev {
                EngineEvent::Chunk { ticket, text } => {
                    if let Ok(map) = pending.lock() {
                        if let Some(p) = map.get(&ticket) {
                            chunks.push((p.start.id.clone(), text));
                        }
                    }
                }
                EngineEvent::Finished { ticket, outcome } => {
                    if let Some(p) = take(&pending, ticket) {
                        let duration = outcome.finished_ms.saturating_sub(p.start.started_ms) as f64 / 1000.0;
                        metrics.job_duration.observe(duration);
                        metrics.prompt_tokens.inc_by(outcome.prompt_tokens);
                        report.generated_tokens += outcome.completion_tokens;
                        tracing::debug!(job = %p.start.id, status = outcome.status.as_str(), tokens = outcome.completion_tokens, "job finished");
                        finals.push(final_result(&p, outcome));
                        settlers.push((p.settler, p.settle_as));
                    }
                }
                EngineEvent::Retry { ticket, reason } => {
                    if let Some(p) = take(&pending, ticket) {
                        tracing::warn!(job = %p.start.id, reason, "requeueing job");
                        report.requeued += 1;
                        settle(p.settler, Settlement::Requeue).await;
                    }
                }
            }
        }
        if let Err(e) = sink.append_chunks(&chunks).await {
            tracing::warn!(error = %e, "could not append stream chunks");
        }
        let mut backoff = Duration::from_millis(100);
        let written = loop {
            match sink.finish(&finals).await {
                Ok(w) => break Some(w),
                Err(e) => {
                    tracing::error!(error = %e, results = finals.len(), retry_in_ms = backoff.as_millis() as u64, "cannot store results; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        if let Some(written) = written {
            for ((f, (settler, settle_as)), fresh) in finals.iter().zip(settlers).zip(written) {
                if fresh {
                    let status = f.result.status.map(|s| s.as_str()).unwrap_or("failed");
                    metrics.jobs.with_label_values(&[status]).inc();
                    *report.finished.entry(status).or_default() += 1;
                }
                settle(settler, settle_as).await;
            }
        }
        metrics.inflight_deliveries.set(pending.lock().map(|m| m.len() as i64).unwrap_or(0));
        finals_stored.fetch_add(finals_in_batch, Ordering::SeqCst);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::echo::EchoEngine;
    use crate::engine::{AdmitError, Admitted, EngineError, EngineInfo, SeqId, SeqUpdate, StepLimits};
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
        let mut settings = crate::runner::pipeline_settings(&genq_shared::settings::Settings::default(), 8192);
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
