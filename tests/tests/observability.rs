//! Observability against a real Prometheus (Debian's `prometheus` package; scripts/prometheus.sh):
//! a worker under load and a producer's metrics are scraped, then every PromQL expression of the
//! Grafana dashboard must return data; `promtool` accepts deploy/prometheus.yml; `genq status`
//! shows queues, workers and a batch.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use genq_producer::ProducerMetrics;
use genq_shared::JobRequest;
use genq_tests::prometheus::{self, Prometheus, ScrapeJob};
use genq_tests::{workspace_root, Sandbox, Worker};

/// Window substituted for Grafana's `$__rate_interval`: covers the whole load run.
const RATE_INTERVAL: &str = "1m";
/// Substituted for `$__interval` (heatmap buckets).
const INTERVAL: &str = "30s";
/// Substituted for `$__range`.
const RANGE: &str = "5m";

fn metrics_addr(worker: &Worker) -> String {
    worker.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    worker.metrics_addr().expect("worker logs its metrics address")
}

/// Serves `metrics` on a loopback port, as the gateway's `/metrics` does; returns the address.
async fn serve_producer_metrics(metrics: ProducerMetrics) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = metrics.render();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

/// Every PromQL expression of a dashboard (panel targets, nested rows too) with its panel title,
/// and the `(name, all-value)` of its template variables.
/// `(label, text)` pairs: a panel title and its expression, or a variable and its all-value.
type Labelled = Vec<(String, String)>;

fn dashboard_queries(dashboard: &serde_json::Value) -> (Labelled, Labelled) {
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((title.clone(), expr.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut queries = Vec::new();
    walk(&dashboard["panels"], &mut queries);
    let vars = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().unwrap_or_default().to_string(), v["allValue"].as_str().unwrap_or(".*").to_string()))
        .collect();
    (queries, vars)
}

/// Substitutes Grafana's built-in intervals and the template variables (as "All").
fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut out = expr.to_string();
    for (name, value) in [("__rate_interval", RATE_INTERVAL), ("__interval", INTERVAL), ("__range", RANGE)] {
        out = out.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    out
}

/// Evaluates `expr` at `time`; an error, an empty result or one with no finite value (what
/// Grafana draws as "No data") is a failure.
fn has_data(prom: &Prometheus, expr: &str, time: f64) -> Result<usize, String> {
    let result = prom.query(expr, time)?;
    if result.is_empty() {
        return Err("empty result".into());
    }
    let finite = result
        .iter()
        .filter(|r| r["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(f64::is_finite))
        .count();
    if finite == 0 {
        return Err(format!("no finite value: {}", serde_json::Value::Array(result)));
    }
    Ok(finite)
}

fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Waits until `expr` evaluates to `want` (the scrapes after the load have landed).
fn wait_for_value(prom: &Prometheus, expr: &str, want: f64, timeout: Duration) {
    let until = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < until {
        match prom.query(expr, now_secs()) {
            Ok(r) if r.first().and_then(|s| s["value"][1].as_str()).and_then(|v| v.parse::<f64>().ok()) == Some(want) => return,
            other => last = format!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{expr} never reached {want}; last answer {last}\ntargets: {:?}\n{}", prom.targets(), prom.log());
}

fn job(i: usize, batch: &str) -> JobRequest {
    let words: Vec<String> = (0..(4 + i % 9)).map(|w| format!("w{i}x{w}")).collect();
    serde_json::from_value(serde_json::json!({
        "prompt": words.join(" "),
        "max_new_tokens": 8 + (i % 5) * 8,
        "batch": batch,
    }))
    .expect("job")
}

/// Publishes `waves` waves of jobs (plus one invalid job and one non-job per wave) and waits for
/// every result; returns the ids of the valid jobs.
async fn load(sb: &Sandbox, producer: &genq_producer::Producer, waves: usize, per_wave: usize, batch: &str) -> Vec<String> {
    let results = sb.results().await;
    let mut ids = Vec::new();
    for wave in 0..waves {
        let jobs: Vec<JobRequest> = (0..per_wave).map(|i| job(wave * per_wave + i, batch)).collect();
        let published: Vec<String> =
            producer.submit_many(jobs, |_| {}).await.into_iter().map(|r| r.expect("every job is confirmed")).collect();
        sb.publish_raw(format!(r#"{{"id":"bad-{wave}-{batch}","prompt":"x","top_p":5,"batch":"{batch}"}}"#).as_bytes(), None).await;
        sb.publish_raw(b"this is not a job", Some(&format!("junk-{wave}"))).await;
        for id in &published {
            let r = results.wait(id, Some(Duration::from_secs(60))).await.expect("job finishes");
            assert_eq!(r.status, Some(genq_shared::JobStatus::Done), "{r:?}");
        }
        ids.extend(published);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    ids
}

#[test]
fn deploy_prometheus_config_passes_promtool() {
    let config = workspace_root().join("deploy/prometheus.yml");
    let text = std::fs::read_to_string(&config).expect("deploy/prometheus.yml exists");
    assert!(text.contains("dns_sd_configs"), "scaled compose workers are found by DNS service discovery");
    if let Err(out) = prometheus::check_config(&config) {
        panic!("promtool check config deploy/prometheus.yml failed:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_panel_shows_data_in_a_real_prometheus() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("grafana/dashboards/genq.json")).expect("grafana/dashboards/genq.json"),
    )
    .expect("dashboard is JSON");
    let (queries, vars) = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "the dashboard has its panels: {}", queries.len());

    let sb = Sandbox::new("obs");
    let worker = sb.worker(&["--engine", "echo", "--max-batch-size", "8", "--batch-wait-ms", "20"]);
    let worker_addr = metrics_addr(&worker);
    let producer_metrics = ProducerMetrics::new().expect("producer metrics");
    let producer = sb.producer().await.with_metrics(producer_metrics.clone());
    let gateway_addr = serve_producer_metrics(producer_metrics).await;
    let prom = tokio::task::block_in_place(|| {
        let prom = Prometheus::start(&[
            ScrapeJob { name: "genq-worker", targets: vec![worker_addr.clone()] },
            ScrapeJob { name: "genq-gateway", targets: vec![gateway_addr.clone()] },
        ]);
        // Prometheus hands targets to its scrapers up to 5 s after start: the load must come after
        // the first scrapes, or rates see no increase.
        wait_for_value(&prom, "sum(up)", 2.0, Duration::from_secs(30));
        prom
    });

    let waves = 8;
    let per_wave = 40;
    let ids = load(&sb, &producer, waves, per_wave, "obs").await;
    assert_eq!(ids.len(), waves * per_wave);
    let done = ids.len() as f64;
    tokio::task::block_in_place(|| {
        // The last scrapes must hold the whole run, and the queue poll (every 5 s) must have run
        // since the first job arrived.
        wait_for_value(&prom, r#"sum(genq_jobs_total{status="done"})"#, done, Duration::from_secs(20));
        wait_for_value(&prom, r#"sum(genq_published_total{outcome="confirmed"})"#, done, Duration::from_secs(20));
        wait_for_value(&prom, "count(genq_queue_backlog_tokens)", 3.0, Duration::from_secs(20));
        // Idle again: gauges fall back, they do not keep the last step's values.
        wait_for_value(&prom, "sum(genq_running_sequences) + sum(genq_kv_cache_tokens) + sum(genq_waiting_tokens)", 0.0, Duration::from_secs(20));
        let time = now_secs();

        let mut failures = Vec::new();
        for (title, expr) in &queries {
            let q = substitute(expr, &vars);
            if q.contains('$') {
                failures.push(format!("{title}: unsubstituted variable in {q}"));
                continue;
            }
            if let Err(e) = has_data(&prom, &q, time) {
                failures.push(format!("{title}: {q}: {e}"));
            }
        }
        for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
            // label_values(metric, label): the variable lists something only if `metric` has series.
            let def = v["definition"].as_str().unwrap_or_default();
            if let Some(metric) = def.strip_prefix("label_values(").and_then(|r| r.split(',').next()) {
                if let Err(e) = has_data(&prom, metric, time) {
                    failures.push(format!("variable {}: {metric}: {e}", v["name"]));
                }
            }
        }
        assert!(failures.is_empty(), "dashboard queries without data:\n{}", failures.join("\n"));

        // The checker itself fails on a panel with nothing to show.
        assert!(has_data(&prom, "sum(rate(genq_no_such_metric_total[1m]))", time).is_err());
        assert!(has_data(&prom, "histogram_quantile(0.5, sum by (le) (rate(genq_no_such_seconds_bucket[1m])))", time).is_err());

        // Numbers that must be real, not merely present.
        let value = |expr: &str| -> f64 {
            prom.query(expr, time)
                .ok()
                .and_then(|r| r.first().and_then(|s| s["value"][1].as_str()).and_then(|v| v.parse().ok()))
                .unwrap_or(f64::NAN)
        };
        assert!(value("sum(rate(genq_generated_tokens_total[1m]))") > 0.0, "tokens/s");
        assert_eq!(value("sum(genq_dead_lettered_total)"), waves as f64, "one non-job per wave");
        assert_eq!(value(r#"sum(genq_jobs_total{status="failed"})"#), waves as f64, "one invalid job per wave");
        assert_eq!(value("count(genq_worker_info)"), 1.0);
        assert!(value("sum(genq_batch_size_sum) / sum(genq_batch_size_count)") > 1.0, "jobs were batched together");
    });

    let metrics = prometheus::http_get(&worker_addr, "/metrics").map(|(_, b)| b).unwrap_or_default();
    println!("--- /metrics after the load run ---\n{metrics}");
    drop(prom);
    drop(worker);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn genq_status_shows_queues_workers_and_batch_progress() {
    let sb = Sandbox::new("status");
    let worker = sb.worker(&["--engine", "echo"]);
    let worker_addr = metrics_addr(&worker);
    let producer = sb.producer().await;
    let ids = load(&sb, &producer, 1, 30, "stat-batch").await;
    assert_eq!(ids.len(), 30);
    let out = sb
        .genq()
        .args(["status", "--worker", &worker_addr, "--batch", "stat-batch", "--interval", "0.5"])
        .output()
        .expect("run genq status");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("--- genq status ---\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "genq status failed");
    let normal = format!("genq.jobs.{}", sb.model);
    let line = stdout.lines().find(|l| l.starts_with(&format!("{normal} "))).expect("the model's queue is listed");
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols.get(1), Some(&"0"), "nothing ready: {line}");
    assert_eq!(cols.last(), Some(&"1"), "one consumer: the worker: {line}");
    assert!(stdout.contains(&format!("{normal}.high")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("genq.dead ")), "{stdout}");
    let wline = stdout.lines().find(|l| l.starts_with(&worker_addr)).expect("the worker is listed");
    assert!(wline.contains(&sb.model), "its model: {wline}");
    assert!(wline.split_whitespace().nth_back(2) == Some("30"), "30 jobs done: {wline}");
    assert!(wline.split_whitespace().next_back() == Some("0.0"), "the echo engine has no prefix cache: {wline}");
    assert!(stdout.contains("fleet: 1 of 1 workers up"), "{stdout}");
    assert!(stdout.contains("batch stat-batch: 31 finished: done 30, failed 1"), "{stdout}");
    drop(worker);
    sb.cleanup().await;
}
