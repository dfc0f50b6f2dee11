//! The CPU/GPU switch of the engine: [`DeviceChoice`] reads `worker.device`, [`Backend`] holds
//! either the CPU [`LlamaModel`] or the [`DeviceModel`], and the engine in `mod.rs` talks only to
//! [`Backend`] (and each sequence's [`SeqCache`]).

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{bail, Device, Result, Tensor};

use super::arch::{HfConfig, ModelConfig};
use super::device::{DeviceModel, SlotCache, SlotInput};
use super::model::{KvCache, LlamaModel, SeqInput, WeightFormat};

/// Where a model runs, from `worker.device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU engine ([`LlamaModel`]).
    Cpu,
    /// NVIDIA GPU number N ([`DeviceModel`] on CUDA).
    Cuda(usize),
}

impl DeviceChoice {
    /// Parses `cpu`, `cuda` (GPU 0) or `cuda:N`. The error names the setting and, for a CUDA
    /// device in a build without it, the `cuda` feature.
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        let choice = match name.trim() {
            "cpu" => DeviceChoice::Cpu,
            "cuda" | "gpu" => DeviceChoice::Cuda(0),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => DeviceChoice::Cuda(n),
                _ => {
                    return Err(format!(
                        "`worker.device` is {other:?}; expected cpu, cuda or cuda:N"
                    ))
                }
            },
        };
        if matches!(choice, DeviceChoice::Cuda(_)) && !cfg!(feature = "cuda") {
            return Err(format!(
                "device `{name}` needs a build with the `cuda` feature (scripts/cuda-build.sh, or \
                 cargo build --release --features genq-worker/cuda,genq-producer/cuda); this \
                 binary runs on the CPU only (--device cpu)"
            ));
        }
        Ok(choice)
    }

    /// The name reported in `genq_worker_info{device}`: `cpu` or `cuda:N`.
    pub fn label(&self) -> String {
        match self {
            DeviceChoice::Cpu => "cpu".into(),
            DeviceChoice::Cuda(n) => format!("cuda:{n}"),
        }
    }

    /// The candle device (opens the CUDA context).
    pub fn device(&self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => Device::new_cuda(*n).map_err(|e| {
                // candle's message carries a backtrace; its first line says what failed.
                let first = e.to_string().lines().next().unwrap_or_default().to_string();
                candle_core::Error::Msg(format!(
                    "opening CUDA device {n} (is the NVIDIA driver loaded and the GPU visible?): {first}"
                ))
            }),
        }
    }
}

/// The model of an engine: the CPU path or the device path.
pub enum Backend {
    /// Per-sequence caches and attention on the CPU (`model.rs`).
    Cpu(LlamaModel),
    /// Slot-pool cache and batched attention on a device.
    Device(DeviceModel),
}

/// One sequence's cache, of the kind its [`Backend`] uses.
pub enum SeqCache {
    /// A CPU [`KvCache`].
    Cpu(KvCache),
    /// A slot in a [`DeviceModel`]'s pool.
    Slot(SlotCache),
}

impl SeqCache {
    /// Positions cached so far (the position of the next token).
    pub fn len(&self) -> usize {
        match self {
            SeqCache::Cpu(c) => c.len(),
            SeqCache::Slot(c) => c.len,
        }
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One sequence's share of a packed step (see [`SeqInput`]).
pub struct StepInput<'a> {
    /// The sequence's cache; its new tokens are appended.
    pub cache: &'a mut SeqCache,
    /// Tokens fed this step, at positions `cache.len()..`.
    pub tokens: &'a [u32],
    /// Return logits for every fed token (score jobs), not only the last.
    pub all_logits: bool,
}

impl Backend {
    /// The network's shape.
    pub fn config(&self) -> &ModelConfig {
        match self {
            Backend::Cpu(m) => m.config(),
            Backend::Device(m) => &m.cfg,
        }
    }

    /// An empty cache for a new sequence expected to use about `positions` positions. A device
    /// slot is taken at the sequence's first step.
    pub fn new_cache(&self, positions: usize) -> SeqCache {
        match self {
            Backend::Cpu(m) => SeqCache::Cpu(KvCache::new(m.config(), positions)),
            Backend::Device(m) => SeqCache::Slot(m.new_slot_cache()),
        }
    }

    /// Whether [`Backend::fork_cache`] copies caches (the CPU path).
    pub fn copies_caches(&self) -> bool {
        matches!(self, Backend::Cpu(_))
    }

    /// A copy of `cache` for a new sequence that continues from the same tokens (the other
    /// samples of a job); none on the device path, whose slots are not copied (there each sample
    /// prefills its prompt itself).
    pub fn fork_cache(&self, cache: &SeqCache) -> Option<SeqCache> {
        debug_assert_eq!(self.copies_caches(), matches!(cache, SeqCache::Cpu(_)));
        match cache {
            SeqCache::Cpu(c) => Some(SeqCache::Cpu(c.clone())),
            SeqCache::Slot(_) => None,
        }
    }

    /// Loads a GGUF model for `choice`.
    pub fn from_gguf(
        content: &gguf_file::Content,
        file: &mut File,
        format: WeightFormat,
        choice: DeviceChoice,
    ) -> Result<Self> {
        match choice {
            DeviceChoice::Cpu => Ok(Backend::Cpu(LlamaModel::from_gguf(content, file, format)?)),
            DeviceChoice::Cuda(_) => Ok(Backend::Device(DeviceModel::from_gguf(
                content,
                file,
                format,
                &choice.device()?,
            )?)),
        }
    }

    /// Loads a Hugging Face safetensors model for `choice`.
    pub fn from_safetensors(
        config: &HfConfig,
        files: &[impl AsRef<Path>],
        format: WeightFormat,
        choice: DeviceChoice,
    ) -> Result<Self> {
        match choice {
            DeviceChoice::Cpu => Ok(Backend::Cpu(LlamaModel::from_safetensors(
                config, files, format,
            )?)),
            DeviceChoice::Cuda(_) => Ok(Backend::Device(DeviceModel::from_safetensors(
                config,
                files,
                format,
                &choice.device()?,
            )?)),
        }
    }

    /// Runs one packed step; logits `[rows, vocab]` in f32, rows as [`LlamaModel::forward`].
    pub fn forward(&self, seqs: &mut [StepInput<'_>]) -> Result<Tensor> {
        match self {
            Backend::Cpu(m) => {
                let mut inputs = Vec::with_capacity(seqs.len());
                for s in seqs.iter_mut() {
                    match &mut *s.cache {
                        SeqCache::Cpu(cache) => inputs.push(SeqInput {
                            cache,
                            tokens: s.tokens,
                            all_logits: s.all_logits,
                        }),
                        SeqCache::Slot(_) => bail!("forward: a device cache on the CPU model"),
                    }
                }
                m.forward(&mut inputs)
            }
            Backend::Device(m) => {
                let mut inputs = Vec::with_capacity(seqs.len());
                for s in seqs.iter_mut() {
                    match &mut *s.cache {
                        SeqCache::Slot(cache) => inputs.push(SlotInput {
                            cache,
                            tokens: s.tokens,
                            all_logits: s.all_logits,
                        }),
                        SeqCache::Cpu(_) => bail!("forward: a CPU cache on the device model"),
                    }
                }
                m.forward(&mut inputs)
            }
        }
    }
}

