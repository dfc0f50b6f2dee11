//! The CPU path's attention: each sequence's [`KvCache`] (f16, owned by the sequence) and causal
//! attention of a packed step's rows against their own sequence's cache, in plain loops with a
//! fixed order of summation, so a row's numbers never depend on the other rows of the step.

use std::ops::Range;

use half::{f16, slice::HalfFloatSliceExt};

use super::arch::{ModelConfig, MAX_GROUP};

mod wide;

/// One sequence's keys and values for every layer, post-RoPE, laid out `[position, kv_head, dim]`,
/// in f16 (as llama.cpp keeps them: half the memory of f32). Owned by the sequence, so sequences
/// join and leave the batch freely.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(super) layers: Vec<LayerCache>,
    pub(super) len: usize,
}

#[derive(Debug, Clone, Default)]
pub(super) struct LayerCache {
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

    /// Keys and values of positions `from..to` of every layer (`row` values per position).
    pub(super) fn positions(&self, from: usize, to: usize, row: usize) -> Vec<(Vec<f16>, Vec<f16>)> {
        assert!(from <= to && to <= self.len, "positions {from}..{to} of a cache of {}", self.len);
        self.layers.iter().map(|l| (l.k[from * row..to * row].to_vec(), l.v[from * row..to * row].to_vec())).collect()
    }

    /// Appends `n` positions of every layer, as [`KvCache::positions`] gave them: they become
    /// positions `len..len + n`.
    pub(super) fn append_positions(&mut self, layers: &[(Vec<f16>, Vec<f16>)], n: usize) {
        assert_eq!(layers.len(), self.layers.len(), "a block of another model");
        for (l, (k, v)) in self.layers.iter_mut().zip(layers) {
            l.k.extend_from_slice(k);
            l.v.extend_from_slice(v);
        }
        self.len += n;
    }

    /// Drops layers written past `len` (after a failed forward).
    pub(super) fn rollback(&mut self, row: usize) {
        for l in &mut self.layers {
            l.k.truncate(self.len * row);
            l.v.truncate(self.len * row);
        }
    }
}

#[cfg(test)]
impl KvCache {
    /// A cache of `layers` layers holding `positions` positions of `row` values (each its position).
    pub(super) fn test_filled(layers: usize, row: usize, positions: usize) -> Self {
        let values: Vec<f16> = (0..positions * row).map(|i| f16::from_f32((i / row) as f32)).collect();
        let layers = (0..layers).map(|_| LayerCache { k: values.clone(), v: values.clone() }).collect();
        Self { layers, len: positions }
    }

    /// Keeps the first `len` positions.
    pub(super) fn truncate_for_test(&mut self, len: usize, row: usize) {
        self.len = len;
        self.rollback(row);
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

/// Attention work (multiply-adds) below which one thread does it all: spawning costs more.
const PARALLEL_ATTENTION_MIN_WORK: usize = 1 << 17;

/// Appends each sequence's new keys/values (rows of `k`, `v`) to its cache for `layer`, then
/// computes causal attention of its new queries against its whole cache. Returns `[T, heads*dim]`.
///
/// Plain loops with a fixed order of summation per (row, head): a row's result depends only on
/// its own sequence, whatever else shares the step, however the prompt was chunked and however
/// the rows are split between threads.
pub(super) fn attention(
    cfg: &ModelConfig,
    seqs: &mut [SeqInput<'_>],
    layer: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Vec<f32> {
    let kv_row = cfg.kv_heads * cfg.head_dim;
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
    attend_split(cfg, &rows, q, candle_core::utils::get_num_threads())
}

/// Attention of `rows` on up to `threads` threads (one below [`PARALLEL_ATTENTION_MIN_WORK`]):
/// whole rows per thread, or, with fewer rows than threads, each row's key/value heads split
/// between them. Every split gives the same bits.
fn attend_split(cfg: &ModelConfig, rows: &[(&LayerCache, usize)], q: &[f32], threads: usize) -> Vec<f32> {
    let q_row = cfg.heads * cfg.head_dim;
    let mut out = vec![0f32; q.len()];
    let work: usize = rows.iter().map(|&(_, len)| len * q_row * 2).sum();
    if threads <= 1 || work < PARALLEL_ATTENTION_MIN_WORK {
        attend_rows(cfg, rows, q, &mut out, 0..cfg.kv_heads);
        return out;
    }
    if rows.len() < threads {
        // Fewer rows than threads (a decode step of one sequence): each row's key/value heads
        // are split between the threads instead.
        let parts = threads.min(cfg.kv_heads);
        let per_head = q_row / cfg.kv_heads;
        for (t, row) in out.chunks_exact_mut(q_row).enumerate() {
            let (rows, q) = (&rows[t..t + 1], &q[t * q_row..(t + 1) * q_row]);
            rayon::scope(|scope| {
                let mut rest: &mut [f32] = row;
                for p in 0..parts {
                    let heads = p * cfg.kv_heads / parts..(p + 1) * cfg.kv_heads / parts;
                    let (mine, tail) = rest.split_at_mut(heads.len() * per_head);
                    rest = tail;
                    scope.spawn(move |_| attend_rows(cfg, rows, q, mine, heads));
                }
            });
        }
        return out;
    }
    let threads = threads.min(rows.len());
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
    // On rayon's pool, which the step already runs on: no thread is started per layer.
    rayon::scope(|scope| {
        let mut rest: &mut [f32] = &mut out;
        for w in bounds.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            let (mine, tail) = rest.split_at_mut((hi - lo) * q_row);
            rest = tail;
            let rows = &rows[lo..hi];
            let q = &q[lo * q_row..hi * q_row];
            scope.spawn(move |_| attend_rows(cfg, rows, q, mine, 0..cfg.kv_heads));
        }
    });
    out
}

/// Attention of `rows` (queries `q`, `[rows, heads*dim]`) into `out`: for each row, the outputs
/// of the query heads that share the key/value heads `kv_heads` (all of them: `out` has `q`'s
/// shape). Compiled for AVX2 where the CPU has it ([`wide`]), with the same bits.
fn attend_rows(cfg: &ModelConfig, rows: &[(&LayerCache, usize)], q: &[f32], out: &mut [f32], kv_heads: Range<usize>) {
    if wide::available() {
        wide::attend_rows(cfg, rows, q, out, kv_heads)
    } else {
        attend_rows_body(cfg, rows, q, out, kv_heads)
    }
}

/// [`attend_rows`]'s loops, inlined into each of its two compilations.
#[inline(always)]
fn attend_rows_body(cfg: &ModelConfig, rows: &[(&LayerCache, usize)], q: &[f32], out: &mut [f32], kv_heads: Range<usize>) {
    let d = cfg.head_dim;
    let q_row = cfg.heads * d;
    let full_kv_row = cfg.kv_heads * d;
    // Keys and values are converted for `kv_heads` only: their rows are this wide.
    let kv_row = kv_heads.len() * d;
    let group = cfg.heads / cfg.kv_heads;
    let out_row = kv_heads.len() * group * d;
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores: Vec<f32> = Vec::new();
    // The current sequence's keys and values in f32, converted once for all its rows and heads.
    let (mut keys, mut values): (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
    let mut converted: Option<&LayerCache> = None;
    for (t, &(cache, len)) in rows.iter().enumerate() {
        if !converted.is_some_and(|c| std::ptr::eq(c, cache)) {
            for (dst, src) in [(&mut keys, &cache.k), (&mut values, &cache.v)] {
                let positions = src.len() / full_kv_row;
                dst.resize(positions * kv_row, 0.0);
                let wanted = kv_heads.start * d..kv_heads.end * d;
                for (dst, src) in dst.chunks_exact_mut(kv_row).zip(src.chunks_exact(full_kv_row)) {
                    src[wanted.clone()].convert_to_f32_slice(dst);
                }
            }
            converted = Some(cache);
        }
        // The query heads sharing a key/value head go together: each cached row is read once.
        for (local, g) in kv_heads.clone().enumerate() {
            let heads = g * group..(g + 1) * group;
            scores.clear();
            scores.resize(group * len, 0.0);
            for j in 0..len {
                let kh = &keys[j * kv_row + local * d..j * kv_row + (local + 1) * d];
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
            let o = &mut out[t * out_row + local * group * d..t * out_row + (local + 1) * group * d];
            for j in 0..len {
                let vh = &values[j * kv_row + local * d..j * kv_row + (local + 1) * d];
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
#[inline(always)]
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

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::engine::llama::arch::HfConfig;

    fn config() -> ModelConfig {
        config_of_width(256)
    }

    /// Eight query heads and four key/value heads of `hidden / 8` dimensions each.
    fn config_of_width(hidden: usize) -> ModelConfig {
        let hf: HfConfig = serde_json::from_value(serde_json::json!({
            "model_type": "llama", "hidden_size": hidden, "intermediate_size": 512, "num_hidden_layers": 1,
            "num_attention_heads": 8, "num_key_value_heads": 4, "rms_norm_eps": 1e-5, "vocab_size": 32,
            "max_position_embeddings": 1024,
        }))
        .expect("config");
        ModelConfig::from_hf(&hf).expect("a valid config")
    }

    fn cache(rng: &mut StdRng, row: usize, positions: usize) -> LayerCache {
        let mut values = || (0..positions * row).map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0))).collect();
        LayerCache { k: values(), v: values() }
    }

    /// One row alone (a decode step of one sequence) and two rows of two sequences, on more
    /// threads than rows: the heads are split between the threads, unevenly for three, and every
    /// output is bitwise what one thread computes.
    #[test]
    fn splitting_heads_between_threads_gives_the_same_bits() {
        let cfg = config();
        let (q_row, kv_row) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        let mut rng = StdRng::seed_from_u64(5);
        let caches = [cache(&mut rng, kv_row, 300), cache(&mut rng, kv_row, 57)];
        for rows in [vec![(&caches[0], 300)], vec![(&caches[0], 300), (&caches[1], 57)]] {
            let q: Vec<f32> = (0..rows.len() * q_row).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let one = attend_split(&cfg, &rows, &q, 1);
            assert!(one.iter().all(|v| v.is_finite()) && one.iter().any(|&v| v != 0.0));
            for threads in [2, 3, 4, 8] {
                let split = attend_split(&cfg, &rows, &q, threads);
                let same = one.iter().zip(&split).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{} rows on {threads} threads differ from one thread", rows.len());
            }
        }
    }

    /// The AVX2 compilation of the loops gives the portable one's bits: for heads of 32
    /// dimensions and of 20 (a remainder past the eight lanes), all key/value heads and a part of
    /// them, one row and several rows of two sequences.
    #[test]
    fn the_wide_compilation_gives_the_portable_bits() {
        if !wide::available() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let mut rng = StdRng::seed_from_u64(9);
        for hidden in [256, 160] {
            let cfg = config_of_width(hidden);
            let (q_row, kv_row) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
            let caches = [cache(&mut rng, kv_row, 131), cache(&mut rng, kv_row, 9)];
            let layouts = [vec![(&caches[0], 131)], vec![(&caches[0], 129), (&caches[0], 130), (&caches[1], 9)]];
            for rows in layouts {
                let q: Vec<f32> = (0..rows.len() * q_row).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                for heads in [0..cfg.kv_heads, 1..3] {
                    let width = rows.len() * heads.len() * (cfg.heads / cfg.kv_heads) * cfg.head_dim;
                    let (mut portable, mut wide) = (vec![0f32; width], vec![0f32; width]);
                    attend_rows_body(&cfg, &rows, &q, &mut portable, heads.clone());
                    wide::attend_rows(&cfg, &rows, &q, &mut wide, heads.clone());
                    assert!(portable.iter().all(|v| v.is_finite()) && portable.iter().any(|&v| v != 0.0));
                    let same = portable.iter().zip(&wide).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "head dim {}, {} rows, heads {heads:?}: the wide loops differ", cfg.head_dim, rows.len());
                }
            }
        }
    }
}
