//! The CPU path's attention: each sequence's [`KvCache`] (f16, owned by the sequence) and causal
//! attention of a packed step's rows against their own sequence's cache, in plain loops with a
//! fixed order of summation, so a row's numbers never depend on the other rows of the step.

use half::{f16, slice::HalfFloatSliceExt};

use super::arch::{ModelConfig, MAX_GROUP};

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
const PARALLEL_ATTENTION_MIN_WORK: usize = 1 << 21;

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
    // On rayon's pool, which the step already runs on: no thread is started per layer.
    rayon::scope(|scope| {
        let mut rest: &mut [f32] = &mut out;
        for w in bounds.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            let (mine, tail) = rest.split_at_mut((hi - lo) * q_row);
            rest = tail;
            let rows = &rows[lo..hi];
            let q = &q[lo * q_row..hi * q_row];
            scope.spawn(move |_| attend_rows(cfg, rows, q, mine));
        }
    });
    out
}

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
