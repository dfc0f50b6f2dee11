//! The prefix cache: keys and values of prompt blocks already computed, copied into any later
//! sequence whose prompt starts with the same tokens, so it prefills only the rest. On the CPU
//! path blocks are f16 rows in memory; on the device path, tensors on the device in the pool's
//! dtype.
//!
//! A prompt is cut into blocks of [`BLOCK_TOKENS`]; block `i`'s key hashes every token up to its
//! end, and a block found by its key is used only if its whole prefix equals the prompt's (so no
//! hash collision, chance or crafted, can hand a prompt another's keys and values). Blocks are
//! copied in and out, never shared, so a running sequence never holds one: eviction (least
//! recently used first, within the byte budget; within one prefix the later blocks go first,
//! since a block is of no use without those before it) is always safe. The values copied are the ones
//! the sequence would have computed (a row's keys and values depend only on its prefix and
//! position), so outputs are the same with and without the cache.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Instant;

use candle_core::Tensor;
use half::f16;

use super::backend::SeqCache;
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

/// A block's keys and values, every layer, as its sequence's cache held them.
enum BlockKv {
    /// The CPU path's f16 rows.
    Host(Vec<(Vec<f16>, Vec<f16>)>),
    /// The device path's rows, on the device.
    Device(Vec<(Tensor, Tensor)>),
}

struct Block {
    /// Every token up to the block's end.
    prefix: Vec<u32>,
    layers: BlockKv,
    bytes: usize,
    /// Clock of its last use.
    used: u64,
}

/// The blocks held, within a byte budget.
pub(super) struct PrefixCache {
    budget_bytes: usize,
    /// Bytes of one block's keys and values.
    block_bytes: usize,
    held_bytes: usize,
    /// Keys and values per position (every layer's `kv_heads * head_dim`).
    row: usize,
    layers: usize,
    blocks: HashMap<u64, Block>,
    clock: u64,
    stats: PrefixStats,
}

impl PrefixCache {
    /// An empty cache of at most `budget_bytes`, for a model of `layers` layers with `row` keys
    /// per position of `value_bytes` each.
    pub(super) fn new(budget_bytes: usize, layers: usize, row: usize, value_bytes: usize) -> Self {
        let block_bytes = 2 * BLOCK_TOKENS * row * value_bytes * layers;
        Self { budget_bytes, block_bytes, held_bytes: 0, row, layers, blocks: HashMap::new(), clock: 0, stats: PrefixStats::default() }
    }

    /// Positions `from..to` of `cache`, every layer (`None` if the device failed to copy them).
    fn copy_out(&self, cache: &SeqCache, from: usize, to: usize) -> Option<BlockKv> {
        match cache {
            SeqCache::Cpu(c) => Some(BlockKv::Host(c.positions(from, to, self.row))),
            SeqCache::Slot(c) => match c.positions(from, to) {
                Ok(layers) => Some(BlockKv::Device(layers)),
                Err(e) => {
                    tracing::warn!(error = %e, "a prompt block could not be copied into the prefix cache");
                    None
                }
            },
        }
    }

    /// Appends `block` to `cache`; false if it could not (the sequence computes it instead).
    fn copy_in(&self, block: &BlockKv, cache: &mut SeqCache) -> bool {
        match (cache, block) {
            (SeqCache::Cpu(c), BlockKv::Host(layers)) => {
                c.append_positions(layers, BLOCK_TOKENS);
                true
            }
            (SeqCache::Slot(c), BlockKv::Device(layers)) => match c.append_positions(layers, BLOCK_TOKENS, self.layers) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "a prompt block could not be copied from the prefix cache");
                    false
                }
            },
            _ => false,
        }
    }

    /// Whether a block fits in the budget at all (if not, nothing is ever kept).
    pub(super) fn keeps_blocks(&self) -> bool {
        self.block_bytes <= self.budget_bytes
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
    pub(super) fn extend(&mut self, prompt: &[u32], keys: &[u64], cache: &mut SeqCache) -> usize {
        let started = Instant::now();
        let added = self.copy_held_blocks(prompt, keys, cache);
        self.stats.busy_micros += started.elapsed().as_micros() as u64;
        added
    }

    fn copy_held_blocks(&mut self, prompt: &[u32], keys: &[u64], cache: &mut SeqCache) -> usize {
        let start = cache.len();
        if !start.is_multiple_of(BLOCK_TOKENS) || prompt.is_empty() {
            return 0;
        }
        let usable = ((prompt.len() - 1) / BLOCK_TOKENS).min(keys.len());
        let first = start / BLOCK_TOKENS;
        let mut found = first;
        while found < usable && self.blocks.get(&keys[found]).is_some_and(|blk| blk.prefix == prompt[..(found + 1) * BLOCK_TOKENS]) {
            found += 1;
        }
        let top = self.stamp(found - first);
        let mut copied = first;
        while copied < found {
            let Some(block) = self.blocks.get(&keys[copied]) else { break };
            if !self.copy_in(&block.layers, cache) {
                break;
            }
            if let Some(block) = self.blocks.get_mut(&keys[copied]) {
                block.used = top - (copied - first) as u64;
            }
            copied += 1;
        }
        let added = (copied - first) * BLOCK_TOKENS;
        self.stats.hit_tokens += added as u64;
        added
    }

    /// Once `cache` holds whole prompt blocks past block `from`: the prompt's blocks it holds go
    /// into the cache (those not held yet copied in, the others marked used), evicting the least
    /// recently used blocks of other prefixes to make room, never this one's (a block is of no
    /// use without those before it). Returns the block to offer from next time.
    pub(super) fn offer(&mut self, prompt: &[u32], keys: &[u64], cache: &SeqCache, from: usize) -> usize {
        let started = Instant::now();
        let next = self.keep_blocks(prompt, keys, cache, from);
        self.stats.busy_micros += started.elapsed().as_micros() as u64;
        next
    }

    fn keep_blocks(&mut self, prompt: &[u32], keys: &[u64], cache: &SeqCache, from: usize) -> usize {
        let whole = (cache.len().min(prompt.len()) / BLOCK_TOKENS).min(keys.len());
        if !self.keeps_blocks() || from >= whole {
            return whole.max(from);
        }
        let top = self.stamp(whole);
        let this_prefix = top + 1 - whole as u64;
        for b in 0..whole {
            let prefix = &prompt[..(b + 1) * BLOCK_TOKENS];
            if let Some(block) = self.blocks.get_mut(&keys[b]) {
                if block.prefix == prefix {
                    block.used = top - b as u64;
                }
                continue;
            }
            if !self.make_room(self.block_bytes, this_prefix) {
                break;
            }
            let Some(layers) = self.copy_out(cache, b * BLOCK_TOKENS, (b + 1) * BLOCK_TOKENS) else { break };
            let bytes = self.block_bytes;
            self.blocks.insert(keys[b], Block { prefix: prefix.to_vec(), layers, bytes, used: top - b as u64 });
            self.held_bytes += bytes;
        }
        whole
    }

    /// Use stamps for `n` blocks of one prefix used now: the `i`th from its start gets
    /// `top - i`, so all are more recent than any before, and earlier blocks more recent than
    /// later ones (a prefix is evicted from its end). Returns `top`.
    fn stamp(&mut self, n: usize) -> u64 {
        self.clock += n as u64;
        self.clock
    }

    /// Evicts the least recently used blocks used before `keep_from` until `bytes` more fit;
    /// false when they cannot.
    fn make_room(&mut self, bytes: usize, keep_from: u64) -> bool {
        while self.held_bytes + bytes > self.budget_bytes {
            let Some((&oldest, _)) = self.blocks.iter().filter(|(_, b)| b.used < keep_from).min_by_key(|(_, b)| b.used) else {
                return false;
            };
            if let Some(b) = self.blocks.remove(&oldest) {
                self.held_bytes -= b.bytes;
                self.stats.evicted_blocks += 1;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::llama::attention::KvCache;

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

    #[test]
    fn a_prefix_is_evicted_from_its_end_and_a_collision_never_matches() {
        // Two layers of one position-row each: a block is 2 * 16 * 1 * 2 bytes * 2 layers.
        let mut c = PrefixCache::new(3 * 128, 2, 1, 2);
        let prompt: Vec<u32> = (0..64).collect();
        let keys = block_keys(&prompt);
        let mut cache = SeqCache::Cpu(KvCache::test_filled(2, 1, 64));
        assert_eq!(c.offer(&prompt, &keys, &cache, 0), 4);
        assert_eq!(c.stats().held_tokens, 48, "three blocks fit: {:?}", c.stats());
        assert!(c.holds(keys[0]) && c.holds(keys[1]) && !c.holds(keys[3]), "the first blocks stay, the last went");
        // Another prompt whose key for block 0 is forced to match: its tokens differ, so no match.
        let other: Vec<u32> = (100..164).collect();
        let mut empty = SeqCache::Cpu(KvCache::test_filled(2, 1, 0));
        assert_eq!(c.extend(&other, &keys, &mut empty), 0, "same keys, other tokens: nothing copied");
        let SeqCache::Cpu(c0) = &mut cache else { unreachable!() };
        c0.truncate_for_test(0, 1);
        assert_eq!(c.extend(&prompt, &keys, &mut cache), 48, "its own prompt finds three blocks");
    }
}
