//! Prometheus metric names (prefix `genq_`, base units, counters end in `_total`), declared once.

/// Jobs that reached a final status, by `status`.
pub const JOBS_TOTAL: &str = "genq_jobs_total";
/// Prompt tokens processed.
pub const PROMPT_TOKENS_TOTAL: &str = "genq_prompt_tokens_total";
/// Tokens generated.
pub const GENERATED_TOKENS_TOTAL: &str = "genq_generated_tokens_total";
/// Sequences per engine step (histogram).
pub const BATCH_SIZE: &str = "genq_batch_size";
/// Tokens per engine step (histogram).
pub const BATCH_TOKENS: &str = "genq_batch_tokens";
/// Time from publish to the start of work (histogram, seconds).
pub const QUEUE_WAIT_SECONDS: &str = "genq_queue_wait_seconds";
/// Time from the start of work to the first generated token (histogram, seconds).
pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "genq_time_to_first_token_seconds";
/// Time between generated tokens of one sequence (histogram, seconds).
pub const INTER_TOKEN_LATENCY_SECONDS: &str = "genq_inter_token_latency_seconds";
/// Time from the start of work to the final status (histogram, seconds).
pub const JOB_DURATION_SECONDS: &str = "genq_job_duration_seconds";
/// Wall time of one engine step (histogram, seconds).
pub const ENGINE_STEP_SECONDS: &str = "genq_engine_step_seconds";
/// Sequences in the running batch (gauge).
pub const RUNNING_SEQUENCES: &str = "genq_running_sequences";
/// Jobs received but not yet admitted to the batch (gauge).
pub const WAITING_JOBS: &str = "genq_waiting_jobs";
/// Deliveries received and not yet acked (gauge).
pub const INFLIGHT_DELIVERIES: &str = "genq_inflight_deliveries";
/// Messages rejected to the dead-letter queue because they are not jobs at all.
pub const DEAD_LETTERED_TOTAL: &str = "genq_dead_lettered_total";
/// Constant 1 labelled with the worker's `model`, `device`, `version` and CPU `kernel`.
pub const WORKER_INFO: &str = "genq_worker_info";
/// Tokens held in the KV caches of the running sequences (gauge).
pub const KV_CACHE_TOKENS: &str = "genq_kv_cache_tokens";
/// Counter: prompt tokens a worker copied from its prefix cache instead of computing them.
pub const PREFIX_CACHE_HIT_TOKENS_TOTAL: &str = "genq_prefix_cache_hit_tokens_total";
/// Gauge: tokens held in a worker's prefix cache.
pub const PREFIX_CACHE_TOKENS: &str = "genq_prefix_cache_tokens";
/// Counter: prompt blocks evicted from a worker's prefix cache to make room.
pub const PREFIX_CACHE_EVICTIONS_TOTAL: &str = "genq_prefix_cache_evictions_total";
/// Connections re-established after a loss, by `target` (`amqp`, `redis`).
pub const RECONNECTS_TOTAL: &str = "genq_reconnects_total";
/// Estimated tokens (prompt + `max_new_tokens`) of jobs this worker holds but has not yet
/// admitted to its batch (gauge; the prompt part is estimated from its length in bytes).
pub const WAITING_TOKENS: &str = "genq_waiting_tokens";
/// Messages ready in a job queue, by `queue`, as last polled by this worker (gauge).
pub const QUEUE_READY_MESSAGES: &str = "genq_queue_ready_messages";
/// Consumers of a job queue, by `queue`, as last polled by this worker (gauge).
pub const QUEUE_CONSUMERS: &str = "genq_queue_consumers";
/// Estimated tokens (prompt + `max_new_tokens`) of the messages ready in a job queue, by `queue`:
/// ready messages times the mean of the jobs this worker has received (gauge).
pub const QUEUE_BACKLOG_TOKENS: &str = "genq_queue_backlog_tokens";
/// Jobs published by producers, by `outcome` (`confirmed`, `nacked`, `returned`, `error`).
pub const PUBLISHED_TOTAL: &str = "genq_published_total";
/// Time from publishing a job to the broker's confirm (histogram, seconds).
pub const PUBLISH_DURATION_SECONDS: &str = "genq_publish_duration_seconds";
/// Jobs published again after their publish or confirm was lost with the connection (counter).
pub const PUBLISH_RETRIES_TOTAL: &str = "genq_publish_retries_total";
/// HTTP requests answered by the gateway, by `route` (the route pattern, never a job id) and
/// `status` (the HTTP status code).
pub const HTTP_REQUESTS_TOTAL: &str = "genq_http_requests_total";

/// Labels of [`RECONNECTS_TOTAL`]: the connections a worker keeps.
pub const RECONNECT_TARGETS: &[&str] = &["amqp", "redis"];
/// Labels of [`PUBLISHED_TOTAL`].
pub const PUBLISH_OUTCOMES: &[&str] = &["confirmed", "nacked", "returned", "error"];
/// Prompt bytes per token assumed when estimating the tokens of a job that is not tokenized yet.
pub const BYTES_PER_TOKEN_ESTIMATE: u64 = 4;

/// Histogram buckets for LLM latencies: milliseconds up to minutes.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Histogram buckets for per-step counts (sequences or tokens).
pub const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
