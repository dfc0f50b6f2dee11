//! The device path of the engine: [`DeviceModel`] holds the weights on a candle [`Device`]
//! (CUDA; the CPU too, which is how its tests run here) and runs a step with a number of kernel
//! launches that does not grow with the number of sequences. `super::backend` picks it or the
//! CPU model from `worker.device`.
//!
//! How a step runs on the device:
//! - Architectures: every one of [`super::arch`], loaded through the same [`super::layout`]
//!   description as the CPU model (biases, LayerNorm, per-head q/k norms, GELU, learned positions
//!   are per-row operations here too).
//! - Weights: safetensors in bf16 (f16 when the file is f16; f32 with `weights=f32`), GGUF
//!   quantized tensors kept quantized as candle `QMatMul`s (its CUDA MMQ/MMVQ kernels), or
//!   re-quantized to Q8_0 (`weights=q8_0`). Norms, RoPE tables and the embedding in the same dtype.
//! - KV cache: a slot pool per layer, `[slot, kv_head, position, dim]` (flat `[rows, dim]`), that
//!   grows by doubling in slots and in positions. A sequence holds a [`SlotCache`]: its slot and
//!   length; dropping it frees the slot.
//! - Attention: the step's sequences are grouped by how many tokens they feed (every decoding
//!   sequence feeds one) and by length, in powers of two. Per group and layer: one gather of the
//!   group's K and V rows up to the longest sequence, one batched `q·Kᵀ`, an additive mask (causal within
//!   the step, and the padding past each sequence's own length), softmax in f32, one batched
//!   `·V`. New keys and values are written with one scatter per layer for the whole step.
//!
//! Not here: paged blocks (the pool pads each slot to the longest sequence of the step), fused
//! flash attention (the `flash-attn` feature cannot build offline), CUDA graphs, sampling on the
//! device (logits come back to the host, where every sequence samples with its own seeded RNG).
//! Results on CUDA are not bit-for-bit independent of the batch as on the CPU path: cuBLAS picks
//! kernels by shape.

mod pool;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{bail, DType, Device, Module, Result, Tensor};

use super::arch::{HfConfig, MlpKind, ModelConfig, RopeStyle};
use super::layout::{self, Format, GgufSource, Linear, Loader, Norm, Part, Raw, SafetensorsSource, TensorSource};
use super::model::WeightFormat;

pub use pool::{SlotCache, SlotInput};
use pool::{lock, Pool};

/// A norm on the device: RMSNorm, or LayerNorm when it has a bias.
struct DeviceNorm {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl DeviceNorm {
    fn apply(&self, x: &Tensor, eps: f32) -> Result<Tensor> {
        match &self.bias {
            None => candle_nn::ops::rms_norm(x, &self.weight, eps),
            Some(b) => candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, b, eps),
        }
    }
}

/// A (possibly fused) projection on the device with its bias.
struct DeviceLinear {
    mm: QMatMul,
    bias: Option<Tensor>,
}

struct DeviceLayer {
    attn_norm: DeviceNorm,
    qkv: DeviceLinear,
    /// Per-head RMSNorm weights of q and k (qwen3).
    qk_norm: Option<(Tensor, Tensor)>,
    o: DeviceLinear,
    ffn_norm: DeviceNorm,
    /// Gate and up (gated MLP), or up alone (GELU).
    up: DeviceLinear,
    down: DeviceLinear,
}

/// A decoder of any of genq's architectures on a candle device, with a slot-pool KV cache and
/// batched attention.
pub struct DeviceModel {
    pub(super) cfg: ModelConfig,
    device: Device,
    dtype: DType,
    embed: Tensor,
    /// Learned positions `[context, hidden]` (GPT-2).
    positions: Option<Tensor>,
    layers: Vec<DeviceLayer>,
    norm: DeviceNorm,
    lm_head: DeviceLinear,
    /// RoPE tables `[context, head_dim/2]`, when the model rotates.
    rope: Option<(Tensor, Tensor)>,
    pool: Arc<Mutex<Pool>>,
}

/// How the device model holds its weights and computes: decided once at load.
struct Plan<'a> {
    format: WeightFormat,
    dtype: DType,
    device: &'a Device,
}

impl Plan<'_> {
    /// bf16 on a GPU (f16 when the file is f16), f32 when asked for or on the CPU.
    fn new(format: WeightFormat, file_dtype: Option<DType>, device: &Device) -> Plan<'_> {
        let dtype = match (format, device) {
            (WeightFormat::F32, _) | (_, Device::Cpu) => DType::F32,
            _ if file_dtype == Some(DType::F16) => DType::F16,
            _ => DType::BF16,
        };
        Plan {
            format,
            dtype,
            device,
        }
    }

    fn dense(&self, t: &Tensor) -> Result<Tensor> {
        t.to_dtype(self.dtype)?.to_device(self.device)?.contiguous()
    }

    /// Stacks `parts` (along the output dimension) into one matmul: quantized blocks
    /// concatenated as they are (`native`, all of one type), re-quantized to Q8_0 (`q8_0`, rows
    /// a multiple of 32), else dense in the compute dtype.
    fn matmul(&self, parts: &[Raw]) -> Result<QMatMul> {
        let cols = match parts.first() {
            Some(p) => p.dims()?.1,
            None => bail!("nothing to stack"),
        };
        let rows: usize = parts
            .iter()
            .map(|p| p.dims().map(|d| d.0))
            .sum::<Result<usize>>()?;
        let native = parts.first().and_then(Raw::quant_dtype);
        let quant = match self.format {
            WeightFormat::Native => {
                native.filter(|&d| parts.iter().all(|p| p.quant_dtype() == Some(d)))
            }
            WeightFormat::Q8_0 if cols % GgmlDType::Q8_0.block_size() == 0 => Some(GgmlDType::Q8_0),
            _ => None,
        };
        if let Some(dtype) = quant {
            let mut bytes = Vec::new();
            for p in parts {
                match p {
                    Raw::Quant(q) if q.dtype() == dtype => bytes.extend_from_slice(&q.data()?),
                    other => {
                        let q = QTensor::quantize(&other.f32()?, dtype)?;
                        bytes.extend_from_slice(&q.data()?);
                    }
                }
            }
            let storage = QStorage::from_data(Cow::Owned(bytes), self.device, dtype)?;
            return Ok(QMatMul::QTensor(Arc::new(QTensor::new(
                storage,
                (rows, cols),
            )?)));
        }
        let dense = parts.iter().map(Raw::f32).collect::<Result<Vec<_>>>()?;
        Ok(QMatMul::Tensor(self.dense(&Tensor::cat(&dense, 0)?)?))
    }
}

impl Plan<'_> {
    fn norm(&self, n: Norm) -> Result<DeviceNorm> {
        Ok(DeviceNorm {
            weight: self.dense(&n.weight)?,
            bias: n.bias.as_ref().map(|b| self.dense(b)).transpose()?,
        })
    }

    fn linear(&self, l: Linear) -> Result<DeviceLinear> {
        Ok(DeviceLinear {
            mm: self.matmul(&l.parts)?,
            bias: l.bias.as_ref().map(|b| self.dense(b)).transpose()?,
        })
    }
}

impl DeviceModel {
    /// An empty cache for a new sequence; its slot is taken at the sequence's first step.
    pub fn new_slot_cache(&self) -> SlotCache {
        SlotCache { slot: None, len: 0, pool: self.pool.clone() }
    }
}

impl DeviceModel {
    /// Loads a GGUF model onto `device`.
    pub fn from_gguf(
        content: &gguf_file::Content,
        file: &mut File,
        format: WeightFormat,
        device: &Device,
    ) -> Result<Self> {
        let mut src = GgufSource { content, file };
        let cfg = ModelConfig::from_gguf(content, &mut |name| {
            src.read(name)?.f32()?.flatten_all()?.to_vec1::<f32>()
        })?;
        let plan = Plan::new(format, None, device);
        Self::build(cfg, &plan, &mut src, Format::Gguf)
    }

    /// Loads a Hugging Face model (`config` plus every tensor of `files`) onto `device`.
    pub fn from_safetensors(
        config: &HfConfig,
        files: &[impl AsRef<Path>],
        format: WeightFormat,
        device: &Device,
    ) -> Result<Self> {
        let cfg = ModelConfig::from_hf(config)?;
        let mut src = SafetensorsSource::load(files, config.tied())?;
        let embed = layout::file_name(cfg.arch, Format::Hf, Part::TokenEmbd, None, false);
        let file_dtype = embed.and_then(|(name, _)| src.dtype(&name));
        let plan = Plan::new(format, file_dtype, device);
        Self::build(cfg, &plan, &mut src, Format::Hf)
    }

    fn build(
        cfg: ModelConfig,
        plan: &Plan<'_>,
        src: &mut dyn TensorSource,
        file_format: Format,
    ) -> Result<Self> {
        cfg.check()?;
        let mut ld = Loader::new(&cfg, src, file_format);
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let w = ld.layer(i)?;
            let qk_norm = match &w.qk_norm {
                Some((q, k)) => Some((plan.dense(q)?, plan.dense(k)?)),
                None => None,
            };
            layers.push(DeviceLayer {
                attn_norm: plan.norm(w.attn_norm)?,
                qkv: plan.linear(w.qkv)?,
                qk_norm,
                o: plan.linear(w.o)?,
                ffn_norm: plan.norm(w.ffn_norm)?,
                up: plan.linear(w.up)?,
                down: plan.linear(w.down)?,
            });
        }
        let norm = plan.norm(ld.output_norm()?)?;
        let positions = ld.positions()?.map(|p| plan.dense(&p)).transpose()?;
        let embed_raw = ld.embedding()?;
        let head = ld.head()?;
        ld.finish()?;
        // Rows are gathered from the embedding, so it is dense; the output head may stay quantized.
        let embed = plan.dense(&embed_raw.f32()?)?;
        let lm_head = match head {
            Some(h) => plan.linear(h)?,
            None if plan.format == WeightFormat::F32
                || (plan.format == WeightFormat::Native && embed_raw.quant_dtype().is_none()) =>
            {
                DeviceLinear {
                    mm: QMatMul::Tensor(embed.clone()),
                    bias: None,
                }
            }
            None => DeviceLinear {
                mm: plan.matmul(&[embed_raw])?,
                bias: None,
            },
        };
        let rope = match &cfg.rope {
            Some(r) => {
                let (cos, sin) = r.tables(cfg.head_dim, cfg.context_length)?;
                Some((plan.dense(&cos)?, plan.dense(&sin)?))
            }
            None => None,
        };
        let pool = Arc::new(Mutex::new(Pool::new(&cfg, plan.dtype, plan.device)));
        Ok(Self {
            cfg,
            device: plan.device.clone(),
            dtype: plan.dtype,
            embed,
            positions,
            layers,
            norm,
            lm_head,
            rope,
            pool,
        })
    }

    /// The network's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The dtype activations, the KV cache and dense weights use.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

/// Sequences of a step that feed the same number of tokens: one batched attention.
struct Group {
    /// First packed row and number of sequences.
    row0: usize,
    seqs: usize,
    /// Tokens each sequence feeds.
    n: usize,
    /// Positions attended: the longest sequence's length after the step.
    width: usize,
    /// Pool rows to gather, `[seqs * kv_heads * width]`.
    gather: Tensor,
    /// Additive mask `[seqs, 1, 1, n, width]`, f32: 0 where a query sees a key, -inf elsewhere.
    mask: Tensor,
}

impl DeviceModel {
    /// Runs one packed step (see [`LlamaModel::forward`]). On error the caches' lengths are
    /// unchanged (rows written past a length are overwritten later).
    pub fn forward(&self, seqs: &mut [SlotInput<'_>]) -> Result<Tensor> {
        let cfg = &self.cfg;
        let mut pool = lock(&self.pool);
        // Slots and room first: a resize changes every row number.
        let mut longest = 0;
        for s in seqs.iter_mut() {
            if s.tokens.is_empty() {
                bail!("forward: a sequence with no tokens");
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
                bail!(
                    "forward: token {bad} outside the vocabulary of {}",
                    cfg.vocab
                );
            }
            if s.cache.slot.is_none() {
                s.cache.slot = Some(pool.take(cfg.layers)?);
            }
            longest = longest.max(s.cache.len + s.tokens.len());
        }
        pool.reserve(cfg.layers, longest)?;

        // Packed order: sequences grouped by tokens fed (decode rows first) and by the power of
        // two at or above their length, so padding to a group's longest sequence at most doubles
        // the keys read; input order within a group. Groups per step: at most a few dozen, however
        // many sequences there are.
        let mut by_n: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for (i, s) in seqs.iter().enumerate() {
            let n = s.tokens.len();
            by_n.entry((n, (s.cache.len + n).next_power_of_two()))
                .or_default()
                .push(i);
        }
        let (kvh, d) = (cfg.kv_heads, cfg.head_dim);
        let mut first_row = vec![0usize; seqs.len()];
        let (mut ids, mut pos, mut write) = (Vec::new(), Vec::new(), Vec::new());
        let mut groups = Vec::with_capacity(by_n.len());
        for (&(n, _), members) in &by_n {
            let row0 = ids.len();
            let width = members
                .iter()
                .map(|&i| seqs[i].cache.len + n)
                .max()
                .unwrap_or(n);
            let mut gather = Vec::with_capacity(members.len() * kvh * width);
            let mut mask = Vec::with_capacity(members.len() * n * width);
            for &i in members {
                let s = &seqs[i];
                let (slot, len) = (s.cache.slot.unwrap_or(0), s.cache.len);
                first_row[i] = ids.len();
                for (t, &tok) in s.tokens.iter().enumerate() {
                    ids.push(tok);
                    pos.push((len + t) as u32);
                    for h in 0..kvh {
                        write.extend(std::iter::repeat_n(pool.row(slot, h, len + t), d));
                    }
                    mask.extend((0..width).map(|j| {
                        if j <= len + t {
                            0f32
                        } else {
                            f32::NEG_INFINITY
                        }
                    }));
                }
                for h in 0..kvh {
                    gather.extend((0..width).map(|j| pool.row(slot, h, j)));
                }
            }
            let g = members.len();
            groups.push(Group {
                row0,
                seqs: g,
                n,
                width,
                gather: Tensor::from_vec(gather, g * kvh * width, &self.device)?,
                mask: Tensor::from_vec(mask, (g, 1, 1, n, width), &self.device)?,
            });
        }
        let total = ids.len();
        let mut rows = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            let (r, n) = (first_row[i] as u32, s.tokens.len() as u32);
            if s.all_logits {
                rows.extend(r..r + n);
            } else {
                rows.push(r + n - 1);
            }
        }

        let dev = &self.device;
        let ids = Tensor::from_vec(ids, total, dev)?;
        let pos = Tensor::from_vec(pos, total, dev)?;
        let write = Tensor::from_vec(write, (total * kvh, d), dev)?;
        let half = d / 2;
        let tables = match &self.rope {
            Some((cos, sin)) => Some((
                cos.index_select(&pos, 0)?.reshape((total, 1, half))?,
                sin.index_select(&pos, 0)?.reshape((total, 1, half))?,
            )),
            None => None,
        };
        let eps = cfg.eps as f32;
        // Per-head RMSNorm (qwen3), then RoPE; `[T, heads*dim]` in, `[T, heads, 1, dim]` out.
        let position = |x: &Tensor, norm: Option<&Tensor>, heads: usize| -> Result<Tensor> {
            let mut x = x.contiguous()?;
            if let Some(w) = norm {
                x = candle_nn::ops::rms_norm(&x.reshape((total * heads, d))?, w, eps)?;
            }
            let x = x.reshape((total, heads, 1, d))?;
            match (&tables, cfg.rope.as_ref().map(|r| r.style)) {
                (Some((cos, sin)), Some(RopeStyle::Interleaved)) => candle_nn::rotary_emb::rope_i(&x, cos, sin),
                (Some((cos, sin)), Some(RopeStyle::Halves)) => candle_nn::rotary_emb::rope(&x, cos, sin),
                _ => Ok(x),
            }
        };
        let (q_width, kv_width) = (cfg.heads * d, kvh * d);
        let mut x = self.embed.index_select(&ids, 0)?;
        if let Some(p) = &self.positions {
            x = (x + p.index_select(&pos, 0)?)?;
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.apply(&x, eps)?;
            let qkv = self.mm(&layer.qkv, &h)?;
            let (qn, kn) = match &layer.qk_norm {
                Some((q, k)) => (Some(q), Some(k)),
                None => (None, None),
            };
            let q = position(&qkv.narrow(1, 0, q_width)?, qn, cfg.heads)?.reshape((total, q_width))?;
            let k = position(&qkv.narrow(1, q_width, kv_width)?, kn, kvh)?.reshape((total * kvh, d))?;
            let v = qkv
                .narrow(1, q_width + kv_width, kv_width)?
                .contiguous()?
                .reshape((total * kvh, d))?;
            pool.k[li].scatter_set(&write, &k, 0)?;
            pool.v[li].scatter_set(&write, &v, 0)?;
            let mut outs = Vec::with_capacity(groups.len());
            for g in &groups {
                let q = q.narrow(0, g.row0, g.seqs * g.n)?;
                outs.push(self.attend(&q, &pool.k[li], &pool.v[li], g)?);
            }
            let attn = if outs.len() == 1 {
                outs.remove(0)
            } else {
                Tensor::cat(&outs, 0)?
            };
            x = (x + self.mm(&layer.o, &attn)?)?;
            let h = layer.ffn_norm.apply(&x, eps)?;
            let up = self.mm(&layer.up, &h)?;
            let m = match cfg.mlp {
                MlpKind::GatedSilu => {
                    let gate = up.narrow(1, 0, cfg.ffn)?;
                    let up = up.narrow(1, cfg.ffn, cfg.ffn)?;
                    (candle_nn::ops::silu(&gate.contiguous()?)? * up)?
                }
                MlpKind::Gelu => up.gelu()?,
            };
            x = (x + self.mm(&layer.down, &m)?)?;
        }
        drop(pool);
        let n_rows = rows.len();
        let rows = Tensor::from_vec(rows, n_rows, dev)?;
        let last = self.norm.apply(&x.index_select(&rows, 0)?, eps)?;
        let logits = self.mm(&self.lm_head, &last)?.to_dtype(DType::F32)?;
        for s in seqs.iter_mut() {
            s.cache.len += s.tokens.len();
        }
        Ok(logits)
    }

    /// `x @ wᵀ + b` in the model dtype (quantized kernels may answer in f32).
    fn mm(&self, w: &DeviceLinear, x: &Tensor) -> Result<Tensor> {
        let y = w.mm.forward(x)?.to_dtype(self.dtype)?;
        match &w.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// Attention of one group's queries `[seqs * n, heads * dim]` against the pool.
    fn attend(&self, q: &Tensor, k_pool: &Tensor, v_pool: &Tensor, g: &Group) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (kvh, d, n, w) = (cfg.kv_heads, cfg.head_dim, g.n, g.width);
        let group = cfg.heads / kvh;
        // Query head h = kv head h / group, so heads split as (kv_head, group).
        let q = q
            .reshape((g.seqs, n, kvh, group, d))?
            .permute((0, 2, 3, 1, 4))?
            .contiguous()?
            .reshape((g.seqs, kvh, group * n, d))?;
        let k = k_pool
            .index_select(&g.gather, 0)?
            .reshape((g.seqs, kvh, w, d))?;
        let v = v_pool
            .index_select(&g.gather, 0)?
            .reshape((g.seqs, kvh, w, d))?;
        let scale = 1.0 / (d as f64).sqrt();
        let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?
            .reshape((g.seqs, kvh, group, n, w))?
            .broadcast_add(&g.mask)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?
            .to_dtype(self.dtype)?
            .reshape((g.seqs, kvh, group * n, w))?;
        p.matmul(&v)?
            .reshape((g.seqs, kvh, group, n, d))?
            .permute((0, 3, 1, 2, 4))?
            .contiguous()?
            .reshape((g.seqs * n, cfg.heads * d))
    }
}

