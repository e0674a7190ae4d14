//! Vector helpers for attention and elementwise work: dot products and scaled adds of f32
//! against the KV cache's element type (f16 or f32), and SiLU-gating. Each has a scalar
//! version that the tests compare the SIMD ones against.

use half::f16;

use super::Isa;

/// `sum(a[i] * b[i])` over the shorter length.
#[inline]
pub fn dot_f16(isa: Isa, a: &[f32], b: &[f16]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the instruction set was detected on this CPU; slices hold `n` values.
        Isa::Avx512Vnni => return unsafe { x86::dot_f16_512(&a[..n], &b[..n]) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { x86::dot_f16_256(&a[..n], &b[..n]) },
        _ => {}
    }
    let _ = isa;
    a[..n]
        .iter()
        .zip(&b[..n])
        .map(|(x, y)| x * y.to_f32())
        .sum()
}

/// [`dot_f16`] of four activation rows with one f16 row, each weight converted once for
/// all four: every sum is the one [`dot_f16`] gives (the same order of additions), so a
/// product over several tokens equals the products one token at a time.
pub fn dot_f16_x4(isa: Isa, a: [&[f32]; 4], b: &[f16]) -> [f32; 4] {
    let n = a.iter().map(|r| r.len()).min().unwrap_or(0).min(b.len());
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the instruction set was detected on this CPU; every slice holds `n` values.
        Isa::Avx512Vnni => return unsafe { x86::dot_f16_xn_512(a, &b[..n], n) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { x86::dot_f16_x4_256(a, &b[..n], n) },
        _ => {}
    }
    a.map(|r| dot_f16(isa, &r[..n], &b[..n]))
}

/// [`dot_f16_x4`] for eight activation rows: each weight converted once for all eight (on
/// AVX-512; elsewhere two groups of four), the same sums as [`dot_f16`].
pub fn dot_f16_x8(isa: Isa, a: [&[f32]; 8], b: &[f16]) -> [f32; 8] {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        let n = a.iter().map(|r| r.len()).min().unwrap_or(0).min(b.len());
        // SAFETY: the instruction set was detected on this CPU; every slice holds `n` values.
        return unsafe { x86::dot_f16_xn_512(a, &b[..n], n) };
    }
    let lo = dot_f16_x4(isa, [a[0], a[1], a[2], a[3]], b);
    let hi = dot_f16_x4(isa, [a[4], a[5], a[6], a[7]], b);
    std::array::from_fn(|t| if t < 4 { lo[t] } else { hi[t - 4] })
}

/// `acc[i] += w * v[i]` over the shorter length.
#[inline]
pub fn axpy_f16(isa: Isa, acc: &mut [f32], w: f32, v: &[f16]) {
    let n = acc.len().min(v.len());
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the instruction set was detected on this CPU; slices hold `n` values.
        Isa::Avx512Vnni => return unsafe { x86::axpy_f16_512(&mut acc[..n], w, &v[..n]) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { x86::axpy_f16_256(&mut acc[..n], w, &v[..n]) },
        _ => {}
    }
    let _ = isa;
    for (a, b) in acc[..n].iter_mut().zip(&v[..n]) {
        *a += w * b.to_f32();
    }
}

/// `out[p] = scale * q . key(p)` for every `p < out.len()`: one call for a whole row of
/// attention scores, so the per-position work inlines into one SIMD loop.
#[inline]
pub fn scores_f16<'a>(
    isa: Isa,
    q: &[f32],
    scale: f32,
    key: impl Fn(usize) -> &'a [f16],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: the instruction set was detected on this CPU.
        return unsafe { x86::scores_512(q, scale, key, out) };
    }
    for (p, o) in out.iter_mut().enumerate() {
        *o = scale * dot_f16(isa, q, key(p));
    }
}

/// `acc += sum over p of w[p] * val(p)`: the probability-weighted values of a row.
#[inline]
pub fn mix_f16<'a>(isa: Isa, w: &[f32], val: impl Fn(usize) -> &'a [f16], acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: the instruction set was detected on this CPU.
        return unsafe { x86::mix_512(w, val, acc) };
    }
    for (p, &wp) in w.iter().enumerate() {
        axpy_f16(isa, acc, wp, val(p));
    }
}

/// `sum(a[i] * b[i])` over the shorter length, for an f32 cache.
#[inline]
pub fn dot_f32(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the instruction set was detected on this CPU; slices hold `n` values.
        Isa::Avx512Vnni => return unsafe { x86::dot_f32_512(&a[..n], &b[..n]) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { x86::dot_f32_256(&a[..n], &b[..n]) },
        _ => {}
    }
    let _ = isa;
    a[..n].iter().zip(&b[..n]).map(|(x, y)| x * y).sum()
}

/// `acc[i] += w * v[i]` over the shorter length, for an f32 cache.
#[inline]
pub fn axpy_f32(isa: Isa, acc: &mut [f32], w: f32, v: &[f32]) {
    let n = acc.len().min(v.len());
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the instruction set was detected on this CPU; slices hold `n` values.
        Isa::Avx512Vnni => return unsafe { x86::axpy_f32_512(&mut acc[..n], w, &v[..n]) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { x86::axpy_f32_256(&mut acc[..n], w, &v[..n]) },
        _ => {}
    }
    let _ = isa;
    for (a, b) in acc[..n].iter_mut().zip(&v[..n]) {
        *a += w * b;
    }
}

/// [`scores_f16`] over an f32 cache.
#[inline]
pub fn scores_f32<'a>(
    isa: Isa,
    q: &[f32],
    scale: f32,
    key: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: the instruction set was detected on this CPU.
        return unsafe { x86::scores_f32_512(q, scale, key, out) };
    }
    for (p, o) in out.iter_mut().enumerate() {
        *o = scale * dot_f32(isa, q, key(p));
    }
}

/// [`mix_f16`] over an f32 cache.
#[inline]
pub fn mix_f32<'a>(isa: Isa, w: &[f32], val: impl Fn(usize) -> &'a [f32], acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: the instruction set was detected on this CPU.
        return unsafe { x86::mix_f32_512(w, val, acc) };
    }
    for (p, &wp) in w.iter().enumerate() {
        axpy_f32(isa, acc, wp, val(p));
    }
}

/// An element type of the KV cache, with the attention products over it.
pub trait KvElem: Copy + Send + Sync + 'static {
    /// Zero, to fill a new pool.
    const ZERO: Self;
    /// Whether the query and the softmax weights are rounded to f16 before the products.
    /// The f16 cache does, as llama.cpp does (the golden logits come from it); the f32
    /// cache exists for precision and does not.
    const ROUND_OPERANDS: bool;
    /// `out[p] = scale * q . key(p)` for every `p < out.len()`.
    fn scores<'a>(
        isa: Isa,
        q: &[f32],
        scale: f32,
        key: impl Fn(usize) -> &'a [Self],
        out: &mut [f32],
    );
    /// `acc += sum over p of w[p] * val(p)`.
    fn mix<'a>(isa: Isa, w: &[f32], val: impl Fn(usize) -> &'a [Self], acc: &mut [f32]);
    /// [`Self::scores`] of `g` heads that share the keys (grouped-query attention): `q`
    /// holds the g queries one after another, `out` their g rows of scores; each row is
    /// what `scores` gives for its query.
    fn scores_group<'a>(
        isa: Isa,
        q: &[f32],
        g: usize,
        scale: f32,
        key: impl Fn(usize) -> &'a [Self],
        out: &mut [f32],
    ) {
        let (hd, len) = (q.len() / g.max(1), out.len() / g.max(1));
        for (qh, oh) in q.chunks_exact(hd).zip(out.chunks_exact_mut(len)) {
            Self::scores(isa, qh, scale, &key, oh);
        }
    }
    /// [`Self::mix`] of `g` heads that share the values: `w` holds their g rows of
    /// weights, `acc` their g sums; each sum is what `mix` gives for its row.
    fn mix_group<'a>(
        isa: Isa,
        w: &[f32],
        g: usize,
        val: impl Fn(usize) -> &'a [Self],
        acc: &mut [f32],
    ) {
        let (len, hd) = (w.len() / g.max(1), acc.len() / g.max(1));
        for (wh, ah) in w.chunks_exact(len).zip(acc.chunks_exact_mut(hd)) {
            Self::mix(isa, wh, &val, ah);
        }
    }
    /// `dst[i] = from_f32(src[i])` over the shorter length.
    fn store(isa: Isa, src: &[f32], dst: &mut [Self]);
}

impl KvElem for f16 {
    const ZERO: Self = f16::ZERO;
    const ROUND_OPERANDS: bool = true;
    #[inline]
    fn scores<'a>(
        isa: Isa,
        q: &[f32],
        scale: f32,
        key: impl Fn(usize) -> &'a [Self],
        out: &mut [f32],
    ) {
        scores_f16(isa, q, scale, key, out)
    }
    #[inline]
    fn mix<'a>(isa: Isa, w: &[f32], val: impl Fn(usize) -> &'a [Self], acc: &mut [f32]) {
        mix_f16(isa, w, val, acc)
    }
    #[inline]
    fn scores_group<'a>(
        isa: Isa,
        q: &[f32],
        g: usize,
        scale: f32,
        key: impl Fn(usize) -> &'a [Self],
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Vnni
            && g > 0
            && q.len().is_multiple_of(g)
            && out.len().is_multiple_of(g)
        {
            // SAFETY: the instruction set was detected on this CPU.
            if unsafe { x86::scores_group_512(q, g, scale, &key, out) } {
                return;
            }
        }
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx2 && g > 0 && q.len().is_multiple_of(g) && out.len().is_multiple_of(g) {
            // SAFETY: the instruction set was detected on this CPU.
            if unsafe { x86::scores_group_256(q, g, scale, &key, out) } {
                return;
            }
        }
        let (hd, len) = (q.len() / g.max(1), out.len() / g.max(1));
        for (qh, oh) in q.chunks_exact(hd).zip(out.chunks_exact_mut(len)) {
            scores_f16(isa, qh, scale, &key, oh);
        }
    }
    #[inline]
    fn mix_group<'a>(
        isa: Isa,
        w: &[f32],
        g: usize,
        val: impl Fn(usize) -> &'a [Self],
        acc: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Vnni
            && g > 0
            && w.len().is_multiple_of(g)
            && acc.len().is_multiple_of(g)
        {
            // SAFETY: the instruction set was detected on this CPU.
            if unsafe { x86::mix_group_512(w, g, &val, acc) } {
                return;
            }
        }
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx2 && g > 0 && w.len().is_multiple_of(g) && acc.len().is_multiple_of(g) {
            // SAFETY: the instruction set was detected on this CPU.
            if unsafe { x86::mix_group_256(w, g, &val, acc) } {
                return;
            }
        }
        let (len, hd) = (w.len() / g.max(1), acc.len() / g.max(1));
        for (wh, ah) in w.chunks_exact(len).zip(acc.chunks_exact_mut(hd)) {
            mix_f16(isa, wh, &val, ah);
        }
    }
    #[inline]
    fn store(isa: Isa, src: &[f32], dst: &mut [Self]) {
        to_f16(isa, src, dst)
    }
}

impl KvElem for f32 {
    const ZERO: Self = 0.0;
    const ROUND_OPERANDS: bool = false;
    #[inline]
    fn scores<'a>(
        isa: Isa,
        q: &[f32],
        scale: f32,
        key: impl Fn(usize) -> &'a [Self],
        out: &mut [f32],
    ) {
        scores_f32(isa, q, scale, key, out)
    }
    #[inline]
    fn mix<'a>(isa: Isa, w: &[f32], val: impl Fn(usize) -> &'a [Self], acc: &mut [f32]) {
        mix_f32(isa, w, val, acc)
    }
    #[inline]
    fn store(_isa: Isa, src: &[f32], dst: &mut [Self]) {
        let n = src.len().min(dst.len());
        dst[..n].copy_from_slice(&src[..n]);
    }
}

/// `dst[i] = f16::from_f32(src[i])` (round to nearest, ties to even) over the shorter length.
#[inline]
pub fn to_f16(isa: Isa, src: &[f32], dst: &mut [f16]) {
    let n = src.len().min(dst.len());
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
        // SAFETY: both instruction sets include F16C, detected on this CPU.
        return unsafe { x86::to_f16_f16c(&src[..n], &mut dst[..n]) };
    }
    let _ = isa;
    for (d, &x) in dst[..n].iter_mut().zip(&src[..n]) {
        *d = f16::from_f32(x);
    }
}

/// `x[i] = f16::from_f32(x[i]).to_f32()`: every value rounded to the nearest f16.
#[inline]
pub fn round_f16(isa: Isa, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
        // SAFETY: both instruction sets include F16C, detected on this CPU.
        return unsafe { x86::round_f16_f16c(x) };
    }
    let _ = isa;
    for a in x.iter_mut() {
        *a = f16::from_f32(*a).to_f32();
    }
}

/// `x[i] = e^(x[i] - max) / sum` over each row of `len` values in `x` (`x.len() / len` whole
/// rows; a rest is left as it is): the softmax of attention's scores, a row a head. The
/// exponentials are `f32::exp`'s; with AVX-512 sixteen at a time by [`x86::expf_512`], with
/// AVX2 eight at a time by [`x86::expf_256`], both glibc's `expf` bit for bit (the same
/// algorithm and the same fused multiply-adds), so on x86-64 Linux every instruction set gives
/// the bits the scalar loop gives. A row's sum runs position by position, in order, on every
/// path: one dependent addition a position, so the rows of a call go through their sums up to
/// four at a time, side by side (a job's heads: 3 for SmolLM2-135M, 7 for Qwen2.5-0.5B); each
/// row's additions are the ones it takes alone.
pub fn softmax_rows(isa: Isa, x: &mut [f32], len: usize) {
    if len == 0 {
        return;
    }
    let whole = x.len() / len * len;
    let x = &mut x[..whole];
    for row in x.chunks_exact_mut(len) {
        exp_from_max(isa, row);
    }
    for group in x.chunks_mut(4 * len) {
        let mut sums = [0f32; 4];
        match group.len() / len {
            1 => sums_in_order::<1>(group, len, &mut sums),
            2 => sums_in_order::<2>(group, len, &mut sums),
            3 => sums_in_order::<3>(group, len, &mut sums),
            _ => sums_in_order::<4>(group, len, &mut sums),
        }
        for (row, &sum) in group.chunks_exact_mut(len).zip(&sums) {
            scale(isa, row, 1.0 / sum);
        }
    }
}

/// The sums of the `N` rows of `len` values in `x` into `out[..N]`, each in order from the
/// first position (`((0 + x0) + x1) + ...`), the rows' additions interleaved.
#[inline]
fn sums_in_order<const N: usize>(x: &[f32], len: usize, out: &mut [f32; 4]) {
    let rows: [&[f32]; N] = core::array::from_fn(|r| &x[r * len..(r + 1) * len]);
    let mut sums = [0f32; N];
    for p in 0..len {
        for (sum, row) in sums.iter_mut().zip(&rows) {
            *sum += row[p];
        }
    }
    out[..N].copy_from_slice(&sums);
}

/// `x[i] = e^(x[i] - max)` over a row, `max` its largest value.
#[inline]
fn exp_from_max(isa: Isa, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: the instruction set was detected on this CPU.
        return unsafe { x86::exp_from_max_512(x) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: the instruction set was detected on this CPU.
        return unsafe { x86::exp_from_max_256(x) };
    }
    let _ = isa;
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    for s in x.iter_mut() {
        *s = (*s - max).exp();
    }
}

/// `x[i] *= inv` over a row.
#[inline]
fn scale(isa: Isa, x: &mut [f32], inv: f32) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: the instruction set was detected on this CPU.
        return unsafe { x86::scale_512(x, inv) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: the instruction set was detected on this CPU.
        return unsafe { x86::scale_256(x, inv) };
    }
    let _ = isa;
    for s in x.iter_mut() {
        *s *= inv;
    }
}

/// `gate[i] = silu(gate[i]) * up[i]`.
#[inline]
pub fn silu_mul(isa: Isa, gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: the instruction set was detected on this CPU.
        return unsafe { x86::silu_mul_512(&mut gate[..n], &up[..n]) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: the instruction set was detected on this CPU.
        return unsafe { x86::silu_mul_256(&mut gate[..n], &up[..n]) };
    }
    let _ = isa;
    for (g, u) in gate[..n].iter_mut().zip(&up[..n]) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // register arrays indexed by chunk, as the math is written
mod x86 {
    use std::arch::x86_64::*;

    use super::super::x86::{hsum256, tree_halves, tree_last, tree_quarters};

    use half::f16;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16_512(a: &[f32], b: &[f16]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr().cast::<u16>());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY: every load reads inside the first `n` values of both slices.
        unsafe {
            while i + 32 <= n {
                let k0 = _mm512_cvtph_ps(_mm256_loadu_si256(pb.add(i).cast()));
                let k1 = _mm512_cvtph_ps(_mm256_loadu_si256(pb.add(i + 16).cast()));
                acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), k0, acc0);
                acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + 16)), k1, acc1);
                i += 32;
            }
            if i + 16 <= n {
                let k0 = _mm512_cvtph_ps(_mm256_loadu_si256(pb.add(i).cast()));
                acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), k0, acc0);
                i += 16;
            }
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        for j in i..n {
            s += a[j] * b[j].to_f32();
        }
        s
    }

    /// [`dot_f16_512`] of `N` rows `a` (each at least `n` long) with `b` (`n` long), each
    /// weight converted once for all (N = 4 or 8: 2N accumulators and the two converted
    /// weights stay in the 32 registers).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16_xn_512<const N: usize>(
        a: [&[f32]; N],
        b: &[f16],
        n: usize,
    ) -> [f32; N] {
        let pb = b.as_ptr().cast::<u16>();
        let pa = a.map(|r| r.as_ptr());
        let mut acc0 = [_mm512_setzero_ps(); N];
        let mut acc1 = [_mm512_setzero_ps(); N];
        let mut i = 0;
        // SAFETY: every load reads inside the first `n` values of the slices.
        unsafe {
            while i + 32 <= n {
                let k0 = _mm512_cvtph_ps(_mm256_loadu_si256(pb.add(i).cast()));
                let k1 = _mm512_cvtph_ps(_mm256_loadu_si256(pb.add(i + 16).cast()));
                for t in 0..N {
                    acc0[t] = _mm512_fmadd_ps(_mm512_loadu_ps(pa[t].add(i)), k0, acc0[t]);
                    acc1[t] = _mm512_fmadd_ps(_mm512_loadu_ps(pa[t].add(i + 16)), k1, acc1[t]);
                }
                i += 32;
            }
            if i + 16 <= n {
                let k0 = _mm512_cvtph_ps(_mm256_loadu_si256(pb.add(i).cast()));
                for t in 0..N {
                    acc0[t] = _mm512_fmadd_ps(_mm512_loadu_ps(pa[t].add(i)), k0, acc0[t]);
                }
                i += 16;
            }
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
            for j in i..n {
                s += a[t][j] * b[j].to_f32();
            }
            out[t] = s;
        }
        out
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn axpy_f16_512(acc: &mut [f32], w: f32, v: &[f16]) {
        let n = acc.len().min(v.len());
        let (pa, pv) = (acc.as_mut_ptr(), v.as_ptr().cast::<u16>());
        let vw = _mm512_set1_ps(w);
        let mut i = 0;
        // SAFETY: every access is inside the first `n` values of both slices.
        unsafe {
            while i + 16 <= n {
                let x = _mm512_cvtph_ps(_mm256_loadu_si256(pv.add(i).cast()));
                let r = _mm512_fmadd_ps(vw, x, _mm512_loadu_ps(pa.add(i)));
                _mm512_storeu_ps(pa.add(i), r);
                i += 16;
            }
        }
        for j in i..n {
            acc[j] += w * v[j].to_f32();
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn scores_512<'a>(
        q: &[f32],
        scale: f32,
        key: impl Fn(usize) -> &'a [f16],
        out: &mut [f32],
    ) {
        // SAFETY (all arms): this function has the features the callees need.
        unsafe {
            match q.len() {
                64 | 96 | 128 => {
                    let len = out.len();
                    _ = match q.len() {
                        64 => scores_group_regs::<4, 1>(q, scale, &key, out, len),
                        96 => scores_group_regs::<6, 1>(q, scale, &key, out, len),
                        _ => scores_group_regs::<8, 1>(q, scale, &key, out, len),
                    };
                    return;
                }
                _ => {}
            }
            for (p, o) in out.iter_mut().enumerate() {
                *o = scale * dot_f16_512(q, key(p));
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn mix_512<'a>(w: &[f32], val: impl Fn(usize) -> &'a [f16], acc: &mut [f32]) {
        // SAFETY (all arms): this function has the features the callees need.
        unsafe {
            match acc.len() {
                64 | 96 | 128 => {
                    let len = w.len();
                    _ = match acc.len() {
                        64 => mix_group_regs::<4, 1>(w, len, &val, acc),
                        96 => mix_group_regs::<6, 1>(w, len, &val, acc),
                        _ => mix_group_regs::<8, 1>(w, len, &val, acc),
                    };
                    return;
                }
                _ => {}
            }
            for (p, &wp) in w.iter().enumerate() {
                axpy_f16_512(acc, wp, val(p));
            }
        }
    }

    /// The register version of a grouped attention kernel for head size `$hd` (64, 96, 128:
    /// `C` = 4, 6, 8 registers a head) and `$left` heads still to do (`G` at most 4 at head
    /// size 64, 2 above, so that queries or sums, keys and accumulators fit in the 32
    /// registers): `$call` with `C` and `G` named, giving the heads it did; returns `false`
    /// from the enclosing function for a head size without one.
    macro_rules! by_head_size {
        ($hd:expr, $left:expr, |$c:ident, $g:ident| $call:expr) => {
            match ($hd, $left) {
                (64, 1) => by_head_size!(@ 4, 1, $c, $g, $call),
                (64, 2) => by_head_size!(@ 4, 2, $c, $g, $call),
                (64, 3) => by_head_size!(@ 4, 3, $c, $g, $call),
                (64, _) => by_head_size!(@ 4, 4, $c, $g, $call),
                (96, 1) => by_head_size!(@ 6, 1, $c, $g, $call),
                (96, _) => by_head_size!(@ 6, 2, $c, $g, $call),
                (128, 1) => by_head_size!(@ 8, 1, $c, $g, $call),
                (128, _) => by_head_size!(@ 8, 2, $c, $g, $call),
                _ => return false,
            }
        };
        (@ $cv:literal, $gv:literal, $c:ident, $g:ident, $call:expr) => {{
            #[allow(non_upper_case_globals)]
            {
                const $c: usize = $cv;
                const $g: usize = $gv;
                $call
            }
        }};
    }

    /// [`scores_512`] of `g` heads sharing the keys (see [`super::KvElem::scores_group`]),
    /// each key converted once for up to four heads; `false` (nothing written) for a head
    /// size without a register version. Each head's products and sums are those of
    /// [`dot_f16_512`], in the same order, so bit for bit its results.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn scores_group_512<'a>(
        q: &[f32],
        g: usize,
        scale: f32,
        key: &impl Fn(usize) -> &'a [f16],
        out: &mut [f32],
    ) -> bool {
        let (hd, len) = (q.len() / g, out.len() / g);
        let mut h = 0;
        while h < g {
            let (qs, os) = (&q[h * hd..], &mut out[h * len..]);
            // SAFETY: this function has the features the callee needs; it gets whole heads
            // of `q` and whole rows of `out`.
            h += by_head_size!(hd, g - h, |C, G| unsafe {
                scores_group_regs::<C, G>(qs, scale, key, os, len)
            });
        }
        true
    }

    /// [`scores_512`] for `G` heads of `16 * C` values at once with the queries held in
    /// registers (rows of `len` scores in `out`); returns `G`. The products and their two
    /// accumulators are [`dot_f16_512`]'s (chunks alternate between them). Sixteen positions are summed across their lanes together: the
    /// halves of two positions' vectors are added in one instruction, then quarters of four,
    /// and so on, which is the tree `_mm512_reduce_add_ps` sums one vector by (lane `i` with
    /// `i + 8`, then `i + 4`, then `0 + 2` and `1 + 3`, then the two), so each score is
    /// bit for bit [`dot_f16_512`]'s, in a quarter of the instructions.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn scores_group_regs<'a, const C: usize, const G: usize>(
        q: &[f32],
        scale: f32,
        key: &impl Fn(usize) -> &'a [f16],
        out: &mut [f32],
        len: usize,
    ) -> usize {
        let q = &q[..16 * C * G];
        let out = &mut out[..len * G];
        // SAFETY: `q` holds `G` heads of `16 * C` values and `out` G rows of `len`; each key
        // is sliced to `16 * C` values below, and stores go to positions below `len`.
        unsafe {
            let qr: [[__m512; C]; G] = core::array::from_fn(|g| {
                core::array::from_fn(|c| _mm512_loadu_ps(q.as_ptr().add(16 * (C * g + c))))
            });
            let po = out.as_mut_ptr();
            let load = |p: usize| -> [__m512; C] {
                let pk = key(p)[..16 * C].as_ptr().cast::<u16>();
                core::array::from_fn(|c| _mm512_cvtph_ps(_mm256_loadu_si256(pk.add(16 * c).cast())))
            };
            // Head g's products with one key, in two accumulators, added: the vector whose
            // lanes sum to the score.
            let dot = |kc: &[__m512; C], g: usize| {
                let mut acc = [_mm512_setzero_ps(); 2];
                for c in 0..C {
                    acc[c % 2] = _mm512_fmadd_ps(qr[g][c], kc[c], acc[c % 2]);
                }
                _mm512_add_ps(acc[0], acc[1])
            };
            let add = |a, b| _mm512_add_ps(a, b);
            let vs = _mm512_set1_ps(scale);
            let mut p = 0;
            while p + 16 <= len {
                // Per head, four vectors of four positions each (one a 128-bit chunk).
                let mut quads = [[_mm512_setzero_ps(); 4]; G];
                for (qi, quad) in (0..4).map(|qi| (qi, p + 4 * qi)) {
                    let mut halves = [[_mm512_setzero_ps(); 2]; G];
                    for pair in 0..2 {
                        let (ka, kb) = (load(quad + 2 * pair), load(quad + 2 * pair + 1));
                        for g in 0..G {
                            // [a0..8 | b0..8] + [a8..16 | b8..16]: lane i with i + 8.
                            halves[g][pair] = tree_halves(dot(&ka, g), dot(&kb, g), add);
                        }
                    }
                    for g in 0..G {
                        let [x, y] = halves[g];
                        // Chunk 0 of a position with its chunk 1: lane i with i + 4.
                        quads[g][qi] = tree_quarters(x, y, add);
                    }
                }
                for g in 0..G {
                    // Within each chunk: 0 + 2 and 1 + 3, then the two, in position order.
                    let sums = tree_last(quads[g], add);
                    _mm512_storeu_ps(po.add(g * len + p), _mm512_mul_ps(vs, sums));
                }
                p += 16;
            }
            for p in p..len {
                let kc = load(p);
                for g in 0..G {
                    *po.add(g * len + p) = scale * _mm512_reduce_add_ps(dot(&kc, g));
                }
            }
        }
        G
    }

    /// [`mix_512`] of `g` heads sharing the values (see [`super::KvElem::mix_group`]),
    /// each value converted once for up to four heads; `false` (nothing changed) for a
    /// head size without a register version. Each head's sums are those of
    /// [`axpy_f16_512`] over the positions in order, the same fused multiply-adds.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn mix_group_512<'a>(
        w: &[f32],
        g: usize,
        val: &impl Fn(usize) -> &'a [f16],
        acc: &mut [f32],
    ) -> bool {
        let (len, hd) = (w.len() / g, acc.len() / g);
        let mut h = 0;
        while h < g {
            let (ws, acs) = (&w[h * len..], &mut acc[h * hd..]);
            // SAFETY: as in `scores_group_512`.
            h += by_head_size!(hd, g - h, |C, G| unsafe {
                mix_group_regs::<C, G>(ws, len, val, acs)
            });
        }
        true
    }

    /// [`mix_regs`] for `G` heads of `16 * C` values at once (rows of `len` weights in
    /// `w`); returns `G`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn mix_group_regs<'a, const C: usize, const G: usize>(
        w: &[f32],
        len: usize,
        val: &impl Fn(usize) -> &'a [f16],
        acc: &mut [f32],
    ) -> usize {
        let w = &w[..len * G];
        let acc = &mut acc[..16 * C * G];
        // SAFETY: `acc` holds `G` sums of `16 * C` values and `w` G rows of `len`; each
        // value row is sliced to `16 * C` values below.
        unsafe {
            let pa = acc.as_mut_ptr();
            let mut r: [[__m512; C]; G] = core::array::from_fn(|g| {
                core::array::from_fn(|c| _mm512_loadu_ps(pa.add(16 * (C * g + c))))
            });
            let pw = w.as_ptr();
            for p in 0..len {
                let pv = val(p)[..16 * C].as_ptr().cast::<u16>();
                let x: [__m512; C] = core::array::from_fn(|c| {
                    _mm512_cvtph_ps(_mm256_loadu_si256(pv.add(16 * c).cast()))
                });
                for g in 0..G {
                    let vw = _mm512_set1_ps(*pw.add(g * len + p));
                    for c in 0..C {
                        r[g][c] = _mm512_fmadd_ps(vw, x[c], r[g][c]);
                    }
                }
            }
            for g in 0..G {
                for c in 0..C {
                    _mm512_storeu_ps(pa.add(16 * (C * g + c)), r[g][c]);
                }
            }
        }
        G
    }

    /// `dst[i] = f16::from_f32(src[i])` with F16C (round to nearest even, as `half` does).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn to_f16_f16c(src: &[f32], dst: &mut [f16]) {
        let n = src.len().min(dst.len());
        let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr().cast::<u16>());
        let mut i = 0;
        // SAFETY: every access is inside the first `n` values of both slices.
        unsafe {
            while i + 8 <= n {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(ps.add(i)));
                _mm_storeu_si128(pd.add(i).cast(), h);
                i += 8;
            }
        }
        for j in i..n {
            dst[j] = f16::from_f32(src[j]);
        }
    }

    /// `x[i] = f16::from_f32(x[i]).to_f32()` with F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn round_f16_f16c(x: &mut [f32]) {
        let n = x.len();
        let p = x.as_mut_ptr();
        let mut i = 0;
        // SAFETY: every access is inside the first `n` values.
        unsafe {
            while i + 8 <= n {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p.add(i)));
                _mm256_storeu_ps(p.add(i), _mm256_cvtph_ps(h));
                i += 8;
            }
        }
        for j in i..n {
            x[j] = f16::from_f32(x[j]).to_f32();
        }
    }

    /// The sum of the 8 lanes of `a + b`: lane `i` with `i + 4`, then `0 + 2` and `1 + 3`,
    /// then the two (the order every AVX2 dot product here ends with: [`hsum256`]'s).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sum_pair_256(a: __m256, b: __m256) -> f32 {
        hsum256(_mm256_add_ps(a, b))
    }

    /// [`hsum256`] of 8 vectors at once: lane `i` of the result is `hsum256(v[i])`,
    /// by the same additions of the same pairs of lanes, so the same bits (transposed by
    /// shuffles, not reduced one vector at a time).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sum_eight_256(v: &[__m256; 8]) -> __m256 {
        // Lanes i + (i + 4) of two vectors: [v0's 4 | v1's 4], and so on.
        let w = |a: __m256, b: __m256| {
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a, b),
                _mm256_permute2f128_ps::<0x31>(a, b),
            )
        };
        let (w01, w23, w45, w67) = (w(v[0], v[1]), w(v[2], v[3]), w(v[4], v[5]), w(v[6], v[7]));
        // Then 0 + 2 and 1 + 3 of each: [v0 a, v0 b, v2 a, v2 b | v1 a, v1 b, v3 a, v3 b].
        let x = |a: __m256, b: __m256| {
            _mm256_add_ps(
                _mm256_shuffle_ps::<0x44>(a, b),
                _mm256_shuffle_ps::<0xEE>(a, b),
            )
        };
        let (x0, x1) = (x(w01, w23), x(w45, w67));
        // Then a + b of each: [s0, s2, s4, s6 | s1, s3, s5, s7], put in order.
        let s = _mm256_add_ps(
            _mm256_shuffle_ps::<0x88>(x0, x1),
            _mm256_shuffle_ps::<0xDD>(x0, x1),
        );
        _mm256_permutevar8x32_ps(s, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// Whether [`scores_group_256`] and [`mix_group_256`] take `g` heads of `hd` values: whole
    /// steps of 16 values, and at least one head.
    fn grouped_256(hd: usize, g: usize) -> bool {
        hd.is_multiple_of(16) && g > 0
    }

    /// `(first head, count)` for `g` heads in runs of at most 4 (the most whose sums the
    /// grouped kernels keep in registers).
    fn heads_by_4(g: usize) -> impl Iterator<Item = (usize, usize)> {
        (0..g).step_by(4).map(move |h0| (h0, (g - h0).min(4)))
    }

    /// [`dot_f16_256`] of `g` heads (`q`: g rows of `hd`) with each key, times `scale`, into
    /// `out` (g rows of `len` scores): each key's values converted once for all the heads.
    /// Each head's products, accumulators, sum across lanes and tail are `dot_f16_256`'s, in
    /// its order, so its results bit for bit. Up to 4 heads at a time. `false` (nothing
    /// written) unless `hd` is a multiple of 16 and `g` at least 1.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores_group_256<'a>(
        q: &[f32],
        g: usize,
        scale: f32,
        key: &impl Fn(usize) -> &'a [f16],
        out: &mut [f32],
    ) -> bool {
        let (hd, len) = (q.len() / g.max(1), out.len() / g.max(1));
        if !grouped_256(hd, g) {
            return false;
        }
        // At most 4 heads' sums in registers: more heads go 4 at a time (Qwen2.5-0.5B's 7).
        for (h0, n) in heads_by_4(g) {
            let (q, out) = (
                &q[h0 * hd..(h0 + n) * hd],
                &mut out[h0 * len..(h0 + n) * len],
            );
            // SAFETY: the caller's CPU has the features; `grouped_256` held.
            unsafe {
                match n {
                    1 => scores_heads_256::<1>(q, scale, key, out),
                    2 => scores_heads_256::<2>(q, scale, key, out),
                    3 => scores_heads_256::<3>(q, scale, key, out),
                    _ => scores_heads_256::<4>(q, scale, key, out),
                }
            }
        }
        true
    }

    /// [`scores_group_256`] for `G` heads, their sums in registers (a count known when compiled,
    /// so the loop over heads unrolls; with `g` at run time they lived on the stack, a store
    /// and a load a multiply-add). Each position's two sums of a head are added and kept; every
    /// 8 positions, the 8 vectors' lanes are summed at once ([`sum_eight_256`], the same
    /// additions as one at a time) and scaled and stored as one vector: one at a time, the
    /// lane sums and the single stores took about 40% of this function's samples. 8 rows of
    /// 150 positions of the default model's shape ran 1.01x to 1.10x as fast so (three pairs,
    /// most 1% to 2%; `kernels` example, `attention`, the two alternated in one process;
    /// docs/PERF.md, thirty-ninth session).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `q.len() / G` is a multiple of 16.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_heads_256<'a, const G: usize>(
        q: &[f32],
        scale: f32,
        key: &impl Fn(usize) -> &'a [f16],
        out: &mut [f32],
    ) {
        let (hd, len) = (q.len() / G, out.len() / G);
        let pq = q.as_ptr();
        let mut sums = [[_mm256_setzero_ps(); 8]; G];
        for p in 0..len {
            let k = &key(p)[..hd];
            let pk = k.as_ptr().cast::<u16>();
            let mut acc0 = [_mm256_setzero_ps(); G];
            let mut acc1 = [_mm256_setzero_ps(); G];
            let mut i = 0;
            // SAFETY: every load reads inside the key's `hd` values and the `G` heads of `q`.
            unsafe {
                while i + 16 <= hd {
                    let k0 = _mm256_cvtph_ps(_mm_loadu_si128(pk.add(i).cast()));
                    let k1 = _mm256_cvtph_ps(_mm_loadu_si128(pk.add(i + 8).cast()));
                    for h in 0..G {
                        let qh = pq.add(h * hd + i);
                        acc0[h] = _mm256_fmadd_ps(_mm256_loadu_ps(qh), k0, acc0[h]);
                        acc1[h] = _mm256_fmadd_ps(_mm256_loadu_ps(qh.add(8)), k1, acc1[h]);
                    }
                    i += 16;
                }
            }
            let slot = p % 8;
            for h in 0..G {
                sums[h][slot] = _mm256_add_ps(acc0[h], acc1[h]);
            }
            if slot == 7 {
                let sv = _mm256_set1_ps(scale);
                for h in 0..G {
                    // SAFETY: positions `p - 7..=p` of head `h` are inside `out`.
                    unsafe {
                        let r = _mm256_mul_ps(sv, sum_eight_256(&sums[h]));
                        _mm256_storeu_ps(out.as_mut_ptr().add(h * len + p - 7), r);
                    }
                }
            }
        }
        for p in len / 8 * 8..len {
            for h in 0..G {
                out[h * len + p] = scale * hsum256(sums[h][p % 8]);
            }
        }
    }

    /// [`axpy_f16_256`] of every position's value into `g` heads' sums (`w`: g rows of `len`
    /// weights, `acc`: g rows of `hd`), 16 values of every head at a time over all positions,
    /// in registers: each value converted once for all the heads, the sums never stored between
    /// positions. Each sum takes the same multiply-adds in the same order as one head at a time,
    /// so its results bit for bit. Up to 4 heads at a time. `false` (nothing changed) unless
    /// `hd` is a multiple of 16 and `g` at least 1.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn mix_group_256<'a>(
        w: &[f32],
        g: usize,
        val: &impl Fn(usize) -> &'a [f16],
        acc: &mut [f32],
    ) -> bool {
        let (len, hd) = (w.len() / g.max(1), acc.len() / g.max(1));
        if !grouped_256(hd, g) {
            return false;
        }
        for (h0, n) in heads_by_4(g) {
            let (w, acc) = (
                &w[h0 * len..(h0 + n) * len],
                &mut acc[h0 * hd..(h0 + n) * hd],
            );
            // SAFETY: the caller's CPU has the features; `grouped_256` held.
            unsafe {
                match n {
                    1 => mix_heads_256::<1>(w, val, acc),
                    2 => mix_heads_256::<2>(w, val, acc),
                    3 => mix_heads_256::<3>(w, val, acc),
                    _ => mix_heads_256::<4>(w, val, acc),
                }
            }
        }
        true
    }

    /// [`mix_group_256`] for `G` heads, their sums in registers (see [`scores_heads_256`]):
    /// 32 values of every head a pass over the positions where `G` is at most 3 and 32 divides
    /// `hd`, else 16. At `G` = 3, 12 sums, a value's register and 3 weights are AVX2's 16
    /// registers by count; the compiled loop keeps one sum in memory. By 16, the default
    /// model's 64 took four passes, each reading a quarter of every value and finding its
    /// place through the block table again; by 32, two: 8 rows of 150 positions, their caches
    /// cold, ran 1.00x to 1.28x as fast (medians of three pairs 1.11x and 1.12x; 5 rows 1.15x
    /// to 1.20x), the Qwen2.5-0.5B shape (heads by 4 and 3) at 600 positions 0.94x to 1.08x
    /// (`kernels` example, `attention`, the two alternated in one process; docs/PERF.md,
    /// thirty-ninth session). Each sum's multiply-adds are the same, in the same order, however
    /// many a pass takes.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `acc.len() / G` is a multiple of 16.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn mix_heads_256<'a, const G: usize>(
        w: &[f32],
        val: &impl Fn(usize) -> &'a [f16],
        acc: &mut [f32],
    ) {
        // SAFETY: as this function's (`R` x 8 values divide `hd`).
        unsafe {
            if G <= 3 && (acc.len() / G).is_multiple_of(32) {
                mix_heads_256_r::<G, 4>(w, val, acc)
            } else {
                mix_heads_256_r::<G, 2>(w, val, acc)
            }
        }
    }

    /// [`mix_heads_256`], `R` registers (8 values each) of every head a pass.
    ///
    /// # Safety
    /// As [`mix_heads_256`]'s, and `8 * R` divides `acc.len() / G`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn mix_heads_256_r<'a, const G: usize, const R: usize>(
        w: &[f32],
        val: &impl Fn(usize) -> &'a [f16],
        acc: &mut [f32],
    ) {
        let (len, hd) = (w.len() / G, acc.len() / G);
        let pa = acc.as_mut_ptr();
        for c in (0..hd).step_by(8 * R) {
            // SAFETY: every access is inside the `G` sums of `hd` values, the `G` rows of
            // `len` weights, and each value's `hd` values.
            unsafe {
                let mut r = [[_mm256_setzero_ps(); R]; G];
                for h in 0..G {
                    for j in 0..R {
                        r[h][j] = _mm256_loadu_ps(pa.add(h * hd + c + 8 * j));
                    }
                }
                for p in 0..len {
                    let pv = val(p)[..hd].as_ptr().cast::<u16>();
                    let vw: [__m256; G] =
                        core::array::from_fn(|h| _mm256_set1_ps(*w.get_unchecked(h * len + p)));
                    for j in 0..R {
                        let x = _mm256_cvtph_ps(_mm_loadu_si128(pv.add(c + 8 * j).cast()));
                        for h in 0..G {
                            r[h][j] = _mm256_fmadd_ps(vw[h], x, r[h][j]);
                        }
                    }
                }
                for h in 0..G {
                    for j in 0..R {
                        _mm256_storeu_ps(pa.add(h * hd + c + 8 * j), r[h][j]);
                    }
                }
            }
        }
    }

    /// [`super::exp_from_max`] eight positions at a time with AVX2: as [`exp_from_max_512`]
    /// (the maximum over 8 lanes, `e^(x - max)` by [`expf_256`]; the last part chunk through a
    /// masked load whose missing lanes are `max`, and a masked store).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn exp_from_max_256(x: &mut [f32]) {
        let whole = x.len() / 8 * 8;
        let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in x[..whole].chunks_exact(8) {
            // SAFETY: a chunk holds 8 values.
            mv = _mm256_max_ps(mv, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        }
        let mut lanes = [f32::NEG_INFINITY; 8];
        // SAFETY: `lanes` holds 8 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), mv) };
        let max = lanes
            .iter()
            .chain(&x[whole..])
            .fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let m = _mm256_set1_ps(max);
        // SAFETY: the caller's CPU has the features.
        unsafe { map_256(x, m, |v| expf_256(_mm256_sub_ps(v, m))) };
    }

    /// `x[i] *= inv`, eight at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scale_256(x: &mut [f32], inv: f32) {
        let iv = _mm256_set1_ps(inv);
        // SAFETY: the caller's CPU has the features.
        unsafe { map_256(x, iv, |v| _mm256_mul_ps(v, iv)) };
    }

    /// `x[i] = f(x[i])` eight at a time, the last part chunk through a masked load (its
    /// missing lanes `fill`, whose results are not stored) and a masked store.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn map_256(x: &mut [f32], fill: __m256, f: impl Fn(__m256) -> __m256) {
        let whole = x.len() / 8 * 8;
        for c in x[..whole].chunks_exact_mut(8) {
            // SAFETY: a chunk holds 8 values.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), f(_mm256_loadu_ps(c.as_ptr()))) };
        }
        let rest = x.len() - whole;
        if rest > 0 {
            let k = tail_mask_256(rest);
            // SAFETY: the mask's lanes are the `rest` values after `whole`.
            unsafe {
                let p = x.as_mut_ptr().add(whole);
                let v = _mm256_blendv_ps(fill, _mm256_maskload_ps(p, k), _mm256_castsi256_ps(k));
                _mm256_maskstore_ps(p, k, f(v));
            }
        }
    }

    /// Lanes `0..n` all ones, the rest zero (`n` below 8).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn tail_mask_256(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// `gate[i] = gate[i] / (1 + e^-gate[i]) * up[i]` eight at a time with AVX2: the scalar
    /// loop's operations in its order, `e^x` by [`expf_256`], so its results.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn silu_mul_256(gate: &mut [f32], up: &[f32]) {
        let n = gate.len().min(up.len());
        let (pg, pu) = (gate.as_mut_ptr(), up.as_ptr());
        let one = _mm256_set1_ps(1.0);
        let neg = _mm256_set1_ps(-0.0);
        let mut i = 0;
        // SAFETY: every access is inside the first `n` values of both slices.
        unsafe {
            while i + 8 <= n {
                let g = _mm256_loadu_ps(pg.add(i));
                let e = expf_256(_mm256_xor_ps(g, neg));
                let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
                _mm256_storeu_ps(pg.add(i), _mm256_mul_ps(s, _mm256_loadu_ps(pu.add(i))));
                i += 8;
            }
        }
        for j in i..n {
            gate[j] = gate[j] / (1.0 + (-gate[j]).exp()) * up[j];
        }
    }

    /// `e^x` for 8 lanes with AVX2: [`expf_512`]'s steps (glibc's `expf`, FMA build) on two
    /// halves of 4 doubles, the table read by a gather; lanes where `|x| >= 88` go to
    /// `f32::exp` itself.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn expf_256(x: __m256) -> __m256 {
        const INV_LN2_N: f64 = f64::from_bits(0x40471547652b82fe); // 32 / ln 2
        const SHIFT: f64 = f64::from_bits(0x4338000000000000); // 1.5 * 2^52
        const C: [f64; 3] = [
            f64::from_bits(0x3ebc6af84b912394),
            f64::from_bits(0x3f2ebfce50fac4f3),
            f64::from_bits(0x3f962e42ff0c52d6),
        ];
        let half = |xd: __m256d| {
            let kd = _mm256_fmadd_pd(_mm256_set1_pd(INV_LN2_N), xd, _mm256_set1_pd(SHIFT));
            let ki = _mm256_castpd_si256(kd);
            let k = _mm256_sub_pd(kd, _mm256_set1_pd(SHIFT));
            let r = _mm256_fmsub_pd(_mm256_set1_pd(INV_LN2_N), xd, k);
            let idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
            // SAFETY: every index is below 32, the table's length.
            let t = unsafe { _mm256_i64gather_epi64::<8>(EXP2_32.as_ptr().cast(), idx) };
            let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
            let z = _mm256_fmadd_pd(r, _mm256_set1_pd(C[0]), _mm256_set1_pd(C[1]));
            let r2 = _mm256_mul_pd(r, r);
            let y = _mm256_fmadd_pd(r, _mm256_set1_pd(C[2]), _mm256_set1_pd(1.0));
            let y = _mm256_fmadd_pd(z, r2, y);
            _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
        };
        let lo = half(_mm256_cvtps_pd(_mm256_castps256_ps128(x)));
        let hi = half(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x)));
        let mut e = _mm256_set_m128(hi, lo);
        let top = _mm256_and_si256(
            _mm256_srli_epi32::<20>(_mm256_castps_si256(x)),
            _mm256_set1_epi32(0x7ff),
        );
        let special = _mm256_cmpgt_epi32(top, _mm256_set1_epi32(0x42a));
        let special = _mm256_movemask_ps(_mm256_castsi256_ps(special));
        if special != 0 {
            let mut v = [0f32; 8];
            let mut out = [0f32; 8];
            // SAFETY: both arrays hold 8 f32.
            unsafe {
                _mm256_storeu_ps(v.as_mut_ptr(), x);
                _mm256_storeu_ps(out.as_mut_ptr(), e);
            }
            for i in 0..8 {
                if special & (1 << i) != 0 {
                    out[i] = v[i].exp();
                }
            }
            // SAFETY: as above.
            e = unsafe { _mm256_loadu_ps(out.as_ptr()) };
        }
        e
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16_256(a: &[f32], b: &[f16]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr().cast::<u16>());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: every load reads inside the first `n` values of both slices.
        unsafe {
            while i + 16 <= n {
                let k0 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i).cast()));
                let k1 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i + 8).cast()));
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), k0, acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), k1, acc1);
                i += 16;
            }
        }
        let mut s = sum_pair_256(acc0, acc1);
        for j in i..n {
            s += a[j] * b[j].to_f32();
        }
        s
    }

    /// [`dot_f16_256`] of four rows `a` (each at least `n` long) with `b` (`n` long).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16_x4_256(a: [&[f32]; 4], b: &[f16], n: usize) -> [f32; 4] {
        let pb = b.as_ptr().cast::<u16>();
        let pa = a.map(|r| r.as_ptr());
        let mut acc0 = [_mm256_setzero_ps(); 4];
        let mut acc1 = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads inside the first `n` values of the slices.
        unsafe {
            while i + 16 <= n {
                let k0 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i).cast()));
                let k1 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i + 8).cast()));
                for t in 0..4 {
                    acc0[t] = _mm256_fmadd_ps(_mm256_loadu_ps(pa[t].add(i)), k0, acc0[t]);
                    acc1[t] = _mm256_fmadd_ps(_mm256_loadu_ps(pa[t].add(i + 8)), k1, acc1[t]);
                }
                i += 16;
            }
        }
        let mut out = [0.0f32; 4];
        for t in 0..4 {
            let mut s = sum_pair_256(acc0[t], acc1[t]);
            for j in i..n {
                s += a[t][j] * b[j].to_f32();
            }
            out[t] = s;
        }
        out
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy_f16_256(acc: &mut [f32], w: f32, v: &[f16]) {
        let n = acc.len().min(v.len());
        let (pa, pv) = (acc.as_mut_ptr(), v.as_ptr().cast::<u16>());
        let vw = _mm256_set1_ps(w);
        let mut i = 0;
        // SAFETY: every access is inside the first `n` values of both slices.
        unsafe {
            while i + 8 <= n {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(pv.add(i).cast()));
                let r = _mm256_fmadd_ps(vw, x, _mm256_loadu_ps(pa.add(i)));
                _mm256_storeu_ps(pa.add(i), r);
                i += 8;
            }
        }
        for j in i..n {
            acc[j] += w * v[j].to_f32();
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn dot_f32_512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY: every load reads inside the first `n` values of both slices.
        unsafe {
            while i + 32 <= n {
                acc0 =
                    _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pa.add(i + 16)),
                    _mm512_loadu_ps(pb.add(i + 16)),
                    acc1,
                );
                i += 32;
            }
            if i + 16 <= n {
                acc0 =
                    _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
                i += 16;
            }
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        for j in i..n {
            s += a[j] * b[j];
        }
        s
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn axpy_f32_512(acc: &mut [f32], w: f32, v: &[f32]) {
        let n = acc.len().min(v.len());
        let (pa, pv) = (acc.as_mut_ptr(), v.as_ptr());
        let vw = _mm512_set1_ps(w);
        let mut i = 0;
        // SAFETY: every access is inside the first `n` values of both slices.
        unsafe {
            while i + 16 <= n {
                let r = _mm512_fmadd_ps(vw, _mm512_loadu_ps(pv.add(i)), _mm512_loadu_ps(pa.add(i)));
                _mm512_storeu_ps(pa.add(i), r);
                i += 16;
            }
        }
        for j in i..n {
            acc[j] += w * v[j];
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn scores_f32_512<'a>(
        q: &[f32],
        scale: f32,
        key: impl Fn(usize) -> &'a [f32],
        out: &mut [f32],
    ) {
        for (p, o) in out.iter_mut().enumerate() {
            // SAFETY: this function has the features `dot_f32_512` needs.
            *o = scale * unsafe { dot_f32_512(q, key(p)) };
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn mix_f32_512<'a>(
        w: &[f32],
        val: impl Fn(usize) -> &'a [f32],
        acc: &mut [f32],
    ) {
        for (p, &wp) in w.iter().enumerate() {
            // SAFETY: this function has the features `axpy_f32_512` needs.
            unsafe { axpy_f32_512(acc, wp, val(p)) };
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f32_256(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: every load reads inside the first `n` values of both slices.
        unsafe {
            while i + 16 <= n {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8)),
                    _mm256_loadu_ps(pb.add(i + 8)),
                    acc1,
                );
                i += 16;
            }
        }
        let mut s = sum_pair_256(acc0, acc1);
        for j in i..n {
            s += a[j] * b[j];
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy_f32_256(acc: &mut [f32], w: f32, v: &[f32]) {
        let n = acc.len().min(v.len());
        let (pa, pv) = (acc.as_mut_ptr(), v.as_ptr());
        let vw = _mm256_set1_ps(w);
        let mut i = 0;
        // SAFETY: every access is inside the first `n` values of both slices.
        unsafe {
            while i + 8 <= n {
                let r = _mm256_fmadd_ps(vw, _mm256_loadu_ps(pv.add(i)), _mm256_loadu_ps(pa.add(i)));
                _mm256_storeu_ps(pa.add(i), r);
                i += 8;
            }
        }
        for j in i..n {
            acc[j] += w * v[j];
        }
    }

    /// [`super::exp_from_max`] sixteen positions at a time: the maximum over 16 lanes (exact:
    /// the same as in order), then `e^(x - max)` by [`expf_512`], the last part chunk masked
    /// (its missing lanes are `max`, whose exponential is 1 and is not stored).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn exp_from_max_512(x: &mut [f32]) {
        let whole = x.len() / 16 * 16;
        let mut mv = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in x[..whole].chunks_exact(16) {
            // SAFETY: a chunk holds 16 values.
            mv = _mm512_max_ps(mv, unsafe { _mm512_loadu_ps(c.as_ptr()) });
        }
        let mut lanes = [f32::NEG_INFINITY; 16];
        // SAFETY: `lanes` holds 16 values.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), mv) };
        let max = lanes
            .iter()
            .chain(&x[whole..])
            .fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let m = _mm512_set1_ps(max);
        // SAFETY: the caller's CPU has the features.
        unsafe { map_512(x, m, |v| expf_512(_mm512_sub_ps(v, m))) };
    }

    /// `x[i] *= inv`, sixteen at a time.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn scale_512(x: &mut [f32], inv: f32) {
        let iv = _mm512_set1_ps(inv);
        // SAFETY: the caller's CPU has the features.
        unsafe { map_512(x, iv, |v| _mm512_mul_ps(v, iv)) };
    }

    /// `x[i] = f(x[i])` sixteen at a time, the last part chunk through a masked load (its
    /// missing lanes `fill`, whose results are not stored) and a masked store.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn map_512(x: &mut [f32], fill: __m512, f: impl Fn(__m512) -> __m512) {
        let whole = x.len() / 16 * 16;
        for c in x[..whole].chunks_exact_mut(16) {
            // SAFETY: a chunk holds 16 values.
            unsafe { _mm512_storeu_ps(c.as_mut_ptr(), f(_mm512_loadu_ps(c.as_ptr()))) };
        }
        let rest = x.len() - whole;
        if rest > 0 {
            let k: __mmask16 = (1u16 << rest) - 1;
            // SAFETY: the mask's lanes are the `rest` values after `whole`.
            unsafe {
                let p = x.as_mut_ptr().add(whole);
                _mm512_mask_storeu_ps(p, k, f(_mm512_mask_loadu_ps(fill, k, p)));
            }
        }
    }

    /// `2^(i/32)` as f64 bits, less `i << 47` (added back with the exponent): the table
    /// of glibc's `expf`.
    const EXP2_32: [u64; 32] = [
        0x3ff0000000000000,
        0x3fefd9b0d3158574,
        0x3fefb5586cf9890f,
        0x3fef9301d0125b51,
        0x3fef72b83c7d517b,
        0x3fef54873168b9aa,
        0x3fef387a6e756238,
        0x3fef1e9df51fdee1,
        0x3fef06fe0a31b715,
        0x3feef1a7373aa9cb,
        0x3feedea64c123422,
        0x3feece086061892d,
        0x3feebfdad5362a27,
        0x3feeb42b569d4f82,
        0x3feeab07dd485429,
        0x3feea47eb03a5585,
        0x3feea09e667f3bcd,
        0x3fee9f75e8ec5f74,
        0x3feea11473eb0187,
        0x3feea589994cce13,
        0x3feeace5422aa0db,
        0x3feeb737b0cdc5e5,
        0x3feec49182a3f090,
        0x3feed503b23e255d,
        0x3feee89f995ad3ad,
        0x3feeff76f2fb5e47,
        0x3fef199bdd85529c,
        0x3fef3720dcef9069,
        0x3fef5818dcfba487,
        0x3fef7c97337b9b5f,
        0x3fefa4afa2a490da,
        0x3fefd0765b6e4540,
    ];

    /// `e^x` for 16 lanes, glibc's `expf` (its FMA build, which x86-64 Linux runs on any
    /// CPU with AVX-512) step for step in f64: `x * 32 / ln 2 = k + r` (rounded by adding
    /// 1.5 * 2^52, both products fused), `2^(k/32)` from the table with `k / 32` added to
    /// its exponent, `2^(r/32)` by a cubic, the product rounded once to f32. Lanes where
    /// `|x| >= 88` (glibc's own special cases: overflow, underflow, infinities, NaN) go to
    /// `f32::exp` itself.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) fn expf_512(x: __m512) -> __m512 {
        const INV_LN2_N: f64 = f64::from_bits(0x40471547652b82fe); // 32 / ln 2
        const SHIFT: f64 = f64::from_bits(0x4338000000000000); // 1.5 * 2^52
        const C: [f64; 3] = [
            f64::from_bits(0x3ebc6af84b912394),
            f64::from_bits(0x3f2ebfce50fac4f3),
            f64::from_bits(0x3f962e42ff0c52d6),
        ];
        // SAFETY: the table is 32 values read as four registers of 8.
        let tab: [__m512i; 4] = core::array::from_fn(|i| unsafe {
            _mm512_loadu_si512(EXP2_32[8 * i..].as_ptr().cast())
        });
        let half = |xd: __m512d| {
            let kd = _mm512_fmadd_pd(_mm512_set1_pd(INV_LN2_N), xd, _mm512_set1_pd(SHIFT));
            let ki = _mm512_castpd_si512(kd);
            let k = _mm512_sub_pd(kd, _mm512_set1_pd(SHIFT));
            let r = _mm512_fmsub_pd(_mm512_set1_pd(INV_LN2_N), xd, k);
            let idx = _mm512_and_si512(ki, _mm512_set1_epi64(31));
            let lo = _mm512_permutex2var_epi64(tab[0], idx, tab[1]);
            let hi = _mm512_permutex2var_epi64(tab[2], idx, tab[3]);
            let upper = _mm512_test_epi64_mask(idx, _mm512_set1_epi64(16));
            let t = _mm512_mask_blend_epi64(upper, lo, hi);
            let s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64::<47>(ki)));
            let z = _mm512_fmadd_pd(r, _mm512_set1_pd(C[0]), _mm512_set1_pd(C[1]));
            let r2 = _mm512_mul_pd(r, r);
            let y = _mm512_fmadd_pd(r, _mm512_set1_pd(C[2]), _mm512_set1_pd(1.0));
            let y = _mm512_fmadd_pd(z, r2, y);
            _mm512_cvtpd_ps(_mm512_mul_pd(y, s))
        };
        let lo = half(_mm512_cvtps_pd(_mm512_castps512_ps256(x)));
        let hi = half(_mm512_cvtps_pd(_mm256_castpd_ps(
            _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)),
        )));
        let mut e = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castps_pd(_mm512_castps256_ps512(lo)),
            _mm256_castps_pd(hi),
        ));
        let top = _mm512_and_si512(
            _mm512_srli_epi32::<20>(_mm512_castps_si512(x)),
            _mm512_set1_epi32(0x7ff),
        );
        let special = _mm512_cmpgt_epu32_mask(top, _mm512_set1_epi32(0x42a));
        if special != 0 {
            let mut v = [0f32; 16];
            let mut out = [0f32; 16];
            // SAFETY: both arrays hold 16 f32.
            unsafe {
                _mm512_storeu_ps(v.as_mut_ptr(), x);
                _mm512_storeu_ps(out.as_mut_ptr(), e);
            }
            for i in 0..16 {
                if special & (1 << i) != 0 {
                    out[i] = v[i].exp();
                }
            }
            // SAFETY: as above.
            e = unsafe { _mm512_loadu_ps(out.as_ptr()) };
        }
        e
    }

    /// `exp(x)` for 16 lanes: 2^(x log2 e) split into integer and fraction, the fraction
    /// by a degree-6 polynomial (relative error about 2e-7), inputs clamped to +-87.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    fn exp512(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-87.0)),
            _mm512_set1_ps(87.0),
        );
        let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
        let k = _mm512_roundscale_ps::<0>(t);
        let f = _mm512_sub_ps(t, k);
        // 2^f on [-0.5, 0.5].
        let poly = kiln_model::sample::EXP2_POLY;
        let mut p = _mm512_set1_ps(poly[0]);
        for &c in &poly[1..] {
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, k)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn silu_mul_512(gate: &mut [f32], up: &[f32]) {
        let n = gate.len().min(up.len());
        let (pg, pu) = (gate.as_mut_ptr(), up.as_ptr());
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        // SAFETY: every access is inside the first `n` values of both slices.
        unsafe {
            while i + 16 <= n {
                let g = _mm512_loadu_ps(pg.add(i));
                let e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
                let s = _mm512_div_ps(g, _mm512_add_ps(one, e));
                _mm512_storeu_ps(pg.add(i), _mm512_mul_ps(s, _mm512_loadu_ps(pu.add(i))));
                i += 16;
            }
        }
        for j in i..n {
            gate[j] = gate[j] / (1.0 + (-gate[j]).exp()) * up[j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> (Vec<f32>, Vec<f16>) {
        let f = |i: usize| {
            (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 500.0 - 2.0
        };
        (
            (0..n).map(f).collect(),
            (0..n).map(|i| f16::from_f32(f(i + 7))).collect(),
        )
    }

    /// Grouped-query attention's products (one pass over the keys and values for several
    /// heads) give each head, bit for bit, what the one-head products give it: on every
    /// instruction set, head sizes with and without a register version, groups of 1 to 8
    /// (more than one pass of the widest register version), rows of 1 to 64 positions
    /// (sixteen at a time and the rest); scores and sums also match one position at a time.
    #[test]
    fn grouped_heads_match_one_head_at_a_time() {
        for isa in Isa::available() {
            for hd in [64usize, 96, 128, 80] {
                for g in 1..=8usize {
                    for len in [1usize, 5, 8, 15, 16, 37, 64] {
                        let (q, _) = data(g * hd, (hd * 31 + g) as u32);
                        let (_, keys) = data(len * hd, 7 + len as u32);
                        let (_, vals) = data(len * hd, 91 + g as u32);
                        let key = |p: usize| &keys[p * hd..(p + 1) * hd];
                        let val = |p: usize| &vals[p * hd..(p + 1) * hd];
                        // Every head's scores one position at a time (a one-vector sum).
                        let mut want = vec![0f32; g * len];
                        for h in 0..g {
                            for p in 0..len {
                                want[h * len + p] =
                                    0.125 * dot_f16(isa, &q[h * hd..][..hd], key(p));
                            }
                        }
                        let mut one = vec![0f32; g * len];
                        for h in 0..g {
                            let (qh, oh) = (&q[h * hd..][..hd], &mut one[h * len..][..len]);
                            <f16 as KvElem>::scores(isa, qh, 0.125, key, oh);
                        }
                        let mut got = vec![0f32; g * len];
                        <f16 as KvElem>::scores_group(isa, &q, g, 0.125, key, &mut got);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "{isa:?} scores hd {hd} g {g} len {len}"
                        );
                        assert_eq!(
                            bits(&one),
                            bits(&want),
                            "{isa:?} one head hd {hd} len {len}"
                        );
                        // The weights: the scores shifted to be positive, any values do.
                        let w: Vec<f32> = want.iter().map(|x| x.abs() * 0.01).collect();
                        let (start, _) = data(g * hd, 5);
                        // Every head's sums one position at a time (a scaled add each).
                        let mut want = start.clone();
                        for h in 0..g {
                            for p in 0..len {
                                axpy_f16(isa, &mut want[h * hd..][..hd], w[h * len + p], val(p));
                            }
                        }
                        let mut one = start.clone();
                        for h in 0..g {
                            let (wh, ah) = (&w[h * len..][..len], &mut one[h * hd..][..hd]);
                            <f16 as KvElem>::mix(isa, wh, val, ah);
                        }
                        let mut got = start.clone();
                        <f16 as KvElem>::mix_group(isa, &w, g, val, &mut got);
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "{isa:?} mix hd {hd} g {g} len {len}"
                        );
                        assert_eq!(bits(&one), bits(&want), "{isa:?} one head mix hd {hd}");
                    }
                }
            }
        }
    }

    /// Attention's softmax on every instruction set of this CPU against the plain loop
    /// (libm's `exp`, the sum in order), on rows of whole chunks, partial ones, and scores far
    /// below the maximum (the lanes `expf_512` hands to `f32::exp`); 1 to 9 rows a call (the
    /// sums side by side by fours, then the rest), each row different, each against its own
    /// plain loop.
    #[test]
    fn softmax_is_the_plain_loop_on_every_isa() {
        let exact = cfg!(all(target_os = "linux", target_env = "gnu"));
        for isa in Isa::available() {
            // Rows of no values: nothing to do, nothing changed.
            let mut none = vec![1.0f32, 2.0];
            softmax_rows(isa, &mut none, 0);
            assert_eq!(none, [1.0, 2.0]);
        }
        for len in [1usize, 15, 16, 17, 80, 100, 333] {
            let row = |r: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| match (i + r) % 7 {
                        3 => -200.0 + i as f32,
                        5 => f32::NEG_INFINITY,
                        _ => ((i * 37 + r * 11) % 101) as f32 * 0.173 - 8.0 + r as f32,
                    })
                    .collect()
            };
            let plain = |x: &[f32]| -> Vec<f32> {
                let max = x.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                let mut e: Vec<f32> = x.iter().map(|&s| (s - max).exp()).collect();
                let sum = e.iter().fold(0f32, |a, &s| a + s);
                e.iter_mut().for_each(|s| *s *= 1.0 / sum);
                e
            };
            for rows in [1usize, 3, 4, 7, 9] {
                let x: Vec<f32> = (0..rows).flat_map(row).collect();
                for isa in Isa::available() {
                    let mut got = x.clone();
                    // A part row after the whole ones is left as it is.
                    if len > 1 {
                        got.push(7.0);
                    }
                    softmax_rows(isa, &mut got, len);
                    if len > 1 {
                        assert_eq!(got.pop(), Some(7.0));
                    }
                    for (r, got) in got.chunks_exact(len).enumerate() {
                        for (g, w) in got.iter().zip(plain(&x[r * len..(r + 1) * len])) {
                            let ulps = (g.to_bits() as i64 - w.to_bits() as i64).abs();
                            assert!(
                                ulps == 0 || (!exact && ulps <= 2),
                                "{isa:?} len {len}, row {r} of {rows}: {g:e} against {w:e}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The vector `expf`s (AVX-512's and AVX2's, where the CPU has them) against `f32::exp`
    /// over every 61st f32 bit pattern (70 million, both signs, all exponents), the specials,
    /// and the neighbourhood of the cut at 88: the same bits where the C library is glibc on
    /// x86-64 (the machines kiln is measured and tested on), within one unit in the last
    /// place elsewhere.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_expf_is_the_c_librarys() {
        use std::arch::x86_64::*;
        let exact = cfg!(all(target_os = "linux", target_env = "gnu"));
        let mut xs: Vec<f32> = (0..=u32::MAX / 61)
            .map(|i| f32::from_bits(i * 61))
            .collect();
        xs.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            88.0,
            -88.0,
            88.72283,
            -87.33654,
            -103.97208,
            -104.0,
        ]);
        for b in 0..4096u32 {
            xs.push(f32::from_bits(0x42b0_0000 - 2048 + b));
            xs.push(f32::from_bits(0xc2b0_0000 - 2048 + b));
        }
        let isas = Isa::available();
        let mut compared = 0;
        for isa in [Isa::Avx512Vnni, Isa::Avx2] {
            if !isas.contains(&isa) {
                eprintln!("no {isa:?} here: its expf not compared");
                continue;
            }
            compared += 1;
            let mut bad = 0usize;
            let mut out = [0f32; 16];
            for c in xs.chunks(16) {
                let mut v = [0f32; 16];
                v[..c.len()].copy_from_slice(c);
                // SAFETY: the instruction set was detected; both arrays hold 16 f32.
                unsafe {
                    if isa == Isa::Avx512Vnni {
                        let e = x86::expf_512(_mm512_loadu_ps(v.as_ptr()));
                        _mm512_storeu_ps(out.as_mut_ptr(), e);
                    } else {
                        for h in 0..2 {
                            let e = x86::expf_256(_mm256_loadu_ps(v[8 * h..].as_ptr()));
                            _mm256_storeu_ps(out[8 * h..].as_mut_ptr(), e);
                        }
                    }
                }
                for (x, got) in c.iter().zip(out) {
                    let want = x.exp();
                    let same = got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan());
                    let near = (got.to_bits() as i64 - want.to_bits() as i64).abs() <= 1;
                    if !(same || (!exact && near)) {
                        bad += 1;
                        assert!(
                            bad < 10,
                            "{isa:?}: expf({x:e}) = {got:e}, the C library's {want:e}"
                        );
                    }
                }
            }
            assert_eq!(bad, 0, "{isa:?}");
        }
        if compared == 0 {
            eprintln!("no vector expf on this CPU: nothing compared");
        }
    }

    #[test]
    fn simd_vector_helpers_match_scalar() {
        for n in [0, 1, 7, 15, 16, 17, 33, 64, 96, 100, 128, 1536] {
            let (a, b) = data(n, 5);
            let want = dot_f16(Isa::Scalar, &a, &b);
            let mut acc0 = a.clone();
            axpy_f16(Isa::Scalar, &mut acc0, 0.37, &b);
            let up: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
            let mut g0 = a.iter().map(|v| v * 10.0).collect::<Vec<f32>>();
            let g_in = g0.clone();
            silu_mul(Isa::Scalar, &mut g0, &up);
            for isa in Isa::available() {
                let got = dot_f16(isa, &a, &b);
                assert!(
                    (got - want).abs() <= 1e-4 * (n as f32).max(1.0),
                    "{isa:?} dot n={n}"
                );
                let mut acc = a.clone();
                axpy_f16(isa, &mut acc, 0.37, &b);
                for (x, y) in acc.iter().zip(&acc0) {
                    assert!((x - y).abs() <= 1e-5, "{isa:?} axpy n={n}");
                }
                // 37 positions: more than two KV blocks of 16, not a multiple of 16.
                let keys: Vec<Vec<f16>> = (0..37).map(|p| data(n, p as u32 + 11).1).collect();
                let wts: Vec<f32> = (0..37).map(|p| ((p * 7) % 10 + 1) as f32 / 50.0).collect();
                let mut sc = [0f32; 37];
                scores_f16(isa, &a, 0.5, |p| &keys[p], &mut sc);
                let mut mixed = vec![0f32; n];
                mix_f16(isa, &wts, |p| &keys[p], &mut mixed);
                let mut mixed0 = vec![0f32; n];
                for (p, k) in keys.iter().enumerate() {
                    let want = 0.5 * dot_f16(Isa::Scalar, &a, k);
                    assert!(
                        (sc[p] - want).abs() <= 1e-4 * (n as f32).max(1.0),
                        "{isa:?} scores"
                    );
                    axpy_f16(Isa::Scalar, &mut mixed0, wts[p], k);
                }
                for (x, y) in mixed.iter().zip(&mixed0) {
                    assert!((x - y).abs() <= 1e-5, "{isa:?} mix n={n}");
                }
                // A row at a time (the query or the sums held in registers) is bit for bit
                // the same instruction set's position-by-position products.
                let mut mixed1 = vec![0f32; n];
                for (p, k) in keys.iter().enumerate() {
                    assert_eq!(
                        sc[p].to_bits(),
                        (0.5 * dot_f16(isa, &a, k)).to_bits(),
                        "{isa:?} scores n={n}"
                    );
                    axpy_f16(isa, &mut mixed1, wts[p], k);
                }
                assert!(
                    mixed
                        .iter()
                        .zip(&mixed1)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{isa:?} mix n={n}"
                );
                // The f32 cache's helpers, on the same data widened to f32.
                let keys32: Vec<Vec<f32>> = keys
                    .iter()
                    .map(|k| k.iter().map(|v| v.to_f32()).collect())
                    .collect();
                let got = dot_f32(isa, &a, &up);
                let want32: f32 = a.iter().zip(&up).map(|(x, y)| x * y).sum();
                assert!(
                    (got - want32).abs() <= 1e-4 * (n as f32).max(1.0),
                    "{isa:?} dot_f32 n={n}"
                );
                let mut acc = a.clone();
                axpy_f32(isa, &mut acc, 0.37, &up);
                for (x, y) in acc.iter().zip(&acc0) {
                    assert!((x - y).abs() <= 1e-5, "{isa:?} axpy_f32 n={n}");
                }
                let mut sc32 = [0f32; 37];
                scores_f32(isa, &a, 0.5, |p| &keys32[p], &mut sc32);
                let mut mixed32 = vec![0f32; n];
                mix_f32(isa, &wts, |p| &keys32[p], &mut mixed32);
                for p in 0..37 {
                    assert!(
                        (sc32[p] - sc[p]).abs() <= 1e-4 * (n as f32).max(1.0),
                        "{isa:?} scores_f32"
                    );
                }
                for (x, y) in mixed32.iter().zip(&mixed0) {
                    assert!((x - y).abs() <= 1e-5, "{isa:?} mix_f32 n={n}");
                }
                let mut g = g_in.clone();
                silu_mul(isa, &mut g, &up);
                // AVX2's takes the scalar loop's operations with glibc's `expf` bit for bit
                // (`vector_expf_is_the_c_librarys`): its very results there.
                let same = isa == Isa::Avx2 && cfg!(all(target_os = "linux", target_env = "gnu"));
                for (x, y) in g.iter().zip(&g0) {
                    assert!(
                        (x - y).abs() <= 1e-5 * y.abs().max(1.0)
                            && (!same || x.to_bits() == y.to_bits()),
                        "{isa:?} silu n={n}: {x} {y}"
                    );
                }
            }
        }
    }
}
