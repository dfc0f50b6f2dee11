//! The producer's `queued` marks against the real RabbitMQ and Redis: every job is marked before
//! it is published, so a consumer never sees a job Redis has no record of (and a late mark can
//! never bring back a result that has expired); a job that could not be published leaves no mark.

use std::collections::HashSet;

use futures::StreamExt;
use genq_shared::job::JobRequest;
use genq_shared::keys::KeySchema;
use genq_shared::{topology, Priority};
use genq_tests::{unique, Sandbox};
use lapin::options::BasicConsumeOptions;

const JOBS: usize = 1500;

/// The ids of the jobs a message carries: its `message_id`, or each job's of a bulk message.
fn job_ids(delivery: &lapin::message::Delivery) -> Vec<String> {
    if delivery.properties.content_type().as_ref().map(|t| t.as_str()) == Some(genq_shared::bulk::BULK_CONTENT_TYPE) {
        let jobs = genq_shared::bulk::parse(&delivery.data).expect("a bulk body");
        return jobs.iter().map(|j| serde_json::from_str::<JobRequest>(j.get()).expect("a job").id.expect("an id")).collect();
    }
    vec![delivery.properties.message_id().as_ref().map(|s| s.to_string()).expect("message id")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_finds_every_job_already_marked_queued() {
    let sb = Sandbox::new("marks");
    let producer = sb.producer().await;
    let keys = KeySchema::new(sb.prefix.clone());
    let amqp = genq_protocol::broker::connect(&sb.amqp, "genq-test").await.expect("amqp");
    let channel = amqp.create_channel().await.expect("channel");
    let queue = topology::queue_name(&sb.model, Priority::Normal);
    let mut consumer = channel
        .basic_consume(queue.as_str().into(), "marks-check".into(), BasicConsumeOptions { no_ack: true, ..Default::default() }, Default::default())
        .await
        .expect("consume");
    let redis = redis::Client::open(sb.redis.as_str()).expect("redis url");
    let mut conn = redis.get_multiplexed_async_connection().await.expect("redis");
    // Reads each job's status the moment its delivery arrives, while the rest are published.
    let check = tokio::spawn(async move {
        let mut unmarked = Vec::new();
        let mut seen = HashSet::new();
        while seen.len() < JOBS {
            let delivery = consumer.next().await.expect("deliveries go on").expect("delivery");
            for id in job_ids(&delivery) {
                let status: Option<String> = redis::AsyncCommands::hget(&mut conn, keys.job(&id), "status").await.expect("HGET");
                if status.as_deref() != Some("queued") {
                    unmarked.push((id.clone(), status));
                }
                seen.insert(id);
            }
        }
        unmarked
    });
    let jobs: Vec<JobRequest> = (0..JOBS).map(|i| JobRequest { id: Some(format!("m-{i}")), ..JobRequest::prompt("marked first") }).collect();
    let published = producer.submit_many(jobs, |_| {}).await;
    assert!(published.iter().all(Result::is_ok), "all published");
    let unmarked = tokio::time::timeout(std::time::Duration::from_secs(60), check).await.expect("all delivered").expect("checker");
    assert!(unmarked.is_empty(), "{} of {JOBS} jobs reached a consumer before their queued mark, e.g. {:?}", unmarked.len(), unmarked.first());
    let _ = amqp.close(200, "bye".into()).await;
    producer.close().await;
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_could_not_be_published_leaves_no_queued_mark() {
    let sb = Sandbox::new("unmarked");
    let producer = sb.producer().await;
    let id = unique("nowhere");
    // No queue is bound for this model: the broker returns the message (mandatory).
    let job = JobRequest { id: Some(id.clone()), model: Some(unique("no-such-model")), ..JobRequest::prompt("lost?") };
    let err = producer.submit(job).await.expect_err("an unroutable job is refused");
    assert!(matches!(err, genq_producer::PublishError::Unroutable { .. }), "{err}");
    let redis = redis::Client::open(sb.redis.as_str()).expect("redis url");
    let mut conn = redis.get_multiplexed_async_connection().await.expect("redis");
    let exists: bool = redis::AsyncCommands::exists(&mut conn, KeySchema::new(sb.prefix.clone()).job(&id)).await.expect("EXISTS");
    assert!(!exists, "the mark of a job no queue holds is taken back");
    let out = sb.genq().args(["get", &id]).output().expect("genq get");
    assert_eq!(out.status.code(), Some(2), "answered unknown: {}", String::from_utf8_lossy(&out.stderr));
    producer.close().await;
    sb.cleanup().await;
}
