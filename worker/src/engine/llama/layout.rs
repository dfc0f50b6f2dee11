//! Where each tensor of an architecture lives in a checkpoint, and reading them into one
//! logical description both the CPU model ([`super::model`]) and the device model
//! ([`super::gpu`]) build from.
//!
//! Names are llama.cpp's ([`Part`] renders them for GGUF) mapped to Hugging Face's per
//! architecture ([`Part::hf`]). Fused tensors are handled here: q/k/v as one `attn_qkv`
//! (phi3, gpt2; any family may have it), gate and up as one `ffn_up` of `2 * ffn` rows, gate
//! first (phi3's GGUF, Phi-3's `gate_up_proj`). GPT-2's Hugging Face `Conv1D` weights are
//! stored `[in, out]` and transposed here. A tensor in the file that the architecture does not
//! use is refused at the end ([`Loader::finish`]), so an unknown layout is never run partly.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{bail, DType, Device, Result, Tensor};

use super::arch::{Arch, MlpKind, ModelConfig, NormKind};

/// A weight as read from the file, on the CPU: quantized blocks (any GGUF tensor) or a dense
/// tensor (safetensors).
pub(super) enum Raw {
    /// A GGUF tensor (F32/F16 ones too).
    Quant(QTensor),
    /// A safetensors tensor, in its file dtype.
    Dense(Tensor),
}

impl Raw {
    /// `(rows, cols)` of a matrix.
    pub(super) fn dims(&self) -> Result<(usize, usize)> {
        match self {
            Raw::Quant(q) => q.shape().dims2(),
            Raw::Dense(t) => t.dims2(),
        }
    }

    /// The values in f32 (dequantized).
    pub(super) fn f32(&self) -> Result<Tensor> {
        match self {
            Raw::Quant(q) => q.dequantize(&Device::Cpu),
            Raw::Dense(t) => t.to_dtype(DType::F32),
        }
    }

    /// The quantization type of a GGUF tensor stored quantized (not F32/F16/BF16).
    pub(super) fn quant_dtype(&self) -> Option<GgmlDType> {
        match self {
            Raw::Quant(q) if !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) => {
                Some(q.dtype())
            }
            _ => None,
        }
    }
}

/// A projection `x @ w^T (+ b)` whose weight may be stored in parts (q, k, v) or fused; its
/// output splits into `widths` (q/k/v, or gate/up).
pub(super) struct Linear {
    /// Weight parts, stacked along the output dimension in this order.
    pub parts: Vec<Raw>,
    /// How the output splits; sums to the parts' rows.
    pub widths: Vec<usize>,
    /// Bias over the whole output, f32.
    pub bias: Option<Tensor>,
}

/// A norm's weight (and LayerNorm's bias), f32 vectors.
pub(super) struct Norm {
    /// Scale.
    pub weight: Tensor,
    /// Shift (LayerNorm).
    pub bias: Option<Tensor>,
}

/// One transformer block.
pub(super) struct LayerWeights {
    /// Before attention.
    pub attn_norm: Norm,
    /// q, k, v: widths `[heads*dim, kv_heads*dim, kv_heads*dim]`.
    pub qkv: Linear,
    /// Per-head RMSNorm weights of q and k (`[head_dim]`, qwen3).
    pub qk_norm: Option<(Tensor, Tensor)>,
    /// Attention output.
    pub o: Linear,
    /// Before the MLP.
    pub ffn_norm: Norm,
    /// Gated: widths `[ffn, ffn]`, gate then up. GELU: `[ffn]`.
    pub up: Linear,
    /// MLP output.
    pub down: Linear,
}

/// A tensor's role, by llama.cpp's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Part {
    /// Token embedding `[vocab, hidden]`.
    TokenEmbd,
    /// Learned position embedding `[context, hidden]` (GPT-2).
    PositionEmbd,
    /// The norm before the output head.
    OutputNorm,
    /// The output head `[vocab, hidden]` (absent when tied).
    Output,
    /// The norm before attention.
    AttnNorm,
    /// Query projection.
    AttnQ,
    /// Key projection.
    AttnK,
    /// Value projection.
    AttnV,
    /// Query, key and value projections fused, in that order.
    AttnQkv,
    /// Per-head RMSNorm of the queries (qwen3).
    AttnQNorm,
    /// Per-head RMSNorm of the keys (qwen3).
    AttnKNorm,
    /// Attention output projection.
    AttnOutput,
    /// The norm before the MLP.
    FfnNorm,
    /// Gate projection of a gated MLP.
    FfnGate,
    /// Up projection; gate and up fused (gate first) where there is no separate gate.
    FfnUp,
    /// Down projection.
    FfnDown,
}

/// Where a checkpoint comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// llama.cpp's names.
    Gguf,
    /// Hugging Face's names.
    Hf,
}

/// Tensors a file may hold that the forward pass does not use: RoPE factors (read into the
/// config), Hugging Face buffers (RoPE's `inv_freq`, GPT-2's causal masks).
fn ignorable(name: &str) -> bool {
    name.starts_with("rope_freqs.")
        || name.starts_with("rope_factors_")
        || name.ends_with("rotary_emb.inv_freq")
        || name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
}

impl Part {
    fn gguf(self) -> &'static str {
        match self {
            Part::TokenEmbd => "token_embd",
            Part::PositionEmbd => "position_embd",
            Part::OutputNorm => "output_norm",
            Part::Output => "output",
            Part::AttnNorm => "attn_norm",
            Part::AttnQ => "attn_q",
            Part::AttnK => "attn_k",
            Part::AttnV => "attn_v",
            Part::AttnQkv => "attn_qkv",
            Part::AttnQNorm => "attn_q_norm",
            Part::AttnKNorm => "attn_k_norm",
            Part::AttnOutput => "attn_output",
            Part::FfnNorm => "ffn_norm",
            Part::FfnGate => "ffn_gate",
            Part::FfnUp => "ffn_up",
            Part::FfnDown => "ffn_down",
        }
    }

    /// The Hugging Face name (without `.weight`/`.bias`) and whether the weight is stored
    /// `[in, out]` (GPT-2's `Conv1D`); `None` where the layout has no such tensor.
    fn hf(self, arch: Arch, layer: usize) -> Option<(String, bool)> {
        if arch == Arch::Gpt2 {
            let l = |s: &str| format!("h.{layer}.{s}");
            return Some(match self {
                Part::TokenEmbd => ("wte".into(), false),
                Part::PositionEmbd => ("wpe".into(), false),
                Part::OutputNorm => ("ln_f".into(), false),
                Part::Output => ("lm_head".into(), false),
                Part::AttnNorm => (l("ln_1"), false),
                Part::AttnQkv => (l("attn.c_attn"), true),
                Part::AttnOutput => (l("attn.c_proj"), true),
                Part::FfnNorm => (l("ln_2"), false),
                Part::FfnUp => (l("mlp.c_fc"), true),
                Part::FfnDown => (l("mlp.c_proj"), true),
                _ => return None,
            });
        }
        let l = |s: &str| format!("model.layers.{layer}.{s}");
        Some(match self {
            Part::TokenEmbd => ("model.embed_tokens".into(), false),
            Part::OutputNorm => ("model.norm".into(), false),
            Part::Output => ("lm_head".into(), false),
            Part::AttnNorm => (l("input_layernorm"), false),
            Part::AttnQ => (l("self_attn.q_proj"), false),
            Part::AttnK => (l("self_attn.k_proj"), false),
            Part::AttnV => (l("self_attn.v_proj"), false),
            Part::AttnQkv => (l("self_attn.qkv_proj"), false),
            Part::AttnQNorm => (l("self_attn.q_norm"), false),
            Part::AttnKNorm => (l("self_attn.k_norm"), false),
            Part::AttnOutput => (l("self_attn.o_proj"), false),
            Part::FfnNorm => (l("post_attention_layernorm"), false),
            Part::FfnGate => (l("mlp.gate_proj"), false),
            Part::FfnUp if arch == Arch::Phi3 => (l("mlp.gate_up_proj"), false),
            Part::FfnUp => (l("mlp.up_proj"), false),
            Part::FfnDown => (l("mlp.down_proj"), false),
            Part::PositionEmbd => return None,
        })
    }
}

/// The file name of `part` (of `layer`), `.weight` or `.bias`, and whether it is transposed.
pub(super) fn file_name(arch: Arch, format: Format, part: Part, layer: Option<usize>, bias: bool) -> Option<(String, bool)> {
    let suffix = if bias { "bias" } else { "weight" };
    match format {
        Format::Gguf => {
            let base = match layer {
                Some(i) => format!("blk.{i}.{}", part.gguf()),
                None => part.gguf().to_string(),
            };
            Some((format!("{base}.{suffix}"), false))
        }
        Format::Hf => {
            let (base, transposed) = part.hf(arch, layer.unwrap_or(0))?;
            Some((format!("{base}.{suffix}"), transposed && !bias))
        }
    }
}

/// Tensors by name: a GGUF file or safetensors files.
pub(super) trait TensorSource {
    /// Reads (and, for safetensors, takes) a tensor.
    fn read(&mut self, name: &str) -> Result<Raw>;
    /// Whether the file has it.
    fn has(&self, name: &str) -> bool;
    /// Every tensor name in the file.
    fn names(&self) -> Vec<String>;
}

/// A GGUF file.
pub(super) struct GgufSource<'a> {
    /// Its header.
    pub content: &'a gguf_file::Content,
    /// The open file.
    pub file: &'a mut File,
}

impl TensorSource for GgufSource<'_> {
    fn read(&mut self, name: &str) -> Result<Raw> {
        Ok(Raw::Quant(self.content.tensor(self.file, name, &Device::Cpu)?))
    }
    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
    fn names(&self) -> Vec<String> {
        self.content.tensor_infos.keys().cloned().collect()
    }
}

/// Every tensor of a Hugging Face folder's `*.safetensors`, in memory until read.
pub(super) struct SafetensorsSource {
    tensors: HashMap<String, Tensor>,
    all: Vec<String>,
}

impl SafetensorsSource {
    /// Reads `files`; GPT-2's `transformer.` prefix is dropped, and a tied model's stored
    /// `lm_head.weight` (a copy of the embedding) is left out.
    pub(super) fn load(files: &[impl AsRef<Path>], tied: bool) -> Result<Self> {
        let mut tensors = HashMap::new();
        for f in files {
            for (name, t) in candle_core::safetensors::load(f, &Device::Cpu)? {
                let name = name.strip_prefix("transformer.").map(str::to_string).unwrap_or(name);
                tensors.insert(name, t);
            }
        }
        if tied {
            tensors.remove("lm_head.weight");
        }
        let all = tensors.keys().cloned().collect();
        Ok(Self { tensors, all })
    }

    /// The dtype of a tensor (the embedding's tells the file's dtype).
    pub(super) fn dtype(&self, name: &str) -> Option<DType> {
        self.tensors.get(name).map(Tensor::dtype)
    }
}

impl TensorSource for SafetensorsSource {
    fn read(&mut self, name: &str) -> Result<Raw> {
        match self.tensors.remove(name) {
            Some(t) => Ok(Raw::Dense(t)),
            None => bail!("safetensors: no tensor named {name}"),
        }
    }
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn names(&self) -> Vec<String> {
        self.all.clone()
    }
}

/// Reads an architecture's tensors from a source into [`LayerWeights`] and the rest, checking
/// every shape against the config, and remembers what it read.
pub(super) struct Loader<'a> {
    cfg: &'a ModelConfig,
    src: &'a mut dyn TensorSource,
    format: Format,
    /// Names read so far.
    taken: HashSet<String>,
}

impl<'a> Loader<'a> {
    /// A loader of `src` for `cfg`.
    pub(super) fn new(cfg: &'a ModelConfig, src: &'a mut dyn TensorSource, format: Format) -> Self {
        Self {
            cfg,
            src,
            format,
            taken: HashSet::new(),
        }
    }

    fn name(&self, part: Part, layer: Option<usize>, bias: bool) -> Option<(String, bool)> {
        file_name(self.cfg.arch, self.format, part, layer, bias)
    }

    /// Whether the file has the tensor.
    pub(super) fn has(&self, part: Part, layer: Option<usize>, bias: bool) -> bool {
        self.name(part, layer, bias).is_some_and(|(n, _)| self.src.has(&n))
    }

    fn read(&mut self, part: Part, layer: Option<usize>, bias: bool) -> Result<Raw> {
        let Some((name, transposed)) = self.name(part, layer, bias) else {
            bail!("{:?}: no {:?} tensor in this layout", self.cfg.arch, part);
        };
        if !self.src.has(&name) {
            bail!("{:?} model: missing tensor {name}", self.cfg.arch);
        }
        let raw = self.src.read(&name)?;
        self.taken.insert(name);
        Ok(match raw {
            Raw::Dense(t) if transposed => Raw::Dense(t.t()?.contiguous()?),
            raw => raw,
        })
    }

    fn optional(&mut self, part: Part, layer: Option<usize>, bias: bool) -> Result<Option<Raw>> {
        if self.has(part, layer, bias) {
            self.read(part, layer, bias).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A vector of `len` f32 values.
    fn vector(&mut self, part: Part, layer: Option<usize>, bias: bool, len: usize) -> Result<Tensor> {
        let t = self.read(part, layer, bias)?.f32()?.flatten_all()?;
        if t.dims1()? != len {
            bail!("{}: expected {len} values, found {:?}", self.describe(part, layer, bias), t.shape());
        }
        Ok(t)
    }

    fn describe(&self, part: Part, layer: Option<usize>, bias: bool) -> String {
        self.name(part, layer, bias).map(|(n, _)| n).unwrap_or_else(|| format!("{part:?}"))
    }

    fn norm(&mut self, part: Part, layer: Option<usize>) -> Result<Norm> {
        let weight = self.vector(part, layer, false, self.cfg.hidden)?;
        let bias = match self.cfg.norm {
            NormKind::Layer => Some(self.vector(part, layer, true, self.cfg.hidden)?),
            NormKind::Rms => None,
        };
        Ok(Norm { weight, bias })
    }

    /// A projection from `parts` (read in order), checked to map `cols` inputs to `widths`;
    /// biases, when the file has them, for every part or none.
    fn linear(&mut self, parts: &[Part], layer: usize, widths: Vec<usize>, cols: usize) -> Result<Linear> {
        let l = Some(layer);
        let mut raws = Vec::with_capacity(parts.len());
        for &p in parts {
            let raw = self.read(p, l, false)?;
            let (_, c) = raw.dims()?;
            if c != cols {
                bail!("{}: {c} inputs, expected {cols}", self.describe(p, l, false));
            }
            raws.push(raw);
        }
        let rows: usize = raws.iter().map(|r| r.dims().map(|d| d.0)).sum::<Result<usize>>()?;
        let total: usize = widths.iter().sum();
        if rows != total {
            let names: Vec<String> = parts.iter().map(|&p| self.describe(p, l, false)).collect();
            bail!("{}: {rows} outputs, expected {total} ({widths:?})", names.join(" + "));
        }
        let present: Vec<bool> = parts.iter().map(|&p| self.has(p, l, true)).collect();
        let bias = if present.iter().all(|&b| b) {
            let mut bs = Vec::with_capacity(parts.len());
            for &p in parts {
                bs.push(self.read(p, l, true)?.f32()?.flatten_all()?);
            }
            let b = Tensor::cat(&bs, 0)?;
            if b.dims1()? != total {
                bail!("layer {layer}: biases of {parts:?}: {:?}, expected {total}", b.shape());
            }
            Some(b)
        } else if present.iter().any(|&b| b) {
            bail!("layer {layer}: biases for some of {parts:?} only");
        } else {
            None
        };
        Ok(Linear {
            parts: raws,
            widths,
            bias,
        })
    }

    /// Block `i`.
    pub(super) fn layer(&mut self, i: usize) -> Result<LayerWeights> {
        let cfg = self.cfg;
        let l = Some(i);
        let attn_norm = self.norm(Part::AttnNorm, l)?;
        let qkv_widths = cfg.qkv_widths().to_vec();
        let qkv = if self.has(Part::AttnQkv, l, false) {
            self.linear(&[Part::AttnQkv], i, qkv_widths, cfg.hidden)?
        } else {
            self.linear(&[Part::AttnQ, Part::AttnK, Part::AttnV], i, qkv_widths, cfg.hidden)?
        };
        let qk_norm = if cfg.qk_norm {
            Some((
                self.vector(Part::AttnQNorm, l, false, cfg.head_dim)?,
                self.vector(Part::AttnKNorm, l, false, cfg.head_dim)?,
            ))
        } else {
            None
        };
        let q_width = cfg.heads * cfg.head_dim;
        let o = self.linear(&[Part::AttnOutput], i, vec![cfg.hidden], q_width)?;
        let ffn_norm = self.norm(Part::FfnNorm, l)?;
        let up = match cfg.mlp {
            MlpKind::GatedSilu if self.has(Part::FfnGate, l, false) => {
                self.linear(&[Part::FfnGate, Part::FfnUp], i, vec![cfg.ffn, cfg.ffn], cfg.hidden)?
            }
            MlpKind::GatedSilu => self.linear(&[Part::FfnUp], i, vec![cfg.ffn, cfg.ffn], cfg.hidden)?,
            MlpKind::Gelu => self.linear(&[Part::FfnUp], i, vec![cfg.ffn], cfg.hidden)?,
        };
        let down = self.linear(&[Part::FfnDown], i, vec![cfg.hidden], cfg.ffn)?;
        Ok(LayerWeights {
            attn_norm,
            qkv,
            qk_norm,
            o,
            ffn_norm,
            up,
            down,
        })
    }

    /// The token embedding, `[vocab, hidden]`.
    pub(super) fn embedding(&mut self) -> Result<Raw> {
        let e = self.read(Part::TokenEmbd, None, false)?;
        if e.dims()? != (self.cfg.vocab, self.cfg.hidden) {
            bail!("embedding is {:?}, expected {}x{}", e.dims()?, self.cfg.vocab, self.cfg.hidden);
        }
        Ok(e)
    }

    /// Learned position embeddings `[context, hidden]` (f32), when the config has no RoPE.
    pub(super) fn positions(&mut self) -> Result<Option<Tensor>> {
        if self.cfg.rope.is_some() {
            return Ok(None);
        }
        let p = self.read(Part::PositionEmbd, None, false)?.f32()?;
        let (rows, cols) = p.dims2()?;
        if rows < self.cfg.context_length || cols != self.cfg.hidden {
            bail!(
                "position embedding is {rows}x{cols}, expected {}x{}",
                self.cfg.context_length,
                self.cfg.hidden
            );
        }
        p.narrow(0, 0, self.cfg.context_length).map(Some)
    }

    /// The final norm.
    pub(super) fn output_norm(&mut self) -> Result<Norm> {
        self.norm(Part::OutputNorm, None)
    }

    /// The output head, or `None` when it is tied to the embedding.
    pub(super) fn head(&mut self) -> Result<Option<Linear>> {
        let Some(w) = self.optional(Part::Output, None, false)? else {
            return Ok(None);
        };
        if w.dims()? != (self.cfg.vocab, self.cfg.hidden) {
            bail!("output head is {:?}, expected {}x{}", w.dims()?, self.cfg.vocab, self.cfg.hidden);
        }
        let bias = match self.optional(Part::Output, None, true)? {
            Some(b) => Some(b.f32()?.flatten_all()?),
            None => None,
        };
        Ok(Some(Linear {
            parts: vec![w],
            widths: vec![self.cfg.vocab],
            bias,
        }))
    }

    /// Refuses a file holding tensors the architecture does not use (an unknown layout: a
    /// mixture of experts, extra norms), naming them.
    pub(super) fn finish(self) -> Result<()> {
        let mut unused: Vec<String> = self
            .src
            .names()
            .into_iter()
            .filter(|n| !self.taken.contains(n) && !ignorable(n))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        let n = unused.len();
        unused.truncate(5);
        bail!(
            "{} model: {n} tensor(s) genq does not know for this architecture, e.g. {}",
            self.cfg.arch.name(),
            unused.join(", ")
        )
    }
}
