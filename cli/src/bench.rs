//! `genq bench engine`: the engine alone, in process, at several batch sizes, printing one JSON
//! line per run; with `--vs-llamacpp`, the same workload through llama.cpp's
//! `llama-batched-bench` in the same run, and the ratios. `genq bench fleet` lives in [`fleet`]
//! (its `--vs-llamacpp` runs the same llama.cpp measurement). `genq bench latency` measures
//! inter-token latency while long prompts arrive.
//!
//! - [`fleet`]: the whole path end to end (producer, RabbitMQ, workers, Redis, reader).
//! - [`workers`]: the `genq-worker` processes a fleet run starts and stops.
//! - [`procstat`]: CPU time and memory of those processes, from `/proc`.
//! - [`broker`]: RabbitMQ alone on the same jobs (the ceiling the queue sets).
//! - [`celery`]: the Celery baseline, run through `scripts/celery-bench.sh`.

mod batch;
mod broker;
mod celery;
mod fleet;
mod procstat;
mod workers;

use std::process::{Command, ExitCode};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use genq_shared::settings::Overrides;
use genq_worker::bench::latency::{run_latency_bench, LatencySpec};
use genq_worker::bench::{run_engine_bench, EngineBenchResult, EngineBenchSpec};
use genq_worker::setup;

use super::{CommonArgs, ModelArgs};

/// Arguments of `genq bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// The engine alone: prefill and decode tokens/s and peak memory per batch size.
    Engine(EngineBenchArgs),
    /// The fleet end to end: publish, RabbitMQ, `genq-worker` processes, Redis, every result read.
    Fleet(fleet::FleetBenchArgs),
    /// Inter-token latency of running sequences while long prompts arrive, and without them.
    Latency(LatencyBenchArgs),
}

#[derive(Args, Debug)]
struct LatencyBenchArgs {
    /// Sequences decoding together.
    #[arg(long, default_value_t = 16)]
    running: usize,
    /// Tokens each generates.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Long prompts that arrive while they decode.
    #[arg(long, default_value_t = 4)]
    long_prompts: usize,
    /// KiB of each long prompt (at most `worker.max_prompt_bytes`).
    #[arg(long, default_value_t = 256)]
    long_prompt_kib: usize,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args, Debug)]
struct EngineBenchArgs {
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1,8,32,64", value_delimiter = ',')]
    batch_sizes: Vec<usize>,
    /// Prompt length in tokens (approximate for genq; exact for llama.cpp).
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// Tokens generated per sequence.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens per step; 0 prefills the whole batch in one step.
    #[arg(long, default_value_t = 0)]
    max_prefill_tokens: usize,
    /// Also run llama.cpp's llama-batched-bench on the same model and workload (built by
    /// scripts/build-llamacpp.sh, or named by GENQ_LLAMA_BATCHED_BENCH). genq's `avx2` and
    /// `avx-vnni` kernels are compared with its AVX2-only build (`LLAMACPP_AVX2=1
    /// scripts/build-llamacpp.sh`, or GENQ_LLAMA_BATCHED_BENCH_AVX2), the others with its native one.
    #[arg(long)]
    vs_llamacpp: bool,
    /// Threads for llama.cpp (default: all cores, like candle).
    #[arg(long)]
    threads: Option<usize>,
    /// Tokens of a prompt prefix all the batch's sequences share, before their own
    /// `--prompt-tokens` (0: none).
    #[arg(long, default_value_t = 0)]
    shared_prefix_tokens: usize,
    /// The prefix cache: `on` (`worker.prefix_cache_mib`, at least 64), `off`, or `both` (each
    /// batch size off, on, on, off, so neither gains from going first or last, and the ratio of
    /// the summed times). Default: `both` with
    /// `--shared-prefix-tokens`, else as `worker.prefix_cache_mib` sets it.
    #[arg(long)]
    prefix_cache: Option<String>,
    /// An output format every job follows, as the wire field `format` (JSON, e.g.
    /// `{"type":"regex","pattern":"[a-z ,.]+"}`): each batch size runs without it, with it,
    /// with it, without it, and the ratio of decode throughputs is printed.
    #[arg(long)]
    format: Option<String>,
    /// Packed-weight kernels to run one after the other in this run (comma-separated, e.g.
    /// `amx,avx512-vnni`); each result line names its kernel. Default: `--cpu-kernel`'s.
    #[arg(long, value_delimiter = ',')]
    cpu_kernels: Vec<String>,
    /// Rounds of the whole comparison, one after the other (genq's runs, then llama.cpp's, then
    /// genq's again...); with `--vs-llamacpp` and more than one, the median of each ratio over the
    /// rounds follows, which a noisy machine moves less than any single round.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

pub async fn run(common: &CommonArgs, args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        BenchWhat::Engine(a) => tokio::task::block_in_place(|| engine_bench(common, a)),
        BenchWhat::Fleet(a) => fleet::run(common, a).await,
        BenchWhat::Latency(a) => latency_bench(common, a).await,
    }
}

/// Without long prompts, then with them, each on a freshly loaded engine; then the ratio.
async fn latency_bench(common: &CommonArgs, args: LatencyBenchArgs) -> anyhow::Result<ExitCode> {
    let mut more = Overrides::default();
    args.model.apply(&mut more);
    let settings = common.settings(more)?;
    let mut results = Vec::new();
    for long_prompts in [0, args.long_prompts] {
        let engine = tokio::task::block_in_place(|| setup::build_engine(&settings.worker))?;
        let pipeline = setup::pipeline_settings(&settings, engine.info().context_length);
        let spec = LatencySpec { running: args.running, new_tokens: args.new_tokens, long_prompts, long_prompt_bytes: args.long_prompt_kib * 1024 };
        let r = run_latency_bench(engine, pipeline, &spec).await?;
        println!("{}", serde_json::to_string(&r)?);
        anyhow::ensure!(r.done >= args.running as u64, "only {} of the {} running jobs ended done", r.done, args.running);
        results.push(r);
    }
    if let [quiet, busy] = &results[..] {
        println!("{}", json!({"ratio": "with/without long prompts", "p50": busy.p50_ms / quiet.p50_ms, "p99": busy.p99_ms / quiet.p99_ms, "max": busy.max_ms / quiet.max_ms}));
    }
    Ok(ExitCode::SUCCESS)
}

fn engine_bench(common: &CommonArgs, args: EngineBenchArgs) -> anyhow::Result<ExitCode> {
    let mut more = Overrides::default();
    args.model.apply(&mut more);
    let settings = common.settings(more)?;
    let kernels = if args.cpu_kernels.is_empty() { vec![settings.worker.cpu_kernel.clone()] } else { args.cpu_kernels.clone() };
    let cache_mib = |on: bool| if on { settings.worker.prefix_cache_mib.max(64) } else { 0 };
    let caches: Vec<usize> = match args.prefix_cache.as_deref() {
        None if args.shared_prefix_tokens > 0 => vec![cache_mib(false), cache_mib(true), cache_mib(true), cache_mib(false)],
        None => vec![settings.worker.prefix_cache_mib],
        Some("on") => vec![cache_mib(true)],
        Some("off") => vec![cache_mib(false)],
        Some("both") => vec![cache_mib(false), cache_mib(true), cache_mib(true), cache_mib(false)],
        Some(other) => anyhow::bail!("--prefix-cache {other:?}: expected on, off or both"),
    };
    let formats: Vec<Option<genq_shared::OutputFormat>> = match &args.format {
        None => vec![None],
        Some(raw) => {
            anyhow::ensure!(caches.len() == 1, "--format compares with and without a format: give --prefix-cache on or off with it");
            let format: genq_shared::OutputFormat = serde_json::from_str(raw).context("--format is not an output format")?;
            format.check().map_err(|e| anyhow::anyhow!("--format {e}"))?;
            vec![None, Some(format.clone()), Some(format.clone()), None]
        }
    };
    if args.vs_llamacpp {
        // Fail before genq's runs, not after them.
        for kernel in &kernels {
            LlamacppBuild::matching(kernel).binary()?;
        }
    }
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let mut ratios = Vec::new();
    for round in 1..=args.rounds {
        let ours = genq_runs(&settings.worker, &args, &kernels, &caches, &formats)?;
        if args.vs_llamacpp {
            ratios.extend(llamacpp_runs(&settings.worker, &args, &ours, round)?);
        }
    }
    if args.rounds > 1 {
        for line in median_ratios(&ratios, args.rounds) {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// genq's runs of one round: each kernel, batch size, and prefix-cache or format setting, on a
/// freshly loaded engine; each result is printed as it comes.
fn genq_runs(
    worker: &genq_shared::settings::WorkerSettings,
    args: &EngineBenchArgs,
    kernels: &[String],
    caches: &[usize],
    formats: &[Option<genq_shared::OutputFormat>],
) -> anyhow::Result<Vec<EngineBenchResult>> {
    let mut ours = Vec::new();
    for kernel in kernels {
        for &batch in &args.batch_sizes {
            let prompt = args.shared_prefix_tokens + args.prompt_tokens;
            let spec = EngineBenchSpec {
                batch,
                prompt_tokens: args.prompt_tokens,
                new_tokens: args.new_tokens,
                max_prefill_tokens: if args.max_prefill_tokens == 0 { batch * prompt * 2 } else { args.max_prefill_tokens },
                shared_prefix_tokens: args.shared_prefix_tokens,
                format: None,
            };
            let mut runs = Vec::new();
            for i in 0..caches.len().max(formats.len()) {
                let (mib, format) = (caches[i % caches.len()], &formats[i % formats.len()]);
                let spec = EngineBenchSpec { format: format.clone(), ..spec.clone() };
                // A fresh engine per run, so no run finds what another left in the cache.
                let mut worker = worker.clone();
                worker.cpu_kernel = kernel.clone();
                worker.prefix_cache_mib = mib;
                let mut engine = setup::build_engine(&worker)?;
                let r = run_engine_bench(engine.as_mut(), &spec)?;
                println!("{}", serde_json::to_string(&r)?);
                runs.push(r);
            }
            if let ([off1, on1, on2, off2], Some(_)) = (&runs[..], &args.format) {
                let decode = (on1.decode_tokens_per_s + on2.decode_tokens_per_s) / (off1.decode_tokens_per_s + off2.decode_tokens_per_s);
                println!("{}", json!({"ratio": "with/without the format", "batch": batch, "decode_tokens_per_s": decode, "seconds": (on1.seconds + on2.seconds) / (off1.seconds + off2.seconds)}));
            } else if let [off1, on1, on2, off2] = &runs[..] {
                let ratio = (off1.seconds + off2.seconds) / (on1.seconds + on2.seconds);
                println!("{}", json!({"ratio": "prefix cache off/on", "batch": batch, "seconds": ratio}));
            }
            ours.extend(runs);
        }
    }
    Ok(ours)
}

/// llama.cpp's runs of one round, each build `ours`' kernels are compared with once, then the
/// ratio of each of `ours` to llama.cpp's result for its batch size and build; all printed, the
/// ratios also returned.
fn llamacpp_runs(
    worker: &genq_shared::settings::WorkerSettings,
    args: &EngineBenchArgs,
    ours: &[EngineBenchResult],
    round: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let model = setup::resolve_model_path(&worker.model_path).context("model not found")?;
    let workload = LlamacppWorkload { batch_sizes: &args.batch_sizes, prompt_tokens: args.prompt_tokens, new_tokens: args.new_tokens, threads: args.threads };
    let mut builds = Vec::new();
    for build in ours.iter().map(|r| LlamacppBuild::matching(&r.kernel)) {
        if !builds.contains(&build) {
            builds.push(build);
        }
    }
    let mut theirs = Vec::new();
    for build in builds {
        let rows = llamacpp_bench(&model, &workload, build)?;
        for t in &rows {
            println!("{t}");
        }
        theirs.extend(rows);
    }
    let mut ratios = Vec::new();
    for r in ours {
        let build = json!(LlamacppBuild::matching(&r.kernel).name());
        if let Some(t) = theirs.iter().find(|t| t["batch"] == json!(r.batch) && t["build"] == build) {
            let line = ratio_line(r, t, round);
            println!("{line}");
            ratios.push(line);
        }
    }
    Ok(ratios)
}

/// One line per kernel, build and batch size: the median over the rounds of each ratio in
/// `ratios` (lines of [`ratio_line`]).
fn median_ratios(ratios: &[serde_json::Value], rounds: usize) -> Vec<serde_json::Value> {
    let key = |r: &serde_json::Value| (r["kernel"].clone(), r["llamacpp_build"].clone(), r["batch"].clone());
    let mut keys: Vec<_> = Vec::new();
    for r in ratios {
        if !keys.contains(&key(r)) {
            keys.push(key(r));
        }
    }
    keys.into_iter()
        .map(|k| {
            let same: Vec<&serde_json::Value> = ratios.iter().filter(|r| key(r) == k).collect();
            let median = |field: &str| median(same.iter().filter_map(|r| r[field].as_f64()).collect());
            let each: Vec<f64> = same.iter().filter_map(|r| r["decode"].as_f64()).collect();
            json!({
                "ratio": "genq/llama.cpp, median of the rounds",
                "kernel": k.0,
                "llamacpp_build": k.1,
                "batch": k.2,
                "rounds": rounds,
                "prefill": median("prefill"),
                "decode": median("decode"),
                "total_generated": median("total_generated"),
                "decode_each_round": each,
            })
        })
        .collect()
}

/// The median of `values` (the mean of the middle two for an even count); NaN for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn ratio_line(r: &EngineBenchResult, t: &serde_json::Value, round: usize) -> serde_json::Value {
    let f = |k: &str| t[k].as_f64().unwrap_or(f64::NAN);
    json!({
        "ratio": "genq/llama.cpp",
        "round": round,
        "kernel": r.kernel,
        "llamacpp_build": t["build"],
        "batch": r.batch,
        "prefill": r.prefill_tokens_per_s / f("prefill_tokens_per_s"),
        "decode": r.decode_tokens_per_s / f("decode_tokens_per_s"),
        "total_generated": r.total_generated_tokens_per_s / f("total_generated_tokens_per_s"),
    })
}

/// Which llama.cpp build a genq kernel is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LlamacppBuild {
    /// Built for this CPU (`scripts/build-llamacpp.sh`).
    Native,
    /// AVX2, FMA and F16C only (`LLAMACPP_AVX2=1 scripts/build-llamacpp.sh`).
    Avx2,
}

impl LlamacppBuild {
    /// The build for genq's `kernel`: the AVX2 one for the 256-bit kernels.
    fn matching(kernel: &str) -> Self {
        if matches!(kernel, "avx2" | "avx-vnni") { LlamacppBuild::Avx2 } else { LlamacppBuild::Native }
    }

    fn name(self) -> &'static str {
        match self {
            LlamacppBuild::Native => "native",
            LlamacppBuild::Avx2 => "avx2",
        }
    }

    fn binary(self) -> anyhow::Result<std::path::PathBuf> {
        let (var, file, script) = match self {
            LlamacppBuild::Native => ("GENQ_LLAMA_BATCHED_BENCH", "llama-batched-bench", "scripts/build-llamacpp.sh"),
            LlamacppBuild::Avx2 => ("GENQ_LLAMA_BATCHED_BENCH_AVX2", "llama-batched-bench-avx2", "LLAMACPP_AVX2=1 scripts/build-llamacpp.sh"),
        };
        if let Ok(p) = std::env::var(var) {
            return Ok(p.into());
        }
        setup::resolve_model_path(&format!(".cache/llamacpp/bin/{file}")).with_context(|| format!("{file} not found: run {script} (or set {var})"))
    }
}

/// What llama-batched-bench runs: `batch_sizes` sequences of `prompt_tokens` prompt tokens,
/// `new_tokens` generated each, on `threads` threads (default: all cores, like candle).
struct LlamacppWorkload<'a> {
    batch_sizes: &'a [usize],
    prompt_tokens: usize,
    new_tokens: usize,
    threads: Option<usize>,
}

/// Runs llama-batched-bench and reads its table: `| PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |`.
fn llamacpp_bench(model: &std::path::Path, args: &LlamacppWorkload, build: LlamacppBuild) -> anyhow::Result<Vec<serde_json::Value>> {
    let bin = build.binary()?;
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let batches: Vec<String> = args.batch_sizes.iter().map(|b| b.to_string()).collect();
    let out = Command::new(&bin)
        .arg("-m")
        .arg(model)
        .args(["-c", "8192", "-b", "2048", "-ub", "512", "-npp", &args.prompt_tokens.to_string(), "-ntg", &args.new_tokens.to_string()])
        .args(["-npl", &batches.join(","), "-t", &threads.to_string()])
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    anyhow::ensure!(out.status.success(), "llama-batched-bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    for line in text.lines() {
        let cells: Vec<f64> = line.split('|').map(str::trim).filter(|c| !c.is_empty()).filter_map(|c| c.parse().ok()).collect();
        if cells.len() != 10 {
            continue;
        }
        let (pp, tg, b, t_pp, t_tg, t) = (cells[0], cells[1], cells[2], cells[4], cells[6], cells[8]);
        rows.push(json!({
            "engine": "llama.cpp",
            "build": build.name(),
            "batch": b as usize,
            "prompt_tokens": pp,
            "new_tokens": tg,
            "prefill_tokens_per_s": cells[5],
            "decode_tokens_per_s": cells[7],
            "total_generated_tokens_per_s": b * tg / t.max(1e-9),
            "seconds": t,
            "prefill_seconds": t_pp,
            "decode_seconds": t_tg,
            "threads": threads,
        }));
    }
    anyhow::ensure!(!rows.is_empty(), "no result rows in llama-batched-bench output:\n{text}");
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn each_kernel_build_and_batch_gets_the_median_of_its_rounds() {
        let line = |kernel: &str, batch: usize, decode: f64| {
            json!({"ratio": "genq/llama.cpp", "kernel": kernel, "llamacpp_build": "avx2", "batch": batch, "prefill": 1.0, "decode": decode, "total_generated": decode})
        };
        let ratios = [line("avx2", 32, 1.9), line("avx2", 1, 1.1), line("avx2", 32, 2.3), line("avx2", 1, 0.9), line("avx2", 32, 2.1), line("avx2", 1, 1.4)];
        let medians = median_ratios(&ratios, 3);
        assert_eq!(medians.len(), 2, "{medians:?}");
        assert_eq!((medians[0]["batch"].clone(), medians[0]["decode"].clone()), (json!(32), json!(2.1)));
        assert_eq!(medians[0]["decode_each_round"], json!([1.9, 2.3, 2.1]));
        assert_eq!((medians[1]["batch"].clone(), medians[1]["decode"].clone()), (json!(1), json!(1.1)));
    }
}
