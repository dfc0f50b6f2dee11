//! Publishing jobs: persistent JSON messages to `genq.jobs` with `mandatory=true` and publisher
//! confirms. A nack (queue full) or a return (no queue for the model) is an error to the caller.
//! Jobs published together are packed into bulk (v2) messages ([`crate::pack`]); a job published
//! alone goes as a v1 message.

use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use genq_shared::bulk::{BULK_CONTENT_TYPE, JOB_CONTENT_TYPE};
use genq_shared::settings::{ProducerSettings, QueueSettings};
use genq_shared::topology::{self, CREATED_MS_HEADER, JOBS_EXCHANGE};
use genq_shared::valid::{self, Limits};
use genq_shared::{now_ms, JobRequest};
use genq_protocol::backoff::Backoff;
use genq_protocol::broker::{self, BrokerError};

use crate::gather::Gather;
use crate::pack::{self, BulkLimits, Message};
use crate::results::ResultClient;

/// A job was not accepted by the broker.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The job broke a rule before publishing.
    #[error("invalid job: {0}")]
    Invalid(#[from] valid::ValidationError),
    /// The job could not be serialised.
    #[error("cannot encode job: {0}")]
    Encode(String),
    /// No queue is bound for the job's model (no worker ever declared it).
    #[error("unroutable: no queue for model {model:?} (start a worker for it, or check the `model` field)")]
    Unroutable {
        /// The model.
        model: String,
    },
    /// The broker refused the message: the queue is at its max length (backpressure), or its
    /// quorum queue has no leader for a moment (a node failover).
    #[error("rejected by RabbitMQ (queue full: backpressure, or no queue leader during a failover); retry later")]
    Nacked,
    /// The connection or channel failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Publishes jobs with confirms. Publishes that fail because the connection was lost are
/// retried on a new connection (same job ids, so a job published twice runs once) for
/// `producer.retry_secs`.
pub struct Producer {
    url: String,
    link: std::sync::Mutex<Link>,
    settings: ProducerSettings,
    queue: QueueSettings,
    results: Option<ResultClient>,
    metrics: Option<crate::metrics::ProducerMetrics>,
    gathered: Gather<JobRequest, Result<String, PublishError>>,
}

/// One connection and its confirm-mode channel.
struct Link {
    connection: Connection,
    channel: Channel,
}

/// Jobs recorded `queued` in one Redis round trip, before they are published.
const MARK_CHUNK: usize = 512;

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Producer {
    /// Connects, enables publisher confirms and (by default) declares the default model's queues
    /// so jobs published before any worker starts are kept.
    pub async fn connect(url: &str, settings: &ProducerSettings, queue: &QueueSettings) -> Result<Self, BrokerError> {
        let link = Self::open(url, settings, queue).await?;
        Ok(Self {
            url: url.to_string(),
            link: std::sync::Mutex::new(link),
            settings: settings.clone(),
            queue: queue.clone(),
            results: None,
            metrics: None,
            gathered: Gather::default(),
        })
    }

    async fn open(url: &str, settings: &ProducerSettings, queue: &QueueSettings) -> Result<Link, BrokerError> {
        let connection = broker::connect(url, "genq-producer").await?;
        let channel = connection.create_channel().await.map_err(|e| BrokerError::protocol("open channel", e))?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| BrokerError::protocol("confirm.select", e))?;
        if settings.declare_default_model {
            broker::declare_topology(&channel, &settings.default_model, queue.limits()).await?;
        }
        Ok(Link { connection, channel })
    }

    fn channel(&self) -> Option<Channel> {
        self.link.lock().ok().map(|l| l.channel.clone())
    }

    /// Replaces the connection, retrying with backoff until `deadline`; false if it never came.
    async fn reconnect(&self, deadline: Instant) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
        loop {
            match Self::open(&self.url, &self.settings, &self.queue).await {
                Ok(link) => {
                    tracing::warn!("reconnected to RabbitMQ");
                    if let Ok(mut l) = self.link.lock() {
                        *l = link;
                    }
                    return true;
                }
                Err(e) if Instant::now() + backoff.peek() < deadline => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "RabbitMQ unreachable; retrying");
                    backoff.sleep().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "RabbitMQ still unreachable; giving up on the unconfirmed publishes");
                    return false;
                }
            }
        }
    }

    /// Counts every publish in `metrics` (`genq_published_total{outcome}`, publish latency).
    pub fn with_metrics(mut self, metrics: crate::metrics::ProducerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Records every job as `queued` in Redis through `results` before publishing it (taking the
    /// mark back if the publish fails for good), so a client waiting on it can tell "queued" from
    /// "unknown or expired" (`ResultClient::wait` answers
    /// [`ResultError::Unknown`](crate::ResultError::Unknown) for a job Redis has no record of).
    pub fn with_results(mut self, results: ResultClient) -> Self {
        self.results = Some(results);
        self
    }

    /// Fills in defaults the producer owns (id, model) and checks the job.
    pub fn prepare(&self, mut job: JobRequest) -> Result<JobRequest, PublishError> {
        if job.id.is_none() {
            job.id = Some(uuid::Uuid::new_v4().to_string());
        }
        if job.model.is_none() {
            job.model = Some(self.settings.default_model.clone());
        }
        valid::validate(&job, &Limits::default())?;
        Ok(job)
    }

    /// Publishes one message: a v1 job (its id as `message_id`) or a bulk body (its own content
    /// type, and no `message_id`, so a consumer that knows only v1 dead-letters it rather than
    /// taking it for one job).
    async fn publish(&self, message: &Message) -> Result<lapin::PublisherConfirm, PublishError> {
        let mut headers = FieldTable::default();
        headers.insert(CREATED_MS_HEADER.into(), AMQPValue::LongLongInt(now_ms() as i64));
        let props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        let props = if message.is_bulk() {
            props.with_content_type(BULK_CONTENT_TYPE.into())
        } else {
            let id = message.jobs[0].1.id.clone().unwrap_or_default();
            props.with_content_type(JOB_CONTENT_TYPE.into()).with_message_id(id.as_str().into())
        };
        let (model, priority) = message.route();
        let key = topology::routing_key(model, priority);
        let channel = self.channel().ok_or_else(|| PublishError::Encode("producer state poisoned".into()))?;
        channel
            .basic_publish(JOBS_EXCHANGE.into(), key.as_str().into(), BasicPublishOptions { mandatory: true, ..Default::default() }, &message.body, props)
            .await
            .map_err(|e| PublishError::Broker(BrokerError::protocol("basic.publish", e)))
    }

    fn confirmed(model: &str, c: Result<Confirmation, lapin::Error>) -> Result<(), PublishError> {
        match c {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => Err(PublishError::Unroutable { model: model.to_string() }),
            Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked),
            Err(e) => Err(PublishError::Broker(BrokerError::protocol("publisher confirm", e))),
        }
    }

    /// Publishes one job and waits for the broker's confirm. Returns the job id. With
    /// `producer.bulk_wait_ms` above 0, jobs submitted within that time of each other (from
    /// concurrent callers) share bulk messages; with 0 (the default) the job is published at once.
    pub async fn submit(&self, job: JobRequest) -> Result<String, PublishError> {
        let wait = Duration::from_millis(self.settings.bulk_wait_ms);
        let max = self.bulk_limits().max_jobs;
        let outcome = if wait.is_zero() || max <= 1 {
            self.submit_many(vec![job], |_| {}).await.pop()
        } else {
            self.gathered.submit(job, max, wait, |jobs| self.submit_many(jobs, |_| {})).await
        };
        outcome.unwrap_or_else(|| Err(PublishError::Encode("not published: the publish was abandoned".into())))
    }

    /// Publishes many jobs with up to `max_in_flight` confirms outstanding, calling `progress`
    /// with the count of jobs settled so far. Jobs that route alike are packed into bulk messages
    /// (`producer.bulk_max_jobs`, `producer.bulk_max_bytes`); a message's confirm settles all of
    /// its jobs. Results are in input order: the id, or why that job was not accepted. Jobs whose
    /// publish or confirm was lost with the connection are published again on a new one, with the
    /// same ids, until `producer.retry_secs` runs out.
    pub async fn submit_many(
        &self,
        jobs: Vec<JobRequest>,
        mut progress: impl FnMut(usize),
    ) -> Vec<Result<String, PublishError>> {
        let mut out: Vec<Option<Result<String, PublishError>>> = (0..jobs.len()).map(|_| None).collect();
        let mut todo = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.into_iter().enumerate() {
            match self.prepare(job) {
                Ok(j) => todo.push((i, j)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(self.settings.retry_secs);
        let mut settled = out.iter().filter(|o| o.is_some()).count();
        let mut marked = Vec::new();
        loop {
            let lost = self.publish_pass(todo, &mut out, &mut settled, &mut marked, &mut progress).await;
            if lost.is_empty() {
                break;
            }
            tracing::warn!(jobs = lost.len(), "publishes unconfirmed after a broker error; reconnecting to publish them again (same ids)");
            if !self.reconnect(deadline).await {
                break;
            }
            if let Some(m) = &self.metrics {
                m.publish_retries.inc_by(lost.len() as u64);
            }
            todo = lost;
        }
        let unpublished: Vec<String> = marked.into_iter().filter(|(i, _)| !matches!(out[*i], Some(Ok(_)))).map(|(_, id)| id).collect();
        self.unmark_unpublished(unpublished).await;
        out.into_iter().map(|r| r.unwrap_or_else(|| Err(PublishError::Encode("not published".into())))).collect()
    }

    /// Publishes one message and waits for its confirm; the outcome comes back with the message.
    async fn publish_confirmed(&self, message: Message) -> (Message, Result<(), PublishError>) {
        let started = Instant::now();
        let r = match self.publish(&message).await {
            Ok(confirm) => Self::confirmed(message.route().0, confirm.await),
            Err(e) => Err(e),
        };
        if let Some(m) = &self.metrics {
            m.record(r.as_ref().map(|_| ()), message.jobs.len() as u64, started.elapsed());
        }
        (message, r)
    }

    /// How large the bulk messages of this producer may grow.
    fn bulk_limits(&self) -> BulkLimits {
        BulkLimits { max_jobs: self.settings.bulk_max_jobs.clamp(1, genq_shared::bulk::MAX_BULK_JOBS), max_bytes: self.settings.bulk_max_bytes }
    }

    /// Records a chunk of `(index, id, model)` jobs `queued` in Redis on a task of its own, so the
    /// chunk before it is published meanwhile. Answers the index and id of each job it marked
    /// (not those an earlier job with the same id had marked already); none when Redis failed
    /// (the jobs are published all the same: a worker records them when it starts them).
    fn spawn_mark_queued(&self, chunk: Vec<(usize, String, String)>) -> Option<tokio::task::JoinHandle<Vec<(usize, String)>>> {
        let results = self.results.clone()?;
        Some(tokio::spawn(async move {
            let (indexes, pairs): (Vec<usize>, Vec<(String, String)>) = chunk.into_iter().map(|(i, id, model)| (i, (id, model))).unzip();
            match results.mark_queued(&pairs).await {
                Ok(marked) => indexes.into_iter().zip(pairs).zip(marked).filter(|(_, m)| *m).map(|((i, (id, _)), _)| (i, id)).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, jobs = pairs.len(), "could not record the jobs as queued in Redis; publishing them anyway");
                    Vec::new()
                }
            }
        }))
    }

    /// Takes back the `queued` marks of jobs whose publish failed for good.
    async fn unmark_unpublished(&self, ids: Vec<String>) {
        let Some(results) = &self.results else { return };
        if let Err(e) = results.unmark_queued(&ids).await {
            tracing::warn!(error = %e, jobs = ids.len(), "could not take back the queued marks of unpublished jobs");
        }
    }

    /// Publishes `todo` once, packed into messages, with pipelined publishes and confirms (up to
    /// `max_in_flight` messages between the first send and the confirm: the frames of many publishes leave in one write),
    /// storing each outcome in `out`. Each chunk of [`MARK_CHUNK`] jobs is recorded `queued` before
    /// any of it is published (the next chunk's marks are written while this one is published),
    /// so a worker always finds the mark already there, and a mark can never land after a result
    /// that has since expired. Adds the index and id of each job it marked to `marked`. Returns the
    /// jobs lost to a broker error (their `out` holds that error until a retry succeeds).
    async fn publish_pass(
        &self,
        todo: Vec<(usize, JobRequest)>,
        out: &mut [Option<Result<String, PublishError>>],
        settled: &mut usize,
        marked: &mut Vec<(usize, String)>,
        progress: &mut impl FnMut(usize),
    ) -> Vec<(usize, JobRequest)> {
        let max = self.settings.max_in_flight.max(1);
        let mut in_flight = FuturesOrdered::new();
        let mut lost = Vec::new();
        let mut broken = false;
        let mut record = |(message, r): (Message, Result<(), PublishError>), lost: &mut Vec<(usize, JobRequest)>, broken: &mut bool| {
            if let Err(PublishError::Broker(_)) = &r {
                // The channel is gone: publish nothing more into it; retry on the next connection.
                *broken = true;
            }
            for (i, job) in message.jobs {
                match &r {
                    Ok(()) => out[i] = Some(Ok(job.id.clone().unwrap_or_default())),
                    Err(e @ PublishError::Broker(_)) => {
                        out[i] = Some(Err(e.clone()));
                        lost.push((i, job));
                        continue;
                    }
                    Err(e) => out[i] = Some(Err(e.clone())),
                }
                *settled += 1;
            }
            progress(*settled);
        };
        let mut chunks: Vec<Vec<(usize, JobRequest)>> = Vec::new();
        let mut todo = todo.into_iter().peekable();
        while todo.peek().is_some() {
            chunks.push(todo.by_ref().take(MARK_CHUNK).collect());
        }
        let to_mark = |chunk: &Vec<(usize, JobRequest)>| -> Vec<(usize, String, String)> {
            chunk.iter().map(|(i, job)| (*i, job.id.clone().unwrap_or_default(), job.model_name().to_string())).collect()
        };
        let mut next_marks = chunks.first().and_then(|c| self.spawn_mark_queued(to_mark(c)));
        let mut rest = chunks.into_iter().peekable();
        while let Some(chunk) = rest.next() {
            if let Some(marks) = next_marks.take() {
                marked.extend(marks.await.unwrap_or_default());
            }
            next_marks = rest.peek().and_then(|c| self.spawn_mark_queued(to_mark(c)));
            let (messages, unencodable) = pack::pack(chunk, self.bulk_limits());
            for (i, job, e) in unencodable {
                record((Message { jobs: vec![(i, job)], body: Vec::new() }, Err(PublishError::Encode(e))), &mut lost, &mut broken);
            }
            for message in messages {
                if broken {
                    record((message, Err(PublishError::Broker(BrokerError::Closed))), &mut lost, &mut broken);
                    continue;
                }
                in_flight.push_back(self.publish_confirmed(message));
                while in_flight.len() >= max {
                    if let Some(done) = in_flight.next().await {
                        record(done, &mut lost, &mut broken);
                    }
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            record(done, &mut lost, &mut broken);
        }
        lost
    }

    /// Closes the channel and connection.
    pub async fn close(self) {
        if let Ok(link) = self.link.into_inner() {
            let _ = link.channel.close(200, "bye".into()).await;
            let _ = link.connection.close(200, "bye".into()).await;
        }
    }
}
