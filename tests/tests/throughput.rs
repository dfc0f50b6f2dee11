//! The fast path keeps its promises: batched acks never cover a delivery that is still running,
//! batched begins still see duplicates, and `genq bench fleet` reads back every job it published.
//! Figures are printed by the benchmark, never asserted here.

use std::time::{Duration, Instant};

use genq_shared::{JobRequest, JobStatus};
use genq_tests::{bin, Sandbox, Worker};

fn echo_worker(sb: &Sandbox, step_ms: &str) -> Worker {
    let flags = ["--engine", "echo", "--max-batch-size", "8", "--prefetch", "64"];
    let w = sb.worker_with_env(&flags, &[("GENQ_ECHO_STEP_MS", step_ms)]);
    w.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    w
}

fn job(id: String, tokens: u32) -> JobRequest {
    JobRequest { id: Some(id), max_new_tokens: Some(tokens), min_new_tokens: Some(tokens), ..JobRequest::prompt("a b c") }
}

async fn status_of(sb: &Sandbox, ids: &[String]) -> Vec<Option<JobStatus>> {
    sb.results().await.get_many(ids).await.expect("redis").into_iter().map(|r| r.and_then(|r| r.status)).collect()
}

/// A long job delivered first and many short jobs after it: the short ones are acked while the
/// long one runs. If those acks covered the long job's delivery (`multiple=true` past an unsettled
/// tag), killing the worker would lose it; it must instead come back and finish on a new worker.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_job_survives_a_crash_after_later_jobs_were_acked() {
    let sb = Sandbox::new("acks");
    let first = echo_worker(&sb, "20");
    let producer = sb.producer().await;
    let long = format!("{}-long", sb.model);
    let short: Vec<String> = (0..60).map(|i| format!("{}-short-{i}", sb.model)).collect();
    let mut jobs = vec![job(long.clone(), 400)];
    jobs.extend(short.iter().map(|id| job(id.clone(), 1)));
    for r in producer.submit_many(jobs, |_| {}).await {
        r.expect("published");
    }
    producer.close().await;

    let until = Instant::now() + Duration::from_secs(60);
    while status_of(&sb, &short).await.iter().any(|s| *s != Some(JobStatus::Done)) {
        assert!(Instant::now() < until, "short jobs did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_of(&sb, std::slice::from_ref(&long)).await, vec![Some(JobStatus::Running)], "the long job is still running");
    // Give the settling task time to send the short jobs' acks before the crash.
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));

    let _second = echo_worker(&sb, "0");
    let r = sb.results().await.wait(&long, Some(Duration::from_secs(60))).await.expect("the long job comes back and finishes");
    assert_eq!(r.status, Some(JobStatus::Done), "{r:?}");
    assert_eq!(r.attempts, Some(2), "it ran again after the crash: {r:?}");
    sb.cleanup().await;
}

/// A batch of deliveries in which the same job id appears several times is begun in one round
/// trip; one final result is stored and every copy is acked.
#[tokio::test(flavor = "multi_thread")]
async fn copies_of_a_job_in_one_intake_batch_leave_one_result_and_an_empty_queue() {
    let sb = Sandbox::new("dups");
    let producer = sb.producer().await;
    let id = format!("{}-same", sb.model);
    let others: Vec<String> = (0..20).map(|i| format!("{}-other-{i}", sb.model)).collect();
    let mut jobs: Vec<JobRequest> = (0..5).map(|_| job(id.clone(), 3)).collect();
    jobs.extend(others.iter().map(|o| job(o.clone(), 3)));
    for r in producer.submit_many(jobs, |_| {}).await {
        r.expect("published");
    }
    producer.close().await;
    // The worker starts after the publishes, so its first intake batch holds every copy.
    let w = echo_worker(&sb, "0");
    let client = sb.results().await;
    for o in others.iter().chain(std::iter::once(&id)) {
        let r = client.wait(o, Some(Duration::from_secs(30))).await.expect("finished");
        assert_eq!(r.status, Some(JobStatus::Done), "{r:?}");
    }
    let until = Instant::now() + Duration::from_secs(30);
    while sb.ready_messages().await > 0 {
        assert!(Instant::now() < until, "copies left in the queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(w);
    let r = client.get(&id).await.expect("redis").expect("result");
    assert!(r.attempts.unwrap_or(0) >= 1, "{r:?}");
    sb.cleanup().await;
}

/// `genq bench fleet --vs-broker` on a small run: the fleet's JSON line with every job done and
/// none missing, then RabbitMQ alone's line (every job consumed) and the ratio of the two.
#[test]
fn the_fleet_benchmark_reads_back_every_job_and_compares_with_rabbitmq_alone() {
    let amqp = genq_tests::amqp_url();
    let redis = genq_tests::redis_url();
    let out = std::process::Command::new(bin("genq"))
        .args(["--amqp-url", &amqp, "--redis-url", &redis, "bench", "fleet", "--jobs", "500", "--engine", "echo", "--vs-broker"])
        .env("GENQ_WORKER_BIN", bin("genq-worker"))
        .output()
        .expect("run genq bench fleet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = stdout.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(lines.len(), 3, "fleet, RabbitMQ alone, ratio: {stdout}");
    let v = &lines[0];
    assert_eq!(v["done"], 500, "{v}");
    assert_eq!(v["missing"], 0, "{v}");
    assert!(v["jobs_per_s"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    assert!(v["worker"][0]["peak_rss_mib"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    let alone = &lines[1];
    assert_eq!(alone["system"], "rabbitmq alone", "{alone}");
    assert_eq!(alone["jobs"], 500, "{alone}");
    assert!(alone["jobs_per_s"].as_f64().is_some_and(|x| x > 0.0), "{alone}");
    assert!(alone["cpu_us_per_job"]["rabbitmq"].as_f64().is_some_and(|x| x > 0.0), "{alone}");
    let ratio = &lines[2];
    assert_eq!(ratio["ratio"], "fleet/rabbitmq-alone", "{ratio}");
    let expected = v["jobs_per_s"].as_f64().unwrap_or_default() / alone["jobs_per_s"].as_f64().unwrap_or(f64::NAN);
    assert!(ratio["jobs_per_s"].as_f64().is_some_and(|r| (r - expected).abs() < 1e-9), "{ratio}");
    let run = v["run"].as_str().expect("the run's name");
    let left = tokio::runtime::Runtime::new().expect("runtime").block_on(queues_left(&[run.to_string(), format!("{run}-broker")]));
    assert!(left.is_empty(), "the benchmark left queues behind: {left:?}");
}

/// Which of the job queues (normal, `.high`, `.low`) of `models` still exist.
async fn queues_left(models: &[String]) -> Vec<String> {
    let conn = genq_protocol::broker::connect(&genq_tests::amqp_url(), "genq-test").await.expect("amqp");
    let mut left = Vec::new();
    for model in models {
        for p in genq_shared::Priority::ALL {
            let queue = genq_shared::topology::queue_name(model, p);
            // A passive declare of a missing queue closes the channel (NOT_FOUND): one channel each.
            let ch = conn.create_channel().await.expect("channel");
            let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
            if ch.queue_declare(queue.as_str().into(), passive, Default::default()).await.is_ok() {
                left.push(queue);
                let _ = ch.close(200, "bye".into()).await;
            }
        }
    }
    let _ = conn.close(200, "bye".into()).await;
    left
}
