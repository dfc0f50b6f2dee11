//! RabbitMQ job source: consumes a model's normal, `.high` and `.low` queues on one channel with manual
//! acks and a prefetch bound, hands out every delivery already arrived in one batch, settles
//! deliveries through the channel's settling task ([`super::acks`]: acks combined with
//! `multiple=true` where safe, reject / nack-requeue one by one), dead-letters single jobs of
//! bulk messages through a second, confirm-mode channel, and reconnects with backoff when the
//! connection is lost.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use futures::FutureExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use genq_shared::job::Priority;
use genq_shared::bulk::JOB_CONTENT_TYPE;
use genq_shared::topology::{self, QueueLimits, CREATED_MS_HEADER, DEAD_LETTER_EXCHANGE, DEAD_REASON_HEADER};

use super::acks::{spawn_settler, SettlerHandle};
use super::{DeadLetterJob, Delivery, JobSource, SettleFuture, SourceError};
use genq_protocol::backoff::Backoff;
use genq_protocol::broker::{self, BrokerError};
use crate::metrics::WorkerMetrics;

/// Where and how to consume.
#[derive(Debug, Clone)]
pub struct AmqpSourceSettings {
    /// AMQP URL.
    pub url: String,
    /// Model whose queues are consumed.
    pub model: String,
    /// Unacked deliveries per queue consumer.
    pub prefetch: u16,
    /// Arguments for declaring the queues.
    pub limits: QueueLimits,
    /// Connection and consumer-tag name.
    pub name: String,
}

/// One live connection: its channel, consumer tags, merged delivery stream and settling task.
struct Link {
    connection: Connection,
    channel: Channel,
    tags: Vec<String>,
    deliveries: BoxStream<'static, Result<lapin::message::Delivery, lapin::Error>>,
    settler: SettlerHandle,
    dead_letters: Arc<dyn DeadLetterJob>,
}

/// Publishes single jobs of bulk messages into `genq.dlx`, with confirms, on a channel of its own.
struct DeadLetterChannel(Channel);

impl DeadLetterJob for DeadLetterChannel {
    fn dead_letter(&self, id: String, body: Vec<u8>) -> SettleFuture {
        let channel = self.0.clone();
        Box::pin(async move {
            let mut headers = FieldTable::default();
            headers.insert(DEAD_REASON_HEADER.into(), AMQPValue::LongString("poison".into()));
            let props = BasicProperties::default()
                .with_content_type(JOB_CONTENT_TYPE.into())
                .with_delivery_mode(2)
                .with_message_id(id.as_str().into())
                .with_headers(headers);
            let confirm = channel
                .basic_publish(DEAD_LETTER_EXCHANGE.into(), "".into(), BasicPublishOptions::default(), &body, props)
                .await
                .map_err(|e| SourceError(format!("publish to {DEAD_LETTER_EXCHANGE}: {e}")))?;
            match confirm.await {
                Ok(Confirmation::Ack(_)) => Ok(()),
                Ok(other) => Err(SourceError(format!("{DEAD_LETTER_EXCHANGE} refused the job: {other:?}"))),
                Err(e) => Err(SourceError(format!("confirm from {DEAD_LETTER_EXCHANGE}: {e}"))),
            }
        })
    }
}

/// Consumer of one model's job queues. When the connection is lost it reconnects with backoff
/// and consumes again; deliveries taken on the old connection can no longer be settled, so the
/// broker redelivers them (their results, if already stored, make the redelivery a duplicate).
pub struct AmqpSource {
    settings: AmqpSourceSettings,
    link: Option<Link>,
    stopped: bool,
    metrics: Option<WorkerMetrics>,
}

/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a worker starting up retries a setup the broker failed on its side before it
/// gives up (and its supervisor restarts it).
const STARTUP_RETRY: Duration = Duration::from_secs(60);

impl AmqpSource {
    /// Connects, declares the topology for the model and starts consuming. Fails fast when the
    /// broker cannot be reached at start or refuses the request (a wrong URL or mismatched
    /// queue arguments should be seen at once); a failure on the broker's side
    /// ([`BrokerError::is_transient`], e.g. a just-declared quorum queue not running yet) is
    /// retried with backoff for up to [`STARTUP_RETRY`]. Later losses are retried for as long as
    /// it takes.
    pub async fn connect(settings: &AmqpSourceSettings) -> Result<Self, BrokerError> {
        let started = std::time::Instant::now();
        let retry = |e: &BrokerError| e.is_transient() && started.elapsed() < STARTUP_RETRY;
        let link = Self::open_with_backoff(settings, false, retry, "RabbitMQ failed the worker's setup on its side; retrying").await?;
        Ok(Self { settings: settings.clone(), link: Some(link), stopped: false, metrics: None })
    }

    /// Counts reconnects in `metrics` (`genq_reconnects_total{target="amqp"}`) and reports
    /// whether it consumes in `metrics.health`.
    pub fn with_metrics(mut self, metrics: WorkerMetrics) -> Self {
        if let Some(link) = &self.link {
            watch_link(link, &metrics);
        }
        self.metrics = Some(metrics);
        self
    }

    async fn open(settings: &AmqpSourceSettings) -> Result<Link, BrokerError> {
        let connection = broker::connect(&settings.url, &settings.name).await?;
        let channel = connection.create_channel().await.map_err(|e| BrokerError::protocol("open channel", e))?;
        broker::declare_topology(&channel, &settings.model, settings.limits).await?;
        channel
            .basic_qos(settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| BrokerError::protocol("basic.qos", e))?;
        let mut streams = Vec::new();
        let mut tags = Vec::new();
        for priority in Priority::ALL {
            let queue = topology::queue_name(&settings.model, priority);
            let tag = format!("{}-{}", settings.name, priority.as_str());
            let consumer = channel
                .basic_consume(queue.as_str().into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
                .await
                .map_err(|e| BrokerError::protocol(format!("consume {queue}"), e))?;
            streams.push(consumer.boxed());
            tags.push(tag);
        }
        let deliveries = stream::select_all(streams).boxed();
        let settler = spawn_settler(channel.clone());
        let dead = connection.create_channel().await.map_err(|e| BrokerError::protocol("open dead-letter channel", e))?;
        dead.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| BrokerError::protocol("confirm.select", e))?;
        Ok(Link { connection, channel, tags, deliveries, settler, dead_letters: Arc::new(DeadLetterChannel(dead)) })
    }

    /// Opens a link, trying again after a failure for which `keep_trying` says so, with waits
    /// from [`FIRST_BACKOFF`] doubling up to [`MAX_BACKOFF`] (the first one before the first
    /// try when `wait_first`); each failure retried is logged as `retrying`.
    async fn open_with_backoff(
        settings: &AmqpSourceSettings,
        wait_first: bool,
        keep_trying: impl Fn(&BrokerError) -> bool,
        retrying: &str,
    ) -> Result<Link, BrokerError> {
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        if wait_first {
            backoff.sleep().await;
        }
        loop {
            match Self::open(settings).await {
                Ok(link) => return Ok(link),
                Err(e) if keep_trying(&e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "{retrying}");
                    backoff.sleep().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reconnects with exponential backoff until it succeeds.
    async fn reconnect(&mut self) {
        let lost_at = std::time::Instant::now();
        let Ok(link) = Self::open_with_backoff(&self.settings, true, |_| true, "RabbitMQ still unreachable").await else {
            unreachable!("every failure is retried")
        };
        tracing::warn!(outage_ms = lost_at.elapsed().as_millis() as u64, "reconnected to RabbitMQ; consuming again");
        if let Some(m) = &self.metrics {
            m.reconnected("amqp");
            watch_link(&link, m);
        }
        self.link = Some(link);
    }

    /// Notes that the consumers are gone (readiness turns false until the reconnect).
    fn lost(&self) {
        if let Some(m) = &self.metrics {
            m.health.set_consuming(false);
        }
    }
}

/// Marks the worker as consuming on `link`, as long as its connection is up: lapin tracks that
/// state even while no delivery is awaited.
fn watch_link(link: &Link, metrics: &WorkerMetrics) {
    let status = link.connection.status().clone();
    metrics.health.consuming_on(move || status.connected());
}

fn header_u64(headers: Option<&FieldTable>, name: &str) -> Option<u64> {
    let value = headers?.inner().get(name)?;
    match value {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

impl JobSource for AmqpSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        loop {
            if self.stopped {
                return Ok(None);
            }
            let Some(link) = self.link.as_mut() else {
                self.reconnect().await;
                continue;
            };
            match link.deliveries.next().await {
                Some(Ok(d)) => return Ok(Some(to_delivery(link, d))),
                Some(Err(e)) => tracing::warn!(error = %e, "lost the RabbitMQ connection; reconnecting"),
                None => tracing::warn!("RabbitMQ ended the consumers; reconnecting"),
            }
            self.lost();
            if let Some(old) = self.link.take() {
                let _ = old.connection.close(200, "reconnecting".into()).await;
            }
        }
    }

    async fn next_batch(&mut self, max: usize, out: &mut Vec<Delivery>) -> Result<bool, SourceError> {
        let Some(first) = self.next().await? else { return Ok(false) };
        out.push(first);
        let Some(link) = self.link.as_mut() else { return Ok(true) };
        while out.len() < max {
            match link.deliveries.next().now_or_never() {
                Some(Some(Ok(d))) => out.push(to_delivery(link, d)),
                // An error or the end shows again on the next `next`, which reconnects.
                _ => break,
            }
        }
        Ok(true)
    }

    async fn stop(&mut self) {
        self.stopped = true;
        self.lost();
        let Some((channel, tags)) = self.link.as_ref().map(|l| (l.channel.clone(), l.tags.clone())) else { return };
        for tag in &tags {
            if let Err(e) = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await {
                tracing::warn!(error = %e, tag, "cancel consumer");
            }
        }
    }

    async fn close(self) {
        if let Some(link) = self.link {
            link.settler.flush().await;
            let _ = link.channel.close(200, "bye".into()).await;
            let _ = link.connection.close(200, "bye".into()).await;
        }
    }
}

fn to_delivery(link: &Link, d: lapin::message::Delivery) -> Delivery {
    let headers = d.properties.headers().as_ref();
    Delivery {
        content_type: d.properties.content_type().as_ref().map(|s| s.to_string()),
        dead_letters: Some(link.dead_letters.clone()),
        message_id: d.properties.message_id().as_ref().map(|s| s.to_string()),
        created_ms: header_u64(headers, CREATED_MS_HEADER),
        attempt: 1 + header_u64(headers, "x-delivery-count").unwrap_or(0),
        body: d.data,
        settler: link.settler.track(d.delivery_tag),
    }
}
