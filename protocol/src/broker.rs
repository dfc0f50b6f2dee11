//! RabbitMQ as both sides use it: connecting (with credentials redacted in every message),
//! declaring the topology of `docs/protocol.md` idempotently, and probing a queue's counts.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use genq_shared::job::Priority;
use genq_shared::topology::{self, QueueLimits, DEAD_LETTER_EXCHANGE, DEAD_QUEUE, JOBS_EXCHANGE};

use crate::url::{redact_url, url_list};

/// A broker operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// Could not connect; the URL is shown without its password.
    #[error("cannot connect to RabbitMQ at {url}: {source}")]
    Connect {
        /// Redacted URL.
        url: String,
        /// Cause.
        source: lapin::Error,
    },
    /// `amqp.url` names no URL.
    #[error("no RabbitMQ URL given (setting amqp.url)")]
    NoUrl,
    /// The connection was lost before the operation could be tried.
    #[error("RabbitMQ connection lost")]
    Closed,
    /// A protocol operation failed.
    #[error("RabbitMQ {what}: {source}")]
    Protocol {
        /// What was being done.
        what: String,
        /// Cause.
        source: lapin::Error,
    },
}

impl BrokerError {
    /// Wraps a lapin error with what was being done.
    pub fn protocol(what: impl Into<String>, source: lapin::Error) -> Self {
        BrokerError::Protocol { what: what.into(), source }
    }

    /// Whether trying again later may succeed: the broker answered, but failed the operation
    /// on its side (RabbitMQ closes the connection with INTERNAL_ERROR when a quorum queue's
    /// replica is not running yet or times out under load, CONNECTION_FORCED when it restarts,
    /// RESOURCE_ERROR under a memory or disk alarm) or the connection dropped half-way. A
    /// failure to connect at all (a wrong URL, refused credentials) and a refusal that names
    /// the request (PRECONDITION_FAILED for mismatched queue arguments, ACCESS_REFUSED,
    /// NOT_FOUND) are not: retrying would only hide the mistake.
    pub fn is_transient(&self) -> bool {
        match self {
            BrokerError::Connect { .. } | BrokerError::NoUrl => false,
            BrokerError::Closed => true,
            BrokerError::Protocol { source, .. } => transient_lapin_error(source),
        }
    }
}

fn transient_lapin_error(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError};
    use lapin::ErrorKind;
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR | AMQPHardError::CONNECTIONFORCED | AMQPHardError::RESOURCEERROR)
        ),
        ErrorKind::IOError(_)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::MissingHeartbeatError => true,
        _ => false,
    }
}

/// Opens a connection named `name` (shown in the RabbitMQ management UI) to the first node of
/// `urls` (see [`url_list`]) that accepts it; the error is the last node's.
pub async fn connect(urls: &str, name: &str) -> Result<Connection, BrokerError> {
    let mut last = None;
    for url in url_list(urls) {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        match Connection::connect(url, props).await {
            Ok(c) => return Ok(c),
            Err(source) => {
                tracing::warn!(url = %redact_url(url), error = %source, "RabbitMQ node unreachable; trying the next one");
                last = Some(BrokerError::Connect { url: redact_url(url), source });
            }
        }
    }
    Err(last.unwrap_or(BrokerError::NoUrl))
}

fn short(s: &str) -> ShortString {
    s.into()
}

/// Declares the exchanges, the dead-letter queue and `model`'s three job queues (normal, `.high`
/// and `.low`), all durable; quorum queues with the delivery limit, dead-lettering and
/// reject-publish overflow. Safe to call any number of times with the same limits.
pub async fn declare_topology(channel: &Channel, model: &str, limits: QueueLimits) -> Result<(), BrokerError> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(short(JOBS_EXCHANGE), ExchangeKind::Direct, durable, FieldTable::default())
        .await
        .map_err(|e| BrokerError::protocol(format!("declare exchange {JOBS_EXCHANGE}"), e))?;
    channel
        .exchange_declare(short(DEAD_LETTER_EXCHANGE), ExchangeKind::Fanout, durable, FieldTable::default())
        .await
        .map_err(|e| BrokerError::protocol(format!("declare exchange {DEAD_LETTER_EXCHANGE}"), e))?;
    let qopts = QueueDeclareOptions { durable: true, ..Default::default() };
    let mut dead_args = FieldTable::default();
    dead_args.insert(short("x-queue-type"), AMQPValue::LongString(LongString::from("quorum")));
    channel
        .queue_declare(short(DEAD_QUEUE), qopts, dead_args)
        .await
        .map_err(|e| BrokerError::protocol(format!("declare queue {DEAD_QUEUE}"), e))?;
    channel
        .queue_bind(short(DEAD_QUEUE), short(DEAD_LETTER_EXCHANGE), short(""), QueueBindOptions::default(), FieldTable::default())
        .await
        .map_err(|e| BrokerError::protocol(format!("bind {DEAD_QUEUE}"), e))?;
    for priority in Priority::ALL {
        let queue = topology::queue_name(model, priority);
        channel
            .queue_declare(short(&queue), qopts, job_queue_args(limits))
            .await
            .map_err(|e| BrokerError::protocol(format!("declare queue {queue}"), e))?;
        let key = topology::routing_key(model, priority);
        channel
            .queue_bind(short(&queue), short(JOBS_EXCHANGE), short(&key), QueueBindOptions::default(), FieldTable::default())
            .await
            .map_err(|e| BrokerError::protocol(format!("bind {queue}"), e))?;
    }
    Ok(())
}

/// A queue's counts as a passive `queue.declare` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages ready for delivery (not counting those delivered and unacknowledged).
    pub ready: u32,
    /// Consumers attached.
    pub consumers: u32,
}

/// The counts of `queue`, or `None` when it does not exist. A passive declare of a missing queue
/// closes its channel, so each probe opens and closes its own; `Err` only when no channel opens
/// (the connection is gone).
pub async fn probe_queue(connection: &Connection, queue: &str) -> Result<Option<QueueCounts>, BrokerError> {
    let channel = connection.create_channel().await.map_err(|e| BrokerError::protocol("open channel", e))?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    match channel.queue_declare(short(queue), passive, FieldTable::default()).await {
        Ok(q) => {
            let _ = channel.close(200, "bye".into()).await;
            Ok(Some(QueueCounts { ready: q.message_count(), consumers: q.consumer_count() }))
        }
        Err(_) => Ok(None),
    }
}

fn job_queue_args(limits: QueueLimits) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(short("x-queue-type"), AMQPValue::LongString(LongString::from("quorum")));
    args.insert(short("x-delivery-limit"), AMQPValue::LongLongInt(i64::from(limits.delivery_limit)));
    args.insert(short("x-dead-letter-exchange"), AMQPValue::LongString(LongString::from(DEAD_LETTER_EXCHANGE)));
    args.insert(short("x-dead-letter-strategy"), AMQPValue::LongString(LongString::from("at-least-once")));
    args.insert(short("x-overflow"), AMQPValue::LongString(LongString::from("reject-publish")));
    args.insert(short("x-max-length"), AMQPValue::LongLongInt(i64::from(limits.max_length)));
    args
}

#[cfg(test)]
mod tests {
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError, AMQPSoftError};

    use super::BrokerError;

    fn amqp(kind: AMQPErrorKind) -> BrokerError {
        BrokerError::protocol("basic.consume", lapin::Error::from(lapin::ErrorKind::ProtocolError(AMQPError::new(kind, "x".into()))))
    }

    #[test]
    fn broker_side_failures_are_retried_and_mistakes_are_not() {
        assert!(amqp(AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR)).is_transient());
        assert!(amqp(AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED)).is_transient());
        assert!(amqp(AMQPErrorKind::Hard(AMQPHardError::RESOURCEERROR)).is_transient());
        assert!(BrokerError::Closed.is_transient());
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(BrokerError::protocol("queue.declare", lapin::Error::from(reset)).is_transient());

        assert!(!amqp(AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)).is_transient());
        assert!(!amqp(AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)).is_transient());
        assert!(!amqp(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)).is_transient());
        assert!(!amqp(AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)).is_transient());
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!BrokerError::Connect { url: "amqp://h".into(), source: lapin::Error::from(refused) }.is_transient());
        assert!(!BrokerError::NoUrl.is_transient());
    }
}
