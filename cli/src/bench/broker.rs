//! `genq bench fleet --vs-broker`: RabbitMQ alone on the fleet's jobs, the ceiling the queue
//! sets for one message per job. The same producer library publishes the same jobs, each as a v1
//! message (confirms, `mandatory`, the same properties, quorum queues private to the run) while one bare consumer takes them with the
//! workers' prefetch and acks every batch of ready deliveries with one `multiple=true` ack: no
//! Redis, no validation, no engine. Prints one JSON line: publish rate, jobs/s from the first
//! publish to the last ack, and the CPU RabbitMQ and this process spent per job.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use futures::FutureExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::json;

use genq_producer::Producer;
use genq_shared::settings::{ProducerSettings, Settings};
use genq_shared::{topology, JobRequest, Priority};

use super::procstat;

/// Deliveries acked together at most: the worker's intake takes as many in one batch.
const ACK_BATCH: usize = 512;

/// Publishes `jobs` (their model is `run`, whose queues this declares and deletes) while
/// consuming them with `prefetch` per queue; gives up after `timeout`.
pub async fn run(settings: &Settings, run: &str, jobs: Vec<JobRequest>, prefetch: u16, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    let producer_settings =
        ProducerSettings { default_model: run.to_string(), declare_default_model: true, bulk_max_jobs: 1, ..settings.producer.clone() };
    let producer = Producer::connect(&settings.amqp.url, &producer_settings, &settings.queue).await?;
    let connection = genq_protocol::broker::connect(&settings.amqp.url, "genq-bench-broker").await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumers = Vec::new();
    for priority in Priority::ALL {
        let queue = topology::queue_name(run, priority);
        let consumer =
            channel.basic_consume(queue.as_str().into(), format!("{run}-{queue}").as_str().into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
        consumers.push(consumer);
    }
    let mut deliveries = stream::select_all(consumers);

    let total = jobs.len();
    let rabbitmq = procstat::pids_named("beam.smp");
    let me = [std::process::id()];
    let (rabbitmq_before, me_before) = (procstat::cpu_secs(&rabbitmq), procstat::cpu_secs(&me));
    let started = Instant::now();
    let ack_channel = channel.clone();
    let consume = tokio::spawn(async move {
        let mut received = 0usize;
        while received < total {
            let Some(first) = deliveries.next().await else { anyhow::bail!("the consumers ended after {received} deliveries") };
            let mut last = first?.delivery_tag;
            received += 1;
            let mut batch = 1;
            while batch < ACK_BATCH {
                match deliveries.next().now_or_never() {
                    Some(Some(Ok(d))) => {
                        last = d.delivery_tag;
                        received += 1;
                        batch += 1;
                    }
                    _ => break,
                }
            }
            ack_channel.basic_ack(last, BasicAckOptions { multiple: true }).await?;
        }
        Ok(started.elapsed())
    });
    let outcomes = producer.submit_many(jobs, |_| {}).await;
    let publish_time = started.elapsed();
    let refused = outcomes.iter().filter(|o| o.is_err()).count();
    let consumed = if refused == 0 {
        match tokio::time::timeout(timeout, consume).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(anyhow::Error::from(e).context("consumer task")),
            Err(_) => Err(anyhow::anyhow!("RabbitMQ alone: timed out waiting for the deliveries")),
        }
    } else {
        consume.abort();
        Err(anyhow::anyhow!("RabbitMQ alone: {refused} publishes refused"))
    };
    let figures = consumed.map(|wall| {
        let per_job = |secs: f64| (1e6 * secs / total.max(1) as f64).round();
        json!({
            "system": "rabbitmq alone",
            "jobs": total,
            "prefetch": prefetch,
            "publish_jobs_per_s": total as f64 / publish_time.as_secs_f64().max(1e-9),
            "jobs_per_s": total as f64 / wall.as_secs_f64().max(1e-9),
            "seconds": wall.as_secs_f64(),
            "cpu_us_per_job": {
                "rabbitmq": per_job(procstat::cpu_secs(&rabbitmq) - rabbitmq_before),
                "bench_producer_and_consumer": per_job(procstat::cpu_secs(&me) - me_before),
            },
        })
    });
    // The run's queues go whatever happened, once their consumers are gone: deleting a queue
    // while its consumer is being cancelled (lapin cancels a dropped consumer) makes RabbitMQ
    // crash the channel with INTERNAL_ERROR, and the second queue was left behind.
    let _ = channel.close(200, "consumed".into()).await;
    match connection.create_channel().await {
        Ok(cleanup) => super::fleet::delete_queues(&cleanup, run).await,
        Err(e) => tracing::warn!(error = %e, "could not open a channel to delete the run's queues"),
    }
    producer.close().await;
    let _ = connection.close(200, "bye".into()).await;
    figures
}
