//! The 256-bit kernels, for CPUs without AVX-512 VNNI: AVX2 (`vpmaddubsw`, `vpmaddwd`) and
//! AVX-VNNI (the 256-bit `vpdpbusd`). A group's sixteen rows are two halves of eight rows, one
//! vector of 32-bit lanes each. Several tokens take one half per pass, so that their eight integer
//! sums stay in registers; one token takes both halves in one pass, and prefetches the weights a
//! few blocks ahead: it reads each of them once.
//!
//! `vpmaddubsw` adds its two products into a saturating 16-bit lane, so the AVX2 path keeps every
//! sum exact: 4-bit levels (at most 15 x 127 a product, no pair saturates) are summed in 16-bit
//! lanes over a whole block (16 products, whose total stays within 16 bits) before `vpmaddwd`
//! widens them; 8-bit levels are centred (`w - 128`, magnitude at most 128) and multiplied by the
//! sign-adjusted activations, llama.cpp's trick, widened after every multiply, and `128 x` the
//! activations' block sum is added back.
//!
//! Each block's sums start from a value computed per token and block before the loops
//! ([`starts`]): the minimums' share where they are a multiple of the scale (Q4_0, Q5_0, Q8_0),
//! and AVX2's `128 x` sum. The epilogue then only scales. Every integer sum is exact, so each
//! block's dot product equals the reference's, and the scales are applied with the same fused
//! operations in the same order (or, for minimums that are a multiple of the scale, in the form
//! `Mins::Scaled` shows gives the same bits): the outputs are bitwise the reference's.
//!
//! Like [`super::vnni`], this module holds `unsafe`: calling `#[target_feature]` functions after
//! checking the CPU has the features, and unaligned vector loads whose bounds are asserted before
//! the loops.
#![allow(unsafe_code)]

use super::{ActsView, GroupView, TOKEN_TILE};

/// Tokens one pass over the group's weights takes: a whole token tile, so each weight vector is
/// unpacked once for all eight. Their eight integer sums for one half, the half's weights and two
/// activation broadcasts fit the sixteen vector registers AVX2 has; both halves' sums would
/// spill to the stack, with a load and a store around many of the adds.
const PASS_TOKENS: usize = TOKEN_TILE;

/// Which 256-bit integer dot product a kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    /// `vpmaddubsw` then `vpmaddwd`.
    Avx2,
    /// `vpdpbusd` on 256-bit vectors: AVX-VNNI's VEX encoding, or AVX-512 VNNI's with AVX-512 VL.
    AvxVnni,
}

/// True when the CPU has what `flavor`'s kernel uses.
pub(super) fn available(flavor: Flavor) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma") && has!("f16c");
        match flavor {
            Flavor::Avx2 => avx2,
            Flavor::AvxVnni => avx2 && (has!("avxvnni") || (has!("avx512vnni") && has!("avx512vl"))),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = flavor;
        false
    }
}

/// `out[n * LANES + lane]` = the dot product of token `n` with row `lane` of the group, by
/// `flavor`'s kernel, for up to [`TOKEN_TILE`] tokens whose levels are laid out by block
/// ([`super::QuantActs::levels_by_block`]): block `b`'s 32 levels of every token, then block
/// `b + 1`'s, so that one pointer reaches every token's levels of a block.
///
/// Panics when the slices are shorter than the shapes they claim, or when the CPU lacks the
/// kernel's features.
pub(super) fn tile(flavor: Flavor, w: &GroupView<'_>, a: &ActsView<'_>, out: &mut [f32]) {
    let detected = match flavor {
        Flavor::Avx2 => super::Kernel::Avx2.available(),
        Flavor::AvxVnni => super::Kernel::AvxVnni.available(),
    };
    assert!(detected, "the {flavor:?} kernel needs AVX2, FMA and F16C (and a 256-bit VNNI)");
    w.assert_holds(a, PASS_TOKENS, out);
    assert!(a.start.len() >= a.tokens * w.blocks);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features were detected above, and every length the kernel reads is asserted
    // (`assert_holds`).
    unsafe {
        x86::pass(flavor, w, a, out)
    }
}

/// Per token and block of `acts`, the integer sum `flavor`'s kernel starts the block's dot
/// products from (`[token, block]`), so that they come out with the minimums' share in them where
/// the minimums are `offset` times the scale (`offset` 0 where they are stored): `offset` times
/// the block's level sum, and for AVX2's centred 8-bit levels (`level - 128`) `128` times it more.
///
/// AVX2 sums 4-bit levels in 16-bit lanes, two per 32-bit lane: the even one takes inputs `4j`
/// and `4j + 1` (whose levels sum to [`super::QuantActs::pair_sum`]), the odd one the other two,
/// and each starts from its own share. A lane then ends at `(level + offset) * x` summed over its
/// sixteen inputs, at most `16 * 16 * 127` in magnitude for the offsets 4-bit levels take: exact,
/// whatever the 16-bit additions wrap on the way.
pub(super) fn starts(flavor: Flavor, four_bit: bool, offset: i32, acts: &super::QuantActs) -> Vec<i32> {
    let sums = acts.sum.iter().zip(&acts.pair_sum).map(|(&sum, &pair)| (sum as i32, pair as i32));
    match (flavor, four_bit) {
        (Flavor::Avx2, true) => sums
            .map(|(sum, pair)| {
                let (even, odd) = (offset * pair, offset * (sum - pair));
                (even as u16 as u32 | (odd as u32) << 16) as i32
            })
            .collect(),
        (Flavor::Avx2, false) => sums.map(|(sum, _)| (offset + 128) * sum).collect(),
        (Flavor::AvxVnni, _) => sums.map(|(sum, _)| offset * sum).collect(),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::{ActsView, GroupView, Mins, BLOCK, LANES};
    use super::Flavor;

    /// Lanes of one half group (one 256-bit vector of 32-bit lanes).
    const HALF: usize = LANES / 2;

    /// How many blocks ahead a one-token pass prefetches its weights.
    const PREFETCH_BLOCKS: usize = 4;

    /// Whether the CPU has AVX-VNNI's VEX form of `vpdpbusd` (the standard library caches the
    /// detection).
    fn has_vex_vnni() -> bool {
        std::arch::is_x86_feature_detected!("avxvnni")
    }

    /// The group against `a`'s tokens (at most [`super::PASS_TOKENS`]).
    ///
    /// # Safety
    /// The CPU has the flavor's features, and the views hold what [`super::tile`] asserts.
    pub(super) unsafe fn pass(flavor: Flavor, w: &GroupView<'_>, a: &ActsView<'_>, out: &mut [f32]) {
        macro_rules! by_shape {
            ($kernel:ident, $dot:ty, $($n:literal)*) => {
                match (a.tokens, w.four_bit, matches!(w.min, Mins::Scaled(_))) {
                    $(($n, true, true) => $kernel::<$n, true, true, $dot>(w, a, out),
                      ($n, true, false) => $kernel::<$n, true, false, $dot>(w, a, out),
                      ($n, false, true) => $kernel::<$n, false, true, $dot>(w, a, out),
                      ($n, false, false) => $kernel::<$n, false, false, $dot>(w, a, out),)*
                    (n, _, _) => unreachable!("a pass takes 1 to {} tokens, not {n}", super::PASS_TOKENS),
                }
            };
        }
        match flavor {
            Flavor::Avx2 => by_shape!(avx2, Madd, 1 2 3 4 5 6 7 8),
            Flavor::AvxVnni if has_vex_vnni() => by_shape!(avx_vnni, DpbusdVex, 1 2 3 4 5 6 7 8),
            Flavor::AvxVnni => by_shape!(avx512_vl_vnni, DpbusdEvex, 1 2 3 4 5 6 7 8),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2<const N: usize, const FOUR: bool, const SCALED: bool, D: Dot>(w: &GroupView<'_>, a: &ActsView<'_>, out: &mut [f32]) {
        body::<N, FOUR, SCALED, D>(w, a, out)
    }

    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn avx_vnni<const N: usize, const FOUR: bool, const SCALED: bool, D: Dot>(w: &GroupView<'_>, a: &ActsView<'_>, out: &mut [f32]) {
        body::<N, FOUR, SCALED, D>(w, a, out)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn avx512_vl_vnni<const N: usize, const FOUR: bool, const SCALED: bool, D: Dot>(w: &GroupView<'_>, a: &ActsView<'_>, out: &mut [f32]) {
        body::<N, FOUR, SCALED, D>(w, a, out)
    }

    /// A block's integer dot products of one token with eight rows, four inputs per 32-bit lane.
    /// Inlined into the `#[target_feature]` functions above, which enable what it uses. The
    /// provided methods are those of an instruction that accumulates any levels exactly in 32-bit
    /// lanes (`vpdpbusd`): the 8-bit levels as they are, and the accumulator is the dot product.
    trait Dot {
        /// Accumulates 4-bit levels `w` (below 16) times activation levels `x`.
        unsafe fn four(acc: __m256i, w: __m256i, x: __m256i) -> __m256i;

        /// What [`Dot::eight`] takes of a vector of 8-bit levels, once for all tokens.
        #[inline(always)]
        unsafe fn prepare(w: __m256i) -> (__m256i, __m256i) {
            (w, w)
        }

        /// Accumulates 8-bit levels (as [`Dot::prepare`] left them) times activation levels `x`.
        #[inline(always)]
        unsafe fn eight(acc: __m256i, (w, _): (__m256i, __m256i), x: __m256i) -> __m256i {
            Self::four(acc, w, x)
        }

        /// The block's dot products as 32-bit lanes, from the accumulator.
        #[inline(always)]
        unsafe fn finish<const FOUR: bool>(acc: __m256i) -> __m256i {
            acc
        }
    }

    /// AVX2: `vpmaddubsw` pairs, summed exactly (see the module's note on saturation).
    struct Madd;

    impl Dot for Madd {
        #[inline(always)]
        unsafe fn four(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
            _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, x))
        }

        #[inline(always)]
        unsafe fn prepare(w: __m256i) -> (__m256i, __m256i) {
            let centred = _mm256_xor_si256(w, _mm256_set1_epi8(i8::MIN));
            (_mm256_abs_epi8(centred), centred)
        }

        #[inline(always)]
        unsafe fn eight(acc: __m256i, (magnitude, centred): (__m256i, __m256i), x: __m256i) -> __m256i {
            let pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(x, centred));
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }

        #[inline(always)]
        unsafe fn finish<const FOUR: bool>(acc: __m256i) -> __m256i {
            if FOUR {
                _mm256_madd_epi16(acc, _mm256_set1_epi16(1))
            } else {
                acc
            }
        }
    }

    /// AVX-VNNI's `vpdpbusd` (VEX).
    struct DpbusdVex;

    impl Dot for DpbusdVex {
        #[inline(always)]
        unsafe fn four(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
            _mm256_dpbusd_avx_epi32(acc, w, x)
        }
    }

    /// AVX-512 VNNI's `vpdpbusd` on 256-bit vectors (EVEX, with AVX-512 VL).
    struct DpbusdEvex;

    impl Dot for DpbusdEvex {
        #[inline(always)]
        unsafe fn four(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(acc, w, x)
        }
    }

    /// Four activation levels (inputs `at..at + 4` of the levels) broadcast to every lane.
    #[inline(always)]
    unsafe fn quad(levels: *const i8, at: usize) -> __m256i {
        _mm256_set1_epi32(std::ptr::read_unaligned(levels.add(at) as *const i32))
    }

    /// Eight f16 values (a half group's scales or minimums for one block) as f32.
    #[inline(always)]
    unsafe fn f16x8(values: *const half::f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(values as *const __m128i))
    }

    /// `N` tokens against both halves of the group; 4-bit levels when `FOUR`, minimums that are a
    /// multiple of the scale (added to the integer dot product) when `SCALED`. One token takes
    /// both halves in one pass, which reads each weight once; more tokens take one half per pass,
    /// so that their integer sums fit the sixteen registers beside the weights and the
    /// activations (both halves' would spill), at the cost of broadcasting each activation twice.
    #[inline(always)]
    unsafe fn body<const N: usize, const FOUR: bool, const SCALED: bool, D: Dot>(w: &GroupView<'_>, a: &ActsView<'_>, out: &mut [f32]) {
        if N == 1 {
            halves::<N, 2, FOUR, SCALED, D>(w, a, 0, out);
        } else {
            halves::<N, 1, FOUR, SCALED, D>(w, a, 0, out);
            halves::<N, 1, FOUR, SCALED, D>(w, a, 1, out);
        }
    }

    /// `N` tokens against `H` halves of the group from half `h0` on.
    // Indexed loops over const-sized register arrays: they unroll, and the indexes are the token
    // and the half.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn halves<const N: usize, const H: usize, const FOUR: bool, const SCALED: bool, D: Dot>(
        w: &GroupView<'_>,
        a: &ActsView<'_>,
        h0: usize,
        out: &mut [f32],
    ) {
        let bytes = if FOUR { LANES * BLOCK / 2 } else { LANES * BLOCK };
        let nibble = _mm256_set1_epi8(0x0F);
        // For more than two tokens the float sums stay in memory (L1), read and written once per
        // block: the compiler would keep them in registers, and the integer sums of the block
        // would spill in their place.
        let mut facc = [[_mm256_setzero_ps(); H]; N];
        let q = w.quants.as_ptr().add(h0 * 32);
        let lv = a.levels.as_ptr();
        for b in 0..w.blocks {
            let mut iacc: [[__m256i; H]; N] = std::array::from_fn(|n| [_mm256_set1_epi32(*a.start.get_unchecked(n * w.blocks + b)); H]);
            let base = q.add(b * bytes);
            if N == 1 {
                // One token reads each weight once: ask for the lines a few blocks ahead (a
                // prefetch never faults, so past the group's end it only wastes a request).
                for line in (0..bytes).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(PREFETCH_BLOCKS * bytes + line) as *const i8);
                }
            }
            if FOUR {
                for v in 0..4 {
                    let mut lo = [_mm256_setzero_si256(); H];
                    let mut hi = [_mm256_setzero_si256(); H];
                    for h in 0..H {
                        let packed = _mm256_loadu_si256(base.add(v * 64 + h * 32) as *const __m256i);
                        lo[h] = _mm256_and_si256(packed, nibble);
                        hi[h] = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
                    }
                    for n in 0..N {
                        let row = (b * N + n) * BLOCK;
                        let (x_lo, x_hi) = (quad(lv, row + v * 4), quad(lv, row + 16 + v * 4));
                        for h in 0..H {
                            iacc[n][h] = D::four(iacc[n][h], lo[h], x_lo);
                            iacc[n][h] = D::four(iacc[n][h], hi[h], x_hi);
                        }
                    }
                }
            } else {
                for v in 0..8 {
                    let levels: [_; H] = std::array::from_fn(|h| D::prepare(_mm256_loadu_si256(base.add(v * 64 + h * 32) as *const __m256i)));
                    for n in 0..N {
                        let x = quad(lv, (b * N + n) * BLOCK + v * 4);
                        for h in 0..H {
                            iacc[n][h] = D::eight(iacc[n][h], levels[h], x);
                        }
                    }
                }
            }
            let scale: [_; H] = std::array::from_fn(|h| f16x8(w.scale.as_ptr().add(b * LANES + (h0 + h) * HALF)));
            let min: [_; H] = std::array::from_fn(|h| match w.min {
                Mins::Stored(m) if !SCALED => f16x8(m.as_ptr().add(b * LANES + (h0 + h) * HALF)),
                _ => _mm256_setzero_ps(),
            });
            for n in 0..N {
                let at = n * w.blocks + b;
                let (sum, act_scale) = (_mm256_set1_ps(*a.sum.get_unchecked(at)), _mm256_set1_ps(*a.scale.get_unchecked(at)));
                for h in 0..H {
                    // With scaled minimums, `dot + offset * sum`: both exact, as is their sum.
                    let dot = _mm256_cvtepi32_ps(D::finish::<FOUR>(iacc[n][h]));
                    let t2 = if SCALED {
                        _mm256_mul_ps(scale[h], dot)
                    } else {
                        _mm256_fmadd_ps(scale[h], dot, _mm256_mul_ps(min[h], sum))
                    };
                    if N > 2 {
                        let total = std::ptr::read_volatile(&facc[n][h]);
                        std::ptr::write_volatile(&mut facc[n][h], _mm256_fmadd_ps(act_scale, t2, total));
                    } else {
                        facc[n][h] = _mm256_fmadd_ps(act_scale, t2, facc[n][h]);
                    }
                }
            }
        }
        for n in 0..N {
            for h in 0..H {
                _mm256_storeu_ps(out.as_mut_ptr().add(n * LANES + (h0 + h) * HALF), facc[n][h]);
            }
        }
    }
}
