//! The JSON Schema in `shared/schema/job.v1.schema.json` and the Rust types + validation agree:
//! every example is accepted by both or refused by both.

use genq_shared::valid::{validate, Limits};
use genq_shared::JobRequest;

fn schema() -> jsonschema::Validator {
    let text = include_str!("../schema/job.v1.schema.json");
    let value: serde_json::Value = serde_json::from_str(text).expect("schema is JSON");
    jsonschema::validator_for(&value).expect("schema compiles")
}

fn rust_accepts(json: &serde_json::Value) -> bool {
    match serde_json::from_value::<JobRequest>(json.clone()) {
        Ok(mut req) => {
            req.id.get_or_insert_with(|| "filled-by-producer".into());
            validate(&req, &Limits::default()).is_ok()
        }
        Err(_) => false,
    }
}

const VALID: &[&str] = &[
    r#"{"prompt":"hello"}"#,
    r#"{"prompt":"hello","n":16,"seed":3,"priority":"low"}"#,
    r#"{"prompt":"x","format":{"type":"json_schema","schema":{"type":"object","properties":{"a":{"type":"integer"}}}}}"#,
    r#"{"prompt":"x","format":{"type":"json_object"}}"#,
    r#"{"prompt":"x","format":{"type":"regex","pattern":"[0-9]+"}}"#,
    r#"{"prompt":"x","format":{"type":"lark","grammar":"start: \"yes\" | \"no\""}}"#,
    r#"{"v":1,"id":"job-1.a:b_c","prompt":"x","kind":"score"}"#,
    r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#,
    r#"{"prompt":"x","model":"smollm2-135m-instruct","max_new_tokens":8192,"min_new_tokens":8}"#,
    r#"{"prompt":"x","temperature":0,"top_p":1,"top_k":40,"repetition_penalty":1.1,"seed":18446744073709551615}"#,
    r#"{"prompt":"x","stop":["\n","a","b","c","d","e","f","g"],"priority":"high","deadline_ms":1,"stream":true,"batch":"b1"}"#,
];

const INVALID: &[&str] = &[
    r#"{}"#,
    r#"{"prompt":""}"#,
    r#"{"prompt":"x","messages":[{"role":"user","content":"y"}]}"#,
    r#"{"prompt":"x","v":2}"#,
    r#"{"prompt":"x","id":""}"#,
    r#"{"prompt":"x","id":"has space"}"#,
    r#"{"prompt":"x","kind":"embed"}"#,
    r#"{"prompt":"x","max_tokens":5}"#,
    r#"{"prompt":"x","max_new_tokens":0}"#,
    r#"{"prompt":"x","max_new_tokens":8193}"#,
    r#"{"prompt":"x","temperature":-0.5}"#,
    r#"{"prompt":"x","temperature":"hot"}"#,
    r#"{"prompt":"x","top_p":0}"#,
    r#"{"prompt":"x","top_p":1.01}"#,
    r#"{"prompt":"x","top_k":-1}"#,
    r#"{"prompt":"x","repetition_penalty":0}"#,
    r#"{"prompt":"x","seed":-1}"#,
    r#"{"prompt":"x","stop":["1","2","3","4","5","6","7","8","9"]}"#,
    r#"{"prompt":"x","stop":[""]}"#,
    r#"{"prompt":"x","priority":"urgent"}"#,
    r#"{"prompt":"x","n":0}"#,
    r#"{"prompt":"x","format":{"type":"xml"}}"#,
    r#"{"prompt":"x","format":{"type":"json_schema","schema":"int"}}"#,
    r#"{"prompt":"x","format":{"type":"regex","pattern":""}}"#,
    r#"{"prompt":"x","format":{"type":"json_object","schema":{}}}"#,
    r#"{"prompt":"x","n":17}"#,
    r#"{"prompt":"x","stream":"yes"}"#,
    r#"{"prompt":"x","batch":"a/b"}"#,
    r#"{"prompt":"x","model":"a b"}"#,
    r#"{"messages":[]}"#,
    r#"{"messages":[{"role":"robot","content":"y"}]}"#,
    r#"{"messages":[{"role":"user"}]}"#,
    r#"{"messages":[{"role":"user","content":"y","name":"z"}]}"#,
];

#[test]
fn schema_and_types_accept_the_same_valid_jobs() {
    let schema = schema();
    for json in VALID {
        let v: serde_json::Value = serde_json::from_str(json).expect("example is JSON");
        assert!(schema.is_valid(&v), "schema refuses valid job {json}");
        assert!(rust_accepts(&v), "Rust refuses valid job {json}");
    }
}

#[test]
fn schema_and_types_refuse_the_same_invalid_jobs() {
    let schema = schema();
    for json in INVALID {
        let v: serde_json::Value = serde_json::from_str(json).expect("example is JSON");
        assert!(!schema.is_valid(&v), "schema accepts invalid job {json}");
        assert!(!rust_accepts(&v), "Rust accepts invalid job {json}");
    }
}

#[test]
fn schema_lists_every_field_of_the_rust_type() {
    let value: serde_json::Value = serde_json::from_str(include_str!("../schema/job.v1.schema.json")).expect("json");
    let mut schema_fields: Vec<String> =
        value["properties"].as_object().expect("properties").keys().cloned().collect();
    schema_fields.sort();
    let full = JobRequest {
        v: 1,
        id: Some("a".into()),
        kind: genq_shared::JobKind::Score,
        prompt: Some("p".into()),
        messages: Some(vec![]),
        model: Some("m".into()),
        max_new_tokens: Some(1),
        max_length: Some(2),
        min_new_tokens: Some(0),
        temperature: Some(1.0),
        top_p: Some(1.0),
        top_k: Some(0),
        repetition_penalty: Some(1.0),
        seed: Some(1),
        stop: Some(vec![]),
        logprobs: Some(1),
        prompt_logprobs: Some(1),
        n: Some(2),
        format: Some(genq_shared::OutputFormat::JsonObject {}),
        priority: Some(genq_shared::Priority::High),
        deadline_ms: Some(1),
        stream: Some(true),
        batch: Some("b".into()),
    };
    let ser = serde_json::to_value(&full).expect("serialise");
    let mut rust_fields: Vec<String> = ser.as_object().expect("object").keys().cloned().collect();
    rust_fields.sort();
    assert_eq!(schema_fields, rust_fields);
    let mut listed: Vec<String> = genq_shared::job::FIELDS.iter().map(|f| f.to_string()).collect();
    listed.sort();
    assert_eq!(schema_fields, listed, "job::FIELDS names every field");
}
