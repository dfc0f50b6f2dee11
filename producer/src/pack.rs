//! Packing jobs into AMQP messages: jobs that route alike (same model and priority) share a bulk
//! (v2) message of up to `producer.bulk_max_jobs` jobs and `producer.bulk_max_bytes` bytes; a job
//! alone (or too large to share) is sent as a v1 message. Two copies of one id never share a
//! message (a worker dead-letters such a message whole). Pure logic, no I/O.

use genq_shared::bulk;
use genq_shared::{JobRequest, Priority};

/// How large a bulk message may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BulkLimits {
    /// Most jobs in one message; 1 turns bulk messages off.
    pub max_jobs: usize,
    /// Most bytes of one bulk body.
    pub max_bytes: usize,
}

/// One message to publish: its jobs (with their index in the caller's list) and its body.
#[derive(Debug)]
pub(crate) struct Message {
    /// The jobs it carries, in the caller's order.
    pub jobs: Vec<(usize, JobRequest)>,
    /// The body: one job's JSON, or a bulk body.
    pub body: Vec<u8>,
}

impl Message {
    /// Whether it is a bulk (v2) message.
    pub fn is_bulk(&self) -> bool {
        self.jobs.len() > 1
    }

    /// Model and priority all its jobs route with.
    pub fn route(&self) -> (&str, Priority) {
        let first = &self.jobs[0].1;
        (first.model_name(), first.priority())
    }
}

/// A bulk message being filled.
struct Open {
    model: String,
    priority: Priority,
    jobs: Vec<(usize, JobRequest, Vec<u8>)>,
    bytes: usize,
}

impl Open {
    fn new(model: &str, priority: Priority) -> Self {
        Open { model: model.to_string(), priority, jobs: Vec::new(), bytes: bulk::ENVELOPE_BYTES - 1 }
    }

    fn close(mut self) -> Message {
        let body = if self.jobs.len() == 1 {
            std::mem::take(&mut self.jobs[0].2)
        } else {
            bulk::encode_serialized(self.jobs.iter().map(|(_, _, json)| json.as_slice()))
        };
        Message { jobs: self.jobs.into_iter().map(|(i, job, _)| (i, job)).collect(), body }
    }
}

/// Packs `jobs` into messages; a job that cannot be serialized comes back with the reason.
pub(crate) fn pack(jobs: Vec<(usize, JobRequest)>, limits: BulkLimits) -> (Vec<Message>, Vec<(usize, JobRequest, String)>) {
    let mut messages = Vec::new();
    let mut failed = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    for (i, job) in jobs {
        let json = match serde_json::to_vec(&job) {
            Ok(json) => json,
            Err(e) => {
                failed.push((i, job, e.to_string()));
                continue;
            }
        };
        if limits.max_jobs <= 1 || bulk::ENVELOPE_BYTES + json.len() > limits.max_bytes {
            messages.push(Message { jobs: vec![(i, job)], body: json });
            continue;
        }
        let (model, priority) = (job.model_name(), job.priority());
        let at = match open.iter().position(|o| o.model == model && o.priority == priority) {
            Some(at) => at,
            None => {
                open.push(Open::new(model, priority));
                open.len() - 1
            }
        };
        let o = &mut open[at];
        let full = o.jobs.len() >= limits.max_jobs || o.bytes + 1 + json.len() > limits.max_bytes;
        if full || o.jobs.iter().any(|(_, other, _)| other.id == job.id) {
            let closed = std::mem::replace(o, Open::new(model, priority));
            messages.push(closed.close());
        }
        o.bytes += 1 + json.len();
        o.jobs.push((i, job, json));
    }
    messages.extend(open.into_iter().map(Open::close));
    (messages, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, model: &str, priority: Priority) -> JobRequest {
        let mut j = JobRequest::prompt(format!("prompt of {id}"));
        j.id = Some(id.into());
        j.model = Some(model.into());
        j.priority = Some(priority);
        j
    }

    fn ids(m: &Message) -> Vec<String> {
        m.jobs.iter().map(|(_, j)| j.id.clone().unwrap_or_default()).collect()
    }

    const WIDE: BulkLimits = BulkLimits { max_jobs: 3, max_bytes: 1 << 20 };

    #[test]
    fn jobs_that_route_alike_share_messages_up_to_the_job_limit() {
        let jobs: Vec<_> = (0..7).map(|i| (i, job(&format!("j{i}"), "m", Priority::Normal))).collect();
        let (messages, failed) = pack(jobs, WIDE);
        assert!(failed.is_empty());
        let packed: Vec<Vec<String>> = messages.iter().map(ids).collect();
        assert_eq!(packed, vec![vec!["j0", "j1", "j2"], vec!["j3", "j4", "j5"], vec!["j6"]]);
        assert!(messages[0].is_bulk() && !messages[2].is_bulk());
        let raw = bulk::parse(&messages[0].body).expect("a bulk body");
        assert_eq!(raw.len(), 3);
        let alone: JobRequest = serde_json::from_slice(&messages[2].body).expect("a v1 body");
        assert_eq!(alone.id.as_deref(), Some("j6"));
        let indexes: Vec<usize> = messages.iter().flat_map(|m| m.jobs.iter().map(|(i, _)| *i)).collect();
        assert_eq!(indexes, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn models_and_priorities_never_share_a_message() {
        let jobs = vec![
            (0, job("a", "m", Priority::Normal)),
            (1, job("b", "m", Priority::High)),
            (2, job("c", "other", Priority::Normal)),
            (3, job("d", "m", Priority::Normal)),
            (4, job("e", "m", Priority::High)),
        ];
        let (messages, _) = pack(jobs, WIDE);
        for m in &messages {
            let route = m.route();
            assert!(m.jobs.iter().all(|(_, j)| (j.model_name(), j.priority()) == route), "{:?}", ids(m));
        }
        let mut packed: Vec<Vec<String>> = messages.iter().map(ids).collect();
        packed.sort();
        assert_eq!(packed, vec![vec!["a", "d"], vec!["b", "e"], vec!["c"]]);
    }

    #[test]
    fn the_byte_limit_holds_and_a_job_too_large_to_share_goes_alone() {
        let one = serde_json::to_vec(&job("j0", "m", Priority::Normal)).expect("json").len();
        let limits = BulkLimits { max_jobs: 100, max_bytes: bulk::ENVELOPE_BYTES + 2 * one + 1 };
        let mut jobs: Vec<_> = (0..5).map(|i| (i, job(&format!("j{i}"), "m", Priority::Normal))).collect();
        let mut big = job("big", "m", Priority::Normal);
        big.prompt = Some("x".repeat(limits.max_bytes));
        jobs.insert(2, (99, big));
        let (messages, _) = pack(jobs, limits);
        for m in &messages {
            assert!(m.body.len() <= limits.max_bytes || !m.is_bulk(), "bulk body of {} bytes", m.body.len());
        }
        let packed: Vec<Vec<String>> = messages.iter().map(ids).collect();
        assert_eq!(packed, vec![vec!["big"], vec!["j0", "j1"], vec!["j2", "j3"], vec!["j4"]]);
    }

    #[test]
    fn copies_of_one_id_never_share_a_message() {
        let jobs = vec![
            (0, job("same", "m", Priority::Normal)),
            (1, job("a", "m", Priority::Normal)),
            (2, job("same", "m", Priority::Normal)),
            (3, job("b", "m", Priority::Normal)),
        ];
        let (messages, _) = pack(jobs, BulkLimits { max_jobs: 16, max_bytes: 1 << 20 });
        let packed: Vec<Vec<String>> = messages.iter().map(ids).collect();
        assert_eq!(packed, vec![vec!["same", "a"], vec!["same", "b"]]);
    }

    #[test]
    fn a_job_limit_of_one_sends_every_job_alone() {
        let jobs: Vec<_> = (0..3).map(|i| (i, job(&format!("j{i}"), "m", Priority::Normal))).collect();
        let (messages, _) = pack(jobs, BulkLimits { max_jobs: 1, max_bytes: 1 << 20 });
        assert_eq!(messages.len(), 3);
        assert!(messages.iter().all(|m| !m.is_bulk()));
    }
}
