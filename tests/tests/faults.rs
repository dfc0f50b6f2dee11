//! The fault suite: real faults injected into real RabbitMQ, Redis and worker processes. Each
//! scenario publishes uniquely identified jobs, injects its fault, waits, then counts what came
//! back and prints one line — `scenario: N confirmed, N done, N failed, N lost,
//! N duplicate-executions` — and asserts that no confirmed job is lost.
//!
//! The echo engine stands in for the model here (faults are about the plumbing); its test-only
//! hooks make each step take a few ms (`GENQ_ECHO_STEP_MS`) so work is in flight when the fault
//! hits, and abort the process on a poison word (`GENQ_ECHO_CRASH_ON`). Scenarios run one at a
//! time: two of them restart shared services. Jobs are published as the producer does by
//! default, packed into bulk (v2) messages; the worker kill and the poison job run with one v1
//! message per job as well.

use std::process::Command;
use std::time::{Duration, Instant};

use genq_shared::{JobRequest, JobStatus};
use genq_tests::redis_server::PrivateRedis;
use genq_tests::tally::{done_ids, jobs, publish, publish_v1, tally, until_done, Tally};
use genq_tests::{scratch_dir, DeadLetterWatch, Sandbox, Worker};

/// Scenarios restart RabbitMQ or kill workers: never two at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn echo_worker(sb: &Sandbox, step_ms: &str, extra: &[&str]) -> Worker {
    let mut flags = vec!["--engine", "echo", "--max-batch-size", "32", "--prefetch", "64"];
    flags.extend_from_slice(extra);
    let w = sb.worker_with_env(&flags, &[("GENQ_ECHO_STEP_MS", step_ms)]);
    w.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    w
}


#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_batch_twice_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::new("kill");
    let ids = publish(&sb, jobs("k", 600, 20)).await;
    sigkill_twice(&sb, &ids, "sigkill worker mid-batch (x2), bulk messages").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_batch_twice_loses_nothing_with_one_message_per_job() {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::new("kill-v1");
    let ids = publish_v1(&sb, jobs("k", 600, 20)).await;
    sigkill_twice(&sb, &ids, "sigkill worker mid-batch (x2), v1 messages").await;
}

/// Kills the worker twice while the 600 jobs `ids` run, then lets a third finish them.
async fn sigkill_twice(sb: &Sandbox, ids: &[String], scenario: &str) {
    for round in 0..2 {
        let w = echo_worker(sb, "5", &[]);
        until_done(sb, ids, 100 * (round + 1)).await;
        w.signal("KILL");
        drop(w);
    }
    let _last = echo_worker(sb, "1", &[]);
    let t = tally(sb, ids, Duration::from_secs(120)).await;
    t.print(scenario);
    assert_eq!(t.lost, 0, "{t:?}");
    assert_eq!(t.done, 600, "{t:?}");
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_drains_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::new("term");
    let ids = publish(&sb, jobs("t", 500, 20)).await;
    let first = echo_worker(&sb, "5", &["--shutdown-grace-secs", "20"]);
    until_done(&sb, &ids, 50).await;
    first.signal("TERM");
    let code = first.wait_exit(Duration::from_secs(30)).expect("worker exits within its grace period");
    assert_eq!(code, Some(0), "{}", first.log_text());
    let _second = echo_worker(&sb, "1", &[]);
    let t = tally(&sb, &ids, Duration::from_secs(120)).await;
    t.print("sigterm during load");
    assert_eq!((t.lost, t.done), (0, 500), "{t:?}");
    sb.cleanup().await;
}

/// Runs `rabbitmqctl`; panics with its output when it fails, else returns what it printed.
fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl is installed with RabbitMQ");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_restart_while_publishing_and_consuming_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::new("mqrestart");
    let worker = echo_worker(&sb, "3", &[]);
    let all = jobs("r", 1500, 10);
    let (first, second) = all.split_at(500);
    let mut ids = publish(&sb, first.to_vec()).await;
    // Publish the rest in a stream of small bursts while the broker goes down and comes back: the
    // producer must retry (a burst in bulk messages is one or two publishes).
    let publisher = {
        let sb = sb.clone();
        let rest = second.to_vec();
        tokio::spawn(async move {
            let producer = sb.producer().await;
            let mut ids = Vec::new();
            for burst in rest.chunks(25) {
                ids.extend(producer.submit_many(burst.to_vec(), |_| {}).await.into_iter().filter_map(Result::ok));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            producer.close().await;
            ids
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    ids.extend(publisher.await.expect("publisher task"));
    let t = tally(&sb, &ids, Duration::from_secs(180)).await;
    t.print("restart RabbitMQ");
    assert_eq!(t.confirmed, 1500, "every publish is confirmed after retries: {t:?}");
    assert_eq!((t.lost, t.done), (0, 1500), "{t:?}\n{}", worker.log_text());
    let reconnected = || worker.metric("genq_reconnects_total{target=\"amqp\"}").unwrap_or(0.0) >= 1.0;
    eventually("the outage is counted in metrics", Duration::from_secs(30), reconnected).await;
    assert!(worker.log_text().contains("reconnected to RabbitMQ"), "the outage is visible in the log");
    drop(worker);
    sb.cleanup().await;
}

/// RabbitMQ closes the producer's connection (as a broker restart or a network cut does) while
/// a burst of publishes is unconfirmed: those jobs are published again on a new connection,
/// counted in `genq_publish_retries_total`, and every job still ends `done` exactly once. One
/// message per job, so the burst lasts long enough to be cut (bulk messages re-publish the same
/// way: the jobs of a lost message are packed again).
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_closed_under_unconfirmed_publishes_republishes_them() {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::new("republish");
    let worker = echo_worker(&sb, "1", &[]);
    let metrics = genq_producer::metrics::ProducerMetrics::new().expect("metrics");
    let producer = sb.producer_v1().await.with_metrics(metrics.clone());
    // The producer's connection, found before publishing starts (`rabbitmqctl` takes a second).
    let listing = rabbitmqctl(&["list_connections", "pid", "client_properties", "-q", "--no-table-headers"]);
    let pids: Vec<String> = listing.lines().filter(|l| l.contains("genq-producer")).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect();
    assert!(!pids.is_empty(), "the producer's connection is listed: {listing}");
    let all = jobs("u", 40_000, 1);
    let publisher = tokio::spawn(async move {
        let out = producer.submit_many(all, |_| {}).await;
        producer.close().await;
        out
    });
    // Close it from the broker side once publishes are in flight.
    let until = Instant::now() + Duration::from_secs(30);
    let mut closed = false;
    while !closed && Instant::now() < until && !publisher.is_finished() {
        if metrics.published.with_label_values(&["confirmed"]).get() > 500 {
            for pid in &pids {
                rabbitmqctl(&["close_connection", pid, "test: connection dropped under unconfirmed publishes"]);
            }
            closed = true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(closed, "found and closed the producer's connection while it published");
    let results = publisher.await.expect("publisher task");
    let ids: Vec<String> = results.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
    assert_eq!(ids.len(), 40_000, "every job is confirmed after the re-publish: {:?}", results.iter().find(|r| r.is_err()));
    let retries = metrics.publish_retries.get();
    let t = tally(&sb, &ids, Duration::from_secs(180)).await;
    t.print(&format!("connection closed under unconfirmed publishes ({retries} re-published)"));
    assert!(retries >= 1, "the jobs lost unconfirmed were published again and counted");
    assert_eq!((t.lost, t.done, t.failed), (0, 40_000, 0), "{t:?}\n{}", worker.log_text());
    assert!(metrics.render().contains(&format!("genq_publish_retries_total {retries}")), "exported as a metric");
    drop(worker);
    sb.cleanup().await;
}

/// Stops or restarts (`action`: `stop_server`, `restart_server`) the Ra server behind a quorum
/// queue of vhost `/` on this node: stopped, the queue exists but cannot be consumed from, and
/// RabbitMQ answers a `basic.consume` by closing the connection with INTERNAL_ERROR, as it does
/// for a just-declared queue whose replica is not running yet.
fn quorum_replica(action: &str, queue: &str) {
    let expr = format!(
        "{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"/\">>, queue, <<\"{queue}\">>)), \
         {{Name, _}} = amqqueue:get_pid(Q), ok = ra:{action}(quorum_queues, {{Name, node()}})."
    );
    rabbitmqctl(&["eval", &expr]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_started_while_its_queue_is_unavailable_waits_for_it() {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::new("qqdown");
    let ids = publish(&sb, jobs("q", 200, 3)).await;
    let high = genq_shared::topology::queue_name(&sb.model, genq_shared::Priority::High);
    quorum_replica("stop_server", &high);
    let worker = sb.worker(&["--engine", "echo"]);
    let refused = worker.wait_for_log("failed the worker's setup on its side", Duration::from_secs(30));
    let ready_while_down = worker.log_text().contains(genq_worker::process::READY_LINE);
    quorum_replica("restart_server", &high);
    assert!(refused, "the worker met the unavailable queue:\n{}", worker.log_text());
    assert!(!ready_while_down, "not ready while its queue cannot be consumed:\n{}", worker.log_text());
    worker.wait_ready(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let t = tally(&sb, &ids, Duration::from_secs(60)).await;
    t.print("quorum queue unavailable at worker start");
    assert_eq!((t.lost, t.done), (0, 200), "{t:?}\n{}", worker.log_text());
    drop(worker);
    sb.cleanup().await;
}

/// Redis is killed (SIGKILL) while workers write, and restarted: returns the jobs done before the
/// kill, and the tally after the restart.
async fn kill_redis_while_workers_write(tag: &str, redis_flags: &[&str]) -> (Vec<String>, Vec<String>, Tally) {
    let mut redis = PrivateRedis::start(redis_flags);
    let sb = Sandbox::new(tag).with_redis(&redis.url());
    let ids = publish(&sb, jobs("d", 800, 10)).await;
    let worker = echo_worker(&sb, "3", &[]);
    until_done(&sb, &ids, 100).await;
    // The worker is frozen while the stored results are listed and Redis is killed, so that the
    // list is exactly what Redis held when it died (no write lands in between).
    worker.signal("STOP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = done_ids(&sb, &ids).await;
    redis.kill();
    worker.signal("CONT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.spawn();
    let t = tally(&sb, &ids, Duration::from_secs(120)).await;
    assert!(worker.metric("genq_reconnects_total{target=\"redis\"}").unwrap_or(0.0) >= 1.0, "the outage is counted");
    let after = done_ids(&sb, &ids).await;
    drop(worker);
    sb.cleanup().await;
    (before, after, t)
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_with_persistence_loses_no_result() {
    let _serial = SERIAL.lock().await;
    // The private Redis writes an append-only file, fsynced on every write.
    let (before, after, t) = kill_redis_while_workers_write("rdaof", &[]).await;
    t.print(&format!("kill -9 Redis with appendonly yes ({} results stored before)", before.len()));
    assert_eq!((t.lost, t.done), (0, 800), "{t:?}");
    assert!(before.iter().all(|id| after.contains(id)), "every result stored before the kill is still there");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_without_persistence_loses_stored_results_but_no_job() {
    let _serial = SERIAL.lock().await;
    let (before, after, t) = kill_redis_while_workers_write("rdmem", &["--appendonly", "no"]).await;
    t.print(&format!("kill -9 Redis with persistence off ({} results stored before)", before.len()));
    // Results stored before the kill are gone with it (their jobs were acked); every job that
    // was queued or running then is redelivered and ends done.
    let missing: Vec<&String> = before.iter().filter(|id| !after.contains(id)).collect();
    assert!(!missing.is_empty(), "an in-memory Redis forgets what it held");
    assert_eq!(t.done + missing.len(), 800, "only results stored before the kill are missing: {t:?}");
    assert_eq!(t.lost, missing.len(), "{t:?}");
}

/// Polls `probe` every 100 ms until it holds; panics naming `what` after `timeout`.
async fn eventually(what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !probe() {
        assert!(Instant::now() < until, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/livez` answers 200 while the process and its engine run; `/readyz` only while the worker
/// consumes with Redis reachable and is not draining: 503 naming why through a RabbitMQ outage,
/// a Redis outage and a SIGTERM drain, 200 again after each outage.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_broker_and_redis_outages_and_the_drain() {
    let _serial = SERIAL.lock().await;
    let mut redis = PrivateRedis::start(&[]);
    let sb = Sandbox::new("probes").with_redis(&redis.url());
    let worker = echo_worker(&sb, "40", &["--shutdown-grace-secs", "30"]);
    let addr = worker.metrics_addr().expect("the worker logs its metrics address");
    let get = |path: &str| genq_tests::prometheus::http_get(&addr, path).unwrap_or((0, String::new()));
    let ready = || get("/readyz");
    eventually("ready once consuming", Duration::from_secs(30), || ready().0 == 200).await;
    assert_eq!(get("/livez").0, 200);

    rabbitmqctl(&["stop_app"]);
    eventually("not ready without RabbitMQ", Duration::from_secs(30), || ready() == (503, "not ready: not consuming from RabbitMQ\n".into())).await;
    assert_eq!(get("/livez").0, 200, "a broker outage does not make the worker dead");
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    eventually("ready again after RabbitMQ is back", Duration::from_secs(60), || ready().0 == 200).await;

    redis.stop();
    eventually("not ready without Redis", Duration::from_secs(30), || ready() == (503, "not ready: Redis unreachable\n".into())).await;
    assert_eq!(get("/livez").0, 200, "a Redis outage does not make the worker dead");
    redis.spawn();
    eventually("ready again after Redis is back", Duration::from_secs(60), || ready().0 == 200).await;

    // Slow jobs in flight, then SIGTERM: not ready while it drains, alive until it exits. The
    // signal comes once a short job is done, while the long ones (10 s at 40 ms a step) run on.
    let short = publish(&sb, jobs("drain-short", 4, 10)).await;
    let long = publish(&sb, jobs("drain-long", 16, 250)).await;
    until_done(&sb, &short, 1).await;
    assert!(done_ids(&sb, &long).await.is_empty(), "the long jobs are still running");
    worker.signal("TERM");
    eventually("not ready while draining", Duration::from_secs(10), || ready() == (503, "not ready: draining after a shutdown signal\n".into())).await;
    assert_eq!(get("/livez").0, 200, "alive while it drains");
    let code = worker.wait_exit(Duration::from_secs(60)).expect("the worker exits after its drain");
    assert_eq!(code, Some(0), "{}", worker.log_text());
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_mixed_into_good_ones_never_stop_the_worker() {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::new("malformed");
    let worker = echo_worker(&sb, "0", &["--max-body-bytes", "4096"]);
    let good = jobs("g", 1000, 3);
    let producer = sb.producer().await;
    let mut ids = Vec::new();
    let mut bad_with_id = Vec::new();
    for (i, chunk) in good.chunks(5).enumerate() {
        ids.extend(producer.submit_many(chunk.to_vec(), |_| {}).await.into_iter().filter_map(Result::ok));
        match i % 4 {
            0 => sb.publish_raw(format!("{{\"prompt\": \"broken {i}").as_bytes(), None).await,
            1 => sb.publish_raw(&[0xff, 0xfe, b'{', 0x80], None).await,
            2 => sb.publish_raw(&vec![b' '; 5000], Some(&format!("big-{i}"))).await,
            _ => {
                let id = format!("typo-{i}");
                sb.publish_raw(format!(r#"{{"id":"{id}","prompt":"x","max_new_tokens":"lots","temprature":1}}"#).as_bytes(), None).await;
                bad_with_id.push(id);
            }
        }
    }
    producer.close().await;
    let t = tally(&sb, &ids, Duration::from_secs(120)).await;
    t.print("200 malformed among 1000 good");
    assert_eq!((t.lost, t.done), (0, 1000), "{t:?}");
    let bad = tally(&sb, &bad_with_id, Duration::from_secs(30)).await;
    assert_eq!(bad.failed, 50, "parseable bad jobs end failed naming the field: {bad:?}");
    let dead = worker.metric("genq_dead_lettered_total").unwrap_or(0.0);
    assert_eq!(dead, 150.0, "bodies that are not jobs are dead-lettered and counted");
    drop(worker);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_job_is_dead_lettered_while_the_others_flow() {
    poison_job_is_isolated("poison", &[], Packing::Bulk).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_job_published_alone_is_dead_lettered_while_the_others_flow() {
    poison_job_is_isolated("poison-v1", &[], Packing::OnePerJob).await;
}

/// Compose and Kubernetes restart a worker under the same name (a kept hostname with PID 1, a pod
/// name): the restarted worker must still see the job its predecessor died on as a suspect.
#[tokio::test(flavor = "multi_thread")]
async fn a_poison_job_is_isolated_when_the_restarted_worker_keeps_its_name() {
    poison_job_is_isolated("poison-same-id", &["--worker-id", "worker-0"], Packing::Bulk).await;
}

/// How a scenario's jobs are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Packing {
    /// The producer's default: bulk messages of up to 16 jobs.
    Bulk,
    /// One v1 message per job.
    OnePerJob,
}

/// A job that kills its worker, among 200 good ones, with the worker restarted each time it dies
/// (as a restart policy does): the others finish, the poison ends `failed` (`poison`) and is
/// dead-lettered alone (out of its bulk message, if it came in one), and no job is left `running`.
async fn poison_job_is_isolated(name: &str, extra_flags: &[&str], packing: Packing) {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::new(name);
    let mut watch = DeadLetterWatch::start(&sb).await;
    let mut all = jobs("p", 200, 5);
    let poison_id = format!("poison-{}", sb.model);
    all.insert(37, JobRequest { id: Some(poison_id.clone()), ..JobRequest::prompt("this one is POISON") });
    let ids = match packing {
        Packing::Bulk => publish(&sb, all).await,
        Packing::OnePerJob => publish_v1(&sb, all).await,
    };
    let env = [("GENQ_ECHO_STEP_MS", "2"), ("GENQ_ECHO_CRASH_ON", "POISON")];
    let mut flags = vec!["--engine", "echo", "--max-batch-size", "32", "--prefetch", "64"];
    flags.extend_from_slice(extra_flags);
    let mut worker = sb.worker_with_env(&flags, &env);
    let mut restarts = 0;
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        if worker.wait_exit(Duration::from_millis(100)).is_some() {
            restarts += 1;
            assert!(restarts <= 10, "the poison job keeps killing workers:\n{}", worker.log_text());
            worker = sb.worker_with_env(&flags, &env);
        }
        let results = sb.results().await.get_many(&ids).await.expect("redis");
        if results.iter().flatten().filter(|r| r.status.is_some_and(JobStatus::is_final)).count() == ids.len() {
            break;
        }
    }
    let t = tally(&sb, &ids, Duration::from_secs(5)).await;
    t.print(&format!("{name}: poison job ({restarts} worker restarts)"));
    let results: Vec<_> = sb.results().await.get_many(&ids).await.expect("redis").into_iter().flatten().collect();
    let failed: Vec<_> = results.iter().filter(|r| r.status == Some(JobStatus::Failed)).collect();
    assert_eq!((t.lost, t.done, t.failed), (0, 200, 1), "{t:?} {failed:?}\n{}", worker.log_text());
    assert!(results.iter().all(|r| r.status != Some(JobStatus::Running)), "no job is left running");
    let poison = sb.results().await.get(&poison_id).await.expect("redis").expect("poison has a result");
    assert_eq!(poison.error_kind.as_deref(), Some("poison"), "{poison:?}");
    let dead = watch.collect(1, Duration::from_secs(10), |d| d.properties.message_id().as_ref().is_some_and(|m| m.as_str() == poison_id)).await;
    let body: JobRequest = serde_json::from_slice(&dead.first().expect("the poison job is dead-lettered").data).expect("alone, as a v1 job");
    assert_eq!(body.id.as_deref(), Some(poison_id.as_str()));
    watch.stop().await;
    drop(worker);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_rejects_publishes_and_submit_says_how_many() {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::new("full");
    let lines: String = (0..50).map(|i| format!("{{\"id\":\"f-{i}\",\"prompt\":\"w{i}\",\"max_new_tokens\":2}}\n")).collect();
    let file = scratch_dir().join(format!("{}.jsonl", sb.model));
    std::fs::write(&file, lines).expect("jobs file");
    // One confirm in flight: a quorum queue applies its length limit to what it already holds, so
    // a pipelined burst can overshoot it by up to the confirms in flight.
    let out = sb
        .genq()
        .env("GENQ__QUEUE__MAX_LENGTH", "20")
        .args(["--max-in-flight", "1", "--bulk-max-jobs", "1", "submit"])
        .arg(&file)
        .output()
        .expect("genq submit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "rejections make submit fail: {stderr}");
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert!((20..=21).contains(&ids.len()), "the queue holds its max length: {stderr}");
    assert!(stderr.contains(&format!("published {} jobs, rejected {}", ids.len(), 50 - ids.len())), "{stderr}");
    assert!(stderr.contains("queue full"), "the reason is named: {stderr}");
    let worker = sb.worker_with_env(&["--engine", "echo", "--max-queue-length", "20"], &[]);
    let t = tally(&sb, &ids, Duration::from_secs(60)).await;
    t.print("full queue (max-length 20, 50 submitted)");
    assert_eq!((t.lost, t.done), (0, ids.len()), "{t:?}");
    drop(worker);
    let _ = std::fs::remove_file(file);
    sb.cleanup().await;
}
