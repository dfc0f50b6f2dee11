//! The AVX-512 VNNI kernel: sixteen weight rows (one vector of 32-bit lanes) against up to eight
//! tokens, `vpdpbusd` multiplying four unsigned weight levels by four signed activation levels
//! per lane per instruction.
//!
//! With [`super::amx`], this is where the crate uses `unsafe`: calling a `#[target_feature]` function after checking the
//! CPU has the features, and unaligned vector loads whose bounds are asserted before the loops.
#![allow(unsafe_code)]

use super::{ActsView, GroupView, Mins, TOKEN_TILE};

/// True when the CPU has what [`tile`] uses (detected once, by [`super::Kernel::available`]).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[n * LANES + lane]` = the dot product of token `n` with row `lane` of the group.
///
/// Panics when the slices are shorter than the shapes they claim, or when the CPU lacks the
/// kernel's features (callers check [`super::Kernel::available`] first).
pub(super) fn tile(w: &GroupView<'_>, a: &ActsView<'_>, out: &mut [f32]) {
    assert!(super::Kernel::Avx512Vnni.available(), "the VNNI kernel needs AVX-512 F, BW and VNNI");
    w.assert_holds(a, TOKEN_TILE, out);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features were detected above, and every length the kernel reads is asserted.
    unsafe {
        macro_rules! by_shape {
            ($($n:literal)*) => {
                match (a.tokens, w.four_bit, matches!(w.min, Mins::Scaled(_))) {
                    $(($n, true, true) => x86::tile::<$n, true, true>(w, a, out),
                      ($n, true, false) => x86::tile::<$n, true, false>(w, a, out),
                      ($n, false, true) => x86::tile::<$n, false, true>(w, a, out),
                      ($n, false, false) => x86::tile::<$n, false, false>(w, a, out),)*
                    _ => {}
                }
            };
        }
        by_shape!(1 2 3 4 5 6 7 8)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::{ActsView, GroupView, Mins, BLOCK, LANES};

    /// Four activation levels (inputs `k..k+4` of token `n`) broadcast to every lane.
    #[inline(always)]
    unsafe fn quad(levels: *const i8, at: usize) -> __m512i {
        _mm512_set1_epi32(std::ptr::read_unaligned(levels.add(at) as *const i32))
    }

    /// `N` tokens against the group; 4-bit levels when `FOUR`, minimums that are a multiple of the
    /// scale (added to the integer dot product) when `SCALED`.
    ///
    /// Each token's block sum runs in `S` independent integer accumulators (summed exactly at the
    /// block's end): with few tokens, one chain of dependent `vpdpbusd` would wait on latency.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI, and the views hold the lengths [`super::tile`] asserts.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile<const N: usize, const FOUR: bool, const SCALED: bool>(w: &GroupView<'_>, a: &ActsView<'_>, out: &mut [f32]) {
        match N {
            1 => tile_split::<N, FOUR, SCALED, 4>(w, a, out),
            2 => tile_split::<N, FOUR, SCALED, 4>(w, a, out),
            3 | 4 => tile_split::<N, FOUR, SCALED, 2>(w, a, out),
            _ => tile_split::<N, FOUR, SCALED, 1>(w, a, out),
        }
    }

    // Indexed loops over const-sized register arrays: they unroll, and the index is the lane.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_split<const N: usize, const FOUR: bool, const SCALED: bool, const S: usize>(w: &GroupView<'_>, a: &ActsView<'_>, out: &mut [f32]) {
        let cols = w.blocks * BLOCK;
        let bytes = if FOUR { LANES * BLOCK / 2 } else { LANES * BLOCK };
        let nibble = _mm512_set1_epi8(0x0F);
        let offset = w.min.offset();
        let mut facc = [_mm512_setzero_ps(); N];
        let q = w.quants.as_ptr();
        let lv = a.levels.as_ptr();
        for b in 0..w.blocks {
            let mut iacc = [[_mm512_setzero_si512(); S]; N];
            let base = q.add(b * bytes);
            if FOUR {
                for v in 0..4 {
                    let packed = _mm512_loadu_si512(base.add(v * 64) as *const _);
                    let lo = _mm512_and_si512(packed, nibble);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
                    for n in 0..N {
                        let row = n * cols + b * BLOCK;
                        let (s_lo, s_hi) = ((2 * v) % S, (2 * v + 1) % S);
                        iacc[n][s_lo] = _mm512_dpbusd_epi32(iacc[n][s_lo], lo, quad(lv, row + v * 4));
                        iacc[n][s_hi] = _mm512_dpbusd_epi32(iacc[n][s_hi], hi, quad(lv, row + 16 + v * 4));
                    }
                }
            } else {
                for v in 0..8 {
                    let levels = _mm512_loadu_si512(base.add(v * 64) as *const _);
                    for n in 0..N {
                        let row = n * cols + b * BLOCK;
                        iacc[n][v % S] = _mm512_dpbusd_epi32(iacc[n][v % S], levels, quad(lv, row + v * 4));
                    }
                }
            }
            let scale = _mm512_cvtph_ps(_mm256_loadu_si256(w.scale.as_ptr().add(b * LANES) as *const __m256i));
            let min = match w.min {
                Mins::Stored(m) if !SCALED => _mm512_cvtph_ps(_mm256_loadu_si256(m.as_ptr().add(b * LANES) as *const __m256i)),
                _ => _mm512_setzero_ps(),
            };
            for n in 0..N {
                let mut dot = iacc[n][0];
                for s in 1..S {
                    dot = _mm512_add_epi32(dot, iacc[n][s]);
                }
                let at = n * w.blocks + b;
                let sum = *a.sum.get_unchecked(at);
                let dot = _mm512_cvtepi32_ps(dot);
                let t2 = if SCALED {
                    _mm512_mul_ps(scale, _mm512_add_ps(dot, _mm512_set1_ps(offset * sum)))
                } else {
                    _mm512_fmadd_ps(scale, dot, _mm512_mul_ps(min, _mm512_set1_ps(sum)))
                };
                facc[n] = _mm512_fmadd_ps(_mm512_set1_ps(*a.scale.get_unchecked(at)), t2, facc[n]);
            }
        }
        for (n, acc) in facc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(n * LANES), *acc);
        }
    }
}
