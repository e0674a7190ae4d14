//! The CPU backend: weights used in place from the memory map, work split over a
//! persistent thread pool.

mod kernels;
mod matmul;
mod pool;
mod pool_timing;
mod tune;

use std::cell::RefCell;
use std::sync::Arc;

use half::f16;

use kernels::vec::KvElem;
pub use kernels::Isa;
use kiln_model::backend::{Backend, PagedSeq, RawTensor, TensorBytes};
use kiln_model::config::RopeStyle;
use kiln_model::{ModelConfig, ModelError};
pub use pool::{split_range, ThreadPool, MAX_THREADS};

/// Runs the decoder on the CPU.
#[derive(Debug)]
pub struct CpuBackend {
    /// Shared with the backends made by [`CpuBackend::sharing_threads`], so that two models
    /// (a draft and its target) take turns on the same cores instead of spinning against
    /// each other.
    pool: std::sync::Arc<ThreadPool>,
    isa: kernels::Isa,
    /// f32 activations for every product ([`CpuBackend::with_exact`]): slow, for comparisons.
    exact: bool,
    /// How the KV pools this backend makes store keys and values.
    kv_dtype: KvDtype,
    /// Decoding passes padded as a backend that records them pads them
    /// ([`CpuBackend::with_padding`]): for tests of the padding, which this backend does not
    /// need.
    pad: bool,
}

/// How the CPU backend stores cached keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// Half precision, as llama.cpp keeps its cache: half the memory, the default.
    #[default]
    F16,
    /// Single precision: twice the memory, no rounding of keys, values, queries or
    /// attention weights (for comparisons against f32/f64 references).
    F32,
}

impl KvDtype {
    /// The type named `f16` or `f32`; `None` for any other name.
    pub fn from_name(name: &str) -> Option<KvDtype> {
        match name.trim().to_ascii_lowercase().as_str() {
            "f16" => Some(KvDtype::F16),
            "f32" => Some(KvDtype::F32),
            _ => None,
        }
    }

    /// The name [`KvDtype::from_name`] takes.
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "f16",
            KvDtype::F32 => "f32",
        }
    }

    /// Bytes of one stored value.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F16 => std::mem::size_of::<f16>(),
            KvDtype::F32 => std::mem::size_of::<f32>(),
        }
    }
}

impl CpuBackend {
    /// A backend with `threads` worker threads (0 picks the number of cores, and runs its
    /// work on fewer while other programs take cores and fewer go faster: see
    /// [`ThreadPool::adaptive`]).
    pub fn new(threads: usize) -> Self {
        let pool = if threads == 0 {
            ThreadPool::adaptive(std::thread::available_parallelism().map_or(1, |n| n.get()))
        } else {
            ThreadPool::new(threads)
        };
        CpuBackend {
            pool: std::sync::Arc::new(pool),
            isa: kernels::Isa::detect(),
            exact: false,
            kv_dtype: KvDtype::default(),
            pad: false,
        }
    }

    /// Another backend on this one's threads (a second model run in turn with the first,
    /// such as a draft model beside its target).
    pub fn sharing_threads(&self) -> Self {
        CpuBackend {
            pool: self.pool.clone(),
            isa: self.isa,
            exact: self.exact,
            kv_dtype: self.kv_dtype,
            pad: self.pad,
        }
    }

    /// The same backend with its kernels for `isa` (see [`Isa::named`]), to compare paths.
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = isa;
        self
    }

    /// The same backend with f32 activations for every product instead of 8-bit ones: slow,
    /// for comparisons.
    pub fn with_exact(mut self, exact: bool) -> Self {
        self.exact = exact;
        self
    }

    /// The same backend with decoding passes padded to the sizes a backend that records its
    /// passes runs ([`kiln_model::backend::padded_decode_rows`]), so that the padding is
    /// tested where no GPU is.
    pub fn with_padding(mut self, pad: bool) -> Self {
        self.pad = pad;
        self
    }

    /// The same backend with KV pools stored as `dtype` (f16 unless told).
    pub fn with_kv_dtype(mut self, dtype: KvDtype) -> Self {
        self.kv_dtype = dtype;
        self
    }

    /// How this backend's KV pools store keys and values.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// Threads in use.
    pub fn threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// Whether [`Backend::matmul_swiglu`] runs as one task ([`CpuBackend::swiglu_task`]).
    fn swiglu_fuses(
        &self,
        w_gate: &CpuMat,
        w_up: &CpuMat,
        n: usize,
        ffn: usize,
        gate: &[f32],
        up: &[f32],
    ) -> bool {
        let quant = |w: &CpuMat| matches!(w.kernel, matmul::Kernel::Quant(_)) && w.raw.rows == ffn;
        quant(w_gate)
            && quant(w_up)
            && ffn.is_multiple_of(matmul::THEN_ALIGN)
            && self.pool.n_threads() > 1
            && n * ffn <= gate.len().min(up.len())
    }

    /// The gate and up products and `silu(gate) * up` as one task (see
    /// [`Backend::matmul_swiglu`]), each thread then quantizing its rows of the results into
    /// `quantize` where given (see [`Backend::feed_forward`]).
    #[allow(clippy::too_many_arguments)]
    fn swiglu_task(
        &self,
        w_gate: &CpuMat,
        w_up: &CpuMat,
        x: &[f32],
        n: usize,
        ffn: usize,
        gate: &mut [f32],
        up: &mut [f32],
        quantize: Option<kernels::QActParts>,
    ) {
        let isa = self.isa;
        let then = move |r0: usize, r1: usize, outs: &[SyncPtr<f32>]| {
            let [g, u] = outs else {
                unreachable!("two products, gate and up")
            };
            for t in 0..n {
                // SAFETY: `g` and `u` are the outputs the products were given (`n * ffn`
                // values each, checked by `swiglu_fuses`); rows `r0..r1` of every token
                // belong to this thread, and its products of them are done.
                let (gs, us) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(g.at(t * ffn + r0), r1 - r0),
                        std::slice::from_raw_parts(u.at(t * ffn + r0).cast_const(), r1 - r0),
                    )
                };
                kernels::vec::silu_mul(isa, gs, us);
                if let Some(q) = &quantize {
                    // SAFETY: `q` holds `n` rows of `ffn` (`QAct::prepare_blocks`); rows
                    // `r0..r1` are whole blocks (multiples of `THEN_ALIGN`, of 32, or `ffn`)
                    // that no other thread takes.
                    unsafe { q.quantize_blocks(isa, t, r0 / 32, gs) };
                }
            }
        };
        let parts = [(w_gate, gate), (w_up, up)].map(|(w, o)| (w.kernel, &w.raw, o));
        matmul::matmul_many_then(&self.pool, self.isa, parts, x, n, Some(&then));
    }

    /// [`Backend::matmul_many`] over (matrix, output) pairs as they come, so a caller holding
    /// them in other types passes them without collecting them first.
    pub(crate) fn matmul_pairs<'a>(
        &self,
        parts: impl IntoIterator<Item = (&'a CpuMat, &'a mut Vec<f32>)>,
        x: &[f32],
        n: usize,
    ) {
        let parts = parts
            .into_iter()
            .map(|(w, o)| (w.kernel, &w.raw, o.as_mut_slice()));
        matmul::matmul_many(&self.pool, self.isa, parts, x, n);
    }
}

/// The activations' quantization the products use (blocks of 32 values: 8-bit values, their
/// f16-rounded scale and scaled sum), on `isa`: for benchmarks and comparisons. Panics if this
/// CPU lacks `isa`, or if `x` is not whole blocks or the outputs do not match it.
pub fn quantize_activations(isa: Isa, x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    assert!(isa.is_available(), "{isa:?} is not available on this CPU");
    let nb = x.len() / 32;
    assert!(
        x.len().is_multiple_of(32) && qs.len() == x.len() && d.len() == nb && s.len() == nb,
        "{} values (whole blocks of 32) need as many outputs and one scale and sum a block",
        x.len()
    );
    kernels::quantize_rows(isa, x, qs, d, s);
}

/// A weight matrix as the file stores it.
pub struct CpuMat {
    raw: RawTensor,
    kernel: matmul::Kernel,
    /// The format whose rows were interleaved for the kernel ([`kernels::repack`]), if any.
    repacked: Option<kernels::Fmt>,
}

/// The KV pool: keys and values (f16 or f32, see [`KvDtype`]), laid out
/// `[layer][block][kv_head][offset][head_dim]`.
pub struct CpuKvPool {
    store: KvStore,
    layout: KvLayout,
}

/// The pool's storage, one element type for keys and values.
enum KvStore {
    F16 { k: Vec<f16>, v: Vec<f16> },
    F32 { k: Vec<f32>, v: Vec<f32> },
}

/// Where a (layer, position) lives in a pool.
#[derive(Clone, Copy)]
struct KvLayout {
    n_blocks: usize,
    block_size: usize,
    kv_dim: usize,
    head_dim: usize,
}

impl KvLayout {
    /// Index of the `head_dim` values of key-value head `head` at (layer, position), through
    /// a block table. A block holds each head's positions one after another
    /// (`[head][offset][head_dim]`), so that attention, which takes one head at a time,
    /// reads a block's keys (or values) of a head as one run of memory.
    #[inline]
    fn slot(&self, layer: usize, blocks: &[u32], pos: usize, head: usize) -> usize {
        let bs = self.block_size;
        // Block sizes are powers of two in practice: a shift and a mask, not a division.
        let (i, o) = if bs.is_power_of_two() {
            (pos >> bs.trailing_zeros(), pos & (bs - 1))
        } else {
            (pos / bs, pos % bs)
        };
        let b = blocks[i] as usize;
        (layer * self.n_blocks + b) * bs * self.kv_dim + (head * bs + o) * self.head_dim
    }
}

impl CpuKvPool {
    /// How the pool stores keys and values.
    pub fn dtype(&self) -> KvDtype {
        match self.store {
            KvStore::F16 { .. } => KvDtype::F16,
            KvStore::F32 { .. } => KvDtype::F32,
        }
    }
}

/// Copies block `src` into block `dst` in every layer of one of a pool's arrays.
fn copy_block<T: Copy>(x: &mut [T], l: &KvLayout, src: u32, dst: u32) {
    let per = l.block_size * l.kv_dim;
    for layer in 0..x.len() / (l.n_blocks * per).max(1) {
        let s = (layer * l.n_blocks + src as usize) * per;
        let d = (layer * l.n_blocks + dst as usize) * per;
        x.copy_within(s..s + per, d);
    }
}

/// A pointer that threads may share because each writes a disjoint part.
#[derive(Clone, Copy)]
struct SyncPtr<T>(*mut T);
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    /// SAFETY: callers guarantee `i` is in bounds and no other thread touches it.
    #[inline]
    unsafe fn write(self, i: usize, v: T) {
        unsafe { self.0.add(i).write(v) }
    }

    /// The pointer to element `i` (whole-value use keeps closures from capturing the raw
    /// field, which is not `Sync`).
    #[inline]
    fn at(self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's sampler scratch space.
    static SAMPLE: RefCell<kiln_model::sample::Scratch> = RefCell::new(Default::default());
    /// One row of bytes, for rows interleaved for a kernel and read back.
    static SCRATCH_BYTES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's rotary angles of the last positions it rotated.
    static ROPE: RefCell<RopeAngles> = RefCell::new(Default::default());
    /// The SwiGLU's outputs quantized for the down product by the task that made them
    /// ([`Backend::feed_forward`]).
    static QNEXT: RefCell<kernels::QAct> = RefCell::new(kernels::QAct::new());
}

/// Cosines and sines of the rotary angles for a list of positions: every layer of a step
/// rotates queries and keys at the same positions, so they are computed once per step, not
/// twice per layer (the values are the same either way).
#[derive(Default)]
struct RopeAngles {
    /// What the table was made for: base, rotated dimensions, and each row's position.
    base: f32,
    dims: usize,
    positions: Vec<usize>,
    /// The frequencies of the pairs.
    inv: Vec<f32>,
    /// `(cos, sin)` of row `r`'s pair `i` at `r * dims / 2 + i`.
    table: Vec<(f32, f32)>,
}

impl RopeAngles {
    /// Makes the table current for these sequences' rows (by row index).
    fn update(&mut self, base: f32, dims: usize, seqs: &[PagedSeq<'_>]) {
        let rows = seqs.iter().map(|s| s.row0 + s.n).max().unwrap_or(0);
        let same = self.base.to_bits() == base.to_bits()
            && self.dims == dims
            && self.positions.len() == rows
            && seqs
                .iter()
                .all(|s| (0..s.n).all(|t| self.positions[s.row0 + t] == s.pos0 + t));
        if same {
            return;
        }
        let half = dims / 2;
        self.base = base;
        self.dims = dims;
        // Rows no sequence covers (none in practice) get position 0.
        self.positions.clear();
        self.positions.resize(rows, 0);
        for s in seqs {
            for t in 0..s.n {
                self.positions[s.row0 + t] = s.pos0 + t;
            }
        }
        self.inv.clear();
        self.inv
            .extend((0..half).map(|i| base.powf(-2.0 * i as f32 / dims as f32)));
        self.table.clear();
        for &p in &self.positions {
            let p = p as f32;
            self.table.extend(self.inv.iter().map(|&f| {
                let (sin, cos) = (p * f).sin_cos();
                (cos, sin)
            }));
        }
    }
}

/// Runs `$body` (a call of an `#[inline(always)]` function) compiled for AVX-512 where the
/// CPU has it, so that the loops the compiler vectorizes in it use 16 lanes rather than the
/// baseline's 4 (the same operations in the same order per value: the same results).
macro_rules! wide {
    ($isa:expr, fn($($arg:ident: $ty:ty),*) $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        fn avx512($($arg: $ty),*) {
            $body
        }
        fn plain($($arg: $ty),*) {
            $body
        }
        #[cfg(target_arch = "x86_64")]
        if $isa == kernels::Isa::Avx512Vnni {
            // SAFETY: the instruction set was detected on this CPU.
            unsafe { avx512($($arg),*) }
        } else {
            plain($($arg),*)
        }
        #[cfg(not(target_arch = "x86_64"))]
        plain($($arg),*)
    }};
}

/// [`Backend::rms_norm`] of `n` rows, up to 4 side by side ([`rms_norm_group`]).
#[inline(always)]
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, n: usize, dim: usize, out: &mut [f32]) {
    let mut t = 0;
    while t < n {
        let x = &x[t * dim..];
        let out = &mut out[t * dim..];
        t += match n - t {
            1 => rms_norm_group::<1>(x, w, eps, dim, out),
            2 => rms_norm_group::<2>(x, w, eps, dim, out),
            3 => rms_norm_group::<3>(x, w, eps, dim, out),
            _ => rms_norm_group::<4>(x, w, eps, dim, out),
        };
    }
}

/// The first `R` rows of [`rms_norm_rows`]; returns `R`. Each row's sum of squares in eight
/// running f64 sums the compiler keeps in vector lanes (one sum would be a chain of dependent
/// f64 additions), the rows' sums side by side: each row's additions are the one-row loop's
/// in the same order (the same results), and `R` rows' chains are independent. 8 rows of the
/// default model's width (`kernels -- 1 norm`): 2.11 to 2.19 us one by one, 0.95 to 1.02 us
/// four side by side; eight side by side took 1.25 us (docs/PERF.md, forty-first session).
#[inline(always)]
fn rms_norm_group<const R: usize>(
    x: &[f32],
    w: &[f32],
    eps: f32,
    dim: usize,
    out: &mut [f32],
) -> usize {
    let rows: [&[f32]; R] = std::array::from_fn(|r| &x[r * dim..(r + 1) * dim]);
    let mut acc = [[0f64; 8]; R];
    let whole = dim / 8 * 8;
    for c in (0..whole).step_by(8) {
        for (a, row) in acc.iter_mut().zip(&rows) {
            let v: &[f32; 8] = row[c..c + 8].try_into().expect("8 values");
            for j in 0..8 {
                a[j] += (v[j] as f64) * (v[j] as f64);
            }
        }
    }
    for (a, row) in acc.iter_mut().zip(&rows) {
        for (a, &v) in a.iter_mut().zip(&row[whole..]) {
            *a += (v as f64) * (v as f64);
        }
    }
    for (r, (a, xr)) in acc.iter().zip(&rows).enumerate() {
        let ss = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        let scale = 1.0 / ((ss / dim as f64) as f32 + eps).sqrt();
        let o = &mut out[r * dim..(r + 1) * dim];
        for i in 0..dim {
            o[i] = xr[i] * scale * w[i];
        }
    }
    R
}

/// [`Backend::rope`] of every row of `seqs` (`table`: each row's angles, `half` pairs).
#[inline(always)]
fn rope_rows(
    x: &mut [f32],
    table: &[(f32, f32)],
    seqs: &[PagedSeq<'_>],
    heads: usize,
    hd: usize,
    half: usize,
    style: RopeStyle,
) {
    for sq in seqs {
        for row in sq.row0..sq.row0 + sq.n {
            let cs = &table[row * half..(row + 1) * half];
            for h in 0..heads {
                rotate(&mut x[(row * heads + h) * hd..][..hd], cs, style);
            }
        }
    }
}

/// Rotates one head by the row's angles (`cs[i]` = cosine and sine of pair `i`).
#[inline(always)]
fn rotate(head: &mut [f32], cs: &[(f32, f32)], style: RopeStyle) {
    let half = cs.len();
    match style {
        RopeStyle::Interleaved => {
            for (p, &(cos, sin)) in head.chunks_exact_mut(2).zip(cs) {
                let (x0, x1) = (p[0], p[1]);
                p[0] = x0 * cos - x1 * sin;
                p[1] = x0 * sin + x1 * cos;
            }
        }
        RopeStyle::Halves => {
            let (lo, hi) = head[..2 * half].split_at_mut(half);
            for ((a, b), &(cos, sin)) in lo.iter_mut().zip(hi.iter_mut()).zip(cs) {
                let (x0, x1) = (*a, *b);
                *a = x0 * cos - x1 * sin;
                *b = x0 * sin + x1 * cos;
            }
        }
    }
}

/// Dot product with several accumulators so the compiler can vectorise it.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let chunks = n / 16;
    for c in 0..chunks {
        let (x, y) = (&a[c * 16..c * 16 + 16], &b[c * 16..c * 16 + 16]);
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 16..n {
        s += a[i] * b[i];
    }
    s
}

fn dequant_row(m: &CpuMat, row: usize, out: &mut [f32]) {
    let raw = &m.raw;
    let rb = raw.row_bytes();
    let data = raw.data.as_slice();
    let src = &data[row * rb..(row + 1) * rb];
    match m.repacked {
        Some(fmt) => SCRATCH_BYTES.with(|b| {
            let mut b = b.borrow_mut();
            b.resize(rb, 0);
            kernels::unpack_row(fmt, data, raw.cols, row, &mut b);
            kernels::dequantize(raw.ty, &b, &mut out[..raw.cols]);
        }),
        None => kernels::dequantize(raw.ty, src, &mut out[..raw.cols]),
    }
}

/// A zeroed array of `len` cache elements, or an error naming the pool.
fn alloc_kv<T: KvElem>(
    len: usize,
    bytes: usize,
    what: &str,
    n_blocks: usize,
) -> Result<Vec<T>, ModelError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        ModelError::OutOfMemory(format!(
            "{what} pool of {n_blocks} blocks ({} MiB)",
            len.saturating_mul(bytes) >> 20
        ))
    })?;
    kernels::advise_huge(&mut v);
    v.resize(len, T::ZERO);
    Ok(v)
}

impl CpuBackend {
    /// [`Backend::attention`] over a pool whose arrays hold `T`.
    #[allow(clippy::too_many_arguments)]
    fn attend<T: KvElem>(
        &self,
        cfg: &ModelConfig,
        l: KvLayout,
        kc: &mut [T],
        vc: &mut [T],
        layer: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        seqs: &[PagedSeq<'_>],
        out: &mut [f32],
    ) {
        let (nh, hd, nkv) = (cfg.n_heads, cfg.head_dim, cfg.n_kv_heads);
        for sq in seqs {
            for t in 0..sq.n {
                for h in 0..nkv {
                    let dst = l.slot(layer, sq.blocks, sq.pos0 + t, h);
                    let src = (sq.row0 + t) * l.kv_dim + h * hd;
                    T::store(self.isa, &k[src..src + hd], &mut kc[dst..dst + hd]);
                    T::store(self.isa, &v[src..src + hd], &mut vc[dst..dst + hd]);
                }
            }
        }
        let (kc, vc): (&[T], &[T]) = (kc, vc);
        let group = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        let isa = self.isa;
        let optr = SyncPtr(out.as_mut_ptr());
        let rows: usize = seqs.iter().map(|s| s.n).sum();
        let longest = seqs.iter().map(|s| s.pos0 + s.n).max().unwrap_or(0);
        self.pool.run(|i, nt| {
            // A job is one token's heads that share a key-value head (or `per` of them):
            // each key and value is read and converted once for all of them. With fewer
            // such groups than threads taking part, groups are split so that each has one.
            let per = heads_per_job(rows * nkv, group, nt);
            let subs = group.div_ceil(per);
            let per_token = nkv * subs;
            let jobs = rows * per_token;
            let (j0, j1) = split_range(jobs, i, nt, 1);
            if j0 == j1 {
                return;
            }
            SCRATCH.with(|s| {
                let mut sc = s.borrow_mut();
                let need = per * (longest + 2 * hd);
                if sc.len() < need {
                    sc.resize(need, 0.0);
                }
                let (scores, rest) = sc.split_at_mut(per * longest);
                let (acc, qr) = rest.split_at_mut(per * hd);
                // Walk the jobs in order, tracking which sequence they belong to.
                let mut si = 0;
                let mut seq_end = seqs[0].n * per_token;
                let mut seq_start = 0;
                // The keys and values of a job's heads come from memory (the step's weights
                // went through the caches since this layer's last use), and the hardware's
                // prefetchers do not foresee them (a block table's blocks lie anywhere in the
                // pool): on a key-value head's first job, the next head's lines are asked for,
                // a position's with each position of this job's scores (the rest, where the
                // next is longer, after them), so that the requests run beside the products.
                // Asked for all at once before the job, as before, the requests filled the
                // core's miss buffers and the job waited behind them (most of the job loop's
                // samples sat on the prefetches): spread so, 8 sequences of 150 positions
                // with a product between layers ran 1.09x as fast (separate processes; 1.15x
                // to 1.17x in one process for a first version that asked for two lines a
                // position, not three), and 0.86x with the keys and values already in the
                // caches (docs/PERF.md, fortieth session).
                let line = (64 / std::mem::size_of::<T>()).max(1);
                // The head after job `job`'s (its block table, positions and key-value head),
                // found from the current job's sequence (`s`, whose jobs start at `start`): it
                // is in it or in one of the next few.
                let next_of = |job: usize, mut s: usize, mut start: usize| {
                    if job >= j1 {
                        return None;
                    }
                    while s < seqs.len() && job >= start + seqs[s].n * per_token {
                        start += seqs[s].n * per_token;
                        s += 1;
                    }
                    let sq = seqs.get(s)?;
                    let local = job - start;
                    let (t, kvh) = (local / per_token, local % per_token / subs);
                    Some((sq.blocks, sq.pos0 + t + 1, kvh))
                };
                // Every cache line of position `p`'s key and value in head `next`, the last
                // included (a position's values need not start on a line).
                let fetch = |next: (&[u32], usize, usize), p: usize| {
                    let o = l.slot(layer, next.0, p, next.2);
                    for d in (0..hd).step_by(line).chain([hd - 1]) {
                        kernels::prefetch(kc[o + d..].as_ptr());
                        kernels::prefetch(vc[o + d..].as_ptr());
                    }
                };
                for job in j0..j1 {
                    while job >= seq_end {
                        si += 1;
                        seq_start = seq_end;
                        seq_end += seqs[si].n * per_token;
                    }
                    let next = if job == j0 || job % subs == 0 {
                        next_of(job - job % subs + subs, si, seq_start)
                    } else {
                        None
                    };
                    let sq = &seqs[si];
                    let local = job - seq_start;
                    let (t, kvh, sub) = (local / per_token, local % per_token / subs, job % subs);
                    let h0 = kvh * group + sub * per;
                    let g = per.min((kvh + 1) * group - h0);
                    let row = sq.row0 + t;
                    // With the f16 cache the queries and the probabilities are rounded to f16
                    // for the products, as llama.cpp does: the golden logits come from it
                    // and this keeps kiln's rounding noise like its own.
                    let qh = &mut qr[..g * hd];
                    qh.copy_from_slice(&q[(row * nh + h0) * hd..][..g * hd]);
                    if T::ROUND_OPERANDS {
                        kernels::vec::round_f16(isa, qh);
                    }
                    let qh: &[f32] = qh;
                    let len = sq.pos0 + t + 1;
                    let scores = &mut scores[..g * len];
                    let key = |p: usize| {
                        if let Some(next) = next.filter(|n| p < n.1) {
                            fetch(next, p);
                        }
                        let o = l.slot(layer, sq.blocks, p, kvh);
                        &kc[o..o + hd]
                    };
                    T::scores_group(isa, qh, g, scale, key, scores);
                    if let Some(next) = next {
                        for p in len..next.1 {
                            fetch(next, p);
                        }
                    }
                    kernels::vec::softmax_rows(isa, scores, len);
                    if T::ROUND_OPERANDS {
                        kernels::vec::round_f16(isa, scores);
                    }
                    let acc = &mut acc[..g * hd];
                    acc.fill(0.0);
                    let val = |p: usize| {
                        let o = l.slot(layer, sq.blocks, p, kvh);
                        &vc[o..o + hd]
                    };
                    T::mix_group(isa, scores, g, val, acc);
                    for (d, &a) in acc.iter().enumerate() {
                        // SAFETY: the (row, head) slices of a job's heads belong to it alone.
                        unsafe { optr.write((row * nh + h0) * hd + d, a) };
                    }
                }
            });
        });
    }
}

/// The system's memory page size (4 KiB where it cannot be asked).
fn page_size() -> usize {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `sysconf` reads a system constant.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 {
            return p as usize;
        }
    }
    4096
}

/// Heads of a group (`group` query heads sharing a key-value head) that one attention job
/// takes, given `kv_jobs` (tokens times key-value heads) and the `threads` taking part: the
/// most that still leave a job for every thread. (A whole group a job was as fast or faster
/// than one head a job even where it leaves a thread one job against another's two:
/// SmolLM2-135M, one token, two threads.)
fn heads_per_job(kv_jobs: usize, group: usize, threads: usize) -> usize {
    (1..=group.max(1))
        .rev()
        .find(|&per| kv_jobs * group.div_ceil(per) >= threads)
        .unwrap_or(1)
}

impl Backend for CpuBackend {
    type Act = Vec<f32>;
    type Mat = CpuMat;
    type KvPool = CpuKvPool;

    fn describe(&self) -> String {
        let kv = match self.kv_dtype {
            KvDtype::F16 => String::new(),
            other => format!(", {} KV", other.name()),
        };
        let exact = if self.exact { ", f32 activations" } else { "" };
        let pad = if self.pad { ", padded decoding" } else { "" };
        format!(
            "cpu ({} threads, {}{kv}{exact}{pad})",
            self.pool.n_threads(),
            self.isa.name()
        )
    }

    fn decode_rows(&self, rows: usize) -> usize {
        if self.pad {
            kiln_model::backend::padded_decode_rows(rows)
        } else {
            rows
        }
    }

    fn sibling(&self) -> Result<Self, ModelError> {
        Ok(self.sharing_threads())
    }

    fn host_run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        self.pool.run(f);
    }

    fn matrix(&self, t: RawTensor) -> Result<CpuMat, ModelError> {
        if !kernels::supported(t.ty) {
            return Err(ModelError::Unsupported(format!(
                "tensor `{}` uses type {}, which the CPU backend cannot compute with",
                t.name,
                t.ty.name()
            )));
        }
        let (block, _) = t.ty.block();
        if !t.cols.is_multiple_of(block) || t.data.as_slice().len() != t.rows * t.row_bytes() {
            return Err(ModelError::Config(format!(
                "tensor `{}`: {} bytes do not hold {} x {} {} values",
                t.name,
                t.data.as_slice().len(),
                t.rows,
                t.cols,
                t.ty.name()
            )));
        }
        let kernel = matmul::Kernel::for_tensor(self.isa, &t, self.exact);
        let mut t = t;
        let mut repacked = None;
        if let (matmul::Kernel::Quant(_), Some(fmt)) = (kernel, kernels::Fmt::of(t.ty)) {
            // A panel kernel reads 16 rows interleaved: an owned copy in that order (the
            // same size), made once here on the pool's threads.
            let data = t.data.as_slice();
            // A mapped file's pages leave memory as the repacking passes them (whole pages
            // only: a page two parts share goes with the whole tensor's, below).
            let page = page_size();
            let release = |start: usize, end: usize| {
                if let TensorBytes::Mapped { file, offset, .. } = &t.data {
                    let (a, b) = (
                        (offset + start).next_multiple_of(page),
                        (offset + end) / page * page,
                    );
                    if b > a {
                        file.release(a, b - a);
                    }
                }
            };
            let read: Option<&(dyn Fn(usize, usize) + Sync)> = match &t.data {
                TensorBytes::Mapped { .. } => Some(&release),
                _ => None,
            };
            if let Some(v) =
                kernels::repack_on(Some(&self.pool), self.isa, fmt, data, t.rows, t.cols, read)
            {
                let file = std::mem::replace(&mut t.data, TensorBytes::Owned(Arc::new(v)));
                // The file's copy is not read again (but for a rare re-read, which faults it
                // back in): its pages leave resident memory rather than count twice.
                if let TensorBytes::Mapped { file, offset, len } = file {
                    file.release(offset, len);
                }
                repacked = Some(fmt);
            }
        }
        Ok(CpuMat {
            kernel,
            raw: t,
            repacked,
        })
    }

    fn vector(&self, data: &[f32]) -> Result<Vec<f32>, ModelError> {
        Ok(data.to_vec())
    }

    fn act(&self, len: usize) -> Result<Vec<f32>, ModelError> {
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|_| ModelError::OutOfMemory(format!("activation buffer of {len} values")))?;
        v.resize(len, 0.0);
        Ok(v)
    }

    fn kv_pool(
        &self,
        cfg: &ModelConfig,
        n_blocks: usize,
        block_size: usize,
    ) -> Result<CpuKvPool, ModelError> {
        let kv_dim = cfg.kv_dim();
        let len = cfg
            .n_layers
            .checked_mul(n_blocks)
            .and_then(|x| x.checked_mul(block_size))
            .and_then(|x| x.checked_mul(kv_dim))
            .ok_or_else(|| ModelError::OutOfMemory(format!("KV pool of {n_blocks} blocks")))?;
        let layout = KvLayout {
            n_blocks,
            block_size: block_size.max(1),
            kv_dim,
            head_dim: cfg.head_dim,
        };
        let bytes = self.kv_dtype.bytes();
        let store = match self.kv_dtype {
            KvDtype::F16 => KvStore::F16 {
                k: alloc_kv(len, bytes, "key", n_blocks)?,
                v: alloc_kv(len, bytes, "value", n_blocks)?,
            },
            KvDtype::F32 => KvStore::F32 {
                k: alloc_kv(len, bytes, "key", n_blocks)?,
                v: alloc_kv(len, bytes, "value", n_blocks)?,
            },
        };
        Ok(CpuKvPool { store, layout })
    }

    fn kv_block_bytes(&self, cfg: &ModelConfig, block_size: usize) -> usize {
        2 * cfg.n_layers * block_size * cfg.kv_dim() * self.kv_dtype.bytes()
    }

    fn embed(&self, table: &CpuMat, tokens: &[u32], out: &mut Vec<f32>) {
        let cols = table.raw.cols;
        for (t, &id) in tokens.iter().enumerate() {
            let row = (id as usize).min(table.raw.rows - 1);
            dequant_row(table, row, &mut out[t * cols..(t + 1) * cols]);
        }
    }

    fn rms_norm(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        eps: f32,
        n: usize,
        dim: usize,
        out: &mut Vec<f32>,
    ) {
        let (x, w, out) = (&x[..], &w[..], &mut out[..]);
        wide!(
            self.isa,
            fn(x: &[f32], w: &[f32], eps: f32, n: usize, dim: usize, out: &mut [f32])
            rms_norm_rows(x, w, eps, n, dim, out)
        );
    }

    fn matmul(&self, w: &CpuMat, x: &Vec<f32>, n: usize, out: &mut Vec<f32>) {
        matmul::matmul(&self.pool, self.isa, w.kernel, &w.raw, x, n, out);
    }

    fn matmul_many(&self, ws: &[&CpuMat], x: &Vec<f32>, n: usize, outs: &mut [&mut Vec<f32>]) {
        self.matmul_pairs(
            ws.iter().copied().zip(outs.iter_mut().map(|o| &mut **o)),
            x,
            n,
        );
    }

    fn add_bias(&self, x: &mut Vec<f32>, b: &Vec<f32>, n: usize, width: usize) {
        for t in 0..n {
            for (a, c) in x[t * width..(t + 1) * width].iter_mut().zip(b) {
                *a += c;
            }
        }
    }

    fn rope(&self, cfg: &ModelConfig, x: &mut Vec<f32>, heads: usize, seqs: &[PagedSeq<'_>]) {
        let hd = cfg.head_dim;
        let rd = cfg.rope_dim;
        let half = rd / 2;
        ROPE.with(|r| {
            let mut angles = r.borrow_mut();
            angles.update(cfg.rope_base, rd, seqs);
            let (table, style, x) = (&angles.table[..], cfg.rope_style, &mut x[..]);
            wide!(
                self.isa,
                fn(
                    x: &mut [f32],
                    table: &[(f32, f32)],
                    seqs: &[PagedSeq<'_>],
                    heads: usize,
                    hd: usize,
                    half: usize,
                    style: RopeStyle
                )
                rope_rows(x, table, seqs, heads, hd, half, style)
            );
        });
    }

    fn attention(
        &self,
        cfg: &ModelConfig,
        pool: &mut CpuKvPool,
        layer: usize,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        seqs: &[PagedSeq<'_>],
        out: &mut Vec<f32>,
    ) {
        let l = pool.layout;
        match &mut pool.store {
            KvStore::F16 { k: kc, v: vc } => self.attend(cfg, l, kc, vc, layer, q, k, v, seqs, out),
            KvStore::F32 { k: kc, v: vc } => self.attend(cfg, l, kc, vc, layer, q, k, v, seqs, out),
        }
    }

    fn copy_kv_block(&self, pool: &mut CpuKvPool, src: u32, dst: u32) {
        let l = pool.layout;
        match &mut pool.store {
            KvStore::F16 { k, v } => {
                copy_block(k, &l, src, dst);
                copy_block(v, &l, src, dst);
            }
            KvStore::F32 { k, v } => {
                copy_block(k, &l, src, dst);
                copy_block(v, &l, src, dst);
            }
        }
    }

    fn swiglu(&self, gate: &mut Vec<f32>, up: &Vec<f32>, len: usize) {
        kernels::vec::silu_mul(self.isa, &mut gate[..len], &up[..len]);
    }

    /// With both matrices quantized (integer kernels) and of `ffn` rows, `ffn` a multiple of
    /// [`matmul::THEN_ALIGN`], one task of the pool: each thread takes its rows of both
    /// products, then `silu(gate) * up` over those rows of every token, where the engine's
    /// thread alone took the whole after the task (8 rows of the default model: 12,288
    /// values, 23 us a layer on the 2-vCPU Zen 3 of docs/PERF.md's thirty-eighth session).
    /// The values are the same bit for bit: a thread's rows start at a multiple of
    /// `THEN_ALIGN` and end at one or at `ffn`, so the vector kernels meet whole vectors only,
    /// as over the whole buffer (their scalar tails may round otherwise: AVX-512's `exp` is
    /// not libm's). Otherwise the products, then [`Backend::swiglu`].
    fn matmul_swiglu(
        &self,
        w_gate: &CpuMat,
        w_up: &CpuMat,
        x: &Vec<f32>,
        n: usize,
        ffn: usize,
        gate: &mut Vec<f32>,
        up: &mut Vec<f32>,
    ) {
        if !self.swiglu_fuses(w_gate, w_up, n, ffn, gate, up) {
            self.matmul_many(&[w_gate, w_up], x, n, &mut [gate, up]);
            self.swiglu(gate, up, n * ffn);
            return;
        }
        self.swiglu_task(w_gate, w_up, x, n, ffn, gate, up, None);
    }

    /// Where [`Backend::matmul_swiglu`] runs as one task and the down matrix is quantized
    /// too, each thread also quantizes its rows of the SwiGLU's outputs (whole blocks:
    /// `THEN_ALIGN` is a multiple of 32) in that task, and the down product takes them as
    /// they are: the engine's thread quantized them alone between the tasks before (8 rows of
    /// the default model: 5.0 us a layer in the server, the other thread waiting; docs/PERF.md,
    /// forty-first session). Each block's values are the same bit for bit, for finite values,
    /// as quantized whole.
    fn feed_forward(
        &self,
        w_gate: &CpuMat,
        w_up: &CpuMat,
        w_down: &CpuMat,
        x: &mut Vec<f32>,
        n: usize,
        ffn: usize,
        gate: &mut Vec<f32>,
        up: &mut Vec<f32>,
    ) {
        let down = match w_down.kernel {
            matmul::Kernel::Quant(k)
                if w_down.raw.cols == ffn
                    && x.len() >= n * w_down.raw.rows
                    && self.swiglu_fuses(w_gate, w_up, n, ffn, gate, up) =>
            {
                k
            }
            _ => {
                self.matmul_swiglu(w_gate, w_up, x, n, ffn, gate, up);
                self.matmul(w_down, gate, n, x);
                return;
            }
        };
        QNEXT.with(|q| {
            let mut q = q.borrow_mut();
            let parts = q.prepare_blocks(n, ffn, down.offsets);
            self.swiglu_task(w_gate, w_up, x, n, ffn, gate, up, Some(parts));
            matmul::matmul_quantized(&self.pool, down, &w_down.raw, &q, n, x);
        });
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) {
        for (a, b) in x[..len].iter_mut().zip(&y[..len]) {
            *a += b;
        }
    }

    fn gather_rows(&self, x: &Vec<f32>, rows: &[usize], width: usize, out: &mut Vec<f32>) {
        for (i, &r) in rows.iter().enumerate() {
            out[i * width..(i + 1) * width].copy_from_slice(&x[r * width..(r + 1) * width]);
        }
    }

    fn read(&self, x: &Vec<f32>, out: &mut [f32]) {
        let n = out.len();
        out.copy_from_slice(&x[..n]);
    }

    fn argmax(&self, x: &Vec<f32>, rows: usize, width: usize, out: &mut Vec<u32>) {
        // The logits are already in host memory: no copy.
        out.clear();
        out.extend(
            x[..rows * width]
                .chunks_exact(width.max(1))
                .map(kiln_model::sample::argmax),
        );
    }

    fn sample(
        &self,
        logits: &mut Vec<f32>,
        width: usize,
        rows: &[kiln_model::sample::RowSampling],
        adjust: &[kiln_model::sample::Adjust],
        masks: &[u32],
        out: &mut Vec<kiln_model::sample::Sampled>,
    ) {
        // The logits are already in host memory: sampled in place, the rows shared out over
        // the pool (each row's draw depends on the row alone, so not on the split).
        let n = rows.len().min(logits.len() / width.max(1));
        out.clear();
        out.resize(n, kiln_model::sample::Sampled::token(0));
        let optr = SyncPtr(out.as_mut_ptr());
        let lptr = SyncPtr(logits.as_mut_ptr());
        self.pool.run(|i, nt| {
            let (r0, r1) = split_range(n, i, nt, 1);
            SAMPLE.with(|s| {
                let mut s = s.borrow_mut();
                for (r, p) in rows.iter().enumerate().take(r1).skip(r0) {
                    // SAFETY: row `r` of the logits and slot `r` of `out` belong to this
                    // thread alone, and both are in bounds (`r < n`).
                    let row = unsafe { std::slice::from_raw_parts_mut(lptr.at(r * width), width) };
                    let (a0, na) = (p.adjust.0 as usize, p.adjust.1 as usize);
                    let adj = adjust.get(a0..a0 + na).unwrap_or(&[]);
                    let mask = kiln_model::sample::mask_row(masks, width, p.mask);
                    let v = kiln_model::sample::sample_row(row, p, mask, adj, &mut s);
                    unsafe { optr.write(r, v) };
                }
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows normalised side by side, for every count of rows and widths with and without a
    /// partial chunk of 8, through the backend (AVX-512 where the CPU has it) and as
    /// compiled for the baseline: each row's bits are those of the row normalised alone.
    #[test]
    fn rms_norm_side_by_side_gives_each_rows_own_bits() {
        fn alone(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
            let mut acc = [0f64; 8];
            for c in x.chunks(8) {
                for (a, &v) in acc.iter_mut().zip(c) {
                    *a += (v as f64) * (v as f64);
                }
            }
            let ss =
                ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
            let scale = 1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt();
            for i in 0..x.len() {
                out[i] = x[i] * scale * w[i];
            }
        }
        let be = CpuBackend::new(1);
        let mut state = 0x2545_F491u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for dim in [8usize, 44, 576, 1000] {
            let w: Vec<f32> = (0..dim).map(|_| 1.0 + next()).collect();
            for n in 1..=9 {
                let x: Vec<f32> = (0..n * dim)
                    .map(|i| next() * (1 + i % 7) as f32 * 30.0)
                    .collect();
                let mut want = vec![0f32; n * dim];
                for t in 0..n {
                    let r = t * dim..(t + 1) * dim;
                    alone(&x[r.clone()], &w, 1e-5, &mut want[r]);
                }
                let mut base = vec![0f32; n * dim];
                rms_norm_rows(&x, &w, 1e-5, n, dim, &mut base);
                let mut wide = vec![0f32; n * dim];
                be.rms_norm(&x, &w, 1e-5, n, dim, &mut wide);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&base), bits(&want), "dim {dim}, {n} rows, baseline");
                assert_eq!(bits(&wide), bits(&want), "dim {dim}, {n} rows, backend");
            }
        }
    }
}
