//! Llama weights and the packed forward pass. Owns the tensors (GGUF or HF safetensors), the
//! RoPE tables and the per-sequence KV cache type; knows nothing of jobs, tokens' text or sampling.
//!
//! One [`LlamaModel::forward`] call runs every new token of a step as one `[T, hidden]` batch
//! through the projections and the MLP; attention runs per sequence against that sequence's own
//! [`KvCache`] with a fixed summation order, so a row's numbers never depend on the other rows.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{bail, DType, Device, Module, Result, Tensor};
use half::{f16, slice::HalfFloatSliceExt};

use super::packed::{PackedLinear, QuantRows};

/// How the projection weights are held in memory.
///
/// Measured with `genq bench engine` (README, Benchmarks): on a CPU with AVX-512 VNNI, `Packed`
/// (genq's own integer kernel, [`super::packed`]) is fastest at every batch size and smallest;
/// the worker's `auto` picks it there. Without VNNI, candle's Q4_1 dot product is scalar
/// (slowest everywhere), Q8_0 reads 4x fewer bytes than f32 and wins for a single sequence, and
/// f32 goes through gemm, which reuses each weight across the rows of a packed step and wins
/// from a handful of sequences on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// As stored: GGUF quantization kept, safetensors as f32.
    Native,
    /// Quantized tensors re-quantized to Q8_0 at load (dense ones too, when rows allow).
    Q8_0,
    /// Everything dequantized to f32 (about 4 bytes per parameter: ~540 MB for SmolLM2-135M).
    F32,
    /// genq's packed integer format: Q4_1 kept 4-bit and Q8_0 8-bit, exactly; anything else
    /// quantized to 8 bits per block of 32. Multiplied by the AVX-512 VNNI kernel (a portable
    /// reference on other CPUs, correct but slow).
    Packed,
}

/// Largest batch cap for which [`WeightFormat::for_this_cpu`] picks Q8_0 on a CPU without
/// AVX-512 VNNI: its SIMD mat-vec is fastest for one or two sequences, f32 matrix products win
/// from about eight on.
pub const AUTO_Q8_MAX_BATCH: usize = 2;

impl WeightFormat {
    /// The fastest format on this CPU for a worker running at most `max_batch_size` sequences (the
    /// `auto` setting): `Packed` with AVX-512 VNNI, else Q8_0 or f32 by the cap. It depends on the
    /// cap, never on the step, so a sequence's numbers do not depend on what else runs with it.
    pub fn for_this_cpu(max_batch_size: usize) -> Self {
        if super::packed::fast_kernel_available() {
            WeightFormat::Packed
        } else if max_batch_size <= AUTO_Q8_MAX_BATCH {
            WeightFormat::Q8_0
        } else {
            WeightFormat::F32
        }
    }
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)`: GGUF llama, whose q/k weights are permuted for it.
    Interleaved,
    /// Pairs `(i, i + d/2)`: Hugging Face safetensors.
    Halves,
}

/// Shape of the network.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Width of the MLP.
    pub ffn: usize,
    /// Rows of the output head.
    pub vocab: usize,
    /// RoPE base frequency.
    pub rope_base: f64,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// Most positions one sequence may use.
    pub context_length: usize,
    /// RoPE pairing.
    pub rope: RopeStyle,
}

/// One sequence's keys and values for every layer, post-RoPE, laid out `[position, kv_head, dim]`,
/// in f16 (as llama.cpp keeps them: half the memory of f32). Owned by the sequence, so sequences
/// join and leave the batch freely.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

#[derive(Debug, Clone, Default)]
struct LayerCache {
    k: Vec<f16>,
    v: Vec<f16>,
}

impl LayerCache {
    /// Appends f32 rows, rounded to f16.
    fn push(&mut self, k: &[f32], v: &[f32]) {
        for (dst, src) in [(&mut self.k, k), (&mut self.v, v)] {
            let at = dst.len();
            dst.resize(at + src.len(), f16::ZERO);
            dst[at..].convert_from_f32_slice(src);
        }
    }
}

impl KvCache {
    /// An empty cache for `cfg`, with room reserved for `positions` (it grows past that if needed).
    pub fn new(cfg: &ModelConfig, positions: usize) -> Self {
        let row = cfg.kv_heads * cfg.head_dim;
        let layers = (0..cfg.layers)
            .map(|_| LayerCache {
                k: Vec::with_capacity(positions * row),
                v: Vec::with_capacity(positions * row),
            })
            .collect();
        Self { layers, len: 0 }
    }

    /// Positions cached so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops layers written past `len` (after a failed forward).
    fn rollback(&mut self, row: usize) {
        for l in &mut self.layers {
            l.k.truncate(self.len * row);
            l.v.truncate(self.len * row);
        }
    }
}

/// One sequence's share of a packed step.
pub struct SeqInput<'a> {
    /// The sequence's cache; its new tokens are appended.
    pub cache: &'a mut KvCache,
    /// Tokens fed this step, at positions `cache.len()..`.
    pub tokens: &'a [u32],
    /// Return logits for every fed token (score jobs), not only the last.
    pub all_logits: bool,
}

/// A weight before it becomes a matmul: quantized blocks, a dense f32 matrix `[out, in]`, or
/// rows quantized for the packed kernel.
enum Weight {
    Quant(QTensor),
    Dense(Tensor),
    Rows(QuantRows),
}

impl Weight {
    fn cols(&self) -> Result<usize> {
        match self {
            Weight::Quant(q) => Ok(q.shape().dims2()?.1),
            Weight::Dense(t) => Ok(t.dims2()?.1),
            Weight::Rows(r) => Ok(r.cols),
        }
    }

    fn rows(&self) -> Result<usize> {
        match self {
            Weight::Quant(q) => Ok(q.shape().dims2()?.0),
            Weight::Dense(t) => Ok(t.dims2()?.0),
            Weight::Rows(r) => Ok(r.rows),
        }
    }

    fn dense(self) -> Result<Tensor> {
        match self {
            Weight::Quant(q) => q.dequantize(&Device::Cpu),
            Weight::Dense(t) => Ok(t),
            Weight::Rows(r) => Tensor::from_vec(r.dequantize(), (r.rows, r.cols), &Device::Cpu),
        }
    }

    /// The weight as packed-kernel rows: Q4_1 and Q8_0 blocks exactly, anything else through f32.
    fn quant_rows(&self) -> Result<QuantRows> {
        let (rows, cols) = (self.rows()?, self.cols()?);
        let rows = match self {
            Weight::Rows(r) => Ok(r.clone()),
            Weight::Quant(q) if q.dtype() == GgmlDType::Q4_1 => QuantRows::from_q4_1(&q.data()?, rows, cols),
            Weight::Quant(q) if q.dtype() == GgmlDType::Q8_0 => QuantRows::from_q8_0(&q.data()?, rows, cols),
            Weight::Quant(q) => {
                let values = q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                QuantRows::from_f32(&values, rows, cols)
            }
            Weight::Dense(t) => {
                let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                QuantRows::from_f32(&values, rows, cols)
            }
        };
        rows.map_err(candle_core::Error::wrap)
    }

    /// Converts to `format`.
    fn convert(self, format: WeightFormat) -> Result<Weight> {
        let w = match self {
            Weight::Quant(q)
                if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) =>
            {
                Weight::Dense(q.dequantize(&Device::Cpu)?)
            }
            Weight::Dense(t) => Weight::Dense(t.to_dtype(DType::F32)?.contiguous()?),
            w => w,
        };
        let q8_fits = w.cols()? % GgmlDType::Q8_0.block_size() == 0;
        Ok(match (format, w) {
            (WeightFormat::Packed, w) if w.cols()? % super::packed::BLOCK == 0 => Weight::Rows(w.quant_rows()?),
            // Rows the packed kernel cannot take stay dense.
            (WeightFormat::Packed, w) => Weight::Dense(w.dense()?),
            (WeightFormat::F32, w) => Weight::Dense(w.dense()?),
            (WeightFormat::Q8_0, Weight::Quant(q)) if q.dtype() != GgmlDType::Q8_0 && q8_fits => {
                Weight::Quant(QTensor::quantize(
                    &q.dequantize(&Device::Cpu)?,
                    GgmlDType::Q8_0,
                )?)
            }
            (WeightFormat::Q8_0, Weight::Dense(t)) if q8_fits => {
                Weight::Quant(QTensor::quantize(&t, GgmlDType::Q8_0)?)
            }
            (_, w) => w,
        })
    }

    fn into_matmul(self) -> Result<QMatMul> {
        match self {
            Weight::Quant(q) => Ok(QMatMul::QTensor(std::sync::Arc::new(q))),
            Weight::Dense(t) => Ok(QMatMul::Tensor(t)),
            w @ Weight::Rows(_) => Ok(QMatMul::Tensor(w.dense()?)),
        }
    }

    fn into_proj(self) -> Result<Proj> {
        match self {
            Weight::Quant(q) => Ok(Proj::Quant(QMatMul::QTensor(std::sync::Arc::new(q)))),
            Weight::Dense(t) => Proj::dense(&t),
            Weight::Rows(r) => Ok(Proj::Packed(PackedLinear::new(&r))),
        }
    }
}

/// A projection `x @ w^T`. Dense weights are kept transposed, `[in, out]` and contiguous: gemm
/// then reads the weight in order, where the `[out, in]` layout made it gather every element
/// with a stride on each call (a third of a decode step's time at 32 sequences).
enum Proj {
    Quant(QMatMul),
    Dense(Tensor),
    Packed(PackedLinear),
}

impl Proj {
    /// From a dense `[out, in]` weight.
    fn dense(w: &Tensor) -> Result<Self> {
        Ok(Proj::Dense(w.t()?.contiguous()?))
    }
}

/// Several projections of the same input fused into one matmul (q/k/v, gate/up), so the input is
/// read (and quantized) once.
struct Fused {
    mm: Proj,
    widths: Vec<usize>,
}

impl Fused {
    /// Stacks `parts` along the output dimension. Quantized parts of one type are concatenated
    /// block for block (exact); anything else is stacked dense.
    fn new(parts: Vec<Weight>) -> Result<Self> {
        let widths = parts.iter().map(Weight::rows).collect::<Result<Vec<_>>>()?;
        let cols = match parts.first() {
            Some(p) => p.cols()?,
            None => bail!("nothing to fuse"),
        };
        let rows: usize = widths.iter().sum();
        let same_quant = match parts.first() {
            Some(Weight::Quant(first)) => {
                let dtype = first.dtype();
                parts
                    .iter()
                    .all(|p| matches!(p, Weight::Quant(q) if q.dtype() == dtype))
                    .then_some(dtype)
            }
            _ => None,
        };
        let all_rows = parts.iter().all(|p| matches!(p, Weight::Rows(_)));
        let mm = match same_quant {
            _ if all_rows => {
                let rows = parts
                    .into_iter()
                    .filter_map(|p| match p {
                        Weight::Rows(r) => Some(r),
                        _ => None,
                    })
                    .collect();
                Proj::Packed(PackedLinear::new(&QuantRows::stack(rows).map_err(candle_core::Error::wrap)?))
            }
            Some(dtype) => {
                let mut bytes = Vec::new();
                for p in &parts {
                    if let Weight::Quant(q) = p {
                        bytes.extend_from_slice(&q.data()?);
                    }
                }
                let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, dtype)?;
                Weight::Quant(QTensor::new(storage, (rows, cols))?).into_proj()?
            }
            None => {
                let dense = parts
                    .into_iter()
                    .map(Weight::dense)
                    .collect::<Result<Vec<_>>>()?;
                Proj::dense(&Tensor::cat(&dense, 0)?)?
            }
        };
        Ok(Self { mm, widths })
    }

    /// `[T, in]` -> one `[T, width]` tensor per part (views into one result).
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let y = matmul(&self.mm, x)?;
        let mut at = 0;
        let mut out = Vec::with_capacity(self.widths.len());
        for &w in &self.widths {
            out.push(y.narrow(1, at, w)?);
            at += w;
        }
        Ok(out)
    }
}

/// gemm (0.19) multiplies products of at most this many outputs (`m * n`) with a separate
/// dot-product kernel.
const GEMM_SMALL_OUTPUTS: usize = 16 * 16;

/// `x @ w^T` for `x: [T, in]`.
///
/// A dense weight never multiplies fewer rows than gemm's tiled kernel takes: gemm has a vector
/// path for one row and a dot-product path for tiny products, and both sum in another order
/// than the tiled kernel, which would make a decoding sequence's numbers depend on whether
/// others share its step. Padding with zero rows keeps every row on the tiled kernel (a second
/// row costs little: the weights are read once). Quantized matmuls work row by row already.
fn matmul(w: &Proj, x: &Tensor) -> Result<Tensor> {
    let wt = match w {
        Proj::Dense(wt) => wt,
        Proj::Quant(q) => return q.forward(x),
        Proj::Packed(p) => {
            let (rows, cols) = x.dims2()?;
            if cols != p.cols() {
                bail!("matmul: {cols} inputs for a weight of {}", p.cols());
            }
            let x = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            return Tensor::from_vec(p.forward(&x, rows), (rows, p.rows()), &Device::Cpu);
        }
    };
    let n = wt.dim(1)?;
    let (rows, cols) = x.dims2()?;
    let min_rows = (GEMM_SMALL_OUTPUTS / n.max(1) + 1).max(2);
    if rows >= WEIGHT_FIRST_MAX_ROWS {
        // Enough rows to amortize packing the weight: the usual orientation, no transposes.
        return x.matmul(wt);
    }
    if rows >= min_rows {
        return weight_first(wt, x);
    }
    let pad = Tensor::zeros((min_rows - rows, cols), x.dtype(), x.device())?;
    weight_first(wt, &Tensor::cat(&[x, &pad], 0)?)?.narrow(0, 0, rows)
}

/// Steps with at least this many rows (prefill) multiply activations first; fewer (decode) put
/// the weight first. Both orientations run gemm's tiled kernel over `in` in the same order, so a
/// row's numbers do not depend on the orientation its step took (a test checks it bitwise).
const WEIGHT_FIRST_MAX_ROWS: usize = 128;

/// `x @ wt` computed as `(wt^T @ x^T)^T`: the weight is the left operand, column-major (that is
/// `wt` `[in, out]` contiguous), which gemm reads in place; only the few activation columns are
/// packed. With the weight on the right, gemm copied all of it into panels on every call.
fn weight_first(wt: &Tensor, x: &Tensor) -> Result<Tensor> {
    transpose(&wt.t()?.matmul(&x.t()?)?)
}

/// A contiguous f32 `[r, c]` -> `[c, r]`, in cache-sized tiles (candle's strided copy goes element
/// by element through an index iterator, several times slower).
fn transpose(t: &Tensor) -> Result<Tensor> {
    const TILE: usize = 32;
    let (r, c) = t.dims2()?;
    let src = t.flatten_all()?.to_vec1::<f32>()?;
    let mut dst = vec![0f32; r * c];
    for i0 in (0..r).step_by(TILE) {
        for j0 in (0..c).step_by(TILE) {
            for i in i0..(i0 + TILE).min(r) {
                let row = &src[i * c..(i + 1) * c];
                for j in j0..(j0 + TILE).min(c) {
                    dst[j * r + i] = row[j];
                }
            }
        }
    }
    Tensor::from_vec(dst, (c, r), t.device())
}

struct Layer {
    attn_norm: Tensor,
    qkv: Fused,
    o: Proj,
    ffn_norm: Tensor,
    gate_up: Fused,
    down: Proj,
}

/// A Llama-family decoder ready to run packed steps on the CPU.
pub struct LlamaModel {
    cfg: ModelConfig,
    embed: QMatMul,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Proj,
    cos: Tensor,
    sin: Tensor,
}

/// Where the weights of one model come from, by llama.cpp's or Hugging Face's names.
trait WeightSource {
    fn weight(&mut self, name: &str) -> Result<Weight>;
    fn has(&self, name: &str) -> bool;
}

struct GgufSource<'a> {
    content: &'a gguf_file::Content,
    file: &'a mut File,
}

impl WeightSource for GgufSource<'_> {
    fn weight(&mut self, name: &str) -> Result<Weight> {
        Ok(Weight::Quant(self.content.tensor(
            self.file,
            name,
            &Device::Cpu,
        )?))
    }
    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
}

struct SafetensorsSource {
    tensors: HashMap<String, Tensor>,
}

impl WeightSource for SafetensorsSource {
    fn weight(&mut self, name: &str) -> Result<Weight> {
        match self.tensors.remove(name) {
            Some(t) => Ok(Weight::Dense(t.to_dtype(DType::F32)?)),
            None => bail!("safetensors: no tensor named {name}"),
        }
    }
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Tensor names of one checkpoint layout.
pub(super) struct Names {
    pub(super) embed: &'static str,
    pub(super) norm: &'static str,
    pub(super) lm_head: &'static str,
    pub(super) layer: fn(usize, &str) -> String,
}

/// llama.cpp's tensor names (GGUF).
pub(super) const GGUF_NAMES: Names = Names {
    embed: "token_embd.weight",
    norm: "output_norm.weight",
    lm_head: "output.weight",
    layer: |i, part| {
        let p = match part {
            "q" => "attn_q",
            "k" => "attn_k",
            "v" => "attn_v",
            "o" => "attn_output",
            "gate" => "ffn_gate",
            "up" => "ffn_up",
            "down" => "ffn_down",
            "attn_norm" => "attn_norm",
            _ => "ffn_norm",
        };
        format!("blk.{i}.{p}.weight")
    },
};

/// Hugging Face's tensor names (safetensors).
pub(super) const HF_NAMES: Names = Names {
    embed: "model.embed_tokens.weight",
    norm: "model.norm.weight",
    lm_head: "lm_head.weight",
    layer: |i, part| {
        let p = match part {
            "q" => "self_attn.q_proj",
            "k" => "self_attn.k_proj",
            "v" => "self_attn.v_proj",
            "o" => "self_attn.o_proj",
            "gate" => "mlp.gate_proj",
            "up" => "mlp.up_proj",
            "down" => "mlp.down_proj",
            "attn_norm" => "input_layernorm",
            _ => "post_attention_layernorm",
        };
        format!("model.layers.{i}.{p}.weight")
    },
};

/// The subset of a Hugging Face `config.json` a Llama needs.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct HfConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (defaults to the query heads).
    pub num_key_value_heads: Option<usize>,
    /// Width of one head (defaults to hidden / heads).
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base (default 10000).
    pub rope_theta: Option<f64>,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Output head shares the embedding.
    pub tie_word_embeddings: Option<bool>,
}

fn md_usize(content: &gguf_file::Content, key: &str) -> Result<usize> {
    use gguf_file::Value as V;
    let v = match content.metadata.get(key) {
        Some(v) => v,
        None => bail!("gguf: missing metadata {key}"),
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
        other => bail!("gguf: metadata {key} is not an integer: {other:?}"),
    };
    usize::try_from(n)
        .map_err(|_| candle_core::Error::Msg(format!("gguf: metadata {key} = {n} out of range")))
}

fn md_f64(content: &gguf_file::Content, key: &str) -> Option<f64> {
    match content.metadata.get(key)? {
        gguf_file::Value::F32(x) => Some(f64::from(*x)),
        gguf_file::Value::F64(x) => Some(*x),
        _ => None,
    }
}

impl ModelConfig {
    /// Refuses head layouts the attention cannot run: no heads, query heads not a multiple of
    /// the key/value heads, or an odd head dimension (RoPE rotates pairs).
    pub(super) fn check_heads(&self) -> Result<()> {
        if self.heads == 0
            || self.heads.checked_rem(self.kv_heads) != Some(0)
            || self.heads / self.kv_heads > MAX_GROUP
            || self.head_dim % 2 == 1
        {
            bail!("unsupported head layout: {} heads, {} kv heads, head dim {}", self.heads, self.kv_heads, self.head_dim);
        }
        Ok(())
    }

    /// The shape of a GGUF llama, from its metadata.
    pub(super) fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let arch = match content.metadata.get("general.architecture") {
            Some(gguf_file::Value::String(s)) => s.clone(),
            _ => "llama".to_string(),
        };
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = md_usize(content, &key("embedding_length"))?;
        let heads = md_usize(content, &key("attention.head_count"))?;
        let vocab = match content.tensor_infos.get(GGUF_NAMES.embed) {
            Some(info) => info.shape.dims2()?.0,
            None => bail!("gguf: no tensor {}", GGUF_NAMES.embed),
        };
        Ok(ModelConfig {
            layers: md_usize(content, &key("block_count"))?,
            hidden,
            heads,
            kv_heads: md_usize(content, &key("attention.head_count_kv")).unwrap_or(heads),
            head_dim: md_usize(content, &key("attention.key_length")).unwrap_or(hidden / heads.max(1)),
            ffn: md_usize(content, &key("feed_forward_length"))?,
            vocab,
            rope_base: md_f64(content, &key("rope.freq_base")).unwrap_or(10_000.0),
            eps: md_f64(content, &key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            context_length: md_usize(content, &key("context_length"))?,
            rope: RopeStyle::Interleaved,
        })
    }

    /// The shape of a Hugging Face llama, from its `config.json`.
    pub(super) fn from_hf(config: &HfConfig) -> Self {
        let heads = config.num_attention_heads;
        ModelConfig {
            layers: config.num_hidden_layers,
            hidden: config.hidden_size,
            heads,
            kv_heads: config.num_key_value_heads.unwrap_or(heads),
            head_dim: config.head_dim.unwrap_or(config.hidden_size / heads.max(1)),
            ffn: config.intermediate_size,
            vocab: config.vocab_size,
            rope_base: config.rope_theta.unwrap_or(10_000.0),
            eps: config.rms_norm_eps,
            context_length: config.max_position_embeddings,
            rope: RopeStyle::Halves,
        }
    }
}

impl LlamaModel {
    /// Loads a GGUF llama from `file` (whose header is `content`).
    pub fn from_gguf(
        content: &gguf_file::Content,
        file: &mut File,
        format: WeightFormat,
    ) -> Result<Self> {
        let cfg = ModelConfig::from_gguf(content)?;
        Self::build(cfg, &mut GgufSource { content, file }, &GGUF_NAMES, format)
    }

    /// Loads a Hugging Face Llama: `config` plus the tensors of every `*.safetensors` in `files`.
    pub fn from_safetensors(
        config: &HfConfig,
        files: &[impl AsRef<Path>],
        format: WeightFormat,
    ) -> Result<Self> {
        let mut tensors = HashMap::new();
        for f in files {
            tensors.extend(candle_core::safetensors::load(f, &Device::Cpu)?);
        }
        let cfg = ModelConfig::from_hf(config);
        let mut src = SafetensorsSource { tensors };
        if config.tie_word_embeddings == Some(true) {
            src.tensors.remove(HF_NAMES.lm_head);
        }
        Self::build(cfg, &mut src, &HF_NAMES, format)
    }

    fn build(
        cfg: ModelConfig,
        src: &mut dyn WeightSource,
        names: &Names,
        format: WeightFormat,
    ) -> Result<Self> {
        cfg.check_heads()?;
        let norm_vec = |w: Weight, what: &str| -> Result<Tensor> {
            let t = w.dense()?.to_dtype(DType::F32)?;
            if t.dims1()? != cfg.hidden {
                bail!(
                    "{what}: expected {} values, found {:?}",
                    cfg.hidden,
                    t.shape()
                );
            }
            Ok(t)
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let mut w = |part: &str| -> Result<Weight> {
                src.weight(&(names.layer)(i, part))?.convert(format)
            };
            let qkv = Fused::new(vec![w("q")?, w("k")?, w("v")?])?;
            let o = w("o")?.into_proj()?;
            let gate_up = Fused::new(vec![w("gate")?, w("up")?])?;
            let down = w("down")?.into_proj()?;
            let expect = [
                cfg.heads * cfg.head_dim,
                cfg.kv_heads * cfg.head_dim,
                cfg.kv_heads * cfg.head_dim,
            ];
            if qkv.widths != expect || gate_up.widths != [cfg.ffn, cfg.ffn] {
                bail!(
                    "layer {i}: projection shapes {:?} / {:?} do not match the config",
                    qkv.widths,
                    gate_up.widths
                );
            }
            let attn_norm = norm_vec(src.weight(&(names.layer)(i, "attn_norm"))?, "attn_norm")?;
            let ffn_norm = norm_vec(src.weight(&(names.layer)(i, "ffn_norm"))?, "ffn_norm")?;
            layers.push(Layer {
                attn_norm,
                qkv,
                o,
                ffn_norm,
                gate_up,
                down,
            });
        }
        let norm = norm_vec(src.weight(names.norm)?, "output norm")?;
        // The embedding is only gathered from, never multiplied: keep it compact unless f32 asked.
        let embed_w = src.weight(names.embed)?;
        let embed = match format {
            WeightFormat::F32 => embed_w.convert(WeightFormat::F32)?,
            _ => embed_w.convert(WeightFormat::Native)?,
        };
        if embed.rows()? != cfg.vocab || embed.cols()? != cfg.hidden {
            bail!(
                "embedding is {}x{}, expected {}x{}",
                embed.rows()?,
                embed.cols()?,
                cfg.vocab,
                cfg.hidden
            );
        }
        let (embed, lm_head) = if src.has(names.lm_head) {
            (
                embed.into_matmul()?,
                src.weight(names.lm_head)?.convert(format)?.into_proj()?,
            )
        } else {
            // Tied: the output head is the embedding matrix, in the requested format.
            let head = match (&embed, format) {
                (w, WeightFormat::Packed) if w.cols()? % super::packed::BLOCK == 0 => {
                    Some(Proj::Packed(PackedLinear::new(&w.quant_rows()?)))
                }
                (Weight::Quant(q), WeightFormat::Q8_0) if q.dtype() != GgmlDType::Q8_0 => Some(
                    Weight::Quant(QTensor::quantize(&q.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?).into_proj()?,
                ),
                (Weight::Dense(t), WeightFormat::Q8_0) => Some(Weight::Dense(t.clone()).convert(format)?.into_proj()?),
                (Weight::Dense(t), _) => Some(Proj::dense(t)?),
                _ => None,
            };
            let embed = embed.into_matmul()?;
            // A quantized embedding kept as is doubles as the head: they share the blocks.
            let head = match head {
                Some(h) => h,
                None => Proj::Quant(embed.clone()),
            };
            (embed, head)
        };
        let (cos, sin) = rope_tables(&cfg)?;
        Ok(Self {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
        })
    }
}

/// `cos`/`sin` of every (position, frequency) pair for the whole context: `[context, head_dim/2]`.
pub(super) fn rope_tables(cfg: &ModelConfig) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let mut cos = Vec::with_capacity(cfg.context_length * half);
    let mut sin = Vec::with_capacity(cfg.context_length * half);
    for pos in 0..cfg.context_length {
        for i in 0..half {
            let freq = cfg.rope_base.powf(-2.0 * i as f64 / cfg.head_dim as f64);
            let angle = pos as f64 * freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (cfg.context_length, half), &Device::Cpu)?,
        Tensor::from_vec(sin, (cfg.context_length, half), &Device::Cpu)?,
    ))
}

impl LlamaModel {
    /// The network's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Runs one packed step: every sequence's `tokens` at its next positions. Returns the logits
    /// `[rows, vocab]`: for each sequence in order, one row for its last token, or one per token
    /// when `all_logits`. On error every cache is left as it was.
    pub fn forward(&self, seqs: &mut [SeqInput<'_>]) -> Result<Tensor> {
        let row = self.cfg.kv_heads * self.cfg.head_dim;
        // The whole step runs on one of rayon's threads: each parallel matmul inside it then
        // splits its work from a pool thread, which helps instead of sleeping until the pool is
        // done (121 of them per token, each a wake-up and a context switch when called from outside).
        let out = rayon::scope(|_| self.forward_inner(seqs));
        match out {
            Ok(logits) => {
                for s in seqs.iter_mut() {
                    s.cache.len += s.tokens.len();
                }
                Ok(logits)
            }
            Err(e) => {
                for s in seqs.iter_mut() {
                    s.cache.rollback(row);
                }
                Err(e)
            }
        }
    }

    fn forward_inner(&self, seqs: &mut [SeqInput<'_>]) -> Result<Tensor> {
        let cfg = &self.cfg;
        let dev = Device::Cpu;
        let total: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        if total == 0 {
            bail!("forward: no tokens");
        }
        let mut ids = Vec::with_capacity(total);
        let mut pos = Vec::with_capacity(total);
        let mut rows = Vec::new();
        for s in seqs.iter() {
            if s.tokens.is_empty() {
                bail!("forward: a sequence with no tokens");
            }
            if s.cache.layers.len() != cfg.layers {
                bail!("forward: cache built for another model");
            }
            let end = s.cache.len + s.tokens.len();
            if end > cfg.context_length {
                bail!(
                    "forward: position {end} past the context length {}",
                    cfg.context_length
                );
            }
            let first_row = ids.len();
            for (i, &t) in s.tokens.iter().enumerate() {
                if t as usize >= cfg.vocab {
                    bail!("forward: token {t} outside the vocabulary of {}", cfg.vocab);
                }
                ids.push(t);
                pos.push((s.cache.len + i) as u32);
            }
            if s.all_logits {
                rows.extend((first_row..ids.len()).map(|r| r as u32));
            } else {
                rows.push((ids.len() - 1) as u32);
            }
        }
        let ids = Tensor::new(ids.as_slice(), &dev)?;
        let pos = Tensor::new(pos.as_slice(), &dev)?;
        let half = cfg.head_dim / 2;
        let cos = self.cos.index_select(&pos, 0)?.reshape((total, 1, half))?;
        let sin = self.sin.index_select(&pos, 0)?.reshape((total, 1, half))?;
        let rope = |x: &Tensor, heads: usize| -> Result<Tensor> {
            let x = x.contiguous()?.reshape((total, heads, 1, cfg.head_dim))?;
            match cfg.rope {
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin),
                RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, &cos, &sin),
            }
        };
        let eps = cfg.eps as f32;
        let q_width = cfg.heads * cfg.head_dim;
        let mut x = self.embed.embedding(&ids)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let [q, k, v]: [Tensor; 3] = match layer.qkv.forward(&h)?.try_into() {
                Ok(parts) => parts,
                Err(_) => bail!("qkv: expected three parts"),
            };
            let q = rope(&q, cfg.heads)?.flatten_all()?.to_vec1::<f32>()?;
            let k = rope(&k, cfg.kv_heads)?.flatten_all()?.to_vec1::<f32>()?;
            let v = v.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let attn = attention(cfg, seqs, li, &q, &k, &v);
            let attn = Tensor::from_vec(attn, (total, q_width), &dev)?;
            x = (x + matmul(&layer.o, &attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let [gate, up]: [Tensor; 2] = match layer.gate_up.forward(&h)?.try_into() {
                Ok(parts) => parts,
                Err(_) => bail!("gate/up: expected two parts"),
            };
            let m = (candle_nn::ops::silu(&gate)? * up)?.contiguous()?;
            x = (x + matmul(&layer.down, &m)?)?;
        }
        let rows = Tensor::new(rows.as_slice(), &dev)?;
        let last = x.index_select(&rows, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, eps)?;
        matmul(&self.lm_head, &last)
    }
}

/// Attention work (multiply-adds) below which one thread does it all: spawning costs more.
const PARALLEL_ATTENTION_MIN_WORK: usize = 1 << 21;

/// Appends each sequence's new keys/values (rows of `k`, `v`) to its cache for `layer`, then
/// computes causal attention of its new queries against its whole cache. Returns `[T, heads*dim]`.
///
/// Plain loops with a fixed order of summation per (row, head): a row's result depends only on
/// its own sequence, whatever else shares the step, however the prompt was chunked and however
/// the rows are split between threads.
fn attention(
    cfg: &ModelConfig,
    seqs: &mut [SeqInput<'_>],
    layer: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Vec<f32> {
    let kv_row = cfg.kv_heads * cfg.head_dim;
    let q_row = cfg.heads * cfg.head_dim;
    let mut start = 0;
    for s in seqs.iter_mut() {
        let n = s.tokens.len();
        let rows = start * kv_row..(start + n) * kv_row;
        s.cache.layers[layer].push(&k[rows.clone()], &v[rows]);
        start += n;
    }
    // Each row: its sequence's cache and how many positions it sees.
    let mut rows: Vec<(&LayerCache, usize)> = Vec::with_capacity(start);
    for s in seqs.iter() {
        let cache = &s.cache.layers[layer];
        rows.extend((0..s.tokens.len()).map(|i| (cache, s.cache.len + i + 1)));
    }
    let mut out = vec![0f32; q.len()];
    let work: usize = rows.iter().map(|&(_, len)| len).sum::<usize>() * q_row * 2;
    let threads = if work < PARALLEL_ATTENTION_MIN_WORK {
        1
    } else {
        candle_core::utils::get_num_threads().clamp(1, rows.len())
    };
    if threads == 1 {
        attend_rows(cfg, &rows, q, &mut out);
        return out;
    }
    // Contiguous runs of rows of about equal work, one per thread.
    let per_thread = work / threads + 1;
    let mut bounds = vec![0];
    let mut acc = 0;
    for (i, &(_, len)) in rows.iter().enumerate() {
        acc += len * q_row * 2;
        if acc >= per_thread * bounds.len() && bounds.len() < threads {
            bounds.push(i + 1);
        }
    }
    bounds.push(rows.len());
    bounds.dedup();
    std::thread::scope(|scope| {
        let mut rest: &mut [f32] = &mut out;
        for w in bounds.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            let (mine, tail) = rest.split_at_mut((hi - lo) * q_row);
            rest = tail;
            let rows = &rows[lo..hi];
            let q = &q[lo * q_row..hi * q_row];
            scope.spawn(move || attend_rows(cfg, rows, q, mine));
        }
    });
    out
}

/// Most query heads per key/value head (grouped-query attention) the attention loop takes.
const MAX_GROUP: usize = 64;

/// Attention of `rows` (queries `q`, `[rows, heads*dim]`) into `out`, same shape.
fn attend_rows(cfg: &ModelConfig, rows: &[(&LayerCache, usize)], q: &[f32], out: &mut [f32]) {
    let d = cfg.head_dim;
    let q_row = cfg.heads * d;
    let kv_row = cfg.kv_heads * d;
    let group = cfg.heads / cfg.kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores: Vec<f32> = Vec::new();
    // The current sequence's keys and values in f32, converted once for all its rows and heads.
    let (mut keys, mut values): (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
    let mut converted: Option<&LayerCache> = None;
    for (t, &(cache, len)) in rows.iter().enumerate() {
        if !converted.is_some_and(|c| std::ptr::eq(c, cache)) {
            for (dst, src) in [(&mut keys, &cache.k), (&mut values, &cache.v)] {
                dst.resize(src.len(), 0.0);
                src.convert_to_f32_slice(dst);
            }
            converted = Some(cache);
        }
        // The query heads sharing a key/value head go together: each cached row is read once.
        for g in 0..cfg.kv_heads {
            let heads = g * group..(g + 1) * group;
            scores.clear();
            scores.resize(group * len, 0.0);
            for j in 0..len {
                let kh = &keys[j * kv_row + g * d..j * kv_row + (g + 1) * d];
                for (i, head) in heads.clone().enumerate() {
                    let qh = &q[t * q_row + head * d..t * q_row + (head + 1) * d];
                    scores[i * len + j] = dot(qh, kh) * scale;
                }
            }
            let mut sums = [0f32; MAX_GROUP];
            for (i, sc) in scores.chunks_exact_mut(len).enumerate() {
                let max = sc.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                let mut sum = 0f32;
                for s in sc.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                sums[i] = sum;
            }
            let o = &mut out[t * q_row + heads.start * d..t * q_row + heads.end * d];
            for j in 0..len {
                let vh = &values[j * kv_row + g * d..j * kv_row + (g + 1) * d];
                for (i, oh) in o.chunks_exact_mut(d).enumerate() {
                    let p = scores[i * len + j];
                    for (oo, &vv) in oh.iter_mut().zip(vh) {
                        *oo += p * vv;
                    }
                }
            }
            for (oh, &sum) in o.chunks_exact_mut(d).zip(&sums) {
                let inv = 1.0 / sum;
                for oo in oh.iter_mut() {
                    *oo *= inv;
                }
            }
        }
    }
}

/// Dot product with eight independent accumulators (vectorizes; fixed order).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
}
