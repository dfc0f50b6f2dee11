//! A job's lifecycle against the real services: `genq cancel` of a queued and of a running job,
//! deadlines, results that expire after the TTL (then "unknown or expired", never a hang), and
//! every kind of bad input answered with an error that names the field.

use std::time::{Duration, Instant};

use genq_shared::{now_ms, JobRequest, JobStatus};
use genq_tests::Sandbox;

fn slow_echo_worker(sb: &Sandbox, extra: &[&str]) -> genq_tests::Worker {
    let mut flags = vec!["--engine", "echo"];
    flags.extend_from_slice(extra);
    let w = sb.worker_with_env(&flags, &[("GENQ_ECHO_STEP_MS", "20")]);
    w.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    w
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_queued_job_and_a_running_one() {
    let sb = Sandbox::new("cancel");
    let producer = sb.producer().await;
    let long = |id: &str| JobRequest { id: Some(id.into()), max_new_tokens: Some(2000), ..JobRequest::prompt("tick tock") };
    producer.submit(long("queued-one")).await.expect("published");

    // Queued (no worker yet): cancelled before it ever starts.
    let out = sb.genq().args(["cancel", "queued-one"]).output().expect("genq cancel");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let worker = slow_echo_worker(&sb, &[]);
    let client = sb.results().await;
    let r = client.wait("queued-one", Some(Duration::from_secs(30))).await.expect("result");
    assert_eq!((r.status, r.completion_tokens), (Some(JobStatus::Cancelled), Some(0)), "{r:?}");

    // Running: stopped between steps, keeping what it generated.
    producer.submit(long("running-one")).await.expect("published");
    let until = Instant::now() + Duration::from_secs(30);
    while client.get("running-one").await.expect("redis").and_then(|r| r.status) != Some(JobStatus::Running) {
        assert!(Instant::now() < until, "job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    assert_eq!(client.cancel("running-one").await.expect("cancel"), genq_producer::CancelOutcome::Requested);
    let r = client.wait("running-one", Some(Duration::from_secs(30))).await.expect("result");
    assert_eq!(r.status, Some(JobStatus::Cancelled), "{r:?}");
    let tokens = r.completion_tokens.unwrap_or(0);
    assert!(tokens > 0 && tokens < 2000, "partial output is kept: {r:?}");
    assert!(r.text.as_deref().unwrap_or("").starts_with("tick tock"), "{r:?}");
    assert!(asked.elapsed() < Duration::from_secs(5), "cancel takes effect within a poll or two");

    // A finished job cannot be cancelled; an unknown one is named as such.
    let out = sb.genq().args(["cancel", "running-one"]).output().expect("genq cancel");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already finished (cancelled)"));
    let out = sb.genq().args(["cancel", "never-submitted"]).output().expect("genq cancel");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown or its result expired"));
    producer.close().await;
    drop(worker);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_expires_a_running_job_with_its_partial_text() {
    let sb = Sandbox::new("deadline");
    let worker = slow_echo_worker(&sb, &[]);
    let producer = sb.producer().await;
    let job = JobRequest {
        id: Some("late".into()),
        max_new_tokens: Some(2000),
        deadline_ms: Some(now_ms() + 1000),
        ..JobRequest::prompt("slow job")
    };
    producer.submit(job).await.expect("published");
    let r = sb.results().await.wait("late", Some(Duration::from_secs(30))).await.expect("result");
    assert_eq!(r.status, Some(JobStatus::Expired), "{r:?}");
    assert!(r.completion_tokens.unwrap_or(0) > 0, "keeps what it generated: {r:?}");
    producer.close().await;
    drop(worker);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_result_is_answered_unknown_not_waited_for_forever() {
    let sb = Sandbox::new("ttl");
    let worker = sb.worker_with_env(&["--engine", "echo", "--result-ttl-secs", "1"], &[]);
    let producer = sb.producer().await;
    producer.submit(JobRequest { id: Some("brief".into()), ..JobRequest::prompt("short lived") }).await.expect("published");
    let r = sb.results().await.wait("brief", Some(Duration::from_secs(30))).await.expect("result");
    assert_eq!(r.status, Some(JobStatus::Done));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = Instant::now();
    let out = sb.genq().args(["wait", "brief"]).output().expect("genq wait");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown or its result expired"));
    assert!(started.elapsed() < Duration::from_secs(20), "answered, not a hang");
    let out = sb.genq().args(["get", "brief"]).output().expect("genq get");
    assert_eq!(out.status.code(), Some(2));
    producer.close().await;
    drop(worker);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_bad_job_fails_naming_its_field_and_the_worker_goes_on() {
    let sb = Sandbox::new("badjobs");
    let worker = sb.worker(&["--engine", "echo", "--max-prompt-bytes", "20000"]);
    worker.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let m = &sb.model;
    let too_many_stops: Vec<String> = (0..9).map(|i| format!("s{i}")).collect();
    let long_prompt = "w ".repeat(8190);
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty", r#"{"id":"empty","prompt":""}"#.into(), "prompt"),
        ("stops", serde_json::json!({"id":"stops","prompt":"x","stop":too_many_stops}).to_string(), "stop"),
        ("temp", r#"{"id":"temp","prompt":"x","temperature":-1}"#.into(), "temperature"),
        ("topp", r#"{"id":"topp","prompt":"x","top_p":0}"#.into(), "top_p"),
        ("maxnew", r#"{"id":"maxnew","prompt":"x","max_new_tokens":0}"#.into(), "max_new_tokens"),
        ("both", r#"{"id":"both","prompt":"x","messages":[{"role":"user","content":"y"}]}"#.into(), "messages"),
        ("kind", r#"{"id":"kind","prompt":"x","kind":"translate"}"#.into(), "kind"),
        ("version", r#"{"v":2,"id":"version","prompt":"x"}"#.into(), "v"),
        ("model", r#"{"id":"model","prompt":"x","model":"not-this-worker"}"#.into(), "model"),
        ("huge", format!(r#"{{"id":"huge","prompt":"{}","model":"{m}"}}"#, "y".repeat(30000)), "prompt"),
        ("context", format!(r#"{{"id":"context","prompt":"{long_prompt}","max_new_tokens":100,"model":"{m}"}}"#), "max_new_tokens"),
    ];
    for (_, body, _) in &cases {
        sb.publish_raw(body.as_bytes(), None).await;
    }
    sb.publish_raw(format!(r#"{{"id":"fine","prompt":"still fine","model":"{m}"}}"#).as_bytes(), None).await;
    let client = sb.results().await;
    for (id, _, field) in &cases {
        let r = client.wait(id, Some(Duration::from_secs(30))).await.expect("result");
        assert_eq!(r.status, Some(JobStatus::Failed), "{id}: {r:?}");
        let error = r.error.unwrap_or_default();
        assert!(error.contains(field), "{id}: error should name `{field}`: {error}");
    }
    let fine = client.wait("fine", Some(Duration::from_secs(30))).await.expect("result");
    assert_eq!(fine.status, Some(JobStatus::Done), "the worker goes on after bad jobs");
    drop(worker);
    sb.cleanup().await;
}
