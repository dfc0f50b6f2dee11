//! The edge of the worker: turns a raw message body into a decision. A body that is not a job
//! at all is dead-lettered; a job that breaks a rule fails with an error naming the field; a
//! valid job runs. A bulk (v2) message is decided job by job, once its envelope and every job's
//! id are known good; otherwise it is dead-lettered whole. Pure logic, no I/O.

use std::collections::HashSet;

use genq_shared::bulk::{self, BULK_CONTENT_TYPE};
use genq_shared::result::error_kind;
use genq_shared::valid::{self, Limits};
use genq_shared::{JobRequest, ValidJob};
use serde::Deserialize;

/// What to do with one delivery.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Not a job at all: reject without requeue so it lands in `genq.dead`.
    DeadLetter {
        /// Why, for the log.
        reason: String,
    },
    /// A job that breaks a rule: store a `failed` result and ack.
    Fail(RejectedJob),
    /// A valid job.
    Run(Box<ValidJob>),
}

/// A job that will end `failed` without running.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RejectedJob {
    /// Job id.
    pub id: String,
    /// Error naming the field.
    pub error: String,
    /// Fixed error category.
    pub error_kind: &'static str,
    /// Batch id, when it could be read.
    pub batch: Option<String>,
}

/// Limits applied at the edge.
#[derive(Debug, Clone, PartialEq)]
pub struct IntakeRules {
    /// Field limits.
    pub limits: Limits,
    /// Largest body, bytes.
    pub max_body_bytes: usize,
    /// The model this worker serves; jobs for another model fail.
    pub model: String,
}

/// One job of a bulk message: what to do with it, its id, and where its JSON lies in the body (to
/// dead-letter it alone).
#[derive(Debug)]
pub(crate) struct BulkJob {
    /// What to do with it: `Fail` or `Run`.
    pub verdict: Verdict,
    /// Its id.
    pub id: String,
    /// The bytes of the message body that hold its JSON, as published.
    pub span: std::ops::Range<usize>,
}

/// What to do with one message.
#[derive(Debug)]
pub(crate) enum Inspected {
    /// A v1 message (one job), or a message dead-lettered whole.
    One(Verdict),
    /// A valid bulk message: one decision per job, in message order.
    Bulk(Vec<BulkJob>),
}

/// Decides what to do with a message: a bulk message by its content type, anything else as one
/// job (its `message_id` used as the id when the body has none).
pub(crate) fn inspect_message(body: &[u8], content_type: Option<&str>, message_id: Option<&str>, rules: &IntakeRules) -> Inspected {
    if content_type != Some(BULK_CONTENT_TYPE) {
        return Inspected::One(inspect(body, message_id, rules));
    }
    match inspect_bulk(body, rules) {
        Ok(jobs) => Inspected::Bulk(jobs),
        Err(reason) => Inspected::One(Verdict::DeadLetter { reason }),
    }
}

/// Reads a bulk message into its jobs, or says why it is not a valid v2 message: the envelope is
/// wrong, or a job has no usable id (it could not have a result of its own), or two jobs share
/// an id.
fn inspect_bulk(body: &[u8], rules: &IntakeRules) -> Result<Vec<BulkJob>, String> {
    if body.len() > rules.max_body_bytes {
        return Err(format!("bulk body is {} bytes, over the limit of {}", body.len(), rules.max_body_bytes));
    }
    let raw = bulk::parse(body)?;
    let mut ids = HashSet::with_capacity(raw.len());
    let mut jobs = Vec::with_capacity(raw.len());
    for (i, json) in raw.into_iter().enumerate() {
        let verdict = inspect(json.get().as_bytes(), None, rules);
        let id = match &verdict {
            Verdict::DeadLetter { reason } => return Err(format!("job {i} of the bulk message: {reason}")),
            Verdict::Fail(rejected) => rejected.id.clone(),
            Verdict::Run(job) => job.id.clone(),
        };
        if !ids.insert(id.clone()) {
            return Err(format!("job {i} of the bulk message: id {id:?} is used twice in the message"));
        }
        // The raw job borrows from `body`, so its place there is the distance between the two.
        let start = json.get().as_ptr() as usize - body.as_ptr() as usize;
        jobs.push(BulkJob { verdict, id, span: start..start + json.get().len() });
    }
    Ok(jobs)
}

/// Decides what to do with `body` (its AMQP `message_id` used as the id when the body has none).
pub(crate) fn inspect(body: &[u8], message_id: Option<&str>, rules: &IntakeRules) -> Verdict {
    if body.len() > rules.max_body_bytes {
        return Verdict::DeadLetter { reason: format!("body is {} bytes, over the limit of {}", body.len(), rules.max_body_bytes) };
    }
    // The common case, a well-formed job, is read once straight into its type; anything else
    // is read again as a JSON value below to say precisely what is wrong with it.
    let mut de = serde_json::Deserializer::from_slice(body);
    if let Ok(request) = JobRequest::deserialize(&mut de) {
        if de.end().is_ok() {
            return inspect_request(request, message_id, rules);
        }
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Verdict::DeadLetter { reason: "body is not valid UTF-8".into() };
    };
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Verdict::DeadLetter { reason: format!("body is not JSON: {e}") },
    };
    let Some(object) = value.as_object() else {
        return Verdict::DeadLetter { reason: "body is not a JSON object".into() };
    };
    if object.contains_key("jobs") {
        return Verdict::DeadLetter { reason: format!("body looks like a bulk (v2) message, which needs content_type {BULK_CONTENT_TYPE}") };
    }
    let id = match object.get("id") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => return Verdict::DeadLetter { reason: "`id` is not a string".into() },
        None => match message_id {
            Some(m) => m.to_string(),
            None => return Verdict::DeadLetter { reason: "job has no `id` and the message no message_id".into() },
        },
    };
    if let Err(e) = valid::check_job_id(&id) {
        return Verdict::DeadLetter { reason: e.to_string() };
    }
    let batch = object.get("batch").and_then(|b| b.as_str()).map(str::to_string);
    let fail = |error: String, kind: &'static str| Verdict::Fail(RejectedJob { id: id.clone(), error, error_kind: kind, batch: batch.clone() });
    let mut request: JobRequest = match serde_path_to_error::deserialize(&value) {
        Ok(r) => r,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let msg = if path == "." { inner } else { format!("`{path}`: {inner}") };
            return fail(msg, error_kind::INVALID);
        }
    };
    request.id.get_or_insert_with(|| id.clone());
    decide(&request, id, batch, rules)
}

/// A body that parsed as a job: checks its id (or `message_id`), then its fields.
fn inspect_request(mut request: JobRequest, message_id: Option<&str>, rules: &IntakeRules) -> Verdict {
    let id = match (&request.id, message_id) {
        (Some(id), _) => id.clone(),
        (None, Some(m)) => m.to_string(),
        (None, None) => return Verdict::DeadLetter { reason: "job has no `id` and the message no message_id".into() },
    };
    if let Err(e) = valid::check_job_id(&id) {
        return Verdict::DeadLetter { reason: e.to_string() };
    }
    request.id.get_or_insert_with(|| id.clone());
    let batch = request.batch.clone();
    decide(&request, id, batch, rules)
}

/// Validates a parsed job against the rules.
fn decide(request: &JobRequest, id: String, batch: Option<String>, rules: &IntakeRules) -> Verdict {
    let fail = |error: String, kind: &'static str| Verdict::Fail(RejectedJob { id: id.clone(), error, error_kind: kind, batch: batch.clone() });
    match valid::validate(request, &rules.limits) {
        Ok(job) if job.model != rules.model => fail(
            format!("`model` is {:?}, but this queue's worker serves {:?}", job.model, rules.model),
            error_kind::UNSUPPORTED,
        ),
        Ok(job) => Verdict::Run(Box::new(job)),
        Err(e) => fail(e.to_string(), error_kind::INVALID),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> IntakeRules {
        IntakeRules { limits: Limits::default(), max_body_bytes: 1000, model: "smollm2-135m-instruct".into() }
    }

    fn dead(body: &[u8]) -> bool {
        matches!(inspect(body, None, &rules()), Verdict::DeadLetter { .. })
    }

    fn failed_field(body: &str) -> String {
        match inspect(body.as_bytes(), None, &rules()) {
            Verdict::Fail(r) => r.error,
            other => panic!("expected failure for {body}, got {other:?}"),
        }
    }

    #[test]
    fn bodies_that_are_not_jobs_are_dead_lettered() {
        assert!(dead(b"not json"));
        assert!(dead(&[0xff, 0xfe, b'{']));
        assert!(dead(b"[1,2]"));
        assert!(dead(b"{\"prompt\":\"no id\"}"));
        assert!(dead(&vec![b' '; 2000]));
    }

    #[test]
    fn broken_fields_fail_with_their_name() {
        assert!(failed_field(r#"{"id":"a","prompt":"x","max_tokens":3}"#).contains("max_tokens"));
        assert!(failed_field(r#"{"id":"a","prompt":"x","temperature":"hot"}"#).contains("temperature"));
        assert!(failed_field(r#"{"id":"a","prompt":"x","top_p":2}"#).contains("top_p"));
        assert!(failed_field(r#"{"id":"a","prompt":"x","model":"other"}"#).contains("model"));
    }

    fn bulk(body: &str) -> Inspected {
        inspect_message(body.as_bytes(), Some(BULK_CONTENT_TYPE), None, &rules())
    }

    fn dead_reason(inspected: Inspected) -> String {
        match inspected {
            Inspected::One(Verdict::DeadLetter { reason }) => reason,
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn a_bulk_message_is_decided_job_by_job() {
        let body = r#"{"v":2,"jobs":[{"id":"a","prompt":"x"},{"id":"b","prompt":"y","top_p":2},{"id":"c","prompt":"z","model":"other"}]}"#;
        let Inspected::Bulk(jobs) = bulk(body) else { panic!("not read as bulk") };
        let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(matches!(&jobs[0].verdict, Verdict::Run(job) if job.id == "a"));
        assert!(matches!(&jobs[1].verdict, Verdict::Fail(r) if r.error.contains("top_p")));
        assert!(matches!(&jobs[2].verdict, Verdict::Fail(r) if r.error.contains("model")));
        assert_eq!(&body[jobs[1].span.clone()], r#"{"id":"b","prompt":"y","top_p":2}"#);
    }

    #[test]
    fn a_bulk_message_that_is_not_valid_v2_is_dead_lettered_whole() {
        assert!(dead_reason(bulk(r#"{"v":2,"jobs":[{"id":"a","prompt":"x"},{"prompt":"no id"}]}"#)).contains("job 1"));
        assert!(dead_reason(bulk(r#"{"v":2,"jobs":[{"id":"a","prompt":"x"},{"id":"a","prompt":"y"}]}"#)).contains("used twice"));
        assert!(dead_reason(bulk(r#"{"v":2,"jobs":[{"id":"a","prompt":"x"},7]}"#)).contains("job 1"));
        assert!(dead_reason(bulk(r#"{"v":3,"jobs":[{"id":"a","prompt":"x"}]}"#)).contains("`v` is 3"));
        assert!(dead_reason(bulk(r#"{"id":"a","prompt":"x"}"#)).contains("bulk body"));
        let big = format!(r#"{{"v":2,"jobs":[{{"id":"a","prompt":"{}"}}]}}"#, "x".repeat(2000));
        assert!(dead_reason(bulk(&big)).contains("over the limit"));
    }

    #[test]
    fn a_bulk_body_without_the_bulk_content_type_is_dead_lettered() {
        let body = br#"{"v":2,"jobs":[{"id":"a","prompt":"x"}]}"#;
        for content_type in [None, Some("application/json")] {
            let reason = dead_reason(inspect_message(body, content_type, Some("m-1"), &rules()));
            assert!(reason.contains(BULK_CONTENT_TYPE), "{reason}");
        }
    }

    #[test]
    fn message_id_stands_in_for_a_missing_id() {
        match inspect(br#"{"prompt":"x"}"#, Some("m-1"), &rules()) {
            Verdict::Run(job) => assert_eq!(job.id, "m-1"),
            other => panic!("{other:?}"),
        }
    }
}
