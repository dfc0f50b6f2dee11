//! The `genq` command line: argument parsing and dispatch to one module per subcommand.
//!
//! - [`submit`]: publish a JSONL file, optionally wait for every result.
//! - [`results`]: `get`, `wait` and `cancel` for one job.
//! - [`bench`]: `genq bench engine`, optionally side by side with llama.cpp.
//! - [`run`]: the embedded pipeline (in-memory source and sink, no services).
//! - [`models`]: the models with live workers (heartbeats in Redis, consumers in RabbitMQ).
//! - [`status`]: queue depths, per-worker throughput and a batch's progress on one screen.
//! - [`serve`]: the HTTP gateway (`/generate`, OpenAI-compatible routes, `/v1/jobs`).
//! - [`tokenize`]: a model's token ids for texts, as the engine tokenizes prompts.

mod bench;
mod models;
mod results;
mod run;
mod serve;
mod status;
mod submit;
mod tokenize;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use genq_shared::settings::{Overrides, Settings};

/// genq: queue-driven LLM generation. Settings come from defaults < the TOML file (`--config`)
/// < environment `GENQ__SECTION__KEY` (e.g. `GENQ__AMQP__URL`) < these flags.
#[derive(Parser, Debug)]
#[command(name = "genq", version, about = "genq: publish LLM generation jobs and read their results", after_long_help = genq_shared::settings::describe_settings())]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

/// Settings shared by every subcommand.
#[derive(Args, Debug, Clone)]
struct CommonArgs {
    /// TOML settings file with sections [amqp], [redis], [queue], [worker], [producer].
    #[arg(long, global = true, env = "GENQ_CONFIG")]
    config: Option<PathBuf>,
    /// RabbitMQ URL [amqp.url; default amqp://guest:guest@127.0.0.1:5672/%2f].
    #[arg(long, global = true)]
    amqp_url: Option<String>,
    /// Redis URL [redis.url; default redis://127.0.0.1:6379].
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// Prefix of every Redis key [redis.key_prefix; default genq].
    #[arg(long, global = true)]
    key_prefix: Option<String>,
    /// Model of jobs that name none [producer.default_model; default smollm2-135m-instruct].
    #[arg(long, global = true)]
    model: Option<String>,
    /// Log as JSON lines (one object per line) [env GENQ_LOG_JSON].
    #[arg(long, global = true, env = "GENQ_LOG_JSON")]
    log_json: bool,
    /// Confirms outstanding at once while publishing [producer.max_in_flight; default 1024].
    #[arg(long, global = true)]
    max_in_flight: Option<usize>,
}

impl CommonArgs {
    fn overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        o.set("amqp.url", self.amqp_url.as_ref())
            .set("redis.url", self.redis_url.as_ref())
            .set("redis.key_prefix", self.key_prefix.as_ref())
            .set("producer.default_model", self.model.as_ref())
            .set("producer.max_in_flight", self.max_in_flight);
        o
    }

    /// Loads settings with these flags and a subcommand's `more` on top.
    fn settings(&self, more: Overrides) -> anyhow::Result<Settings> {
        let mut overrides = self.overrides();
        overrides.0.extend(more.0);
        Ok(Settings::load(self.config.as_deref(), &overrides.0)?)
    }
}

/// Which engine and model a subcommand that runs the model in process uses.
#[derive(Args, Debug, Clone)]
struct ModelArgs {
    /// Engine: llama or echo [worker.engine].
    #[arg(long)]
    engine: Option<String>,
    /// GGUF file or safetensors folder [worker.model_path].
    #[arg(long)]
    model_path: Option<String>,
    /// Weights in memory: auto, packed, native, q8_0, f32 [worker.weights].
    #[arg(long)]
    weights: Option<String>,
    /// Device: cpu, cuda or cuda:N (a build with the `cuda` feature) [worker.device].
    #[arg(long)]
    device: Option<String>,
    /// Kernel for packed weights: auto, amx, avx512-vnni, reference [worker.cpu_kernel].
    #[arg(long)]
    cpu_kernel: Option<String>,
}

impl ModelArgs {
    /// Adds the given flags to `o`.
    fn apply(&self, o: &mut Overrides) {
        o.set("worker.engine", self.engine.as_ref())
            .set("worker.model_path", self.model_path.as_ref())
            .set("worker.weights", self.weights.as_ref())
            .set("worker.device", self.device.as_ref())
            .set("worker.cpu_kernel", self.cpu_kernel.as_ref());
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish jobs from a JSONL file (or `-` for stdin); one job object or bare prompt per line.
    Submit(submit::SubmitArgs),
    /// Print a job's result as it is now.
    Get(results::GetArgs),
    /// Wait for a job's final result and print it.
    Wait(results::WaitArgs),
    /// Cancel a queued or running job.
    Cancel(results::CancelArgs),
    /// Run the whole pipeline in this process (no RabbitMQ, no Redis) and print the results.
    Run(run::RunArgs),
    /// List the models with live workers: heartbeats, consumers and ready jobs of each.
    Models(models::ModelsArgs),
    /// Benchmarks (`genq bench engine`).
    Bench(bench::BenchArgs),
    /// Serve the HTTP gateway: `POST /generate`, OpenAI-compatible `/v1/...` routes, `/v1/jobs`.
    Serve(serve::ServeArgs),
    /// One screen: queue depths (ready, unacked, dead), per-worker throughput, a batch's progress.
    Status(status::StatusArgs),
    /// Print the token ids the engine feeds for texts (the model's tokenizer and BOS rule).
    Tokenize(tokenize::TokenizeArgs),
}

/// Warnings, except lapin's report of a returned message, which prints the whole body (a
/// prompt) at WARN; genq reports the unroutable job itself, without its text.
const DEFAULT_LOG_FILTER: &str = "warn,lapin::returned_messages=error";

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_LOG_FILTER.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.common.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Submit(args) => submit::run(&cli.common, args).await,
            Command::Get(args) => results::get(&cli.common, args).await,
            Command::Wait(args) => results::wait(&cli.common, args).await,
            Command::Cancel(args) => results::cancel(&cli.common, args).await,
            Command::Run(args) => run::run(&cli.common, args).await,
            Command::Bench(args) => bench::run(&cli.common, args).await,
            Command::Models(args) => models::run(&cli.common, args).await,
            Command::Serve(args) => serve::run(&cli.common, args).await,
            Command::Status(args) => status::run(&cli.common, args).await,
            Command::Tokenize(args) => tokenize::run(&cli.common, args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
