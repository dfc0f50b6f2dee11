//! Configuration: one struct per section, loaded in layers with the `config` crate —
//! built-in defaults < a TOML file (`--config`) < environment `GENQ__SECTION__KEY` < command-line flags.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::job::DEFAULT_MODEL;
use crate::topology::QueueLimits;
use crate::valid::Limits;

/// Every setting of genq. Each binary reads the sections it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// RabbitMQ connection.
    pub amqp: AmqpSettings,
    /// Redis connection and result keys.
    pub redis: RedisSettings,
    /// Job-queue arguments, used by whoever declares the topology.
    pub queue: QueueSettings,
    /// Worker settings.
    pub worker: WorkerSettings,
    /// Producer settings.
    pub producer: ProducerSettings,
    /// HTTP gateway (`genq serve`) settings.
    pub gateway: GatewaySettings,
}

/// RabbitMQ connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    /// AMQP URL (credentials belong here or in the environment, never in logs).
    pub url: String,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self { url: "amqp://guest:guest@127.0.0.1:5672/%2f".into() }
    }
}

/// Redis connection and result keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Redis URL.
    pub url: String,
    /// Prefix of every key (`genq` gives `genq:job:{id}`).
    pub key_prefix: String,
    /// Time to live of every result key, in seconds.
    pub result_ttl_secs: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self { url: "redis://127.0.0.1:6379".into(), key_prefix: "genq".into(), result_ttl_secs: 24 * 3600 }
    }
}

/// Arguments of the per-model job queues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// `x-delivery-limit`: deliveries before a job is dead-lettered.
    pub delivery_limit: u32,
    /// `x-max-length`: ready jobs before publishes are rejected.
    pub max_length: u32,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self { delivery_limit: 5, max_length: 1_000_000 }
    }
}

impl QueueSettings {
    /// The limits as topology arguments.
    pub fn limits(&self) -> QueueLimits {
        QueueLimits { delivery_limit: self.delivery_limit, max_length: self.max_length }
    }
}

/// Which engine a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The candle Llama engine (GGUF or safetensors).
    #[default]
    Llama,
    /// A deterministic engine that echoes the prompt: for tests and overhead benchmarks.
    Echo,
}

/// Worker settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Name of the model served; the worker consumes `genq.jobs.<model_name>` (and `.high`, `.low`).
    pub model_name: String,
    /// GGUF file or safetensors folder of the model.
    pub model_path: String,
    /// `llama` or `echo`.
    pub engine: EngineKind,
    /// `cpu`, `cuda` (GPU 0) or `cuda:N`; a GPU needs a build with the `cuda` feature.
    pub device: String,
    /// How weights are held in memory: `auto` (on a CPU with AVX2 or better `packed`; on other CPUs
    /// `q8_0` when `max_batch_size` <= 2, else `f32`; on a GPU `native`: GGUF quantized,
    /// safetensors bf16), `packed` (genq's own 4/8-bit kernels), `native`
    /// (as stored), `q8_0` (re-quantized at load; SIMD kernels on CPU) or `f32` (dequantized).
    pub weights: String,
    /// The CPU kernel for packed weights: `auto` (the fastest this CPU runs: `amx`, else
    /// `avx512-vnni`, else `avx-vnni`, else `avx2`, else `reference`) or one of those names. All
    /// give the same numbers.
    pub cpu_kernel: String,
    /// Prompt tokens prefilled per engine step at most, so running sequences keep decoding.
    pub max_prefill_tokens: usize,
    /// MiB of prompt blocks' keys and values kept for later jobs that start with the same
    /// tokens (the CPU path's prefix cache); 0 turns it off.
    pub prefix_cache_mib: usize,
    /// Unacked deliveries held at once per consumer (AMQP `basic_qos`; a worker consumes the
    /// model's three queues, so up to three times this), which bounds memory.
    pub prefetch: u16,
    /// Most sequences in the running batch.
    pub max_batch_size: usize,
    /// When idle, how long the first job waits for others to join its batch, in ms.
    pub batch_wait_ms: u64,
    /// Results written to Redis in one pipeline at most.
    pub write_batch_size: usize,
    /// How long a write batch waits to fill, in ms.
    pub write_wait_ms: u64,
    /// Largest message body accepted, in bytes; larger ones are dead-lettered.
    pub max_body_bytes: usize,
    /// Largest prompt accepted, in bytes.
    pub max_prompt_bytes: usize,
    /// Address of `/metrics`, `/livez` and `/readyz` (loopback by default).
    pub metrics_addr: String,
    /// Name written into results and logs; empty means `<hostname>-<pid>`.
    pub worker_id: String,
    /// Seconds a shutdown waits for in-flight jobs before requeueing them.
    pub shutdown_grace_secs: u64,
    /// How often the worker checks Redis for cancel requests of its jobs, in ms (0: never).
    pub cancel_poll_ms: u64,
    /// A job that was redelivered after its worker died runs alone; after this many solo runs
    /// that never finished it is poison: it ends `failed` (`error_kind` `poison`) and is
    /// dead-lettered.
    pub poison_after_solo_runs: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            model_name: DEFAULT_MODEL.into(),
            model_path: "models/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            engine: EngineKind::Llama,
            device: "cpu".into(),
            weights: "auto".into(),
            cpu_kernel: "auto".into(),
            max_prefill_tokens: 512,
            prefix_cache_mib: 256,
            prefetch: 64,
            max_batch_size: 16,
            batch_wait_ms: 5,
            write_batch_size: 64,
            write_wait_ms: 2,
            max_body_bytes: 1024 * 1024,
            max_prompt_bytes: 256 * 1024,
            metrics_addr: "127.0.0.1:9464".into(),
            worker_id: String::new(),
            shutdown_grace_secs: 30,
            cancel_poll_ms: 250,
            poison_after_solo_runs: 2,
        }
    }
}

impl WorkerSettings {
    /// Validation limits for a model with `context_length` tokens.
    pub fn limits(&self, context_length: usize) -> Limits {
        Limits { max_new_tokens: context_length.min(u32::MAX as usize) as u32, max_prompt_bytes: self.max_prompt_bytes }
    }
}

/// Producer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerSettings {
    /// Model of jobs that name none.
    pub default_model: String,
    /// Publishes awaiting a broker confirm at once.
    pub max_in_flight: usize,
    /// Declare the default model's queues before publishing, so jobs published before any
    /// worker started are kept rather than returned as unroutable.
    pub declare_default_model: bool,
    /// How long publishes that failed on a lost connection are retried (reconnecting, same job
    /// ids) before they are reported as errors, in seconds.
    pub retry_secs: u64,
    /// Most jobs packed into one bulk (v2) message when many are published together; 1 sends
    /// every job as a v1 message. Small enough that several workers share a batch file: a
    /// worker's prefetch counts messages.
    pub bulk_max_jobs: usize,
    /// Most bytes of one bulk message's body (at most the workers' `worker.max_body_bytes`); a
    /// job too large to share goes alone.
    pub bulk_max_bytes: usize,
    /// How long a job published on its own (`Producer::submit`) may wait for others to share a
    /// bulk message with, in milliseconds; 0 publishes it at once.
    pub bulk_wait_ms: u64,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        Self {
            default_model: DEFAULT_MODEL.into(),
            max_in_flight: 1024,
            declare_default_model: true,
            retry_secs: 30,
            bulk_max_jobs: 16,
            bulk_max_bytes: 256 * 1024,
            bulk_wait_ms: 0,
        }
    }
}

/// HTTP gateway (`genq serve`) settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    /// Address the gateway listens on (loopback by default).
    pub listen: String,
    /// Longest a synchronous request waits for its job, in seconds; then it answers 504 and
    /// cancels the job, since nobody is left to read it.
    pub request_timeout_secs: u64,
    /// Bearer tokens accepted, comma-separated; empty means no authentication. Set them in the
    /// file or the environment (`GENQ__GATEWAY__API_KEYS`), never on the command line; they are
    /// never logged.
    pub api_keys: String,
    /// Largest request body accepted, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Models `GET /v1/models` looks for workers of, comma-separated, besides
    /// `producer.default_model`.
    pub models: String,
    /// Most choices (`n`) one OpenAI request may ask for; each is its own job.
    pub max_n: u32,
    /// Largest file `POST /v1/files` accepts, in bytes.
    pub file_max_bytes: usize,
    /// Most requests one batch input file may hold.
    pub batch_max_requests: usize,
    /// How long uploaded files, batch records and batch output files are kept, in seconds.
    pub file_ttl_secs: u64,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            request_timeout_secs: 300,
            api_keys: String::new(),
            max_body_bytes: 1024 * 1024,
            models: String::new(),
            max_n: 8,
            file_max_bytes: 200 * 1024 * 1024,
            batch_max_requests: 50_000,
            file_ttl_secs: 30 * 86_400,
        }
    }
}

/// Every field but the tokens, so settings can be logged without leaking them.
impl std::fmt::Debug for GatewaySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySettings")
            .field("listen", &self.listen)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("api_keys", &format_args!("<{} token(s)>", self.api_key_list().len()))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("models", &self.models)
            .field("max_n", &self.max_n)
            .field("file_max_bytes", &self.file_max_bytes)
            .field("batch_max_requests", &self.batch_max_requests)
            .field("file_ttl_secs", &self.file_ttl_secs)
            .finish()
    }
}

fn comma_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect()
}

impl GatewaySettings {
    /// The bearer tokens, trimmed, empty entries dropped.
    pub fn api_key_list(&self) -> Vec<String> {
        comma_list(&self.api_keys)
    }

    /// The extra models to probe, trimmed, empty entries dropped.
    pub fn model_list(&self) -> Vec<String> {
        comma_list(&self.models)
    }
}

/// Command-line values that override every other layer, as `(setting, value)` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides(pub Vec<(String, String)>);

impl Overrides {
    /// Records `key = value` when the flag was given.
    pub fn set(&mut self, key: &str, value: Option<impl ToString>) -> &mut Self {
        if let Some(v) = value {
            self.0.push((key.to_string(), v.to_string()));
        }
        self
    }
}

/// Settings could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct SettingsError(#[from] config::ConfigError);

impl Settings {
    /// Loads settings: defaults, then `file` (TOML, required when given), then environment
    /// variables `GENQ__SECTION__KEY`, then `overrides` (`("worker.prefetch", "32")`) from flags.
    pub fn load(file: Option<&Path>, overrides: &[(String, String)]) -> Result<Settings, SettingsError> {
        Self::load_with_env(file, overrides, None)
    }

    /// As [`Settings::load`], reading the environment from `env` when given (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        overrides: &[(String, String)],
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Settings, SettingsError> {
        let mut builder = config::Config::builder().add_source(config::Config::try_from(&Settings::default())?);
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml).required(true));
        }
        let mut environment = config::Environment::with_prefix("GENQ").separator("__").try_parsing(true);
        if let Some(env) = env {
            environment = environment.source(Some(env));
        }
        builder = builder.add_source(environment);
        for (key, value) in overrides {
            builder = builder.set_override(key.as_str(), value.as_str())?;
        }
        Ok(builder.build()?.try_deserialize()?)
    }
}

/// Every setting with its default and environment variable, one per line, for `--help`.
pub fn describe_settings() -> String {
    let mut out = String::from("Settings (TOML key = default; environment variable):\n");
    let Ok(serde_json::Value::Object(sections)) = serde_json::to_value(Settings::default()) else { return out };
    for (section, fields) in sections {
        let serde_json::Value::Object(fields) = fields else { continue };
        for (key, value) in fields {
            let env = format!("GENQ__{}__{}", section.to_uppercase(), key.to_uppercase());
            out.push_str(&format!("  {section}.{key} = {value}; {env}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    #[test]
    fn defaults_connect_to_local_services() {
        let s = Settings::load_with_env(None, &[], Some(HashMap::new())).expect("loads");
        assert_eq!(s.amqp.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.redis.url, "redis://127.0.0.1:6379");
        assert_eq!(s.worker.metrics_addr, "127.0.0.1:9464");
    }

    #[test]
    fn file_then_env_then_flags_each_win_over_the_last() {
        let dir = std::env::temp_dir().join(format!("genq-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("genq.toml");
        let mut f = std::fs::File::create(&path).expect("file");
        writeln!(f, "[worker]\nprefetch = 8\nmax_batch_size = 3\nbatch_wait_ms = 7\n[redis]\nkey_prefix = \"file\"").expect("write");
        let env: HashMap<String, String> =
            [("GENQ__WORKER__MAX_BATCH_SIZE".to_string(), "4".to_string()), ("GENQ__REDIS__KEY_PREFIX".to_string(), "env".to_string())]
                .into();
        let flags = vec![("redis.key_prefix".to_string(), "flag".to_string())];
        let s = Settings::load_with_env(Some(&path), &flags, Some(env)).expect("loads");
        assert_eq!(s.worker.prefetch, 8, "file over default");
        assert_eq!(s.worker.batch_wait_ms, 7, "file over default");
        assert_eq!(s.worker.max_batch_size, 4, "env over file");
        assert_eq!(s.redis.key_prefix, "flag", "flag over env");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn help_lists_every_setting_with_its_environment_name() {
        let text = describe_settings();
        assert!(text.contains("worker.prefetch = 64; GENQ__WORKER__PREFETCH"), "{text}");
        assert!(text.contains("amqp.url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"; GENQ__AMQP__URL"), "{text}");
        let Ok(serde_json::Value::Object(sections)) = serde_json::to_value(Settings::default()) else { panic!("settings serialise") };
        let mut fields = 0;
        for (section, keys) in &sections {
            for key in keys.as_object().expect("section is a table").keys() {
                let env = format!("; GENQ__{}__{}\n", section.to_uppercase(), key.to_uppercase());
                assert!(text.contains(&format!("  {section}.{key} = ")) && text.contains(&env), "{section}.{key} missing: {text}");
                fields += 1;
            }
        }
        assert_eq!(text.lines().count(), 1 + fields, "one line per setting: {text}");
    }

    #[test]
    fn gateway_tokens_come_from_the_environment_and_never_show_in_debug_output() {
        let env: HashMap<String, String> = [("GENQ__GATEWAY__API_KEYS".to_string(), "s3cret-a, s3cret-b,".to_string())].into();
        let s = Settings::load_with_env(None, &[], Some(env)).expect("loads");
        assert_eq!(s.gateway.api_key_list(), vec!["s3cret-a".to_string(), "s3cret-b".to_string()]);
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<2 token(s)>"), "{shown}");
    }

    #[test]
    fn a_misspelled_setting_is_an_error() {
        let env: HashMap<String, String> = [("GENQ__WORKER__PREFECH".to_string(), "4".to_string())].into();
        let err = Settings::load_with_env(None, &[], Some(env)).expect_err("typo");
        assert!(err.to_string().contains("prefech"), "{err}");
    }
}
