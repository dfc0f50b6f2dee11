//! The Redis result sink against the real Redis: `begin_many` and `finish` over more jobs than
//! one script call takes, mixing fresh, duplicate, cancelled and suspect jobs, so every answer
//! must come back to its own job and every write land on its own keys.

use std::collections::HashMap;

use genq_shared::keys::KeySchema;
use genq_shared::{JobResult, JobStatus};
use genq_worker::sink::redis::{RedisSink, RedisSinkSettings};
use genq_worker::sink::{Begin, FinalResult, JobStart, ResultSink};
use redis::AsyncCommands;

fn redis_url() -> String {
    std::env::var("GENQ_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// More than two script calls' worth of jobs.
const JOBS: usize = 300;

fn start(id: &str, created_ms: Option<u64>) -> JobStart {
    JobStart {
        id: id.to_string(),
        kind: "generate".into(),
        model: "m".into(),
        worker: "w-test".into(),
        created_ms,
        started_ms: 1_000 + id.len() as u64,
    }
}

fn final_result(id: &str, text: &str, stream: bool) -> FinalResult {
    FinalResult {
        result: JobResult {
            id: id.to_string(),
            status: Some(JobStatus::Done),
            text: Some(text.to_string()),
            finished_ms: Some(9_000),
            ..Default::default()
        },
        batch: None,
        stream,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_and_finish_answer_each_job_of_a_large_batch_in_order() {
    let prefix = format!("sinktest-{}-{}", std::process::id(), genq_shared::now_ms());
    let keys = KeySchema::new(prefix.clone());
    let sink = RedisSink::connect(&RedisSinkSettings {
        url: redis_url(),
        key_prefix: prefix.clone(),
        ttl_secs: 600,
    })
    .await
    .expect("connect to Redis");
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");

    let ids: Vec<String> = (0..JOBS).map(|i| format!("job-{i}")).collect();
    // Every 7th job is already done, every 11th has a cancel request, every 13th was started by
    // another worker that ran it alone twice, every 17th already has its created_ms.
    for (i, id) in ids.iter().enumerate() {
        if i % 7 == 0 {
            let _: () = conn
                .hset_multiple(keys.job(id), &[("status", "done"), ("text", "earlier")])
                .await
                .unwrap();
        } else if i % 11 == 0 {
            let _: () = conn.set(keys.cancel(id), "1").await.unwrap();
        } else if i % 13 == 0 {
            let _: () = conn
                .hset_multiple(
                    keys.job(id),
                    &[
                        ("status", "running"),
                        ("worker", "w-dead"),
                        ("solo_runs", "2"),
                        ("attempts", "1"),
                    ],
                )
                .await
                .unwrap();
        } else if i % 17 == 0 {
            let _: () = conn.hset(keys.job(id), "created_ms", "5").await.unwrap();
        }
    }

    let starts: Vec<JobStart> = ids.iter().map(|id| start(id, Some(77))).collect();
    let begins = sink.begin_many(&starts).await.expect("begin_many");
    assert_eq!(begins.len(), JOBS);
    for (i, (id, b)) in ids.iter().zip(&begins).enumerate() {
        let expected = if i % 7 == 0 {
            Begin::Duplicate
        } else if i % 11 == 0 {
            Begin::Cancelled
        } else if i % 13 == 0 {
            Begin::Fresh {
                suspect: true,
                solo_runs: 2,
            }
        } else {
            Begin::Fresh {
                suspect: false,
                solo_runs: 0,
            }
        };
        assert_eq!(*b, expected, "begin of {id} (#{i})");
        let h: HashMap<String, String> = conn.hgetall(keys.job(id)).await.unwrap();
        if matches!(expected, Begin::Fresh { .. }) {
            assert_eq!(
                h.get("status").map(String::as_str),
                Some("running"),
                "{id}: {h:?}"
            );
            assert_eq!(
                h.get("worker").map(String::as_str),
                Some("w-test"),
                "{id}: {h:?}"
            );
            assert_eq!(
                h.get("started_ms"),
                Some(&(1_000 + id.len() as u64).to_string()),
                "{id}: {h:?}"
            );
            let attempts = if i % 13 == 0 { "2" } else { "1" };
            assert_eq!(
                h.get("attempts").map(String::as_str),
                Some(attempts),
                "{id}: {h:?}"
            );
            let created = if i % 17 == 0 && i % 13 != 0 {
                "5"
            } else {
                "77"
            };
            assert_eq!(
                h.get("created_ms").map(String::as_str),
                Some(created),
                "created_ms is kept when present: {id}: {h:?}"
            );
            let ttl: i64 = conn.ttl(keys.job(id)).await.unwrap();
            assert!(ttl > 0 && ttl <= 600, "{id} has the TTL, got {ttl}");
        } else if i % 7 == 0 {
            assert_eq!(
                h.get("status").map(String::as_str),
                Some("done"),
                "a final job is left alone: {h:?}"
            );
        }
    }

    // Every 5th job streams; the already-done ones answer as duplicates and keep their text.
    let results: Vec<FinalResult> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| final_result(id, &format!("text of {id}"), i % 5 == 0))
        .collect();
    let written = sink.finish(&results).await.expect("finish");
    assert_eq!(written.len(), JOBS);
    for (i, (id, w)) in ids.iter().zip(&written).enumerate() {
        assert_eq!(*w, i % 7 != 0, "finish of {id} (#{i})");
        let h: HashMap<String, String> = conn.hgetall(keys.job(id)).await.unwrap();
        let text = if i % 7 == 0 {
            "earlier".to_string()
        } else {
            format!("text of {id}")
        };
        assert_eq!(h.get("text"), Some(&text), "{id}: {h:?}");
        let done: Vec<String> = conn.lrange(keys.done(id), 0, -1).await.unwrap();
        assert_eq!(
            done,
            if i % 7 == 0 {
                vec![]
            } else {
                vec!["done".to_string()]
            },
            "done list of {id}"
        );
        let stream_len: usize = conn.xlen(keys.stream(id)).await.unwrap();
        assert_eq!(
            stream_len,
            usize::from(i % 5 == 0 && i % 7 != 0),
            "end marker of {id}'s stream"
        );
    }

    // A second finish of the same jobs writes nothing.
    let again = sink.finish(&results).await.expect("finish again");
    assert!(again.iter().all(|w| !w), "a final status is written once");

    let mut doomed: Vec<String> = Vec::new();
    for id in &ids {
        doomed.extend([
            keys.job(id),
            keys.done(id),
            keys.stream(id),
            keys.cancel(id),
        ]);
    }
    let _: () = conn.unlink(doomed).await.unwrap();
}
