//! Scaling on one host, measured: 1, 2 and 3 `genq-worker` processes on the same queue, each
//! run on a fresh queue with the same jobs. Prints throughput per worker count and how many jobs
//! each worker did, and checks that the work spread (no worker idle while others had a backlog)
//! and that no job was lost. The echo engine runs in the normal suite; the real model is
//! `#[ignore]`d (minutes on 2 cores): `scripts/bench-scaling.sh` runs both with their tables.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use genq_shared::{JobRequest, JobStatus};
use genq_tests::{default_model, Sandbox};

/// One measured run.
struct Run {
    workers: usize,
    jobs: usize,
    wall: Duration,
    tokens: u64,
    per_worker: BTreeMap<String, usize>,
}

impl Run {
    fn jobs_per_sec(&self) -> f64 {
        self.jobs as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    fn tokens_per_sec(&self) -> f64 {
        self.tokens as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// What a measurement runs.
struct Plan<'a> {
    tag: &'a str,
    /// Extra `genq-worker` flags (engine, model, batch).
    worker_flags: Vec<String>,
    /// Environment of each worker (thread counts).
    worker_env: Vec<(&'a str, &'a str)>,
    jobs: usize,
    new_tokens: u32,
    ready_timeout: Duration,
    run_timeout: Duration,
}

async fn measure(plan: &Plan<'_>, workers: usize) -> Run {
    let sb = Sandbox::new(plan.tag);
    let mut procs = Vec::new();
    for i in 0..workers {
        let id = format!("w{i}");
        let mut flags: Vec<&str> = vec!["--worker-id", &id];
        flags.extend(plan.worker_flags.iter().map(String::as_str));
        procs.push(sb.worker_with_env(&flags, &plan.worker_env));
    }
    for w in &procs {
        w.wait_ready(plan.ready_timeout).unwrap_or_else(|e| panic!("{e}"));
    }
    let producer = sb.producer().await;
    let results = sb.results().await;
    let jobs: Vec<JobRequest> = (0..plan.jobs)
        .map(|i| {
            let mut j = JobRequest::prompt(format!("job {i}: the quick brown fox jumps over the lazy dog"));
            j.max_new_tokens = Some(plan.new_tokens);
            j.min_new_tokens = Some(plan.new_tokens);
            j.temperature = Some(0.0);
            j
        })
        .collect();
    let started = Instant::now();
    let ids: Vec<String> = producer
        .submit_many(jobs, |_| {})
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("publish refused: {e}")))
        .collect();
    let mut per_worker: BTreeMap<String, usize> = (0..workers).map(|i| (format!("w{i}"), 0)).collect();
    let mut tokens = 0u64;
    let mut finished = 0usize;
    results
        .wait_many(&ids, Some(plan.run_timeout), |r| {
            let r = r.unwrap_or_else(|e| panic!("a job did not finish: {e}"));
            assert_eq!(r.status, Some(JobStatus::Done), "{r:?}");
            tokens += r.completion_tokens.unwrap_or(0);
            *per_worker.entry(r.worker.clone().unwrap_or_default()).or_default() += 1;
            finished += 1;
        })
        .await
        .expect("wait for results");
    let wall = started.elapsed();
    assert_eq!(finished, plan.jobs, "every job came back");
    producer.close().await;
    drop(procs);
    sb.cleanup().await;
    Run { workers, jobs: plan.jobs, wall, tokens, per_worker }
}

fn report(title: &str, runs: &[Run]) {
    println!("\n{title}");
    println!("| workers | jobs | wall s | jobs/s | tokens/s | speed-up | jobs per worker |");
    println!("|---|---|---|---|---|---|---|");
    let base = runs.first().map(Run::jobs_per_sec).unwrap_or(1.0);
    for r in runs {
        let spread: Vec<String> = r.per_worker.values().map(usize::to_string).collect();
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.1} | {:.2}x | {} |",
            r.workers,
            r.jobs,
            r.wall.as_secs_f64(),
            r.jobs_per_sec(),
            r.tokens_per_sec(),
            r.jobs_per_sec() / base,
            spread.join(" / ")
        );
    }
}

/// Every worker took a fair part: at least `min_share` of an even split, and no job is
/// attributed to a worker that was not started.
fn assert_spread(runs: &[Run], min_share: f64) {
    for r in runs {
        assert_eq!(r.per_worker.len(), r.workers, "results name unknown workers: {:?}", r.per_worker);
        let even = r.jobs as f64 / r.workers as f64;
        for (w, n) in &r.per_worker {
            assert!(*n as f64 >= even * min_share, "{} workers: {w} did {n} of {} jobs (even share {even:.0}): {:?}", r.workers, r.jobs, r.per_worker);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_two_and_three_echo_workers_share_one_queue_fairly() {
    let plan = Plan {
        tag: "scale-echo",
        // A batch of 4 and a small prefetch keep each worker busy for a while per job, so the
        // queue (not one worker's prefetch buffer) holds the backlog.
        worker_flags: ["--engine", "echo", "--max-batch-size", "4", "--prefetch", "8"].map(String::from).to_vec(),
        worker_env: vec![],
        jobs: 2000,
        new_tokens: 32,
        ready_timeout: Duration::from_secs(30),
        run_timeout: Duration::from_secs(120),
    };
    let mut runs = Vec::new();
    for n in 1..=3 {
        runs.push(measure(&plan, n).await);
    }
    report("echo engine, 2000 jobs x 32 tokens, max_batch_size 4, prefetch 8", &runs);
    assert_spread(&runs, 0.5);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "real model, minutes on 2 cores: scripts/bench-scaling.sh"]
async fn one_two_and_three_model_workers_share_one_queue_fairly() {
    let model = default_model();
    let model = model.to_string_lossy().to_string();
    let plan = Plan {
        tag: "scale-model",
        worker_flags: vec!["--model-path".into(), model, "--max-batch-size".into(), "8".into(), "--prefetch".into(), "8".into()],
        // One core per worker, so the numbers say what another worker (or another core) buys.
        worker_env: vec![("RAYON_NUM_THREADS", "1"), ("CANDLE_NUM_THREADS", "1")],
        jobs: 48,
        new_tokens: 16,
        ready_timeout: Duration::from_secs(120),
        run_timeout: Duration::from_secs(600),
    };
    let mut runs = Vec::new();
    for n in 1..=3 {
        runs.push(measure(&plan, n).await);
    }
    report("SmolLM2-135M Q4_1, 48 jobs x 16 tokens, max_batch_size 8, 1 thread per worker", &runs);
    assert_spread(&runs, 0.5);
}
