//! What a worker process costs, read from `/proc/<pid>` while it still runs: CPU time (utime +
//! stime of `stat`), resident memory now (`VmRSS`) and at its peak (`VmHWM`). Linux only; other
//! systems read as `None`.

use std::time::Duration;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// User + system CPU time so far, seconds.
    pub cpu_secs: f64,
    /// Resident set now, bytes.
    pub rss_bytes: u64,
    /// Peak resident set so far, bytes.
    pub peak_rss_bytes: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times. 100 on every Linux the project targets
/// (`getconf CLK_TCK`); reading it needs libc, which the workspace does not link for this.
const CLOCK_TICKS: f64 = 100.0;

/// Reads process `pid` now; `None` when it is gone or this is not Linux.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_secs: cpu_ticks(&stat)? as f64 / CLOCK_TICKS,
        rss_bytes: status_kib(&status, "VmRSS:")? * 1024,
        peak_rss_bytes: status_kib(&status, "VmHWM:")? * 1024,
    })
}

/// utime + stime (fields 14 and 15) of a `stat` line; the command name in brackets may hold spaces.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
}

/// Processes whose command name (`/proc/<pid>/comm`) is `comm`, e.g. `beam.smp` (RabbitMQ) or
/// `redis-server`.
pub fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))
        .collect()
}

/// CPU seconds used so far by all of `pids` together.
pub fn cpu_secs(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| sample(p)).map(|s| s.cpu_secs).sum()
}

/// CPU used by every process on a run's path (the workers, RabbitMQ, Redis, this process)
/// from its start, so the cost per job can be read even on a busy machine.
pub struct CpuMeter {
    groups: Vec<(&'static str, Vec<u32>, f64)>,
}

impl CpuMeter {
    /// Starts counting for `workers` and the services.
    pub fn start(workers: Vec<u32>) -> Self {
        let groups = [
            ("workers", workers),
            ("rabbitmq", pids_named("beam.smp")),
            ("redis", pids_named("redis-server")),
            ("bench_producer_and_reader", vec![std::process::id()]),
        ];
        Self {
            groups: groups
                .into_iter()
                .map(|(name, pids)| {
                    let before = cpu_secs(&pids);
                    (name, pids, before)
                })
                .collect(),
        }
    }

    /// Microseconds of CPU per job of each group since the start.
    pub fn per_job(&self, jobs: usize) -> serde_json::Map<String, serde_json::Value> {
        self.groups
            .iter()
            .map(|(name, pids, before)| ((*name).to_string(), serde_json::json!((1e6 * (cpu_secs(pids) - before) / jobs.max(1) as f64).round())))
            .collect()
    }
}

/// Resident-memory readings of one process over a run, for "does memory stay flat".
#[derive(Debug, Clone, Default)]
pub struct RssTrace {
    /// `(seconds since start, RSS bytes)`.
    pub points: Vec<(f64, u64)>,
}

impl RssTrace {
    /// Largest RSS seen.
    pub fn max(&self) -> u64 {
        self.points.iter().map(|p| p.1).max().unwrap_or(0)
    }

    /// RSS at the given fraction of the run (0.25: a quarter in), nearest reading.
    pub fn at_fraction(&self, f: f64) -> u64 {
        let n = self.points.len();
        if n == 0 {
            return 0;
        }
        self.points[((n - 1) as f64 * f).round() as usize].1
    }
}

/// Samples `pid`'s RSS every `every` until `stop` is set; returns the trace.
pub async fn trace_rss(pid: u32, every: Duration, stop: tokio::sync::watch::Receiver<bool>) -> RssTrace {
    let started = std::time::Instant::now();
    let mut trace = RssTrace::default();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if *stop.borrow() {
            return trace;
        }
        match sample(pid) {
            Some(s) => trace.points.push((started.elapsed().as_secs_f64(), s.rss_bytes)),
            None => return trace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces() {
        let stat = "42 (genq worker) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 1 1";
        assert_eq!(cpu_ticks(stat), Some(300));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).expect("linux /proc");
        assert!(s.peak_rss_bytes >= s.rss_bytes && s.rss_bytes > 0, "{s:?}");
    }
}
