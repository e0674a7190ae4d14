//! AArch64 Advanced SIMD kernels for the 32-block formats (Q4_0, Q4_1, Q8_0): widening
//! 8-bit multiplies, pairwise sums to 32 bits. K-quants use the scalar kernels here.

use std::arch::aarch64::*;

use super::{scalar, ActView, Fmt, Tile, TileFn};

/// The NEON tile kernel for a format (scalar where there is none yet).
pub(super) fn tile_fn(fmt: Fmt) -> TileFn {
    match fmt {
        Fmt::Q4_0 => q4_0_tiles,
        Fmt::Q4_1 => q4_1_tiles,
        Fmt::Q8_0 => q8_0_tiles,
        _ => super::scalar_tile_fn(fmt),
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

/// Runs `block(row_ptr, block_index, tokens_ptrs)` over a tile.
macro_rules! neon_tiles {
    ($name:ident, $bytes:expr, |$p:ident, $qs:ident, $da:ident, $sa:ident| $body:expr) => {
        #[target_feature(enable = "neon")]
        unsafe fn $name(w: *const u8, rb: usize, nr: usize, a: &ActView, nt: usize, o: &mut Tile) {
            // SAFETY: the `TileFn` contract: `nr` rows at `w`, `nt` tokens in `a`.
            unsafe {
                for r in 0..nr {
                    for t in 0..nt {
                        let (q, d, s) = a.ptrs(t);
                        let mut acc = 0f32;
                        for b in 0..a.nb {
                            let $p = w.add(r * rb + b * $bytes);
                            let $qs = q.add(32 * b);
                            let ($da, $sa) = (*d.add(b), *s.add(b));
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

neon_tiles!(q4_0_tiles, 18, |p, qs, da, _sa| {
    let n = vld1q_u8(p.add(2));
    let eight = vdupq_n_s8(8);
    let lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(n, vdupq_n_u8(0x0F))), eight);
    let hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(n)), eight);
    f16(p) * da * dot32(lo, hi, qs) as f32
});

neon_tiles!(q4_1_tiles, 20, |p, qs, da, sa| {
    let n = vld1q_u8(p.add(4));
    let lo = vreinterpretq_s8_u8(vandq_u8(n, vdupq_n_u8(0x0F)));
    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(n));
    f16(p) * da * dot32(lo, hi, qs) as f32 + f16(p.add(2)) * sa
});

neon_tiles!(q8_0_tiles, 34, |p, qs, da, _sa| {
    let w0 = vld1q_s8(p.add(2).cast());
    let w1 = vld1q_s8(p.add(18).cast());
    f16(p) * da * dot32(w0, w1, qs) as f32
});
