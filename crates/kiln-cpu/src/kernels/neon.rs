//! AArch64 Advanced SIMD kernels for every format with a kernel (Q4_0, Q4_1, Q5_0, Q8_0 and
//! the K-quants Q4_K, Q5_K, Q6_K): each block's values decoded to signed bytes in registers,
//! widening 8-bit multiplies, pairwise sums to 32 bits: the integer sums of
//! [`super::scalar`], with the same floating-point steps a block. A row and a token at a
//! time; the tests (`simd_kernels_match_scalar`, `extreme_blocks_do_not_overflow`) run them
//! against the scalar kernels wherever the CPU has NEON.

use std::arch::aarch64::*;

use super::{scalar, ActView, Fmt, Tile, TileFn};

/// The NEON tile kernel for a format.
pub(super) fn tile_fn(fmt: Fmt) -> TileFn {
    match fmt {
        Fmt::Q4_0 => q4_0_tiles,
        Fmt::Q4_1 => q4_1_tiles,
        Fmt::Q5_0 => q5_0_tiles,
        Fmt::Q8_0 => q8_0_tiles,
        Fmt::Q4_K => q4_k_tiles,
        Fmt::Q5_K => q5_k_tiles,
        Fmt::Q6_K => q6_k_tiles,
    }
}

/// Sum of the products of 32 signed bytes (`w0`, `w1`) with `a[0..32]`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot32(w0: int8x16_t, w1: int8x16_t, a: *const i8) -> i32 {
    // SAFETY: the caller passes 32 readable bytes at `a`.
    unsafe {
        let a0 = vld1q_s8(a);
        let a1 = vld1q_s8(a.add(16));
        // Two products of at most 128 * 127 each fit an i16.
        let p0 = vmlal_s8(
            vmull_s8(vget_low_s8(w0), vget_low_s8(a0)),
            vget_high_s8(w0),
            vget_high_s8(a0),
        );
        let p1 = vmlal_s8(
            vmull_s8(vget_low_s8(w1), vget_low_s8(a1)),
            vget_high_s8(w1),
            vget_high_s8(a1),
        );
        vaddvq_s32(vpadalq_s16(vpaddlq_s16(p0), p1))
    }
}

/// Sum of the products of 16 signed bytes `w`, each at most 32 in size (Q6_K's values less
/// 32), with `a[0..16]`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot16(w: int8x16_t, a: *const i8) -> i32 {
    // SAFETY: the caller passes 16 readable bytes at `a`.
    unsafe {
        let a = vld1q_s8(a);
        // Two products of at most 32 * 127 each fit an i16.
        let p = vmlal_s8(
            vmull_s8(vget_low_s8(w), vget_low_s8(a)),
            vget_high_s8(w),
            vget_high_s8(a),
        );
        vaddvq_s32(vpaddlq_s16(p))
    }
}

/// Runs `block(row_ptr, block_index, tokens_ptrs)` over a tile: `$per` activation blocks of
/// 32 to a weight block of `$bytes` (1 for the 32-block formats, 8 for the K-quants'
/// super-blocks of 256); `$qs`, `$da` and `$sa` point to the weight block's first
/// activation block's values, scale and sum.
macro_rules! neon_tiles {
    ($name:ident, $bytes:expr, $per:expr, |$p:ident, $qs:ident, $da:ident, $sa:ident| $body:expr) => {
        #[target_feature(enable = "neon")]
        unsafe fn $name(w: *const u8, rb: usize, nr: usize, a: &ActView, nt: usize, o: &mut Tile) {
            // SAFETY: the `TileFn` contract: `nr` rows at `w`, `nt` tokens in `a`.
            unsafe {
                for r in 0..nr {
                    for t in 0..nt {
                        let (q, d, s) = a.ptrs(t);
                        let mut acc = 0f32;
                        for b in 0..a.nb / $per {
                            let $p = w.add(r * rb + b * $bytes);
                            let $qs = q.add(32 * $per * b);
                            let ($da, $sa) = (d.add($per * b), s.add($per * b));
                            acc += $body;
                        }
                        o[t][r] = acc;
                    }
                }
            }
        }
    };
}

#[inline(always)]
unsafe fn f16(p: *const u8) -> f32 {
    // SAFETY: the caller passes 2 readable bytes.
    scalar::f16_at(unsafe { std::slice::from_raw_parts(p, 2) }, 0)
}

neon_tiles!(q4_0_tiles, 18, 1, |p, qs, da, _sa| {
    let n = vld1q_u8(p.add(2));
    let eight = vdupq_n_s8(8);
    let lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(n, vdupq_n_u8(0x0F))), eight);
    let hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(n)), eight);
    f16(p) * *da * dot32(lo, hi, qs) as f32
});

neon_tiles!(q4_1_tiles, 20, 1, |p, qs, da, sa| {
    let n = vld1q_u8(p.add(4));
    let lo = vreinterpretq_s8_u8(vandq_u8(n, vdupq_n_u8(0x0F)));
    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(n));
    f16(p) * *da * dot32(lo, hi, qs) as f32 + f16(p.add(2)) * *sa
});

neon_tiles!(q8_0_tiles, 34, 1, |p, qs, da, _sa| {
    let w0 = vld1q_s8(p.add(2).cast());
    let w1 = vld1q_s8(p.add(18).cast());
    f16(p) * *da * dot32(w0, w1, qs) as f32
});

/// Q5_0's high bits (bit `j` of the block's 32-bit field is value `j`'s fifth bit) as 16
/// in the lanes of values `16h..16h + 16`: each lane tests its bit of the field's bytes `2h`
/// (lanes 0 to 7) and `2h + 1` (lanes 8 to 15).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn q5_high(qh: *const u8, h: usize) -> uint8x16_t {
    // SAFETY: the caller passes the block's 4 bytes of high bits at `qh`.
    unsafe {
        let bytes = vcombine_u8(vdup_n_u8(*qh.add(2 * h)), vdup_n_u8(*qh.add(2 * h + 1)));
        let bits = vld1q_u8([1u8, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128].as_ptr());
        vandq_u8(vtstq_u8(bytes, bits), vdupq_n_u8(16))
    }
}

neon_tiles!(q5_0_tiles, 22, 1, |p, qs, da, _sa| {
    let n = vld1q_u8(p.add(6));
    let sixteen = vdupq_n_s8(16);
    let lo = vorrq_u8(vandq_u8(n, vdupq_n_u8(0x0F)), q5_high(p.add(2), 0));
    let hi = vorrq_u8(vshrq_n_u8::<4>(n), q5_high(p.add(2), 1));
    let lo = vsubq_s8(vreinterpretq_s8_u8(lo), sixteen);
    let hi = vsubq_s8(vreinterpretq_s8_u8(hi), sixteen);
    f16(p) * *da * dot32(lo, hi, qs) as f32
});

/// A Q4_K or Q5_K super-block (`HIGH`: Q5_K's 32 bytes of fifth bits before the nibbles)
/// against its 8 activation blocks: per pair of sub-blocks `2j`, `2j + 1`, 32 bytes of
/// nibbles (the low ones values of `2j`, the high ones of `2j + 1`), each sub-block's sum
/// scaled as the scalar kernel does.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn qk_block<const HIGH: bool>(
    p: *const u8,
    qs: *const i8,
    da: *const f32,
    sa: *const f32,
) -> f32 {
    // SAFETY: the caller passes a whole super-block at `p` and its 256 activations, 8 scales
    // and 8 sums.
    unsafe {
        let d = f16(p);
        let dmin = f16(p.add(2));
        let (sc, m) = scalar::k_scales(std::slice::from_raw_parts(p.add(4), 12));
        let nib = p.add(if HIGH { 48 } else { 16 });
        let qh = if HIGH {
            [vld1q_u8(p.add(16)), vld1q_u8(p.add(32))]
        } else {
            [vdupq_n_u8(0); 2]
        };
        let mask = vdupq_n_u8(0x0F);
        let mut acc = 0f32;
        for j in 0..4 {
            let q = [vld1q_u8(nib.add(32 * j)), vld1q_u8(nib.add(32 * j + 16))];
            let mut lo = [vandq_u8(q[0], mask), vandq_u8(q[1], mask)];
            let mut hi = [vshrq_n_u8::<4>(q[0]), vshrq_n_u8::<4>(q[1])];
            if HIGH {
                let (b0, b1) = (vdupq_n_u8(1 << (2 * j)), vdupq_n_u8(2 << (2 * j)));
                let sixteen = vdupq_n_u8(16);
                for h in 0..2 {
                    lo[h] = vorrq_u8(lo[h], vandq_u8(vtstq_u8(qh[h], b0), sixteen));
                    hi[h] = vorrq_u8(hi[h], vandq_u8(vtstq_u8(qh[h], b1), sixteen));
                }
            }
            let s8 = vreinterpretq_s8_u8;
            let i0 = dot32(s8(lo[0]), s8(lo[1]), qs.add(64 * j));
            let i1 = dot32(s8(hi[0]), s8(hi[1]), qs.add(64 * j + 32));
            let (k0, k1) = (2 * j, 2 * j + 1);
            acc += d * sc[k0] as f32 * *da.add(k0) * i0 as f32 - dmin * m[k0] as f32 * *sa.add(k0);
            acc += d * sc[k1] as f32 * *da.add(k1) * i1 as f32 - dmin * m[k1] as f32 * *sa.add(k1);
        }
        acc
    }
}

neon_tiles!(q4_k_tiles, 144, 8, |p, qs, da, sa| qk_block::<false>(
    p, qs, da, sa
));
neon_tiles!(q5_k_tiles, 176, 8, |p, qs, da, sa| qk_block::<true>(
    p, qs, da, sa
));

neon_tiles!(q6_k_tiles, 210, 8, |p, qs, da, _sa| {
    // Per half of 128 values: 64 bytes of low bits (groups of 32 values: the low nibbles of
    // bytes 0..32, of 32..64, then their high nibbles) and 32 of high bits (2 a group,
    // group `g` at bit `2g`); 16 signed scales, one a 16 values; `d` last.
    let d = f16(p.add(208));
    let mask = vdupq_n_u8(0x0F);
    let three = vdupq_n_u8(3);
    let thirty_two = vdupq_n_s8(32);
    let mut acc = 0f32;
    for half in 0..2 {
        let ql = p.add(64 * half);
        let qh = [
            vld1q_u8(p.add(128 + 32 * half)),
            vld1q_u8(p.add(144 + 32 * half)),
        ];
        for g in 0..4 {
            for (h, &qh) in qh.iter().enumerate() {
                let l = vld1q_u8(ql.add(32 * (g % 2) + 16 * h));
                let l = if g < 2 {
                    vandq_u8(l, mask)
                } else {
                    vshrq_n_u8::<4>(l)
                };
                let top = vandq_u8(vshlq_u8(qh, vdupq_n_s8(-2 * g as i8)), three);
                let v = vorrq_u8(l, vshlq_n_u8::<4>(top));
                let v = vsubq_s8(vreinterpretq_s8_u8(v), thirty_two);
                let e = 128 * half + 32 * g + 16 * h;
                let k = e / 16;
                let isum = dot16(v, qs.add(e));
                acc += d * (*p.add(192 + k) as i8) as f32 * *da.add(k / 2) * isum as f32;
            }
        }
    }
    acc
});
