//! Attention's loops compiled a second time for AVX2, where the CPU has it: the same plain Rust as
//! [`super::attend_rows`], so the same operations in the same order (Rust never fuses a multiply
//! and an add on its own), on eight-lane vectors instead of the baseline's four.
//!
//! The one `unsafe` here is the call of the `#[target_feature]` function, after checking the CPU
//! has the features.
#![allow(unsafe_code)]

use std::ops::Range;

use super::super::arch::ModelConfig;
use super::LayerCache;

/// True when the CPU runs AVX2 (the standard library caches the detection).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`super::attend_rows`] on eight-lane vectors. Panics when the CPU lacks AVX2.
pub(super) fn attend_rows(cfg: &ModelConfig, rows: &[(&LayerCache, usize)], q: &[f32], out: &mut [f32], kv_heads: Range<usize>) {
    assert!(available(), "the wide attention needs AVX2");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX2 (asserted above); the body is safe Rust.
    unsafe {
        attend_rows_avx2(cfg, rows, q, out, kv_heads)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_rows_avx2(cfg: &ModelConfig, rows: &[(&LayerCache, usize)], q: &[f32], out: &mut [f32], kv_heads: Range<usize>) {
    super::attend_rows_body(cfg, rows, q, out, kv_heads)
}
