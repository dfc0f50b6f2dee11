//! Builds a worker from [`Settings`]: resolves the model path, loads the engine, and turns the
//! settings into pipeline settings. Shared by `genq-worker` and `genq run --embedded`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use genq_shared::settings::{EngineKind, Settings, WorkerSettings};

use crate::engine::echo::EchoEngine;
use crate::engine::llama::packed::Kernel;
use crate::engine::llama::{LlamaEngine, LlamaSettings, WeightFormat};
use crate::engine::Engine;
use crate::intake::IntakeRules;
use crate::pipeline::PipelineSettings;
use crate::scheduler::SchedulerSettings;

/// The worker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The model file or folder is not there.
    #[error("model not found at {path}: fetch the default model with `scripts/fetch-model.sh`, or pass --model-path PATH (a .gguf file or a safetensors folder)")]
    ModelMissing {
        /// Path that was tried.
        path: String,
    },
    /// A setting has a value the worker does not know.
    #[error("{0}")]
    Setting(String),
    /// The engine failed to load.
    #[error("cannot load model {path}: {message}")]
    Load {
        /// Path.
        path: String,
        /// Cause.
        message: String,
    },
}

/// Finds `path`: as given (absolute or relative to the working directory), else relative to the
/// repository the running binary was built in (so `target/release/genq` finds `models/`).
pub fn resolve_model_path(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if p.exists() {
        return Some(p.to_path_buf());
    }
    if p.is_absolute() {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().skip(1).map(|dir| dir.join(p)).find(|candidate| candidate.exists())
}

/// Loads the engine the settings name.
pub fn build_engine(worker: &WorkerSettings) -> Result<Box<dyn Engine>, RunnerError> {
    match worker.engine {
        EngineKind::Echo => Ok(Box::new(EchoEngine::new(&worker.model_name))),
        EngineKind::Llama => {
            let kernel = Kernel::parse_setting(&worker.cpu_kernel).map_err(|e| RunnerError::Setting(e.to_string()))?;
            Kernel::select(kernel).map_err(|e| RunnerError::Setting(e.to_string()))?;
            let path = resolve_model_path(&worker.model_path)
                .ok_or_else(|| RunnerError::ModelMissing { path: worker.model_path.clone() })?;
            let settings = LlamaSettings {
                model_path: path.clone(),
                model_name: worker.model_name.clone(),
                device: worker.device.clone(),
                weights: weights_for_device(&worker.weights, &worker.device, worker.max_batch_size)?,
            };
            let engine = LlamaEngine::load(&settings)
                .map_err(|e| RunnerError::Load { path: path.display().to_string(), message: e.to_string() })?
                .with_prefix_cache(worker.prefix_cache_mib << 20);
            Ok(Box::new(engine))
        }
    }
}

/// Parses the `worker.weights` setting; `auto` is [`WeightFormat::for_this_cpu`] for the batch cap.
pub fn parse_weights(name: &str, max_batch_size: usize) -> Result<WeightFormat, RunnerError> {
    match name {
        "auto" => Ok(WeightFormat::for_this_cpu(max_batch_size)),
        "native" => Ok(WeightFormat::Native),
        "q8_0" => Ok(WeightFormat::Q8_0),
        "f32" => Ok(WeightFormat::F32),
        "packed" => Ok(WeightFormat::Packed),
        other => Err(RunnerError::Setting(format!("`worker.weights` is {other:?}; expected auto, packed, native, q8_0 or f32"))),
    }
}

/// [`parse_weights`], except that `auto` on a GPU (`cuda`, `cuda:N`) keeps the weights as stored:
/// GGUF quantized (candle's CUDA MMQ/MMVQ kernels), safetensors in bf16.
pub fn weights_for_device(name: &str, device: &str, max_batch_size: usize) -> Result<WeightFormat, RunnerError> {
    if name == "auto" && device.trim().starts_with("cuda") {
        return Ok(WeightFormat::Native);
    }
    parse_weights(name, max_batch_size)
}

/// `<hostname>-<pid>` unless the settings name the worker.
pub fn worker_id(worker: &WorkerSettings) -> String {
    if !worker.worker_id.is_empty() {
        return worker.worker_id.clone();
    }
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// This process start's identity: the worker's name, `#`, and a nonce drawn at start. Restarted
/// containers keep their name (a pod name, a hostname with the same PID 1), never this.
pub fn instance_id(worker_id: &str) -> String {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let nonce = NONCE.get_or_init(|| format!("{:016x}", rand::random::<u64>()));
    format!("{worker_id}#{nonce}")
}

/// Pipeline settings for an engine with `context_length`.
pub fn pipeline_settings(settings: &Settings, context_length: usize) -> PipelineSettings {
    let w = &settings.worker;
    let worker_id = worker_id(w);
    PipelineSettings {
        instance: instance_id(&worker_id),
        worker_id,
        rules: IntakeRules { limits: w.limits(context_length), max_body_bytes: w.max_body_bytes, model: w.model_name.clone() },
        scheduler: SchedulerSettings {
            max_batch_size: w.max_batch_size.max(1),
            batch_wait: Duration::from_millis(w.batch_wait_ms),
            max_prefill_tokens: w.max_prefill_tokens.max(1),
        },
        engine_queue: (w.prefetch as usize).max(1) * 2,
        // Both queues' consumers together hold at most twice the prefetch.
        intake_batch_size: (w.prefetch as usize).max(1) * 2,
        write_batch_size: w.write_batch_size.max(1),
        write_wait: Duration::from_millis(w.write_wait_ms),
        shutdown_grace: Duration::from_secs(w.shutdown_grace_secs),
        cancel_poll: Duration::from_millis(w.cancel_poll_ms),
        poison_after_solo_runs: w.poison_after_solo_runs.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_weights_follow_the_batch_cap() {
        if crate::engine::llama::packed::fast_kernel_available() {
            assert_eq!(parse_weights("auto", 1).ok(), Some(WeightFormat::Packed));
            assert_eq!(parse_weights("auto", 64).ok(), Some(WeightFormat::Packed));
        } else {
            assert_eq!(parse_weights("auto", 1).ok(), Some(WeightFormat::Q8_0));
            assert_eq!(parse_weights("auto", 16).ok(), Some(WeightFormat::F32));
        }
        assert_eq!(parse_weights("packed", 16).ok(), Some(WeightFormat::Packed));
        assert_eq!(parse_weights("native", 16).ok(), Some(WeightFormat::Native));
        let err = parse_weights("q4", 16).expect_err("unknown format");
        assert!(err.to_string().contains("worker.weights"), "{err}");
        assert_eq!(weights_for_device("auto", "cuda:0", 16).ok(), Some(WeightFormat::Native));
        assert_eq!(weights_for_device("f32", "cuda:0", 16).ok(), Some(WeightFormat::F32));
        assert_eq!(weights_for_device("auto", "cpu", 1).ok(), parse_weights("auto", 1).ok());
    }
}
