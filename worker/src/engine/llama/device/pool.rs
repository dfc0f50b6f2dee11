//! The device model's KV cache: a slot pool per layer (`[slot, kv_head, position, dim]`, flat
//! `[rows, dim]`) that grows by doubling in slots and in positions; a sequence holds a
//! [`SlotCache`], its slot and length, and dropping it frees the slot.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{bail, DType, Device, Result, Tensor};

use crate::engine::llama::arch::ModelConfig;
/// A sequence's place in a [`DeviceModel`]'s KV pool. Dropping it frees the slot.
pub struct SlotCache {
    pub(super) slot: Option<usize>,
    pub(crate) len: usize,
    pub(super) pool: Arc<Mutex<Pool>>,
}

impl Drop for SlotCache {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            lock(&self.pool).release(slot);
        }
    }
}

/// A poisoned lock only means a forward panicked; the pool's bookkeeping is still consistent.
pub(super) fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

/// A [`DeviceModel`] step input.
pub struct SlotInput<'a> {
    /// The sequence's slot.
    pub cache: &'a mut SlotCache,
    /// Tokens fed this step.
    pub tokens: &'a [u32],
    /// Logits for every fed token.
    pub all_logits: bool,
}

/// Slots this many at first; the pool doubles when full.
const INITIAL_SLOTS: usize = 8;
/// Positions per slot at first; doubled (up to the context length) when a sequence needs more.
const INITIAL_POSITIONS: usize = 256;

/// Every layer's keys and values for every slot: `k[layer]`, `v[layer]` are `[slots * kv_heads *
/// cap, head_dim]`, row `(slot * kv_heads + head) * cap + position`.
pub(super) struct Pool {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    pub(crate) slots: usize,
    pub(crate) cap: usize,
    pub(crate) used: Vec<bool>,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) max_cap: usize,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
}

impl Pool {
    pub(super) fn new(cfg: &ModelConfig, dtype: DType, device: &Device) -> Self {
        Self {
            k: Vec::new(),
            v: Vec::new(),
            slots: 0,
            cap: 0,
            used: Vec::new(),
            kv_heads: cfg.kv_heads,
            head_dim: cfg.head_dim,
            max_cap: cfg.context_length,
            dtype,
            device: device.clone(),
        }
    }

    pub(super) fn release(&mut self, slot: usize) {
        if let Some(u) = self.used.get_mut(slot) {
            *u = false;
        }
    }

    /// The lowest free slot (the pool doubles when none is free), so the slots in use stay dense.
    pub(super) fn take(&mut self, layers: usize) -> Result<usize> {
        if let Some(i) = self.used.iter().position(|u| !u) {
            self.used[i] = true;
            return Ok(i);
        }
        let slot = self.slots;
        let slots = (self.slots * 2).max(INITIAL_SLOTS);
        let cap = self.cap.max(INITIAL_POSITIONS.min(self.max_cap));
        self.resize(layers, slots, cap)?;
        self.used[slot] = true;
        Ok(slot)
    }

    /// Makes room for `positions` positions in every slot.
    pub(super) fn reserve(&mut self, layers: usize, positions: usize) -> Result<()> {
        if positions <= self.cap {
            return Ok(());
        }
        if positions > self.max_cap {
            bail!(
                "forward: position {positions} past the context length {}",
                self.max_cap
            );
        }
        let cap = positions.next_power_of_two().min(self.max_cap);
        self.resize(layers, self.slots, cap)
    }

    /// Reallocates every layer as `[slots, kv_heads, cap, dim]`, keeping what is cached.
    pub(super) fn resize(&mut self, layers: usize, slots: usize, cap: usize) -> Result<()> {
        let (h, d) = (self.kv_heads, self.head_dim);
        let grow = |old: Option<&Tensor>| -> Result<Tensor> {
            let new = Tensor::zeros((slots * h, cap, d), self.dtype, &self.device)?;
            if let Some(old) = old {
                // Old slots are a prefix of the new ones; old positions a prefix of each row.
                let old = old.reshape((self.slots * h, self.cap, d))?;
                let head = new.narrow(0, 0, self.slots * h)?;
                head.slice_set(&old, 1, 0)?;
            }
            new.reshape((slots * h * cap, d))
        };
        let mut k = Vec::with_capacity(layers);
        let mut v = Vec::with_capacity(layers);
        for l in 0..layers {
            k.push(grow(self.k.get(l))?);
            v.push(grow(self.v.get(l))?);
        }
        tracing::debug!(slots, positions = cap, "device KV pool resized");
        self.k = k;
        self.v = v;
        self.slots = slots;
        self.cap = cap;
        self.used.resize(slots, false);
        Ok(())
    }

    /// Row of `(slot, head, position)` in a layer's flat tensor.
    pub(super) fn row(&self, slot: usize, head: usize, pos: usize) -> u32 {
        ((slot * self.kv_heads + head) * self.cap + pos) as u32
    }
}

impl Pool {
    /// The rows of positions `from..to` of `slot`, every head of each position in turn (the
    /// order a step writes them in), each row repeated `dim` times: a gather or scatter index.
    fn position_rows(&self, slot: usize, from: usize, to: usize) -> Vec<u32> {
        let mut rows = Vec::with_capacity((to - from) * self.kv_heads * self.head_dim);
        for pos in from..to {
            for h in 0..self.kv_heads {
                rows.extend(std::iter::repeat_n(self.row(slot, h, pos), self.head_dim));
            }
        }
        rows
    }
}

impl SlotCache {
    /// Copies of positions `from..to` of this sequence's keys and values, every layer:
    /// `[(to - from) * kv_heads, head_dim]` each, on the pool's device.
    pub(crate) fn positions(&self, from: usize, to: usize) -> Result<Vec<(Tensor, Tensor)>> {
        if from > to || to > self.len {
            bail!("positions {from}..{to} of a slot of {}", self.len);
        }
        let pool = lock(&self.pool);
        let Some(slot) = self.slot else { bail!("positions of a sequence with no slot") };
        let rows = pool.position_rows(slot, from, to);
        let index = Tensor::from_vec(rows, ((to - from) * pool.kv_heads, pool.head_dim), &pool.device)?;
        // A gather always makes new storage: the copy never aliases the pool.
        pool.k.iter().zip(&pool.v).map(|(k, v)| Ok((k.gather(&index, 0)?, v.gather(&index, 0)?))).collect()
    }

    /// Appends `n` positions of every layer, as [`SlotCache::positions`] gave them (of a model
    /// with `layers` layers): they become positions `len..len + n`.
    pub(crate) fn append_positions(&mut self, blocks: &[(Tensor, Tensor)], n: usize, layers: usize) -> Result<()> {
        if blocks.len() != layers {
            bail!("a block of {} layers for a model of {layers}", blocks.len());
        }
        let mut pool = lock(&self.pool);
        let slot = match self.slot {
            Some(s) => s,
            None => {
                let s = pool.take(layers)?;
                self.slot = Some(s);
                s
            }
        };
        pool.reserve(layers, self.len + n)?;
        let rows = pool.position_rows(slot, self.len, self.len + n);
        let index = Tensor::from_vec(rows, (n * pool.kv_heads, pool.head_dim), &pool.device)?;
        for (l, (k, v)) in blocks.iter().enumerate() {
            pool.k[l].scatter_set(&index, k, 0)?;
            pool.v[l].scatter_set(&index, v, 0)?;
        }
        self.len += n;
        Ok(())
    }
}
