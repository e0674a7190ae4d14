//! Plain Rust reference kernels. Every SIMD kernel computes exactly this integer math
//! (only the order of float additions differs), and the tests compare them on random data.
#![allow(clippy::needless_range_loop)] // tiles are indexed by row and token, as the math is written

use half::f16;

use super::{ActView, Tile};

#[inline]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Quantizes one row of `x` (a multiple of 32 long) to 8-bit blocks: `qs`, per-block
/// scale `d` and `s = d * sum(qs)`.
pub(crate) fn quantize_row(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (b, xb) in x.chunks_exact(32).enumerate() {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let db = amax / 127.0;
        // A scale so small that its inverse overflows (the block's largest magnitude below
        // about 3.4e-37) quantizes the block to zeros, as a zero scale does; at f16 the
        // scale is zero either way.
        let id = if db > 0.0 && (1.0 / db).is_finite() {
            1.0 / db
        } else {
            0.0
        };
        let mut sum = 0i32;
        for (q, &v) in qs[b * 32..b * 32 + 32].iter_mut().zip(xb) {
            let r = (v * id).round_ties_even().clamp(-127.0, 127.0) as i32;
            *q = r as i8;
            sum += r;
        }
        // Kept at f16 precision, as ggml's Q8_0/Q8_1 blocks store them: the products
        // then round like llama.cpp's, which the golden test compares against.
        d[b] = f16::from_f32(db).to_f32();
        s[b] = f16::from_f32(db * sum as f32).to_f32();
    }
}

/// One Q4_0 block (18 bytes) against activation block `a` with scale `da`.
#[inline]
pub(crate) fn q4_0_block(b: &[u8], a: &[i8], da: f32) -> f32 {
    let mut isum = 0i32;
    for j in 0..16 {
        let q = b[2 + j];
        isum += ((q & 0xF) as i32 - 8) * a[j] as i32;
        isum += ((q >> 4) as i32 - 8) * a[j + 16] as i32;
    }
    f16_at(b, 0) * da * isum as f32
}

/// One Q4_1 block (20 bytes) against activation block `a` with scale `da`, sum `sa`.
#[inline]
pub(crate) fn q4_1_block(b: &[u8], a: &[i8], da: f32, sa: f32) -> f32 {
    let mut isum = 0i32;
    for j in 0..16 {
        let q = b[4 + j];
        isum += (q & 0xF) as i32 * a[j] as i32;
        isum += (q >> 4) as i32 * a[j + 16] as i32;
    }
    f16_at(b, 0) * da * isum as f32 + f16_at(b, 2) * sa
}

/// The 32 values of a Q5_0 block (22 bytes), before centring on 16.
#[inline]
pub(crate) fn q5_0_values(b: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let mut v = [0u8; 32];
    for j in 0..16 {
        let q = b[6 + j];
        v[j] = (q & 0xF) | ((((qh >> j) & 1) as u8) << 4);
        v[j + 16] = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    v
}

/// One Q5_0 block (22 bytes) against activation block `a` with scale `da`.
#[inline]
pub(crate) fn q5_0_block(b: &[u8], a: &[i8], da: f32) -> f32 {
    let v = q5_0_values(b);
    let mut isum = 0i32;
    for j in 0..32 {
        isum += (v[j] as i32 - 16) * a[j] as i32;
    }
    f16_at(b, 0) * da * isum as f32
}

/// One Q8_0 block (34 bytes) against activation block `a` with scale `da`.
#[inline]
pub(crate) fn q8_0_block(b: &[u8], a: &[i8], da: f32) -> f32 {
    let mut isum = 0i32;
    for j in 0..32 {
        isum += (b[2 + j] as i8) as i32 * a[j] as i32;
    }
    f16_at(b, 0) * da * isum as f32
}

/// The eight 6-bit (scale, min) pairs of a Q4_K/Q5_K super-block.
#[inline]
pub(crate) fn k_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        let (a, b) = kiln_formats::gguf::quant::k_scale_min(j, s);
        sc[j] = a;
        m[j] = b;
    }
    (sc, m)
}

/// One Q4_K super-block (144 bytes) against eight activation blocks.
pub(crate) fn q4_k_block(b: &[u8], a: &[i8], da: &[f32], sa: &[f32]) -> f32 {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, m) = k_scales(&b[4..16]);
    let qs = &b[16..144];
    let mut acc = 0f32;
    for j in 0..4 {
        let q = &qs[32 * j..32 * j + 32];
        let (a0, a1) = (&a[64 * j..64 * j + 32], &a[64 * j + 32..64 * j + 64]);
        let (mut i0, mut i1) = (0i32, 0i32);
        for l in 0..32 {
            i0 += (q[l] & 0xF) as i32 * a0[l] as i32;
            i1 += (q[l] >> 4) as i32 * a1[l] as i32;
        }
        let (k0, k1) = (2 * j, 2 * j + 1);
        acc += d * sc[k0] as f32 * da[k0] * i0 as f32 - dmin * m[k0] as f32 * sa[k0];
        acc += d * sc[k1] as f32 * da[k1] * i1 as f32 - dmin * m[k1] as f32 * sa[k1];
    }
    acc
}

/// One Q5_K super-block (176 bytes) against eight activation blocks.
pub(crate) fn q5_k_block(b: &[u8], a: &[i8], da: &[f32], sa: &[f32]) -> f32 {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, m) = k_scales(&b[4..16]);
    let qh = &b[16..48];
    let qs = &b[48..176];
    let mut acc = 0f32;
    for j in 0..4 {
        let q = &qs[32 * j..32 * j + 32];
        let (a0, a1) = (&a[64 * j..64 * j + 32], &a[64 * j + 32..64 * j + 64]);
        let (mut i0, mut i1) = (0i32, 0i32);
        for l in 0..32 {
            let h0 = ((qh[l] >> (2 * j)) & 1) << 4;
            let h1 = ((qh[l] >> (2 * j + 1)) & 1) << 4;
            i0 += ((q[l] & 0xF) | h0) as i32 * a0[l] as i32;
            i1 += ((q[l] >> 4) | h1) as i32 * a1[l] as i32;
        }
        let (k0, k1) = (2 * j, 2 * j + 1);
        acc += d * sc[k0] as f32 * da[k0] * i0 as f32 - dmin * m[k0] as f32 * sa[k0];
        acc += d * sc[k1] as f32 * da[k1] * i1 as f32 - dmin * m[k1] as f32 * sa[k1];
    }
    acc
}

/// The 6-bit value of element `e` (0..256) of a Q6_K super-block, before centring.
#[inline]
pub(crate) fn q6_k_value(b: &[u8], e: usize) -> u8 {
    let (half, e) = (e / 128, e % 128);
    let ql = &b[64 * half..64 * half + 64];
    let qh = &b[128 + 32 * half..128 + 32 * half + 32];
    let (g, l) = (e / 32, e % 32);
    let lo = match g {
        0 => ql[l] & 0xF,
        1 => ql[l + 32] & 0xF,
        2 => ql[l] >> 4,
        _ => ql[l + 32] >> 4,
    };
    lo | (((qh[l] >> (2 * g)) & 3) << 4)
}

/// One Q6_K super-block (210 bytes) against eight activation blocks.
pub(crate) fn q6_k_block(b: &[u8], a: &[i8], da: &[f32]) -> f32 {
    let d = f16_at(b, 208);
    let sc = &b[192..208];
    let mut acc = 0f32;
    for k in 0..16 {
        let mut isum = 0i32;
        for e in 16 * k..16 * k + 16 {
            isum += (q6_k_value(b, e) as i32 - 32) * a[e] as i32;
        }
        acc += d * (sc[k] as i8) as f32 * da[k / 2] * isum as f32;
    }
    acc
}

/// `w` (one row) against token `t` of `a`, for any format with a kernel.
///
/// # Safety
/// `w` holds `a.nb` activation blocks' worth of weights of format `ty`, and `a` is valid
/// for token `t`.
pub(crate) unsafe fn row_dot(ty: super::Fmt, w: &[u8], a: &ActView, t: usize) -> f32 {
    // SAFETY: the caller guarantees token `t` is inside the view.
    let (qs, d, s) = unsafe { a.token(t) };
    let mut acc = 0f32;
    match ty {
        super::Fmt::Q4_0 => {
            for (i, b) in w.chunks_exact(18).enumerate() {
                acc += q4_0_block(b, &qs[32 * i..], d[i]);
            }
        }
        super::Fmt::Q4_1 => {
            for (i, b) in w.chunks_exact(20).enumerate() {
                acc += q4_1_block(b, &qs[32 * i..], d[i], s[i]);
            }
        }
        super::Fmt::Q5_0 => {
            for (i, b) in w.chunks_exact(22).enumerate() {
                acc += q5_0_block(b, &qs[32 * i..], d[i]);
            }
        }
        super::Fmt::Q8_0 => {
            for (i, b) in w.chunks_exact(34).enumerate() {
                acc += q8_0_block(b, &qs[32 * i..], d[i]);
            }
        }
        super::Fmt::Q4_K => {
            for (i, b) in w.chunks_exact(144).enumerate() {
                acc += q4_k_block(b, &qs[256 * i..], &d[8 * i..], &s[8 * i..]);
            }
        }
        super::Fmt::Q5_K => {
            for (i, b) in w.chunks_exact(176).enumerate() {
                acc += q5_k_block(b, &qs[256 * i..], &d[8 * i..], &s[8 * i..]);
            }
        }
        super::Fmt::Q6_K => {
            for (i, b) in w.chunks_exact(210).enumerate() {
                acc += q6_k_block(b, &qs[256 * i..], &d[8 * i..]);
            }
        }
    }
    acc
}

/// The scalar tile: every (row, token) pair through [`row_dot`].
///
/// # Safety
/// As [`super::TileFn`].
pub(crate) unsafe fn tile(
    ty: super::Fmt,
    w: *const u8,
    rb: usize,
    nr: usize,
    a: &ActView,
    nt: usize,
    out: &mut Tile,
) {
    for r in 0..nr {
        // SAFETY: the caller guarantees `nr` rows of `rb` bytes at `w`.
        let row = unsafe { std::slice::from_raw_parts(w.add(r * rb), rb) };
        for t in 0..nt {
            // SAFETY: the caller guarantees `nt` tokens in `a`.
            out[t][r] = unsafe { row_dot(ty, row, a, t) };
        }
    }
}
