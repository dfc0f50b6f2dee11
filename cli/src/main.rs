//! `genq`: the command line for producers and users: submit jobs, read results, serve the HTTP
//! gateway, and run the whole pipeline in one process with `genq run`. Argument parsing and
//! dispatch to one module per subcommand; the only crate that embeds the worker (for `run`,
//! `bench` and `tokenize`).
//!
//! - [`submit`]: publish a JSONL file, optionally wait for every result.
//! - [`results`]: `get`, `wait` and `cancel` for one job.
//! - [`batch`]: OpenAI batches (`create`, `status`, `results`), as `/v1/batches` serves them.
//! - [`bench`]: `genq bench engine`, optionally side by side with llama.cpp.
//! - [`run`]: the embedded pipeline (in-memory source and sink, no services).
//! - [`models`]: the models with live workers (heartbeats in Redis, consumers in RabbitMQ).
//! - [`status`]: queue depths, per-worker throughput and a batch's progress on one screen.
//! - [`serve`]: the HTTP gateway (`/generate`, OpenAI-compatible routes, `/v1/jobs`).
//! - [`tokenize`]: a model's token ids for texts, as the engine tokenizes prompts.

mod batch;
mod bench;
mod models;
mod results;
mod run;
mod serve;
mod status;
mod submit;
mod tokenize;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use genq_shared::settings::Overrides;

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

/// Settings shared by every subcommand (the gateway's, so `genq serve` and `genq-gateway` agree).
type CommonArgs = genq_gateway::args::SettingsArgs;

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
    /// Kernel for packed weights: auto, amx, avx512-vnni, avx-vnni, avx2, reference [worker.cpu_kernel].
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
    /// OpenAI batches: `create FILE`, `status ID`, `results ID` (the gateway's `/v1/batches`).
    Batch(batch::BatchArgs),
    /// Benchmarks (`genq bench engine`).
    Bench(bench::BenchArgs),
    /// Serve the HTTP gateway: `POST /generate`, OpenAI-compatible `/v1/...` routes, `/v1/jobs`.
    Serve(genq_gateway::args::ServeArgs),
    /// One screen: queue depths (ready, unacked, dead), per-worker throughput, a batch's progress.
    Status(status::StatusArgs),
    /// Print the token ids the engine feeds for texts (the model's tokenizer and BOS rule).
    Tokenize(tokenize::TokenizeArgs),
}

/// Warnings, except lapin's report of a returned message, which prints the whole body (a
/// prompt) at WARN; genq reports the unroutable job itself, without its text.
const DEFAULT_LOG_FILTER: &str = "warn,lapin::returned_messages=error";

fn main() -> ExitCode {
    let cli = Cli::parse();
    genq_protocol::process::init_logs(cli.common.log_json, DEFAULT_LOG_FILTER);
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
            Command::Batch(args) => batch::run(&cli.common, args).await,
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
