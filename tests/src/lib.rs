//! Helpers for genq's integration tests: unique names so tests never collide on the shared
//! RabbitMQ and Redis, the built `genq` / `genq-worker` binaries, and worker processes that are
//! stopped (SIGTERM, then SIGKILL) when dropped. [`prometheus`] runs a real Prometheus;
//! [`redis_server`] a private Redis a test may restart or configure (AUTH, TLS); [`rabbit_cluster`]
//! a three-node RabbitMQ cluster; [`tally`] counts what came back after faults.

pub mod gateway;
pub mod prometheus;
pub mod rabbit_cluster;
pub mod redis_server;
pub mod tally;

use std::path::PathBuf;
use std::process::Command;

use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
use lapin::BasicProperties;

pub use genq_worker::process::WorkerProcess;

/// RabbitMQ URL used by tests (`GENQ_TEST_AMQP_URL`, else the local default).
pub fn amqp_url() -> String {
    std::env::var("GENQ_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Redis URL used by tests (`GENQ_TEST_REDIS_URL`, else the local default).
pub fn redis_url() -> String {
    std::env::var("GENQ_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path of a binary built by `cargo build --bins` (the test script builds them first).
pub fn bin(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --bins` first (scripts/test.sh does)", path.display());
    path
}

/// A folder for test logs and job files (the system temp dir: a fresh clone may have no `target/`).
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("genq-tests");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// The default model file; its tests are ignored without `cfg(genq_model)`, and fail here
/// when the test command requires the model (`GENQ_REQUIRE_MODEL=1`) and it is missing.
pub fn default_model() -> PathBuf {
    let p = workspace_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "the default model is missing at {}: run scripts/fetch-model.sh", p.display());
    p
}

/// A name unique to this test run: used as model name (so queues are private to the test)
/// and as Redis key prefix.
pub fn unique(tag: &str) -> String {
    format!("t-{tag}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// A test's private corner of the shared services.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Model name, hence queue names `genq.jobs.<model>`.
    pub model: String,
    /// Redis key prefix.
    pub prefix: String,
    /// Redis URL (the shared one unless [`Sandbox::with_redis`] says otherwise).
    pub redis: String,
    /// AMQP URL or comma-separated list (the shared one unless [`Sandbox::with_amqp`] says otherwise).
    pub amqp: String,
}

impl Sandbox {
    /// A new sandbox named after `tag`.
    pub fn new(tag: &str) -> Self {
        let model = unique(tag);
        Self { prefix: model.clone(), model, redis: redis_url(), amqp: amqp_url() }
    }

    /// This sandbox, with RabbitMQ at `urls` (e.g. a node list whose first entry is dead).
    pub fn with_amqp(mut self, urls: &str) -> Self {
        self.amqp = urls.to_string();
        self
    }

    /// This sandbox, with its results in the Redis at `url` (e.g. a private one a test restarts).
    pub fn with_redis(mut self, url: &str) -> Self {
        self.redis = url.to_string();
        self
    }

    /// Flags that point a `genq` or `genq-worker` command at this sandbox.
    pub fn flags(&self) -> Vec<String> {
        vec!["--amqp-url".into(), self.amqp.clone(), "--redis-url".into(), self.redis.clone(), "--key-prefix".into(), self.prefix.clone()]
    }

    /// Starts `genq-worker` for this sandbox with extra flags; logs go to a file in [`scratch_dir`].
    pub fn worker(&self, extra: &[&str]) -> Worker {
        self.worker_with_env(extra, &[])
    }

    /// As [`Sandbox::worker`], with extra environment variables (thread counts, settings).
    pub fn worker_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Worker {
        let log = scratch_dir().join(format!("{}-{}.log", self.model, uuid::Uuid::new_v4().simple()));
        let mut cmd = Command::new(bin("genq-worker"));
        cmd.args(self.flags()).args(["--model-name", &self.model, "--metrics-addr", "127.0.0.1:0"]).args(extra).envs(env.iter().copied());
        Worker(WorkerProcess::spawn(cmd, log).expect("spawn genq-worker"))
    }

    /// A `genq` command for this sandbox (model name set as the default model).
    pub fn genq(&self) -> Command {
        let mut cmd = Command::new(bin("genq"));
        cmd.args(self.flags()).args(["--model", &self.model]);
        cmd
    }

    /// A result client for this sandbox.
    pub async fn results(&self) -> genq_producer::ResultClient {
        genq_producer::ResultClient::connect(&self.redis, &self.prefix).await.expect("redis")
    }

    /// A producer for this sandbox with the default settings (declares this sandbox's queues):
    /// jobs published together share bulk messages.
    pub async fn producer(&self) -> genq_producer::Producer {
        self.producer_with(genq_shared::settings::ProducerSettings::default()).await
    }

    /// A producer for this sandbox that publishes every job as a v1 message of its own.
    pub async fn producer_v1(&self) -> genq_producer::Producer {
        self.producer_with(genq_shared::settings::ProducerSettings { bulk_max_jobs: 1, ..Default::default() }).await
    }

    /// A producer for this sandbox with `settings` (its default model set to this sandbox's).
    pub async fn producer_with(&self, settings: genq_shared::settings::ProducerSettings) -> genq_producer::Producer {
        let settings = genq_shared::settings::ProducerSettings { default_model: self.model.clone(), ..settings };
        genq_producer::Producer::connect(&self.amqp, &settings, &genq_shared::settings::QueueSettings::default())
            .await
            .expect("producer")
            .with_results(self.results().await)
    }

    /// Publishes a raw body to this sandbox's normal queue, as any AMQP client could.
    pub async fn publish_raw(&self, body: &[u8], message_id: Option<&str>) {
        self.publish_typed(body, None, message_id).await
    }

    /// Publishes a raw body with a content type (a bulk message has its own) to this sandbox's
    /// normal queue.
    pub async fn publish_typed(&self, body: &[u8], content_type: Option<&str>, message_id: Option<&str>) {
        let conn = genq_protocol::broker::connect(&self.amqp, "genq-test").await.expect("amqp");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(Default::default()).await.expect("confirms");
        genq_protocol::broker::declare_topology(&ch, &self.model, genq_shared::settings::QueueSettings::default().limits())
            .await
            .expect("topology");
        let mut props = BasicProperties::default().with_delivery_mode(2);
        if let Some(id) = message_id {
            props = props.with_message_id(id.into());
        }
        if let Some(t) = content_type {
            props = props.with_content_type(t.into());
        }
        let confirm = ch
            .basic_publish(genq_shared::topology::JOBS_EXCHANGE.into(), self.model.as_str().into(), BasicPublishOptions::default(), body, props)
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "broker refused the message");
        let _ = conn.close(200, "bye".into()).await;
    }

    /// Number of messages ready in this sandbox's normal queue.
    pub async fn ready_messages(&self) -> u32 {
        let conn = genq_protocol::broker::connect(&self.amqp, "genq-test").await.expect("amqp");
        let ch = conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                genq_shared::topology::queue_name(&self.model, genq_shared::Priority::Normal).as_str().into(),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                Default::default(),
            )
            .await
            .expect("queue exists");
        let n = q.message_count();
        let _ = conn.close(200, "bye".into()).await;
        n
    }

    /// Deletes this sandbox's queues.
    pub async fn cleanup(&self) {
        let delete = async {
            let Ok(conn) = genq_protocol::broker::connect(&self.amqp, "genq-test").await else { return };
            if let Ok(ch) = conn.create_channel().await {
                for p in genq_shared::Priority::ALL {
                    let q = genq_shared::topology::queue_name(&self.model, p);
                    let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
                }
            }
            let _ = conn.close(200, "bye".into()).await;
        };
        // Best effort, and bounded: an AMQP call that never answers (once seen after a test's
        // processes had exited) must not hold the test run until CI's limit.
        if tokio::time::timeout(CLEANUP_TIMEOUT, delete).await.is_err() {
            eprintln!("cleanup of {}: the broker did not answer within {CLEANUP_TIMEOUT:?}; its queues are left", self.model);
        }
    }
}

/// The longest [`Sandbox::cleanup`] waits for the broker.
const CLEANUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// A private queue bound to the dead-letter exchange (a fanout): it sees every message
/// dead-lettered while it exists, whoever's, so a test can find its own.
pub struct DeadLetterWatch {
    connection: lapin::Connection,
    consumer: lapin::Consumer,
}

impl DeadLetterWatch {
    /// Starts watching (declaring the topology of `sb`'s model, which declares the exchange).
    pub async fn start(sb: &Sandbox) -> Self {
        use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
        let connection = genq_protocol::broker::connect(&sb.amqp, "genq-test-dead").await.expect("amqp");
        let ch = connection.create_channel().await.expect("channel");
        genq_protocol::broker::declare_topology(&ch, &sb.model, genq_shared::settings::QueueSettings::default().limits()).await.expect("topology");
        let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue = ch.queue_declare("".into(), options, Default::default()).await.expect("watch queue");
        ch.queue_bind(queue.name().clone(), genq_shared::topology::DEAD_LETTER_EXCHANGE.into(), "".into(), QueueBindOptions::default(), Default::default())
            .await
            .expect("bind to the dead-letter exchange");
        let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let consumer = ch.basic_consume(queue.name().clone(), "".into(), options, Default::default()).await.expect("consume");
        Self { connection, consumer }
    }

    /// The dead letters for which `mine` holds, in arrival order, until `n` are seen or `timeout`
    /// passes.
    pub async fn collect(&mut self, n: usize, timeout: std::time::Duration, mine: impl Fn(&lapin::message::Delivery) -> bool) -> Vec<lapin::message::Delivery> {
        use futures::StreamExt;
        let mut seen = Vec::new();
        let until = tokio::time::Instant::now() + timeout;
        while seen.len() < n {
            match tokio::time::timeout_at(until, self.consumer.next()).await {
                Ok(Some(Ok(d))) if mine(&d) => seen.push(d),
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        seen
    }

    /// Stops watching; the queue goes with the connection.
    pub async fn stop(self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

/// A running `genq-worker` ([`WorkerProcess`]: SIGTERM, then SIGKILL, when dropped), with the
/// test helpers that read its metrics.
pub struct Worker(WorkerProcess);

impl std::ops::Deref for Worker {
    type Target = WorkerProcess;

    fn deref(&self) -> &WorkerProcess {
        &self.0
    }
}

impl Worker {
    /// The address of its `/metrics` listener, from its `worker ready` log line.
    pub fn metrics_addr(&self) -> Option<String> {
        let log = self.log_text();
        let at = log.find("metrics=")? + "metrics=".len();
        Some(log[at..].split_whitespace().next()?.trim_matches('"').to_string())
    }

    /// The value of one series (`name` or `name{labels}` exactly as rendered) on its `/metrics`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = prometheus::http_get(&self.metrics_addr()?, "/metrics").ok()?;
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }
}
