//! Publishing jobs: persistent JSON messages to `genq.jobs` with `mandatory=true` and publisher
//! confirms. A nack (queue full) or a return (no queue for the model) is an error to the caller.

use futures::stream::{FuturesOrdered, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use genq_shared::settings::{ProducerSettings, QueueSettings};
use genq_shared::topology::{self, CREATED_MS_HEADER, JOBS_EXCHANGE};
use genq_shared::valid::{self, Limits};
use genq_shared::{now_ms, JobRequest};
use genq_worker::broker::{self, BrokerError};

/// A job was not accepted by the broker.
#[derive(Debug, thiserror::Error)]
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
    /// The broker refused the message (the queue is at its max length: backpressure).
    #[error("rejected by RabbitMQ (queue full: backpressure); retry later")]
    Nacked,
    /// The connection or channel failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Publishes jobs with confirms.
pub struct Producer {
    connection: Connection,
    channel: Channel,
    settings: ProducerSettings,
    metrics: Option<crate::metrics::ProducerMetrics>,
}

impl Producer {
    /// Connects, enables publisher confirms and (by default) declares the default model's queues
    /// so jobs published before any worker starts are kept.
    pub async fn connect(url: &str, settings: &ProducerSettings, queue: &QueueSettings) -> Result<Self, BrokerError> {
        let connection = broker::connect(url, "genq-producer").await?;
        let channel = connection.create_channel().await.map_err(|e| BrokerError::protocol("open channel", e))?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| BrokerError::protocol("confirm.select", e))?;
        if settings.declare_default_model {
            broker::declare_topology(&channel, &settings.default_model, queue.limits()).await?;
        }
        Ok(Self { connection, channel, settings: settings.clone(), metrics: None })
    }

    /// Counts every publish in `metrics` (`genq_published_total{outcome}`, publish latency).
    pub fn with_metrics(mut self, metrics: crate::metrics::ProducerMetrics) -> Self {
        self.metrics = Some(metrics);
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

    async fn publish(&self, job: &JobRequest) -> Result<lapin::PublisherConfirm, PublishError> {
        let body = serde_json::to_vec(job).map_err(|e| PublishError::Encode(e.to_string()))?;
        let id = job.id.clone().unwrap_or_default();
        let mut headers = FieldTable::default();
        headers.insert(CREATED_MS_HEADER.into(), AMQPValue::LongLongInt(now_ms() as i64));
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(id.as_str().into())
            .with_headers(headers);
        let key = topology::routing_key(job.model_name(), job.priority());
        self.channel
            .basic_publish(JOBS_EXCHANGE.into(), key.as_str().into(), BasicPublishOptions { mandatory: true, ..Default::default() }, &body, props)
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

    /// Publishes one job and waits for the broker's confirm. Returns the job id.
    pub async fn submit(&self, job: JobRequest) -> Result<String, PublishError> {
        let job = self.prepare(job)?;
        let started = std::time::Instant::now();
        let confirm = self.publish(&job).await?;
        let r = Self::confirmed(job.model_name(), confirm.await);
        if let Some(m) = &self.metrics {
            m.record(r.as_ref().map(|_| ()), started.elapsed());
        }
        r?;
        Ok(job.id.unwrap_or_default())
    }

    /// Publishes many jobs with up to `max_in_flight` confirms outstanding, calling `progress`
    /// after each confirm. Results are in input order: the id, or why that job was not accepted.
    pub async fn submit_many(
        &self,
        jobs: Vec<JobRequest>,
        mut progress: impl FnMut(usize),
    ) -> Vec<Result<String, PublishError>> {
        let mut out: Vec<Option<Result<String, PublishError>>> = (0..jobs.len()).map(|_| None).collect();
        let mut in_flight = FuturesOrdered::new();
        let max = self.settings.max_in_flight.max(1);
        let mut done = 0usize;
        for (i, job) in jobs.into_iter().enumerate() {
            let prepared = match self.prepare(job) {
                Ok(j) => j,
                Err(e) => {
                    out[i] = Some(Err(e));
                    continue;
                }
            };
            let started = std::time::Instant::now();
            let metrics = self.metrics.clone();
            match self.publish(&prepared).await {
                Ok(confirm) => {
                    let model = prepared.model_name().to_string();
                    let id = prepared.id.clone().unwrap_or_default();
                    in_flight.push_back(async move {
                        let r = Self::confirmed(&model, confirm.await);
                        if let Some(m) = &metrics {
                            m.record(r.as_ref().map(|_| ()), started.elapsed());
                        }
                        (i, r.map(|_| id))
                    });
                }
                Err(e) => out[i] = Some(Err(e)),
            }
            while in_flight.len() >= max {
                if let Some((idx, r)) = in_flight.next().await {
                    out[idx] = Some(r);
                    done += 1;
                    progress(done);
                }
            }
        }
        while let Some((idx, r)) = in_flight.next().await {
            out[idx] = Some(r);
            done += 1;
            progress(done);
        }
        out.into_iter().map(|r| r.unwrap_or_else(|| Err(PublishError::Encode("not published".into())))).collect()
    }

    /// Closes the channel and connection.
    pub async fn close(self) {
        let _ = self.channel.close(200, "bye".into()).await;
        let _ = self.connection.close(200, "bye".into()).await;
    }
}
