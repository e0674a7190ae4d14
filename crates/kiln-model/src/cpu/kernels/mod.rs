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
pub type Tile = [[f32; 8]; 4];

/// Activations quantized to 8 bits in blocks of 32: values, per-block scale `d`, and
/// `s = d * sum(values)` (for formats with a minimum or an offset).
#[derive(Debug, Default)]
pub struct QAct {
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    /// The values again, by 16 blocks (see [`QAct::transpose`]), for kernels that want them.
    qt: Vec<i8>,
    n: usize,
    cols: usize,
    /// Whether `qt` holds the last quantized rows.
    transposed: bool,
}

/// Values of 16 blocks in the order [`QAct::transpose`] gives them, then the 16 blocks'
/// sums of values (i32).
pub const GROUP_BYTES: usize = 576;

/// A borrowed view of some tokens of a [`QAct`], as the kernels read it.
#[derive(Clone, Copy)]
pub struct ActView<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
    /// The values by 16 blocks (`nb / 16` groups a token), or nothing.
    qt: &'a [i8],
    /// 32-blocks per token.
    nb: usize,
}

impl<'a> ActView<'a> {
    /// The view from token `t` on.
    #[inline]
    pub fn skip(&self, t: usize) -> ActView<'a> {
        let g = self.nb / 16 * GROUP_BYTES;
        ActView {
            qs: &self.qs[t * self.nb * 32..],
            d: &self.d[t * self.nb..],
            s: &self.s[t * self.nb..],
            qt: self.qt.get(t * g..).unwrap_or(&[]),
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

    /// Token `t`'s values by 16 blocks ([`QAct::transpose`]): a null pointer where the view
    /// has none.
    #[inline]
    pub(crate) fn grouped(&self, t: usize) -> *const i8 {
        if self.qt.is_empty() {
            std::ptr::null()
        } else {
            self.qt
                .as_ptr()
                .wrapping_add(t * (self.nb / 16) * GROUP_BYTES)
        }
    }

    /// This view's first `n` tokens with their values regrouped into `buf` (for kernels
    /// that want [`QAct::transpose`]'s order and were handed a view without it).
    pub(crate) fn regrouped<'b>(&self, n: usize, buf: &'b mut Vec<i8>) -> ActView<'b>
    where
        'a: 'b,
    {
        let n = n.min(self.tokens());
        buf.clear();
        buf.resize(n * (self.nb / 16) * GROUP_BYTES, 0);
        regroup(&self.qs[..n * self.nb * 32], self.nb, buf);
        ActView {
            qs: &self.qs[..n * self.nb * 32],
            d: &self.d[..n * self.nb],
            s: &self.s[..n * self.nb],
            qt: buf,
            nb: self.nb,
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
        self.transposed = false;
        QActParts {
            qs: self.qs.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            n,
            cols,
        }
    }

    /// Also keeps the values of each token's whole groups of 16 blocks regrouped for
    /// kernels that sum a block in one lane: per group, 8 rows of 64 bytes, row `k` holding
    /// values `4k..4k + 4` of the 16 blocks (block `l` in bytes `4l..4l + 4`), then each
    /// block's sum of values as an i32 (64 bytes).
    pub fn transpose(&mut self) {
        let (nb, n) = (self.cols / 32, self.n);
        let groups = nb / 16;
        let len = n * groups * GROUP_BYTES;
        if self.qt.len() < len {
            self.qt.resize(len, 0);
        }
        regroup(&self.qs[..n * self.cols], nb, &mut self.qt[..len]);
        self.transposed = true;
    }

    /// The quantized rows `t0..t0 + n` (of the last [`QAct::quantize`]).
    pub fn view(&self, t0: usize, n: usize) -> ActView<'_> {
        let nb = self.cols / 32;
        let (t0, t1) = (t0.min(self.n), (t0 + n).min(self.n));
        let g = nb / 16 * GROUP_BYTES;
        ActView {
            qs: &self.qs[t0 * self.cols..t1 * self.cols],
            d: &self.d[t0 * nb..t1 * nb],
            s: &self.s[t0 * nb..t1 * nb],
            qt: if self.transposed {
                &self.qt[t0 * g..t1 * g]
            } else {
                &[]
            },
            nb,
        }
    }
}

/// Each token's whole groups of 16 blocks of `qs` (tokens of `nb` blocks) into `qt` in the
/// order [`QAct::transpose`] describes.
fn regroup(qs: &[i8], nb: usize, qt: &mut [i8]) {
    let groups = nb / 16;
    let src = qs.as_chunks::<4>().0;
    let dst = qt.as_chunks_mut::<4>().0;
    const UNITS: usize = GROUP_BYTES / 4;
    for t in 0..qs.len() / (nb * 32).max(1) {
        for g in 0..groups {
            let from = &src[(t * nb + 16 * g) * 8..][..128];
            let to = &mut dst[(t * groups + g) * UNITS..][..UNITS];
            for (l, block) in from.chunks_exact(8).enumerate() {
                let mut sum = 0i32;
                for (k, v) in block.iter().enumerate() {
                    to[16 * k + l] = *v;
                    sum += v.iter().map(|&x| i32::from(x)).sum::<i32>();
                }
                to[128 + l] = sum.to_le_bytes().map(|b| b as i8);
            }
        }
    }
}

/// Bytes of 16 blocks of a format as [`repack`] lays them out: the same as in the file.
fn group_bytes(fmt: Fmt) -> usize {
    match fmt {
        Fmt::Q8_0 => 16 * 34,
        _ => 16 * 20,
    }
}

/// The rows of a matrix in the layout its kernel reads, where that is not the file's: for
/// AVX-512 VNNI, each whole group of 16 blocks of a Q4_1 row becomes the 16 blocks' scale
/// and minimum (16 dwords), then 4 rows of 16 dwords, row `q` holding nibble bytes
/// `4q..4q + 4` of each block; of a Q8_0 row, the 16 scales (f16), then 8 rows of 16
/// dwords, row `k` holding values `4k..4k + 4` of each block plus 128 (as unsigned bytes).
/// The same size; blocks after the last whole group stay as they are. `None`: the kernel
/// reads the file's layout.
pub fn repack(isa: Isa, fmt: Fmt, data: &[u8], rows: usize, cols: usize) -> Option<Vec<u8>> {
    if !wants_groups(isa, fmt) || cols / 32 < 16 {
        return None;
    }
    let nb = cols / 32;
    let bb = group_bytes(fmt) / 16;
    let rb = nb * bb;
    if data.len() != rows * rb {
        return None;
    }
    let mut out = data.to_vec();
    for r in 0..rows {
        for g in 0..nb / 16 {
            let at = r * rb + g * 16 * bb;
            let (src, dst) = (&data[at..at + 16 * bb], &mut out[at..at + 16 * bb]);
            for l in 0..16 {
                let b = &src[l * bb..(l + 1) * bb];
                match fmt {
                    Fmt::Q8_0 => {
                        dst[2 * l..2 * l + 2].copy_from_slice(&b[..2]);
                        for k in 0..8 {
                            let o = 32 + 64 * k + 4 * l;
                            for i in 0..4 {
                                dst[o + i] = b[2 + 4 * k + i] ^ 0x80;
                            }
                        }
                    }
                    _ => {
                        dst[4 * l..4 * l + 4].copy_from_slice(&b[..4]);
                        for q in 0..4 {
                            let o = 64 + 64 * q + 4 * l;
                            dst[o..o + 4].copy_from_slice(&b[4 + 4 * q..8 + 4 * q]);
                        }
                    }
                }
            }
        }
    }
    Some(out)
}

/// One row of [`repack`]'s layout back in the file's (for decoding to f32).
pub fn unpack_row(fmt: Fmt, row: &[u8], cols: usize, out: &mut [u8]) {
    out.copy_from_slice(row);
    let nb = cols / 32;
    let bb = group_bytes(fmt) / 16;
    for g in 0..nb / 16 {
        let at = g * 16 * bb;
        let (src, dst) = (&row[at..at + 16 * bb], &mut out[at..at + 16 * bb]);
        for l in 0..16 {
            let b = &mut dst[l * bb..(l + 1) * bb];
            match fmt {
                Fmt::Q8_0 => {
                    b[..2].copy_from_slice(&src[2 * l..2 * l + 2]);
                    for k in 0..8 {
                        let o = 32 + 64 * k + 4 * l;
                        for i in 0..4 {
                            b[2 + 4 * k + i] = src[o + i] ^ 0x80;
                        }
                    }
                }
                _ => {
                    b[..4].copy_from_slice(&src[4 * l..4 * l + 4]);
                    for q in 0..4 {
                        let o = 64 + 64 * q + 4 * l;
                        b[4 + 4 * q..8 + 4 * q].copy_from_slice(&src[o..o + 4]);
                    }
                }
            }
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
/// the kernel's format; `nr` is at most 4 and `nt` at most [`tile_tokens`], and `a` has at
/// least `nt` tokens; the CPU has the kernel's instruction set.
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

/// Tokens one call of the format's tile kernel takes at most: 8 where the kernel decodes a
/// weight row once for up to 8 tokens ([`wants_groups`]), otherwise 4.
pub fn tile_tokens(isa: Isa, fmt: Fmt) -> usize {
    if wants_groups(isa, fmt) {
        8
    } else {
        4
    }
}

/// Whether the format's kernel sums a block per lane: it reads the activations regrouped
/// by [`QAct::transpose`] and the weights as [`repack`] lays them out (AVX-512 VNNI, Q4_1
/// and Q8_0).
pub fn wants_groups(isa: Isa, fmt: Fmt) -> bool {
    isa == Isa::Avx512Vnni && matches!(fmt, Fmt::Q4_1 | Fmt::Q8_0)
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
/// in tiles of 4 rows by `tokens` (the kernel's [`tile_tokens`]), handing each result to
/// `store(row, token, value)`.
///
/// # Panics
/// If `w` is shorter than `r1` rows or a row is not `a`'s width in the kernel's format
/// (the caller checked both when it took the matrix in).
#[allow(clippy::too_many_arguments)]
pub fn gemm_rows(
    tf: TileFn,
    tokens: usize,
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
    let mut tile: Tile = [[0.0; 8]; 4];
    let mut r = r0;
    while r < r1 {
        let nr = (r1 - r).min(max_rows);
        let mut t = 0;
        while t < n {
            let nt = (n - t).min(tokens);
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
