//! Projections on the CPU: a weight in the format asked for ([`WeightFormat`]: candle's
//! quantized blocks, dense f32 for gemm, or genq's packed rows), several fused into one matmul
//! ([`Fused`]), with an optional bias; and the matmul whose summation order never depends on how
//! many rows a step has.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{bail, DType, Device, Module, Result, Tensor};

use super::layout::{Linear, Raw};
use super::packed::{PackedLinear, QuantRows};

/// How the projection weights are held in memory.
///
/// Measured with `genq bench engine` (docs/benchmarks.md): on a CPU with AVX2 or better, `Packed`
/// (genq's own integer kernels, [`super::packed`]) is fastest at every batch size and smallest;
/// the worker's `auto` picks it there. Without AVX2, candle's Q4_1 dot product is scalar
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
    /// genq's packed integer format: Q4_0 and Q4_1 kept 4-bit, Q5_0, Q5_1 and Q8_0 8-bit,
    /// exactly; anything else quantized to 8 bits per block of 32. Multiplied by the fastest
    /// packed kernel the CPU runs (AMX, AVX-512 VNNI, AVX-VNNI, AVX2; a portable reference on
    /// other CPUs, correct but slow).
    Packed,
}

/// Largest batch cap for which [`WeightFormat::for_this_cpu`] picks Q8_0 on a CPU without
/// AVX2: its SIMD mat-vec is fastest for one or two sequences, f32 matrix products win
/// from about eight on.
pub const AUTO_Q8_MAX_BATCH: usize = 2;

impl WeightFormat {
    /// The fastest format on this CPU for a worker running at most `max_batch_size` sequences (the
    /// `auto` setting): `Packed` with AVX2 or better, else Q8_0 or f32 by the cap. It depends on the
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

/// A weight before it becomes a matmul: quantized blocks, a dense f32 matrix `[out, in]`, or
/// rows quantized for the packed kernel.
pub(super) enum Weight {
    Quant(QTensor),
    Dense(Tensor),
    Rows(QuantRows),
}

impl From<Raw> for Weight {
    fn from(raw: Raw) -> Self {
        match raw {
            Raw::Quant(q) => Weight::Quant(q),
            Raw::Dense(t) => Weight::Dense(t),
        }
    }
}

impl Weight {
    pub(super) fn cols(&self) -> Result<usize> {
        match self {
            Weight::Quant(q) => Ok(q.shape().dims2()?.1),
            Weight::Dense(t) => Ok(t.dims2()?.1),
            Weight::Rows(r) => Ok(r.cols),
        }
    }

    pub(super) fn rows(&self) -> Result<usize> {
        match self {
            Weight::Quant(q) => Ok(q.shape().dims2()?.0),
            Weight::Dense(t) => Ok(t.dims2()?.0),
            Weight::Rows(r) => Ok(r.rows),
        }
    }

    pub(super) fn dense(self) -> Result<Tensor> {
        match self {
            Weight::Quant(q) => q.dequantize(&Device::Cpu),
            Weight::Dense(t) => Ok(t),
            Weight::Rows(r) => Tensor::from_vec(r.dequantize(), (r.rows, r.cols), &Device::Cpu),
        }
    }

    /// The weight as packed-kernel rows: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 blocks exactly,
    /// anything else through f32.
    pub(super) fn quant_rows(&self) -> Result<QuantRows> {
        let (rows, cols) = (self.rows()?, self.cols()?);
        let rows = match self {
            Weight::Rows(r) => Ok(r.clone()),
            Weight::Quant(q) => match QuantRows::from_ggml(q.dtype(), &q.data()?, rows, cols) {
                Some(exact) => exact,
                None => {
                    let values = q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                    QuantRows::from_f32(&values, rows, cols)
                }
            },
            Weight::Dense(t) => {
                let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                QuantRows::from_f32(&values, rows, cols)
            }
        };
        rows.map_err(candle_core::Error::wrap)
    }

    /// Converts to `format`.
    pub(super) fn convert(self, format: WeightFormat) -> Result<Weight> {
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

    pub(super) fn into_matmul(self) -> Result<QMatMul> {
        match self {
            Weight::Quant(q) => Ok(QMatMul::QTensor(std::sync::Arc::new(q))),
            Weight::Dense(t) => Ok(QMatMul::Tensor(t)),
            w @ Weight::Rows(_) => Ok(QMatMul::Tensor(w.dense()?)),
        }
    }

    pub(super) fn into_proj(self) -> Result<Proj> {
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
pub(super) enum Proj {
    Quant(QMatMul),
    Dense(Tensor),
    Packed(PackedLinear),
}

impl Proj {
    /// From a dense `[out, in]` weight.
    pub(super) fn dense(w: &Tensor) -> Result<Self> {
        Ok(Proj::Dense(w.t()?.contiguous()?))
    }
}

/// Several projections of the same input fused into one matmul (q/k/v, gate/up), so the input is
/// read (and quantized) once; a single projection is the case of one part. The bias, if any, is
/// added to each row (a per-row op: rows stay independent).
pub(super) struct Fused {
    mm: Proj,
    widths: Vec<usize>,
    bias: Option<Tensor>,
}

impl Fused {
    /// A [`Linear`] from the file, its parts converted to `format` and fused.
    pub(super) fn load(linear: Linear, format: WeightFormat) -> Result<Self> {
        let parts = linear
            .parts
            .into_iter()
            .map(|p| Weight::from(p).convert(format))
            .collect::<Result<Vec<_>>>()?;
        Self::new(parts, linear.widths, linear.bias)
    }

    /// Stacks `parts` along the output dimension. Quantized parts of one type are concatenated
    /// block for block (exact); anything else is stacked dense. The output splits into `widths`.
    pub(super) fn new(mut parts: Vec<Weight>, widths: Vec<usize>, bias: Option<Tensor>) -> Result<Self> {
        let cols = match parts.first() {
            Some(p) => p.cols()?,
            None => bail!("nothing to fuse"),
        };
        let rows: usize = parts.iter().map(Weight::rows).sum::<Result<usize>>()?;
        if rows != widths.iter().sum::<usize>() {
            bail!("fused projection: {rows} rows for outputs {widths:?}");
        }
        if let Some(b) = &bias {
            if b.dims1()? != rows {
                bail!("fused projection: bias of {:?} for {rows} outputs", b.shape());
            }
        }
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
            _ if parts.len() == 1 => match parts.pop() {
                Some(w) => w.into_proj()?,
                None => bail!("nothing to fuse"),
            },
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
        Ok(Self { mm, widths, bias })
    }

    /// One projection already in its final form (a tied output head).
    pub(super) fn single(mm: Proj, width: usize) -> Self {
        Self {
            mm,
            widths: vec![width],
            bias: None,
        }
    }

    /// The widths of the parts, in order.
    pub(super) fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// `[T, in]` -> `[T, out]`, bias added.
    pub(super) fn forward_whole(&self, x: &Tensor) -> Result<Tensor> {
        let y = matmul(&self.mm, x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `[T, in]` -> one `[T, width]` tensor per part (views into one result).
    pub(super) fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let y = self.forward_whole(x)?;
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
pub(super) fn matmul(w: &Proj, x: &Tensor) -> Result<Tensor> {
    let wt = match w {
        Proj::Dense(wt) => wt,
        Proj::Quant(q) => return q.forward(x),
        Proj::Packed(p) => {
            let (rows, cols) = x.dims2()?;
            if cols != p.cols() {
                bail!("matmul: {cols} inputs for a weight of {}", p.cols());
            }
            let y = super::model::with_f32(x, |x| p.forward(x, rows))?;
            return Tensor::from_vec(y, (rows, p.rows()), &Device::Cpu);
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
