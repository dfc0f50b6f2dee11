//! Wire format v2: one AMQP message carrying many jobs (a bulk message), `{"v":2,"jobs":[...]}`,
//! marked by its content type so it is never read as a v1 job. Each job in it is a v1 job object
//! with its own `id`, result and lifecycle.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::job::JobRequest;

/// The `v` of a bulk message.
pub const BULK_VERSION: u32 = 2;
/// Content type of a v1 message (one job).
pub const JOB_CONTENT_TYPE: &str = "application/json";
/// Content type of a v2 bulk message; a bulk body under any other content type is refused.
pub const BULK_CONTENT_TYPE: &str = "application/vnd.genq.bulk+json";
/// Most jobs one bulk message may carry.
pub const MAX_BULK_JOBS: usize = 1024;

/// A bulk message's body as it is read: the jobs are kept as raw JSON, so each is checked (and,
/// when it is poison, dead-lettered) on its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    v: u32,
    #[serde(borrow)]
    jobs: Vec<&'a RawValue>,
}

/// A bulk message's body as it is written.
#[derive(Serialize)]
struct Outgoing<'a> {
    v: u32,
    jobs: &'a [JobRequest],
}

/// Bytes a bulk body adds around its jobs' JSON, besides one comma between two jobs.
pub const ENVELOPE_BYTES: usize = r#"{"v":2,"jobs":[]}"#.len();

/// Reads a bulk body into its raw jobs; the error says why it is not a v2 message (not JSON, an
/// unknown field, `v` other than 2, no jobs or more than [`MAX_BULK_JOBS`]).
pub fn parse(body: &[u8]) -> Result<Vec<&RawValue>, String> {
    let envelope: Envelope<'_> = serde_json::from_slice(body).map_err(|e| format!("bulk body is not `{{\"v\":2,\"jobs\":[...]}}`: {e}"))?;
    if envelope.v != BULK_VERSION {
        return Err(format!("bulk message `v` is {}, but only {BULK_VERSION} is accepted", envelope.v));
    }
    if envelope.jobs.is_empty() || envelope.jobs.len() > MAX_BULK_JOBS {
        return Err(format!("bulk message carries {} jobs; 1..={MAX_BULK_JOBS} are accepted", envelope.jobs.len()));
    }
    Ok(envelope.jobs)
}

/// Writes `jobs` as one bulk body.
pub fn encode(jobs: &[JobRequest]) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Outgoing { v: BULK_VERSION, jobs })
}

/// Writes one bulk body from jobs already serialized (each a JSON object), as [`encode`] would.
pub fn encode_serialized<'a>(jobs: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = format!(r#"{{"v":{BULK_VERSION},"jobs":["#).into_bytes();
    for (i, job) in jobs.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(job);
    }
    body.extend_from_slice(b"]}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_jobs_parse_back_one_by_one() {
        let mut a = JobRequest::prompt("first");
        a.id = Some("a".into());
        let mut b = JobRequest::prompt("second \"quoted\"");
        b.id = Some("b".into());
        let body = encode(&[a.clone(), b.clone()]).expect("encode");
        let raw = parse(&body).expect("parse");
        let back: Vec<JobRequest> = raw.iter().map(|r| serde_json::from_str(r.get()).expect("job")).collect();
        assert_eq!(back, vec![a.clone(), b.clone()]);
        let serialized = [serde_json::to_vec(&a).expect("a"), serde_json::to_vec(&b).expect("b")];
        let joined = encode_serialized(serialized.iter().map(Vec::as_slice));
        assert_eq!(joined, body);
        assert_eq!(joined.len(), ENVELOPE_BYTES + serialized[0].len() + 1 + serialized[1].len());
    }

    #[test]
    fn bodies_that_are_not_v2_say_why() {
        let why = |body: &[u8]| parse(body).expect_err("not a v2 body");
        assert!(why(b"not json").contains("not"));
        assert!(why(br#"{"v":1,"jobs":[{}]}"#).contains("`v` is 1"));
        assert!(why(br#"{"v":2,"jobs":[]}"#).contains("0 jobs"));
        assert!(why(br#"{"v":2,"jobs":[{}],"extra":1}"#).contains("extra"));
        assert!(why(br#"{"jobs":[{}]}"#).contains("`v`"));
        let many = format!("{{\"v\":2,\"jobs\":[{}]}}", vec!["{}"; MAX_BULK_JOBS + 1].join(","));
        assert!(why(many.as_bytes()).contains("1025 jobs"));
    }
}
