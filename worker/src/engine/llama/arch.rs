//! The architectures genq runs and what varies between them: [`Arch`] (from GGUF
//! `general.architecture` or a Hugging Face `config.json`) and [`ModelConfig`], the shape and
//! the math of one model (norm, MLP, positions, per-head q/k norms, RoPE scaling).
//!
//! Where each tensor lives in a file is [`super::layout`]'s business; the forward passes read
//! only [`ModelConfig`]. An architecture, a RoPE scaling or a hyperparameter this module does
//! not know is refused with an error naming it, never run approximately.

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};

/// Largest number of query heads per key/value head the attention loops take.
pub const MAX_GROUP: usize = 64;

/// A model family genq knows (llama.cpp's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2, Llama 3.x, Mistral 7B, SmolLM: RMSNorm, gated SiLU MLP, RoPE.
    Llama,
    /// Qwen2 / Qwen2.5: llama with biases on q, k and v; NEOX RoPE.
    Qwen2,
    /// Qwen3: llama with an RMSNorm of each head of q and k before RoPE; NEOX RoPE.
    Qwen3,
    /// Phi-3: fused qkv and gate/up projections; NEOX RoPE.
    Phi3,
    /// GPT-2: LayerNorm with bias, learned positions, GELU MLP, biases everywhere.
    Gpt2,
}

/// What genq names in an error: every architecture it runs.
const KNOWN: &str = "llama, qwen2, qwen3, phi3, gpt2";

/// A model genq cannot run, refused at load.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// `general.architecture` (GGUF) or `model_type` / `architectures` (config.json) is not one
    /// of genq's.
    #[error("unsupported architecture `{0}` (genq runs {KNOWN})")]
    Unknown(String),
    /// The file does not say what it is.
    #[error("{0} is missing: cannot tell the model's architecture (genq runs {KNOWN})")]
    Unnamed(&'static str),
    /// A hyperparameter is missing or unusable.
    #[error("{arch:?}: {key}: {message}")]
    Hparam {
        /// The architecture.
        arch: Arch,
        /// The metadata key or config field.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A feature of the architecture genq does not implement.
    #[error("{arch:?}: {what} is not supported")]
    Unsupported {
        /// The architecture.
        arch: Arch,
        /// The feature, with the key that asked for it.
        what: String,
    },
}

impl From<ArchError> for candle_core::Error {
    fn from(e: ArchError) -> Self {
        candle_core::Error::Msg(e.to_string())
    }
}

type Result<T> = std::result::Result<T, ArchError>;

impl Arch {
    /// From GGUF `general.architecture`.
    pub fn from_gguf_name(name: &str) -> Result<Self> {
        Ok(match name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "phi3" => Arch::Phi3,
            "gpt2" => Arch::Gpt2,
            other => return Err(ArchError::Unknown(other.to_string())),
        })
    }

    /// From a `config.json`'s `model_type`, else its first `architectures` entry.
    pub fn from_hf(model_type: Option<&str>, architectures: &[String]) -> Result<Self> {
        if let Some(t) = model_type {
            return Ok(match t {
                "llama" | "mistral" => Arch::Llama,
                "qwen2" => Arch::Qwen2,
                "qwen3" => Arch::Qwen3,
                "phi3" => Arch::Phi3,
                "gpt2" => Arch::Gpt2,
                other => return Err(ArchError::Unknown(other.to_string())),
            });
        }
        let Some(first) = architectures.first() else {
            return Err(ArchError::Unnamed("config.json `model_type` (or `architectures`)"));
        };
        Ok(match first.as_str() {
            "LlamaForCausalLM" | "MistralForCausalLM" => Arch::Llama,
            "Qwen2ForCausalLM" => Arch::Qwen2,
            "Qwen3ForCausalLM" => Arch::Qwen3,
            "Phi3ForCausalLM" => Arch::Phi3,
            "GPT2LMHeadModel" => Arch::Gpt2,
            other => return Err(ArchError::Unknown(other.to_string())),
        })
    }

    /// llama.cpp's name (the GGUF metadata prefix).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
            Arch::Gpt2 => "gpt2",
        }
    }

    fn norm(self) -> NormKind {
        match self {
            Arch::Gpt2 => NormKind::Layer,
            _ => NormKind::Rms,
        }
    }

    fn mlp(self) -> MlpKind {
        match self {
            Arch::Gpt2 => MlpKind::Gelu,
            _ => MlpKind::GatedSilu,
        }
    }

    /// How a GGUF file of this architecture pairs RoPE dimensions (llama.cpp's rope type):
    /// llama's q/k rows are permuted by the converter for interleaved pairs, the others are not.
    fn gguf_rope_style(self) -> RopeStyle {
        match self {
            Arch::Llama => RopeStyle::Interleaved,
            _ => RopeStyle::Halves,
        }
    }

    /// Uses rotary embeddings (GPT-2 learns its positions instead).
    fn has_rope(self) -> bool {
        self != Arch::Gpt2
    }

    /// Output head tied to the embedding when `config.json` does not say.
    fn hf_ties_by_default(self) -> bool {
        self == Arch::Gpt2
    }
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)`: GGUF llama, whose q/k weights are permuted for it.
    Interleaved,
    /// Pairs `(i, i + d/2)` (NEOX): Hugging Face safetensors, and GGUF qwen2/qwen3/phi3.
    Halves,
}

/// The normalization before attention, before the MLP and before the output head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// RMSNorm with a weight.
    Rms,
    /// LayerNorm (mean removed) with a weight and a bias.
    Layer,
}

/// The MLP between the two projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpKind {
    /// `down(silu(gate(x)) * up(x))`; gate and up may be one fused tensor (gate first).
    GatedSilu,
    /// `down(gelu(up(x)))`, GELU's tanh approximation (as ggml and GPT-2's `gelu_new`).
    Gelu,
}

/// Rotary position embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// Pairing of dimensions.
    pub style: RopeStyle,
    /// Base frequency (`rope_theta`).
    pub base: f64,
    /// Linear scaling: positions multiplied by this (1 / `factor`).
    pub freq_scale: f64,
    /// Per-frequency divisors, `head_dim / 2` of them: Llama 3.1's `rope_freqs`, Phi-3's short
    /// factors. None: all 1.
    pub factors: Option<Vec<f32>>,
    /// Multiplies every cos and sin (Phi-3 long-context's attention factor; 1 otherwise).
    pub attn_factor: f64,
}

impl Rope {
    fn plain(style: RopeStyle, base: f64) -> Self {
        Rope {
            style,
            base,
            freq_scale: 1.0,
            factors: None,
            attn_factor: 1.0,
        }
    }

    /// `cos`/`sin` of every (position, frequency) pair for `positions` positions:
    /// `[positions, head_dim/2]` each, f32, on the CPU.
    pub fn tables(&self, head_dim: usize, positions: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let half = head_dim / 2;
        let freqs: Vec<f64> = (0..half)
            .map(|i| {
                let mut f = self.base.powf(-2.0 * i as f64 / head_dim as f64);
                if self.freq_scale != 1.0 {
                    f *= self.freq_scale;
                }
                if let Some(factors) = &self.factors {
                    f /= f64::from(factors[i]);
                }
                f
            })
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for pos in 0..positions {
            for &freq in &freqs {
                let angle = pos as f64 * freq;
                let (s, c) = angle.sin_cos();
                if self.attn_factor == 1.0 {
                    cos.push(c as f32);
                    sin.push(s as f32);
                } else {
                    cos.push((c * self.attn_factor) as f32);
                    sin.push((s * self.attn_factor) as f32);
                }
            }
        }
        Ok((
            Tensor::from_vec(cos, (positions, half), &Device::Cpu)?,
            Tensor::from_vec(sin, (positions, half), &Device::Cpu)?,
        ))
    }
}

/// Shape and math of one network.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The family.
    pub arch: Arch,
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one head (qwen3's is not `hidden / heads`).
    pub head_dim: usize,
    /// Width of the MLP.
    pub ffn: usize,
    /// Rows of the output head.
    pub vocab: usize,
    /// Norm epsilon (RMSNorm's or LayerNorm's).
    pub eps: f64,
    /// Most positions one sequence may use.
    pub context_length: usize,
    /// RMSNorm or LayerNorm.
    pub norm: NormKind,
    /// Gated SiLU or plain GELU.
    pub mlp: MlpKind,
    /// Rotary positions; `None`: learned position embeddings added to the token embedding.
    pub rope: Option<Rope>,
    /// An RMSNorm over each head of q and of k before RoPE (qwen3).
    pub qk_norm: bool,
}

impl ModelConfig {
    /// Refuses head layouts the attention cannot run: no heads, query heads not a multiple of
    /// the key/value heads, or an odd head dimension with RoPE (it rotates pairs).
    pub fn check(&self) -> candle_core::Result<()> {
        if self.heads == 0
            || self.head_dim == 0
            || self.heads.checked_rem(self.kv_heads) != Some(0)
            || self.heads / self.kv_heads > MAX_GROUP
            || (self.rope.is_some() && self.head_dim % 2 == 1)
        {
            candle_core::bail!(
                "unsupported head layout: {} heads, {} kv heads, head dim {}",
                self.heads,
                self.kv_heads,
                self.head_dim
            );
        }
        if let Some(f) = self.rope.as_ref().and_then(|r| r.factors.as_ref()) {
            if f.len() != self.head_dim / 2 || f.iter().any(|&x| !(x.is_finite() && x > 0.0)) {
                candle_core::bail!(
                    "{:?}: RoPE frequency factors: expected {} positive values, found {}",
                    self.arch,
                    self.head_dim / 2,
                    f.len()
                );
            }
        }
        Ok(())
    }

    /// Width of the fused q/k/v output: q, then k, then v.
    pub fn qkv_widths(&self) -> [usize; 3] {
        let kv = self.kv_heads * self.head_dim;
        [self.heads * self.head_dim, kv, kv]
    }

    /// The shape of a GGUF model from its metadata; `rope_factors` reads a small f32 tensor by
    /// name (Llama 3.1's `rope_freqs.weight`, Phi-3's `rope_factors_short.weight`) when the
    /// file has it.
    pub fn from_gguf(
        content: &gguf_file::Content,
        rope_factors: &mut dyn FnMut(&str) -> candle_core::Result<Vec<f32>>,
    ) -> candle_core::Result<Self> {
        let name = match content.metadata.get("general.architecture") {
            Some(gguf_file::Value::String(s)) => s.clone(),
            _ => return Err(ArchError::Unnamed("GGUF metadata `general.architecture`").into()),
        };
        let arch = Arch::from_gguf_name(&name)?;
        let md = Gguf { content, arch };
        let hidden = md.usize("embedding_length")?;
        let heads = md.usize("attention.head_count")?;
        let head_dim = md.opt_usize("attention.key_length")?.unwrap_or(hidden / heads.max(1));
        if let Some(v) = md.opt_usize("attention.value_length")? {
            if v != head_dim {
                return Err(md.unsupported(format!("attention.value_length {v} != key_length {head_dim}")).into());
            }
        }
        // A mixture of experts. (A sliding window is ignored, as llama.cpp ignores phi3's.)
        if md.opt_usize("expert_count")?.unwrap_or(0) > 0 {
            return Err(md.unsupported(format!("experts (`{}.expert_count`)", arch.name())).into());
        }
        if md.f64("attention.scale").is_some() {
            return Err(md.unsupported(format!("`{}.attention.scale`", arch.name())).into());
        }
        let vocab = match content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims2()?.0,
            None => candle_core::bail!("gguf: no tensor token_embd.weight"),
        };
        let mut context_length = md.usize("context_length")?;
        let (eps_key, eps_default) = match arch.norm() {
            NormKind::Rms => ("attention.layer_norm_rms_epsilon", 1e-5),
            NormKind::Layer => ("attention.layer_norm_epsilon", 1e-5),
        };
        let rope = if arch.has_rope() {
            if let Some(n) = md.opt_usize("rope.dimension_count")? {
                if n != head_dim {
                    return Err(md.unsupported(format!("partial rotary embeddings (`rope.dimension_count` {n}, head dim {head_dim})")).into());
                }
            }
            let mut rope = Rope::plain(arch.gguf_rope_style(), md.f64("rope.freq_base").unwrap_or(10_000.0));
            let scaling = match content.metadata.get(&md.key("rope.scaling.type")) {
                Some(gguf_file::Value::String(s)) => s.clone(),
                _ => "none".to_string(),
            };
            let factor = md.f64("rope.scaling.factor").filter(|&f| f != 0.0).unwrap_or(1.0);
            match scaling.as_str() {
                "none" | "linear" => rope.freq_scale = 1.0 / factor,
                "longrope" => {}
                other => return Err(md.unsupported(format!("RoPE scaling `{other}`")).into()),
            }
            rope.attn_factor = md.f64("rope.scaling.attn_factor").unwrap_or(1.0);
            if content.tensor_infos.contains_key("rope_freqs.weight") {
                rope.factors = Some(rope_factors("rope_freqs.weight")?);
            } else if content.tensor_infos.contains_key("rope_factors_short.weight") {
                // Long-context Phi-3: the short factors hold up to the original context, which
                // then caps the context (the long ones, past it, are not implemented).
                rope.factors = Some(rope_factors("rope_factors_short.weight")?);
                if let Some(orig) = md.opt_usize("rope.scaling.original_context_length")? {
                    context_length = context_length.min(orig);
                }
            }
            Some(rope)
        } else {
            None
        };
        let cfg = ModelConfig {
            arch,
            layers: md.usize("block_count")?,
            hidden,
            heads,
            kv_heads: md.opt_usize("attention.head_count_kv")?.unwrap_or(heads),
            head_dim,
            ffn: md.usize("feed_forward_length")?,
            vocab,
            eps: md.f64(eps_key).unwrap_or(eps_default),
            context_length,
            norm: arch.norm(),
            mlp: arch.mlp(),
            rope,
            qk_norm: arch == Arch::Qwen3,
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// The shape of a Hugging Face model from its `config.json`.
    pub fn from_hf(config: &HfConfig) -> candle_core::Result<Self> {
        let arch = Arch::from_hf(config.model_type.as_deref(), config.architectures.as_deref().unwrap_or_default())?;
        let bad = |key: &str, message: &str| ArchError::Hparam {
            arch,
            key: key.to_string(),
            message: message.to_string(),
        };
        let unsupported = |what: String| ArchError::Unsupported { arch, what };
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        let head_dim = config.head_dim.unwrap_or(hidden / heads.max(1));
        let ffn = match (config.intermediate_size, arch) {
            (Some(n), _) => n,
            (None, Arch::Gpt2) => 4 * hidden,
            (None, _) => return Err(bad("intermediate_size", "missing").into()),
        };
        let eps = match arch.norm() {
            NormKind::Rms => config.rms_norm_eps.ok_or_else(|| bad("rms_norm_eps", "missing"))?,
            NormKind::Layer => config.layer_norm_epsilon.unwrap_or(1e-5),
        };
        if let Some(act) = config.hidden_act.as_deref().or(config.activation_function.as_deref()) {
            let expected: &[&str] = match arch.mlp() {
                MlpKind::GatedSilu => &["silu", "swish"],
                MlpKind::Gelu => &["gelu_new", "gelu_pytorch_tanh"],
            };
            if !expected.contains(&act) {
                return Err(unsupported(format!("activation `{act}`")).into());
            }
        }
        let mut context_length = config.max_position_embeddings;
        // Mistral 7B v0.1 attends within a sliding window: past it genq's full attention would
        // differ, so the window caps the context.
        if let Some(w) = config.sliding_window.filter(|&w| w > 0) {
            if config.use_sliding_window.unwrap_or(arch == Arch::Llama) {
                context_length = context_length.min(w);
            }
        }
        let rope = if arch.has_rope() {
            if let Some(p) = config.partial_rotary_factor.filter(|&p| p != 1.0) {
                return Err(unsupported(format!("partial rotary embeddings (`partial_rotary_factor` {p})")).into());
            }
            let mut rope = Rope::plain(RopeStyle::Halves, config.rope_theta.unwrap_or(10_000.0));
            if let Some(scaling) = config.rope_scaling.as_ref().filter(|v| !v.is_null()) {
                hf_rope_scaling(arch, scaling, config, head_dim, &mut rope, &mut context_length)?;
            }
            Some(rope)
        } else {
            None
        };
        let cfg = ModelConfig {
            arch,
            layers: config.num_hidden_layers,
            hidden,
            heads,
            kv_heads: config.num_key_value_heads.unwrap_or(heads),
            head_dim,
            ffn,
            vocab: config.vocab_size,
            eps,
            context_length,
            norm: arch.norm(),
            mlp: arch.mlp(),
            rope,
            qk_norm: arch == Arch::Qwen3,
        };
        cfg.check()?;
        Ok(cfg)
    }
}

/// Applies `config.json`'s `rope_scaling` to `rope`: `linear`, Llama 3.1's `llama3` (factors
/// computed as llama.cpp's converter does), Phi-3's `longrope` short factors (capping the
/// context at the original one); anything else is refused.
fn hf_rope_scaling(
    arch: Arch,
    scaling: &serde_json::Value,
    config: &HfConfig,
    head_dim: usize,
    rope: &mut Rope,
    context_length: &mut usize,
) -> Result<()> {
    let num = |key: &str| scaling.get(key).and_then(serde_json::Value::as_f64);
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("default");
    let bad = |message: String| ArchError::Hparam {
        arch,
        key: "rope_scaling".into(),
        message,
    };
    match kind {
        "default" => {}
        "linear" => rope.freq_scale = 1.0 / num("factor").ok_or_else(|| bad("linear without `factor`".into()))?,
        "llama3" => {
            let factor = num("factor").unwrap_or(8.0) as f32;
            let low = num("low_freq_factor").unwrap_or(1.0) as f32;
            let high = num("high_freq_factor").unwrap_or(4.0) as f32;
            let old_ctx = num("original_max_position_embeddings").unwrap_or(8192.0) as f32;
            let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
            let base = rope.base as f32;
            // In f32 as the converter's torch code: the same factors as a GGUF's rope_freqs.
            let factors = (0..head_dim / 2)
                .map(|i| {
                    let freq = 1.0 / base.powf((2 * i) as f32 / head_dim as f32);
                    let wavelen = 2.0 * std::f32::consts::PI / freq;
                    if wavelen < high_wavelen {
                        1.0
                    } else if wavelen > low_wavelen {
                        factor
                    } else {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        1.0 / ((1.0 - smooth) / factor + smooth)
                    }
                })
                .collect();
            rope.factors = Some(factors);
        }
        "longrope" | "su" => {
            let short: Vec<f32> = scaling
                .get("short_factor")
                .and_then(serde_json::Value::as_array)
                .ok_or_else(|| bad(format!("`{kind}` without `short_factor`")))?
                .iter()
                .map(|v| v.as_f64().map(|x| x as f32))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("`short_factor` holds a non-number".into()))?;
            let orig = num("original_max_position_embeddings")
                .map(|x| x as usize)
                .or(config.original_max_position_embeddings)
                .ok_or_else(|| bad(format!("`{kind}` without `original_max_position_embeddings`")))?;
            let scale = config.max_position_embeddings as f64 / orig as f64;
            if scale > 1.0 {
                rope.attn_factor = (1.0 + scale.ln() / (orig as f64).ln()).sqrt();
            }
            rope.factors = Some(short);
            *context_length = (*context_length).min(orig);
        }
        other => {
            return Err(ArchError::Unsupported {
                arch,
                what: format!("RoPE scaling `{other}` (rope_scaling)"),
            })
        }
    }
    Ok(())
}

/// GGUF metadata of one architecture (keys prefixed with its name).
struct Gguf<'a> {
    content: &'a gguf_file::Content,
    arch: Arch,
}

impl Gguf<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch.name())
    }

    fn unsupported(&self, what: String) -> ArchError {
        ArchError::Unsupported {
            arch: self.arch,
            what,
        }
    }

    fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?.ok_or_else(|| ArchError::Hparam {
            arch: self.arch,
            key: self.key(k),
            message: "missing".into(),
        })
    }

    fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        use gguf_file::Value as V;
        let key = self.key(k);
        let Some(v) = self.content.metadata.get(&key) else {
            return Ok(None);
        };
        let n: i128 = match v {
            V::U8(x) => (*x).into(),
            V::I8(x) => (*x).into(),
            V::U16(x) => (*x).into(),
            V::I16(x) => (*x).into(),
            V::U32(x) => (*x).into(),
            V::I32(x) => (*x).into(),
            V::U64(x) => (*x).into(),
            V::I64(x) => (*x).into(),
            other => {
                return Err(ArchError::Hparam {
                    arch: self.arch,
                    key,
                    message: format!("not an integer: {other:?}"),
                })
            }
        };
        usize::try_from(n).map(Some).map_err(|_| ArchError::Hparam {
            arch: self.arch,
            key,
            message: format!("{n} out of range"),
        })
    }

    fn f64(&self, k: &str) -> Option<f64> {
        match self.content.metadata.get(&self.key(k))? {
            gguf_file::Value::F32(x) => Some(f64::from(*x)),
            gguf_file::Value::F64(x) => Some(*x),
            _ => None,
        }
    }
}

/// The fields of a Hugging Face `config.json` genq reads (GPT-2's own names are aliases).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct HfConfig {
    /// `llama`, `mistral`, `qwen2`, `qwen3`, `phi3`, `gpt2`.
    pub model_type: Option<String>,
    /// Class names (`LlamaForCausalLM`), read when `model_type` is absent.
    pub architectures: Option<Vec<String>>,
    /// Width of the residual stream.
    #[serde(alias = "n_embd")]
    pub hidden_size: usize,
    /// Width of the MLP (GPT-2: `n_inner`, default 4 x hidden).
    #[serde(alias = "n_inner")]
    pub intermediate_size: Option<usize>,
    /// Transformer blocks.
    #[serde(alias = "n_layer")]
    pub num_hidden_layers: usize,
    /// Query heads.
    #[serde(alias = "n_head")]
    pub num_attention_heads: usize,
    /// Key/value heads (defaults to the query heads).
    pub num_key_value_heads: Option<usize>,
    /// Width of one head (defaults to hidden / heads).
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: Option<f64>,
    /// LayerNorm epsilon (GPT-2).
    pub layer_norm_epsilon: Option<f64>,
    /// RoPE base (default 10000).
    pub rope_theta: Option<f64>,
    /// RoPE scaling (`linear`, `llama3`, `longrope`).
    pub rope_scaling: Option<serde_json::Value>,
    /// Phi-3 long-context: the context the short RoPE factors hold for.
    pub original_max_position_embeddings: Option<usize>,
    /// Fraction of each head rotated (refused unless 1).
    pub partial_rotary_factor: Option<f64>,
    /// Context length.
    #[serde(alias = "n_positions")]
    pub max_position_embeddings: usize,
    /// Mistral's attention window.
    pub sliding_window: Option<usize>,
    /// Whether `sliding_window` applies (Qwen2 says so; Mistral does not).
    pub use_sliding_window: Option<bool>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Output head shares the embedding.
    pub tie_word_embeddings: Option<bool>,
    /// MLP activation (llama family).
    pub hidden_act: Option<String>,
    /// MLP activation (GPT-2).
    pub activation_function: Option<String>,
}

impl HfConfig {
    /// The output head is the embedding matrix (`tie_word_embeddings`, or the family's default).
    pub fn tied(&self) -> bool {
        let arch = Arch::from_hf(self.model_type.as_deref(), self.architectures.as_deref().unwrap_or_default());
        self.tie_word_embeddings
            .unwrap_or_else(|| arch.is_ok_and(Arch::hf_ties_by_default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> ModelConfig {
        let mut c = serde_json::json!({
            "model_type": "llama",
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "max_position_embeddings": 131072,
            "vocab_size": 128256,
        });
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        let hf: HfConfig = serde_json::from_value(c).expect("config");
        ModelConfig::from_hf(&hf).expect("model config")
    }

    #[test]
    fn llama31_rope_factors_run_from_1_to_the_factor() {
        let cfg = config(serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}));
        let f = cfg.rope.and_then(|r| r.factors).expect("factors");
        assert_eq!(f.len(), 64);
        assert_eq!((f[0], f[63]), (1.0, 8.0));
        assert!(f.windows(2).all(|w| w[0] <= w[1]), "{f:?}");
        assert_eq!(cfg.context_length, 131072);
    }

    #[test]
    fn phi3_longrope_runs_the_short_factors_up_to_the_original_context() {
        let short: Vec<f64> = (0..48).map(|i| 1.0 + i as f64 / 100.0).collect();
        let cfg = config(serde_json::json!({"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32,
            "num_key_value_heads": 32, "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "sliding_window": 262144,
            "rope_scaling": {"type": "longrope", "short_factor": short, "long_factor": vec![2.0; 48]}}));
        assert_eq!(cfg.arch, Arch::Phi3);
        assert_eq!(cfg.context_length, 4096);
        let rope = cfg.rope.expect("rope");
        assert_eq!(rope.factors.expect("factors")[1], 1.01);
        let want = (1.0 + (32f64).ln() / (4096f64).ln()).sqrt();
        assert!((rope.attn_factor - want).abs() < 1e-12, "{}", rope.attn_factor);
    }

    #[test]
    fn mistral_sliding_window_caps_the_context_and_linear_scaling_scales_positions() {
        let cfg = config(serde_json::json!({"model_type": "mistral", "sliding_window": 4096,
            "rope_scaling": {"type": "linear", "factor": 4.0}}));
        assert_eq!((cfg.arch, cfg.context_length), (Arch::Llama, 4096));
        assert_eq!(cfg.rope.map(|r| r.freq_scale), Some(0.25));
    }

    #[test]
    fn partial_rotary_and_unknown_activations_are_refused() {
        for (extra, needle) in [
            (serde_json::json!({"partial_rotary_factor": 0.5}), "partial_rotary_factor"),
            (serde_json::json!({"hidden_act": "gelu"}), "gelu"),
            (serde_json::json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}), "dynamic"),
        ] {
            let mut c = serde_json::json!({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 1, "num_attention_heads": 4, "rms_norm_eps": 1e-5,
                "max_position_embeddings": 64, "vocab_size": 10});
            if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(extra.clone());
            }
            let hf: HfConfig = serde_json::from_value(c).expect("config");
            let err = ModelConfig::from_hf(&hf).expect_err("refused").to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
