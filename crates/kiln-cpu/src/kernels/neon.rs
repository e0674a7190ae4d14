//! AArch64 Advanced SIMD kernels for every format with a kernel (Q4_0, Q4_1, Q5_0, Q8_0 and
//! the K-quants Q4_K, Q5_K, Q6_K): each weight block of a row is decoded once to signed bytes
//! in registers ([`Block::decode`]) and meets every token of the tile ([`Block::dot`]) by
//! widening 8-bit multiplies and pairwise sums to 32 bits, or by `sdot` where the core has the
//! dot-product extension ([`Dot`]): the integer sums of [`super::scalar`], with the same floating-point steps a block, so a token's result does not
//! depend on how many share the tile. The tests (`simd_kernels_match_scalar`,
//! `extreme_blocks_do_not_overflow`, `results_do_not_depend_on_the_batch`) run them against
//! the scalar kernels wherever the CPU has NEON (`scripts/test-aarch64.sh` under qemu).

use std::arch::aarch64::*;

use super::{scalar, ActView, Fmt, Tile, TileFn};

/// The NEON tile kernel for a format; with `sdot`, its sums by the dot-product extension's
/// `sdot` (the CPU must have it: `Isa::NeonDot`).
pub(super) fn tile_fn(fmt: Fmt, sdot: bool) -> TileFn {
    fn pick<P: Dot>(fmt: Fmt) -> TileFn {
        match fmt {
            Fmt::Q4_0 => tiles::<Q4_0, P>,
            Fmt::Q4_1 => tiles::<Q4_1, P>,
            Fmt::Q5_0 => tiles::<Q5_0, P>,
            Fmt::Q8_0 => tiles::<Q8_0, P>,
            Fmt::Q4_K => tiles::<Qk<false>, P>,
            Fmt::Q5_K => tiles::<Qk<true>, P>,
            Fmt::Q6_K => tiles::<Q6K, P>,
        }
    }
    if sdot {
        pick::<Sdot>(fmt)
    } else {
        pick::<Widen>(fmt)
    }
}

/// The integer dot products of signed bytes the kernels take: by widening multiplies
/// ([`Widen`], any NEON CPU) or by `sdot` ([`Sdot`], the dot-product extension of Armv8.2).
/// Both give the exact sums.
trait Dot {
    /// Sum of the products of 32 signed bytes (`w0`, `w1`) with `a[0..32]`, activations in
    /// -127..=127 (as quantizing makes them: two products of -128 would overflow
    /// [`Widen`]'s 16-bit pairs).
    ///
    /// # Safety
    /// `a` points to 32 readable bytes; the CPU has the instructions.
    unsafe fn d32(w0: int8x16_t, w1: int8x16_t, a: *const i8) -> i32;
    /// Sum of the products of 16 signed bytes `w`, each at most 32 in size, with `a[0..16]`.
    ///
    /// # Safety
    /// `a` points to 16 readable bytes; the CPU has the instructions.
    unsafe fn d16(w: int8x16_t, a: *const i8) -> i32;
}

struct Widen;
struct Sdot;

/// A weight format as the NEON kernels take it: a block of `BYTES` bytes covers `PER`
/// activation blocks of 32 (1 for the 32-block formats, 8 for the K-quants' super-blocks).
trait Block {
    const BYTES: usize;
    const PER: usize;
    /// A block's values as signed bytes, with its scales as floats.
    type Decoded;
    /// Decodes the block at `p`.
    ///
    /// # Safety
    /// `p` points to `BYTES` readable bytes; the CPU has NEON.
    unsafe fn decode(p: *const u8) -> Self::Decoded;
    /// The block's product with a token: `qs` its `32 * PER` values, `da` and `sa` its `PER`
    /// blocks' scales and sums.
    ///
    /// # Safety
    /// The pointers hold that many values; the CPU has NEON and `P`'s instructions.
    unsafe fn dot<P: Dot>(v: &Self::Decoded, qs: *const i8, da: *const f32, sa: *const f32) -> f32;
}

/// A tile of `nr` rows against `nt` tokens: each row's blocks in order, each decoded once and
/// added into every token's sum.
///
/// # Safety
/// The `TileFn` contract: `nr` rows of `rb` bytes at `w`, `nt` (at most 8) tokens in `a`.
#[target_feature(enable = "neon")]
unsafe fn tiles<F: Block, P: Dot>(
    w: *const u8,
    rb: usize,
    nr: usize,
    a: &ActView,
    nt: usize,
    o: &mut Tile,
) {
    let mut tp = [(std::ptr::null(), std::ptr::null(), std::ptr::null()); 8];
    for (t, p) in tp.iter_mut().enumerate().take(nt) {
        *p = a.ptrs(t);
    }
    // SAFETY: the `TileFn` contract: every block is inside a row, every activation inside a
    // token's `nb` blocks.
    unsafe {
        for r in 0..nr {
            let mut acc = [0f32; 8];
            for b in 0..a.nb / F::PER {
                let v = F::decode(w.add(r * rb + b * F::BYTES));
                for (acc, &(q, d, s)) in acc.iter_mut().zip(&tp).take(nt) {
                    let at = F::PER * b;
                    *acc += F::dot::<P>(&v, q.add(32 * at), d.add(at), s.add(at));
                }
            }
            for (row, acc) in o.iter_mut().zip(&acc).take(nt) {
                row[r] = *acc;
            }
        }
    }
}

impl Dot for Widen {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn d32(w0: int8x16_t, w1: int8x16_t, a: *const i8) -> i32 {
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
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn d16(w: int8x16_t, a: *const i8) -> i32 {
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
}

/// `acc` plus, in each 32-bit lane, the sum of the products of that lane's 4 signed bytes of
/// `w` and `a` (`sdot`; the assembler is told of the extension here, so that the kernels
/// need no target feature beyond NEON and inline where they are called).
///
/// # Safety
/// The CPU has the dot-product extension.
#[inline(always)]
unsafe fn sdot(mut acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: the caller checked the extension (`Isa::NeonDot`); registers only.
    unsafe {
        std::arch::asm!(
            ".arch_extension dotprod",
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.16b",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

impl Dot for Sdot {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn d32(w0: int8x16_t, w1: int8x16_t, a: *const i8) -> i32 {
        // SAFETY: the caller passes 32 readable bytes at `a` and checked the extension.
        unsafe {
            let acc = sdot(vdupq_n_s32(0), w0, vld1q_s8(a));
            vaddvq_s32(sdot(acc, w1, vld1q_s8(a.add(16))))
        }
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn d16(w: int8x16_t, a: *const i8) -> i32 {
        // SAFETY: the caller passes 16 readable bytes at `a` and checked the extension.
        unsafe { vaddvq_s32(sdot(vdupq_n_s32(0), w, vld1q_s8(a))) }
    }
}

/// The f16 at `p` (little-endian, any alignment) as f32, by `fcvtl`, which every AArch64
/// core has: exact, as the scalar kernels' conversion (the `half` crate's) is, without its
/// check of the CPU's features and its call for each block's scales.
///
/// # Safety
/// `p` points to 2 readable bytes.
#[inline(always)]
unsafe fn f16(p: *const u8) -> f32 {
    // SAFETY: the caller passes 2 readable bytes; the instruction touches registers only.
    unsafe {
        let h = vdup_n_u16(u16::from_le(p.cast::<u16>().read_unaligned()));
        let x: float32x4_t;
        std::arch::asm!(
            "fcvtl {x:v}.4s, {h:v}.4h",
            x = lateout(vreg) x,
            h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags),
        );
        vgetq_lane_f32::<0>(x)
    }
}

/// The 16 nibble bytes at `p` as values `0..16` (low nibbles) and `16..32` (high ones).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    // SAFETY: the caller passes 16 readable bytes.
    let n = unsafe { vld1q_u8(p) };
    (vandq_u8(n, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(n))
}

#[allow(non_camel_case_types)]
struct Q4_0;
#[allow(non_camel_case_types)]
struct Q4_1;
#[allow(non_camel_case_types)]
struct Q5_0;
#[allow(non_camel_case_types)]
struct Q8_0;
/// Q4_K, or with `HIGH` Q5_K (32 bytes of fifth bits before the nibbles).
struct Qk<const HIGH: bool>;
struct Q6K;

/// A 32-block format with one scale a block (`$decode`: the scale and the 32 values as signed
/// bytes, from the block's bytes at `$p`): its product is `d * da * sum`, as the scalar
/// kernel's.
macro_rules! scaled_block {
    ($t:ty, $bytes:expr, |$p:ident| $decode:expr) => {
        impl Block for $t {
            const BYTES: usize = $bytes;
            const PER: usize = 1;
            type Decoded = (f32, int8x16_t, int8x16_t);
            #[inline]
            #[target_feature(enable = "neon")]
            unsafe fn decode($p: *const u8) -> Self::Decoded {
                // SAFETY: as the trait's.
                unsafe { $decode }
            }
            #[inline]
            #[target_feature(enable = "neon")]
            unsafe fn dot<P: Dot>(
                v: &Self::Decoded,
                qs: *const i8,
                da: *const f32,
                _: *const f32,
            ) -> f32 {
                // SAFETY: as the trait's.
                unsafe { v.0 * *da * P::d32(v.1, v.2, qs) as f32 }
            }
        }
    };
}

scaled_block!(Q4_0, 18, |p| {
    let (lo, hi) = nibbles(p.add(2));
    let eight = vdupq_n_s8(8);
    let s8 = vreinterpretq_s8_u8;
    (f16(p), vsubq_s8(s8(lo), eight), vsubq_s8(s8(hi), eight))
});

impl Block for Q4_1 {
    const BYTES: usize = 20;
    const PER: usize = 1;
    type Decoded = (f32, f32, int8x16_t, int8x16_t);
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn decode(p: *const u8) -> Self::Decoded {
        // SAFETY: as the trait's.
        unsafe {
            let (lo, hi) = nibbles(p.add(4));
            let s8 = vreinterpretq_s8_u8;
            (f16(p), f16(p.add(2)), s8(lo), s8(hi))
        }
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn dot<P: Dot>(v: &Self::Decoded, qs: *const i8, da: *const f32, sa: *const f32) -> f32 {
        // SAFETY: as the trait's.
        unsafe { v.0 * *da * P::d32(v.2, v.3, qs) as f32 + v.1 * *sa }
    }
}

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

scaled_block!(Q5_0, 22, |p| {
    let (lo, hi) = nibbles(p.add(6));
    let lo = vorrq_u8(lo, q5_high(p.add(2), 0));
    let hi = vorrq_u8(hi, q5_high(p.add(2), 1));
    let sixteen = vdupq_n_s8(16);
    let s8 = vreinterpretq_s8_u8;
    (f16(p), vsubq_s8(s8(lo), sixteen), vsubq_s8(s8(hi), sixteen))
});

scaled_block!(Q8_0, 34, |p| (
    f16(p),
    vld1q_s8(p.add(2).cast()),
    vld1q_s8(p.add(18).cast())
));

/// A K-quant super-block decoded: 16 registers of 16 values (sub-block `k`'s 32 in registers
/// `2k` and `2k + 1`), and each sub-block's `d * scale` and `dmin * min` (Q6_K: 16 scales of
/// 16 values, `d * scale`, and no minimums).
struct Super {
    v: [int8x16_t; 16],
    ds: [f32; 16],
    dm: [f32; 8],
}

impl<const HIGH: bool> Block for Qk<HIGH> {
    const BYTES: usize = if HIGH { 176 } else { 144 };
    const PER: usize = 8;
    type Decoded = Super;
    /// Per pair of sub-blocks `2j`, `2j + 1`: 32 bytes of nibbles (the low ones values of `2j`,
    /// the high ones of `2j + 1`), with Q5_K's fifth bits (bits `2j` and `2j + 1` of the 32
    /// high-bit bytes).
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn decode(p: *const u8) -> Super {
        // SAFETY: as the trait's.
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
            let mut v = [vdupq_n_s8(0); 16];
            for j in 0..4 {
                for (h, &qh) in qh.iter().enumerate() {
                    let (mut lo, mut hi) = nibbles(nib.add(32 * j + 16 * h));
                    if HIGH {
                        let sixteen = vdupq_n_u8(16);
                        let (b0, b1) = (vdupq_n_u8(1 << (2 * j)), vdupq_n_u8(2 << (2 * j)));
                        lo = vorrq_u8(lo, vandq_u8(vtstq_u8(qh, b0), sixteen));
                        hi = vorrq_u8(hi, vandq_u8(vtstq_u8(qh, b1), sixteen));
                    }
                    v[4 * j + h] = vreinterpretq_s8_u8(lo);
                    v[4 * j + 2 + h] = vreinterpretq_s8_u8(hi);
                }
            }
            // `d * scale` first, as the scalar kernel's `d * sc * da * i` multiplies.
            let mut ds = [0f32; 16];
            for (ds, &s) in ds.iter_mut().zip(&sc) {
                *ds = d * s as f32;
            }
            Super {
                v,
                ds,
                dm: std::array::from_fn(|k| dmin * m[k] as f32),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn dot<P: Dot>(b: &Super, qs: *const i8, da: *const f32, sa: *const f32) -> f32 {
        // SAFETY: as the trait's.
        unsafe {
            let mut acc = 0f32;
            for k in 0..8 {
                let i = P::d32(b.v[2 * k], b.v[2 * k + 1], qs.add(32 * k));
                acc += b.ds[k] * *da.add(k) * i as f32 - b.dm[k] * *sa.add(k);
            }
            acc
        }
    }
}

impl Block for Q6K {
    const BYTES: usize = 210;
    const PER: usize = 8;
    type Decoded = Super;
    /// Per half of 128 values: 64 bytes of low bits (groups of 32 values: the low nibbles of
    /// bytes 0..32, of 32..64, then their high nibbles) and 32 of high bits (2 a group, group
    /// `g` at bit `2g`); 16 signed scales, one a 16 values; `d` last.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn decode(p: *const u8) -> Super {
        // SAFETY: as the trait's.
        unsafe {
            let d = f16(p.add(208));
            let three = vdupq_n_u8(3);
            let thirty_two = vdupq_n_s8(32);
            let mut v = [vdupq_n_s8(0); 16];
            for half in 0..2 {
                let ql = p.add(64 * half);
                let qh = [
                    vld1q_u8(p.add(128 + 32 * half)),
                    vld1q_u8(p.add(144 + 32 * half)),
                ];
                for (h, &qh) in qh.iter().enumerate() {
                    let (l0, h0) = nibbles(ql.add(16 * h));
                    let (l1, h1) = nibbles(ql.add(32 + 16 * h));
                    for (g, l) in [l0, l1, h0, h1].into_iter().enumerate() {
                        let top = vandq_u8(vshlq_u8(qh, vdupq_n_s8(-2 * g as i8)), three);
                        let u = vorrq_u8(l, vshlq_n_u8::<4>(top));
                        v[8 * half + 2 * g + h] = vsubq_s8(vreinterpretq_s8_u8(u), thirty_two);
                    }
                }
            }
            Super {
                v,
                ds: std::array::from_fn(|k| d * (*p.add(192 + k) as i8) as f32),
                dm: [0.0; 8],
            }
        }
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn dot<P: Dot>(b: &Super, qs: *const i8, da: *const f32, _: *const f32) -> f32 {
        // SAFETY: as the trait's.
        unsafe {
            let mut acc = 0f32;
            for k in 0..16 {
                let isum = P::d16(b.v[k], qs.add(16 * k));
                acc += b.ds[k] * *da.add(k / 2) * isum as f32;
            }
            acc
        }
    }
}

#[cfg(test)]
mod tests {
    /// `fcvtl` gives the `half` crate's f32 for every f16: normals, subnormals, zeros and
    /// infinities bit for bit, NaN as NaN.
    #[test]
    fn f16_conversion_is_the_half_crates() {
        for bits in 0..=u16::MAX {
            let b = bits.to_le_bytes();
            // SAFETY: two readable bytes.
            let got = unsafe { super::f16(b.as_ptr()) };
            let want = half::f16::from_bits(bits).to_f32();
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}: {got}");
            } else {
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{bits:#06x}: {got} vs {want}"
                );
            }
        }
    }
}
