//! Counting what came back: the fault suite, the RabbitMQ cluster scenario and the chaos soak
//! publish uniquely identified jobs, inject faults, then read every result and print one line —
//! confirmed, done, failed (by reason), lost, duplicate executions, longest wait.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use genq_shared::{JobRequest, JobResult, JobStatus};

use crate::{scratch_dir, Sandbox};

/// What one scenario ended with.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Jobs the broker confirmed.
    pub confirmed: usize,
    /// Ended `done`.
    pub done: usize,
    /// Ended `failed`.
    pub failed: usize,
    /// Failed jobs by `error_kind`.
    pub failed_by_kind: BTreeMap<String, usize>,
    /// Confirmed jobs with no final result.
    pub lost: usize,
    /// Jobs started more than once (`attempts` > 1).
    pub duplicate_executions: usize,
    /// Longest time from publish to final result, ms.
    pub longest_wait_ms: u64,
}

impl Tally {
    /// Counts `results` of `confirmed` jobs (`None`: no result at all).
    pub fn of(confirmed: usize, results: &[Option<JobResult>]) -> Self {
        let finals: Vec<&JobResult> = results.iter().flatten().filter(|r| r.status.is_some_and(JobStatus::is_final)).collect();
        let mut failed_by_kind = BTreeMap::new();
        for r in finals.iter().filter(|r| r.status == Some(JobStatus::Failed)) {
            *failed_by_kind.entry(r.error_kind.clone().unwrap_or_else(|| "unknown".into())).or_default() += 1;
        }
        Tally {
            confirmed,
            done: finals.iter().filter(|r| r.status == Some(JobStatus::Done)).count(),
            failed: finals.iter().filter(|r| r.status == Some(JobStatus::Failed)).count(),
            failed_by_kind,
            lost: confirmed - finals.len(),
            duplicate_executions: results.iter().flatten().filter(|r| r.attempts.unwrap_or(0) > 1).count(),
            longest_wait_ms: finals.iter().filter_map(|r| Some(r.finished_ms?.saturating_sub(r.created_ms?))).max().unwrap_or(0),
        }
    }

    /// Prints the scenario's line (and appends it to `faults.txt` in the scratch folder).
    pub fn print(&self, scenario: &str) -> String {
        let reasons: Vec<String> = self.failed_by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let reasons = if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) };
        let line = format!(
            "{scenario}: {} confirmed, {} done, {} failed{reasons}, {} lost, {} duplicate-executions, longest wait {:.1} s",
            self.confirmed,
            self.done,
            self.failed,
            self.lost,
            self.duplicate_executions,
            self.longest_wait_ms as f64 / 1000.0
        );
        println!("{line}");
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(scratch_dir().join("faults.txt"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
        line
    }
}

/// Jobs of three words each, so each runs `tokens` echo steps; ids `<tag>-<i>`.
pub fn jobs(tag: &str, n: usize, tokens: u32) -> Vec<JobRequest> {
    (0..n)
        .map(|i| JobRequest { id: Some(format!("{tag}-{i}")), max_new_tokens: Some(tokens), ..JobRequest::prompt(format!("w{i} a b")) })
        .collect()
}

/// Publishes `jobs` through `producer`, and again (after a pause) those RabbitMQ nacked, as its
/// error asks: a quorum queue nacks publishes while it has no leader, during a node failover.
/// Returns the confirmed ids and the number of nacks.
pub async fn publish_through_nacks(producer: &genq_producer::Producer, mut jobs: Vec<JobRequest>) -> (Vec<String>, usize) {
    let (mut ids, mut nacks) = (Vec::new(), 0);
    for _ in 0..60 {
        let results = producer.submit_many(jobs.clone(), |_| {}).await;
        let mut nacked = Vec::new();
        for (job, r) in jobs.into_iter().zip(results) {
            match r {
                Ok(id) => ids.push(id),
                Err(genq_producer::PublishError::Nacked) => nacked.push(job),
                Err(e) => println!("not published: {e}"),
            }
        }
        jobs = nacked;
        if jobs.is_empty() {
            break;
        }
        nacks += jobs.len();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (ids, nacks)
}

/// Publishes `jobs` with a producer of `sb` (bulk messages, as by default); returns the ids the
/// broker confirmed.
pub async fn publish(sb: &Sandbox, jobs: Vec<JobRequest>) -> Vec<String> {
    publish_with(sb.producer().await, jobs).await
}

/// Publishes `jobs` one v1 message each; returns the ids the broker confirmed.
pub async fn publish_v1(sb: &Sandbox, jobs: Vec<JobRequest>) -> Vec<String> {
    publish_with(sb.producer_v1().await, jobs).await
}

async fn publish_with(producer: genq_producer::Producer, jobs: Vec<JobRequest>) -> Vec<String> {
    let ids: Vec<String> = producer.submit_many(jobs, |_| {}).await.into_iter().filter_map(Result::ok).collect();
    producer.close().await;
    ids
}

/// Ids of `ids` whose result is `done` now.
pub async fn done_ids(sb: &Sandbox, ids: &[String]) -> Vec<String> {
    // Nothing counts as done while Redis cannot answer (still loading after a restart).
    let Ok(results) = sb.results().await.get_many(ids).await else { return Vec::new() };
    ids.iter().zip(results).filter(|(_, r)| r.as_ref().is_some_and(|r| r.status == Some(JobStatus::Done))).map(|(id, _)| id.clone()).collect()
}

/// Waits until at least `n` of `ids` are done (60 s at most).
pub async fn until_done(sb: &Sandbox, ids: &[String], n: usize) {
    let until = Instant::now() + Duration::from_secs(60);
    while done_ids(sb, ids).await.len() < n {
        assert!(Instant::now() < until, "fewer than {n} jobs finished in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts now; `Err` while Redis cannot answer (a Redis just restarted answers LOADING while it
/// reads its append-only file back), the error cut short.
pub async fn tally_now(sb: &Sandbox, ids: &[String]) -> Result<(Tally, usize), String> {
    let results = sb.results().await.get_many(ids).await.map_err(|e| e.to_string().chars().take(300).collect::<String>())?;
    let finished = results.iter().flatten().filter(|r| r.status.is_some_and(JobStatus::is_final)).count();
    Ok((Tally::of(ids.len(), &results), finished))
}

/// Waits until every id has a final result or `timeout` passes, then counts; asks again while
/// Redis cannot answer (the error if that lasts past the timeout).
pub async fn tally(sb: &Sandbox, ids: &[String], timeout: Duration) -> Tally {
    let until = Instant::now() + timeout;
    loop {
        match tally_now(sb, ids).await {
            Ok((t, finished)) if finished == ids.len() || Instant::now() > until => return t,
            Ok(_) => {}
            Err(e) => assert!(Instant::now() < until, "redis: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
