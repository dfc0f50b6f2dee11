//! `ResultClient::wait_many` against the real Redis, with the results written by the worker's own
//! Redis sink in a scrambled order: every result comes back once, in the order of the ids, while
//! later jobs finish before earlier ones; a job that never finishes ends as a timeout, not a hang.
//! The `queued` marks the producer writes are checked on the way.

use std::time::{Duration, Instant};

use genq_shared::{JobResult, JobStatus};
use genq_tests::Sandbox;
use genq_worker::sink::redis::{RedisSink, RedisSinkSettings};
use genq_worker::sink::{FinalResult, ResultSink};

const JOBS: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_many_hands_back_out_of_order_results_in_id_order() {
    let sb = Sandbox::new("reader");
    let ids: Vec<String> = (0..JOBS).map(|i| format!("r-{i}")).collect();
    let never = ids[JOBS - 1].clone();
    let client = sb.results().await;
    let pairs: Vec<(String, String)> = ids.iter().map(|id| (id.clone(), sb.model.clone())).collect();
    let marked = client.mark_queued(&pairs).await.expect("queued marks");
    assert!(marked.len() == JOBS && marked.iter().all(|m| *m), "every new job is marked: {} of {JOBS}", marked.iter().filter(|m| **m).count());
    let redis = redis::Client::open(sb.redis.as_str()).expect("redis url");
    let mut conn = redis.get_multiplexed_async_connection().await.expect("redis");
    let keys = genq_shared::keys::KeySchema::new(sb.prefix.clone());
    for id in [&ids[0], &ids[JOBS / 2], &never] {
        let h: std::collections::HashMap<String, String> = redis::AsyncCommands::hgetall(&mut conn, keys.job(id)).await.expect("HGETALL");
        assert_eq!(h.get("status").map(String::as_str), Some("queued"), "{id}: {h:?}");
        assert_eq!(h.get("model"), Some(&sb.model), "{id}: {h:?}");
        assert!(h.get("created_ms").and_then(|v| v.parse::<u64>().ok()).is_some(), "{id}: {h:?}");
        let ttl: i64 = redis::AsyncCommands::ttl(&mut conn, keys.job(id)).await.expect("TTL");
        assert!(ttl > 0, "{id}'s queued mark has a TTL, got {ttl}");
    }

    // Finish the jobs in rounds of 40, each round a scattered set (stride 7 through the ids), so
    // the reader keeps meeting final results behind unfinished ones.
    let sink = RedisSink::connect(&RedisSinkSettings { url: sb.redis.clone(), key_prefix: sb.prefix.clone(), ttl_secs: 600 })
        .await
        .expect("sink");
    let order: Vec<usize> = (0..JOBS - 1).map(|k| (k * 7) % (JOBS - 1)).collect();
    let writer = {
        let ids = ids.clone();
        tokio::spawn(async move {
            for round in order.chunks(40) {
                let results: Vec<FinalResult> = round
                    .iter()
                    .map(|&i| FinalResult {
                        result: JobResult { id: ids[i].clone(), status: Some(JobStatus::Done), text: Some(format!("text {i}")), ..Default::default() },
                        batch: None,
                        stream: false,
                    })
                    .collect();
                sink.finish(&results).await.expect("finish");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };

    let started = Instant::now();
    let mut got: Vec<Result<JobResult, String>> = Vec::new();
    client.wait_many(&ids, Some(Duration::from_secs(8)), |r| got.push(r.map_err(|e| e.to_string()))).await.expect("wait_many");
    writer.await.expect("writer");
    assert!(started.elapsed() < Duration::from_secs(30), "the unfinished job must time out, not hang");

    assert_eq!(got.len(), JOBS, "one answer per id");
    for (i, r) in got.iter().enumerate().take(JOBS - 1) {
        let r = r.as_ref().unwrap_or_else(|e| panic!("job {i}: {e}"));
        assert_eq!(r.id, ids[i], "answers come in the order of the ids");
        assert_eq!(r.status, Some(JobStatus::Done));
        assert_eq!(r.text.as_deref(), Some(format!("text {i}").as_str()));
    }
    let last = got[JOBS - 1].as_ref().expect_err("the job nobody finishes times out");
    assert!(last.contains(&never) && last.contains("queued"), "the timeout names the job and its status: {last}");
    // A mark never overwrites a status already written.
    let again = client.mark_queued(&pairs[..1]).await.expect("queued marks again");
    assert_eq!(again, [false], "a job with a status is not marked again");
    let status: Option<String> = redis::AsyncCommands::hget(&mut conn, keys.job(&ids[0]), "status").await.expect("HGET");
    assert_eq!(status.as_deref(), Some("done"), "a later queued mark leaves a final status alone");
    client.forget_many(&ids).await.expect("cleanup");
}

/// Redis's count of connections accepted since it started.
async fn connections_received(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await.expect("INFO");
    info.lines().find_map(|l| l.strip_prefix("total_connections_received:")).and_then(|v| v.trim().parse().ok()).expect("total_connections_received")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_one_after_another_reuse_their_blocking_connection() {
    const WAITS: usize = 40;
    let sb = Sandbox::new("waiters");
    let client = sb.results().await;
    let sink = RedisSink::connect(&RedisSinkSettings { url: sb.redis.clone(), key_prefix: sb.prefix.clone(), ttl_secs: 600 })
        .await
        .expect("sink");
    let ids: Vec<String> = (0..WAITS).map(|i| format!("w-{i}")).collect();
    let redis = redis::Client::open(sb.redis.as_str()).expect("redis url");
    let mut conn = redis.get_multiplexed_async_connection().await.expect("redis");
    let before = connections_received(&mut conn).await;
    for (i, id) in ids.iter().enumerate() {
        // Each job finishes a little after its wait starts, so every wait blocks on Redis.
        let (sink, id2) = (sink.clone(), id.clone());
        let finisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let result = JobResult { id: id2, status: Some(JobStatus::Done), text: Some(format!("text {i}")), ..Default::default() };
            sink.finish(&[FinalResult { result, batch: None, stream: false }]).await.expect("finish");
        });
        client.mark_queued(&[(id.clone(), sb.model.clone())]).await.expect("queued mark");
        let r = client.wait(id, Some(Duration::from_secs(10))).await.expect("wait");
        assert_eq!(r.text.as_deref(), Some(format!("text {i}").as_str()));
        finisher.await.expect("finisher");
    }
    let opened = connections_received(&mut conn).await - before;
    // One blocking connection serves all the waits; other tests running beside this one open a
    // few of their own, far fewer than one per wait.
    assert!(opened < WAITS as u64 / 2, "{WAITS} waits opened {opened} Redis connections");
    client.forget_many(&ids).await.expect("cleanup");
}
