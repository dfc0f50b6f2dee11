//! genq's own quantized matmul for the CPU ("packed" weights).
//!
//! Weights are unsigned 4- or 8-bit levels in blocks of 32 inputs, each block with a scale and
//! a minimum (`w = scale * level + min`, GGUF's Q4_1 shape; Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0
//! tensors load exactly, the 5-bit ones as 8-bit levels). Where every minimum is the same
//! multiple of its scale (Q4_0, Q5_0, Q8_0), it is computed, not stored: 18 bytes per 32 4-bit
//! weights, as in the GGUF file, instead of 20.
//! They are interleaved sixteen output rows at a time, the layout AVX-512 VNNI's `vpdpbusd`
//! reads (AVX2's 256-bit kernels read it as two halves of eight rows). Activations are quantized
//! per row to signed 8-bit blocks (a scale and level sums per block). A block's dot product is an
//! exact integer sum, and the blocks are combined in a fixed order with the same fused
//! multiply-adds whatever the batch, so a row's outputs are bitwise the same alone or among 63
//! others, in one step or another.
//!
//! [`amx`] (AMX-INT8 tiles, for four tokens and more), [`vnni`] (AVX-512 VNNI) and [`avx2`]
//! (AVX-VNNI's 256-bit `vpdpbusd`, or AVX2's `vpmaddubsw`) are the fast kernels, the crate's only
//! `unsafe`; [`reference`] computes the same numbers in plain Rust, for other CPUs and for the
//! tests. All of them give bitwise the same outputs, so which one runs never changes a result.

mod amx;
mod avx2;
mod pages;
mod vnni;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use candle_core::quantized::GgmlDType;
use half::{f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;

use pages::WeightBytes;

/// Inputs per quantization block.
pub(crate) const BLOCK: usize = 32;
/// Output rows per interleaved group (one 512-bit vector of 32-bit lanes).
pub(crate) const LANES: usize = 16;
/// `1.5 * 2^23`: added to a float below `2^22` in magnitude, leaves its value rounded to an
/// integer (ties to even) in the low mantissa bits.
const ROUNDING_SHIFT: f32 = 12_582_912.0;

/// Tokens multiplied together against one loaded weight vector.
const TOKEN_TILE: usize = 8;

/// Weight bytes one thread multiplies by every token tile before moving on (half a typical
/// server core's L2).
const CHUNK_BYTES: usize = 512 * 1024;

/// Token tiles with fewer tokens than this go to the VNNI kernel under [`Kernel::Amx`]: a tile
/// multiply costs the same for one token as for sixteen.
const AMX_MIN_TOKENS: usize = 4;

/// The code that multiplies packed weights. Every kernel gives bitwise the same outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Plain Rust, any CPU (slow).
    Reference,
    /// AVX-512 F, BW and VNNI: sixteen rows against up to eight tokens per pass.
    Avx512Vnni,
    /// AMX-INT8 tile multiplies for four tokens or more, AVX-512 VNNI below.
    Amx,
    /// AVX2, FMA and F16C with a 256-bit `vpdpbusd` (AVX-VNNI, or AVX-512 VNNI with VL): sixteen
    /// rows as two vectors of eight, against up to eight tokens per pass.
    AvxVnni,
    /// AVX2, FMA and F16C: `vpmaddubsw` and `vpmaddwd`, sixteen rows as two vectors of eight,
    /// against up to eight tokens per pass.
    Avx2,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub(crate) const ALL: [Kernel; 5] = [Kernel::Amx, Kernel::Avx512Vnni, Kernel::AvxVnni, Kernel::Avx2, Kernel::Reference];

    /// Whether this CPU (and OS, for AMX's tile state) runs the kernel. Detected once.
    pub(crate) fn available(self) -> bool {
        static VNNI: OnceLock<bool> = OnceLock::new();
        static AMX: OnceLock<bool> = OnceLock::new();
        static AVX_VNNI: OnceLock<bool> = OnceLock::new();
        static AVX2: OnceLock<bool> = OnceLock::new();
        match self {
            Kernel::Reference => true,
            Kernel::Avx512Vnni => *VNNI.get_or_init(vnni::available),
            Kernel::Amx => *AMX.get_or_init(amx::available),
            Kernel::AvxVnni => *AVX_VNNI.get_or_init(|| avx2::available(avx2::Flavor::AvxVnni)),
            Kernel::Avx2 => *AVX2.get_or_init(|| avx2::available(avx2::Flavor::Avx2)),
        }
    }

    /// The fastest kernel this CPU runs.
    pub(crate) fn best() -> Kernel {
        Self::ALL.into_iter().find(|k| k.available()).unwrap_or(Kernel::Reference)
    }

    /// The kernel packed matmuls use in this process: [`Kernel::select`]'s, else [`Kernel::best`].
    pub(crate) fn active() -> Kernel {
        match SELECTED.load(Ordering::Relaxed) {
            0 => Self::best(),
            i => Self::ALL[usize::from(i) - 1],
        }
    }

    /// Makes `kernel` the one this process uses (`None`: back to the fastest), unless this CPU
    /// cannot run it. Results do not change, only their speed.
    pub(crate) fn select(kernel: Option<Kernel>) -> Result<(), KernelError> {
        let code = match kernel {
            None => 0,
            Some(k) if k.available() => Self::ALL.iter().position(|a| *a == k).map_or(0, |i| i as u8 + 1),
            Some(k) => return Err(KernelError::Unavailable { kernel: k.name(), best: Self::best().name() }),
        };
        SELECTED.store(code, Ordering::Relaxed);
        Ok(())
    }

    /// Parses the `worker.cpu_kernel` setting: `auto` or a kernel's name.
    pub(crate) fn parse_setting(name: &str) -> Result<Option<Kernel>, KernelError> {
        match name {
            "auto" => Ok(None),
            other => Self::from_name(other).map(Some).ok_or_else(|| KernelError::Unknown { name: other.to_string() }),
        }
    }

    /// The name settings and metrics use: `amx`, `avx512-vnni`, `avx-vnni`, `avx2`, `reference`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kernel::Reference => "reference",
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::Amx => "amx",
            Kernel::AvxVnni => "avx-vnni",
            Kernel::Avx2 => "avx2",
        }
    }

    /// The kernel a name stands for ([`Kernel::name`]).
    pub(crate) fn from_name(name: &str) -> Option<Kernel> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Token tile size: the most tokens one pass over a group's weights takes.
    fn tokens(self) -> usize {
        match self {
            Kernel::Amx => amx::TOKENS,
            _ => TOKEN_TILE,
        }
    }
}

/// [`Kernel::select`]'s choice: 0 for none, else 1 + its index in [`Kernel::ALL`].
static SELECTED: AtomicU8 = AtomicU8::new(0);

/// A kernel setting that cannot be followed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KernelError {
    /// Not a kernel's name.
    #[error("`worker.cpu_kernel` is {name:?}; expected auto, amx, avx512-vnni, avx-vnni, avx2 or reference")]
    Unknown {
        /// The name given.
        name: String,
    },
    /// This CPU (or OS) cannot run it.
    #[error("`worker.cpu_kernel` is {kernel:?}, which this CPU cannot run (the fastest it runs is {best:?})")]
    Unavailable {
        /// The kernel asked for.
        kernel: &'static str,
        /// The fastest available.
        best: &'static str,
    },
}

/// True when this CPU runs a fast kernel (AVX2 at least); otherwise the portable reference
/// computes the same numbers, much more slowly.
pub(crate) fn fast_kernel_available() -> bool {
    Kernel::best() != Kernel::Reference
}

/// Quantized weight rows before interleaving: per (row, block) a scale and a minimum, per weight
/// an unsigned level below `2^bits`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuantRows {
    /// Output rows.
    pub rows: usize,
    /// Inputs per row (a multiple of [`BLOCK`]).
    pub cols: usize,
    /// 4 or 8.
    pub bits: u8,
    /// `[rows, cols / BLOCK]`.
    pub scale: Vec<f32>,
    /// `[rows, cols / BLOCK]`.
    pub min: Vec<f32>,
    /// `[rows, cols]`.
    pub levels: Vec<u8>,
}

/// Why weights could not be packed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PackError {
    /// The row width is not a whole number of blocks.
    #[error("{cols} inputs per row is not a multiple of {BLOCK}")]
    Width {
        /// The width found.
        cols: usize,
    },
    /// The raw GGUF bytes do not hold `rows x cols` weights of the type.
    #[error("{what}: {found} bytes for {rows}x{cols} weights, expected {expected}")]
    Size {
        /// The block type.
        what: &'static str,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Bytes given.
        found: usize,
        /// Bytes needed.
        expected: usize,
    },
    /// Parts to stack disagree on their width.
    #[error("cannot stack rows of {0} and {1} inputs")]
    Mismatch(usize, usize),
    /// Nothing to stack.
    #[error("no rows to stack")]
    Empty,
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

impl QuantRows {
    fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    fn check(rows: usize, cols: usize, data: &[u8], block_bytes: usize, what: &'static str) -> Result<(), PackError> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(PackError::Width { cols });
        }
        let expected = rows * cols / BLOCK * block_bytes;
        if data.len() != expected {
            return Err(PackError::Size { what, rows, cols, found: data.len(), expected });
        }
        Ok(())
    }

    /// From GGUF Q4_1 blocks (`f16 d, f16 m, 16 bytes`: element `j` in the low nibble of byte
    /// `j`, element `j + 16` in its high nibble). Exact.
    pub(crate) fn from_q4_1(data: &[u8], rows: usize, cols: usize) -> Result<Self, PackError> {
        Self::check(rows, cols, data, 20, "Q4_1")?;
        let n = rows * cols / BLOCK;
        let mut out = Self { rows, cols, bits: 4, scale: Vec::with_capacity(n), min: Vec::with_capacity(n), levels: Vec::with_capacity(rows * cols) };
        for block in data.chunks_exact(20) {
            out.scale.push(f16_at(block, 0));
            out.min.push(f16_at(block, 2));
            let qs = &block[4..20];
            out.levels.extend(qs.iter().map(|b| b & 0x0F));
            out.levels.extend(qs.iter().map(|b| b >> 4));
        }
        Ok(out)
    }

    /// From GGUF Q4_0 blocks (`f16 d, 16 bytes`, `w = d * (q - 8)`, nibbles as Q4_1's), as
    /// levels `q` with minimum `-8 d`. Exact: `-8 d` only shifts `d`'s exponent.
    pub(crate) fn from_q4_0(data: &[u8], rows: usize, cols: usize) -> Result<Self, PackError> {
        Self::check(rows, cols, data, 18, "Q4_0")?;
        let mut out = Self::with_capacity(rows, cols, 4);
        for block in data.chunks_exact(18) {
            let d = f16_at(block, 0);
            out.scale.push(d);
            out.min.push(-8.0 * d);
            let qs = &block[2..18];
            out.levels.extend(qs.iter().map(|b| b & 0x0F));
            out.levels.extend(qs.iter().map(|b| b >> 4));
        }
        Ok(out)
    }

    /// From GGUF Q5_0 blocks (`f16 d, u32 high bits, 16 bytes`, `w = d * (q - 16)`), as 8-bit
    /// levels `q` (below 32) with minimum `-16 d`. Exact.
    pub(crate) fn from_q5_0(data: &[u8], rows: usize, cols: usize) -> Result<Self, PackError> {
        Self::check(rows, cols, data, 22, "Q5_0")?;
        let mut out = Self::with_capacity(rows, cols, 8);
        for block in data.chunks_exact(22) {
            let d = f16_at(block, 0);
            out.scale.push(d);
            out.min.push(-16.0 * d);
            out.push_q5_levels(&block[2..22]);
        }
        Ok(out)
    }

    /// From GGUF Q5_1 blocks (`f16 d, f16 m, u32 high bits, 16 bytes`, `w = d * q + m`), as
    /// 8-bit levels `q` (below 32). Exact.
    pub(crate) fn from_q5_1(data: &[u8], rows: usize, cols: usize) -> Result<Self, PackError> {
        Self::check(rows, cols, data, 24, "Q5_1")?;
        let mut out = Self::with_capacity(rows, cols, 8);
        for block in data.chunks_exact(24) {
            out.scale.push(f16_at(block, 0));
            out.min.push(f16_at(block, 2));
            out.push_q5_levels(&block[4..24]);
        }
        Ok(out)
    }

    /// The 32 five-bit levels of a Q5 block (`u32` of high bits, then 16 bytes of nibbles:
    /// element `j` in the low nibble of byte `j`, element `j + 16` in its high nibble).
    fn push_q5_levels(&mut self, bytes: &[u8]) {
        let high = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let qs = &bytes[4..20];
        let bit = |j: usize| (((high >> j) & 1) as u8) << 4;
        self.levels.extend(qs.iter().enumerate().map(|(j, b)| (b & 0x0F) | bit(j)));
        self.levels.extend(qs.iter().enumerate().map(|(j, b)| (b >> 4) | bit(j + 16)));
    }

    /// Rows in a GGUF block type whose levels the packed format holds exactly (Q4_0, Q4_1, Q5_0,
    /// Q5_1, Q8_0); `None` for any other type, which is re-quantized from f32 instead.
    pub(crate) fn from_ggml(dtype: GgmlDType, data: &[u8], rows: usize, cols: usize) -> Option<Result<Self, PackError>> {
        Some(match dtype {
            GgmlDType::Q4_0 => Self::from_q4_0(data, rows, cols),
            GgmlDType::Q4_1 => Self::from_q4_1(data, rows, cols),
            GgmlDType::Q5_0 => Self::from_q5_0(data, rows, cols),
            GgmlDType::Q5_1 => Self::from_q5_1(data, rows, cols),
            GgmlDType::Q8_0 => Self::from_q8_0(data, rows, cols),
            _ => return None,
        })
    }

    fn with_capacity(rows: usize, cols: usize, bits: u8) -> Self {
        let n = rows * cols / BLOCK;
        Self { rows, cols, bits, scale: Vec::with_capacity(n), min: Vec::with_capacity(n), levels: Vec::with_capacity(rows * cols) }
    }

    /// From GGUF Q8_0 blocks (`f16 d, 32 signed bytes`), as levels `q + 128` with minimum
    /// `-128 d`. Exact.
    pub(crate) fn from_q8_0(data: &[u8], rows: usize, cols: usize) -> Result<Self, PackError> {
        Self::check(rows, cols, data, 34, "Q8_0")?;
        let n = rows * cols / BLOCK;
        let mut out = Self { rows, cols, bits: 8, scale: Vec::with_capacity(n), min: Vec::with_capacity(n), levels: Vec::with_capacity(rows * cols) };
        for block in data.chunks_exact(34) {
            let d = f16_at(block, 0);
            out.scale.push(d);
            out.min.push(-128.0 * d);
            out.levels.extend(block[2..34].iter().map(|&q| (q as i8 as i16 + 128) as u8));
        }
        Ok(out)
    }

    /// Quantizes dense `[rows, cols]` weights to 8 bits per block, from the block's minimum to its
    /// maximum in 255 steps (scale and minimum rounded to f16, as the packed layout holds them).
    pub(crate) fn from_f32(values: &[f32], rows: usize, cols: usize) -> Result<Self, PackError> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(PackError::Width { cols });
        }
        if values.len() != rows * cols {
            return Err(PackError::Size { what: "f32", rows, cols, found: values.len() * 4, expected: rows * cols * 4 });
        }
        let n = rows * cols / BLOCK;
        let mut out = Self { rows, cols, bits: 8, scale: Vec::with_capacity(n), min: Vec::with_capacity(n), levels: Vec::with_capacity(rows * cols) };
        for block in values.chunks_exact(BLOCK) {
            let lo = block.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lo = f16::from_f32(lo).to_f32();
            let scale = f16::from_f32((hi - lo) / 255.0).to_f32();
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            out.scale.push(scale);
            out.min.push(lo);
            out.levels.extend(block.iter().map(|&w| ((w - lo) * inv).round().clamp(0.0, 255.0) as u8));
        }
        Ok(out)
    }

    /// The weights these levels stand for, `[rows, cols]`.
    pub(crate) fn dequantize(&self) -> Vec<f32> {
        let blocks = self.blocks();
        self.levels
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let b = i / self.cols * blocks + i % self.cols / BLOCK;
                self.scale[b] * l as f32 + self.min[b]
            })
            .collect()
    }

    /// Stacks `parts` along the rows (q/k/v, gate/up). 4-bit parts among 8-bit ones are widened,
    /// exactly: their levels fit.
    pub(crate) fn stack(parts: Vec<QuantRows>) -> Result<Self, PackError> {
        let first = parts.first().ok_or(PackError::Empty)?;
        let cols = first.cols;
        let bits = parts.iter().map(|p| p.bits).max().unwrap_or(8);
        let mut out = Self { rows: 0, cols, bits, scale: Vec::new(), min: Vec::new(), levels: Vec::new() };
        for p in parts {
            if p.cols != cols {
                return Err(PackError::Mismatch(cols, p.cols));
            }
            out.rows += p.rows;
            out.scale.extend(p.scale);
            out.min.extend(p.min);
            out.levels.extend(p.levels);
        }
        Ok(out)
    }
}

/// Weights interleaved for the kernel: groups of [`LANES`] rows (the last padded with zero
/// rows), and within a group, per block, the scales, the minimums (both f16: at 4 bits a weight,
/// f32 ones were a third of the bytes read) and the levels. Where every minimum is the same
/// multiple of its scale (GGUF's symmetric types), the minimums are not stored: the kernels
/// compute them, and read a tenth fewer bytes of 4-bit weights.
#[derive(Debug, Clone)]
pub(crate) struct PackedLinear {
    rows: usize,
    cols: usize,
    bits: u8,
    /// `[group, block, lane]`.
    scale: Vec<f16>,
    /// `[group, block, lane]`, or one multiple of the scale.
    min: Mins<Vec<f16>>,
    /// `[group, block, bytes]`: 8-bit, 8 vectors of `[lane, 4 inputs]`; 4-bit, 4 such vectors,
    /// inputs `4v..4v+4` in the low nibbles and `4v+16..4v+20` in the high ones.
    quants: WeightBytes,
}

/// What one matmul call reads of the activations: the rows quantized per block.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuantActs {
    /// Rows (tokens).
    pub rows: usize,
    /// Inputs per row.
    pub cols: usize,
    /// `[rows, cols]`, each in `-127..=127`.
    pub levels: Vec<i8>,
    /// `[rows, cols / BLOCK]`.
    pub scale: Vec<f32>,
    /// `[rows, cols / BLOCK]`: the sum of the block's levels.
    pub sum: Vec<f32>,
    /// `[rows, cols / BLOCK]`: the sum of the block's levels at inputs `4j` and `4j + 1` (the
    /// first pair of every four), the inputs `vpmaddubsw`'s even 16-bit lanes take.
    pub pair_sum: Vec<f32>,
}

impl QuantActs {
    /// Quantizes `[rows, cols]` activations (`cols` a multiple of [`BLOCK`]), each block
    /// symmetrically to its largest magnitude.
    pub(crate) fn new(x: &[f32], rows: usize, cols: usize) -> Self {
        let n = x.len() / BLOCK;
        let mut out = Self { rows, cols, levels: vec![0; n * BLOCK], scale: vec![0.0; n], sum: vec![0.0; n], pair_sum: vec![0.0; n] };
        let run = |((x, levels), (scale, (sum, pair_sum))): QuantizeRun<'_>| {
            let blocks = x.chunks_exact(BLOCK).zip(levels.chunks_exact_mut(BLOCK));
            let sums = sum.iter_mut().zip(pair_sum.iter_mut());
            for ((block, levels), (scale, (sum, pair_sum))) in blocks.zip(scale.iter_mut().zip(sums)) {
                *scale = quantize_block(block, levels);
                (*sum, *pair_sum) = level_sums(levels);
            }
            // The scales are kept in f16, as llama.cpp's Q8_1 blocks keep them (the levels used
            // the exact ones): rounded here in one vectorized pass, not one call per block.
            let mut half = vec![f16::ZERO; scale.len()];
            half.convert_from_f32_slice(scale);
            half.convert_to_f32_slice(scale);
        };
        if n >= PARALLEL_QUANTIZE_MIN_BLOCKS {
            let per = PARALLEL_QUANTIZE_MIN_BLOCKS / 4;
            let inputs = x.par_chunks(per * BLOCK).zip(out.levels.par_chunks_mut(per * BLOCK));
            let sums = out.sum.par_chunks_mut(per).zip(out.pair_sum.par_chunks_mut(per));
            inputs.zip(out.scale.par_chunks_mut(per).zip(sums)).for_each(run);
        } else {
            let (sum, pair_sum) = (&mut out.sum[..], &mut out.pair_sum[..]);
            run(((x, &mut out.levels[..]), (&mut out.scale[..], (sum, pair_sum))));
        }
        out
    }

    /// The levels regrouped for the AMX and 256-bit kernels: per tile of `tile` tokens (starting at
    /// `t0 * cols`, as in [`QuantActs::levels`]), per block, the 32 levels of each of the tile's
    /// tokens in turn, so one block's tile is contiguous.
    pub(crate) fn levels_by_block(&self, tile: usize) -> Vec<i8> {
        let blocks = self.cols / BLOCK;
        let mut out = Vec::with_capacity(self.levels.len());
        for t0 in (0..self.rows).step_by(tile.max(1)) {
            let n = tile.min(self.rows - t0);
            for b in 0..blocks {
                for i in 0..n {
                    let at = (t0 + i) * self.cols + b * BLOCK;
                    out.extend_from_slice(&self.levels[at..at + BLOCK]);
                }
            }
        }
        out
    }
}

/// A run of blocks to quantize: inputs and levels, then scales and the two level sums.
type QuantizeRun<'a> = ((&'a [f32], &'a mut [i8]), (&'a mut [f32], (&'a mut [f32], &'a mut [f32])));

/// Blocks from which activations are quantized in parallel (in runs of a quarter of it).
const PARALLEL_QUANTIZE_MIN_BLOCKS: usize = 512;

/// A block's level sums: of all its levels, and of those at inputs `4j` and `4j + 1`.
fn level_sums(levels: &[i8]) -> (f32, f32) {
    let (mut sum, mut pair_sum) = (0i32, 0i32);
    for quad in levels.chunks_exact(4) {
        let pair = quad[0] as i32 + quad[1] as i32;
        pair_sum += pair;
        sum += pair + quad[2] as i32 + quad[3] as i32;
    }
    (sum as f32, pair_sum as f32)
}

/// Quantizes one block of 32 activations into `levels`, symmetrically to its largest
/// magnitude; returns the block's scale (before rounding to f16).
fn quantize_block(block: &[f32], levels: &mut [i8]) -> f32 {
    // Eight running maxima, and rounding by adding 1.5 * 2^23 (ties to even, exact for
    // |v| < 2^22): both vectorize on any x86-64, where `round` is a libm call per value.
    let mut lanes = [0f32; 8];
    for c in block.chunks_exact(8) {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m = m.max(v.abs());
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (q, &v) in levels.iter_mut().zip(block) {
        let shifted = (v * inv).clamp(-127.0, 127.0) + ROUNDING_SHIFT;
        *q = (shifted.to_bits() as i32 - ROUNDING_SHIFT.to_bits() as i32) as i8;
    }
    scale
}


/// Block minimums: stored per (block, lane), or the same multiple of every block's scale.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mins<T> {
    /// As stored, `[block, lane]` (f16).
    Stored(T),
    /// `offset * scale` in every block: not stored. `min * sum` is then exact (an f16 scale has 11
    /// significant bits, a level sum at most 12, the offset is a power of two), so
    /// `scale * dot + min * sum` rounded once is `scale * (dot + offset * sum)` rounded once: the
    /// kernels add `offset * sum` to the dot product (an exact sum of integers below 2^24) and
    /// multiply by the scale, one operation fewer, to the same bits.
    Scaled(f32),
}

impl<T> Mins<T> {
    /// The multiple of the scale the minimums are ([`Mins::Scaled`]); 0 where they are stored.
    fn offset(&self) -> f32 {
        match self {
            Mins::Scaled(o) => *o,
            Mins::Stored(_) => 0.0,
        }
    }
}

/// The multiples of the scale GGUF's symmetric types put in the minimum: Q4_0 (`-8 d`), Q5_0
/// (`-16 d`) and Q8_0 (`-128 d`).
const SCALED_MIN_OFFSETS: [f32; 3] = [-8.0, -16.0, -128.0];

/// The offset `o` for which every block's minimum, as the kernels read it (rounded to f16), is
/// exactly `o` times its scale as they read it; `None` when no single one fits every block.
/// 4-bit levels take only an offset of at most 16 in magnitude: the AVX2 kernel sums the offset
/// levels (`level + o`) in 16-bit lanes, which hold sixteen products of up to `16 * 127`.
fn scaled_min_offset(rows: &QuantRows) -> Option<f32> {
    let read = |v: f32| f16::from_f32(v).to_f32();
    SCALED_MIN_OFFSETS
        .into_iter()
        .filter(|o| rows.bits == 8 || o.abs() <= 16.0)
        .find(|&o| rows.scale.iter().zip(&rows.min).all(|(&s, &m)| read(m).to_bits() == (read(s) * o).to_bits()))
}

impl PackedLinear {
    /// Interleaves `rows` for the kernel, leaving the minimums out where they are all the same
    /// multiple of their scale.
    pub(crate) fn new(rows: &QuantRows) -> Self {
        Self::interleave(rows, scaled_min_offset(rows))
    }

    /// [`PackedLinear::new`] with every minimum stored, to compare with the one that computes them.
    #[cfg(test)]
    pub(crate) fn with_stored_mins(rows: &QuantRows) -> Self {
        Self::interleave(rows, None)
    }

    /// Whether the minimums are computed from the scales, not stored.
    #[cfg(test)]
    pub(crate) fn computes_mins(&self) -> bool {
        matches!(self.min, Mins::Scaled(_))
    }

    fn interleave(rows: &QuantRows, offset: Option<f32>) -> Self {
        let blocks = rows.blocks();
        let groups = rows.rows.div_ceil(LANES);
        let bytes = Self::block_bytes(rows.bits);
        let mut scale = vec![f16::ZERO; groups * blocks * LANES];
        let stored = offset.is_none();
        let mut min = vec![f16::ZERO; if stored { groups * blocks * LANES } else { 0 }];
        let mut quants = WeightBytes::zeroed(groups * blocks * bytes);
        for r in 0..rows.rows {
            let (g, lane) = (r / LANES, r % LANES);
            for b in 0..blocks {
                let at = (g * blocks + b) * LANES + lane;
                scale[at] = f16::from_f32(rows.scale[r * blocks + b]);
                if stored {
                    min[at] = f16::from_f32(rows.min[r * blocks + b]);
                }
                let levels = &rows.levels[r * rows.cols + b * BLOCK..r * rows.cols + (b + 1) * BLOCK];
                let dst = &mut quants[(g * blocks + b) * bytes..(g * blocks + b + 1) * bytes];
                for (k, &l) in levels.iter().enumerate() {
                    let (quad, e) = (k / 4, k % 4);
                    if rows.bits == 4 {
                        let byte = &mut dst[(quad % 4) * 64 + lane * 4 + e];
                        *byte |= if quad < 4 { l & 0x0F } else { (l & 0x0F) << 4 };
                    } else {
                        dst[quad * 64 + lane * 4 + e] = l;
                    }
                }
            }
        }
        let min = match offset {
            Some(o) => Mins::Scaled(o),
            None => Mins::Stored(min),
        };
        Self { rows: rows.rows, cols: rows.cols, bits: rows.bits, scale, min, quants }
    }

    fn block_bytes(bits: u8) -> usize {
        if bits == 4 { LANES * BLOCK / 2 } else { LANES * BLOCK }
    }

    /// Output rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs per row.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    fn groups(&self) -> usize {
        self.rows.div_ceil(LANES)
    }

    fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    /// `x @ w^T` for `x: [t, cols]`: `[t, rows]`.
    pub(crate) fn forward(&self, x: &[f32], t: usize) -> Vec<f32> {
        let acts = QuantActs::new(x, t, self.cols);
        self.forward_quantized(&acts, Kernel::active())
    }

    /// The product for quantized activations by `kernel` (the reference where this CPU cannot
    /// run it). Groups are split between rayon's threads.
    pub(crate) fn forward_quantized(&self, acts: &QuantActs, kernel: Kernel) -> Vec<f32> {
        let t = acts.rows;
        let groups = self.groups();
        if t == 0 || groups == 0 {
            return Vec::new();
        }
        let kernel = if kernel.available() { kernel } else { Kernel::Reference };
        let threads = rayon::current_num_threads().max(1);
        let work = groups * t * self.cols;
        // Each thread takes a run of groups at a time, small enough that the run's weights stay
        // in its L2 cache while every token tile passes over them.
        let min_bytes = if matches!(self.min, Mins::Stored(_)) { LANES * 2 } else { 0 };
        let group_bytes = self.blocks() * (Self::block_bytes(self.bits) + LANES * 2 + min_bytes);
        let cache_fit = (CHUNK_BYTES / group_bytes.max(1)).max(1);
        let chunk = if work < 1 << 16 { groups } else { groups.div_ceil(threads * 4).clamp(1, cache_fit) };
        let tile = kernel.tokens();
        // AMX, and the 256-bit kernels (whose broadcasts then address every token of a block from
        // one pointer), read the levels by block; for one token that is the order they have.
        let by_block = match kernel {
            Kernel::Amx => t >= AMX_MIN_TOKENS,
            Kernel::Avx2 | Kernel::AvxVnni => t > 1,
            Kernel::Avx512Vnni | Kernel::Reference => false,
        }
        .then(|| acts.levels_by_block(tile));
        let offset = self.min.offset() as i32;
        let start = match kernel {
            Kernel::Avx2 => avx2::starts(avx2::Flavor::Avx2, self.bits == 4, offset, acts),
            Kernel::AvxVnni => avx2::starts(avx2::Flavor::AvxVnni, self.bits == 4, offset, acts),
            Kernel::Amx | Kernel::Avx512Vnni | Kernel::Reference => Vec::new(),
        };
        let mut y = vec![0f32; t * self.rows];
        // A run's outputs: in every token's row, the run's columns.
        let mut runs: Vec<Vec<&mut [f32]>> = (0..groups.div_ceil(chunk)).map(|_| Vec::with_capacity(t)).collect();
        for row in y.chunks_mut(self.rows) {
            let mut rest = row;
            for run in runs.iter_mut() {
                let width = (chunk * LANES).min(rest.len());
                let (mine, tail) = std::mem::take(&mut rest).split_at_mut(width);
                run.push(mine);
                rest = tail;
            }
        }
        runs.into_par_iter().enumerate().for_each(|(i, mut rows)| {
            let g0 = i * chunk;
            let mut tile_out = [0f32; amx::TOKENS * LANES];
            // Token tiles outside, groups inside: one tile configuration per tile size.
            for t0 in (0..t).step_by(tile) {
                let n = tile.min(t - t0);
                let tokens = TokenTile { t0, n, by_block: by_block.as_deref(), start: &start };
                for g in g0..(g0 + chunk).min(groups) {
                    self.group_tile(g, acts, &tokens, &mut tile_out[..n * LANES], kernel);
                    let at = (g - g0) * LANES;
                    for (row, out) in rows[t0..t0 + n].iter_mut().zip(tile_out.chunks_exact(LANES)) {
                        match row.get_mut(at..at + LANES) {
                            Some(dst) => dst.copy_from_slice(out),
                            None => {
                                let dst = &mut row[at..];
                                dst.copy_from_slice(&out[..dst.len()]);
                            }
                        }
                    }
                }
            }
        });
        y
    }

    /// One group of rows against a tile of tokens: `out` is `[token, lane]`.
    fn group_tile(&self, g: usize, acts: &QuantActs, tokens: &TokenTile<'_>, out: &mut [f32], kernel: Kernel) {
        let TokenTile { t0, n, by_block, start } = *tokens;
        let blocks = self.blocks();
        let bytes = Self::block_bytes(self.bits);
        let w = GroupView {
            four_bit: self.bits == 4,
            quants: &self.quants[g * blocks * bytes..(g + 1) * blocks * bytes],
            scale: &self.scale[g * blocks * LANES..(g + 1) * blocks * LANES],
            min: match &self.min {
                Mins::Stored(m) => Mins::Stored(&m[g * blocks * LANES..(g + 1) * blocks * LANES]),
                Mins::Scaled(o) => Mins::Scaled(*o),
            },
            blocks,
        };
        let tile = ActsView::all(acts, start).tokens(t0, n, self.cols);
        // The tile's levels by block, where they were laid out so; a single token's are already.
        let by_block_tile = || match by_block {
            Some(levels) => ActsView { levels: &levels[t0 * self.cols..(t0 + n) * self.cols], ..tile },
            None => {
                assert!(n == 1, "the levels of {n} tokens were not laid out by block");
                ActsView { ..tile }
            }
        };
        match (kernel, by_block) {
            (Kernel::Amx, Some(_)) if n >= AMX_MIN_TOKENS => amx::tile(&w, &by_block_tile(), out),
            (Kernel::Amx | Kernel::Avx512Vnni, _) => self.tiles_of_eight(&w, &tile, out, vnni::tile),
            (Kernel::AvxVnni, _) => avx2::tile(avx2::Flavor::AvxVnni, &w, &by_block_tile(), out),
            (Kernel::Avx2, _) => avx2::tile(avx2::Flavor::Avx2, &w, &by_block_tile(), out),
            (Kernel::Reference, _) => reference::tile(&w, &tile, out),
        }
    }

    /// `kernel` (one that takes at most [`TOKEN_TILE`] tokens) over `tile`'s tokens.
    fn tiles_of_eight(&self, w: &GroupView<'_>, tile: &ActsView<'_>, out: &mut [f32], kernel: impl Fn(&GroupView<'_>, &ActsView<'_>, &mut [f32])) {
        for s in (0..tile.tokens).step_by(TOKEN_TILE) {
            let m = TOKEN_TILE.min(tile.tokens - s);
            kernel(w, &tile.tokens(s, m, self.cols), &mut out[s * LANES..(s + m) * LANES]);
        }
    }
}

/// Tokens `t0..t0 + n` of a product, and, for the kernels that read them so (AMX, the 256-bit
/// ones), the levels of all tokens by block ([`QuantActs::levels_by_block`] for its tile size);
/// for the 256-bit kernels, every token's block start sums ([`avx2::starts`]).
#[derive(Clone, Copy)]
struct TokenTile<'a> {
    t0: usize,
    n: usize,
    by_block: Option<&'a [i8]>,
    start: &'a [i32],
}

/// One group's weights, as the kernels read them.
struct GroupView<'a> {
    four_bit: bool,
    quants: &'a [u8],
    scale: &'a [f16],
    min: Mins<&'a [f16]>,
    blocks: usize,
}

/// A tile of tokens' quantized activations (at most what the kernel given it takes).
struct ActsView<'a> {
    levels: &'a [i8],
    scale: &'a [f32],
    sum: &'a [f32],
    /// `[token, block]`: the integer sums the 256-bit kernels start each block from
    /// ([`avx2::starts`]); empty for the other kernels.
    start: &'a [i32],
    tokens: usize,
}

impl<'a> ActsView<'a> {
    /// Every token of `acts`, with the 256-bit kernels' `start` sums (or none).
    fn all(acts: &'a QuantActs, start: &'a [i32]) -> Self {
        Self { levels: &acts.levels, scale: &acts.scale, sum: &acts.sum, start, tokens: acts.rows }
    }

    /// Tokens `from..from + n` of this view, whose rows hold `cols` inputs.
    fn tokens(&self, from: usize, n: usize, cols: usize) -> ActsView<'a> {
        let blocks = cols / BLOCK;
        ActsView {
            levels: &self.levels[from * cols..(from + n) * cols],
            scale: &self.scale[from * blocks..(from + n) * blocks],
            sum: &self.sum[from * blocks..(from + n) * blocks],
            start: self.start.get(from * blocks..(from + n) * blocks).unwrap_or_default(),
            tokens: n,
        }
    }
}

impl GroupView<'_> {
    /// Panics unless the views hold everything a kernel reads for `a`'s tokens (at most
    /// `max_tokens`) against this group, and `out` room for their outputs. The kernels assert
    /// this before their loops.
    fn assert_holds(&self, a: &ActsView<'_>, max_tokens: usize, out: &[f32]) {
        let cols = self.blocks * BLOCK;
        let bytes = if self.four_bit { LANES * BLOCK / 2 } else { LANES * BLOCK };
        assert!(self.quants.len() >= self.blocks * bytes);
        assert!(self.scale.len() >= self.blocks * LANES);
        if let Mins::Stored(min) = self.min {
            assert!(min.len() >= self.blocks * LANES);
        }
        assert!(a.tokens <= max_tokens);
        assert!(a.levels.len() >= a.tokens * cols);
        assert!(a.scale.len() >= a.tokens * self.blocks && a.sum.len() >= a.tokens * self.blocks);
        assert!(out.len() >= a.tokens * LANES);
    }
}

/// The kernels' arithmetic in plain Rust, lane by lane, with the same fused operations in the
/// same order, so its results are bitwise the kernels'. Per block and row, the integer dot product
/// `dot` of the levels becomes `scale * dot + min * sum` (`sum`: the activations' level sum), one
/// fused operation, then is scaled by the activations' block scale into the row's total. (Where
/// the minimum is a multiple of the scale, the kernels compute the same bits another way: see
/// [`Mins::Scaled`].)
mod reference {
    use super::{ActsView, GroupView, Mins, BLOCK, LANES};

    /// The level of input `k` (within block `b`) for `lane`, from the interleaved bytes.
    fn level(w: &GroupView<'_>, b: usize, lane: usize, k: usize) -> i32 {
        let (quad, e) = (k / 4, k % 4);
        if w.four_bit {
            let byte = w.quants[b * LANES * BLOCK / 2 + (quad % 4) * 64 + lane * 4 + e];
            (if quad < 4 { byte & 0x0F } else { byte >> 4 }) as i32
        } else {
            w.quants[b * LANES * BLOCK + quad * 64 + lane * 4 + e] as i32
        }
    }

    pub(super) fn tile(w: &GroupView<'_>, a: &ActsView<'_>, out: &mut [f32]) {
        let cols = w.blocks * BLOCK;
        for n in 0..a.tokens {
            for lane in 0..LANES {
                let mut acc = 0f32;
                for b in 0..w.blocks {
                    let mut dot = 0i32;
                    for k in 0..BLOCK {
                        dot += level(w, b, lane, k) * a.levels[n * cols + b * BLOCK + k] as i32;
                    }
                    let at = b * LANES + lane;
                    let min = match w.min {
                        Mins::Stored(m) => m[at].to_f32(),
                        Mins::Scaled(o) => w.scale[at].to_f32() * o,
                    };
                    let t1 = min * a.sum[n * w.blocks + b];
                    let t2 = w.scale[at].to_f32().mul_add(dot as f32, t1);
                    acc = a.scale[n * w.blocks + b].mul_add(t2, acc);
                }
                out[n * LANES + lane] = acc;
            }
        }
    }
}

#[cfg(test)]
mod tests;
