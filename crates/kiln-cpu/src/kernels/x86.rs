//! x86-64 kernels: AVX-512 VNNI (16-row panels, a row per lane, `vpdpbusd`; the K-quants one
//! block per register) and AVX2 (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K on the same panels,
//! 8 rows a register, `vpmaddubsw`; Q5_K one block per 256-bit register). Each computes the
//! same integer sums as [`super::scalar`]; the block layouts are described in
//! `kiln_formats::gguf::quant`.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes. Weights that are unsigned as stored
//! (4-bit nibbles, Q6_K's 6-bit values) go in as they are; an offset (Q4_0's 8, Q6_K's 32)
//! or the sign of Q8_0 (stored `q ^ 0x80`, i.e. `q + 128`) is taken out by starting the
//! integer accumulator at `-offset * sum(activations)`, itself one `vpdpbusd` per token.
//! With AVX2, `vpmaddubsw`'s 16-bit pairs would overflow on `q + 128`, so Q8_0 goes back to
//! its sign and multiplies `|q|` by the activations with `q`'s sign, as Q6_K does (its
//! 16-value groups' scales differ, so no block offset serves it); Q4_0 and Q5_0 start their
//! sums at the activations' block offsets as AVX-512 does.
#![allow(clippy::needless_range_loop)] // tiles are indexed by row and token, as the math is written

use std::arch::x86_64::*;

use super::{scalar, ActView, Fmt, Tile, TileFn};

#[inline(always)]
unsafe fn ld16(p: *const u8) -> i32 {
    // SAFETY: the caller passes a readable 2-byte location.
    i32::from(unsafe { p.cast::<u16>().read_unaligned() })
}

#[inline(always)]
unsafe fn ld32(p: *const u8) -> i32 {
    // SAFETY: the caller passes a readable 4-byte location.
    unsafe { p.cast::<i32>().read_unaligned() }
}

/// Generates the `TileFn` for a kernel `k::<R, C>(w, rb, a, t0, r0, out)`, running it on
/// 4x4 tiles where it can and on 4x1, 1x4 or 1x1 pieces at the edges.
macro_rules! tiles {
    ($name:ident, $k:ident) => {
        unsafe fn $name(w: *const u8, rb: usize, nr: usize, a: &ActView, nt: usize, o: &mut Tile) {
            // SAFETY: the `TileFn` contract: `nr` rows at `w`, `nt` tokens in `a`, the CPU
            // has the features (checked by `Isa::detect`).
            unsafe {
                if nr == 4 {
                    if nt == 4 {
                        $k::<4, 4>(w, rb, a, 0, 0, o);
                    } else {
                        for t in 0..nt {
                            $k::<4, 1>(w, rb, a, t, 0, o);
                        }
                    }
                } else {
                    for r in 0..nr {
                        if nt == 4 {
                            $k::<1, 4>(w.add(r * rb), rb, a, 0, r, o);
                        } else {
                            for t in 0..nt {
                                $k::<1, 1>(w.add(r * rb), rb, a, t, r, o);
                            }
                        }
                    }
                }
            }
        }
    };
}

/// The AVX-512 VNNI tile kernel for a format.
pub(super) fn tile_fn_avx512(fmt: Fmt) -> TileFn {
    match fmt {
        Fmt::Q4_0 => q4_0_512_panels,
        Fmt::Q4_1 => q4_1_512_panels,
        Fmt::Q5_0 => q5_0_512_panels,
        Fmt::Q8_0 => q8_0_512_panels,
        Fmt::Q4_K => q4_k_512_tiles,
        Fmt::Q5_K => q5_k_512_tiles,
        Fmt::Q6_K => q6_k_512_tiles,
    }
}

/// The AVX2 tile kernel for a format.
pub(super) fn tile_fn_avx2(fmt: Fmt) -> TileFn {
    match fmt {
        Fmt::Q4_0 => q4_0_256_panels,
        Fmt::Q4_1 => q4_1_256_panels,
        Fmt::Q5_0 => q5_0_256_panels,
        Fmt::Q8_0 => q8_0_256_panels,
        Fmt::Q4_K => q4_k_256_panels,
        Fmt::Q5_K => q5_k_256_tiles,
        Fmt::Q6_K => q6_k_256_panels,
    }
}

tiles!(q4_k_512_tiles, q4_k_512);
tiles!(q5_k_512_tiles, q5_k_512);
tiles!(q6_k_512_tiles, q6_k_512);
tiles!(q5_k_256_tiles, q5_k_256);

/// How far ahead of the current block a kernel asks for weight bytes. Decoding streams
/// every weight once from DRAM; the hardware prefetchers alone leave half the bandwidth
/// unused on the 4 interleaved row streams of a tile. For panels, 4 KiB ahead (about 12
/// panel blocks) rather than 1: refinement's 5 candidates 0.59 -> 0.49 s, one 0.32 -> 0.28 s
/// (`kiln profile --batch-ratio 5 --tokens 96 --threads 2`, medians of 6 alternated runs;
/// 8 and 16 KiB no better).
const PREFETCH: usize = 4096;

/// Into every cache level (`T0`). Non-temporal prefetches (`NTA`, kept from 4aa6abd to
/// 2026-12-04 for sparing the KV cache a few percent on an earlier machine) halve the
/// bandwidth on the 2-core Intel Xeon of 2026-12-04: decode 108 -> 207 tok/s on the default
/// model, 22 -> 42-51 on a Qwen2.5-0.5B-shaped Q8_0 file of 529 MB (twice its 260 MB L3),
/// refinement's one candidate 0.724 -> 0.253 s (docs/PERF.md, "Prefetching into the caches").
#[inline(always)]
fn prefetch_ahead(p: *const u8) {
    // SAFETY: a prefetch never faults, whatever the address; `wrapping_add` keeps the
    // pointer arithmetic defined.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH).cast()) }
}

/// [`prefetch_ahead`] of every cache line of a panel block of `bytes` at `base`.
#[inline(always)]
fn prefetch_block(base: *const u8, bytes: usize) {
    for c in 0..bytes.div_ceil(64) {
        prefetch_ahead(base.wrapping_add(64 * c));
    }
}

// ---------------------------------------------------------------- AVX-512 VNNI

/// Quantizes rows to 8-bit blocks; bit-identical to [`scalar::quantize_row`] for finite values.
///
/// # Safety
/// The CPU has AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub(super) unsafe fn quantize_avx512(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let nb = (x.len() / 32).min(qs.len() / 32).min(d.len()).min(s.len());
    let whole = nb / 16 * 16;
    for b0 in (0..whole).step_by(16) {
        // SAFETY: blocks `b0..b0 + 16` are inside all four slices (`whole <= nb`).
        unsafe { quantize_16_blocks(x, qs, d, s, b0) };
    }
    for b in whole..nb {
        // SAFETY: block `b` is inside all four slices (`nb` is their common block count).
        unsafe {
            let x0 = _mm512_loadu_ps(x.as_ptr().add(32 * b));
            let x1 = _mm512_loadu_ps(x.as_ptr().add(32 * b + 16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
            let db = amax / 127.0;
            let id = if db > 0.0 && (1.0 / db).is_finite() {
                1.0 / db
            } else {
                0.0
            };
            let vid = _mm512_set1_ps(id);
            let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, vid));
            let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, vid));
            let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            let p = qs.as_mut_ptr().add(32 * b);
            _mm_storeu_si128(p.cast(), _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(p.add(16).cast(), _mm512_cvtepi32_epi8(q1));
            let ds = _mm_cvtph_ps(_mm_cvtps_ph::<0>(_mm_set_ps(0.0, 0.0, db * sum as f32, db)));
            d[b] = _mm_cvtss_f32(ds);
            s[b] = _mm_cvtss_f32(_mm_movehdup_ps(ds));
        }
    }
}

/// `op` of two shuffles of `a` and `b` (`LO` and `HI` pick two of `a`'s then two of `b`'s):
/// by 128-bit chunks (`CHUNKS`, `_mm512_shuffle_f32x4`) or within each chunk
/// (`_mm512_shuffle_ps`). A step of the tree below.
#[inline]
#[target_feature(enable = "avx512f")]
fn step<const CHUNKS: bool, const LO: i32, const HI: i32>(
    a: __m512,
    b: __m512,
    op: impl Fn(__m512, __m512) -> __m512,
) -> __m512 {
    if CHUNKS {
        op(
            _mm512_shuffle_f32x4::<LO>(a, b),
            _mm512_shuffle_f32x4::<HI>(a, b),
        )
    } else {
        op(_mm512_shuffle_ps::<LO>(a, b), _mm512_shuffle_ps::<HI>(a, b))
    }
}

/// The first step of a tree that sums (or takes the maximum of) the 16 lanes of 16 vectors
/// at once: for two vectors, lane i with lane i + 8 (`a`'s in the low half, `b`'s in the
/// high half).
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn tree_halves(a: __m512, b: __m512, op: impl Fn(__m512, __m512) -> __m512) -> __m512 {
    step::<true, 0b01_00_01_00, 0b11_10_11_10>(a, b, op)
}

/// The second step, on two [`tree_halves`]: chunk 0 of each vector with its chunk 1 (lane i
/// with i + 4), so that 128-bit chunk k holds vector k's four partial lanes.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn tree_quarters(x: __m512, y: __m512, op: impl Fn(__m512, __m512) -> __m512) -> __m512 {
    step::<true, 0b10_00_10_00, 0b11_01_11_01>(x, y, op)
}

/// The last steps, on four [`tree_quarters`] (of vectors 0-3, 4-7, 8-11, 12-15): within each
/// chunk 0 + 2 and 1 + 3, then the two; lane j of the result is vector j's whole.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn tree_last(c: [__m512; 4], op: impl Fn(__m512, __m512) -> __m512 + Copy) -> __m512 {
    let [c0, c1, c2, c3] = c;
    let f0 = step::<false, 0b01_00_01_00, 0b11_10_11_10>(c0, c1, op);
    let f1 = step::<false, 0b01_00_01_00, 0b11_10_11_10>(c2, c3, op);
    let r = step::<false, 0b10_00_10_00, 0b11_01_11_01>(f0, f1, op);
    // Lane 4k + m holds vector 4m + k.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_ps(order, r)
}

/// Lane `j` of the result: `op` over the 16 lanes of `v[j]`, by the tree above (the one the
/// attention's scores sum by; exact for a maximum or integer sums, whatever the order).
#[inline]
#[target_feature(enable = "avx512f")]
fn across_16(v: &[__m512; 16], op: impl Fn(__m512, __m512) -> __m512 + Copy) -> __m512 {
    let quarters: [__m512; 4] = core::array::from_fn(|qi| {
        let x = tree_halves(v[4 * qi], v[4 * qi + 1], op);
        let y = tree_halves(v[4 * qi + 2], v[4 * qi + 3], op);
        tree_quarters(x, y, op)
    });
    tree_last(quarters, op)
}

/// [`quantize_avx512`] of blocks `b0..b0 + 16` at once: the same operations on every value
/// and block (the maximum and the integer sum are exact in any order, the scale's division
/// and the f16 roundings lane by lane), with the two sums across each block's lanes done for
/// 16 blocks together instead of one by one. For finite values the results are the scalar
/// reference's bit for bit; a NaN may reach the scale here where the one-block tree left it
/// out (`max` keeps its second operand when either is NaN), as neither matches the scalar
/// code's `f32::max`, which ignores NaN.
///
/// # Safety
/// The CPU has AVX-512 F and BW; blocks `b0..b0 + 16` are inside all four slices.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn quantize_16_blocks(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], b0: usize) {
    // SAFETY: the caller's; every access is inside blocks `b0..b0 + 16`.
    unsafe {
        let px = x.as_ptr().add(32 * b0);
        let xs: [[__m512; 2]; 16] = core::array::from_fn(|j| {
            [
                _mm512_loadu_ps(px.add(32 * j)),
                _mm512_loadu_ps(px.add(32 * j + 16)),
            ]
        });
        let m: [__m512; 16] = core::array::from_fn(|j| {
            _mm512_max_ps(_mm512_abs_ps(xs[j][0]), _mm512_abs_ps(xs[j][1]))
        });
        let amax = across_16(&m, |a, b| _mm512_max_ps(a, b));
        let db = _mm512_div_ps(amax, _mm512_set1_ps(127.0));
        // 1 / db where db > 0 and that is finite, else 0 (the scalar reference's rule).
        let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(db, _mm512_setzero_ps());
        let inv = _mm512_div_ps(_mm512_set1_ps(1.0), db);
        let finite = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(inv, _mm512_set1_ps(f32::INFINITY));
        let id = _mm512_maskz_mov_ps(positive & finite, inv);
        let pq = qs.as_mut_ptr().add(32 * b0);
        let sums: [__m512; 16] = core::array::from_fn(|j| {
            let vid = _mm512_permutexvar_ps(_mm512_set1_epi32(j as i32), id);
            let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(xs[j][0], vid));
            let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(xs[j][1], vid));
            _mm_storeu_si128(pq.add(32 * j).cast(), _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(pq.add(32 * j + 16).cast(), _mm512_cvtepi32_epi8(q1));
            _mm512_castsi512_ps(_mm512_add_epi32(q0, q1))
        });
        let sum = _mm512_castps_si512(across_16(&sums, |a, b| {
            _mm512_castsi512_ps(_mm512_add_epi32(
                _mm512_castps_si512(a),
                _mm512_castps_si512(b),
            ))
        }));
        let rounded = |v: __m512| _mm512_cvtph_ps(_mm512_cvtps_ph::<0>(v));
        _mm512_storeu_ps(d.as_mut_ptr().add(b0), rounded(db));
        _mm512_storeu_ps(
            s.as_mut_ptr().add(b0),
            rounded(_mm512_mul_ps(db, _mm512_cvtepi32_ps(sum))),
        );
    }
}

/// `-k * (sums of each 4 activation bytes)`: the start of an accumulator that takes an
/// offset `k` off every weight.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn neg_offset(k: i8, av: __m512i) -> __m512i {
    let z = _mm512_setzero_si512();
    _mm512_sub_epi32(z, _mm512_dpbusd_epi32(z, _mm512_set1_epi8(k), av))
}

/// `$f::<N, $c>(args)` for each group `$g` of at most 4 of `$c` tokens (`$g` its first), `N`
/// the group's token count as a constant: the last group's by a `match`, so that each count
/// gets code of its own.
macro_rules! by_groups_of_4 {
    ($c:ident, $g:ident, $f:ident($($arg:expr),*)) => {
        for $g in (0..$c).step_by(4) {
            match $c - $g {
                1 => $f::<1, $c>($($arg),*),
                2 => $f::<2, $c>($($arg),*),
                3 => $f::<3, $c>($($arg),*),
                _ => $f::<4, $c>($($arg),*),
            }
        }
    };
}

/// The products of block `$b` of a panel with the tokens `$tp`, added into `$acc` (a
/// register a token; `C`, `$tp` and `$acc` as in [`q4_1_panel`] and [`offset_panel`]), the
/// block's scales and 8 registers of values given by `$decode` (a block's base pointer to
/// them) and each token's integer sum starting at `$start(b, t)` (a vector). A
/// macro, written out where it is used, not a function: at 8 tokens the compiler kept such a
/// function (`#[inline]`; `#[inline(always)]` is not allowed beside `#[target_feature]`) as a
/// call taking its accumulators through memory, and the products of 8 tokens ran 1.04x to
/// 1.10x as fast written out (docs/PERF.md, fortieth session).
macro_rules! panel_block {
    ($w:expr, $bytes:expr, $b:expr, $tp:expr, $acc:expr, $decode:expr, $start:expr) => {{
        let base = $w.add($b * $bytes);
        prefetch_block(base, $bytes);
        let (dw, wk): (__m512, [__m512i; 8]) = $decode(base);
        for t in 0..C {
            let sum = panel_sum(&wk, $tp[t].0.add(32 * $b), $start($b, t));
            let da = _mm512_set1_ps(*$tp[t].1.add($b));
            $acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, da), $acc[t]);
        }
    }};
}

/// A Q4_1 panel (16 rows in [`super::repack`]'s layout) against `C` tokens, a row per lane:
/// for each block, 4 registers of nibbles decode once into 8 of values (`4k..4k + 4` of
/// every row; low nibbles are values `0..16`, high ones `16..32`), then per token 8
/// `vpdpbusd` against the token's matching 4 values broadcast give the 16 rows' integer
/// sums, and one multiply-add applies the rows' and the token's scales, into one of two
/// accumulators (even and odd blocks: llama.cpp, which made the golden logits, also keeps
/// partial sums apart, in 8 lanes). The minimum's terms (`m * s` per block) go to their own
/// lanes and are added last, as llama.cpp's Q4_1 product does. A lane sees the same
/// operations whatever `C` is, so a token's result does not depend on how many share the
/// call.
///
/// Two blocks a turn, the even one into `acc[0]` and the odd one into `acc[1]`, every
/// accumulator in a register (at 8 tokens, 16 of them beside the block's 8 registers of
/// values), and the minimums' terms in a loop of their own after (the panel is then in L1).
/// Before, 5 to 8 tokens kept their accumulators in memory, a block at a time, and 8 went as
/// two passes of 4 over the panel where it is at most 16 KB or more tokens follow. In
/// registers 8 tokens ran 1.02x to 1.10x as fast as two passes of 4 (the block then a
/// function), and 1.04x to 1.10x as fast again with the block written out; 5 to 7 tokens 0.98x
/// to 1.06x as fast as the loop in memory (old and new alternated in one process, 7 or 9 pairs,
/// 1536x576, 576x1536, 4096x576 and 49152x576, one and two threads; docs/PERF.md, fortieth
/// session).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_1_panel<const C: usize>(w: *const u8, a: &ActView, o: &mut Tile) {
    let tp: [_; C] = core::array::from_fn(|t| a.ptrs(t));
    let [mut even, mut odd] = [[_mm512_setzero_ps(); C]; 2];
    let mut mins = [_mm512_setzero_ps(); C];
    // SAFETY: every weight access is inside the panel (`nb` blocks of 16 x 20 bytes), every
    // activation access inside a token's `nb` blocks.
    unsafe {
        let decode = |base: *const u8| {
            let dm = _mm512_loadu_si512(base.cast());
            (
                _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm)),
                nibbles(base.add(64)),
            )
        };
        let zero = |_, _| _mm512_setzero_si512();
        let mut b = 0;
        while b < a.nb {
            panel_block!(w, 320, b, tp, even, decode, zero);
            if b + 1 < a.nb {
                panel_block!(w, 320, b + 1, tp, odd, decode, zero);
            }
            b += 2;
        }
        for b in 0..a.nb {
            let dm = _mm512_loadu_si512(w.add(b * 320).cast());
            let mw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dm)));
            for t in 0..C {
                mins[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*tp[t].2.add(b)), mins[t]);
            }
        }
        for t in 0..C {
            let v = _mm512_add_ps(even[t], odd[t]);
            store_lanes(_mm512_add_ps(v, mins[t]), o, t);
        }
    }
}

/// The 4-bit values of a 16-row panel block (four registers of 64 bytes at `p`, each byte
/// two values) as 8 registers of bytes: register `q` the low nibbles of register `q`
/// (values `4q..4q + 4` of every row), register `4 + q` its high nibbles (`16 + 4q..`).
///
/// # Safety
/// `p` points to 256 readable bytes; the CPU has AVX-512 F and BW.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> [__m512i; 8] {
    // SAFETY: the caller passes 4 x 64 readable bytes.
    unsafe {
        let m4 = _mm512_set1_epi8(0x0F);
        let x: [__m512i; 4] = core::array::from_fn(|q| _mm512_loadu_si512(p.add(64 * q).cast()));
        core::array::from_fn(|k| {
            if k < 4 {
                _mm512_and_si512(x[k], m4)
            } else {
                _mm512_and_si512(_mm512_srli_epi16::<4>(x[k - 4]), m4)
            }
        })
    }
}

/// A format of [`offset_panel`]: 32-blocks whose values are stored unsigned, `K` above their
/// true value, with one f16 scale a block (Q8_0: `K` 128; Q4_0: 8; Q5_0: 16), and how one
/// block of a 16-row panel ([`super::repack`]'s layout) decodes.
trait OffsetPanel {
    /// Bytes of one block of a panel.
    const BYTES: usize;
    /// The activations' block offset (`-128` times the block's sum of values,
    /// [`super::QAct::offsets`]) shifted right by this is `-K` times the sum.
    const SHIFT: u32;
    /// Whether 5 to 8 tokens keep their accumulators in registers, two blocks a turn (see
    /// [`offset_panel`]).
    const IN_REGISTERS: bool = false;
    /// The 16 rows' scales, then 8 registers of stored values, register `k` holding values
    /// `4k..4k + 4` of every row.
    ///
    /// # Safety
    /// `base` points to a whole block of a panel; the CPU has AVX-512 F, BW and F16C.
    unsafe fn decode(base: *const u8) -> (__m512, [__m512i; 8]);
}

/// Q8_0: 16 scales (f16), then 8 registers of values plus 128.
struct Q8Panel;
/// Q4_0: 16 scales, then Q4_1's 4 registers of nibbles (low: values `0..16`, high: `16..32`).
struct Q4Panel;
/// Q5_0: 16 scales, 16 dwords of high bits (bit `8j + k` is value `4k + j`'s), then the
/// nibbles as Q4_0's; a shift and a mask put each high bit beside its nibble (0 to 31).
struct Q5Panel;

impl OffsetPanel for Q8Panel {
    const BYTES: usize = 16 * 34;
    const SHIFT: u32 = 0;
    const IN_REGISTERS: bool = true;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn decode(base: *const u8) -> (__m512, [__m512i; 8]) {
        // SAFETY: the caller passes a whole block (32 + 8 x 64 bytes).
        unsafe {
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(base.cast()));
            let wk = core::array::from_fn(|k| _mm512_loadu_si512(base.add(32 + 64 * k).cast()));
            (dw, wk)
        }
    }
}

impl OffsetPanel for Q4Panel {
    const BYTES: usize = 16 * 18;
    const SHIFT: u32 = 4;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn decode(base: *const u8) -> (__m512, [__m512i; 8]) {
        // SAFETY: the caller passes a whole block (32 + 4 x 64 bytes).
        unsafe {
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(base.cast()));
            (dw, nibbles(base.add(32)))
        }
    }
}

impl OffsetPanel for Q5Panel {
    const BYTES: usize = 16 * 22;
    const SHIFT: u32 = 3;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn decode(base: *const u8) -> (__m512, [__m512i; 8]) {
        // SAFETY: the caller passes a whole block (32 + 64 + 4 x 64 bytes).
        unsafe {
            let m16 = _mm512_set1_epi8(0x10);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(base.cast()));
            let h = _mm512_loadu_si512(base.add(32).cast());
            // Register k's high bits: bit 8j + k of each dword moved to bit 8j + 4.
            let hk = [
                _mm512_and_si512(_mm512_slli_epi32::<4>(h), m16),
                _mm512_and_si512(_mm512_slli_epi32::<3>(h), m16),
                _mm512_and_si512(_mm512_slli_epi32::<2>(h), m16),
                _mm512_and_si512(_mm512_slli_epi32::<1>(h), m16),
                _mm512_and_si512(h, m16),
                _mm512_and_si512(_mm512_srli_epi32::<1>(h), m16),
                _mm512_and_si512(_mm512_srli_epi32::<2>(h), m16),
                _mm512_and_si512(_mm512_srli_epi32::<3>(h), m16),
            ];
            let lo = nibbles(base.add(96));
            (dw, core::array::from_fn(|k| _mm512_or_si512(lo[k], hk[k])))
        }
    }
}

/// A panel of an [`OffsetPanel`] format against `C` tokens, a row per lane as in
/// [`q4_1_panel`]: each lane's integer sum starts at the token's block offset scaled to the
/// format's `K`, so the 8 `vpdpbusd` of the stored values leave the exact product of the true
/// ones; even and odd blocks in two accumulators. With `F::IN_REGISTERS` (Q8_0) and 5 to 8
/// tokens, two blocks a turn with every accumulator in a register, as [`q4_1_panel`]: the
/// same operations in the same order. Q8_0 ran so 1.02x to 1.08x as fast at 5 to 8 tokens;
/// Q4_0 and Q5_0 0.94x to 1.04x, and Q8_0 at 4 tokens 0.94x on the 49152x576 output head, so
/// those keep the loop (7 or 9 alternated pairs in one process, one and two threads;
/// docs/PERF.md, fortieth session).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn offset_panel<const C: usize, F: OffsetPanel>(w: *const u8, a: &ActView, o: &mut Tile) {
    let tp: [_; C] = core::array::from_fn(|t| a.ptrs(t));
    let off: [*const i32; C] = core::array::from_fn(|t| a.offsets(t));
    let mut acc = [[_mm512_setzero_ps(); C]; 2];
    // SAFETY: every weight access is inside the panel (`nb` blocks of `F::BYTES`), every
    // activation access inside a token's `nb` blocks (the caller checked the offsets are
    // there).
    unsafe {
        let start = |b: usize, t: usize| _mm512_set1_epi32(*off[t].add(b) >> F::SHIFT);
        if F::IN_REGISTERS && C >= 5 {
            let [even, odd] = &mut acc;
            let mut b = 0;
            while b < a.nb {
                panel_block!(w, F::BYTES, b, tp, even, F::decode, start);
                if b + 1 < a.nb {
                    panel_block!(w, F::BYTES, b + 1, tp, odd, F::decode, start);
                }
                b += 2;
            }
        } else {
            for b in 0..a.nb {
                let acc = &mut acc[b % 2];
                panel_block!(w, F::BYTES, b, tp, acc, F::decode, start);
            }
        }
        for t in 0..C {
            store_lanes(_mm512_add_ps(acc[0][t], acc[1][t]), o, t);
        }
    }
}

/// The 16 rows' integer sums of one block: `start` plus 8 `vpdpbusd` of the weight
/// registers (register `k` holding values `4k..4k + 4` of every row) against the token's
/// values `4k..4k + 4` broadcast, in two chains of 4.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn panel_sum(wk: &[__m512i; 8], act: *const i8, start: __m512i) -> __m512i {
    // SAFETY: the caller passes a block of 32 readable values.
    unsafe {
        let mut s0 = start;
        let mut s1 = _mm512_setzero_si512();
        for k in 0..4 {
            let a0 = _mm512_set1_epi32(ld32(act.add(4 * k).cast()));
            let a1 = _mm512_set1_epi32(ld32(act.add(16 + 4 * k).cast()));
            s0 = _mm512_dpbusd_epi32(s0, wk[k], a0);
            s1 = _mm512_dpbusd_epi32(s1, wk[k + 4], a1);
        }
        _mm512_add_epi32(s0, s1)
    }
}

/// The 16 lanes of `v` (a panel's rows) into token `t`'s row of the tile.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn store_lanes(v: __m512, o: &mut Tile, t: usize) {
    // SAFETY: a tile's token row holds 16 f32.
    unsafe { _mm512_storeu_ps(o[t].as_mut_ptr(), v) };
}

/// A panel of at most this many bytes is read by halves even as its only tile (decode of 8
/// rows), the second pass expected to find it in L1 (a third of the 48 KB L1 of the machine
/// it was measured on; not profiled).
const HALVES_PANEL_BYTES: usize = 16 * 1024;

/// A tile function over a panel kernel: a whole panel (16 rows in [`super::repack`]'s
/// layout) against up to 8 tokens (with `halves`, eight as two calls of four), or fewer
/// rows (those after the last whole panel, in the file's layout) through the scalar code.
macro_rules! panels {
    ($name:ident, $panel:ident $(<$f:ty>)?, $fmt:ident, $offsets:expr, $halves:expr) => {
        unsafe fn $name(w: *const u8, rb: usize, nr: usize, a: &ActView, nt: usize, o: &mut Tile) {
            // SAFETY: the `TileFn` contract: `nr` rows at `w` (a panel if 16), `nt` tokens in
            // `a`, the CPU has the features (checked by `Isa::detect`).
            unsafe {
                if nr < super::PANEL {
                    return scalar::tile(Fmt::$fmt, w, rb, nr, a, nt, o);
                }
                if $offsets && a.offsets(0).is_null() {
                    // The caller kept no offsets (`QAct::offsets`): computed here, so the
                    // results are the same.
                    let mut buf = Vec::new();
                    let v = a.with_offsets(nt, &mut buf);
                    return $name(w, rb, nr, &v, nt, o);
                }
                // With `$halves` (AVX2's Q4_0, Q5_0, Q4_K and Q6_K panels), a tile of eight
                // tokens goes as two of four against the same panel (the second pass expected
                // to find it in L1); a lane's operations do not depend on how many tokens share
                // a call, so the results are the same. It does so when more tokens follow the
                // tile (a prompt's pass), or when the panel is small enough for the second pass
                // to be expected in L1 (HALVES_PANEL_BYTES). Measured when AVX-512's Q4_1 went
                // so (it takes eight in registers now, `q4_1_panel`): 8 rows of decode of the
                // default model 2.6% faster over 8 alternated pairs; with every panel by
                // halves, 8 rows of a Qwen2.5-0.5B-shaped Q4_1 file ran 7% slower, with its
                // down product's 48 KB panels left whole, 1.003x over 5 pairs. (`gemm_rows`
                // makes tiles of eight while more follow, so fewer than eight are never split.)
                let halves = $halves && (a.tokens() > nt || rb * super::PANEL <= HALVES_PANEL_BYTES);
                match nt {
                    1 => $panel::<1 $(, $f)?>(w, a, o),
                    2 => $panel::<2 $(, $f)?>(w, a, o),
                    3 => $panel::<3 $(, $f)?>(w, a, o),
                    4 => $panel::<4 $(, $f)?>(w, a, o),
                    5 => $panel::<5 $(, $f)?>(w, a, o),
                    6 => $panel::<6 $(, $f)?>(w, a, o),
                    7 => $panel::<7 $(, $f)?>(w, a, o),
                    _ if halves => {
                        $panel::<4 $(, $f)?>(w, a, o);
                        let mut rest: Tile = [[0.0; super::PANEL]; 8];
                        $panel::<4 $(, $f)?>(w, &a.skip(4), &mut rest);
                        o[4..8].copy_from_slice(&rest[..4]);
                    }
                    _ => $panel::<8 $(, $f)?>(w, a, o),
                }
            }
        }
    };
}

// Q4_1 takes 8 tokens in one pass (AVX-512: `q4_1_panel`'s accumulators in registers; on
// AVX2 `q4_1_panel_256` groups tokens itself); it went by halves before, which had run a
// prompt's pass faster than its loop with accumulators in memory (`kiln bench -p 512 -g 16`,
// prefill 2,312 / 2,343 tok/s against 2,021 / 2,060 on the default model). The offset formats
// do not go by halves: a SmolLM2-135M Q8_0 file ran 13% slower so (8 rows of decode).
panels!(q4_0_512_panels, offset_panel<Q4Panel>, Q4_0, true, false);
panels!(q4_1_512_panels, q4_1_panel, Q4_1, false, false);
panels!(q4_1_256_panels, q4_1_panel_256, Q4_1, false, false);
panels!(q8_0_256_panels, q8_0_panel_256, Q8_0, false, false);
panels!(q4_0_256_panels, offset_panel_256<Q4Panel>, Q4_0, true, true);
panels!(q5_0_256_panels, offset_panel_256<Q5Panel>, Q5_0, true, true);
panels!(q4_k_256_panels, q4_k_panel_256, Q4_K, false, true);
panels!(q6_k_256_panels, q6_k_panel_256, Q6_K, false, true);
panels!(q5_0_512_panels, offset_panel<Q5Panel>, Q5_0, true, false);
panels!(q8_0_512_panels, offset_panel<Q8Panel>, Q8_0, true, false);

/// A Q4_K/Q5_K super-block's `d * scale` (8 lanes of the result) and `dmin * min` (8).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn k_scales_512(blk: *const u8) -> (__m512, __m256) {
    // SAFETY: the caller passes a readable super-block header (16 bytes).
    unsafe {
        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(ld32(blk)));
        let sb = std::slice::from_raw_parts(blk.add(4), 12);
        let (sc, m) = scalar::k_scales(sb);
        let sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(sc.as_ptr().cast())));
        let m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(m.as_ptr().cast())));
        let d = _mm256_broadcastss_ps(dd);
        let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
        (
            _mm512_castps256_ps512(_mm256_mul_ps(sc, d)),
            _mm256_mul_ps(m, dmin),
        )
    }
}

/// Lane `i` is lane `2j + i / 8` of `v`: sub-blocks `2j` and `2j + 1`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pick_pair(v: __m512, j: usize) -> __m512 {
    let (lo, hi) = (2 * j as i32, 2 * j as i32 + 1);
    let idx = _mm512_set_epi32(
        hi, hi, hi, hi, hi, hi, hi, hi, lo, lo, lo, lo, lo, lo, lo, lo,
    );
    _mm512_permutexvar_ps(idx, v)
}

/// The Q4_K and Q5_K kernel (`HIGH`: Q5_K's fifth bit).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn qk_512<const R: usize, const C: usize, const HIGH: bool>(
    w: *const u8,
    rb: usize,
    a: &ActView,
    t0: usize,
    r0: usize,
    out: &mut Tile,
) {
    let nsb = a.nb / 8;
    let (bytes, qoff) = if HIGH { (176, 48) } else { (144, 16) };
    let tp: [_; C] = core::array::from_fn(|t| a.ptrs(t0 + t));
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mask = _mm512_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    // SAFETY: rows and tokens in range per the `TileFn` contract; super-block `sb` is
    // below `nsb`.
    unsafe {
        for sb in 0..nsb {
            let mut wsc = [_mm512_setzero_ps(); R];
            let mut wm = [_mm256_setzero_ps(); R];
            let mut blk = [w; R];
            for r in 0..R {
                blk[r] = w.add(r * rb + sb * bytes);
                for l in (0..bytes).step_by(64) {
                    prefetch_ahead(blk[r].wrapping_add(l));
                }
                (wsc[r], wm[r]) = k_scales_512(blk[r]);
            }
            let mut ad = [_mm512_setzero_ps(); C];
            for t in 0..C {
                ad[t] = _mm512_castps256_ps512(_mm256_loadu_ps(tp[t].1.add(8 * sb)));
                let sa = _mm256_loadu_ps(tp[t].2.add(8 * sb));
                for r in 0..R {
                    acc[r][t] = _mm512_mask3_fnmadd_ps(
                        _mm512_castps256_ps512(wm[r]),
                        _mm512_castps256_ps512(sa),
                        acc[r][t],
                        0x00FF,
                    );
                }
            }
            for j in 0..4 {
                let mut wq = [_mm512_setzero_si512(); R];
                let mut ws = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    let v = _mm256_loadu_si256(blk[r].add(qoff + 32 * j).cast());
                    let x = _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(v),
                        _mm256_srli_epi16::<4>(v),
                    );
                    wq[r] = _mm512_and_si512(x, mask);
                    if HIGH {
                        let h = _mm256_loadu_si256(blk[r].add(16).cast());
                        let c0 = _mm_cvtsi32_si128(2 * j as i32);
                        let c1 = _mm_cvtsi32_si128(2 * j as i32 + 1);
                        let h0 = _mm256_and_si256(_mm256_srl_epi16(h, c0), one);
                        let h1 = _mm256_and_si256(_mm256_srl_epi16(h, c1), one);
                        let hb = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h0), h1);
                        wq[r] = _mm512_or_si512(wq[r], _mm512_slli_epi16::<4>(hb));
                    }
                    ws[r] = pick_pair(wsc[r], j);
                }
                for t in 0..C {
                    let av = _mm512_loadu_si512(tp[t].0.add(256 * sb + 64 * j).cast());
                    let adj = pick_pair(ad[t], j);
                    for r in 0..R {
                        let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[r], av);
                        let sc = _mm512_mul_ps(ws[r], adj);
                        acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc[r][t]);
                    }
                }
            }
        }
        for r in 0..R {
            for t in 0..C {
                out[t0 + t][r0 + r] = _mm512_reduce_add_ps(acc[r][t]);
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_k_512<const R: usize, const C: usize>(
    w: *const u8,
    rb: usize,
    a: &ActView,
    t0: usize,
    r0: usize,
    out: &mut Tile,
) {
    // SAFETY: forwarded.
    unsafe { qk_512::<R, C, false>(w, rb, a, t0, r0, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q5_k_512<const R: usize, const C: usize>(
    w: *const u8,
    rb: usize,
    a: &ActView,
    t0: usize,
    r0: usize,
    out: &mut Tile,
) {
    // SAFETY: forwarded.
    unsafe { qk_512::<R, C, true>(w, rb, a, t0, r0, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6_k_512<const R: usize, const C: usize>(
    w: *const u8,
    rb: usize,
    a: &ActView,
    t0: usize,
    r0: usize,
    out: &mut Tile,
) {
    let nsb = a.nb / 8;
    let tp: [_; C] = core::array::from_fn(|t| a.ptrs(t0 + t));
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mask = _mm512_set1_epi8(0x0F);
    let three = _mm512_set1_epi8(3);
    // Lane i of 64-value group k: scale 4k + i/4, activation block 2k + i/8.
    let idx16: [__m512i; 4] = core::array::from_fn(|k| {
        let k = k as i32;
        _mm512_set_epi32(
            4 * k + 3,
            4 * k + 3,
            4 * k + 3,
            4 * k + 3,
            4 * k + 2,
            4 * k + 2,
            4 * k + 2,
            4 * k + 2,
            4 * k + 1,
            4 * k + 1,
            4 * k + 1,
            4 * k + 1,
            4 * k,
            4 * k,
            4 * k,
            4 * k,
        )
    });
    // SAFETY: as in `qk_512`.
    unsafe {
        for sb in 0..nsb {
            let mut scf = [_mm512_setzero_ps(); R];
            let mut blk = [w; R];
            for r in 0..R {
                blk[r] = w.add(r * rb + sb * 210);
                for l in (0..210).step_by(64) {
                    prefetch_ahead(blk[r].wrapping_add(l));
                }
                let d = _mm_cvtph_ps(_mm_cvtsi32_si128(ld16(blk[r].add(208))));
                let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(blk[r].add(192).cast()));
                scf[r] = _mm512_mul_ps(_mm512_cvtepi32_ps(sc), _mm512_broadcastss_ps(d));
            }
            let ad: [__m512; C] = core::array::from_fn(|t| {
                _mm512_castps256_ps512(_mm256_loadu_ps(tp[t].1.add(8 * sb)))
            });
            for k in 0..4 {
                let (h, upper) = (k / 2, k % 2 == 1);
                let mut wq = [_mm512_setzero_si512(); R];
                let mut ws = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    let ql = _mm512_loadu_si512(blk[r].add(64 * h).cast());
                    let qh = _mm256_loadu_si256(blk[r].add(128 + 32 * h).cast());
                    let (lo, hb) = if upper {
                        (
                            _mm512_and_si512(_mm512_srli_epi16::<4>(ql), mask),
                            _mm512_inserti64x4::<1>(
                                _mm512_castsi256_si512(_mm256_srli_epi16::<4>(qh)),
                                _mm256_srli_epi16::<6>(qh),
                            ),
                        )
                    } else {
                        (
                            _mm512_and_si512(ql, mask),
                            _mm512_inserti64x4::<1>(
                                _mm512_castsi256_si512(qh),
                                _mm256_srli_epi16::<2>(qh),
                            ),
                        )
                    };
                    let hb = _mm512_slli_epi16::<4>(_mm512_and_si512(hb, three));
                    wq[r] = _mm512_or_si512(lo, hb);
                    ws[r] = _mm512_permutexvar_ps(idx16[k], scf[r]);
                }
                for t in 0..C {
                    let av = _mm512_loadu_si512(tp[t].0.add(256 * sb + 64 * k).cast());
                    let bias = neg_offset(32, av);
                    let adk = pick_pair(ad[t], k);
                    for r in 0..R {
                        let dot = _mm512_dpbusd_epi32(bias, wq[r], av);
                        let sc = _mm512_mul_ps(ws[r], adk);
                        acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc[r][t]);
                    }
                }
            }
        }
        for r in 0..R {
            for t in 0..C {
                out[t0 + t][r0 + r] = _mm512_reduce_add_ps(acc[r][t]);
            }
        }
    }
}

// ---------------------------------------------------------------- AVX2

/// Quantizes rows to 8-bit blocks; bit-identical to [`scalar::quantize_row`] for finite values.
///
/// # Safety
/// The CPU has AVX2 and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_avx2(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let nb = (x.len() / 32).min(qs.len() / 32).min(d.len()).min(s.len());
    let sign = _mm256_set1_ps(-0.0);
    // packs_epi32 then packs_epi16 leave the four 8-value groups interleaved by 128-bit lane.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..nb {
        // SAFETY: block `b` is inside all four slices (`nb` is their common block count).
        unsafe {
            let p = x.as_ptr().add(32 * b);
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
            let db = amax / 127.0;
            let id = if db > 0.0 && (1.0 / db).is_finite() {
                1.0 / db
            } else {
                0.0
            };
            let vid = _mm256_set1_ps(id);
            let q = v.map(|x| _mm256_cvtps_epi32(_mm256_mul_ps(x, vid)));
            let t = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let t = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t));
            let t = _mm_add_epi32(t, _mm_shuffle_epi32::<0b01_00_11_10>(t));
            let sum = _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32::<0b10_11_00_01>(t)));
            let w16 = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let w8 = _mm256_permutevar8x32_epi32(w16, order);
            _mm256_storeu_si256(qs.as_mut_ptr().add(32 * b).cast(), w8);
            let ds = _mm_cvtph_ps(_mm_cvtps_ph::<0>(_mm_set_ps(0.0, 0.0, db * sum as f32, db)));
            d[b] = _mm_cvtss_f32(ds);
            s[b] = _mm_cvtss_f32(_mm_movehdup_ps(ds));
        }
    }
}

/// The sum of a vector's 8 lanes: lane `i` with `i + 4`, then `0 + 2` and `1 + 3`, then the
/// two.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_1(p: *const u8) -> f32 {
    // SAFETY: the caller passes a readable 2-byte location.
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(unsafe { ld16(p) })))
}

/// Sums of pairs of i16 lanes into i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pairs(x: __m256i) -> __m256i {
    _mm256_madd_epi16(x, _mm256_set1_epi16(1))
}

/// Half `h` of a panel's results (rows `8h..8h + 8`) for `C` tokens into `o`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_half_256<const C: usize>(o: &mut Tile, h: usize, acc: &[__m256; C]) {
    for t in 0..C {
        // SAFETY: a tile row holds 16 floats, and `8h + 8 <= 16`.
        unsafe { _mm256_storeu_ps(o[t][8 * h..8 * h + 8].as_mut_ptr(), acc[t]) };
    }
}

/// A Q4_1 panel (16 rows in [`super::repack`]'s layout, as [`q4_1_panel`] reads it) against
/// `C` (at most 8) tokens with AVX2, both halves of 8 rows at once, a row per 32-bit lane.
/// For each block, each of the 8 registers of values of a half (`nibbles_256`, 4 values of
/// every row) meets the token's matching 4 values broadcast in one `vpmaddubsw`; the 8
/// results add up as 16-bit sums (each at most 8 x 2 x 15 x 127 = 30,480 in size, so none
/// overflows) and one `vpmaddwd` makes each row's 32-bit sum; then one multiply-add applies
/// the rows' and the token's scales, into one of two accumulators (even and odd blocks). The
/// minimum's terms (`m * s` per block) are summed in a loop of their own (the panel is then in
/// the L1 cache) and added last. So each row gets [`q4_1_panel`]'s floating-point operations
/// in its order (the integer sums are exact), and its results bit for bit; with one
/// accumulator the golden test's logits moved enough to turn a position whose two best tokens
/// are 0.306 apart in llama.cpp's logits. Where the tile kernels before it (4 rows by 4 tokens,
/// a row's block a register) took a `vpmaddubsw`, a `vpmaddwd`, a conversion and a
/// multiply-add for each row's 32 values, this takes one `vpmaddubsw` and one addition for 8
/// rows' 4 values, and the rest once for 8 rows' 32.
///
/// Tokens go by groups of at most 4 inside the loop over blocks: a group's 2 x 4 16-bit sums,
/// the halves' two registers and a broadcast take 11 of AVX2's 16 registers (the float
/// accumulators live in memory), and the second group finds the block in L1, its values
/// decoded again. Every row's operations are the same whatever `C` is and whichever group a
/// token is in, so a token's result does not depend on how many share the call
/// (`results_do_not_depend_on_the_batch`). Eight tokens so, rather than the block loop run
/// twice (once a group, the panel from L1 the second time) or by halves of 8 rows: the
/// products of an 8-token decode step of the default model's shapes ran 0.98x to 1.08x as
/// fast as before (1.02x or more in six of seven runs), of the Qwen2.5-0.5B shape's 1.01x and
/// 1.06x (`kernels` example, `step`, the two in alternation in one process, 1 and 2 threads;
/// a one-token control, which the change does not touch, moved 0.95x to 1.03x in the same
/// runs: docs/PERF.md, thirty-eighth session).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_panel_256<const C: usize>(w: *const u8, a: &ActView, o: &mut Tile) {
    let tp: [_; C] = core::array::from_fn(|t| a.ptrs(t));
    // SAFETY: every weight access is inside the panel (`nb` blocks of 16 x 20 bytes), every
    // activation access inside a token's `nb` blocks.
    unsafe {
        let mut acc = [[[_mm256_setzero_ps(); C]; 2]; 2];
        for b in 0..a.nb {
            let base = w.add(b * 320);
            prefetch_block(base, 320);
            let dw = [scales_256(base).0, scales_256(base.add(32)).0];
            // The group's token count a constant (a `match`, not `min`), so that each group's
            // code is made for its count: with the count known at run time only, 5 and 6
            // tokens cost what 8 did (`kernels` example, `batch`, one panel in the caches).
            // In the alternated `step` (weights from DRAM) 8 and 64 tokens moved within a
            // one-token control's spread (docs/PERF.md, thirty-eighth session).
            by_groups_of_4!(C, g, q4_1_group_256(base, b, g, &tp, &dw, &mut acc));
        }
        for h in 0..2 {
            let mut mins = [_mm256_setzero_ps(); C];
            for b in 0..a.nb {
                let (_, mw) = scales_256(w.add(b * 320 + 32 * h));
                for t in 0..C {
                    mins[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(*tp[t].2.add(b)), mins[t]);
                }
            }
            for t in 0..C {
                let v = _mm256_add_ps(acc[h][0][t], acc[h][1][t]);
                _mm256_storeu_ps(o[t][8 * h..].as_mut_ptr(), _mm256_add_ps(v, mins[t]));
            }
        }
    }
}

/// A group kernel's tokens: each one's [`ActView::ptrs`].
type TokenPtrs<const C: usize> = [(*const i8, *const f32, *const f32); C];
/// A group kernel's float accumulators: `[half][block parity][token]`.
type ParityAcc<const C: usize> = [[[__m256; C]; 2]; 2];

/// The float step every AVX2 group kernel ends a block with: each row's 32-bit sums of tokens
/// `g..g + N` (both halves) times the rows' and the token's scales, added into the
/// accumulators of block `b`'s parity, half by half and token by token.
///
/// # Safety
/// `b` is below the tokens' block count, `g + N <= C`, and the CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_into<const N: usize, const C: usize>(
    sums: &[[__m256i; N]; 2],
    b: usize,
    g: usize,
    tp: &TokenPtrs<C>,
    dw: &[__m256; 2],
    acc: &mut ParityAcc<C>,
) {
    for h in 0..2 {
        for t in 0..N {
            // SAFETY: the token's block `b` scale is inside its activations.
            let da = _mm256_set1_ps(unsafe { *tp[g + t].1.add(b) });
            let e = &mut acc[h][b % 2][g + t];
            *e = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[h][t]), _mm256_mul_ps(dw[h], da), *e);
        }
    }
}

/// Block `b` of a Q4_1 panel (at `base`) against tokens `g..g + N` of [`q4_1_panel_256`]'s
/// `C`: their 16-bit sums over the block's 8 registers of both halves, then each row's
/// scaled sum into the accumulators of the block's parity.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_group_256<const N: usize, const C: usize>(
    base: *const u8,
    b: usize,
    g: usize,
    tp: &TokenPtrs<C>,
    dw: &[__m256; 2],
    acc: &mut ParityAcc<C>,
) {
    let ones = _mm256_set1_epi16(1);
    // SAFETY: as [`q4_1_panel_256`]'s: the block is inside the panel, the tokens' block `b`
    // inside their activations.
    unsafe {
        let mut sums = [[_mm256_setzero_si256(); N]; 2];
        for k in 0..8 {
            let lo = nibbles_256(base.add(64 + 64 * (k % 4)), k >= 4);
            let hi = nibbles_256(base.add(64 + 64 * (k % 4) + 32), k >= 4);
            let at = if k < 4 { 4 * k } else { 16 + 4 * (k - 4) };
            for t in 0..N {
                let av = _mm256_set1_epi32(ld32(tp[g + t].0.add(32 * b + at).cast()));
                sums[0][t] = _mm256_add_epi16(sums[0][t], _mm256_maddubs_epi16(lo, av));
                sums[1][t] = _mm256_add_epi16(sums[1][t], _mm256_maddubs_epi16(hi, av));
            }
        }
        // Each row's 16-bit sums into 32 bits (a loop, not `map`: a closure does not take
        // this function's target features, and its intrinsic calls were not inlined).
        let mut wide = [[_mm256_setzero_si256(); N]; 2];
        for h in 0..2 {
            for t in 0..N {
                wide[h][t] = _mm256_madd_epi16(sums[h][t], ones);
            }
        }
        scale_into(&wide, b, g, tp, dw, acc);
    }
}

/// A Q8_0 panel (16 rows in [`super::repack`]'s layout: 16 f16 scales, then 8 units of 64
/// bytes, unit `k` holding values `4k..4k + 4` of every row, rows 0..8 then rows 8..16, each
/// value plus 128) against `C` (at most 8) tokens with AVX2, a row per 32-bit lane.
/// `vpmaddubsw` multiplies unsigned by signed bytes, and the stored values plus 128 would
/// overflow its 16-bit pairs, so each register's values go back to their sign (`^ 0x80`) and
/// multiply as `|w| * (a with w's sign)`: a pair is then at most 2 x 128 x 127 = 32,512 in
/// size, and `vpmaddwd` adds each register's pairs into the rows' 32-bit sums. Even and odd
/// blocks in two accumulators, as [`offset_panel`].
///
/// One pass over the blocks, both halves of 8 rows at once, the tokens by groups of at most
/// 4 inside it (as [`q4_1_panel_256`]): a group's 2 x 4 sums, the block unit's two registers
/// and their absolute values fill AVX2's 16 registers, and a later group finds the block in
/// L1. Before, 2 to 8 tokens went over the panel twice, once a half: the output head of the
/// default model (49,152 x 576, from DRAM) ran 1.20x to 1.27x as fast so at 8 tokens and
/// 1.12x to 1.44x at 2 and 4 (`kernels` example, old and new alternated in one process, three
/// runs of 7 or 21 pairs, medians; docs/PERF.md, thirty-ninth session); a 1,536 x 576 matrix
/// in the caches 0.98x to 1.13x. Every row's operations are the same whatever `C` is and
/// whichever group a token is in (the integer sums are exact, the float steps in block order),
/// so a token's result does not depend on the batch. One token goes to
/// [`q8_0_panel_256_one`]: the same operations through this loop (a group of one) read the
/// head 0.88x and 0.94x as fast.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_panel_256<const C: usize>(w: *const u8, a: &ActView, o: &mut Tile) {
    if C == 1 {
        // SAFETY: as this function's.
        return unsafe { q8_0_panel_256_one(w, a, o) };
    }
    let tp: [_; C] = core::array::from_fn(|t| a.ptrs(t));
    // SAFETY: every weight access is inside the panel (`nb` blocks of 16 x 34 bytes), every
    // activation access inside a token's `nb` blocks.
    unsafe {
        let mut acc = [[[_mm256_setzero_ps(); C]; 2]; 2];
        for b in 0..a.nb {
            let base = w.add(b * 544);
            prefetch_block(base, 544);
            let dw = [
                _mm256_cvtph_ps(_mm_loadu_si128(base.cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(base.add(16).cast())),
            ];
            by_groups_of_4!(C, g, q8_0_group_256(base, b, g, &tp, &dw, &mut acc));
        }
        for h in 0..2 {
            for t in 0..C {
                let v = _mm256_add_ps(acc[h][0][t], acc[h][1][t]);
                _mm256_storeu_ps(o[t][8 * h..].as_mut_ptr(), v);
            }
        }
    }
}

/// Block `b` of a Q8_0 panel (at `base`) against tokens `g..g + N` of [`q8_0_panel_256`]'s
/// `C`: their 32-bit sums over the block's 8 units of both halves, then each row's scaled sum
/// into the accumulators of the block's parity.
///
/// # Safety
/// `base` points to a whole 544-byte block of a panel, `b` is below the tokens' block count,
/// `g + N <= C`, and the CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_group_256<const N: usize, const C: usize>(
    base: *const u8,
    b: usize,
    g: usize,
    tp: &TokenPtrs<C>,
    dw: &[__m256; 2],
    acc: &mut ParityAcc<C>,
) {
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(-128);
    // SAFETY: as [`q8_0_panel_256`]'s: the block is inside the panel, the tokens' block `b`
    // inside their activations.
    unsafe {
        let mut sums = [[_mm256_setzero_si256(); N]; 2];
        for k in 0..8 {
            let w0 = _mm256_xor_si256(_mm256_loadu_si256(base.add(32 + 64 * k).cast()), flip);
            let w1 = _mm256_xor_si256(_mm256_loadu_si256(base.add(64 + 64 * k).cast()), flip);
            let (a0, a1) = (_mm256_abs_epi8(w0), _mm256_abs_epi8(w1));
            for t in 0..N {
                let av = _mm256_set1_epi32(ld32(tp[g + t].0.add(32 * b + 4 * k).cast()));
                let p0 = _mm256_maddubs_epi16(a0, _mm256_sign_epi8(av, w0));
                let p1 = _mm256_maddubs_epi16(a1, _mm256_sign_epi8(av, w1));
                sums[0][t] = _mm256_add_epi32(sums[0][t], _mm256_madd_epi16(p0, ones));
                sums[1][t] = _mm256_add_epi32(sums[1][t], _mm256_madd_epi16(p1, ones));
            }
        }
        scale_into(&sums, b, g, tp, dw, acc);
    }
}

/// [`q8_0_panel_256`] for one token, both halves of the panel at once: the token's 4 values,
/// broadcast once, meet both halves' registers, and each block is read once. Each row's
/// operations are those of the halves one after the other, in the same order, so the results
/// are the same bit for bit.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_panel_256_one(w: *const u8, a: &ActView, o: &mut Tile) {
    let (qa, da, _) = a.ptrs(0);
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(-128);
    // SAFETY: every weight access is inside the panel (`nb` blocks of 16 x 34 bytes), every
    // activation access inside the token's `nb` blocks.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; 2];
        for b in 0..a.nb {
            let base = w.add(b * 544);
            prefetch_block(base, 544);
            let mut sums = [_mm256_setzero_si256(); 2];
            for k in 0..8 {
                let av = _mm256_set1_epi32(ld32(qa.add(32 * b + 4 * k).cast()));
                for (h, sum) in sums.iter_mut().enumerate() {
                    let wk = _mm256_xor_si256(
                        _mm256_loadu_si256(base.add(32 + 64 * k + 32 * h).cast()),
                        flip,
                    );
                    let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(wk), _mm256_sign_epi8(av, wk));
                    *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, ones));
                }
            }
            let d = _mm256_set1_ps(*da.add(b));
            for (h, sum) in sums.iter().enumerate() {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(base.add(16 * h).cast()));
                let e = &mut acc[h][b % 2];
                *e = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*sum), _mm256_mul_ps(dw, d), *e);
            }
        }
        for (h, a) in acc.iter().enumerate() {
            store_half_256(o, h, &[_mm256_add_ps(a[0], a[1])]);
        }
    }
}

/// AVX2's view of an [`OffsetPanel`] block: half `h` (rows `8h..8h + 8`) of a panel
/// block as 8 rows' scales and 8 registers of stored values, register `k` holding values
/// `4k..4k + 4` of each of the 8 rows (a row per 32-bit lane).
trait OffsetHalf: OffsetPanel {
    /// Whether the stored values are at most 15, so that a block's 8 `vpmaddubsw` results
    /// add up in 16 bits (8 x 2 x 15 x 127 = 30,480); Q5_0's (up to 31) take two sums of 4.
    const NARROW: bool;
    /// Register `k` of half `h`: values `4k..4k + 4` of each of the half's 8 rows.
    ///
    /// # Safety
    /// `base` points to a whole block of a panel; the CPU has AVX2 and F16C.
    unsafe fn reg(base: *const u8, h: usize, k: usize) -> __m256i;
    /// The half's 8 rows' scales (every format's block starts with the 16 rows' f16 scales).
    ///
    /// # Safety
    /// As [`OffsetHalf::reg`]'s.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(base: *const u8, h: usize) -> __m256 {
        // SAFETY: the caller passes a whole block.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(base.add(16 * h).cast())) }
    }
    /// The half's scales and its 8 registers.
    ///
    /// # Safety
    /// As [`OffsetHalf::reg`]'s.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn half(base: *const u8, h: usize) -> (__m256, [__m256i; 8]) {
        // SAFETY: as this function's.
        unsafe {
            (
                Self::scales(base, h),
                core::array::from_fn(|k| Self::reg(base, h, k)),
            )
        }
    }
}

impl OffsetHalf for Q4Panel {
    const NARROW: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn reg(base: *const u8, h: usize, k: usize) -> __m256i {
        // SAFETY: the caller passes a whole block (32 + 4 x 64 bytes).
        unsafe { nibbles_256(base.add(32 + 64 * (k % 4) + 32 * h), k >= 4) }
    }
}

impl OffsetHalf for Q5Panel {
    const NARROW: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn reg(base: *const u8, h: usize, k: usize) -> __m256i {
        // SAFETY: the caller passes a whole block (32 + 64 + 4 x 64 bytes).
        unsafe {
            let hb = _mm256_loadu_si256(base.add(32 + 32 * h).cast());
            let lo = nibbles_256(base.add(96 + 64 * (k % 4) + 32 * h), k >= 4);
            _mm256_or_si256(lo, _mm256_and_si256(q5_high(hb, k), _mm256_set1_epi8(0x10)))
        }
    }
}

/// Register `k`'s Q5_0 high bits: bit `8j + k` of each dword of `hb` moved to bit `8j + 4`
/// (other bits left for the caller's mask).
#[inline]
#[target_feature(enable = "avx2")]
fn q5_high(hb: __m256i, k: usize) -> __m256i {
    match k {
        0 => _mm256_slli_epi32::<4>(hb),
        1 => _mm256_slli_epi32::<3>(hb),
        2 => _mm256_slli_epi32::<2>(hb),
        3 => _mm256_slli_epi32::<1>(hb),
        4 => hb,
        5 => _mm256_srli_epi32::<1>(hb),
        6 => _mm256_srli_epi32::<2>(hb),
        _ => _mm256_srli_epi32::<3>(hb),
    }
}

/// A panel of Q4_0 or Q5_0 ([`OffsetHalf`]) against `C` tokens with AVX2, by halves of 8
/// rows, a row per 32-bit lane: for each block, the half's 8 registers of stored values are
/// decoded once, and each token's 4 values matching a register, broadcast, meet it in one
/// `vpmaddubsw`; the results add as 16-bit sums (Q5_0: two sums of 4) and `vpmaddwd` makes
/// each row's 32-bit sum, which starts at the token's block offset scaled to the format's `K`
/// ([`super::QAct::offsets`]), so it is the exact product of the true values; then one
/// multiply-add applies the rows' and the token's scales. Every row's operations are the
/// same whatever `C` is. One accumulator, where AVX-512's [`offset_panel`] alternates two:
/// the same exact integer sums, but not its floating-point order, so not its bits.
/// One token goes to [`offset_panel_256_one`] (both halves in one pass).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn offset_panel_256<const C: usize, F: OffsetHalf>(w: *const u8, a: &ActView, o: &mut Tile) {
    if C == 1 {
        // SAFETY: as this function's.
        return unsafe { offset_panel_256_one::<F>(w, a, o) };
    }
    let tp: [_; C] = core::array::from_fn(|t| a.ptrs(t));
    let off: [*const i32; C] = core::array::from_fn(|t| a.offsets(t));
    let ones = _mm256_set1_epi16(1);
    // SAFETY: every weight access is inside the panel (`nb` blocks of `F::BYTES`), every
    // activation access inside a token's `nb` blocks (the caller checked the offsets are
    // there).
    unsafe {
        for h in 0..2 {
            let mut acc = [_mm256_setzero_ps(); C];
            for b in 0..a.nb {
                let base = w.add(b * F::BYTES);
                if h == 0 {
                    prefetch_block(base, F::BYTES);
                }
                let (dw, wk) = F::half(base, h);
                for t in 0..C {
                    let act = tp[t].0.add(32 * b);
                    let mut s = [_mm256_setzero_si256(); 2];
                    for k in 0..8 {
                        let av = _mm256_set1_epi32(ld32(act.add(4 * k).cast()));
                        let i = usize::from(!F::NARROW && k >= 4);
                        s[i] = _mm256_add_epi16(s[i], _mm256_maddubs_epi16(wk[k], av));
                    }
                    let mut sum = _mm256_set1_epi32(*off[t].add(b) >> F::SHIFT);
                    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(s[0], ones));
                    if !F::NARROW {
                        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(s[1], ones));
                    }
                    let da = _mm256_set1_ps(*tp[t].1.add(b));
                    acc[t] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(dw, da), acc[t]);
                }
            }
            store_half_256(o, h, &acc);
        }
    }
}

/// [`offset_panel_256`] for one token, both halves of the panel at once: the token's 4
/// values, broadcast once, meet both halves' registers, and each block is read once. Each
/// row's operations are those of the halves one after the other, in the same order, so the
/// results are the same bit for bit.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn offset_panel_256_one<F: OffsetHalf>(w: *const u8, a: &ActView, o: &mut Tile) {
    let (qa, da, _) = a.ptrs(0);
    let off = a.offsets(0);
    let ones = _mm256_set1_epi16(1);
    // SAFETY: every weight access is inside the panel (`nb` blocks of `F::BYTES`), every
    // activation access inside the token's `nb` blocks (the caller checked the offsets are
    // there).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 2];
        for b in 0..a.nb {
            let base = w.add(b * F::BYTES);
            prefetch_block(base, F::BYTES);
            let act = qa.add(32 * b);
            let mut s = [[_mm256_setzero_si256(); 2]; 2];
            for k in 0..8 {
                let av = _mm256_set1_epi32(ld32(act.add(4 * k).cast()));
                let i = usize::from(!F::NARROW && k >= 4);
                for (h, sh) in s.iter_mut().enumerate() {
                    sh[i] = _mm256_add_epi16(sh[i], _mm256_maddubs_epi16(F::reg(base, h, k), av));
                }
            }
            let d = _mm256_set1_ps(*da.add(b));
            for (h, sh) in s.iter().enumerate() {
                let mut sum = _mm256_set1_epi32(*off.add(b) >> F::SHIFT);
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(sh[0], ones));
                if !F::NARROW {
                    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(sh[1], ones));
                }
                let dw = F::scales(base, h);
                acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(dw, d), acc[h]);
            }
        }
        for (h, a) in acc.iter().enumerate() {
            store_half_256(o, h, &[*a]);
        }
    }
}

/// A Q4_K panel (16 rows in [`super::repack`]'s layout: per super-block the 16 rows' `d` and
/// `dmin` as Q4_1's scale-minimum dwords, 3 units of 16 dwords of their packed 6-bit scales
/// and minimums, then 32 units of 16 dwords, unit `u` holding bytes `4u..4u + 4` of each
/// row's 128 nibble bytes) against `C` tokens with AVX2, by halves of 8 rows, a row per
/// 32-bit lane. Per super-block the half's 8 sub-block scales and minimums are unpacked for
/// all 8 rows at once (`d * scale` and `dmin * min` as float vectors); then for each pair of
/// sub-blocks (32 nibble bytes a row: low nibbles the first, high the second), each unit's
/// low and high nibbles meet the token's matching 4 values broadcast in one `vpmaddubsw`
/// each, summed in 16 bits (at most 8 x 2 x 15 x 127 = 30,480), `vpmaddwd` to 32 bits, and
/// one multiply-add with the rows' and the token's scales; the minimums' terms (`dmin * min`
/// times the token's block sums) are subtracted in the same accumulator. Every row's
/// operations are the same whatever `C` is.
/// One token goes to [`q4_k_panel_256_one`] (both halves in one pass).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_panel_256<const C: usize>(w: *const u8, a: &ActView, o: &mut Tile) {
    if C == 1 {
        // SAFETY: as this function's.
        return unsafe { q4_k_panel_256_one(w, a, o) };
    }
    let tp: [_; C] = core::array::from_fn(|t| a.ptrs(t));
    let ones = _mm256_set1_epi16(1);
    let m4 = _mm256_set1_epi8(0x0F);
    let nsb = a.nb / 8;
    // SAFETY: every weight access is inside the panel (`nsb` super-blocks of 16 x 144
    // bytes), every activation access inside a token's `nb` blocks.
    unsafe {
        for h in 0..2 {
            let mut acc = [_mm256_setzero_ps(); C];
            for sb in 0..nsb {
                let base = w.add(sb * 2304);
                if h == 0 {
                    prefetch_block(base, 2304);
                }
                let (dv, mv) = scales_256(base.add(32 * h));
                let (sc, mn) = k_scales_256(base.add(64 + 32 * h), dv, mv);
                for t in 0..C {
                    for k in 0..8 {
                        let s = _mm256_set1_ps(*tp[t].2.add(8 * sb + k));
                        acc[t] = _mm256_fnmadd_ps(mn[k], s, acc[t]);
                    }
                }
                for j in 0..4 {
                    let mut lo = [_mm256_setzero_si256(); C];
                    let mut hi = [_mm256_setzero_si256(); C];
                    for q in 0..8 {
                        let v =
                            _mm256_loadu_si256(base.add(256 + 64 * (8 * j + q) + 32 * h).cast());
                        let wl = _mm256_and_si256(v, m4);
                        let wh = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                        for t in 0..C {
                            let act = tp[t].0.add(256 * sb + 64 * j + 4 * q);
                            let al = _mm256_set1_epi32(ld32(act.cast()));
                            let ah = _mm256_set1_epi32(ld32(act.add(32).cast()));
                            lo[t] = _mm256_add_epi16(lo[t], _mm256_maddubs_epi16(wl, al));
                            hi[t] = _mm256_add_epi16(hi[t], _mm256_maddubs_epi16(wh, ah));
                        }
                    }
                    for t in 0..C {
                        let da = tp[t].1.add(8 * sb + 2 * j);
                        let (s0, s1) = (_mm256_set1_ps(*da), _mm256_set1_ps(*da.add(1)));
                        let x0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(lo[t], ones));
                        let x1 = _mm256_cvtepi32_ps(_mm256_madd_epi16(hi[t], ones));
                        acc[t] = _mm256_fmadd_ps(x0, _mm256_mul_ps(sc[2 * j], s0), acc[t]);
                        acc[t] = _mm256_fmadd_ps(x1, _mm256_mul_ps(sc[2 * j + 1], s1), acc[t]);
                    }
                }
            }
            store_half_256(o, h, &acc);
        }
    }
}

/// [`q4_k_panel_256`] for one token, both halves of the panel at once: the token's 4 values,
/// broadcast once, meet both halves' registers, and each super-block is read once. Each row's
/// operations are those of the halves one after the other, in the same order (per
/// super-block the minimums' terms, then the sub-block pairs), so the results are the same bit
/// for bit.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_panel_256_one(w: *const u8, a: &ActView, o: &mut Tile) {
    let (qa, da, sa) = a.ptrs(0);
    let ones = _mm256_set1_epi16(1);
    let m4 = _mm256_set1_epi8(0x0F);
    let nsb = a.nb / 8;
    // SAFETY: every weight access is inside the panel (`nsb` super-blocks of 16 x 144
    // bytes), every activation access inside the token's `nb` blocks.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 2];
        for sb in 0..nsb {
            let base = w.add(sb * 2304);
            prefetch_block(base, 2304);
            let half = |h: usize| {
                let (dv, mv) = scales_256(base.add(32 * h));
                k_scales_256(base.add(64 + 32 * h), dv, mv)
            };
            let (sc, mn) = {
                let (s0, m0) = half(0);
                let (s1, m1) = half(1);
                ([s0, s1], [m0, m1])
            };
            for (h, e) in acc.iter_mut().enumerate() {
                for k in 0..8 {
                    *e = _mm256_fnmadd_ps(mn[h][k], _mm256_set1_ps(*sa.add(8 * sb + k)), *e);
                }
            }
            for j in 0..4 {
                let mut lo = [_mm256_setzero_si256(); 2];
                let mut hi = [_mm256_setzero_si256(); 2];
                for q in 0..8 {
                    let act = qa.add(256 * sb + 64 * j + 4 * q);
                    let al = _mm256_set1_epi32(ld32(act.cast()));
                    let ah = _mm256_set1_epi32(ld32(act.add(32).cast()));
                    for h in 0..2 {
                        let v =
                            _mm256_loadu_si256(base.add(256 + 64 * (8 * j + q) + 32 * h).cast());
                        let wl = _mm256_and_si256(v, m4);
                        let wh = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                        lo[h] = _mm256_add_epi16(lo[h], _mm256_maddubs_epi16(wl, al));
                        hi[h] = _mm256_add_epi16(hi[h], _mm256_maddubs_epi16(wh, ah));
                    }
                }
                let d = da.add(8 * sb + 2 * j);
                let (s0, s1) = (_mm256_set1_ps(*d), _mm256_set1_ps(*d.add(1)));
                for h in 0..2 {
                    let x0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(lo[h], ones));
                    let x1 = _mm256_cvtepi32_ps(_mm256_madd_epi16(hi[h], ones));
                    acc[h] = _mm256_fmadd_ps(x0, _mm256_mul_ps(sc[h][2 * j], s0), acc[h]);
                    acc[h] = _mm256_fmadd_ps(x1, _mm256_mul_ps(sc[h][2 * j + 1], s1), acc[h]);
                }
            }
        }
        for h in 0..2 {
            store_half_256(o, h, &[acc[h]]);
        }
    }
}

/// A Q6_K panel (16 rows in [`super::repack`]'s layout: per super-block the 16 rows' `d`
/// (f16), then the 52 4-byte units of each row's 208 bytes of low bits, high bits and
/// scales, unit `u` as 16 dwords, a row's each) against `C` tokens with AVX2, by halves of 8
/// rows, a row per 32-bit lane. For each 32-value block of the super-block and each group of
/// 16 values in it (one 8-bit scale), each register of 4 values of the 8 rows (low 4 bits
/// and high 2, less 32) meets the token's 4 matching values broadcast as `|w| * (a with w's
/// sign)` in one `vpmaddubsw` (pairs at most 2 x 32 x 127 = 8,128; four registers' sums at
/// most 32,512, in 16 bits), and one `vpmaddwd` against the rows' scales makes the group's
/// 32-bit sums; the block's two groups add exactly, and one multiply-add applies `d` and the
/// token's scale. Every row's operations are the same whatever `C` is.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_panel_256<const C: usize>(w: *const u8, a: &ActView, o: &mut Tile) {
    let tp: [_; C] = core::array::from_fn(|t| a.ptrs(t));
    let nsb = a.nb / 8;
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    let k32 = _mm256_set1_epi8(32);
    // SAFETY: every weight access is inside the panel (`nsb` super-blocks of 16 x 210
    // bytes), every activation access inside a token's `nb` blocks.
    unsafe {
        for h in 0..2 {
            let mut acc = [_mm256_setzero_ps(); C];
            for sb in 0..nsb {
                let base = w.add(sb * 3360);
                if h == 0 {
                    prefetch_block(base, 3360);
                }
                // Unit `u` of the half's 8 rows.
                let unit = |u: usize| _mm256_loadu_si256(base.add(32 + 64 * u + 32 * h).cast());
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(base.add(16 * h).cast()));
                let sc = q6_scales_256([unit(48), unit(49), unit(50), unit(51)]);
                for n in 0..2 {
                    for m in 0..4 {
                        let blk = 4 * n + m;
                        let mut isum = [_mm256_setzero_si256(); C];
                        for gh in 0..2 {
                            let mut s16 = [_mm256_setzero_si256(); C];
                            for k in 4 * gh..4 * gh + 4 {
                                let ql = unit(16 * n + 8 * (m % 2) + k);
                                let qh = unit(32 + 8 * n + k);
                                let lo = if m < 2 {
                                    ql
                                } else {
                                    _mm256_srli_epi16::<4>(ql)
                                };
                                let hi = match m {
                                    0 => _mm256_slli_epi16::<4>(qh),
                                    1 => _mm256_slli_epi16::<2>(qh),
                                    2 => qh,
                                    _ => _mm256_srli_epi16::<2>(qh),
                                };
                                let u = _mm256_or_si256(
                                    _mm256_and_si256(lo, m4),
                                    _mm256_and_si256(hi, m30),
                                );
                                let v = _mm256_sub_epi8(u, k32);
                                let abs = _mm256_abs_epi8(v);
                                for t in 0..C {
                                    let act = tp[t].0.add(256 * sb + 32 * blk + 4 * k);
                                    let av = _mm256_set1_epi32(ld32(act.cast()));
                                    let p = _mm256_maddubs_epi16(abs, _mm256_sign_epi8(av, v));
                                    s16[t] = _mm256_add_epi16(s16[t], p);
                                }
                            }
                            let scale = sc[8 * n + 2 * m + gh];
                            for t in 0..C {
                                isum[t] =
                                    _mm256_add_epi32(isum[t], _mm256_madd_epi16(s16[t], scale));
                            }
                        }
                        for t in 0..C {
                            let da = _mm256_set1_ps(*tp[t].1.add(8 * sb + blk));
                            let x = _mm256_cvtepi32_ps(isum[t]);
                            acc[t] = _mm256_fmadd_ps(x, _mm256_mul_ps(dw, da), acc[t]);
                        }
                    }
                }
            }
            store_half_256(o, h, &acc);
        }
    }
}

/// The 16 scales of 8 rows of a Q6_K panel super-block (`u`: its 4 units of scales, a
/// row's 4 bytes a dword), each as 8 rows' signed scale in both 16-bit halves of the row's
/// lane (for `vpmaddwd`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_scales_256(u: [__m256i; 4]) -> [__m256i; 16] {
    core::array::from_fn(|s| {
        let c = (s % 4) as i8;
        // Byte c of each dword into the high byte of both its halves, zeros below.
        let z = -128i8;
        // The same in both 128-bit lanes (`vpshufb` shuffles within each).
        let pick = _mm256_broadcastsi128_si256(_mm_setr_epi8(
            z,
            c,
            z,
            c,
            z,
            4 + c,
            z,
            4 + c,
            z,
            8 + c,
            z,
            8 + c,
            z,
            12 + c,
            z,
            12 + c,
        ));
        _mm256_srai_epi16::<8>(_mm256_shuffle_epi8(u[s / 4], pick))
    })
}

/// The 8 sub-block scales and minimums of 8 rows of a Q4_K panel super-block (`p`: 3
/// registers of 8 dwords, each a row's 12 packed bytes, 4 at a time), times the rows' `d`
/// and `dmin`: ggml's `get_scale_min_k4` for every row at once.
///
/// # Safety
/// `p` points to 3 x 64 readable bytes (the half's 32 of each unit); the CPU has AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k_scales_256(p: *const u8, d: __m256, dmin: __m256) -> ([__m256; 8], [__m256; 8]) {
    // SAFETY: the caller passes the three units.
    let (s0, s1, s2) = unsafe {
        (
            _mm256_loadu_si256(p.cast()),
            _mm256_loadu_si256(p.add(64).cast()),
            _mm256_loadu_si256(p.add(128).cast()),
        )
    };
    let m6 = _mm256_set1_epi32(63);
    let m4 = _mm256_set1_epi32(15);
    let m30 = _mm256_set1_epi32(0x30);
    let sh = |x: __m256i, n: i32| _mm256_srl_epi32(x, _mm_cvtsi32_si128(n));
    let mut sc = [_mm256_setzero_ps(); 8];
    let mut mn = [_mm256_setzero_ps(); 8];
    for j in 0..4 {
        let n = 8 * j as i32;
        sc[j] = _mm256_cvtepi32_ps(_mm256_and_si256(sh(s0, n), m6));
        mn[j] = _mm256_cvtepi32_ps(_mm256_and_si256(sh(s1, n), m6));
        let lo = _mm256_and_si256(sh(s2, n), m4);
        let hi = _mm256_and_si256(sh(s0, n + 2), m30);
        sc[j + 4] = _mm256_cvtepi32_ps(_mm256_or_si256(lo, hi));
        let lo = _mm256_and_si256(sh(s2, n + 4), m4);
        let hi = _mm256_and_si256(sh(s1, n + 2), m30);
        mn[j + 4] = _mm256_cvtepi32_ps(_mm256_or_si256(lo, hi));
    }
    for k in 0..8 {
        sc[k] = _mm256_mul_ps(sc[k], d);
        mn[k] = _mm256_mul_ps(mn[k], dmin);
    }
    (sc, mn)
}

/// The scales and minimums of 8 rows of a Q4_1 panel block (8 dwords at `p`, each a row's f16
/// scale in its low half and f16 minimum in its high half), as two vectors of 8 floats.
///
/// # Safety
/// `p` points to 32 readable bytes; the CPU has AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales_256(p: *const u8) -> (__m256, __m256) {
    // SAFETY: the caller passes 32 readable bytes.
    unsafe {
        let v = _mm256_loadu_si256(p.cast());
        // In each 128-bit half: the four low halves (scales), then the four high ones.
        let split = _mm256_setr_epi8(
            0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3,
            6, 7, 10, 11, 14, 15,
        );
        // Quadwords 0, 2 (rows 0-3 and 4-7's scales), then 1, 3 (their minimums).
        let x = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(v, split));
        (
            _mm256_cvtph_ps(_mm256_castsi256_si128(x)),
            _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(x)),
        )
    }
}

/// One register of a Q4_1 panel block's values for 8 rows: the 32 nibble bytes at `p` (4 of
/// each row), their low nibbles or (`high`) their high ones.
///
/// # Safety
/// `p` points to 32 readable bytes; the CPU has AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles_256(p: *const u8, high: bool) -> __m256i {
    // SAFETY: the caller passes 32 readable bytes.
    let x = unsafe { _mm256_loadu_si256(p.cast()) };
    let x = if high { _mm256_srli_epi16::<4>(x) } else { x };
    _mm256_and_si256(x, _mm256_set1_epi8(0x0F))
}

/// The Q4_K and Q5_K kernel on AVX2 (`HIGH`: Q5_K's fifth bit).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn qk_256<const R: usize, const C: usize, const HIGH: bool>(
    w: *const u8,
    rb: usize,
    a: &ActView,
    t0: usize,
    r0: usize,
    out: &mut Tile,
) {
    let nsb = a.nb / 8;
    let (bytes, qoff) = if HIGH { (176, 48) } else { (144, 16) };
    let tp: [_; C] = core::array::from_fn(|t| a.ptrs(t0 + t));
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut macc = [[0f32; C]; R];
    let mask = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    // SAFETY: as in `qk_512`.
    unsafe {
        for sb in 0..nsb {
            let mut blk = [w; R];
            let mut dsc = [[0f32; 8]; R];
            for r in 0..R {
                blk[r] = w.add(r * rb + sb * bytes);
                let (d, dmin) = (f16_1(blk[r]), f16_1(blk[r].add(2)));
                let (sc, m) = scalar::k_scales(std::slice::from_raw_parts(blk[r].add(4), 12));
                for t in 0..C {
                    let sa = std::slice::from_raw_parts(tp[t].2.add(8 * sb), 8);
                    let mut ms = 0f32;
                    for k in 0..8 {
                        ms += m[k] as f32 * sa[k];
                    }
                    macc[r][t] -= dmin * ms;
                }
                for k in 0..8 {
                    dsc[r][k] = d * sc[k] as f32;
                }
            }
            for j in 0..4 {
                let mut lo = [_mm256_setzero_si256(); R];
                let mut hi = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    let v = _mm256_loadu_si256(blk[r].add(qoff + 32 * j).cast());
                    lo[r] = _mm256_and_si256(v, mask);
                    hi[r] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                    if HIGH {
                        let h = _mm256_loadu_si256(blk[r].add(16).cast());
                        let c0 = _mm_cvtsi32_si128(2 * j as i32);
                        let c1 = _mm_cvtsi32_si128(2 * j as i32 + 1);
                        let h0 = _mm256_and_si256(_mm256_srl_epi16(h, c0), one);
                        let h1 = _mm256_and_si256(_mm256_srl_epi16(h, c1), one);
                        lo[r] = _mm256_or_si256(lo[r], _mm256_slli_epi16::<4>(h0));
                        hi[r] = _mm256_or_si256(hi[r], _mm256_slli_epi16::<4>(h1));
                    }
                }
                for t in 0..C {
                    let base = tp[t].0.add(256 * sb + 64 * j);
                    let a0 = _mm256_loadu_si256(base.cast());
                    let a1 = _mm256_loadu_si256(base.add(32).cast());
                    let da0 = *tp[t].1.add(8 * sb + 2 * j);
                    let da1 = *tp[t].1.add(8 * sb + 2 * j + 1);
                    for r in 0..R {
                        let d0 = pairs(_mm256_maddubs_epi16(lo[r], a0));
                        let d1 = pairs(_mm256_maddubs_epi16(hi[r], a1));
                        let s0 = _mm256_set1_ps(dsc[r][2 * j] * da0);
                        let s1 = _mm256_set1_ps(dsc[r][2 * j + 1] * da1);
                        let f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), s0, acc[r][t]);
                        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), s1, f);
                    }
                }
            }
        }
        for r in 0..R {
            for t in 0..C {
                out[t0 + t][r0 + r] = hsum256(acc[r][t]) + macc[r][t];
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k_256<const R: usize, const C: usize>(
    w: *const u8,
    rb: usize,
    a: &ActView,
    t0: usize,
    r0: usize,
    out: &mut Tile,
) {
    // SAFETY: forwarded.
    unsafe { qk_256::<R, C, true>(w, rb, a, t0, r0, out) }
}
