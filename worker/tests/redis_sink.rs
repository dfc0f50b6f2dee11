//! The Redis result sink against the real Redis: `begin_many` and `finish` over more jobs than
//! one script call takes, mixing fresh, duplicate, cancelled and suspect jobs, with every job's
//! arguments different (kind, model, times, how many result fields), so every answer must come
//! back to its own job and every write land on its own keys with its own values.

use std::collections::HashMap;

use genq_shared::keys::{KeySchema, CANCEL_FIELD};
use genq_shared::{JobResult, JobStatus};
use genq_worker::sink::redis::{RedisSink, RedisSinkSettings};
use genq_worker::sink::{Begin, FinalResult, JobStart, ResultSink};
use redis::AsyncCommands;

fn redis_url() -> String {
    std::env::var("GENQ_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// More than two script calls' worth of jobs.
const JOBS: usize = 300;

/// Job `i`'s start: its own kind, model and start time; every third has no `created_ms`.
fn start(i: usize, id: &str) -> JobStart {
    JobStart {
        id: id.to_string(),
        kind: if i.is_multiple_of(2) { "generate" } else { "score" }.into(),
        model: format!("model-{i}"),
        worker: "w-test".into(),
        instance: "w-test#1".into(),
        created_ms: (!i.is_multiple_of(3)).then_some(70_000 + i as u64),
        started_ms: 1_000 + i as u64,
    }
}

/// Job `i`'s result, with a number of fields that depends on `i`: every fourth failed (error and
/// error kind), every fourth plus one has token counts, the rest only text and finish time.
fn final_result(i: usize, id: &str) -> FinalResult {
    let mut result = JobResult { id: id.to_string(), status: Some(JobStatus::Done), text: Some(format!("text of {id}")), finished_ms: Some(9_000 + i as u64), ..Default::default() };
    match i % 4 {
        0 => {
            result.status = Some(JobStatus::Failed);
            result.error = Some(format!("error of {id}"));
            result.error_kind = Some("engine".into());
        }
        1 => {
            result.completion_tokens = Some(i as u64);
            result.first_token_ms = Some(8_000 + i as u64);
        }
        _ => {}
    }
    FinalResult { result, batch: None, stream: i.is_multiple_of(5) }
}

fn field<'a>(h: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    h.get(k).map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_and_finish_answer_each_job_of_a_large_batch_in_order() {
    let prefix = format!("sinktest-{}-{}", std::process::id(), genq_shared::now_ms());
    let keys = KeySchema::new(prefix.clone());
    let sink = RedisSink::connect(&RedisSinkSettings { url: redis_url(), key_prefix: prefix.clone(), ttl_secs: 600 }).await.expect("connect to Redis");
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis connection");

    let ids: Vec<String> = (0..JOBS).map(|i| format!("job-{i}")).collect();
    // Every 7th job is already done, every 11th has a cancel request, every 13th was started by
    // another worker that ran it alone twice, every 17th already has its created_ms, every 19th
    // has a producer's `queued` mark (with its own TTL, which begin keeps). Every 23rd was left
    // running by an earlier start of a worker with this one's name (a restarted container: a
    // suspect), every 29th by this very start (redelivered after a broker reconnect: not one).
    let plain = |i: usize| !i.is_multiple_of(7) && !i.is_multiple_of(11) && !i.is_multiple_of(13);
    let same_name = |i: usize| i.is_multiple_of(23) && plain(i);
    let same_instance = |i: usize| i.is_multiple_of(29) && plain(i);
    let preset_created = |i: usize| i.is_multiple_of(17) && plain(i);
    let queued_mark = |i: usize| i.is_multiple_of(19) && !i.is_multiple_of(17) && plain(i);
    for (i, id) in ids.iter().enumerate() {
        if i.is_multiple_of(7) {
            let _: () = conn.hset_multiple(keys.job(id), &[("status", "done"), ("text", "earlier")]).await.expect("redis");
        } else if i.is_multiple_of(11) {
            let _: () = conn.hset(keys.job(id), CANCEL_FIELD, "1").await.expect("redis");
        } else if i.is_multiple_of(13) {
            let _: () = conn.hset_multiple(keys.job(id), &[("status", "running"), ("worker", "w-dead"), ("instance", "w-dead#7"), ("solo_runs", "2"), ("attempts", "1")]).await.expect("redis");
        } else if same_name(i) {
            let _: () = conn.hset_multiple(keys.job(id), &[("status", "running"), ("worker", "w-test"), ("instance", "w-test#0"), ("attempts", "1")]).await.expect("redis");
        } else if same_instance(i) {
            let _: () = conn.hset_multiple(keys.job(id), &[("status", "running"), ("worker", "w-test"), ("instance", "w-test#1"), ("attempts", "1")]).await.expect("redis");
        } else if preset_created(i) {
            let _: () = conn.hset(keys.job(id), "created_ms", "5").await.expect("redis");
        } else if queued_mark(i) {
            let _: () = conn.hset_multiple(keys.job(id), &[("status", "queued"), ("created_ms", "6")]).await.expect("redis");
            let _: () = conn.expire(keys.job(id), 300).await.expect("redis");
        }
    }

    let starts: Vec<JobStart> = ids.iter().enumerate().map(|(i, id)| start(i, id)).collect();
    let begins = sink.begin_many(&starts).await.expect("begin_many");
    assert_eq!(begins.len(), JOBS);
    for (i, (id, b)) in ids.iter().zip(&begins).enumerate() {
        let expected = if i.is_multiple_of(7) {
            Begin::Duplicate
        } else if i.is_multiple_of(11) {
            Begin::Cancelled
        } else if i.is_multiple_of(13) {
            Begin::Fresh { suspect: true, solo_runs: 2 }
        } else if same_name(i) {
            Begin::Fresh { suspect: true, solo_runs: 0 }
        } else {
            Begin::Fresh { suspect: false, solo_runs: 0 }
        };
        assert_eq!(*b, expected, "begin of {id}");
        let h: HashMap<String, String> = conn.hgetall(keys.job(id)).await.expect("redis");
        match expected {
            Begin::Fresh { .. } => {
                let s = &starts[i];
                assert_eq!(field(&h, "status"), Some("running"), "{id}: {h:?}");
                assert_eq!(field(&h, "worker"), Some("w-test"), "{id}: {h:?}");
                assert_eq!(field(&h, "instance"), Some("w-test#1"), "{id}: {h:?}");
                assert_eq!(field(&h, "kind"), Some(s.kind.as_str()), "{id}: {h:?}");
                assert_eq!(field(&h, "model"), Some(s.model.as_str()), "{id}: {h:?}");
                assert_eq!(field(&h, "started_ms"), Some(s.started_ms.to_string().as_str()), "{id}: {h:?}");
                let again = i.is_multiple_of(13) || same_name(i) || same_instance(i);
                assert_eq!(field(&h, "attempts"), Some(if again { "2" } else { "1" }), "{id}: {h:?}");
                let created = if preset_created(i) {
                    Some("5".to_string())
                } else if queued_mark(i) {
                    Some("6".to_string())
                } else {
                    s.created_ms.map(|c| c.to_string())
                };
                assert_eq!(h.get("created_ms"), created.as_ref(), "created_ms is kept when present, absent when unknown: {id}: {h:?}");
                let ttl: i64 = conn.ttl(keys.job(id)).await.expect("redis");
                let most = if queued_mark(i) { 300 } else { 600 };
                assert!(ttl > 0 && ttl <= most, "{id} has the TTL (at most {most}), got {ttl}");
            }
            Begin::Duplicate => assert_eq!(field(&h, "status"), Some("done"), "a final job is left alone: {h:?}"),
            Begin::Cancelled => assert_eq!(field(&h, "status"), None, "a cancelled job is not marked running: {h:?}"),
        }
    }

    // The already-done jobs answer as duplicates and keep their text; the others get their own
    // fields, done-list element and (when streaming) end marker.
    let results: Vec<FinalResult> = ids.iter().enumerate().map(|(i, id)| final_result(i, id)).collect();
    let written = sink.finish(&results).await.expect("finish");
    assert_eq!(written.len(), JOBS);
    for (i, (id, w)) in ids.iter().zip(&written).enumerate() {
        let duplicate = i.is_multiple_of(7);
        assert_eq!(*w, !duplicate, "finish of {id}");
        let h: HashMap<String, String> = conn.hgetall(keys.job(id)).await.expect("redis");
        let done: Vec<String> = conn.lrange(keys.done(id), 0, -1).await.expect("redis");
        let stream_len: usize = conn.xlen(keys.stream(id)).await.expect("redis");
        if duplicate {
            assert_eq!(field(&h, "text"), Some("earlier"), "{id}: {h:?}");
            assert!(done.is_empty() && stream_len == 0, "{id}: a duplicate writes nothing");
            continue;
        }
        let r = &results[i].result;
        let status = r.status.map(|s| s.as_str()).unwrap_or_default();
        assert_eq!(field(&h, "status"), Some(status), "{id}: {h:?}");
        assert_eq!(h.get("text"), r.text.as_ref(), "{id}: {h:?}");
        assert_eq!(field(&h, "finished_ms"), Some(r.finished_ms.unwrap_or_default().to_string().as_str()), "{id}: {h:?}");
        assert_eq!(h.get("error"), r.error.as_ref(), "{id}: {h:?}");
        assert_eq!(h.get("completion_tokens"), r.completion_tokens.map(|v| v.to_string()).as_ref(), "{id}: {h:?}");
        assert_eq!(h.get("first_token_ms"), r.first_token_ms.map(|v| v.to_string()).as_ref(), "{id}: {h:?}");
        assert_eq!(done, vec![status.to_string()], "done list of {id}");
        assert_eq!(stream_len, usize::from(i.is_multiple_of(5)), "end marker of {id}'s stream");
        let ttl: i64 = conn.ttl(keys.done(id)).await.expect("redis");
        assert!(ttl > 0 && ttl <= 600, "{id}'s done list has the TTL, got {ttl}");
    }

    // A second finish of the same jobs writes nothing.
    let again = sink.finish(&results).await.expect("finish again");
    assert!(again.iter().all(|w| !w), "a final status is written once");

    let mut doomed: Vec<String> = Vec::new();
    for id in &ids {
        doomed.extend([keys.job(id), keys.done(id), keys.stream(id)]);
    }
    let _: () = conn.unlink(doomed).await.expect("redis");
}
