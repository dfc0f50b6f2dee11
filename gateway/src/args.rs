//! The flags of the gateway: the settings flags every genq command line shares (`genq`'s global
//! flags, and `genq-gateway`'s), and those of serving. Settings come from defaults < the TOML
//! file (`--config`) < environment `GENQ__SECTION__KEY` < these flags.

use std::path::PathBuf;

use clap::Args;

use genq_shared::settings::{Overrides, Settings, SettingsError};

/// Settings flags shared by every genq command line.
#[derive(Args, Debug, Clone)]
pub struct SettingsArgs {
    /// TOML settings file with sections [amqp], [redis], [queue], [worker], [producer], [gateway].
    #[arg(long, global = true, env = "GENQ_CONFIG")]
    pub config: Option<PathBuf>,
    /// RabbitMQ URL [amqp.url; default amqp://guest:guest@127.0.0.1:5672/%2f].
    #[arg(long, global = true)]
    pub amqp_url: Option<String>,
    /// Redis URL [redis.url; default redis://127.0.0.1:6379].
    #[arg(long, global = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key [redis.key_prefix; default genq].
    #[arg(long, global = true)]
    pub key_prefix: Option<String>,
    /// Model of jobs that name none [producer.default_model; default smollm2-135m-instruct].
    #[arg(long, global = true)]
    pub model: Option<String>,
    /// Log as JSON lines (one object per line) [env GENQ_LOG_JSON].
    #[arg(long, global = true, env = "GENQ_LOG_JSON")]
    pub log_json: bool,
    /// Confirms outstanding at once while publishing [producer.max_in_flight; default 1024].
    #[arg(long, global = true)]
    pub max_in_flight: Option<usize>,
    /// Most jobs packed into one bulk message when many are published together; 1 sends each
    /// job as a message of its own [producer.bulk_max_jobs; default 16].
    #[arg(long, global = true)]
    pub bulk_max_jobs: Option<usize>,
}

impl SettingsArgs {
    fn overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        o.set("amqp.url", self.amqp_url.as_ref())
            .set("redis.url", self.redis_url.as_ref())
            .set("redis.key_prefix", self.key_prefix.as_ref())
            .set("producer.default_model", self.model.as_ref())
            .set("producer.max_in_flight", self.max_in_flight)
            .set("producer.bulk_max_jobs", self.bulk_max_jobs);
        o
    }

    /// Loads settings with these flags and a command's `more` on top.
    pub fn settings(&self, more: Overrides) -> Result<Settings, SettingsError> {
        let mut overrides = self.overrides();
        overrides.0.extend(more.0);
        Settings::load(self.config.as_deref(), &overrides.0)
    }
}

/// Flags of serving the gateway. Bearer tokens come from the settings file or
/// `GENQ__GATEWAY__API_KEYS` only, never from a flag (flags show in `ps`), and are never logged.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on [gateway.listen; default 127.0.0.1:8080]; port 0 picks a free one.
    #[arg(long)]
    pub listen: Option<String>,
    /// Seconds a synchronous request waits for its job before 504 [gateway.request_timeout_secs; default 300].
    #[arg(long)]
    pub request_timeout: Option<u64>,
    /// Largest request body in bytes [gateway.max_body_bytes; default 1048576].
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Models `GET /v1/models` looks for, comma-separated, besides the default model [gateway.models].
    #[arg(long)]
    pub models: Option<String>,
}

impl ServeArgs {
    /// These flags as setting overrides.
    pub fn overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        o.set("gateway.listen", self.listen.as_ref())
            .set("gateway.request_timeout_secs", self.request_timeout)
            .set("gateway.max_body_bytes", self.max_body_bytes)
            .set("gateway.models", self.models.as_ref());
        o
    }
}
