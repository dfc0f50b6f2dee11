//! The backlog signal that autoscalers follow: how much work waits, in messages and in tokens.
//!
//! Two parts, measured where each can be measured honestly:
//! - jobs this worker holds but has not admitted to its batch: their tokens are known up to the
//!   prompt, which is not tokenized before admission, so it is estimated from its length
//!   ([`estimated_tokens`]; `genq_waiting_tokens`);
//! - messages still ready in RabbitMQ: their count is polled with a passive `queue.declare`
//!   every [`POLL_INTERVAL`] on a connection of their own ([`spawn_queue_monitor`];
//!   `genq_queue_ready_messages`, `genq_queue_consumers`). A ready message cannot be read without
//!   consuming it, so their tokens are estimated as ready messages times the mean estimated
//!   tokens of the jobs this worker has received (`genq_queue_backlog_tokens`).
//!
//! It does not own the consumer's connection, and never consumes or changes a queue.

use std::time::Duration;

use lapin::Connection;
use tokio::sync::watch;

use genq_shared::job::{JobKind, Priority};
use genq_shared::metrics::BYTES_PER_TOKEN_ESTIMATE;
use genq_shared::topology;
use genq_shared::valid::PromptInput;
use genq_shared::ValidJob;

use genq_protocol::broker::{self, BrokerError};
use crate::metrics::WorkerMetrics;

/// How often the job queues' depth is polled.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Estimated tokens of `job`: its prompt at [`BYTES_PER_TOKEN_ESTIMATE`] bytes a token, plus the
/// tokens each of its samples may generate (none for `score` jobs, which only read their prompt).
pub fn estimated_tokens(job: &ValidJob) -> u64 {
    let prompt_bytes: usize = match &job.input {
        PromptInput::Text(text) => text.len(),
        // Chat templates add a few tokens of markup around each message.
        PromptInput::Chat(messages) => messages.iter().map(|m| m.content.len() + m.role.len() + 4 * 4).sum(),
    };
    let prompt = (prompt_bytes as u64).div_ceil(BYTES_PER_TOKEN_ESTIMATE).max(1);
    match job.kind {
        JobKind::Score => prompt,
        JobKind::Generate => prompt + job.new_token_budget(prompt as usize) as u64 * u64::from(job.n),
    }
}

/// Where the monitor polls.
#[derive(Debug, Clone)]
pub struct QueueMonitorSettings {
    /// AMQP URL.
    pub url: String,
    /// Model whose two job queues are polled.
    pub model: String,
    /// Connection name shown in RabbitMQ.
    pub name: String,
}

/// Sets the per-queue gauges from one poll.
fn record(metrics: &WorkerMetrics, queue: &str, ready: u32, consumers: u32) {
    metrics.queue_ready_messages.with_label_values(&[queue]).set(i64::from(ready));
    metrics.queue_consumers.with_label_values(&[queue]).set(i64::from(consumers));
    if let Some(mean) = metrics.mean_received_tokens() {
        metrics.queue_backlog_tokens.with_label_values(&[queue]).set((f64::from(ready) * mean).round() as i64);
    }
}

/// Polls `settings.model`'s job queues every [`POLL_INTERVAL`] until `stop` turns true. A failed
/// poll drops the connection and the next tick opens a new one; the gauges keep their last value.
pub fn spawn_queue_monitor(
    settings: QueueMonitorSettings,
    metrics: WorkerMetrics,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let queues: Vec<String> =
            Priority::ALL.into_iter().map(|p| topology::queue_name(&settings.model, p)).collect();
        // Each probe opens its own channel on it (see `broker::probe_queue`).
        let mut connection: Option<Connection> = None;
        let mut failing = false;
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tick.tick() => {}
            }
            let result = async {
                if connection.is_none() {
                    connection = Some(broker::connect(&settings.url, &settings.name).await?);
                }
                if let Some(c) = &connection {
                    for queue in &queues {
                        // A queue not declared yet has no depth to report.
                        if let Some(q) = broker::probe_queue(c, queue).await? {
                            record(&metrics, queue, q.ready, q.consumers);
                        }
                    }
                }
                Ok::<(), BrokerError>(())
            }
            .await;
            match result {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot poll the job queues' depth; retrying every {}s", POLL_INTERVAL.as_secs());
                    }
                    failing = true;
                    close(connection.take()).await;
                }
            }
        }
        close(connection.take()).await;
    })
}

async fn close(connection: Option<Connection>) {
    if let Some(c) = connection {
        let _ = c.close(200, "bye".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genq_shared::valid::{validate, Limits};
    use genq_shared::JobRequest;

    fn job(json: &str) -> ValidJob {
        let req: JobRequest = serde_json::from_str(json).expect("json");
        validate(&req, &Limits::default()).expect("valid")
    }

    #[test]
    fn backlog_counts_prompt_and_every_token_a_job_may_generate() {
        assert_eq!(estimated_tokens(&job(r#"{"id":"a","prompt":"12345678","max_new_tokens":10}"#)), 2 + 10);
        assert_eq!(estimated_tokens(&job(r#"{"id":"a","prompt":"123456789","max_new_tokens":10}"#)), 3 + 10);
        assert_eq!(estimated_tokens(&job(r#"{"id":"a","kind":"score","prompt":"12345678"}"#)), 2, "score jobs generate nothing");
        let chat = estimated_tokens(&job(r#"{"id":"a","messages":[{"role":"user","content":"12345678"}],"max_new_tokens":1}"#));
        assert!(chat > 2 + 1, "chat markup counts: {chat}");
    }

    #[test]
    fn queue_backlog_tokens_follow_the_mean_received_job() {
        let m = WorkerMetrics::new().expect("metrics");
        record(&m, "q", 10, 1);
        assert_eq!(m.queue_ready_messages.with_label_values(&["q"]).get(), 10);
        assert!(!m.render().contains("genq_queue_backlog_tokens{"), "no estimate before the first job");
        m.job_received(20);
        m.job_received(40);
        record(&m, "q", 10, 2);
        assert_eq!(m.queue_backlog_tokens.with_label_values(&["q"]).get(), 300);
        assert_eq!(m.queue_consumers.with_label_values(&["q"]).get(), 2);
        assert_eq!(m.waiting_tokens.get(), 60);
    }
}
