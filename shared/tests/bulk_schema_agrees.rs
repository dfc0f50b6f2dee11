//! The JSON Schema in `shared/schema/bulk.v2.schema.json` (which refers to the v1 job schema for
//! each job) and the Rust reading of a bulk body agree: every example is accepted by both or
//! refused by both.

use genq_shared::valid::{check_job_id, validate, Limits};
use genq_shared::{bulk, JobRequest};

fn schema() -> jsonschema::Validator {
    let job: serde_json::Value = serde_json::from_str(include_str!("../schema/job.v1.schema.json")).expect("job schema is JSON");
    let bulk: serde_json::Value = serde_json::from_str(include_str!("../schema/bulk.v2.schema.json")).expect("bulk schema is JSON");
    let job = jsonschema::Resource::from_contents(job).expect("job schema is a resource");
    jsonschema::options().with_resource("https://genq.dev/schema/job.v1.json", job).build(&bulk).expect("bulk schema compiles")
}

/// Whether every job of the body would run: the envelope reads, and each job has an id and passes
/// the v1 rules.
fn rust_accepts(body: &str) -> bool {
    let Ok(raw) = bulk::parse(body.as_bytes()) else { return false };
    raw.iter().all(|r| match serde_json::from_str::<JobRequest>(r.get()) {
        Ok(job) => job.id.as_deref().is_some_and(|id| check_job_id(id).is_ok()) && validate(&job, &Limits::default()).is_ok(),
        Err(_) => false,
    })
}

const VALID: &[&str] = &[
    r#"{"v":2,"jobs":[{"id":"a","prompt":"x"}]}"#,
    r#"{"v":2,"jobs":[{"id":"a","prompt":"x"},{"v":1,"id":"b","messages":[{"role":"user","content":"hi"}],"priority":"high"}]}"#,
    r#"{"v":2,"jobs":[{"id":"s","kind":"score","prompt":"x","batch":"b1","deadline_ms":5}]}"#,
];

const INVALID: &[&str] = &[
    r#"{"v":2}"#,
    r#"{"v":2,"jobs":[]}"#,
    r#"{"v":1,"jobs":[{"id":"a","prompt":"x"}]}"#,
    r#"{"jobs":[{"id":"a","prompt":"x"}]}"#,
    r#"{"v":2,"jobs":[{"id":"a","prompt":"x"}],"batch":"b"}"#,
    r#"{"v":2,"jobs":[{"prompt":"no id"}]}"#,
    r#"{"v":2,"jobs":[{"id":"bad id","prompt":"x"}]}"#,
    r#"{"v":2,"jobs":[{"id":"a","prompt":"x","v":2}]}"#,
    r#"{"v":2,"jobs":[{"id":"a","prompt":"x","top_p":0}]}"#,
    r#"{"v":2,"jobs":[{"id":"a"}]}"#,
    r#"{"v":2,"jobs":[{"id":"a","prompt":"x"},{"id":"b","prompt":"y","max_tokens":3}]}"#,
    r#"{"v":2,"jobs":["a"]}"#,
    r#"{"v":2,"jobs":{"id":"a","prompt":"x"}}"#,
];

#[test]
fn schema_and_reader_accept_the_same_bulk_messages() {
    let schema = schema();
    for json in VALID {
        let v: serde_json::Value = serde_json::from_str(json).expect("example is JSON");
        assert!(schema.is_valid(&v), "schema refuses valid bulk message {json}");
        assert!(rust_accepts(json), "Rust refuses valid bulk message {json}");
    }
}

#[test]
fn schema_and_reader_refuse_the_same_invalid_bulk_messages() {
    let schema = schema();
    for json in INVALID {
        let v: serde_json::Value = serde_json::from_str(json).expect("example is JSON");
        assert!(!schema.is_valid(&v), "schema accepts invalid bulk message {json}");
        assert!(!rust_accepts(json), "Rust accepts invalid bulk message {json}");
    }
}

#[test]
fn schema_caps_jobs_per_message_like_the_reader() {
    let v: serde_json::Value = serde_json::from_str(include_str!("../schema/bulk.v2.schema.json")).expect("json");
    assert_eq!(v["properties"]["jobs"]["maxItems"].as_u64(), Some(bulk::MAX_BULK_JOBS as u64));
    assert_eq!(v["properties"]["v"]["const"].as_u64(), Some(u64::from(bulk::BULK_VERSION)));
}
