//! The fleet end to end against the real RabbitMQ and Redis: `genq submit` -> RabbitMQ ->
//! `genq-worker` -> Redis -> `genq submit --wait` / `genq wait`, with the echo engine (fast and
//! predictable) and with the real default model.

use std::time::Duration;

use genq_shared::{JobRequest, JobResult, JobStatus};
use genq_tests::prometheus::http_get;
use genq_tests::{default_model, redis_url, Sandbox};

fn write_jobs(lines: &[String]) -> tempfile_path::TempFile {
    tempfile_path::TempFile::with_lines(lines)
}

/// A file in the scratch dir, removed on drop (no extra crate needed).
mod tempfile_path {
    pub struct TempFile(pub std::path::PathBuf);
    impl TempFile {
        pub fn with_lines(lines: &[String]) -> Self {
            let path = genq_tests::scratch_dir().join(format!("{}.jsonl", genq_tests::unique("jobs")));
            std::fs::write(&path, lines.join("\n") + "\n").expect("write jobs file");
            TempFile(path)
        }
        pub fn path(&self) -> &str {
            self.0.to_str().unwrap_or_default()
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn results_from(stdout: &[u8]) -> Vec<JobResult> {
    String::from_utf8_lossy(stdout).lines().map(|l| serde_json::from_str(l).expect("result line is JSON")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_submitted_job_comes_back_done_in_input_order() {
    let sb = Sandbox::new("fleet");
    let worker = sb.worker(&["--engine", "echo"]);
    worker.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<String> = (0..200).map(|i| format!(r#"{{"prompt":"word{i} alpha beta","max_new_tokens":5}}"#)).collect();
    let file = write_jobs(&lines);
    let out = sb.genq().args(["submit", file.path(), "--wait", "--timeout", "120"]).output().expect("run genq submit");
    assert!(out.status.success(), "genq submit failed: {}", String::from_utf8_lossy(&out.stderr));
    let results = results_from(&out.stdout);
    assert_eq!(results.len(), 200);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.status, Some(JobStatus::Done), "{r:?}");
        assert_eq!(r.text.as_deref(), Some(format!("word{i} alpha beta word{i} alpha").as_str()), "results out of order");
        assert_eq!(r.completion_tokens, Some(5));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("published 200 jobs, rejected 0"), "{stderr}");

    let addr = worker.metrics_addr().expect("worker logs its metrics address");
    let (_, metrics) = http_get(&addr, "/metrics").expect("read /metrics");
    assert!(metrics.contains("genq_jobs_total{status=\"done\"} 200"), "{metrics}");
    assert!(metrics.contains("genq_worker_info{") && metrics.contains(r#"kernel="none""#), "{metrics}");
    assert_eq!(http_get(&addr, "/healthz").expect("read /healthz").0, 200);
    drop(worker);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_with_a_bad_field_fails_naming_the_field() {
    let sb = Sandbox::new("invalid");
    let worker = sb.worker(&["--engine", "echo"]);
    worker.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    sb.publish_raw(br#"{"id":"bad-top-p","prompt":"hi","top_p":5}"#, None).await;
    sb.publish_raw(br#"{"id":"bad-typo","prompt":"hi","temprature":0.5}"#, None).await;
    sb.publish_raw(br#"{"prompt":"hi","max_new_tokens":"many"}"#, Some("bad-type")).await;
    sb.publish_raw(b"this is not json", Some("garbage")).await;
    let good = format!(r#"{{"id":"good","prompt":"still works","model":"{}"}}"#, sb.model);
    sb.publish_raw(good.as_bytes(), None).await;
    sb.publish_raw(br#"{"id":"wrong-model","prompt":"hi","model":"some-other-model"}"#, None).await;
    let client = sb.results().await;
    for (id, field) in [("bad-top-p", "top_p"), ("bad-typo", "temprature"), ("bad-type", "max_new_tokens")] {
        let r = client.wait(id, Some(Duration::from_secs(30))).await.expect("result");
        assert_eq!(r.status, Some(JobStatus::Failed), "{r:?}");
        let error = r.error.unwrap_or_default();
        assert!(error.contains(field), "error for {id} should name `{field}`: {error}");
        assert_eq!(r.error_kind.as_deref(), Some("invalid"));
    }
    let wrong = client.wait("wrong-model", Some(Duration::from_secs(30))).await.expect("result");
    assert_eq!(wrong.status, Some(JobStatus::Failed));
    assert!(wrong.error.unwrap_or_default().contains("`model`"));
    let good = client.wait("good", Some(Duration::from_secs(30))).await.expect("result");
    assert_eq!(good.status, Some(JobStatus::Done), "a bad job must not stop the worker");
    assert!(client.get("garbage").await.expect("redis").is_none(), "a non-job body gets no result, it is dead-lettered");
    assert!(worker.wait_for_log("not a job", Duration::from_secs(5)), "{}", worker.log_text());

    // The CLI refuses a bad job before publishing and says which line and field.
    let file = write_jobs(&[r#"{"prompt":"ok"}"#.into(), r#"{"prompt":"x","top_k":-3}"#.into(), r#"{"prompt":"y","top_p":9}"#.into()]);
    let out = sb.genq().args(["submit", file.path()]).output().expect("genq submit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("published 1 jobs, rejected 2"), "{stderr}");
    assert!(stderr.contains("line 2") && stderr.contains("line 3") && stderr.contains("top_p"), "{stderr}");
    drop(worker);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_job_id_published_twice_yields_one_result() {
    let sb = Sandbox::new("dup");
    let producer = sb.producer().await;
    let job = JobRequest { id: Some("same-id".into()), max_new_tokens: Some(3), ..JobRequest::prompt("a b c") };
    for _ in 0..3 {
        producer.submit(job.clone()).await.expect("published");
    }
    producer.close().await;
    let worker = sb.worker(&["--engine", "echo", "--max-batch-size", "8"]);
    let client = sb.results().await;
    let r = client.wait("same-id", Some(Duration::from_secs(30))).await.expect("result");
    assert_eq!(r.status, Some(JobStatus::Done));
    // Let the worker settle the other two deliveries, then check one final write happened.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while sb.ready_messages().await > 0 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let redis = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = redis.get_multiplexed_async_connection().await.expect("redis");
    let done_len: i64 = redis::cmd("LLEN").arg(format!("{}:job:{{same-id}}:done", sb.prefix)).query_async(&mut conn).await.expect("llen");
    assert_eq!(done_len, 1, "a final status must be written exactly once");
    assert_eq!(sb.ready_messages().await, 0, "duplicates are acked, not left in the queue");
    drop(worker);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_for_an_unknown_job_times_out_with_a_clear_answer() {
    let sb = Sandbox::new("wait");
    let out = sb.genq().args(["wait", "never-published", "--timeout", "1"]).output().expect("genq wait");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timed out") && stderr.contains("unknown"), "{stderr}");
    let out = sb.genq().args(["get", "never-published"]).output().expect("genq get");
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
async fn sigterm_during_a_run_loses_no_job() {
    let model = default_model();
    let model = model.to_str().unwrap_or_default().to_string();
    let sb = Sandbox::new("sigterm");
    let producer = sb.producer().await;
    let total = 24;
    let mut ids = Vec::new();
    for i in 0..total {
        let job = JobRequest {
            id: Some(format!("term-{i}")),
            max_new_tokens: Some(24),
            min_new_tokens: Some(24),
            temperature: Some(0.0),
            ..JobRequest::prompt(format!("Count slowly from {i}:"))
        };
        ids.push(producer.submit(job).await.expect("published"));
    }
    producer.close().await;
    let first = sb.worker(&["--model-path", &model, "--max-batch-size", "4", "--prefetch", "8"]);
    let client = sb.results().await;
    // Wait until work is under way, then ask the worker to stop.
    let until = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = client.get_many(&ids).await.expect("redis").iter().flatten().filter(|r| r.status == Some(JobStatus::Done)).count();
        if done >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < until, "no job finished:\n{}", first.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.signal("TERM");
    let code = first.wait_exit(Duration::from_secs(60)).expect("worker exits after SIGTERM");
    assert_eq!(code, Some(0), "graceful exit:\n{}", first.log_text());
    let after_term: Vec<_> = client.get_many(&ids).await.expect("redis");
    let done_then = after_term.iter().flatten().filter(|r| r.status == Some(JobStatus::Done)).count();
    assert!(done_then < total, "the test needs jobs left over at SIGTERM; make them longer");

    let second = sb.worker(&["--model-path", &model, "--max-batch-size", "8"]);
    let mut all = Vec::new();
    client
        .wait_many(&ids, Some(Duration::from_secs(300)), |r| all.push(r))
        .await
        .expect("wait");
    for r in &all {
        let r = r.as_ref().expect("every job finishes");
        assert_eq!(r.status, Some(JobStatus::Done), "{r:?}");
        assert_eq!(r.completion_tokens, Some(24));
    }
    drop(second);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
async fn the_example_prompts_get_real_completions_through_the_fleet() {
    let model = default_model();
    let sb = Sandbox::new("real");
    let worker = sb.worker(&["--model-path", model.to_str().unwrap_or_default()]);
    let examples = genq_tests::workspace_root().join("examples/prompts.jsonl");
    let out = sb
        .genq()
        .args(["submit", examples.to_str().unwrap_or_default(), "--wait", "--timeout", "300"])
        .output()
        .expect("genq submit");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), worker.log_text());
    let results = results_from(&out.stdout);
    assert_eq!(results.len(), 7);
    for r in &results {
        assert_eq!(r.status, Some(JobStatus::Done), "{r:?}");
    }
    let capital = &results[0];
    assert!(capital.text.as_deref().unwrap_or("").contains("Paris"), "{capital:?}");
    let score = results.iter().find(|r| r.id == "ppl").expect("score job");
    assert!(score.perplexity.is_some_and(|p| p > 1.0 && p.is_finite()), "{score:?}");
    assert_eq!(score.logprobs.as_ref().map(Vec::len), score.prompt_tokens.map(|n| n as usize - 1));
    for r in results.iter().filter(|r| r.id != "ppl") {
        assert!(!r.text.as_deref().unwrap_or("").trim().is_empty(), "empty completion: {r:?}");
    }
    drop(worker);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_for_a_model_without_a_queue_is_refused_at_publish() {
    let sb = Sandbox::new("unroutable");
    let settings = genq_shared::settings::ProducerSettings {
        default_model: sb.model.clone(),
        declare_default_model: false,
        ..genq_shared::settings::ProducerSettings::default()
    };
    let producer = genq_producer::Producer::connect(&genq_tests::amqp_url(), &settings, &Default::default())
        .await
        .expect("producer");
    let err = producer.submit(JobRequest::prompt("nobody serves this")).await.expect_err("unroutable");
    assert!(matches!(err, genq_producer::PublishError::Unroutable { .. }), "{err}");
    assert!(err.to_string().contains(&sb.model), "{err}");
    producer.close().await;
}
