//! The chaos soak: jobs are published and read continuously against a real three-node RabbitMQ
//! cluster and a private Redis (append-only file) while a seeded random schedule kills workers
//! (SIGKILL), drains them (SIGTERM), kills and restarts a RabbitMQ node, restarts Redis, and
//! injects malformed messages, invalid jobs and poison jobs. Exited workers are started again
//! under the same name, as a restart policy does. It prints one line — confirmed, done, failed by
//! reason, lost, duplicate executions, longest wait — and asserts that nothing is lost and every
//! failure is explained (poison or invalid).
//!
//! `GENQ_CHAOS_SECONDS` (default 40) sets how long faults are injected (at least one round of
//! every kind), `GENQ_CHAOS_SEED` the schedule; `scripts/chaos.sh SECONDS [SEED]` runs it alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use genq_shared::JobRequest;
use genq_tests::rabbit_cluster::RabbitCluster;
use genq_tests::redis_server::PrivateRedis;
use genq_tests::tally::{jobs, publish_through_nacks, tally_now};
use genq_tests::{Sandbox, Worker};

/// The word that makes the echo engine abort its process (a job that crashes the model).
const POISON: &str = "POISON";
/// Workers in the fleet.
const WORKERS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillWorker,
    DrainWorker,
    RestartRabbitNode,
    RestartRedis,
    Malformed,
    Poison,
}

const FAULTS: [Fault; 6] = [Fault::KillWorker, Fault::DrainWorker, Fault::RestartRabbitNode, Fault::RestartRedis, Fault::Malformed, Fault::Poison];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Worker `i`, always under the same name (`--worker-id`), as a pod or a container keeps it.
fn start_worker(sb: &Sandbox, i: usize) -> Worker {
    let name = format!("chaos-w{i}");
    sb.worker_with_env(
        &["--engine", "echo", "--worker-id", &name, "--max-batch-size", "32", "--prefetch", "64"],
        &[("GENQ_ECHO_STEP_MS", "2"), ("GENQ_ECHO_CRASH_ON", POISON)],
    )
}

/// Starts again every worker that has exited (killed, drained, or aborted by a poison job).
fn supervise(sb: &Sandbox, workers: &mut [Worker], restarts: &mut usize) {
    for (i, w) in workers.iter_mut().enumerate() {
        if w.exit_code().is_some() {
            *w = start_worker(sb, i);
            *restarts += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_soak_loses_no_job_and_explains_every_failure() {
    let seconds: u64 = env_or("GENQ_CHAOS_SECONDS", 40);
    let seed: u64 = env_or("GENQ_CHAOS_SEED", 7);
    let mut cluster = RabbitCluster::start();
    let mut redis = PrivateRedis::start(&[]);
    let sb = Sandbox::new("chaos").with_amqp(&cluster.amqp_urls().join(",")).with_redis(&redis.url());
    let mut workers: Vec<Worker> = (0..WORKERS).map(|i| start_worker(&sb, i)).collect();
    for w in &workers {
        w.wait_ready(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    }

    // The publisher: batches of jobs through one producer, which reconnects and re-publishes
    // across the faults; it keeps the ids the broker confirmed.
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed: Arc<Mutex<Vec<String>>> = Arc::default();
    let publisher = {
        let (sb, stop, confirmed) = (sb.clone(), stop.clone(), confirmed.clone());
        tokio::spawn(async move {
            let producer = sb.producer().await;
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) {
                let (ids, _) = publish_through_nacks(&producer, jobs(&format!("j{round}"), 50, 5)).await;
                confirmed.lock().expect("ids").extend(ids);
                round += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            producer.close().await;
        })
    };

    let mut rng = StdRng::seed_from_u64(seed);
    let mut schedule: Vec<Fault> = Vec::new();
    let (mut poison, mut invalid, mut restarts, mut injected) = (Vec::new(), Vec::new(), 0usize, Vec::new());
    let until = Instant::now() + Duration::from_secs(seconds);
    // At least one round of every fault, however short the soak.
    while Instant::now() < until || injected.len() < FAULTS.len() {
        let pause = Duration::from_millis(rng.random_range(1500..4000));
        let wake = Instant::now() + pause;
        while Instant::now() < wake {
            tokio::task::block_in_place(|| supervise(&sb, &mut workers, &mut restarts));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Every fault once per round, in a seeded order.
        if schedule.is_empty() {
            schedule = FAULTS.to_vec();
            schedule.shuffle(&mut rng);
        }
        let fault = schedule.pop().expect("a fault");
        injected.push(fault);
        match fault {
            Fault::KillWorker => workers[rng.random_range(0..WORKERS)].signal("KILL"),
            Fault::DrainWorker => workers[rng.random_range(0..WORKERS)].signal("TERM"),
            Fault::RestartRabbitNode => {
                let node = rng.random_range(0..3);
                tokio::task::block_in_place(|| {
                    cluster.kill(node);
                    std::thread::sleep(Duration::from_secs(2));
                    cluster.restart(node);
                });
            }
            Fault::RestartRedis => {
                redis.kill();
                tokio::time::sleep(Duration::from_secs(1)).await;
                tokio::task::block_in_place(|| redis.spawn());
            }
            Fault::Malformed => {
                let n = injected.len();
                sb.publish_raw(format!("{{\"prompt\": \"broken {n}").as_bytes(), None).await;
                sb.publish_raw(&[0xff, 0xfe, b'{', 0x80], None).await;
                let id = format!("invalid-{n}");
                sb.publish_raw(format!(r#"{{"id":"{id}","prompt":"x","top_p":5}}"#).as_bytes(), None).await;
                invalid.push(id);
            }
            Fault::Poison => {
                let id = format!("poison-{}", injected.len());
                let job = JobRequest { id: Some(id.clone()), max_new_tokens: Some(5), ..JobRequest::prompt(format!("this one is {POISON}")) };
                let producer = sb.producer().await;
                let (published, _) = publish_through_nacks(&producer, vec![job]).await;
                producer.close().await;
                poison.extend(published);
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    publisher.await.expect("publisher task");

    // Keep restarting workers while the last jobs (and the poison ones, which kill a worker on
    // each solo run) finish.
    let ids: Vec<String> = confirmed.lock().expect("ids").clone();
    let all: Vec<String> = ids.iter().chain(&poison).chain(&invalid).cloned().collect();
    let finish_by = Instant::now() + Duration::from_secs(240);
    let t = loop {
        tokio::task::block_in_place(|| supervise(&sb, &mut workers, &mut restarts));
        // Redis may still be loading after its last restart: ask again until the deadline.
        match tally_now(&sb, &all).await {
            Ok((t, _)) if t.lost == 0 || Instant::now() > finish_by => break t,
            Ok(_) => {}
            Err(e) => assert!(Instant::now() < finish_by, "redis: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let line = t.print(&format!("chaos soak, {seconds} s, seed {seed}, {} faults, {restarts} worker restarts", injected.len()));
    let logs: String = workers.iter().map(|w| w.log_text()).collect::<Vec<_>>().join("\n---\n");
    let tail = &logs[logs.len().saturating_sub(20_000)..];
    assert_eq!(t.lost, 0, "{line}\n{tail}");
    assert_eq!(t.done, ids.len(), "every ordinary job ends done: {line}");
    let explained = [("invalid".to_string(), invalid.len()), ("poison".to_string(), poison.len())].into_iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(t.failed_by_kind, explained, "every failure is a poison or an invalid job: {line}");
    drop(workers);
    sb.cleanup().await;
}
