//! Bulk (v2) messages end to end, against the real RabbitMQ and Redis and `genq-worker`
//! processes: each job of a bulk message runs or fails on its own; a message that is not valid v2
//! is dead-lettered whole; a bulk message redelivered after a crash reruns only its unfinished
//! jobs; the producer packs jobs published together and sends a lone job as v1, at once or after
//! `producer.bulk_wait_ms`; and two workers running the real model share a batch published in
//! bulk. The fault suite (`faults.rs`) and the chaos soak publish with bulk messages too.

use std::collections::BTreeMap;
use std::time::Duration;

use genq_shared::bulk::BULK_CONTENT_TYPE;
use genq_shared::settings::ProducerSettings;
use genq_shared::{JobRequest, JobStatus};
use genq_tests::tally::{jobs, tally};
use genq_tests::{default_model, DeadLetterWatch, Sandbox, Worker};

fn echo_worker(sb: &Sandbox, step_ms: &str) -> Worker {
    let w = sb.worker_with_env(&["--engine", "echo", "--max-batch-size", "32"], &[("GENQ_ECHO_STEP_MS", step_ms)]);
    w.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    w
}

/// Waits until the worker holds no delivery (every message it took is settled).
async fn until_settled(worker: &Worker) {
    for _ in 0..100 {
        if worker.metric("genq_inflight_deliveries") == Some(0.0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("deliveries still in flight:\n{}", worker.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn each_job_of_a_bulk_message_runs_or_fails_on_its_own() {
    let sb = Sandbox::new("bulk-each");
    let worker = echo_worker(&sb, "0");
    let m = &sb.model;
    let body = format!(
        r#"{{"v":2,"jobs":[{{"id":"b-1","model":"{m}","prompt":"one two"}},{{"id":"b-2","model":"{m}","prompt":"x","top_p":5}},{{"id":"b-3","model":"{m}","prompt":"three","stream":true}},{{"id":"b-4","model":"other","prompt":"x"}},{{"id":"b-5","model":"{m}","prompt":"five","max_new_tokens":2,"batch":"bb"}}]}}"#
    );
    sb.publish_typed(body.as_bytes(), Some(BULK_CONTENT_TYPE), None).await;
    let ids: Vec<String> = (1..=5).map(|i| format!("b-{i}")).collect();
    let t = tally(&sb, &ids, Duration::from_secs(30)).await;
    assert_eq!((t.lost, t.done, t.failed), (0, 3, 2), "{t:?}\n{}", worker.log_text());
    let results = sb.results().await;
    let bad = results.get("b-2").await.expect("redis").expect("b-2 has a result");
    assert!(bad.error.as_deref().is_some_and(|e| e.contains("top_p")), "{bad:?}");
    let wrong = results.get("b-4").await.expect("redis").expect("b-4 has a result");
    assert!(wrong.error.as_deref().is_some_and(|e| e.contains("model")), "{wrong:?}");
    let five = results.get("b-5").await.expect("redis").expect("b-5 has a result");
    assert_eq!((five.status, five.completion_tokens), (Some(JobStatus::Done), Some(2)), "{five:?}");
    until_settled(&worker).await;
    assert_eq!(sb.ready_messages().await, 0, "the message was acked, not requeued");
    assert_eq!(worker.metric("genq_dead_lettered_total"), Some(0.0));
    drop(worker);
    sb.cleanup().await;
}

/// A cancel request and a deadline apply to their own job of a bulk message only; the others run.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_and_deadline_apply_per_job_in_a_bulk_message() {
    let sb = Sandbox::new("bulk-cancel");
    let producer = sb.producer().await;
    let job = |id: &str| JobRequest { id: Some(id.into()), max_new_tokens: Some(3), ..JobRequest::prompt("a b c") };
    let late = JobRequest { deadline_ms: Some(1), ..job("late") };
    let published = producer.submit_many(vec![job("first"), late, job("unwanted"), job("last")], |_| {}).await;
    let ids: Vec<String> = published.into_iter().map(|r| r.expect("published")).collect();
    producer.close().await;
    assert_eq!(sb.ready_messages().await, 1, "the four jobs share one message");
    let results = sb.results().await;
    assert_eq!(results.cancel("unwanted").await.expect("redis"), genq_producer::CancelOutcome::Requested);
    let worker = echo_worker(&sb, "0");
    let t = tally(&sb, &ids, Duration::from_secs(30)).await;
    assert_eq!(t.lost, 0, "{t:?}");
    let statuses: Vec<Option<JobStatus>> = results.get_many(&ids).await.expect("redis").into_iter().map(|r| r.and_then(|r| r.status)).collect();
    assert_eq!(statuses, [JobStatus::Done, JobStatus::Expired, JobStatus::Cancelled, JobStatus::Done].map(Some).to_vec());
    until_settled(&worker).await;
    assert_eq!(sb.ready_messages().await, 0);
    drop(worker);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_is_not_valid_v2_is_dead_lettered_whole() {
    let sb = Sandbox::new("bulk-invalid");
    let mut watch = DeadLetterWatch::start(&sb).await;
    let worker = echo_worker(&sb, "0");
    let m = &sb.model;
    let good = |id: &str| format!(r#"{{"id":"{id}","model":"{m}","prompt":"fine"}}"#);
    let bodies = [
        // Two jobs with one id.
        (format!(r#"{{"v":2,"jobs":[{},{}]}}"#, good("dup"), good("dup")), Some(BULK_CONTENT_TYPE)),
        // A job without an id: it could have no result of its own.
        (format!(r#"{{"v":2,"jobs":[{},{{"model":"{m}","prompt":"no id"}}]}}"#, good("next-to-no-id")), Some(BULK_CONTENT_TYPE)),
        // An unknown envelope field.
        (format!(r#"{{"v":2,"jobs":[{}],"priority":"high"}}"#, good("in-bad-envelope")), Some(BULK_CONTENT_TYPE)),
        // A bulk body sent as a v1 message.
        (format!(r#"{{"v":2,"jobs":[{}]}}"#, good("untyped")), None),
    ];
    for (body, content_type) in &bodies {
        sb.publish_typed(body.as_bytes(), *content_type, None).await;
    }
    let mine = |d: &lapin::message::Delivery| String::from_utf8_lossy(&d.data).contains(m.as_str());
    let dead = watch.collect(bodies.len(), Duration::from_secs(30), mine).await;
    assert_eq!(dead.len(), bodies.len(), "every invalid message is dead-lettered:\n{}", worker.log_text());
    let mut dead_bodies: Vec<&[u8]> = dead.iter().map(|d| d.data.as_slice()).collect();
    let mut sent: Vec<&[u8]> = bodies.iter().map(|(b, _)| b.as_bytes()).collect();
    dead_bodies.sort();
    sent.sort();
    assert_eq!(dead_bodies, sent, "dead-lettered whole, as published");
    let results = sb.results().await;
    for id in ["dup", "next-to-no-id", "in-bad-envelope", "untyped"] {
        assert_eq!(results.get(id).await.expect("redis"), None, "no job of an invalid message runs: {id}");
    }
    assert_eq!(worker.metric("genq_dead_lettered_total"), Some(bodies.len() as f64));
    let log = worker.log_text();
    for reason in ["used twice", "job 1 of the bulk message", "unknown field `priority`", BULK_CONTENT_TYPE] {
        assert!(log.contains(reason), "the log names the reason {reason:?}:\n{log}");
    }
    watch.stop().await;
    drop(worker);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_message_redelivered_after_a_crash_reruns_only_its_unfinished_jobs() {
    let sb = Sandbox::new("bulk-redeliver");
    let producer = sb.producer().await;
    // One message: four short jobs and four long ones (400 steps of 10 ms).
    let mut all = jobs("short", 4, 2);
    all.extend(jobs("long", 4, 400));
    let ids: Vec<String> = producer.submit_many(all, |_| {}).await.into_iter().map(|r| r.expect("published")).collect();
    producer.close().await;
    assert_eq!(sb.ready_messages().await, 1, "eight jobs that route alike share one message");
    let first = echo_worker(&sb, "10");
    let short: Vec<String> = ids[..4].to_vec();
    let t = tally(&sb, &short, Duration::from_secs(30)).await;
    assert_eq!(t.done, 4, "{t:?}");
    first.signal("KILL");
    drop(first);
    let second = echo_worker(&sb, "0");
    let t = tally(&sb, &ids, Duration::from_secs(60)).await;
    assert_eq!((t.lost, t.done), (0, 8), "{t:?}\n{}", second.log_text());
    let results = sb.results().await.get_many(&ids).await.expect("redis");
    let attempts: Vec<u64> = results.iter().map(|r| r.as_ref().and_then(|r| r.attempts).unwrap_or(0)).collect();
    assert_eq!(attempts, vec![1, 1, 1, 1, 2, 2, 2, 2], "the redelivery reran only the jobs not final");
    until_settled(&second).await;
    assert_eq!(sb.ready_messages().await, 0);
    drop(second);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_producer_packs_a_backlog_and_publishes_a_lone_job_at_once() {
    let sb = Sandbox::new("bulk-pack");
    let producer = sb.producer().await;
    let published = producer.submit_many(jobs("p", 40, 1), |_| {}).await;
    assert!(published.iter().all(Result::is_ok), "{published:?}");
    assert_eq!(sb.ready_messages().await, 3, "40 jobs in messages of at most 16");
    let started = std::time::Instant::now();
    producer.submit(JobRequest { id: Some("alone".into()), ..JobRequest::prompt("just me") }).await.expect("published");
    assert!(started.elapsed() < Duration::from_secs(2), "a lone job is not held back");
    assert_eq!(sb.ready_messages().await, 4, "a lone job is a message of its own");
    producer.close().await;

    // With bulk_wait_ms, jobs submitted one by one at about the same time share a message.
    let gathering = sb.producer_with(ProducerSettings { bulk_wait_ms: 300, ..Default::default() }).await;
    let submits = (0..10).map(|i| gathering.submit(JobRequest { id: Some(format!("g-{i}")), ..JobRequest::prompt("together") }));
    let outcomes = futures::future::join_all(submits).await;
    let gathered: Vec<String> = outcomes.into_iter().map(|r| r.expect("published")).collect();
    assert_eq!(gathered, (0..10).map(|i| format!("g-{i}")).collect::<Vec<_>>(), "each caller gets its own id");
    assert_eq!(sb.ready_messages().await, 5, "ten lone submits within the wait share one message");
    gathering.close().await;

    let worker = echo_worker(&sb, "0");
    let mut ids: Vec<String> = published.into_iter().map(|r| r.expect("published")).collect();
    ids.push("alone".into());
    ids.extend(gathered);
    let t = tally(&sb, &ids, Duration::from_secs(30)).await;
    assert_eq!((t.lost, t.done), (0, 51), "{t:?}");
    drop(worker);
    sb.cleanup().await;
}

/// Two workers running the real model take a batch of 128 jobs published in bulk messages (16
/// jobs each) and each runs a fair share of it.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
async fn two_model_workers_share_a_batch_published_in_bulk() {
    let sb = Sandbox::new("bulk-fair");
    let model = default_model().to_string_lossy().to_string();
    let workers: Vec<Worker> = (0..2)
        .map(|i| {
            let id = format!("w{i}");
            let flags = ["--worker-id", id.as_str(), "--model-path", model.as_str(), "--max-batch-size", "16"];
            sb.worker_with_env(&flags, &[("RAYON_NUM_THREADS", "1"), ("CANDLE_NUM_THREADS", "1")])
        })
        .collect();
    for w in &workers {
        w.wait_ready(Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    }
    let batch: Vec<JobRequest> = (0..128)
        .map(|i| JobRequest {
            id: Some(format!("f-{i}")),
            max_new_tokens: Some(4),
            min_new_tokens: Some(4),
            temperature: Some(0.0),
            ..JobRequest::prompt(format!("Row {i}: the quick brown fox"))
        })
        .collect();
    let producer = sb.producer().await;
    let ids: Vec<String> = producer.submit_many(batch, |_| {}).await.into_iter().map(|r| r.expect("published")).collect();
    producer.close().await;
    let results = sb.results().await;
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    results
        .wait_many(&ids, Some(Duration::from_secs(600)), |r| {
            let r = r.unwrap_or_else(|e| panic!("a job did not finish: {e}"));
            assert_eq!((r.status, r.completion_tokens), (Some(JobStatus::Done), Some(4)), "{r:?}");
            *per_worker.entry(r.worker.clone().unwrap_or_default()).or_default() += 1;
        })
        .await
        .expect("wait for results");
    println!("jobs per worker: {per_worker:?}");
    assert_eq!(per_worker.len(), 2, "both workers ran jobs: {per_worker:?}");
    assert!(per_worker.values().all(|n| *n >= 32), "each worker ran at least half of an even share: {per_worker:?}");
    drop(workers);
    sb.cleanup().await;
}
