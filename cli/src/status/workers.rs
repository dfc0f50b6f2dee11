//! A worker's view for `genq status`: its `/metrics` read twice, `interval` apart, so counters
//! become rates (tokens/s, jobs/s) and gauges are read as they are now.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use genq_protocol::url::{HttpTarget, UrlError};
use genq_shared::metrics as names;

use super::http;

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`/`_sum`/`_count` for histogram parts).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses the Prometheus text format (comments skipped; label values without escaped quotes).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = match line.rfind('}') {
            Some(end) => (&line[..=end], line[end + 1..].trim()),
            None => match line.split_once(' ') {
                Some((s, v)) => (s, v.trim()),
                None => continue,
            },
        };
        let Some(value) = value.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let mut labels = BTreeMap::new();
                for pair in rest.trim_end_matches('}').split("\",").filter(|p| !p.is_empty()) {
                    if let Some((k, v)) = pair.split_once('=') {
                        labels.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
                    }
                }
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        out.push(Sample { name: name.to_string(), labels, value });
    }
    out
}

/// Sum of every series of `name` whose labels include `label` (`None`: every series).
pub fn total(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v)))
        .map(|s| s.value)
        .sum()
}

/// What one worker reports.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerStatus {
    /// Address asked.
    pub addr: String,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
    /// From `genq_worker_info`.
    pub model: String,
    /// From `genq_worker_info`.
    pub device: String,
    /// Generated tokens per second over the interval.
    pub tokens_per_s: f64,
    /// Final results per second over the interval.
    pub jobs_per_s: f64,
    /// Sequences running now.
    pub running: f64,
    /// Jobs waiting for a batch slot now.
    pub waiting: f64,
    /// Deliveries held, not yet acked.
    pub inflight: f64,
    /// Tokens in KV caches now.
    pub kv_cache_tokens: f64,
    /// Jobs done since the worker started.
    pub done: f64,
    /// Jobs failed, expired or cancelled since the worker started.
    pub not_done: f64,
    /// Share of the prompt tokens since the worker started that its prefix cache supplied, in %.
    pub prefix_hit_pct: f64,
}

/// `host:port` or an `http://` URL of a worker's metrics; the path defaults to `/metrics`.
fn metrics_target(addr: &str) -> Result<HttpTarget, UrlError> {
    let mut target = HttpTarget::parse(addr)?;
    if target.path == "/" {
        target.path = "/metrics".into();
    }
    Ok(target)
}

async fn scrape(addr: &str) -> Result<Vec<Sample>, String> {
    let target = metrics_target(addr).map_err(|e| e.to_string())?;
    http::get(&target, None, Duration::from_secs(5)).await.map(|t| parse(&t)).map_err(|e| e.to_string())
}

/// Reads `addr`'s metrics twice, `interval` apart.
pub async fn sample(addr: &str, interval: Duration) -> WorkerStatus {
    let mut status = WorkerStatus { addr: addr.to_string(), ..WorkerStatus::default() };
    let first = match scrape(addr).await {
        Ok(s) => s,
        Err(e) => {
            status.error = Some(e);
            return status;
        }
    };
    let started = Instant::now();
    tokio::time::sleep(interval).await;
    let now = match scrape(addr).await {
        Ok(s) => s,
        Err(e) => {
            status.error = Some(e);
            return status;
        }
    };
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let rate = |name: &str| ((total(&now, name, None) - total(&first, name, None)) / secs).max(0.0);
    if let Some(info) = now.iter().find(|s| s.name == names::WORKER_INFO) {
        status.model = info.labels.get("model").cloned().unwrap_or_default();
        status.device = info.labels.get("device").cloned().unwrap_or_default();
    }
    status.tokens_per_s = rate(names::GENERATED_TOKENS_TOTAL);
    status.jobs_per_s = rate(names::JOBS_TOTAL);
    status.running = total(&now, names::RUNNING_SEQUENCES, None);
    status.waiting = total(&now, names::WAITING_JOBS, None);
    status.inflight = total(&now, names::INFLIGHT_DELIVERIES, None);
    status.kv_cache_tokens = total(&now, names::KV_CACHE_TOKENS, None);
    status.done = total(&now, names::JOBS_TOTAL, Some(("status", "done")));
    status.not_done = total(&now, names::JOBS_TOTAL, None) - status.done;
    status.prefix_hit_pct = hit_pct(total(&now, names::PREFIX_CACHE_HIT_TOKENS_TOTAL, None), total(&now, names::PROMPT_TOKENS_TOTAL, None));
    status
}

/// `hits` as a percentage of `prompt_tokens` (0 before any prompt).
fn hit_pct(hits: f64, prompt_tokens: f64) -> f64 {
    if prompt_tokens > 0.0 {
        100.0 * hits / prompt_tokens
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_hit_rate_is_a_share_of_prompt_tokens() {
        let s = parse("genq_prefix_cache_hit_tokens_total 300\ngenq_prompt_tokens_total 1200\n");
        let pct = hit_pct(total(&s, names::PREFIX_CACHE_HIT_TOKENS_TOTAL, None), total(&s, names::PROMPT_TOKENS_TOTAL, None));
        assert_eq!(pct, 25.0);
        assert_eq!(hit_pct(0.0, 0.0), 0.0, "no prompt yet");
    }

    #[test]
    fn reads_labelled_and_plain_samples() {
        let text = "# HELP x\n# TYPE genq_jobs_total counter\ngenq_jobs_total{status=\"done\"} 7\ngenq_jobs_total{status=\"failed\"} 2\n\
                    genq_worker_info{device=\"cpu\",model=\"m\",version=\"0.1.0\"} 1\ngenq_running_sequences 3\n";
        let s = parse(text);
        assert_eq!(total(&s, "genq_jobs_total", None), 9.0);
        assert_eq!(total(&s, "genq_jobs_total", Some(("status", "done"))), 7.0);
        assert_eq!(total(&s, "genq_running_sequences", None), 3.0);
        let info = s.iter().find(|x| x.name == "genq_worker_info").expect("info");
        assert_eq!(info.labels.get("model").map(String::as_str), Some("m"));
        assert_eq!(info.labels.get("version").map(String::as_str), Some("0.1.0"));
    }
}
