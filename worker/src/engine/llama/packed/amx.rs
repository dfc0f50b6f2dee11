//! The AMX-INT8 kernel: one tile multiply (`tdpbsud`) takes a block of 32 inputs for up to
//! sixteen tokens against the group's sixteen rows, and the block's scales are applied with the
//! same AVX-512 fused operations, in the same order, as the VNNI kernel and the reference, so the
//! three give bitwise the same outputs.
//!
//! Like [`super::vnni`], this module holds `unsafe`: the `arch_prctl` call that asks Linux for
//! the tile state, the tile instructions (inline assembly: Rust has no stable AMX intrinsics) and
//! AVX-512 intrinsics, each after its bounds are asserted.
#![allow(unsafe_code)]

use super::{ActsView, GroupView};

/// Most tokens one tile multiply takes (the tile's rows).
pub(super) const TOKENS: usize = 16;

/// True when the CPU has AMX-TILE and AMX-INT8, the AVX-512 parts of the epilogue, and Linux
/// granted this process the tile state (asked once, by [`super::Kernel::best`]).
pub(super) fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        super::vnni::available() && x86::cpu_has_amx() && x86::request_tile_state()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// `out[n * LANES + lane]` = the dot product of token `n` with row `lane` of the group, for up
/// to [`TOKENS`] tokens whose levels are laid out by block ([`super::QuantActs::levels_by_block`]):
/// block `b`'s 32 levels of every token, then block `b + 1`'s.
///
/// Panics when the slices are shorter than the shapes they claim, or when AMX is not usable
/// (callers pick the kernel with [`super::Kernel::best`]).
pub(super) fn tile(w: &GroupView<'_>, a: &ActsView<'_>, out: &mut [f32]) {
    assert!(super::Kernel::Amx.available(), "the AMX kernel needs AMX-INT8 and the tile state");
    assert!(a.tokens >= 1, "the AMX kernel takes at least one token");
    w.assert_holds(a, TOKENS, out);
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    // SAFETY: AMX and AVX-512 were detected and the tile state granted (asserted above), and
    // every length the kernel reads or writes is asserted.
    unsafe {
        macro_rules! dispatch {
            ($($n:literal)*) => {
                match (a.tokens, w.four_bit) {
                    $(($n, true) => x86::tile::<$n, true>(w, a, out),
                      ($n, false) => x86::tile::<$n, false>(w, a, out),)*
                    _ => {}
                }
            };
        }
        dispatch!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::cell::Cell;

    use super::super::{ActsView, GroupView, Mins, BLOCK, LANES};

    /// CPUID leaf 7: AMX-TILE (EDX bit 24) and AMX-INT8 (EDX bit 25).
    pub(super) fn cpu_has_amx() -> bool {
        // Leaf 7 exists on every x86-64 CPU with AVX-512, which the caller checks first.
        let leaf = __cpuid_count(7, 0);
        leaf.edx & (1 << 24) != 0 && leaf.edx & (1 << 25) != 0
    }

    /// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`):
    /// without it the first tile instruction faults. Then checks the OS enabled it (XCR0 bits 17
    /// and 18).
    pub(super) fn request_tile_state() -> bool {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: a plain system call; it changes only which register states this process may use.
        unsafe {
            asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret, in("rdi") ARCH_REQ_XCOMP_PERM,
                 in("rsi") XFEATURE_XTILEDATA, lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        if ret != 0 {
            return false;
        }
        let (lo, _hi): (u32, u32);
        // SAFETY: XGETBV with ECX = 0 reads XCR0; OSXSAVE is implied by the AVX-512 check.
        unsafe {
            asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi, options(nomem, nostack));
        }
        lo & (0b11 << 17) == 0b11 << 17
    }

    thread_local! {
        /// The token count the tiles of this thread are configured for (0: not configured).
        static CONFIGURED: Cell<usize> = const { Cell::new(0) };
    }

    /// Tiles 0-1: int32 sums `[tokens, 16 rows]`, for an even and an odd block; 2-3: the
    /// tokens' activation levels `[tokens, 32 inputs]`; 4-5: the weights, `[8 quads, 16 rows x
    /// 4 inputs]` (the layout `tdpbsud` reads its unsigned operand in).
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// Loads the tile configuration for `tokens` rows unless this thread already has it.
    ///
    /// # Safety
    /// The CPU has AMX and the process holds the tile state.
    unsafe fn configure(tokens: usize) {
        if CONFIGURED.with(Cell::get) == tokens {
            return;
        }
        let mut cfg = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        for t in 0..2 {
            (cfg.rows[t], cfg.colsb[t]) = (tokens as u8, (LANES * 4) as u16);
            (cfg.rows[2 + t], cfg.colsb[2 + t]) = (tokens as u8, BLOCK as u16);
            (cfg.rows[4 + t], cfg.colsb[4 + t]) = ((BLOCK / 4) as u8, (LANES * 4) as u16);
        }
        asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
        CONFIGURED.with(|c| c.set(tokens));
    }

    /// Starts a block's product in tiles `$c` (sums), `$a` (activations, rows `$stride` bytes
    /// apart from `$acts`) and `$w` (512 bytes of weights from `$weights`, rows of 64).
    macro_rules! multiply {
        ($c:literal, $a:literal, $w:literal, $weights:expr, $acts:expr, $stride:expr) => {
            asm!(
                concat!("tileloadd tmm", $w, ", [{w} + {ws}*1]"),
                concat!("tileloadd tmm", $a, ", [{a} + {st}*1]"),
                concat!("tilezero tmm", $c),
                concat!("tdpbsud tmm", $c, ", tmm", $a, ", tmm", $w),
                w = in(reg) $weights, ws = in(reg) 64usize, a = in(reg) $acts, st = in(reg) $stride,
                options(nostack, readonly)
            )
        };
    }

    /// Stores tile `$s`'s sums (`[tokens, 16]` int32) to `$dst`.
    macro_rules! store {
        ($s:literal, $dst:expr) => {
            asm!(concat!("tilestored [{d} + {st}*1], tmm", $s), d = in(reg) $dst, st = in(reg) 64usize, options(nostack))
        };
    }

    /// One block's weights as 8-bit levels, aligned for vector stores.
    #[repr(C, align(64))]
    struct Scratch([u8; LANES * BLOCK]);

    /// One block's int32 sums, `[token, lane]`, aligned for vector loads.
    #[repr(C, align(64))]
    struct Sums([i32; super::TOKENS * LANES]);

    /// Expands a 4-bit block (4 vectors: inputs `4v..4v+4` in the low nibbles, `4v+16..` in the
    /// high ones) into 8 rows of 8-bit levels, the 8-bit layout.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn unpack(src: *const u8, dst: &mut Scratch) {
        let nibble = _mm512_set1_epi8(0x0F);
        let d = dst.0.as_mut_ptr();
        for v in 0..4 {
            let packed = _mm512_loadu_si512(src.add(v * 64) as *const _);
            _mm512_store_si512(d.add(v * 64) as *mut _, _mm512_and_si512(packed, nibble));
            _mm512_store_si512(d.add((4 + v) * 64) as *mut _, _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble));
        }
    }

    /// Scratch buffers for unpacked 4-bit blocks: block `b` is unpacked two blocks ahead of its
    /// tile load, so the vector stores have reached the cache when the tile reads them.
    const RING: usize = 3;

    /// How many blocks ahead the weights are prefetched.
    const PREFETCH_BLOCKS: usize = 8;

    /// Where block `b`'s weights are, as 8-bit levels (for 4-bit weights, in the ring).
    ///
    /// # Safety
    /// As [`tile`]'s, for block `b`; 4-bit blocks were unpacked by [`unpack`].
    unsafe fn weights<const FOUR: bool>(q: *const u8, b: usize, ring: &[Scratch; RING]) -> *const u8 {
        if FOUR {
            ring[b % RING].0.as_ptr()
        } else {
            q.add(b * LANES * BLOCK)
        }
    }

    /// Starts block `b`'s tile multiply in slot `b % 2`: its tokens' levels are `N` rows of 32
    /// bytes at `lv + b * N * 32`.
    ///
    /// # Safety
    /// As [`tile`]'s, for block `b`.
    unsafe fn start<const N: usize, const FOUR: bool>(q: *const u8, lv: *const i8, b: usize, ring: &[Scratch; RING]) {
        let weights = weights::<FOUR>(q, b, ring);
        let acts = lv.add(b * N * BLOCK);
        if b.is_multiple_of(2) {
            multiply!(0, 2, 4, weights, acts, BLOCK);
        } else {
            multiply!(1, 3, 5, weights, acts, BLOCK);
        }
    }

    /// Runs `$body` with `$n` bound to each token index below `N`, unrolled, so the
    /// accumulators stay in registers.
    macro_rules! each_token {
        ($n:ident, $body:block) => {
            each_token!(@ $n, $body, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
        };
        (@ $n:ident, $body:block, $($i:literal)*) => {
            $(if $i < N {
                let $n: usize = $i;
                $body
            })*
        };
    }

    /// `N` tokens against the group, two blocks in flight: block `b + 1`'s tile multiply runs
    /// while block `b`'s sums are scaled.
    ///
    /// # Safety
    /// The CPU has AMX-INT8 and AVX-512 F and BW, the process holds the tile state, and the views
    /// hold the lengths [`super::tile`] asserts.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn tile<const N: usize, const FOUR: bool>(w: &GroupView<'_>, a: &ActsView<'_>, out: &mut [f32]) {
        configure(N);
        let q = w.quants.as_ptr();
        let lv = a.levels.as_ptr();
        let mut ring = [Scratch([0; LANES * BLOCK]), Scratch([0; LANES * BLOCK]), Scratch([0; LANES * BLOCK])];
        let mut sums = [Sums([0; super::TOKENS * LANES]), Sums([0; super::TOKENS * LANES])];
        let mut facc = [_mm512_setzero_ps(); N];
        let four_bytes = LANES * BLOCK / 2;
        if FOUR {
            for b in 0..w.blocks.min(2) {
                unpack(q.add(b * four_bytes), &mut ring[b % RING]);
            }
        }
        start::<N, FOUR>(q, lv, 0, &ring);
        let block_bytes = if FOUR { four_bytes } else { LANES * BLOCK };
        for b in 0..w.blocks {
            // The weights stream from memory once per step: ask for them well ahead (past the
            // group's end too, where the next group's weights follow; a prefetch never faults).
            let ahead = q.wrapping_add((b + PREFETCH_BLOCKS) * block_bytes);
            for line in (0..block_bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line) as *const i8);
            }
            if FOUR && b + 2 < w.blocks {
                unpack(q.add((b + 2) * four_bytes), &mut ring[(b + 2) % RING]);
            }
            if b + 1 < w.blocks {
                start::<N, FOUR>(q, lv, b + 1, &ring);
            }
            let slot = b % 2;
            let dst = sums[slot].0.as_mut_ptr();
            if slot == 0 {
                store!(0, dst);
            } else {
                store!(1, dst);
            }
            let dots = sums[slot].0.as_ptr();
            let scale = _mm512_cvtph_ps(_mm256_loadu_si256(w.scale.as_ptr().add(b * LANES) as *const __m256i));
            let min = match w.min {
                Mins::Stored(m) => _mm512_cvtph_ps(_mm256_loadu_si256(m.as_ptr().add(b * LANES) as *const __m256i)),
                Mins::Scaled(_) => _mm512_setzero_ps(),
            };
            let (sum, act_scale) = (a.sum.as_ptr(), a.scale.as_ptr());
            each_token!(n, {
                let dot = _mm512_cvtepi32_ps(_mm512_load_si512(dots.add(n * LANES) as *const _));
                let at = n * w.blocks + b;
                let t2 = match w.min {
                    Mins::Stored(_) => _mm512_fmadd_ps(scale, dot, _mm512_mul_ps(min, _mm512_set1_ps(*sum.add(at)))),
                    Mins::Scaled(o) => _mm512_mul_ps(scale, _mm512_add_ps(dot, _mm512_set1_ps(o * *sum.add(at)))),
                };
                facc[n] = _mm512_fmadd_ps(_mm512_set1_ps(*act_scale.add(at)), t2, facc[n]);
            });
        }
        for (n, acc) in facc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(n * LANES), *acc);
        }
    }
}
