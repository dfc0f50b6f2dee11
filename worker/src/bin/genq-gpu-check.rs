//! `genq-gpu-check`: the helpers of `scripts/gpu-check.sh`. Writes random-weight Llama checkpoints
//! (no download), compares greedy generation between two devices, and turns `genq bench engine`
//! output into one table with the memory-bandwidth bound of each batch.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use candle_core::DType;
use clap::{Parser, Subcommand};
use serde_json::json;

use genq_shared::valid::{validate, Limits};
use genq_shared::JobRequest;
use genq_worker::bench::{run_engine_bench, EngineBenchSpec};
use genq_worker::engine::llama::arch::{Arch, HfConfig, ModelConfig};
use genq_worker::engine::llama::synth::RandomModel;
use genq_worker::engine::llama::{LlamaEngine, LlamaSettings};
use genq_worker::engine::{Engine, StepLimits};
use genq_worker::setup;

/// Helpers of scripts/gpu-check.sh.
#[derive(Parser, Debug)]
#[command(name = "genq-gpu-check", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a random-weight model (config.json, tokenizer.json, model.safetensors) into a folder.
    WriteModel {
        /// `smollm2` (SmolLM2-135M's shape, llama) or `tiny` (2 layers, hidden 64, any `--arch`).
        #[arg(long, default_value = "smollm2")]
        shape: String,
        /// Architecture of a `tiny` model: llama, qwen2, qwen3, phi3, gpt2.
        #[arg(long, default_value = "llama")]
        arch: String,
        /// Weights dtype in the file: bf16, f16 or f32.
        #[arg(long, default_value = "bf16")]
        dtype: String,
        /// Folder to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Greedy generation of the same jobs on `--reference` and on `--device`; exits 1 when any
    /// sequence's text differs and `--require-equal` is given.
    Compare {
        /// Model folder or GGUF file.
        #[arg(long)]
        model: PathBuf,
        /// Device under test.
        #[arg(long, default_value = "cuda:0")]
        device: String,
        /// Reference device.
        #[arg(long, default_value = "cpu")]
        reference: String,
        /// Weights: auto, native, q8_0, f32 (the same on both devices).
        #[arg(long, default_value = "f32")]
        weights: String,
        /// Sequences, all in one batch.
        #[arg(long, default_value_t = 16)]
        jobs: usize,
        /// Tokens generated per sequence (EOS ignored).
        #[arg(long, default_value_t = 32)]
        new_tokens: u32,
        /// Exit 1 unless every sequence matches.
        #[arg(long)]
        require_equal: bool,
    },
    /// `genq bench engine` without the `genq` binary (the same benchmark function): one JSON line
    /// per batch size, so the check needs only this binary.
    Bench {
        /// Model folder or GGUF file.
        #[arg(long)]
        model: PathBuf,
        /// Device.
        #[arg(long, default_value = "cuda:0")]
        device: String,
        /// Weights: auto, native, q8_0, f32.
        #[arg(long, default_value = "auto")]
        weights: String,
        /// Batch sizes, comma-separated.
        #[arg(long, default_value = "1,32,128,256", value_delimiter = ',')]
        batch_sizes: Vec<usize>,
        /// Prompt length in tokens.
        #[arg(long, default_value_t = 32)]
        prompt_tokens: usize,
        /// Tokens generated per sequence.
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
    },
    /// One Markdown table from `genq bench engine` JSON lines: GPU and CPU decode tokens/s and the
    /// fraction of the memory-bandwidth bound reached.
    Table {
        /// The model benchmarked (its config.json gives the shape).
        #[arg(long)]
        model: PathBuf,
        /// JSON lines of the GPU run.
        #[arg(long)]
        gpu: PathBuf,
        /// JSON lines of the CPU run (optional).
        #[arg(long)]
        cpu: Option<PathBuf>,
        /// The GPU's memory bandwidth in GB/s (H200: 4800).
        #[arg(long, default_value_t = 4800.0)]
        bandwidth_gbs: f64,
        /// Bytes per weight and per cached value on the GPU (bf16: 2).
        #[arg(long, default_value_t = 2.0)]
        bytes_per_value: f64,
        /// Label of the GPU.
        #[arg(long, default_value = "gpu")]
        gpu_name: String,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::WriteModel { shape, arch, dtype, out } => {
            let arch = Arch::from_gguf_name(&arch).map_err(|e| anyhow::anyhow!("--arch: {e}"))?;
            let shape = match shape.as_str() {
                "smollm2" if arch == Arch::Llama => RandomModel::smollm2(),
                "tiny" => RandomModel::tiny_of(arch),
                other => anyhow::bail!("--shape {other:?}: expected smollm2 (llama only) or tiny"),
            };
            let dtype = match dtype.as_str() {
                "bf16" => DType::BF16,
                "f16" => DType::F16,
                "f32" => DType::F32,
                other => anyhow::bail!("--dtype {other:?}: expected bf16, f16 or f32"),
            };
            shape.write(&out, dtype)?;
            eprintln!(
                "wrote a random {} model ({} parameters) to {}",
                format!("{dtype:?}").to_lowercase(),
                shape.parameters(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Compare {
            model,
            device,
            reference,
            weights,
            jobs,
            new_tokens,
            require_equal,
        } => {
            let run = |dev: &str| {
                generate(&model, dev, &weights, jobs, new_tokens)
                    .with_context(|| format!("greedy run on {dev}"))
            };
            let want = run(&reference)?;
            let got = run(&device)?;
            let equal = want.iter().zip(&got).filter(|(a, b)| a == b).count();
            let first = want.iter().zip(&got).position(|(a, b)| a != b);
            println!(
                "{}",
                json!({
                    "check": "greedy_equal",
                    "reference": reference,
                    "device": device,
                    "weights": weights,
                    "sequences": jobs,
                    "new_tokens": new_tokens,
                    "equal": equal,
                    "first_difference": first.map(|i| json!({"sequence": i, "reference": want[i], "device": got[i]})),
                })
            );
            Ok(if require_equal && equal != jobs {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Bench {
            model,
            device,
            weights,
            batch_sizes,
            prompt_tokens,
            new_tokens,
        } => {
            let largest = batch_sizes.iter().copied().max().unwrap_or(1);
            let mut engine = LlamaEngine::load(&LlamaSettings {
                model_path: model,
                model_name: "bench".into(),
                device: device.clone(),
                weights: setup::weights_for_device(&weights, &device, largest)?,
            })?;
            for batch in batch_sizes {
                // As `genq bench engine` with its default: the whole batch prefilled in one step.
                let spec = EngineBenchSpec {
                    batch,
                    prompt_tokens,
                    new_tokens,
                    max_prefill_tokens: batch * prompt_tokens * 2,
                    shared_prefix_tokens: 0,
                    format: None,
                };
                println!(
                    "{}",
                    serde_json::to_string(&run_engine_bench(&mut engine, &spec)?)?
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Table {
            model,
            gpu,
            cpu,
            bandwidth_gbs,
            bytes_per_value,
            gpu_name,
        } => {
            table(
                &model,
                &gpu,
                cpu.as_deref(),
                bandwidth_gbs,
                bytes_per_value,
                &gpu_name,
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Greedy texts of `jobs` different prompts, all admitted before the first step.
fn generate(
    model: &Path,
    device: &str,
    weights: &str,
    jobs: usize,
    new_tokens: u32,
) -> anyhow::Result<Vec<String>> {
    let mut engine = LlamaEngine::load(&LlamaSettings {
        model_path: model.to_path_buf(),
        model_name: "check".into(),
        device: device.into(),
        weights: setup::weights_for_device(weights, device, jobs)?,
    })?;
    for i in 0..jobs {
        let req = JobRequest {
            id: Some(format!("check-{i}")),
            max_new_tokens: Some(new_tokens),
            min_new_tokens: Some(new_tokens),
            temperature: Some(0.0),
            model: Some("check".into()),
            // Prompts of different lengths, so prefill groups and decode widths differ.
            ..JobRequest::prompt(genq_worker::bench::bench_prompt(3 + (i * 5) % 23, i))
        };
        let job = validate(&req, &Limits::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
        engine
            .encode_and_admit(i as u64, &job, 0)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut texts = vec![String::new(); jobs];
    while engine.active() > 0 {
        for u in engine.step(&StepLimits {
            max_prefill_tokens: 64,
        })? {
            if let Some(t) = texts.get_mut(u.id as usize) {
                t.push_str(&u.text);
            }
        }
    }
    Ok(texts)
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("engine").is_some() && v.get("batch").is_some())
        .collect())
}

/// Decode tokens/s at the memory-bandwidth bound: every step reads every weight once plus each
/// sequence's KV cache (on average the prompt and half the new tokens).
fn bound(cfg: &ModelConfig, batch: f64, prompt: f64, new: f64, bandwidth_gbs: f64, bytes: f64) -> f64 {
    let (heads, kv_heads, head_dim) = (cfg.heads as f64, cfg.kv_heads as f64, cfg.head_dim as f64);
    let (hidden, ffn, layers, vocab) = (
        cfg.hidden as f64,
        cfg.ffn as f64,
        cfg.layers as f64,
        cfg.vocab as f64,
    );
    let per_layer =
        hidden * head_dim * (2.0 * heads + 2.0 * kv_heads) + 3.0 * hidden * ffn + 2.0 * hidden;
    // The output head is read every step; the embedding is only gathered from (B rows).
    let weights = layers * per_layer + vocab * hidden + hidden;
    let kv_per_position = layers * 2.0 * kv_heads * head_dim;
    let step_bytes = bytes * (weights + batch * (prompt + new / 2.0) * kv_per_position);
    batch * bandwidth_gbs * 1e9 / step_bytes
}

fn table(
    model: &Path,
    gpu: &Path,
    cpu: Option<&Path>,
    bandwidth_gbs: f64,
    bytes: f64,
    gpu_name: &str,
) -> anyhow::Result<()> {
    let cfg: HfConfig = serde_json::from_str(&std::fs::read_to_string(model.join("config.json"))?)?;
    let cfg = ModelConfig::from_hf(&cfg)?;
    let gpu_rows = read_lines(gpu)?;
    let cpu_rows = match cpu {
        Some(p) if p.exists() => read_lines(p)?,
        _ => Vec::new(),
    };
    let f = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    println!("| batch | {gpu_name} decode tok/s | {gpu_name} prefill tok/s | bandwidth bound tok/s ({bandwidth_gbs:.0} GB/s) | fraction of bound | CPU decode tok/s | GPU / CPU |");
    println!("|---|---|---|---|---|---|---|");
    for g in &gpu_rows {
        let batch = f(g, "batch");
        let decode = f(g, "decode_tokens_per_s");
        let limit = bound(
            &cfg,
            batch,
            f(g, "prompt_tokens"),
            f(g, "new_tokens"),
            bandwidth_gbs,
            bytes,
        );
        let c = cpu_rows
            .iter()
            .find(|c| f(c, "batch") == batch)
            .map(|c| f(c, "decode_tokens_per_s"));
        let (cpu_cell, ratio) = match c {
            Some(c) => (format!("{c:.1}"), format!("{:.1}x", decode / c)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {batch} | {decode:.1} | {:.1} | {limit:.0} | {:.3} | {cpu_cell} | {ratio} |",
            f(g, "prefill_tokens_per_s"),
            decode / limit
        );
    }
    Ok(())
}
