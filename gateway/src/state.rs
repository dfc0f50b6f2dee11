//! What every handler shares: the settings, a publisher, a result client and a Redis client
//! for stream reads, each (re)connected on demand, so the gateway starts while RabbitMQ or Redis
//! is down, answers 503 meanwhile, and recovers by itself when they are back.

use std::sync::Arc;
use std::time::Duration;

use genq_protocol::redis_conn::RedisConn;
use tokio::sync::Mutex;

use genq_shared::keys::KeySchema;
use genq_shared::settings::Settings;
use genq_shared::JobRequest;

use super::auth::BearerTokens;
use super::error::ApiError;
use super::metrics::GatewayMetrics;
use super::models::ModelProbe;
use genq_producer::{Producer, ResultClient, ResultError};

/// The gateway's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    /// A Tokio mutex: it is held across the connect `.await`, so concurrent requests after a
    /// loss wait for one reconnect instead of each opening a connection.
    producer: Mutex<Option<Arc<Producer>>>,
    results: Mutex<Option<ResultClient>>,
    /// The connection for the gateway's own records (files, batches).
    records: Mutex<Option<RedisConn>>,
    keys: KeySchema,
    metrics: GatewayMetrics,
    models: ModelProbe,
    tokens: BearerTokens,
}

impl Gateway {
    /// State for `settings`; connects to RabbitMQ and Redis now if it can, later if not.
    pub async fn new(settings: Settings) -> Result<Self, prometheus::Error> {
        let gateway = Self {
            inner: Arc::new(Inner {
                keys: KeySchema::new(settings.redis.key_prefix.clone()),
                metrics: GatewayMetrics::new()?,
                models: ModelProbe::new(settings.amqp.url.clone()),
                tokens: BearerTokens::new(settings.gateway.api_key_list()),
                producer: Mutex::new(None),
                results: Mutex::new(None),
                records: Mutex::new(None),
                settings,
            }),
        };
        if let Err(e) = gateway.producer().await {
            tracing::warn!(error = %e.message, "RabbitMQ is not reachable yet; publishing answers 503 until it is");
        }
        Ok(gateway)
    }

    /// Every setting.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The Redis key schema.
    pub fn keys(&self) -> &KeySchema {
        &self.inner.keys
    }

    /// The metrics.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.inner.metrics
    }

    /// Live-model lookups.
    pub fn models(&self) -> &ModelProbe {
        &self.inner.models
    }

    /// The bearer tokens.
    pub fn tokens(&self) -> &BearerTokens {
        &self.inner.tokens
    }

    /// How long a synchronous request waits for its job.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.inner.settings.gateway.request_timeout_secs.max(1))
    }

    /// The model of a request that names none.
    pub fn default_model(&self) -> &str {
        &self.inner.settings.producer.default_model
    }

    /// The publisher, connecting first if there is none.
    pub async fn producer(&self) -> Result<Arc<Producer>, ApiError> {
        let mut slot = self.inner.producer.lock().await;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let s = &self.inner.settings;
        let results = self.results().await?;
        let producer = Producer::connect(&s.amqp.url, &s.producer, &s.queue)
            .await
            .map_err(|e| ApiError::unavailable("rabbitmq", e))?
            .with_results(results)
            .with_metrics(self.inner.metrics.producer.clone());
        let producer = Arc::new(producer);
        *slot = Some(producer.clone());
        Ok(producer)
    }

    /// The result client, connecting first if there is none.
    pub async fn results(&self) -> Result<ResultClient, ApiError> {
        let mut slot = self.inner.results.lock().await;
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let s = &self.inner.settings;
        let client = ResultClient::connect(&s.redis.url, &s.redis.key_prefix)
            .await
            .map_err(|e| ApiError::from_result(&e))?
            .with_ttl(s.redis.result_ttl_secs);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Forgets the result client after a Redis failure, so the next request reconnects (its
    /// connection does not reconnect by itself). The publisher goes too, since it records jobs
    /// `queued` through a result client; it reconnects to RabbitMQ by itself, so a failed
    /// publish never drops it.
    pub async fn redis_failed(&self, e: &ResultError) {
        if !matches!(e, ResultError::Redis(_)) {
            return;
        }
        *self.inner.results.lock().await = None;
        if let Some(old) = self.inner.producer.lock().await.take() {
            // Close its connection once no request is using it any more.
            if let Ok(p) = Arc::try_unwrap(old) {
                tokio::spawn(p.close());
            }
        }
    }

    /// Publishes `job` (its id and model filled in when absent); the producer counts the
    /// outcome. `rename` maps wire field names to the route's own in validation errors.
    pub async fn submit(&self, job: JobRequest, rename: impl Fn(&'static str) -> &'static str) -> Result<String, ApiError> {
        let producer = self.producer().await?;
        producer.submit(job).await.map_err(|e| ApiError::from_publish(&e, rename))
    }

    /// The connection for files and batch records, connecting first if there is none. Its
    /// connection manager reconnects by itself after a failure.
    pub async fn records(&self) -> Result<RedisConn, ApiError> {
        let mut slot = self.inner.records.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let conn = RedisConn::connect(&self.inner.settings.redis.url, Some(Duration::from_secs(30)))
            .await
            .map_err(|e| ApiError::unavailable("redis", e))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// A connection of its own for blocking reads (`XREAD BLOCK`), which would stall every
    /// other command on a shared one.
    pub async fn blocking_redis(&self) -> Result<RedisConn, ApiError> {
        RedisConn::connect(&self.inner.settings.redis.url, None).await.map_err(|e| ApiError::unavailable("redis", e))
    }
}
