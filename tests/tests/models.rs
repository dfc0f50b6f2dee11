//! Multi-model routing as a user sees it: `genq models` lists the models that have live workers
//! (and forgets a worker that stopped), and `genq submit` refuses a job for a model nobody
//! serves with a message that says so, against the real RabbitMQ and Redis.

use std::time::{Duration, Instant};

use genq_tests::{unique, Sandbox};

fn models_json(sb: &Sandbox, extra: &[&str]) -> (Vec<serde_json::Value>, String) {
    let out = sb.genq().arg("models").arg("--json").args(extra).output().expect("run genq models");
    assert!(out.status.success(), "genq models failed: {}", String::from_utf8_lossy(&out.stderr));
    let rows = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    (rows, String::from_utf8_lossy(&out.stderr).to_string())
}

fn row<'a>(rows: &'a [serde_json::Value], model: &str) -> Option<&'a serde_json::Value> {
    rows.iter().find(|r| r["model"] == model)
}

#[tokio::test(flavor = "multi_thread")]
async fn genq_models_lists_a_live_worker_and_forgets_it_once_stopped() {
    let sb = Sandbox::new("models");
    let worker = sb.worker(&["--engine", "echo", "--worker-id", "models-w1"]);
    worker.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));

    // The first heartbeat is sent at start; allow for it to land.
    let until = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let (rows, _) = models_json(&sb, &[]);
        if row(&rows, &sb.model).is_some() || Instant::now() > until {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let r = row(&rows, &sb.model).unwrap_or_else(|| panic!("{} not listed: {rows:?}", sb.model));
    assert_eq!(r["workers"], serde_json::json!(["models-w1"]), "{r}");
    assert_eq!(r["consumers"], 1, "RabbitMQ counts the worker's consumer: {r}");
    assert_eq!(r["ready"], 0, "{r}");

    // The table form names the model too.
    let out = sb.genq().arg("models").output().expect("run genq models");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().next().is_some_and(|h| h.starts_with("MODEL")), "{table}");
    assert!(table.contains(&sb.model), "{table}");

    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(30)), Some(Some(0)), "worker exits 0 on SIGTERM:\n{}", worker.log_text());
    let (rows, _) = models_json(&sb, &[]);
    assert!(row(&rows, &sb.model).is_none(), "a stopped worker is still listed: {rows:?}");
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn genq_models_says_when_a_named_model_has_no_queue() {
    let sb = Sandbox::new("models-none");
    let nobody = unique("nobody");
    let (rows, stderr) = models_json(&sb, &["--all", &nobody]);
    let r = row(&rows, &nobody).unwrap_or_else(|| panic!("--all lists named models: {rows:?}"));
    assert_eq!(r["consumers"], serde_json::Value::Null, "{r}");
    assert!(r["workers"].as_array().is_some_and(Vec::is_empty), "{r}");
    assert!(stderr.contains(&format!("{nobody}: no queue")), "{stderr}");
    let (rows, _) = models_json(&sb, &[&nobody]);
    assert!(row(&rows, &nobody).is_none(), "without --all only live models are listed: {rows:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn submitting_a_job_for_a_model_nobody_serves_names_the_model_and_exits_2() {
    let sb = Sandbox::new("unroutable-cli");
    let nobody = unique("nobody");
    let path = genq_tests::scratch_dir().join(format!("{}.jsonl", unique("jobs")));
    std::fs::write(&path, format!("{{\"prompt\":\"hi\",\"model\":\"{nobody}\"}}\n")).expect("write jobs");
    let out = sb.genq().arg("submit").arg(&path).output().expect("run genq submit");
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("published 0 jobs, rejected 1"), "{stderr}");
    assert!(stderr.contains(&format!("line 1: unroutable: no queue for model \"{nobody}\"")), "{stderr}");
    assert!(stderr.contains("start a worker for it"), "the message says what to do: {stderr}");
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_model_update_loses_and_fails_no_job() {
    // The README's procedure: workers of the new version start on the same model name (same
    // queues), then the old ones get SIGTERM and drain, while jobs keep arriving.
    let sb = Sandbox::new("rolling");
    let old_flags = ["--engine", "echo", "--worker-id", "v1", "--max-batch-size", "2", "--prefetch", "4"];
    let old = sb.worker(&old_flags);
    old.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let producer = sb.producer().await;
    let results = sb.results().await;
    let job = |i: usize| {
        let mut j = genq_shared::JobRequest::prompt(format!("job {i} alpha beta gamma"));
        j.max_new_tokens = Some(24);
        j.min_new_tokens = Some(24);
        j
    };
    let before: Vec<String> =
        producer.submit_many((0..300).map(job).collect(), |_| {}).await.into_iter().map(|r| r.expect("published")).collect();

    let new = sb.worker(&["--engine", "echo", "--worker-id", "v2", "--max-batch-size", "2", "--prefetch", "4"]);
    new.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    old.signal("TERM");
    let after: Vec<String> =
        producer.submit_many((300..600).map(job).collect(), |_| {}).await.into_iter().map(|r| r.expect("published")).collect();
    assert_eq!(old.wait_exit(Duration::from_secs(60)), Some(Some(0)), "old worker drains and exits 0:\n{}", old.log_text());

    let mut by_worker = std::collections::BTreeMap::<String, usize>::new();
    for (batch, ids) in [("before", &before), ("after", &after)] {
        results
            .wait_many(ids, Some(Duration::from_secs(120)), |r| {
                let r = r.unwrap_or_else(|e| panic!("a job {batch} the swap was lost: {e}"));
                assert_eq!(r.status, Some(genq_shared::JobStatus::Done), "a job {batch} the swap did not succeed: {r:?}");
                let w = r.worker.clone().unwrap_or_default();
                *by_worker.entry(w).or_default() += 1;
            })
            .await
            .expect("results");
    }
    assert_eq!(by_worker.values().sum::<usize>(), 600, "{by_worker:?}");
    assert!(by_worker.get("v2").copied().unwrap_or(0) >= 300, "{by_worker:?}");
    producer.close().await;
    drop(new);
    sb.cleanup().await;
}
