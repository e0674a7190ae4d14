//! Quantized matrix kernels. Activations are quantized to 8 bits per 32-block once per
//! matrix product ([`QAct`]); weights stay in the file's block format and are multiplied
//! with integer dot products, then scaled per block. One implementation per instruction
//! set, chosen at run time; [`scalar`] is the reference the others are tested against.
//!
//! Work is done in tiles of up to 4 weight rows by 4 tokens, so each weight block is
//! decoded once for several tokens (prefill) and each activation block is loaded once for
//! several rows (decode). Where a kernel reads 16 rows at once, a row per SIMD lane
//! ([`Layout::Panels`]), the rows are interleaved for it once when the matrix is taken in
//! ([`repack`]) and a tile is 16 rows by up to 8 tokens.

#[cfg(target_arch = "aarch64")]
mod neon;
pub(crate) mod scalar;
#[cfg(test)]
mod tests;
pub(crate) mod vec;
#[cfg(target_arch = "x86_64")]
mod x86;

use kiln_formats::gguf::GgmlType;

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
    /// AArch64 Advanced SIMD with the dot-product extension (`sdot`: optional from Armv8.2,
    /// required from Armv8.4; the Cortex-A55, A76 and A78 have it, the A72 has not).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    NeonDot,
}

impl Isa {
    /// The best instruction set this CPU has.
    pub fn detect() -> Isa {
        *Isa::available().last().unwrap_or(&Isa::Scalar)
    }

    /// The instruction set named `name` (scalar, avx2, avx512, neon, neon-dot), if this CPU has it: a
    /// lesser one than [`Isa::detect`]'s, to compare paths.
    pub fn named(name: &str) -> Result<Isa, String> {
        let all = Isa::available();
        all.iter()
            .copied()
            .find(|i| i.name() == name.trim())
            .ok_or_else(|| {
                let have: Vec<&str> = all.iter().map(|i| i.name()).collect();
                format!(
                    "instruction set `{name}`: this CPU runs {}",
                    have.join(", ")
                )
            })
    }

    /// Every instruction set this CPU can run, worst first (always starts with `Scalar`).
    pub fn available() -> Vec<Isa> {
        [
            Isa::Scalar,
            Isa::Avx2,
            Isa::Avx512Vnni,
            Isa::Neon,
            Isa::NeonDot,
        ]
        .into_iter()
        .filter(|i| i.is_available())
        .collect()
    }

    /// Whether this CPU can run the instruction set (the features are read once by the
    /// standard library; nothing is allocated).
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => {
                Isa::Neon.is_available() && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Short name, as [`Isa::named`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon-dot",
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
    /// The file type of this format.
    pub fn ty(self) -> GgmlType {
        match self {
            Fmt::Q4_0 => GgmlType::Q4_0,
            Fmt::Q4_1 => GgmlType::Q4_1,
            Fmt::Q5_0 => GgmlType::Q5_0,
            Fmt::Q8_0 => GgmlType::Q8_0,
            Fmt::Q4_K => GgmlType::Q4_K,
            Fmt::Q5_K => GgmlType::Q5_K,
            Fmt::Q6_K => GgmlType::Q6_K,
        }
    }

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

/// Asks the CPU to bring the cache line holding `p` into its caches (a hint; it never
/// faults, whatever the address).
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks the system to back `v`'s buffer (its capacity) with huge pages where it can (Linux's
/// transparent huge pages, which many systems give only on request): large buffers read all
/// over each step (weights, the KV cache) then take a TLB entry per 2 MiB instead of per
/// 4 KiB. A hint; call it before the buffer is first written.
pub fn advise_huge<T>(v: &mut Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        let bytes = v.capacity() * std::mem::size_of::<T>();
        let start = v.as_mut_ptr() as usize;
        let (a, b) = (start.next_multiple_of(4096), (start + bytes) & !4095);
        if bytes >= 2 << 20 && b > a {
            // SAFETY: the range lies inside the vector's allocation, which this call does not
            // change: MADV_HUGEPAGE only tells the kernel how to back those pages.
            unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// Whether the CPU backend can use a matrix of this type.
pub fn supported(ty: GgmlType) -> bool {
    ty.is_supported() || Fmt::of(ty).is_some()
}

/// Decodes whole blocks to f32: `kiln_formats::gguf`'s reference decoders.
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    // Sizes were checked when the matrix was taken in.
    let _ = kiln_formats::gguf::quant::dequantize(ty, src, out);
}

/// Results of one tile: `out[token][row]` (a token's rows side by side, as the output
/// holds them).
pub type Tile = [[f32; PANEL]; 8];

/// Rows a panel interleaves ([`Layout::Panels`]).
pub const PANEL: usize = 16;

/// How a kernel reads a matrix's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// As the file stores them.
    File,
    /// Each 16 rows interleaved block by block, a row per lane ([`repack`]); the rows after
    /// the last whole 16 as in the file.
    Panels,
}

/// Activations quantized to 8 bits in blocks of 32: values, per-block scale `d`, and
/// `s = d * sum(values)` (for formats with a minimum or an offset).
#[derive(Debug, Default)]
pub struct QAct {
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    /// `-128` times each block's sum of values (see [`QAct::offsets`]), for kernels that
    /// want it.
    off: Vec<i32>,
    n: usize,
    cols: usize,
    /// Whether `off` holds the last quantized rows'.
    has_off: bool,
}

/// A borrowed view of some tokens of a [`QAct`], as the kernels read it.
#[derive(Clone, Copy)]
pub struct ActView<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
    /// `-128` times each block's sum of values, or nothing.
    off: &'a [i32],
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
            off: self.off.get(t * self.nb..).unwrap_or(&[]),
            nb: self.nb,
        }
    }

    /// Tokens in the view.
    #[inline]
    pub fn tokens(&self) -> usize {
        self.d.len().checked_div(self.nb).unwrap_or(0)
    }

    /// Values a token.
    #[inline]
    pub fn cols(&self) -> usize {
        32 * self.nb
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

    /// Token `t`'s block offsets ([`QAct::offsets`]): a null pointer where the view has
    /// none.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    pub(crate) fn offsets(&self, t: usize) -> *const i32 {
        if self.off.is_empty() {
            std::ptr::null()
        } else {
            self.off.as_ptr().wrapping_add(t * self.nb)
        }
    }

    /// This view's first `n` tokens with their block offsets computed into `buf` (for
    /// kernels that want [`QAct::offsets`] and were handed a view without them).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn with_offsets<'b>(&self, n: usize, buf: &'b mut Vec<i32>) -> ActView<'b>
    where
        'a: 'b,
    {
        let n = n.min(self.tokens());
        buf.clear();
        buf.resize(n * self.nb, 0);
        block_offsets(&self.qs[..n * self.nb * 32], buf);
        ActView {
            qs: &self.qs[..n * self.nb * 32],
            d: &self.d[..n * self.nb],
            s: &self.s[..n * self.nb],
            off: buf,
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
        self.has_off = false;
        QActParts {
            qs: self.qs.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            off: std::ptr::null_mut(),
            n,
            cols,
        }
    }

    /// Sizes the buffers for `n` rows of width `cols` (a multiple of 32), for threads to fill
    /// in blocks through the returned handle ([`QActParts::quantize_blocks`]), with the block
    /// offsets ([`QAct::offsets`]) where `offsets`.
    pub fn prepare_blocks(&mut self, n: usize, cols: usize, offsets: bool) -> QActParts {
        let mut parts = self.prepare(n, cols);
        if offsets {
            parts.off = grown(&mut self.off, n * cols / 32).as_mut_ptr();
            self.has_off = true;
        }
        parts
    }

    /// Also keeps `-128` times each block's sum of values, for kernels that take the
    /// weights as unsigned bytes offset by 128 (Q8_0's panels): their integer sums start
    /// there.
    pub fn offsets(&mut self) {
        let values = self.n * self.cols;
        block_offsets(&self.qs[..values], grown(&mut self.off, values / 32));
        self.has_off = true;
    }

    /// The quantized rows `t0..t0 + n` (of the last [`QAct::quantize`]).
    pub fn view(&self, t0: usize, n: usize) -> ActView<'_> {
        let nb = self.cols / 32;
        let (t0, t1) = (t0.min(self.n), (t0 + n).min(self.n));
        ActView {
            qs: &self.qs[t0 * self.cols..t1 * self.cols],
            d: &self.d[t0 * nb..t1 * nb],
            s: &self.s[t0 * nb..t1 * nb],
            off: if self.has_off {
                &self.off[t0 * nb..t1 * nb]
            } else {
                &[]
            },
            nb,
        }
    }
}

/// The first `len` values of `v`, grown to hold them (new values zero).
fn grown(v: &mut Vec<i32>, len: usize) -> &mut [i32] {
    if v.len() < len {
        v.resize(len, 0);
    }
    &mut v[..len]
}

/// `-128` times the sum of each 32-block of `qs` into `off`.
fn block_offsets(qs: &[i8], off: &mut [i32]) {
    for (o, b) in off.iter_mut().zip(qs.as_chunks::<32>().0) {
        *o = -128 * b.iter().map(|&v| i32::from(v)).sum::<i32>();
    }
}

/// The rows of a matrix in the layout its kernel reads, where that is not the file's
/// ([`Layout::Panels`]): each 16 rows (a panel, in the bytes the file gives those rows)
/// become, block by block, the 16 rows' block in SIMD lane order. A Q4_1 block of a panel
/// is the 16 rows' scale and minimum (16 dwords), then 4 units of 16 dwords, unit `q`
/// holding nibble bytes `4q..4q + 4` of each row; a Q8_0 block is the 16 scales (f16), then
/// 8 units of 16 dwords, unit `k` holding values `4k..4k + 4` of each row plus 128 (as
/// unsigned bytes). A Q4_0 block is the 16 scales (f16), then Q4_1's 4 units of nibbles; a
/// Q5_0 block the 16 scales, 16 dwords of high bits (bit `8j + k` of a row's dword is the
/// high bit of its value `4k + j`, so one shift and a mask put them beside unit `k`'s
/// values), then the 4 units of nibbles. A Q4_K super-block of a panel is the 16 rows' `d`
/// and `dmin` (16 dwords), then its 35 4-byte units (3 of packed scales, 32 of nibbles) as
/// 16 dwords each; a Q6_K super-block the 16 rows' `d` (f16), then its 52 units (32 of low
/// bits, 16 of high bits, 4 of scales). The same size; rows after the last whole panel
/// stay as they are. `None`: the kernel reads the file's layout.
#[cfg(test)]
pub fn repack(isa: Isa, fmt: Fmt, data: &[u8], rows: usize, cols: usize) -> Option<Vec<u8>> {
    repack_on(None, isa, fmt, data, rows, cols, None)
}

/// Bytes of the source a part of [`repack_on`] reads between two calls of its `read`.
const READ_CHUNK: usize = 1 << 20;

/// [`repack`], its panels shared among the pool's threads when one is given. The panels are
/// written straight into the new buffer, a row's 4-byte units at a time (through a copy of
/// the whole tensor rewritten a byte at a time, 45% of the samples of a short `kiln bench`
/// of a Qwen2.5-0.5B-shaped Q4_1 file were in the repacking and 15% in the copy; its load
/// went from 1.0-1.1 s to 0.35-0.46 s: docs/PERF.md, twenty-fourth session). `read(start, end)`, where given, hears of each range of `data` (about
/// [`READ_CHUNK`] bytes) that the repacking has read and will not read again, so that a
/// mapped file's pages can leave memory while the rest is made: otherwise the largest
/// tensor is in memory twice at the end of its repacking (a 145 MB embedding table).
pub(crate) fn repack_on(
    pool: Option<&crate::pool::ThreadPool>,
    isa: Isa,
    fmt: Fmt,
    data: &[u8],
    rows: usize,
    cols: usize,
    read: Option<&(dyn Fn(usize, usize) + Sync)>,
) -> Option<Vec<u8>> {
    if layout(isa, fmt) != Layout::Panels || rows < PANEL {
        return None;
    }
    let (bl, bb) = fmt.ty().block();
    let nb = cols / bl;
    let rb = nb * bb;
    if rows.checked_mul(rb) != Some(data.len()) {
        return None;
    }
    let mut out = Vec::with_capacity(data.len());
    advise_huge(&mut out);
    let panels = rows / PANEL;
    let dst = Dst(out.as_mut_ptr());
    let part = |i: usize, n: usize| {
        let (p0, p1) = crate::pool::split_range(panels, i, n, 1);
        let mut told = p0 * PANEL * rb;
        for p in p0..p1 {
            let at = p * PANEL * rb;
            // SAFETY: panel `p`'s bytes `at..at + PANEL * rb` are inside the capacity, and
            // each part writes only its own panels; they are zeroed first (a panel is a few
            // KiB, in the L1 cache when its values overwrite the zeros), so the slice is of
            // initialized bytes.
            let to = unsafe {
                std::ptr::write_bytes(dst.at(at), 0, PANEL * rb);
                std::slice::from_raw_parts_mut(dst.at(at), PANEL * rb)
            };
            panel_into(fmt, &data[at..at + PANEL * rb], nb, to);
            let end = at + PANEL * rb;
            if let Some(read) = read.filter(|_| end - told >= READ_CHUNK || p + 1 == p1) {
                read(told, end);
                told = end;
            }
        }
    };
    match pool {
        Some(pool) => pool.run(part),
        None => part(0, 1),
    }
    let tail = panels * PANEL * rb;
    // SAFETY: the rows after the last whole panel go after the panels, inside the capacity;
    // then every byte of the buffer has been written (the panels zeroed, then filled), so
    // its length can be set.
    unsafe {
        std::ptr::copy_nonoverlapping(data[tail..].as_ptr(), dst.at(tail), data.len() - tail);
        out.set_len(data.len());
    }
    Some(out)
}

/// The new buffer's start, shared by the parts that fill it.
#[derive(Clone, Copy)]
struct Dst(*mut u8);
// SAFETY: the parts write disjoint panels of the buffer (`repack_on`).
unsafe impl Sync for Dst {}
impl Dst {
    fn at(self, off: usize) -> *mut u8 {
        self.0.wrapping_add(off)
    }
}

/// One panel (`PANEL` rows of `nb` blocks, as the file has them) in [`repack`]'s layout:
/// block by block, each row's block moved to its lane by [`panel_moves`] (which
/// [`unpack_row`] undoes).
fn panel_into(fmt: Fmt, src: &[u8], nb: usize, to: &mut [u8]) {
    match fmt {
        Fmt::Q4_1 => panel_blocks::<20>(src, nb, to, |from, l, to| place(&Q4_1_MOVES, from, l, to)),
        Fmt::Q8_0 => panel_blocks::<34>(src, nb, to, |from, l, to| place(&Q8_0_MOVES, from, l, to)),
        Fmt::Q4_0 => panel_blocks::<18>(src, nb, to, |from, l, to| place(&Q4_0_MOVES, from, l, to)),
        Fmt::Q4_K => {
            panel_blocks::<144>(src, nb, to, |from, l, to| place(&Q4_K_MOVES, from, l, to))
        }
        Fmt::Q6_K => {
            panel_blocks::<210>(src, nb, to, |from, l, to| place(&Q6_K_MOVES, from, l, to))
        }
        Fmt::Q5_0 => panel_blocks::<22>(src, nb, to, |from, l, to| {
            place(&Q5_0_MOVES, from, l, to);
            let qh = u32::from_le_bytes([from[2], from[3], from[4], from[5]]);
            to[32 + 4 * l..36 + 4 * l].copy_from_slice(&high_bits(qh).to_le_bytes());
        }),
        // `layout` gives panels to the formats above only.
        _ => unreachable!("no panels for {fmt:?}"),
    }
}

/// Row `l`'s block `from` into a panel's block `to` by `moves` (a format's table, as
/// [`moves`] makes them: the scale field first, then 4-byte units).
#[inline(always)]
fn place<const N: usize>(moves: &[Move; N], from: &[u8], l: usize, to: &mut [u8]) {
    let (at, _, head, _) = moves[0];
    // The scale field: 2 or 4 bytes, never flipped.
    to[head * l..head * (l + 1)].copy_from_slice(&from[at..at + head]);
    for &(f, t, _, flip) in &moves[1..] {
        let w = u32::from_le_bytes([from[f], from[f + 1], from[f + 2], from[f + 3]]);
        let w = if flip { w ^ 0x8080_8080 } else { w };
        to[t + 4 * l..t + 4 * l + 4].copy_from_slice(&w.to_le_bytes());
    }
}

/// The blocks of a panel's `PANEL` rows (`BB` bytes each, `nb` a row), block by block,
/// row `l`'s block handed to `unit(block, l, panel_block)`.
#[inline(always)]
fn panel_blocks<const BB: usize>(
    src: &[u8],
    nb: usize,
    to: &mut [u8],
    unit: impl Fn(&[u8; BB], usize, &mut [u8]),
) {
    let rb = nb * BB;
    let rows: [&[[u8; BB]]; PANEL] =
        core::array::from_fn(|l| src[l * rb..(l + 1) * rb].as_chunks().0);
    for (b, to) in to.chunks_exact_mut(PANEL * BB).take(nb).enumerate() {
        for (l, row) in rows.iter().enumerate() {
            unit(&row[b], l, to);
        }
    }
}

/// One move of a row's block into a panel's block: `(offset in the file's block, offset in the
/// panel's block for row 0, bytes, whether the sign bits flip)`; row `l`'s lies `bytes * l`
/// further (a 2-byte scale a row side by side, then 4-byte units a lane).
type Move = (usize, usize, usize, bool);

/// A format's moves: its scale field (`head` bytes) to the block's start, then 4-byte units
/// `from0 + 4k` of the file's block to `to0 + 64k`.
const fn moves<const N: usize>(head: usize, from0: usize, to0: usize, flip: bool) -> [Move; N] {
    let mut m = [(0, 0, head, false); N];
    let mut k = 1;
    while k < N {
        m[k] = (from0 + 4 * (k - 1), to0 + 64 * (k - 1), 4, flip);
        k += 1;
    }
    m
}

/// Q4_1: scale and minimum (4 bytes), then 4 units of nibbles.
const Q4_1_MOVES: [Move; 5] = moves(4, 4, 64, false);
/// Q8_0: the scale, then 8 units of values, stored plus 128.
const Q8_0_MOVES: [Move; 9] = moves(2, 2, 32, true);
/// Q4_0: the scale, then 4 units of nibbles.
const Q4_0_MOVES: [Move; 5] = moves(2, 2, 32, false);
/// Q5_0: the scale, then (after 16 dwords of high bits, reordered apart by `high_bits`) 4
/// units of nibbles.
const Q5_0_MOVES: [Move; 5] = moves(2, 6, 96, false);
/// Q4_K: `d` and `dmin` (4 bytes), then 3 units of packed scales and 32 of nibbles.
const Q4_K_MOVES: [Move; 36] = moves(4, 4, 64, false);
/// Q6_K: `d` (the block's last 2 bytes) first, then the 52 units of low bits, high bits and
/// scales in the file's order.
const Q6_K_MOVES: [Move; 53] = {
    let mut m: [Move; 53] = moves(2, 0, 32, false);
    m[0] = (208, 0, 2, false);
    m
};

/// Where each row's block goes in a panel's block ([`Move`]).
fn panel_moves(fmt: Fmt) -> &'static [Move] {
    match fmt {
        Fmt::Q8_0 => &Q8_0_MOVES,
        Fmt::Q4_0 => &Q4_0_MOVES,
        Fmt::Q5_0 => &Q5_0_MOVES,
        Fmt::Q4_K => &Q4_K_MOVES,
        Fmt::Q6_K => &Q6_K_MOVES,
        _ => &Q4_1_MOVES,
    }
}

/// Copies `len` bytes, flipping their sign bits if `flip`.
fn copy_flip(from: &[u8], to: &mut [u8], flip: bool) {
    for (t, &f) in to.iter_mut().zip(from) {
        *t = if flip { f ^ 0x80 } else { f };
    }
}

/// Row `r` of a matrix in [`repack`]'s layout (`data`, `cols` wide) back in the file's
/// layout, into `out` (one row's bytes).
pub fn unpack_row(fmt: Fmt, data: &[u8], cols: usize, r: usize, out: &mut [u8]) {
    let (bl, bb) = fmt.ty().block();
    let nb = cols / bl;
    let rb = nb * bb;
    let p = r / PANEL;
    if (p + 1) * PANEL * rb > data.len() {
        // After the last whole panel: as in the file.
        out.copy_from_slice(&data[r * rb..(r + 1) * rb]);
        return;
    }
    let l = r % PANEL;
    let panel = &data[p * PANEL * rb..(p + 1) * PANEL * rb];
    for b in 0..nb {
        let from = &panel[b * PANEL * bb..][..PANEL * bb];
        let to = &mut out[b * bb..][..bb];
        for &(f, q, len, flip) in panel_moves(fmt) {
            let q = q + len * l;
            copy_flip(&from[q..q + len], &mut to[f..f + len], flip);
        }
        if fmt == Fmt::Q5_0 {
            let h = u32::from_le_bytes([
                from[32 + 4 * l],
                from[33 + 4 * l],
                from[34 + 4 * l],
                from[35 + 4 * l],
            ]);
            to[2..6].copy_from_slice(&high_bits_back(h).to_le_bytes());
        }
    }
}

/// A Q5_0 block's high bits (bit `v` is value `v`'s) in a panel's order: bit `8j + k` is
/// value `4k + j`'s ([`repack`]).
fn high_bits(qh: u32) -> u32 {
    let mut h = 0;
    for k in 0..8 {
        for j in 0..4 {
            h |= ((qh >> (4 * k + j)) & 1) << (8 * j + k);
        }
    }
    h
}

/// [`high_bits`] undone.
fn high_bits_back(h: u32) -> u32 {
    let mut qh = 0;
    for k in 0..8 {
        for j in 0..4 {
            qh |= ((h >> (8 * j + k)) & 1) << (4 * k + j);
        }
    }
    qh
}

/// Raw access to a [`QAct`]'s buffers, for threads that each quantize their own rows, or
/// their own blocks of every row.
#[derive(Clone, Copy)]
pub struct QActParts {
    qs: *mut i8,
    d: *mut f32,
    s: *mut f32,
    /// The block offsets' buffer where they are kept ([`QAct::prepare_blocks`]), else null.
    off: *mut i32,
    n: usize,
    cols: usize,
}

// SAFETY: the parts are only handed out as disjoint row or block ranges (see `rows` and
// `quantize_blocks`).
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

    /// Quantizes blocks `b0..b0 + x.len() / 32` of row `t` from `x` (those blocks' values,
    /// a multiple of 32 of them), with their offsets where the buffers keep them: each block
    /// as [`QAct::quantize`] of the whole row gives it, bit for bit, for finite values.
    ///
    /// # Safety
    /// No two threads write the same blocks, and the [`QAct`] is neither used nor moved
    /// meanwhile.
    ///
    /// # Panics
    /// If `t` is not one of the `n` rows, the blocks do not lie inside the row, or `x` is not
    /// whole blocks.
    pub unsafe fn quantize_blocks(&self, isa: Isa, t: usize, b0: usize, x: &[f32]) {
        let (nb, k) = (self.cols / 32, x.len() / 32);
        assert!(
            t < self.n && b0 + k <= nb && x.len() == 32 * k,
            "blocks {b0}..{} of row {t} ({} values): not inside {} rows of {nb} blocks",
            b0 + k,
            x.len(),
            self.n
        );
        let at = t * nb + b0;
        // SAFETY: inside the buffers `prepare` sized (the bounds asserted above); the blocks
        // are this thread's alone (the caller's promise).
        unsafe {
            let qs = std::slice::from_raw_parts_mut(self.qs.add(32 * at), 32 * k);
            quantize_rows(
                isa,
                x,
                qs,
                std::slice::from_raw_parts_mut(self.d.add(at), k),
                std::slice::from_raw_parts_mut(self.s.add(at), k),
            );
            if !self.off.is_null() {
                block_offsets(qs, std::slice::from_raw_parts_mut(self.off.add(at), k));
            }
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
/// of `a`, into `out[token][row]`.
///
/// # Safety
/// `w` points to `nr` readable rows of `rb` bytes; each row holds `a.nb * 32` weights of
/// the kernel's format, in its layout (a whole panel when `nr` is 16 for a panel kernel,
/// the file's rows otherwise); `nr` is at most 4 (16 for panel kernels) and `nt` at most
/// the kernel's [`Tiles::tokens`], and `a` has at least `nt` tokens; the CPU has the
/// kernel's instruction set.
pub type TileFn = unsafe fn(*const u8, usize, usize, &ActView, usize, &mut Tile);

/// The tile kernel for a format on an instruction set.
pub fn tile_fn(isa: Isa, fmt: Fmt) -> TileFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => x86::tile_fn_avx512(fmt),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::tile_fn_avx2(fmt),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => neon::tile_fn(fmt, false),
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDot => neon::tile_fn(fmt, true),
        _ => scalar_tile_fn(fmt),
    }
}

/// The layout of the rows a format's kernel reads on an instruction set: panels for
/// AVX-512 VNNI's 32-block formats' kernels and AVX2's 32-block formats' and Q4_K's and
/// Q6_K's kernels, which sum a row per lane ([`repack`]).
pub fn layout(isa: Isa, fmt: Fmt) -> Layout {
    if isa == Isa::Avx512Vnni && matches!(fmt, Fmt::Q4_0 | Fmt::Q4_1 | Fmt::Q5_0 | Fmt::Q8_0)
        || isa == Isa::Avx2
            && matches!(
                fmt,
                Fmt::Q4_0 | Fmt::Q4_1 | Fmt::Q5_0 | Fmt::Q8_0 | Fmt::Q4_K | Fmt::Q6_K
            )
    {
        Layout::Panels
    } else {
        Layout::File
    }
}

/// A format's integer kernel on an instruction set, with what driving it takes.
#[derive(Clone, Copy)]
pub struct Tiles {
    /// The tile function.
    pub f: TileFn,
    /// Tokens one call takes at most: 8 for panel kernels (a panel's weights are decoded
    /// once for up to 8 tokens), otherwise 4.
    pub tokens: usize,
    /// The layout of the rows it reads.
    pub layout: Layout,
    /// Whether it wants the activations' [`QAct::offsets`] (it computes them itself from a
    /// view without them, at a cost).
    pub offsets: bool,
}

impl Tiles {
    /// The kernel for a format on an instruction set.
    pub fn new(isa: Isa, fmt: Fmt) -> Tiles {
        let layout = layout(isa, fmt);
        Tiles {
            f: tile_fn(isa, fmt),
            tokens: if layout == Layout::Panels { 8 } else { 4 },
            layout,
            offsets: layout == Layout::Panels
                && match isa {
                    Isa::Avx512Vnni => fmt != Fmt::Q4_1,
                    _ => matches!(fmt, Fmt::Q4_0 | Fmt::Q5_0),
                },
        }
    }

    /// The scalar reference kernel for a format (the file's layout).
    #[cfg(test)]
    pub fn scalar(fmt: Fmt) -> Tiles {
        Tiles {
            f: scalar_tile_fn(fmt),
            tokens: 4,
            layout: Layout::File,
            offsets: false,
        }
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

/// Multiplies weight rows `r0..r1` (each `rb` bytes of `w`, in the kernel's layout) with
/// every token of `a`, in tiles of 4 rows (16 for panels) by the kernel's tokens, handing
/// each token's results for a run of consecutive rows to `store(token, first_row, values)`.
/// With panels, `r0` is a multiple of 16 (or the range is empty).
///
/// # Panics
/// If `w` is shorter than `r1` rows or a row is not `a`'s width in the kernel's format
/// (the caller checked both when it took the matrix in).
pub fn gemm_rows(
    k: &Tiles,
    w: &[u8],
    rb: usize,
    r0: usize,
    r1: usize,
    a: &ActView,
    mut store: impl FnMut(usize, usize, &[f32]),
) {
    assert!(r1 * rb <= w.len(), "weight rows out of range");
    assert!(
        k.layout == Layout::File || r0.is_multiple_of(PANEL) || r0 == r1,
        "panel rows start at a multiple of {PANEL}"
    );
    let n = a.tokens();
    // With one token the product streams weights from DRAM: one row at a time keeps a
    // single sequential stream the prefetchers follow (4 interleaved rows run at half the
    // bandwidth). With more, 4 rows share each activation load and each weight block
    // serves every token (2 and 3 tokens through 1-row tiles cost 1.7x and 2.3-2.7x one
    // token; through 4-row tiles 1.1-1.4x and 1.3-1.8x: `kernels` example, `batch`).
    let max_rows = match k.layout {
        Layout::Panels => PANEL,
        Layout::File if n < 2 => 1,
        Layout::File => 4,
    };
    let (tf, tokens) = (k.f, k.tokens);
    let mut tile: Tile = [[0.0; PANEL]; 8];
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
            for (j, rows) in tile.iter().enumerate().take(nt) {
                store(t + j, r, &rows[..nr]);
            }
            t += nt;
        }
        r += nr;
    }
}
