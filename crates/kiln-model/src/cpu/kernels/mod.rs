//! Quantized matrix kernels. Activations are quantized to 8 bits per 32-block once per
//! matrix product ([`QAct`]); weights stay in the file's block format and are multiplied
//! with integer dot products, then scaled per block. One implementation per instruction
//! set, chosen at run time; [`scalar`] is the reference the others are tested against.
//!
//! Work is done in tiles of up to 4 weight rows by 4 tokens, so each weight block is
//! decoded once for several tokens (prefill) and each activation block is loaded once for
//! several rows (decode).

#[cfg(target_arch = "aarch64")]
mod neon;
pub(crate) mod scalar;
#[cfg(test)]
mod tests;
pub(crate) mod vec;
#[cfg(target_arch = "x86_64")]
mod x86;

use kiln_gguf::GgmlType;

/// An instruction set the kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust; the reference.
    Scalar,
    /// x86-64 AVX2 with FMA and F16C.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL) with VNNI integer dot products.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512Vnni,
    /// AArch64 Advanced SIMD.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Neon,
}

impl Isa {
    /// The best instruction set this CPU has; `KILN_CPU_ISA` (scalar, avx2, avx512,
    /// neon) picks a lesser one, to compare paths.
    pub fn detect() -> Isa {
        let all = Isa::available();
        let best = *all.last().unwrap_or(&Isa::Scalar);
        match std::env::var("KILN_CPU_ISA") {
            Ok(want) => all
                .iter()
                .copied()
                .find(|i| i.name() == want.trim())
                .unwrap_or(best),
            Err(_) => best,
        }
    }

    /// Every instruction set this CPU can run, worst first (always starts with `Scalar`).
    pub fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx2);
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                {
                    v.push(Isa::Avx512Vnni);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                v.push(Isa::Neon);
            }
        }
        v
    }

    /// Short name, as `KILN_CPU_ISA` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512",
            Isa::Neon => "neon",
        }
    }
}

/// Weight formats with integer kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum Fmt {
    /// 4-bit, one scale per 32.
    Q4_0,
    /// 4-bit, scale and minimum per 32.
    Q4_1,
    /// 5-bit, one scale per 32 (llama.cpp's fallback for Q4_K rows not a multiple of 256).
    Q5_0,
    /// 8-bit, one scale per 32.
    Q8_0,
    /// 4-bit super-blocks of 256 with 6-bit scales and minimums per 32.
    Q4_K,
    /// 5-bit super-blocks of 256.
    Q5_K,
    /// 6-bit super-blocks of 256 with 8-bit scales per 16.
    Q6_K,
}

impl Fmt {
    /// The kernel format for a file type, if there is one.
    pub fn of(ty: GgmlType) -> Option<Fmt> {
        Some(match ty {
            GgmlType::Q4_0 => Fmt::Q4_0,
            GgmlType::Q4_1 => Fmt::Q4_1,
            GgmlType::Q5_0 => Fmt::Q5_0,
            GgmlType::Q8_0 => Fmt::Q8_0,
            GgmlType::Q4_K => Fmt::Q4_K,
            GgmlType::Q5_K => Fmt::Q5_K,
            GgmlType::Q6_K => Fmt::Q6_K,
            _ => return None,
        })
    }
}

/// Whether the CPU backend can use a matrix of this type.
pub fn supported(ty: GgmlType) -> bool {
    ty.is_supported() || Fmt::of(ty).is_some()
}

/// Decodes whole blocks to f32: `kiln_gguf`'s reference decoders, plus Q5_0.
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    if ty == GgmlType::Q5_0 {
        scalar::dequant_q5_0(src, out);
    } else {
        // Sizes were checked when the matrix was taken in.
        let _ = kiln_gguf::quant::dequantize(ty, src, out);
    }
}

/// Results of one tile: `out[row][token]`.
pub type Tile = [[f32; 4]; 4];

/// Activations quantized to 8 bits in blocks of 32: values, per-block scale `d`, and
/// `s = d * sum(values)` (for formats with a minimum or an offset).
#[derive(Debug, Default)]
pub struct QAct {
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    n: usize,
    cols: usize,
}

/// A borrowed view of some tokens of a [`QAct`], as the kernels read it.
#[derive(Clone, Copy)]
pub struct ActView<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
    /// 32-blocks per token.
    nb: usize,
}

impl<'a> ActView<'a> {
    /// The view from token `t` on.
    #[inline]
    pub fn skip(&self, t: usize) -> ActView<'a> {
        ActView {
            qs: &self.qs[t * self.nb * 32..],
            d: &self.d[t * self.nb..],
            s: &self.s[t * self.nb..],
            nb: self.nb,
        }
    }

    /// Tokens in the view.
    #[inline]
    pub fn tokens(&self) -> usize {
        self.d.len().checked_div(self.nb).unwrap_or(0)
    }

    /// Values, scales and sums of token `t`.
    ///
    /// # Safety
    /// `t` is below [`ActView::tokens`] (checked in debug builds only).
    #[inline]
    pub(crate) unsafe fn token(&self, t: usize) -> (&'a [i8], &'a [f32], &'a [f32]) {
        debug_assert!(t < self.tokens());
        let nb = self.nb;
        // SAFETY: the caller keeps `t` in range, so these ranges are inside the slices.
        unsafe {
            (
                self.qs.get_unchecked(t * nb * 32..(t + 1) * nb * 32),
                self.d.get_unchecked(t * nb..(t + 1) * nb),
                self.s.get_unchecked(t * nb..(t + 1) * nb),
            )
        }
    }

    /// Raw pointers to token `t`'s values, scales and sums (for the SIMD kernels).
    #[inline]
    pub(crate) fn ptrs(&self, t: usize) -> (*const i8, *const f32, *const f32) {
        let nb = self.nb;
        (
            self.qs.as_ptr().wrapping_add(t * nb * 32),
            self.d.as_ptr().wrapping_add(t * nb),
            self.s.as_ptr().wrapping_add(t * nb),
        )
    }
}

impl QAct {
    /// An empty buffer; it grows to the largest input it is given and stays there.
    pub fn new() -> Self {
        Self::default()
    }

    /// Quantizes `n` rows of width `cols` (a multiple of 32) from `x`.
    pub fn quantize(&mut self, isa: Isa, x: &[f32], n: usize, cols: usize) {
        debug_assert!(cols.is_multiple_of(32) && x.len() >= n * cols);
        let nb = cols / 32;
        self.prepare(n, cols);
        quantize_rows(
            isa,
            &x[..n * cols],
            &mut self.qs[..n * cols],
            &mut self.d[..n * nb],
            &mut self.s[..n * nb],
        );
    }

    /// Sizes the buffers for `n` rows of width `cols` (a multiple of 32), for threads to fill
    /// in parts through the returned handle.
    pub fn prepare(&mut self, n: usize, cols: usize) -> QActParts {
        let nb = cols / 32;
        if self.qs.len() < n * cols {
            self.qs.resize(n * cols, 0);
        }
        if self.d.len() < n * nb {
            self.d.resize(n * nb, 0.0);
            self.s.resize(n * nb, 0.0);
        }
        self.n = n;
        self.cols = cols;
        QActParts {
            qs: self.qs.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            n,
            cols,
        }
    }

    /// The quantized rows `t0..t0 + n` (of the last [`QAct::quantize`]).
    pub fn view(&self, t0: usize, n: usize) -> ActView<'_> {
        let nb = self.cols / 32;
        let (t0, t1) = (t0.min(self.n), (t0 + n).min(self.n));
        ActView {
            qs: &self.qs[t0 * self.cols..t1 * self.cols],
            d: &self.d[t0 * nb..t1 * nb],
            s: &self.s[t0 * nb..t1 * nb],
            nb,
        }
    }
}

/// Raw access to a [`QAct`]'s buffers, for threads that each quantize their own rows.
#[derive(Clone, Copy)]
pub struct QActParts {
    qs: *mut i8,
    d: *mut f32,
    s: *mut f32,
    n: usize,
    cols: usize,
}

// SAFETY: the parts are only handed out as disjoint row ranges (see `rows`).
unsafe impl Send for QActParts {}
// SAFETY: as above.
unsafe impl Sync for QActParts {}

impl QActParts {
    /// The buffers of rows `t0..t1`.
    ///
    /// # Safety
    /// No two live results overlap, and the [`QAct`] they came from is neither used nor
    /// moved while they live.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn rows(&self, t0: usize, t1: usize) -> (&mut [i8], &mut [f32], &mut [f32]) {
        let (t0, t1) = (t0.min(self.n), t1.min(self.n).max(t0.min(self.n)));
        let nb = self.cols / 32;
        // SAFETY: the ranges are inside the buffers `prepare` sized; disjointness is the
        // caller's promise.
        unsafe {
            (
                std::slice::from_raw_parts_mut(self.qs.add(t0 * self.cols), (t1 - t0) * self.cols),
                std::slice::from_raw_parts_mut(self.d.add(t0 * nb), (t1 - t0) * nb),
                std::slice::from_raw_parts_mut(self.s.add(t0 * nb), (t1 - t0) * nb),
            )
        }
    }
}

/// Quantizes whole rows (every row a multiple of 32 long) with the given instruction set.
pub fn quantize_rows(isa: Isa, x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: `Isa::Avx512Vnni` is only chosen when the CPU has these features.
        unsafe { x86::quantize_avx512(x, qs, d, s) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2, FMA and F16C.
        unsafe { x86::quantize_avx2(x, qs, d, s) };
        return;
    }
    let _ = isa;
    scalar::quantize_row(x, qs, d, s);
}

/// A tile kernel: rows `0..nr` (each `rb` bytes, starting at `w`) against tokens `0..nt`
/// of `a`, into `out[row][token]`.
///
/// # Safety
/// `w` points to `nr` readable rows of `rb` bytes; each row holds `a.nb * 32` weights of
/// the kernel's format; `nr` and `nt` are at most 4, and `a` has at least `nt` tokens; the
/// CPU has the kernel's instruction set.
pub type TileFn = unsafe fn(*const u8, usize, usize, &ActView, usize, &mut Tile);

/// The tile kernel for a format on an instruction set.
pub fn tile_fn(isa: Isa, fmt: Fmt) -> TileFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => x86::tile_fn_avx512(fmt),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::tile_fn_avx2(fmt),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => neon::tile_fn(fmt),
        _ => scalar_tile_fn(fmt),
    }
}

/// An 8-token kernel: one weight row (`pairs` pairs of 32-blocks at the pointer) against the
/// 8 tokens of one group of a [`Pack8`] (its values, scales and sums at the pointers),
/// without the last block of a row of odd length. Bit for bit the [`TileFn`] of the same
/// instruction set and format on those blocks.
pub type WideFn = unsafe fn(*const u8, usize, *const i8, *const f32, *const f32) -> [f32; 8];

/// The 8-token kernel for a format on an instruction set, where there is one (AVX-512 VNNI,
/// Q4_1 for now). Batched decoding runs through it: each weight block is unpacked once for
/// 8 tokens instead of once per 4.
pub fn wide_fn(isa: Isa, fmt: Fmt) -> Option<WideFn> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => x86::wide_fn_avx512(fmt),
        _ => {
            let _ = fmt;
            None
        }
    }
}

/// Quantized activations regrouped for [`WideFn`] kernels: tokens in groups of 8 (the last
/// padded with zeros), and within a group, for each pair of 32-blocks and each 4 values `k`
/// of a block, 64 bytes: values `4k..4k + 4` of the first block for tokens 0..8, then of the
/// second. Scales and sums per pair: 16 lanes in the same token order.
#[derive(Debug, Default)]
pub struct Pack8 {
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    pairs: usize,
    groups: usize,
}

impl Pack8 {
    /// An empty buffer; it grows to the largest input it is given and stays there.
    pub fn new() -> Self {
        Self::default()
    }

    /// Regroups the first `groups * 8` tokens of `a` (tokens past its end count as zero).
    pub fn pack(&mut self, a: &ActView, groups: usize) {
        let pairs = a.nb / 2;
        let n = a.tokens();
        self.pairs = pairs;
        self.groups = groups;
        let (qn, dn) = (groups * pairs * 512, groups * pairs * 16);
        if self.qs.len() < qn {
            self.qs.resize(qn, 0);
        }
        if self.d.len() < dn {
            self.d.resize(dn, 0.0);
            self.s.resize(dn, 0.0);
        }
        for g in 0..groups {
            for lane in 0..8 {
                let t = g * 8 + lane;
                for p in 0..pairs {
                    let qo = (g * pairs + p) * 512;
                    let so = (g * pairs + p) * 16;
                    for half in 0..2 {
                        let b = 2 * p + half;
                        let (dv, sv) = if t < n {
                            // SAFETY: `t` is below the view's token count.
                            let (qs, d, s) = unsafe { a.token(t) };
                            for k in 0..8 {
                                let o = qo + 64 * k + 32 * half + 4 * lane;
                                self.qs[o..o + 4].copy_from_slice(&qs[32 * b + 4 * k..][..4]);
                            }
                            (d[b], s[b])
                        } else {
                            for k in 0..8 {
                                let o = qo + 64 * k + 32 * half + 4 * lane;
                                self.qs[o..o + 4].fill(0);
                            }
                            (0.0, 0.0)
                        };
                        self.d[so + 8 * half + lane] = dv;
                        self.s[so + 8 * half + lane] = sv;
                    }
                }
            }
        }
    }
}

/// Multiplies weight rows `r0..r1` (each `rb` bytes of `w`) with the first `n` tokens of
/// `a`, packed in `pk`, 8 tokens at a time through `wf`; the last block of rows of odd
/// length goes through the scalar reference, as the tile kernels do. Hands each result to
/// `store(row, token, value)`.
///
/// # Panics
/// If `w` is shorter than `r1` rows, or `pk` was not packed from `a` with enough groups
/// for `n` tokens.
#[allow(clippy::too_many_arguments)]
pub fn gemm_rows_wide(
    wf: WideFn,
    fmt: Fmt,
    w: &[u8],
    rb: usize,
    r0: usize,
    r1: usize,
    a: &ActView,
    pk: &Pack8,
    n: usize,
    mut store: impl FnMut(usize, usize, f32),
) {
    assert!(r1 * rb <= w.len(), "weight rows out of range");
    assert!(n <= pk.groups * 8 && n <= a.tokens() && pk.pairs == a.nb / 2);
    let nb = a.nb;
    let pairs = pk.pairs;
    for r in r0..r1 {
        let row = &w[r * rb..(r + 1) * rb];
        for g in 0..n.div_ceil(8) {
            let (qo, so) = (g * pairs * 512, g * pairs * 16);
            // SAFETY: the row holds `pairs` block pairs (it is `a`'s width in the format);
            // the pack holds group `g` (asserted above); `wf` came from `wide_fn` for this
            // CPU.
            let v = unsafe {
                wf(
                    row.as_ptr(),
                    pairs,
                    pk.qs[qo..].as_ptr(),
                    pk.d[so..].as_ptr(),
                    pk.s[so..].as_ptr(),
                )
            };
            for (lane, &x) in v.iter().enumerate().take(n - g * 8) {
                let t = g * 8 + lane;
                let mut x = x;
                if nb % 2 == 1 {
                    // SAFETY: `t < n <= a.tokens()`.
                    let (qs, d, s) = unsafe { a.token(t) };
                    let (a, da, sa) = (&qs[32 * (nb - 1)..], d[nb - 1], s[nb - 1]);
                    x += last_block(fmt, row, nb, a, da, sa);
                }
                store(r, t, x);
            }
        }
    }
}

/// The scalar product of the last 32-block of a row of `nb` blocks, as the SIMD tiles add it
/// to rows of odd length (K-quant rows are whole super-blocks and never have one).
fn last_block(fmt: Fmt, row: &[u8], nb: usize, a: &[i8], da: f32, sa: f32) -> f32 {
    let at = |bytes: usize| &row[(nb - 1) * bytes..nb * bytes];
    match fmt {
        Fmt::Q4_0 => scalar::q4_0_block(at(18), a, da),
        Fmt::Q4_1 => scalar::q4_1_block(at(20), a, da, sa),
        Fmt::Q5_0 => scalar::q5_0_block(at(22), a, da),
        Fmt::Q8_0 => scalar::q8_0_block(at(34), a, da),
        Fmt::Q4_K | Fmt::Q5_K | Fmt::Q6_K => 0.0,
    }
}

/// The scalar tile kernel for a format.
pub fn scalar_tile_fn(fmt: Fmt) -> TileFn {
    macro_rules! wrap {
        ($f:ident) => {{
            unsafe fn t(w: *const u8, rb: usize, nr: usize, a: &ActView, nt: usize, o: &mut Tile) {
                // SAFETY: forwarded from the caller of this `TileFn`.
                unsafe { scalar::tile(Fmt::$f, w, rb, nr, a, nt, o) }
            }
            t as TileFn
        }};
    }
    match fmt {
        Fmt::Q4_0 => wrap!(Q4_0),
        Fmt::Q4_1 => wrap!(Q4_1),
        Fmt::Q5_0 => wrap!(Q5_0),
        Fmt::Q8_0 => wrap!(Q8_0),
        Fmt::Q4_K => wrap!(Q4_K),
        Fmt::Q5_K => wrap!(Q5_K),
        Fmt::Q6_K => wrap!(Q6_K),
    }
}

/// Multiplies weight rows `r0..r1` (each `rb` bytes of `w`) with every token of `a`,
/// in tiles of 4 rows by 4 tokens, handing each result to `store(row, token, value)`.
///
/// # Panics
/// If `w` is shorter than `r1` rows or a row is not `a`'s width in the kernel's format
/// (the caller checked both when it took the matrix in).
pub fn gemm_rows(
    tf: TileFn,
    w: &[u8],
    rb: usize,
    r0: usize,
    r1: usize,
    a: &ActView,
    mut store: impl FnMut(usize, usize, f32),
) {
    assert!(r1 * rb <= w.len(), "weight rows out of range");
    let n = a.tokens();
    // With one token the product streams weights from DRAM: one row at a time keeps a
    // single sequential stream the prefetchers follow (4 interleaved rows run at half the
    // bandwidth). With more, 4 rows share each activation load and each weight block
    // serves every token (2 and 3 tokens through 1-row tiles cost 1.7x and 2.3-2.7x one
    // token; through 4-row tiles 1.1-1.4x and 1.3-1.8x: `kernels` example, `batch`).
    let max_rows = if n < 2 { 1 } else { 4 };
    let mut tile: Tile = [[0.0; 4]; 4];
    let mut r = r0;
    while r < r1 {
        let nr = (r1 - r).min(max_rows);
        let mut t = 0;
        while t < n {
            let nt = (n - t).min(4);
            let view = a.skip(t);
            // SAFETY: rows `r..r + nr` are inside `w` (asserted above), `view` has at least
            // `nt` tokens, and `tf` came from `tile_fn` for this CPU.
            unsafe { tf(w.as_ptr().add(r * rb), rb, nr, &view, nt, &mut tile) };
            for (i, row) in tile.iter().enumerate().take(nr) {
                for (j, &v) in row.iter().enumerate().take(nt) {
                    store(r + i, t + j, v);
                }
            }
            t += nt;
        }
        r += nr;
    }
}
