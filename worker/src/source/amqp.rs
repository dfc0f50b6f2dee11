//! RabbitMQ job source: consumes a model's normal and `.high` queues on one channel with manual
//! acks and a prefetch bound, and settles deliveries with ack / reject / nack-requeue.

use futures::stream::{self, BoxStream, StreamExt};
use lapin::Acker;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

use genq_shared::job::Priority;
use genq_shared::topology::{self, QueueLimits, CREATED_MS_HEADER};

use super::{Delivery, JobSource, Settle, SettleFuture, Settlement, SourceError};
use crate::broker::{self, BrokerError};

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

/// Consumer of one model's job queues.
pub struct AmqpSource {
    connection: Connection,
    channel: Channel,
    tags: Vec<String>,
    deliveries: BoxStream<'static, Result<lapin::message::Delivery, lapin::Error>>,
}

impl AmqpSource {
    /// Connects, declares the topology for the model and starts consuming.
    pub async fn connect(settings: &AmqpSourceSettings) -> Result<Self, BrokerError> {
        let connection = broker::connect(&settings.url, &settings.name).await?;
        let channel = connection.create_channel().await.map_err(|e| BrokerError::protocol("open channel", e))?;
        broker::declare_topology(&channel, &settings.model, settings.limits).await?;
        channel
            .basic_qos(settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| BrokerError::protocol("basic.qos", e))?;
        let mut streams = Vec::new();
        let mut tags = Vec::new();
        for priority in [Priority::High, Priority::Normal] {
            let queue = topology::queue_name(&settings.model, priority);
            let tag = format!("{}-{}", settings.name, priority_name(priority));
            let consumer = channel
                .basic_consume(queue.as_str().into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
                .await
                .map_err(|e| BrokerError::protocol(format!("consume {queue}"), e))?;
            streams.push(consumer.boxed());
            tags.push(tag);
        }
        let deliveries = stream::select_all(streams).boxed();
        Ok(Self { connection, channel, tags, deliveries })
    }

}

fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::High => "high",
        Priority::Normal => "normal",
    }
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

struct AmqpSettler(Acker);

impl Settle for AmqpSettler {
    fn settle(self: Box<Self>, how: Settlement) -> SettleFuture {
        Box::pin(async move {
            let acker = self.0;
            let result = match how {
                Settlement::Ack => acker.ack(Default::default()).await,
                Settlement::DeadLetter => acker.reject(BasicRejectOptions { requeue: false }).await,
                Settlement::Requeue => acker.nack(BasicNackOptions { requeue: true, multiple: false }).await,
            };
            result.map(|_| ()).map_err(|e| SourceError(format!("settle ({how:?}): {e}")))
        })
    }
}

impl JobSource for AmqpSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        let Some(item) = self.deliveries.next().await else { return Ok(None) };
        let d = item.map_err(|e| SourceError(format!("consume: {e}")))?;
        let headers = d.properties.headers().as_ref();
        Ok(Some(Delivery {
            message_id: d.properties.message_id().as_ref().map(|s| s.to_string()),
            created_ms: header_u64(headers, CREATED_MS_HEADER),
            attempt: 1 + header_u64(headers, "x-delivery-count").unwrap_or(0),
            body: d.data,
            settler: Box::new(AmqpSettler(d.acker)),
        }))
    }

    async fn stop(&mut self) {
        for tag in &self.tags {
            if let Err(e) = self.channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await {
                tracing::warn!(error = %e, tag, "cancel consumer");
            }
        }
    }

    async fn close(self) {
        let _ = self.channel.close(200, "bye".into()).await;
        let _ = self.connection.close(200, "bye".into()).await;
    }
}
