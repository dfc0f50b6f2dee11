//! The CPU path's prefix cache: keys and values of prompt blocks already computed, copied into
//! any later sequence whose prompt starts with the same tokens, so it prefills only the rest.
//!
//! A prompt is cut into blocks of [`BLOCK_TOKENS`]; block `i`'s key hashes every token up to its
//! end, so equal keys mean equal prefixes (the block's own tokens are compared as well). Blocks
//! are copied in and out, never shared, so a running sequence never holds one: eviction (least
//! recently used first, within the byte budget) is always safe. The values copied are the ones
//! the sequence would have computed (a row's keys and values depend only on its prefix and
//! position), so outputs are the same with and without the cache.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use half::f16;

use super::attention::KvCache;
use crate::engine::PrefixStats;

/// Tokens per block.
pub(super) const BLOCK_TOKENS: usize = 16;

/// The keys of `prompt`'s whole blocks: block `i`'s hashes `prompt[..(i + 1) * BLOCK_TOKENS]`.
pub(super) fn block_keys(prompt: &[u32]) -> Vec<u64> {
    let mut key = 0u64;
    prompt
        .chunks_exact(BLOCK_TOKENS)
        .map(|block| {
            let mut h = DefaultHasher::new();
            key.hash(&mut h);
            block.hash(&mut h);
            key = h.finish();
            key
        })
        .collect()
}

struct Block {
    tokens: Vec<u32>,
    layers: Vec<(Vec<f16>, Vec<f16>)>,
    bytes: usize,
    /// Clock of its last use.
    used: u64,
}

/// The blocks held, within a byte budget.
pub(super) struct PrefixCache {
    budget_bytes: usize,
    held_bytes: usize,
    /// Keys and values per position (every layer's `kv_heads * head_dim`).
    row: usize,
    blocks: HashMap<u64, Block>,
    clock: u64,
    stats: PrefixStats,
}

impl PrefixCache {
    /// An empty cache of at most `budget_bytes`, for a model with `row` keys per position.
    pub(super) fn new(budget_bytes: usize, row: usize) -> Self {
        Self { budget_bytes, held_bytes: 0, row, blocks: HashMap::new(), clock: 0, stats: PrefixStats::default() }
    }

    /// What it did so far.
    pub(super) fn stats(&self) -> PrefixStats {
        PrefixStats { held_tokens: (self.blocks.len() * BLOCK_TOKENS) as u64, ..self.stats }
    }

    /// Whether block `key` is held.
    pub(super) fn holds(&self, key: u64) -> bool {
        self.blocks.contains_key(&key)
    }

    /// Copies into `cache`, which holds a whole number of `prompt`'s blocks, the held blocks that
    /// follow, leaving at least the prompt's last token to compute (its logits are needed);
    /// returns the positions added.
    pub(super) fn extend(&mut self, prompt: &[u32], keys: &[u64], cache: &mut KvCache) -> usize {
        let start = cache.len();
        if start % BLOCK_TOKENS != 0 || prompt.is_empty() {
            return 0;
        }
        let usable = ((prompt.len() - 1) / BLOCK_TOKENS).min(keys.len());
        let mut added = 0;
        for b in start / BLOCK_TOKENS..usable {
            let tokens = &prompt[b * BLOCK_TOKENS..(b + 1) * BLOCK_TOKENS];
            let Some(block) = self.blocks.get_mut(&keys[b]).filter(|blk| blk.tokens == tokens) else { break };
            self.clock += 1;
            block.used = self.clock;
            cache.append_positions(&block.layers, BLOCK_TOKENS);
            added += BLOCK_TOKENS;
        }
        self.stats.hit_tokens += added as u64;
        added
    }

    /// Offers the whole prompt blocks `cache` holds, from block `from` on: each one not held yet
    /// is copied in, evicting the least recently used blocks to make room. Returns the block to
    /// offer from next time.
    pub(super) fn offer(&mut self, prompt: &[u32], keys: &[u64], cache: &KvCache, from: usize) -> usize {
        let whole = (cache.len().min(prompt.len()) / BLOCK_TOKENS).min(keys.len());
        for b in from..whole {
            if self.blocks.contains_key(&keys[b]) {
                continue;
            }
            let bytes = 2 * BLOCK_TOKENS * self.row * std::mem::size_of::<f16>() * cache.layers.len();
            if bytes > self.budget_bytes {
                return whole;
            }
            self.make_room(bytes);
            self.clock += 1;
            let layers = cache.positions(b * BLOCK_TOKENS, (b + 1) * BLOCK_TOKENS, self.row);
            let tokens = prompt[b * BLOCK_TOKENS..(b + 1) * BLOCK_TOKENS].to_vec();
            self.blocks.insert(keys[b], Block { tokens, layers, bytes, used: self.clock });
            self.held_bytes += bytes;
        }
        whole
    }

    /// Evicts the least recently used blocks until `bytes` more fit.
    fn make_room(&mut self, bytes: usize) {
        while self.held_bytes + bytes > self.budget_bytes {
            let Some((&oldest, _)) = self.blocks.iter().min_by_key(|(_, b)| b.used) else { return };
            if let Some(b) = self.blocks.remove(&oldest) {
                self.held_bytes -= b.bytes;
                self.stats.evicted_blocks += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_key_depends_on_every_token_before_it() {
        let a: Vec<u32> = (0..48).collect();
        let mut b = a.clone();
        b[3] = 99;
        let (ka, kb) = (block_keys(&a), block_keys(&b));
        assert_eq!(ka.len(), 3, "whole blocks only");
        assert!(ka.iter().zip(&kb).all(|(x, y)| x != y), "a change in block 0 changes every later key");
        assert_eq!(block_keys(&a[..40]), ka[..2], "a shorter prompt has the same first keys");
    }
}
