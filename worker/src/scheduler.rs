//! The engine thread and its scheduler: continuous batching at the token level. Between steps it
//! retires finished, cancelled and expired sequences and admits waiting jobs (high priority first, then normal, then low; oldest first within each)
//! under the sequence cap; each step advances every running sequence by one token.
//!
//! [`Scheduler`] is the pure state (unit-tested without a runtime); [`spawn_engine_thread`] is
//! the thin loop that feeds it from a channel and reports [`EngineEvent`]s.
//!
//! Each job carries its own reply (`R`: for the pipeline, what settles its delivery) through the
//! scheduler and back out in its final event, so no table on the side maps jobs to deliveries.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use genq_shared::job::Priority;
use genq_shared::result::error_kind;
use genq_shared::result::Choice;
use genq_shared::{now_ms, FinishReason, JobStatus, ValidJob};

use crate::engine::{Engine, Logprobs, Score, SeqId, StepLimits};
use crate::metrics::WorkerMetrics;

/// A job handed to the engine thread, with its reply `R`, which comes back in its final event.
#[derive(Debug, Clone)]
pub(crate) struct ScheduledJob<R> {
    /// What the job's final event carries back (the pipeline: what settles its delivery).
    pub reply: R,
    /// The validated job.
    pub job: ValidJob,
    /// Its prompt as the engine's [`crate::engine::PromptEncoder`] made it.
    pub prompt: Vec<u32>,
    /// When the worker started on it (Unix ms).
    pub started_ms: u64,
    /// A suspect (it may have killed a worker): it runs alone in the batch, and only after the
    /// gate given to [`Scheduler::admit`] has recorded that.
    pub isolated: bool,
}

/// How a job ended on the engine thread.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JobOutcome {
    /// Final status.
    pub status: JobStatus,
    /// Generated text (partial for expired jobs).
    pub text: String,
    /// Why generation stopped.
    pub finish_reason: Option<FinishReason>,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Score jobs.
    pub score: Option<Score>,
    /// Token log-probs the job asked for.
    pub logprobs: Logprobs,
    /// A job with `n` above 1: every sample, in order.
    pub choices: Option<Vec<Choice>>,
    /// Error message naming the field, for failed jobs.
    pub error: Option<String>,
    /// Fixed error category.
    pub error_kind: Option<&'static str>,
    /// First generated token (Unix ms).
    pub first_token_ms: Option<u64>,
    /// Final status reached (Unix ms).
    pub finished_ms: u64,
}

/// What the engine thread reports.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EngineEvent<R> {
    /// New text of a streaming job.
    Chunk {
        /// Job id.
        id: String,
        /// Text.
        text: String,
    },
    /// The job reached a final status.
    Finished {
        /// The job's reply.
        reply: R,
        /// How it ended.
        outcome: JobOutcome,
    },
    /// The engine failed with this job in the batch: put it back for another try.
    Retry {
        /// The job's reply.
        reply: R,
        /// Why.
        reason: String,
    },
}

/// Scheduling settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerSettings {
    /// Most sequences running at once.
    pub max_batch_size: usize,
    /// When idle, how long a first job waits for others before the first step.
    pub batch_wait: Duration,
    /// Prompt tokens prefilled per step at most.
    pub max_prefill_tokens: usize,
}

struct Running<R> {
    reply: R,
    id: String,
    stream: bool,
    deadline_ms: Option<u64>,
    /// Sequences it holds in the engine (its samples, `n`).
    width: usize,
    prompt_tokens: u64,
    text: String,
    tokens: u64,
    first_token_ms: Option<u64>,
    last_token: Option<Instant>,
    started_ms: u64,
}

/// Waiting and running jobs, and the decisions between steps.
pub(crate) struct Scheduler<R> {
    settings: SchedulerSettings,
    /// Waiting jobs by priority, in [`Priority::ALL`]'s order (high, normal, low).
    waiting: [VecDeque<ScheduledJob<R>>; 3],
    running: HashMap<SeqId, Running<R>>,
    next_seq: SeqId,
    /// Suspect jobs, admitted one at a time into an empty batch.
    suspects: VecDeque<ScheduledJob<R>>,
    /// The suspect running alone, if any.
    solo: Option<SeqId>,
}

/// Prompt tokens two jobs must share to be admitted together (the prefix cache's block).
const SHARED_PREFIX_TOKENS: usize = 16;
/// How far behind the head of its queue a job sharing its prefix is looked for.
const SHARED_PREFIX_LOOKAHEAD: usize = 256;

/// The first block of a prompt that has more than one (a prefix worth sharing).
fn shared_prefix(prompt: &[u32]) -> Option<Vec<u32>> {
    (prompt.len() > SHARED_PREFIX_TOKENS).then(|| prompt[..SHARED_PREFIX_TOKENS].to_vec())
}

/// Where `p` comes in the admission order ([`Priority::ALL`]).
fn rank(p: Priority) -> usize {
    Priority::ALL.iter().position(|&q| q == p).expect("every priority is in ALL")
}

/// An outcome finished now, with no tokens counted yet; `error` is the message and its fixed kind.
pub(crate) fn outcome(status: JobStatus, text: String, error: Option<(String, &'static str)>) -> JobOutcome {
    JobOutcome {
        status,
        text,
        finish_reason: None,
        prompt_tokens: 0,
        completion_tokens: 0,
        score: None,
        logprobs: Logprobs::default(),
        choices: None,
        error: error.as_ref().map(|e| e.0.clone()),
        error_kind: error.map(|e| e.1),
        first_token_ms: None,
        finished_ms: now_ms(),
    }
}

impl<R> Scheduler<R> {
    /// An empty scheduler.
    pub(crate) fn new(settings: SchedulerSettings) -> Self {
        Self {
            settings,
            waiting: Default::default(),
            running: HashMap::new(),
            next_seq: 1,
            suspects: VecDeque::new(),
            solo: None,
        }
    }

    /// Queues a job for admission.
    pub(crate) fn enqueue(&mut self, job: ScheduledJob<R>) {
        if job.isolated {
            self.suspects.push_back(job);
            return;
        }
        self.waiting[rank(job.job.priority)].push_back(job);
    }

    /// Jobs waiting for admission.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.iter().map(VecDeque::len).sum::<usize>() + self.suspects.len()
    }

    /// Estimated tokens of the jobs waiting for admission (see [`crate::backlog::estimated_tokens`]).
    pub(crate) fn waiting_tokens(&self) -> u64 {
        self.waiting.iter().flatten().map(|j| crate::backlog::estimated_tokens(&j.job)).sum()
    }

    /// Sequences running.
    pub(crate) fn running(&self) -> usize {
        self.running.len()
    }

    /// Sequences in the running batch: each job counts as many as it has samples (`n`).
    pub(crate) fn running_sequences(&self) -> usize {
        self.running.values().map(|r| r.width).sum()
    }

    /// True when nothing is waiting or running.
    pub(crate) fn is_idle(&self) -> bool {
        self.waiting() == 0 && self.running.is_empty()
    }

    /// Admits waiting jobs (high first, then oldest) while the batch has room. Jobs already past
    /// their deadline end `expired`; jobs the engine refuses end `failed`.
    ///
    /// Suspects come first and run alone: the batch drains, then one suspect is admitted once
    /// `solo_gate` returns true (it records the solo run; false leaves the suspect waiting), and
    /// nothing joins it until it leaves.
    pub(crate) fn admit(&mut self, engine: &mut dyn Engine, events: &mut Vec<EngineEvent<R>>, solo_gate: &mut dyn FnMut(&ValidJob) -> bool) {
        if self.solo.is_some_and(|s| self.running.contains_key(&s)) {
            return;
        }
        self.solo = None;
        if !self.suspects.is_empty() {
            if !self.running.is_empty() {
                return;
            }
            while let Some(next) = self.suspects.pop_front() {
                let Some(next) = self.unless_expired(next, events) else { continue };
                if !solo_gate(&next.job) {
                    self.suspects.push_front(next);
                    return;
                }
                if let Some(seq) = self.start(engine, next, events) {
                    self.solo = Some(seq);
                    return;
                }
            }
        }
        // A job counts as many sequences as it has samples; the first one always fits.
        loop {
            let width = self.running_sequences();
            let Some(next) = self.waiting.iter_mut().find_map(VecDeque::pop_front) else { break };
            let Some(next) = self.unless_expired(next, events) else { continue };
            if width > 0 && width + next.job.n as usize > self.settings.max_batch_size {
                self.waiting[rank(next.job.priority)].push_front(next);
                break;
            }
            let (queue, prefix) = (rank(next.job.priority), shared_prefix(&next.prompt));
            self.start(engine, next, events);
            if let Some(prefix) = prefix {
                self.admit_sharing(engine, events, queue, &prefix);
            }
        }
    }

    /// Jobs of queue `queue` that start with `prefix`, a job just admitted, join it while the
    /// batch has room (ahead of others in their queue, at most [`SHARED_PREFIX_LOOKAHEAD`] back),
    /// so the engine computes the shared prompt once. Each job still waits at most one admission
    /// more per job ahead of it: the head of a queue is always admitted first.
    fn admit_sharing(&mut self, engine: &mut dyn Engine, events: &mut Vec<EngineEvent<R>>, queue: usize, prefix: &[u32]) {
        let (mut at, mut examined) = (0, 0);
        while at < self.waiting[queue].len() && examined < SHARED_PREFIX_LOOKAHEAD {
            examined += 1;
            let width = self.running_sequences();
            let candidate = &self.waiting[queue][at];
            if !candidate.prompt.starts_with(prefix) || width + candidate.job.n as usize > self.settings.max_batch_size {
                at += 1;
                continue;
            }
            if let Some(job) = self.waiting[queue].remove(at).and_then(|j| self.unless_expired(j, events)) {
                self.start(engine, job, events);
            }
        }
    }

    /// The job, unless its deadline has passed: then it ends `expired` without running.
    fn unless_expired(&self, job: ScheduledJob<R>, events: &mut Vec<EngineEvent<R>>) -> Option<ScheduledJob<R>> {
        if job.job.deadline_ms.is_some_and(|d| d <= now_ms()) {
            events.push(EngineEvent::Finished { reply: job.reply, outcome: outcome(JobStatus::Expired, String::new(), None) });
            return None;
        }
        Some(job)
    }

    /// Admits one job into the engine; a job the engine refuses ends `failed`.
    fn start(&mut self, engine: &mut dyn Engine, mut next: ScheduledJob<R>, events: &mut Vec<EngineEvent<R>>) -> Option<SeqId> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let seed = next.job.sampling.seed.unwrap_or_else(rand::random);
        let prompt = std::mem::take(&mut next.prompt);
        match engine.admit(seq, &next.job, prompt, seed) {
            Ok(admitted) => {
                tracing::debug!(job = %next.job.id, seq, prompt_tokens = admitted.prompt_tokens, solo = next.isolated, "job joins the running batch");
                self.running.insert(
                    seq,
                    Running {
                        reply: next.reply,
                        id: next.job.id,
                        stream: next.job.stream,
                        deadline_ms: next.job.deadline_ms,
                        width: next.job.n as usize,
                        prompt_tokens: admitted.prompt_tokens as u64,
                        text: String::new(),
                        tokens: 0,
                        first_token_ms: None,
                        last_token: None,
                        started_ms: next.started_ms,
                    },
                );
                Some(seq)
            }
            Err(e) => {
                events.push(EngineEvent::Finished {
                    reply: next.reply,
                    outcome: outcome(JobStatus::Failed, String::new(), Some((e.to_string(), error_kind::UNSUPPORTED))),
                });
                None
            }
        }
    }

    /// Ends running sequences whose deadline has passed, keeping what they generated.
    pub(crate) fn expire(&mut self, engine: &mut dyn Engine, events: &mut Vec<EngineEvent<R>>) {
        let now = now_ms();
        let expired: Vec<SeqId> =
            self.running.iter().filter(|(_, r)| r.deadline_ms.is_some_and(|d| d <= now)).map(|(&id, _)| id).collect();
        for id in expired {
            self.end_early(engine, id, JobStatus::Expired, events);
        }
    }

    /// Ends the jobs whose ids are in `ids` `cancelled`: waiting ones without running, running
    /// ones keeping what they generated. Removes from `ids` those it found.
    pub(crate) fn cancel(&mut self, ids: &mut HashSet<String>, engine: &mut dyn Engine, events: &mut Vec<EngineEvent<R>>) {
        if ids.is_empty() {
            return;
        }
        for queue in self.waiting.iter_mut().chain([&mut self.suspects]) {
            for job in std::mem::take(queue) {
                if ids.remove(&job.job.id) {
                    events.push(EngineEvent::Finished { reply: job.reply, outcome: outcome(JobStatus::Cancelled, String::new(), None) });
                } else {
                    queue.push_back(job);
                }
            }
        }
        let running: Vec<SeqId> = self.running.iter().filter(|(_, r)| ids.contains(&r.id)).map(|(&seq, _)| seq).collect();
        for seq in running {
            if let Some(r) = self.running.get(&seq) {
                ids.remove(&r.id);
            }
            self.end_early(engine, seq, JobStatus::Cancelled, events);
        }
    }

    /// The ids of every job waiting or running.
    pub(crate) fn job_ids(&self) -> Vec<String> {
        let waiting = self.waiting.iter().flatten().chain(&self.suspects).map(|j| j.job.id.clone());
        waiting.chain(self.running.values().map(|r| r.id.clone())).collect()
    }

    /// Takes every job out, waiting and running (releasing their sequences), and returns their
    /// replies: what a stop before the jobs finished hands back.
    pub(crate) fn take_all(&mut self, engine: &mut dyn Engine) -> Vec<R> {
        let mut replies: Vec<R> = Vec::new();
        for queue in self.waiting.iter_mut().chain([&mut self.suspects]) {
            replies.extend(queue.drain(..).map(|j| j.reply));
        }
        for (seq, r) in self.running.drain() {
            engine.release(seq);
            replies.push(r.reply);
        }
        self.solo = None;
        replies
    }

    /// Releases a running sequence before it finished, reporting `status` with its text so far.
    fn end_early(&mut self, engine: &mut dyn Engine, id: SeqId, status: JobStatus, events: &mut Vec<EngineEvent<R>>) {
        engine.release(id);
        if let Some(r) = self.running.remove(&id) {
            let mut o = outcome(status, r.text, None);
            o.prompt_tokens = r.prompt_tokens;
            o.completion_tokens = r.tokens;
            o.first_token_ms = r.first_token_ms;
            events.push(EngineEvent::Finished { reply: r.reply, outcome: o });
        }
    }

    /// Runs one engine step and turns its updates into events. A failed step puts every running
    /// job back for another try.
    pub(crate) fn step(&mut self, engine: &mut dyn Engine, metrics: Option<&WorkerMetrics>, events: &mut Vec<EngineEvent<R>>) {
        if self.running.is_empty() {
            return;
        }
        let started = Instant::now();
        let batch = self.running.len();
        let updates = match engine.step(&StepLimits { max_prefill_tokens: self.settings.max_prefill_tokens }) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, sequences = batch, "engine step failed; requeueing the batch");
                for (id, r) in self.running.drain() {
                    engine.release(id);
                    events.push(EngineEvent::Retry { reply: r.reply, reason: e.to_string() });
                }
                return;
            }
        };
        let now = Instant::now();
        let mut step_tokens = 0usize;
        for u in updates {
            let Some(r) = self.running.get_mut(&u.id) else { continue };
            if u.new_tokens > 0 {
                step_tokens += u.new_tokens;
                r.tokens += u.new_tokens as u64;
                if r.first_token_ms.is_none() {
                    r.first_token_ms = Some(now_ms());
                    if let Some(m) = metrics {
                        m.time_to_first_token.observe(now_ms().saturating_sub(r.started_ms) as f64 / 1000.0);
                    }
                } else if let (Some(m), Some(last)) = (metrics, r.last_token) {
                    m.inter_token_latency.observe(now.duration_since(last).as_secs_f64());
                }
                r.last_token = Some(now);
            }
            if !u.text.is_empty() {
                if r.stream {
                    events.push(EngineEvent::Chunk { id: r.id.clone(), text: u.text.clone() });
                }
                r.text.push_str(&u.text);
            }
            if let Some(done) = u.done {
                if let Some(r) = self.running.remove(&u.id) {
                    if let Some(e) = done.error {
                        let mut o = outcome(JobStatus::Failed, r.text, Some((e, error_kind::UNSUPPORTED)));
                        (o.prompt_tokens, o.completion_tokens) = (r.prompt_tokens, r.tokens);
                        events.push(EngineEvent::Finished { reply: r.reply, outcome: o });
                        continue;
                    }
                    let mut o = outcome(JobStatus::Done, r.text, None);
                    o.finish_reason = done.finish_reason;
                    o.prompt_tokens = r.prompt_tokens;
                    o.completion_tokens = r.tokens;
                    o.first_token_ms = r.first_token_ms;
                    o.score = done.score;
                    if !done.samples.is_empty() {
                        let others: u64 = done.samples.iter().map(|c| c.completion_tokens).sum();
                        let first = Choice {
                            text: o.text.clone(),
                            finish_reason: done.finish_reason,
                            completion_tokens: r.tokens.saturating_sub(others),
                            token_logprobs: done.logprobs.generated.clone(),
                        };
                        o.choices = Some(std::iter::once(first).chain(done.samples).collect());
                    }
                    o.logprobs = done.logprobs;
                    events.push(EngineEvent::Finished { reply: r.reply, outcome: o });
                }
            }
        }
        tracing::debug!(sequences = batch, tokens = step_tokens, seconds = started.elapsed().as_secs_f64(), "engine step");
        if let Some(m) = metrics {
            m.engine_step_seconds.observe(started.elapsed().as_secs_f64());
            m.batch_size.observe(batch as f64);
            m.batch_tokens.observe(step_tokens as f64);
            m.generated_tokens.inc_by(step_tokens as u64);
        }
    }
}

/// Handle of the engine thread (its job channel is apart: dropping that lets the thread finish
/// its work and exit); [`EngineHandle::stop`] makes it stop at the next step boundary and hand
/// back the jobs it still holds.
pub(crate) struct EngineHandle<R> {
    /// Ids of jobs to cancel, waiting or running.
    pub cancels: mpsc::UnboundedSender<String>,
    /// The ids of the jobs the thread holds (waiting or running), as of its last loop.
    pub holding: watch::Receiver<Vec<String>>,
    stop: Arc<AtomicBool>,
    /// What the thread hands back when it ends: the replies of the jobs it still held.
    ended: oneshot::Receiver<Vec<R>>,
}

impl<R: Send + 'static> EngineHandle<R> {
    /// Stops the thread at its next step boundary (at once if it already ended) and returns the
    /// replies of the jobs it still held: waiting, running, in its channel, or in events nobody
    /// took. None if it panicked; their deliveries then come back when the source closes. The
    /// thread is never joined, so a step that never ends cannot hold the process.
    pub(crate) async fn stop(self) -> Vec<R> {
        self.stop.store(true, Ordering::SeqCst);
        self.ended.await.unwrap_or_default()
    }
}

/// Tells the health flags that the engine thread ended when dropped.
struct EngineStopped(Option<crate::health::Health>);

impl Drop for EngineStopped {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.engine_stopped();
        }
    }
}

/// Where the engine thread sends its events; when nobody takes them any more, `Err` with the reply
/// the event carried, if any.
pub(crate) type EmitEvent<R> = Box<dyn FnMut(EngineEvent<R>) -> Result<(), Undelivered<R>> + Send>;

/// An event nobody took, with the reply it carried (none for streamed text), boxed: a reply is
/// large, and this is the rare path.
pub(crate) struct Undelivered<R>(pub Option<Box<R>>);

impl<R> EngineEvent<R> {
    /// The reply this event carries (none for streamed text).
    pub(crate) fn into_reply(self) -> Option<R> {
        match self {
            EngineEvent::Chunk { .. } => None,
            EngineEvent::Finished { reply, .. } | EngineEvent::Retry { reply, .. } => Some(reply),
        }
    }
}

/// Hands `out` to `emit` in order. Once an event is not taken, the replies of it and of every
/// later one go to `undelivered` instead, and the answer is false.
fn deliver<R>(emit: &mut EmitEvent<R>, out: &mut Vec<EngineEvent<R>>, undelivered: &mut Vec<R>) -> bool {
    let mut open = undelivered.is_empty();
    for ev in out.drain(..) {
        if !open {
            undelivered.extend(ev.into_reply());
            continue;
        }
        if let Err(Undelivered(reply)) = emit(ev) {
            tracing::error!("event channel closed; engine thread stops");
            undelivered.extend(reply.map(|r| *r));
            open = false;
        }
    }
    open
}

/// Decides whether a suspect may start running alone now (see [`Scheduler::admit`]).
pub(crate) type SoloGate = Box<dyn FnMut(&ValidJob) -> bool + Send>;

/// Starts the engine thread. It owns `engine`, takes jobs from the channel of `queue_bound` it
/// returns, and hands events to `emit`. It exits once that channel is closed and all its work is
/// done, or at the next step boundary after [`EngineHandle::stop`].
pub(crate) fn spawn_engine_thread<R: Send + 'static>(
    mut engine: Box<dyn Engine>,
    settings: SchedulerSettings,
    queue_bound: usize,
    mut emit: EmitEvent<R>,
    metrics: Option<WorkerMetrics>,
    runtime: tokio::runtime::Handle,
    mut solo_gate: SoloGate,
) -> std::io::Result<(mpsc::Sender<ScheduledJob<R>>, EngineHandle<R>)> {
    let (tx, mut rx) = mpsc::channel::<ScheduledJob<R>>(queue_bound.max(1));
    let (cancel_tx, mut cancel_rx) = mpsc::unbounded_channel::<String>();
    let (holding_tx, holding_rx) = watch::channel(Vec::new());
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    let stopped = EngineStopped(metrics.as_ref().map(|m| m.health.clone()));
    let (ended_tx, ended_rx) = oneshot::channel();
    std::thread::Builder::new().name("genq-engine".into()).spawn(move || {
        // Reports the thread's end to `/livez`, however it ends (a panic included).
        let _stopped = stopped;
        let mut sched: Scheduler<R> = Scheduler::new(settings);
        let mut open = true;
        let mut out = Vec::new();
        // Replies of events nobody took (the writer is gone): handed back with the rest.
        let mut undelivered: Vec<R> = Vec::new();
        let mut last_prefix = crate::engine::PrefixStats::default();
        // Cancel requests not matched yet: the job may still be in the channel.
        let mut to_cancel: HashSet<String> = HashSet::new();
        loop {
            if stop_flag.load(Ordering::SeqCst) {
                break;
            }
            if sched.is_idle() {
                if !open {
                    break;
                }
                // Idle: block for the first job, then give others `batch_wait` to join it.
                match rx.blocking_recv() {
                    Some(job) => sched.enqueue(job),
                    None => break,
                }
                let max = settings.max_batch_size;
                if sched.waiting() < max {
                    open = runtime.block_on(genq_protocol::batch::gather(&mut rx, settings.batch_wait, |job| {
                        sched.enqueue(job);
                        sched.waiting() < max
                    }));
                }
            }
            while open && sched.waiting() < settings.max_batch_size.saturating_mul(2) {
                match rx.try_recv() {
                    Ok(job) => sched.enqueue(job),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            // The pipeline counted each job in `waiting_tokens` when it sent it; jobs leave the
            // count as they leave the waiting queues (admitted, cancelled or expired).
            let waiting_before = sched.waiting_tokens();
            while let Ok(id) = cancel_rx.try_recv() {
                to_cancel.insert(id);
            }
            sched.cancel(&mut to_cancel, engine.as_mut(), &mut out);
            if sched.is_idle() {
                // Whatever is left belongs to jobs that finished before the request arrived.
                to_cancel.clear();
            }
            sched.expire(engine.as_mut(), &mut out);
            // Sent before admission, so the solo gate sees these outcomes among those sent.
            if !deliver(&mut emit, &mut out, &mut undelivered) {
                break;
            }
            sched.admit(engine.as_mut(), &mut out, solo_gate.as_mut());
            if let Some(m) = &metrics {
                m.waiting_tokens.sub(i64::try_from(waiting_before.saturating_sub(sched.waiting_tokens())).unwrap_or(0));
                m.running_sequences.set(sched.running_sequences() as i64);
                m.waiting_jobs.set(sched.waiting() as i64);
            }
            sched.step(engine.as_mut(), metrics.as_ref(), &mut out);
            if sched.running() == 0 && sched.waiting() > 0 && out.is_empty() {
                // Admission is blocked (a suspect waits for earlier results to be stored, or its
                // solo run could not be recorded): don't spin.
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Some(m) = &metrics {
                // After the step, so sequences that just finished no longer count while idle.
                m.running_sequences.set(sched.running_sequences() as i64);
                m.kv_cache_tokens.set(engine.cached_tokens() as i64);
                let prefix = engine.prefix_cache();
                m.prefix_cache(last_prefix, prefix);
                last_prefix = prefix;
            }
            let ids = sched.job_ids();
            holding_tx.send_if_modified(|held| {
                let changed = *held != ids;
                if changed {
                    *held = ids;
                }
                changed
            });
            if !deliver(&mut emit, &mut out, &mut undelivered) {
                break;
            }
        }
        if let Some(m) = &metrics {
            m.running_sequences.set(0);
            m.waiting_jobs.set(0);
            m.waiting_tokens.set(0);
            m.kv_cache_tokens.set(0);
        }
        // Jobs still in the channel count as held too.
        let mut left = sched.take_all(engine.as_mut());
        left.append(&mut undelivered);
        rx.close();
        while let Ok(job) = rx.try_recv() {
            left.push(job.reply);
        }
        let _ = ended_tx.send(left);
    })?;
    Ok((tx, EngineHandle { cancels: cancel_tx, holding: holding_rx, stop, ended: ended_rx }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::echo::EchoEngine;
    use genq_shared::valid::{validate, Limits};
    use genq_shared::JobRequest;

    type Ticket = u64;

    fn scheduled(ticket: Ticket, json: &str) -> ScheduledJob<Ticket> {
        let req: JobRequest = serde_json::from_str(json).expect("json");
        let job = validate(&req, &Limits::default()).expect("valid");
        let prompt = EchoEngine::new("m").encoder().encode(&job).expect("encodes");
        ScheduledJob { reply: ticket, job, prompt, started_ms: now_ms(), isolated: false }
    }

    fn settings(max: usize) -> SchedulerSettings {
        SchedulerSettings { max_batch_size: max, batch_wait: Duration::ZERO, max_prefill_tokens: 256 }
    }

    fn finished(events: &[EngineEvent<Ticket>]) -> Vec<(Ticket, JobStatus)> {
        events
            .iter()
            .filter_map(|e| match e {
                EngineEvent::Finished { reply, outcome } => Some((*reply, outcome.status)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn jobs_join_and_leave_the_running_batch_at_every_step() {
        let mut engine = EchoEngine::new("m");
        let mut s = Scheduler::new(settings(2));
        s.enqueue(scheduled(1, r#"{"id":"a","prompt":"a","max_new_tokens":1}"#));
        s.enqueue(scheduled(2, r#"{"id":"b","prompt":"b","max_new_tokens":3}"#));
        s.enqueue(scheduled(3, r#"{"id":"c","prompt":"c","max_new_tokens":1}"#));
        let mut ev = Vec::new();
        s.admit(&mut engine, &mut ev, &mut |_| true);
        assert_eq!((s.running(), s.waiting()), (2, 1), "cap of 2 sequences");
        s.step(&mut engine, None, &mut ev);
        assert_eq!(finished(&ev), vec![(1, JobStatus::Done)], "job 1 leaves after its one token");
        s.admit(&mut engine, &mut ev, &mut |_| true);
        assert_eq!(s.running(), 2, "job 3 joins while job 2 still runs");
        s.step(&mut engine, None, &mut ev);
        assert_eq!(finished(&ev), vec![(1, JobStatus::Done), (3, JobStatus::Done)]);
    }

    #[test]
    fn a_job_counts_one_running_sequence_per_sample() {
        let mut engine = EchoEngine::new("m");
        let mut s = Scheduler::new(settings(4));
        s.enqueue(scheduled(1, r#"{"id":"a","prompt":"a","max_new_tokens":2,"n":3,"temperature":1.0}"#));
        s.enqueue(scheduled(2, r#"{"id":"b","prompt":"b","max_new_tokens":2}"#));
        s.enqueue(scheduled(3, r#"{"id":"c","prompt":"c","max_new_tokens":2}"#));
        let mut ev = Vec::new();
        s.admit(&mut engine, &mut ev, &mut |_| true);
        assert_eq!((s.running(), s.running_sequences(), s.waiting()), (2, 4, 1), "three samples and one more job fill four sequences");
    }

    #[test]
    fn jobs_sharing_a_prompt_prefix_are_admitted_together() {
        let mut engine = EchoEngine::new("m");
        let mut s = Scheduler::new(settings(3));
        let shared = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen";
        s.enqueue(scheduled(1, &format!(r#"{{"id":"a","prompt":"{shared} a","max_new_tokens":1}}"#)));
        s.enqueue(scheduled(2, r#"{"id":"b","prompt":"something else entirely","max_new_tokens":1}"#));
        s.enqueue(scheduled(3, r#"{"id":"c","prompt":"and another","max_new_tokens":1}"#));
        s.enqueue(scheduled(4, &format!(r#"{{"id":"d","prompt":"{shared} d","max_new_tokens":1}}"#)));
        s.enqueue(scheduled(5, &format!(r#"{{"id":"e","prompt":"{shared} e","max_new_tokens":1}}"#)));
        let mut ev = Vec::new();
        s.admit(&mut engine, &mut ev, &mut |_| true);
        s.step(&mut engine, None, &mut ev);
        let first: Vec<u64> = finished(&ev).into_iter().map(|(t, _)| t).collect();
        assert_eq!(first, vec![1, 4, 5], "the head and the jobs sharing its prefix, ahead of 2 and 3");
        s.admit(&mut engine, &mut ev, &mut |_| true);
        s.step(&mut engine, None, &mut ev);
        let all: Vec<u64> = finished(&ev).into_iter().map(|(t, _)| t).collect();
        assert_eq!(all, vec![1, 4, 5, 2, 3], "the others next, in their order");
    }

    #[test]
    fn jobs_are_admitted_high_then_normal_then_low() {
        let mut engine = EchoEngine::new("m");
        let mut s = Scheduler::new(settings(1));
        s.enqueue(scheduled(1, r#"{"id":"a","prompt":"a","max_new_tokens":1,"priority":"low"}"#));
        s.enqueue(scheduled(2, r#"{"id":"b","prompt":"b","max_new_tokens":1}"#));
        s.enqueue(scheduled(3, r#"{"id":"c","prompt":"c","max_new_tokens":1,"priority":"high"}"#));
        let mut ev = Vec::new();
        for _ in 0..3 {
            s.admit(&mut engine, &mut ev, &mut |_| true);
            s.step(&mut engine, None, &mut ev);
        }
        let order: Vec<u64> = finished(&ev).into_iter().map(|(seq, _)| seq).collect();
        assert_eq!(order, vec![3, 2, 1]);
    }

    #[test]
    fn a_job_past_its_deadline_ends_expired() {
        let mut engine = EchoEngine::new("m");
        let mut s = Scheduler::new(settings(4));
        s.enqueue(scheduled(1, r#"{"id":"a","prompt":"a","deadline_ms":1}"#));
        let mut ev = Vec::new();
        s.admit(&mut engine, &mut ev, &mut |_| true);
        assert_eq!(finished(&ev), vec![(1, JobStatus::Expired)]);
        assert!(s.is_idle());
    }

    #[test]
    fn a_job_the_engine_refuses_ends_failed_naming_the_field() {
        let mut engine = EchoEngine::new("m");
        let mut s = Scheduler::new(settings(4));
        s.enqueue(scheduled(1, r#"{"id":"a","prompt":"a b","max_new_tokens":8191}"#));
        let mut ev = Vec::new();
        s.admit(&mut engine, &mut ev, &mut |_| true);
        match &ev[0] {
            EngineEvent::Finished { outcome, .. } => {
                assert_eq!(outcome.status, JobStatus::Failed);
                assert!(outcome.error.as_deref().unwrap_or("").contains("max_new_tokens"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn suspect(ticket: Ticket, json: &str) -> ScheduledJob<Ticket> {
        ScheduledJob { isolated: true, ..scheduled(ticket, json) }
    }

    #[test]
    fn a_suspect_runs_alone_once_the_batch_drains() {
        let mut engine = EchoEngine::new("m");
        let mut s = Scheduler::new(settings(4));
        s.enqueue(scheduled(1, r#"{"id":"a","prompt":"a","max_new_tokens":1}"#));
        let mut ev = Vec::new();
        s.admit(&mut engine, &mut ev, &mut |_| true);
        s.enqueue(suspect(2, r#"{"id":"s","prompt":"s","max_new_tokens":2}"#));
        s.enqueue(scheduled(3, r#"{"id":"c","prompt":"c","max_new_tokens":1}"#));
        s.admit(&mut engine, &mut ev, &mut |_| true);
        assert_eq!(s.running(), 1, "nothing joins while a suspect waits for the batch to drain");
        s.step(&mut engine, None, &mut ev);
        let mut gated = Vec::new();
        s.admit(&mut engine, &mut ev, &mut |j| {
            gated.push(j.id.clone());
            true
        });
        assert_eq!((s.running(), gated), (1, vec!["s".to_string()]), "the suspect runs alone, after its gate");
        s.step(&mut engine, None, &mut ev);
        s.admit(&mut engine, &mut ev, &mut |_| true);
        assert_eq!(s.running(), 1, "still alone on its second token");
        s.step(&mut engine, None, &mut ev);
        s.admit(&mut engine, &mut ev, &mut |_| true);
        s.step(&mut engine, None, &mut ev);
        assert_eq!(finished(&ev), vec![(1, JobStatus::Done), (2, JobStatus::Done), (3, JobStatus::Done)]);
    }

    #[test]
    fn a_suspect_whose_solo_run_cannot_be_recorded_waits() {
        let mut engine = EchoEngine::new("m");
        let mut s = Scheduler::new(settings(4));
        s.enqueue(suspect(1, r#"{"id":"s","prompt":"s","max_new_tokens":1}"#));
        let mut ev = Vec::new();
        s.admit(&mut engine, &mut ev, &mut |_| false);
        assert_eq!((s.running(), s.waiting()), (0, 1));
        s.admit(&mut engine, &mut ev, &mut |_| true);
        assert_eq!((s.running(), s.waiting()), (1, 0));
    }

    #[test]
    fn cancel_ends_waiting_and_running_jobs_keeping_generated_text() {
        let mut engine = EchoEngine::new("m");
        let mut s = Scheduler::new(settings(1));
        s.enqueue(scheduled(1, r#"{"id":"a","prompt":"w1 w2 w3","max_new_tokens":9}"#));
        s.enqueue(scheduled(2, r#"{"id":"b","prompt":"b","max_new_tokens":9}"#));
        let mut ev = Vec::new();
        s.admit(&mut engine, &mut ev, &mut |_| true);
        s.step(&mut engine, None, &mut ev);
        let mut ids: HashSet<String> = ["a".to_string(), "b".to_string(), "zz".to_string()].into();
        s.cancel(&mut ids, &mut engine, &mut ev);
        assert_eq!(ids, ["zz".to_string()].into(), "unknown ids stay for later");
        assert_eq!(finished(&ev), vec![(2, JobStatus::Cancelled), (1, JobStatus::Cancelled)]);
        assert!(s.is_idle());
        let kept = ev.iter().find_map(|e| match e {
            EngineEvent::Finished { reply: 1, outcome } => Some((outcome.text.clone(), outcome.completion_tokens)),
            _ => None,
        });
        assert_eq!(kept, Some(("w1".to_string(), 1)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_writer_the_engine_thread_hands_back_every_job_exactly_once() {
        // Every event is refused, as when the result writer is gone: the replies of finished jobs
        // come back with the waiting, running and still-queued ones, none lost, none twice.
        let emit: EmitEvent<Ticket> = Box::new(|ev| Err(Undelivered(ev.into_reply().map(Box::new))));
        let runtime = tokio::runtime::Handle::current();
        let (jobs, handle) =
            spawn_engine_thread(Box::new(EchoEngine::new("m")), settings(2), 8, emit, None, runtime, Box::new(|_| true)).expect("thread");
        for t in 1..=6 {
            let tokens = if t % 2 == 0 { 1 } else { 40 };
            jobs.send(scheduled(t, &format!(r#"{{"id":"j{t}","prompt":"a b c","max_new_tokens":{tokens}}}"#))).await.expect("send");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut back = handle.stop().await;
        drop(jobs);
        back.sort_unstable();
        assert_eq!(back, (1..=6).collect::<Vec<Ticket>>());
    }
}