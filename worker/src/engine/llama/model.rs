//! The CPU model: [`LlamaModel`] holds one architecture's weights in the format asked for and
//! runs the packed forward pass; knows nothing of jobs, tokens' text or sampling.
//!
//! One [`LlamaModel::forward`] call runs every new token of a step as one `[T, hidden]` batch
//! through the norms, projections and the MLP (all per-row operations); attention runs per
//! sequence against that sequence's own [`KvCache`] ([`super::attention`]) with a fixed
//! summation order, so a row's numbers never depend on the other rows.
//!
//! What varies between architectures is read from [`ModelConfig`] ([`super::arch`]); where the
//! weights are in a file is [`super::layout`]'s; the projections are [`super::linear`]'s.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{bail, DType, Device, Result, Tensor};
use rayon::prelude::*;

use super::attention::attention;
pub use super::arch::{HfConfig, ModelConfig, RopeStyle};
pub use super::attention::{KvCache, SeqInput};
use super::arch::{MlpKind, NormKind};
use super::layout::{Format, GgufSource, Loader, Norm, SafetensorsSource, TensorSource};
use super::linear::{Fused, Proj, Weight};
pub use super::linear::{WeightFormat, AUTO_Q8_MAX_BATCH};
use super::packed::PackedLinear;

/// A norm's weight and (LayerNorm) bias, as f32 vectors.
struct NormWeights {
    weight: Tensor,
    bias: Option<(Vec<f32>, Vec<f32>)>,
}

impl NormWeights {
    fn new(n: Norm) -> Result<Self> {
        let bias = match &n.bias {
            Some(b) => Some((n.weight.to_vec1::<f32>()?, b.to_vec1::<f32>()?)),
            None => None,
        };
        Ok(Self {
            weight: n.weight,
            bias,
        })
    }

    /// RMSNorm, or LayerNorm when there is a bias; rows `[T, hidden]` independently.
    fn apply(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        match &self.bias {
            None => candle_nn::ops::rms_norm(x, &self.weight, eps as f32),
            Some((w, b)) => layer_norm(x, w, b, eps as f32),
        }
    }
}

/// Calls `f` with the f32 values of `t` in row-major order: read in place when it is a
/// contiguous f32 tensor on the CPU, else from a copy (another dtype, a view, a GPU).
pub(super) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            if let Ok(values) = cpu.as_slice::<f32>() {
                return Ok(f(&values[start..end]));
            }
        }
    }
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&values))
}

/// Tensors of at least this many values are added in parallel.
const PARALLEL_ADD_MIN: usize = 1 << 18;

/// `x + y` for two `[T, width]` tensors: candle's `add`, the same sums, without candle's
/// element-wise thread pool, which takes tensors from 64K values up (a decode step of 32
/// sequences of a 2048-wide model) and leaves its worker spinning after each, on a core the
/// step's matmuls need.
fn add(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let dims = x.dims2()?;
    if y.dims2()? != dims {
        bail!("add: shapes {:?} and {:?} differ", x.dims(), y.dims());
    }
    let sum = with_f32(x, |a| {
        with_f32(y, |b| {
            let mut out = a.to_vec();
            let row = |(o, b): (&mut [f32], &[f32])| o.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            if out.len() >= PARALLEL_ADD_MIN {
                out.par_chunks_mut(dims.1.max(1)).zip(b.par_chunks(dims.1.max(1))).for_each(row);
            } else {
                row((&mut out, b));
            }
            out
        })
    })??;
    Tensor::from_vec(sum, dims, &Device::Cpu)
}

/// Rows of at least this many values go through SwiGLU in parallel.
const PARALLEL_SWIGLU_MIN: usize = 1 << 14;

/// `silu(gate) * up` for `[T, 2 * ff]` rows holding gate then up: `[T, ff]`. The same operations
/// as candle's `silu` then `mul` (`g / (1 + exp(-g)) * u`), in one parallel pass.
fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    let (rows, width) = gate_up.dims2()?;
    let ff = width / 2;
    let out = with_f32(gate_up, |gu| {
        let mut out = vec![0f32; rows * ff];
        let row = |(dst, src): (&mut [f32], &[f32])| {
            let (gate, up) = src.split_at(ff);
            for ((d, &g), &u) in dst.iter_mut().zip(gate).zip(up) {
                *d = g / (1.0 + (-g).exp()) * u;
            }
        };
        if rows * ff >= PARALLEL_SWIGLU_MIN {
            out.par_chunks_mut(ff).zip(gu.par_chunks(width)).for_each(row);
        } else {
            out.chunks_mut(ff).zip(gu.chunks(width)).for_each(row);
        }
        out
    })?;
    Tensor::from_vec(out, (rows, ff), &Device::Cpu)
}

/// LayerNorm of each row as ggml computes it: the mean summed in f64, the variance in a second
/// pass over the centred values, then `(x - mean) / sqrt(var + eps) * w + b`.
fn layer_norm(x: &Tensor, w: &[f32], b: &[f32], eps: f32) -> Result<Tensor> {
    let (rows, n) = x.dims2()?;
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; rows * n];
    for (src, dst) in xs.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let mean = (src.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64) as f32;
        let mut var = 0f64;
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s - mean;
            var += f64::from(*d * *d);
        }
        let scale = 1.0 / ((var / n as f64) as f32 + eps).sqrt();
        for ((d, &wi), &bi) in dst.iter_mut().zip(w).zip(b) {
            *d = *d * scale * wi + bi;
        }
    }
    Tensor::from_vec(out, (rows, n), &Device::Cpu)
}

/// GELU as ggml's CPU computes it: the tanh approximation looked up through f16 (the input
/// rounded to f16, the result too), identity above 10 and zero below -10.
fn gelu(x: &Tensor) -> Result<Tensor> {
    use half::f16;
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044715;
    let shape = x.shape().clone();
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let ys: Vec<f32> = xs
        .into_iter()
        .map(|v| {
            if v <= -10.0 {
                0.0
            } else if v >= 10.0 {
                v
            } else {
                let h = f16::from_f32(v).to_f32();
                let g = 0.5 * h * (1.0 + (SQRT_2_OVER_PI * h * (1.0 + COEF_A * h * h)).tanh());
                f16::from_f32(g).to_f32()
            }
        })
        .collect();
    Tensor::from_vec(ys, shape, &Device::Cpu)
}

struct Layer {
    attn_norm: NormWeights,
    qkv: Fused,
    /// Per-head RMSNorm weights of q and k (qwen3).
    qk_norm: Option<(Tensor, Tensor)>,
    o: Fused,
    ffn_norm: NormWeights,
    /// Gate and up (gated MLP), or up alone (GELU).
    up: Fused,
    down: Fused,
}

/// A decoder of any of genq's architectures, ready to run packed steps on the CPU.
pub struct LlamaModel {
    cfg: ModelConfig,
    embed: QMatMul,
    /// Learned positions `[context, hidden]` (GPT-2).
    positions: Option<Tensor>,
    layers: Vec<Layer>,
    norm: NormWeights,
    lm_head: Fused,
    /// RoPE tables `[context, head_dim/2]`, when the model rotates.
    rope: Option<(Tensor, Tensor)>,
}

/// Reads a small f32 vector (RoPE factors) from a GGUF source.
fn read_f32_vec(src: &mut dyn TensorSource, name: &str) -> Result<Vec<f32>> {
    src.read(name)?.f32()?.flatten_all()?.to_vec1::<f32>()
}

impl LlamaModel {
    /// Loads a GGUF model from `file` (whose header is `content`).
    pub fn from_gguf(
        content: &gguf_file::Content,
        file: &mut File,
        format: WeightFormat,
    ) -> Result<Self> {
        let mut src = GgufSource { content, file };
        let cfg = ModelConfig::from_gguf(content, &mut |name| read_f32_vec(&mut src, name))?;
        Self::build(cfg, &mut src, Format::Gguf, format)
    }

    /// Loads a Hugging Face model: `config` plus the tensors of every `*.safetensors` in `files`.
    pub fn from_safetensors(
        config: &HfConfig,
        files: &[impl AsRef<Path>],
        format: WeightFormat,
    ) -> Result<Self> {
        let cfg = ModelConfig::from_hf(config)?;
        let mut src = SafetensorsSource::load(files, config.tied())?;
        Self::build(cfg, &mut src, Format::Hf, format)
    }

    fn build(
        cfg: ModelConfig,
        src: &mut dyn TensorSource,
        file_format: Format,
        format: WeightFormat,
    ) -> Result<Self> {
        cfg.check()?;
        let mut ld = Loader::new(&cfg, src, file_format);
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let w = ld.layer(i)?;
            layers.push(Layer {
                attn_norm: NormWeights::new(w.attn_norm)?,
                qkv: Fused::load(w.qkv, format)?,
                qk_norm: w.qk_norm,
                o: Fused::load(w.o, format)?,
                ffn_norm: NormWeights::new(w.ffn_norm)?,
                up: Fused::load(w.up, format)?,
                down: Fused::load(w.down, format)?,
            });
        }
        let norm = NormWeights::new(ld.output_norm()?)?;
        let positions = ld.positions()?;
        // The embedding is only gathered from, never multiplied: keep it compact unless f32 asked.
        let embed = Weight::from(ld.embedding()?).convert(match format {
            WeightFormat::F32 => WeightFormat::F32,
            _ => WeightFormat::Native,
        })?;
        let head = ld.head()?;
        ld.finish()?;
        let (embed, lm_head) = match head {
            Some(head) => (embed.into_matmul()?, Fused::load(head, format)?),
            None => {
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
                (embed, Fused::single(head, cfg.vocab))
            }
        };
        let rope = match &cfg.rope {
            Some(r) => Some(r.tables(cfg.head_dim, cfg.context_length)?),
            None => None,
        };
        Ok(Self {
            cfg,
            embed,
            positions,
            layers,
            norm,
            lm_head,
            rope,
        })
    }

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
        // The other pool threads spin for the step's parallel work instead of sleeping between
        // matmuls ([`keep_awake`]).
        let done = AtomicBool::new(false);
        let out = rayon::scope(|scope| {
            let stepping = rayon::current_thread_index();
            for _ in 1..rayon::current_num_threads() {
                let done = &done;
                scope.spawn(move |_| keep_awake(done, stepping));
            }
            let out = self.forward_inner(seqs);
            done.store(true, Ordering::Release);
            out
        });
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
        let d = cfg.head_dim;
        let half = d / 2;
        let tables = match &self.rope {
            Some((cos, sin)) => Some((
                cos.index_select(&pos, 0)?.reshape((total, 1, half))?,
                sin.index_select(&pos, 0)?.reshape((total, 1, half))?,
            )),
            None => None,
        };
        // Per-head RMSNorm (qwen3), then RoPE; `[T, heads*dim]` in and out.
        let position = |x: &Tensor, norm: Option<&Tensor>, heads: usize| -> Result<Tensor> {
            let mut x = x.contiguous()?;
            if let Some(w) = norm {
                x = candle_nn::ops::rms_norm(&x.reshape((total * heads, d))?, w, cfg.eps as f32)?;
            }
            match (&tables, cfg.rope.as_ref().map(|r| r.style)) {
                (Some((cos, sin)), Some(style)) => {
                    let x = x.reshape((total, heads, 1, d))?;
                    match style {
                        RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin),
                        RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, cos, sin),
                    }
                }
                _ => Ok(x),
            }
        };
        let q_width = cfg.heads * d;
        let mut x = self.embed.embedding(&ids)?;
        if let Some(p) = &self.positions {
            x = add(&x, &p.index_select(&pos, 0)?)?;
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.apply(&x, cfg.eps)?;
            let [q, k, v]: [Tensor; 3] = match layer.qkv.forward(&h)?.try_into() {
                Ok(parts) => parts,
                Err(_) => bail!("qkv: expected three parts"),
            };
            let (qn, kn) = match &layer.qk_norm {
                Some((qn, kn)) => (Some(qn), Some(kn)),
                None => (None, None),
            };
            let q = position(&q, qn, cfg.heads)?.flatten_all()?.to_vec1::<f32>()?;
            let k = position(&k, kn, cfg.kv_heads)?.flatten_all()?.to_vec1::<f32>()?;
            let v = v.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let attn = attention(cfg, seqs, li, &q, &k, &v);
            let attn = Tensor::from_vec(attn, (total, q_width), &dev)?;
            x = add(&x, &layer.o.forward_whole(&attn)?)?;
            let h = layer.ffn_norm.apply(&x, cfg.eps)?;
            let m = match cfg.mlp {
                MlpKind::GatedSilu => match layer.up.widths() {
                    [gate, up] if gate == up => swiglu(&layer.up.forward_whole(&h)?)?,
                    widths => bail!("gate/up: expected two parts of one width, got {widths:?}"),
                },
                MlpKind::Gelu => gelu(&layer.up.forward_whole(&h)?)?,
            };
            x = add(&x, &layer.down.forward_whole(&m)?)?;
        }
        let rows = Tensor::new(rows.as_slice(), &dev)?;
        let last = x.index_select(&rows, 0)?;
        let last = self.norm.apply(&last, cfg.eps)?;
        debug_assert!(matches!(cfg.norm, NormKind::Rms) == self.norm.bias.is_none());
        self.lm_head.forward_whole(&last)
    }
}

/// How long a kept-awake thread spins without finding work before it goes back to rayon's own
/// idle loop (and sleep): longer than the serial stretches of a step, and a bound on any wait it
/// could add (see [`keep_awake`]).
const KEEP_AWAKE_IDLE: Duration = Duration::from_millis(1);

/// Keeps a pool thread awake until the step is `done`: it takes the step's parallel work as soon as
/// it appears, instead of sleeping between matmuls and being woken for each (a futex wake-up and a
/// context switch; a fifth of a small model's one-sequence decode). On the thread running the step
/// (which may pick this task up while waiting in a join) it returns at once: spinning there would
/// wait on itself. A thread that picks it up while waiting on a join of its own could not see that
/// join end while it spins, so it also returns after [`KEEP_AWAKE_IDLE`] without work.
fn keep_awake(done: &AtomicBool, stepping: Option<usize>) {
    if rayon::current_thread_index() == stepping {
        return;
    }
    let mut idle_since = Instant::now();
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle_since = Instant::now();
        } else if idle_since.elapsed() > KEEP_AWAKE_IDLE {
            return;
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_gives_candles_sums_and_names_mismatched_shapes() {
        // Below and above the size added in parallel, with values whose sums round.
        for (rows, width) in [(3, 5), (32, 2048), (40, 8192)] {
            let n = rows * width;
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() / 7.0).collect();
            let tensor = |v: Vec<f32>| Tensor::from_vec(v, (rows, width), &Device::Cpu).expect("tensor");
            let (x, y) = (tensor(a), tensor(b));
            let bits = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("values").into_iter().map(f32::to_bits).collect::<Vec<_>>();
            assert_eq!(bits(&add(&x, &y).expect("add")), bits(&(&x + &y).expect("candle's add")), "{rows}x{width}");
        }
        let zeros = |shape: (usize, usize)| Tensor::zeros(shape, DType::F32, &Device::Cpu).expect("zeros");
        let err = add(&zeros((2, 3)), &zeros((3, 2))).expect_err("shapes differ").to_string();
        assert!(err.contains("[2, 3]") && err.contains("[3, 2]"), "{err}");
    }
}
