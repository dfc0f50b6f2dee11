//! An in-memory result sink with the same write-once rule as Redis.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use genq_shared::{JobResult, JobStatus};

use super::{Begin, FinalResult, JobStart, ResultSink, SinkError};

/// Results by job id. Clones share the same map. A `std::sync::Mutex`: never held across `.await`.
#[derive(Clone, Default)]
pub struct MemorySink {
    results: Arc<Mutex<HashMap<String, JobResult>>>,
    chunks: Arc<Mutex<HashMap<String, String>>>,
    cancels: Arc<Mutex<HashSet<String>>>,
    solo_runs: Arc<Mutex<HashMap<String, u64>>>,
    /// The instance that began each job last.
    instances: Arc<Mutex<HashMap<String, String>>>,
}

impl MemorySink {
    /// A new, empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The result of job `id`, if any.
    pub fn get(&self, id: &str) -> Option<JobResult> {
        self.results.lock().ok()?.get(id).cloned()
    }

    /// Asks for job `id` to be cancelled, as `genq cancel` does through Redis.
    pub fn cancel(&self, id: &str) {
        if let Ok(mut set) = self.cancels.lock() {
            set.insert(id.to_string());
        }
    }

    fn is_cancelled(&self, id: &str) -> bool {
        self.cancels.lock().map(|s| s.contains(id)).unwrap_or(false)
    }

    /// Every result stored.
    pub fn all(&self) -> Vec<JobResult> {
        self.results.lock().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Concatenated stream chunks of job `id`.
    pub fn streamed(&self, id: &str) -> Option<String> {
        self.chunks.lock().ok()?.get(id).cloned()
    }

    fn begin_one(&self, start: &JobStart) -> Result<Begin, SinkError> {
        let cancelled = self.is_cancelled(&start.id);
        let mut map = self.lock()?;
        let entry = map.entry(start.id.clone()).or_insert_with(|| JobResult { id: start.id.clone(), ..JobResult::default() });
        if entry.status.is_some_and(JobStatus::is_final) {
            return Ok(Begin::Duplicate);
        }
        if cancelled {
            return Ok(Begin::Cancelled);
        }
        let previous = self.instances.lock().ok().and_then(|mut m| m.insert(start.id.clone(), start.instance.clone()));
        let suspect = entry.status == Some(JobStatus::Running) && previous.as_deref() != Some(start.instance.as_str());
        let solo_runs = self.solo_runs.lock().ok().and_then(|m| m.get(&start.id).copied()).unwrap_or(0);
        entry.status = Some(JobStatus::Running);
        entry.kind = Some(start.kind.clone());
        entry.model = Some(start.model.clone());
        entry.worker = Some(start.worker.clone());
        entry.started_ms = Some(start.started_ms);
        entry.created_ms = entry.created_ms.or(start.created_ms);
        entry.attempts = Some(entry.attempts.unwrap_or(0) + 1);
        Ok(Begin::Fresh { suspect, solo_runs })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, JobResult>>, SinkError> {
        self.results.lock().map_err(|_| SinkError("memory sink poisoned".into()))
    }
}

impl ResultSink for MemorySink {
    async fn begin_many(&self, starts: &[JobStart]) -> Result<Vec<Begin>, SinkError> {
        starts.iter().map(|s| self.begin_one(s)).collect()
    }

    async fn record_solo_run(&self, id: &str) -> Result<(), SinkError> {
        let mut map = self.solo_runs.lock().map_err(|_| SinkError("memory sink poisoned".into()))?;
        *map.entry(id.to_string()).or_default() += 1;
        Ok(())
    }

    async fn cancel_requested(&self, ids: &[String]) -> Result<Vec<bool>, SinkError> {
        Ok(ids.iter().map(|id| self.is_cancelled(id)).collect())
    }

    async fn finish(&self, results: &[FinalResult]) -> Result<Vec<bool>, SinkError> {
        let mut map = self.lock()?;
        Ok(results
            .iter()
            .map(|f| {
                let entry =
                    map.entry(f.result.id.clone()).or_insert_with(|| JobResult { id: f.result.id.clone(), ..JobResult::default() });
                if entry.status.is_some_and(JobStatus::is_final) {
                    return false;
                }
                let attempts = entry.attempts;
                let created = entry.created_ms;
                *entry = f.result.clone();
                entry.attempts = entry.attempts.or(attempts);
                entry.created_ms = entry.created_ms.or(created);
                true
            })
            .collect())
    }

    async fn append_chunks(&self, chunks: &[(String, String)]) -> Result<(), SinkError> {
        let mut map = self.chunks.lock().map_err(|_| SinkError("memory sink poisoned".into()))?;
        for (id, text) in chunks {
            map.entry(id.clone()).or_default().push_str(text);
        }
        Ok(())
    }
}
