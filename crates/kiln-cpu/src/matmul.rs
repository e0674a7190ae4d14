//! Matrix products on the CPU: quantized weights against 8-bit activations through the
//! [`kernels`](super::kernels), other formats through f32 rows.

use std::cell::RefCell;

use half::f16;
use kiln_formats::gguf::GgmlType;

use super::kernels::{self, Fmt, Isa, Layout, QAct, Tiles};
use super::pool::{split_range, ThreadPool};
use super::SyncPtr;
use kiln_model::backend::RawTensor;

thread_local! {
    /// The calling thread's quantized activations; grows to the largest input and stays.
    static QACT: RefCell<QAct> = RefCell::new(QAct::new());
    /// One weight row decoded to f32, per thread (formats without an integer kernel).
    static ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// How a matrix is multiplied.
#[derive(Clone, Copy)]
pub(super) enum Kernel {
    /// Integer tiles against quantized activations.
    Quant(Tiles),
    /// F16 rows read in place, dotted with f32 activations.
    F16,
    /// Rows decoded to f32, dotted with f32 activations.
    Float,
}

impl Kernel {
    /// The kernel for a tensor's format on an instruction set (`exact`: f32 activations
    /// for every format, the slow reference).
    pub(super) fn for_tensor(isa: Isa, t: &RawTensor, exact: bool) -> Kernel {
        match Fmt::of(t.ty).filter(|_| !exact) {
            Some(f) => Kernel::Quant(Tiles::new(isa, f)),
            None if t.ty == GgmlType::F16 => Kernel::F16,
            None => Kernel::Float,
        }
    }
}

/// Rows of `n` tokens at which quantizing the activations is split over the pool.
const PAR_QUANT_MIN: usize = 16;

/// `out[t * rows + r] = W[r] . x[t]` for `n` tokens.
pub(super) fn matmul(
    pool: &ThreadPool,
    isa: Isa,
    kernel: Kernel,
    w: &RawTensor,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    matmul_many(pool, isa, [(kernel, w, out)], x, n);
}

/// Quantized products run together, at most this many.
const MAX_TOGETHER: usize = 4;

/// [`matmul`] of several matrices with the same input: the quantized ones take the
/// activations quantized once and run as one task of the pool, each thread taking its share
/// of every matrix's rows (one wake-up and one wait instead of one per matrix). Nothing is
/// allocated: the products are taken from `parts` as they come.
pub(super) fn matmul_many<'a>(
    pool: &ThreadPool,
    isa: Isa,
    parts: impl IntoIterator<Item = (Kernel, &'a RawTensor, &'a mut [f32])>,
    x: &[f32],
    n: usize,
) {
    matmul_many_then(pool, isa, parts, x, n, None);
}

/// Rows of the products of a task with a `then` are split between threads in multiples of
/// this (a multiple of [`kernels::PANEL`]): whole 16-value vectors of AVX-512 and 8-value ones
/// of AVX2, so that an elementwise vector kernel run by each thread over its rows of a row of
/// outputs whose length is a multiple of this meets whole vectors only, as it does over the
/// whole buffer (a vector kernel's scalar tail may round otherwise); and whole 32-value blocks,
/// so that each thread can quantize its rows of the outputs for the next product.
pub(super) const THEN_ALIGN: usize = 32;
const _: () = assert!(THEN_ALIGN.is_multiple_of(kernels::PANEL));

/// The elementwise work a thread does after its share of a task's products:
/// `then(r0, r1, outs)`, `outs` the products' outputs in the order given, rows `r0..r1` of
/// each (for every token) the thread's own and done.
pub(super) type Then<'a> = &'a (dyn Fn(usize, usize, &[SyncPtr<f32>]) + Sync);

/// One quantized product of a task.
#[derive(Clone, Copy)]
struct Job<'a> {
    k: Tiles,
    data: &'a [u8],
    rb: usize,
    rows: usize,
    out: SyncPtr<f32>,
}

/// [`matmul_many`], then, with `then`, `then(r0, r1, outs)` on each thread in the same task,
/// after its products. Every part must then be a quantized product (integer kernels) of the
/// same rows and width, at most [`MAX_TOGETHER`] of them, so that all run in the one task;
/// their rows are split in multiples of [`THEN_ALIGN`].
///
/// # Panics
/// With `then`, if a part is not such a product (it would run in a task of its own, before
/// `then` could see its rows).
pub(super) fn matmul_many_then<'a>(
    pool: &ThreadPool,
    isa: Isa,
    parts: impl IntoIterator<Item = (Kernel, &'a RawTensor, &'a mut [f32])>,
    x: &[f32],
    n: usize,
    then: Option<Then<'_>>,
) {
    let mut jobs: [Option<Job<'_>>; MAX_TOGETHER] = [None; MAX_TOGETHER];
    let mut count = 0;
    let mut cols = 0;
    for (kernel, w, out) in parts {
        let together = count < MAX_TOGETHER
            && (count == 0 || w.cols == cols && jobs[0].is_some_and(|j| j.rows == w.rows));
        assert!(
            then.is_none() || matches!(kernel, Kernel::Quant(_)) && together,
            "{}: a product with elementwise work after it must be quantized, of the others' \
             rows and width, one of at most {MAX_TOGETHER}",
            w.name
        );
        match kernel {
            Kernel::Quant(k) if count < MAX_TOGETHER && (count == 0 || w.cols == cols) => {
                assert!(out.len() >= n * w.rows, "output of {} too short", w.name);
                cols = w.cols;
                jobs[count] = Some(Job {
                    k,
                    data: w.data.as_slice(),
                    rb: w.row_bytes(),
                    rows: w.rows,
                    out: SyncPtr(out.as_mut_ptr()),
                });
                count += 1;
            }
            // More than one task takes, or another width: a task of its own.
            Kernel::Quant(_) => matmul_many(pool, isa, [(kernel, w, out)], x, n),
            Kernel::F16 | Kernel::Float => float_matmul(pool, isa, kernel, w, x, n, out),
        }
    }
    let jobs = &jobs[..count];
    if jobs.is_empty() {
        return;
    }
    QACT.with(|q| {
        let mut q = q.borrow_mut();
        if n >= PAR_QUANT_MIN && pool.n_threads() > 1 {
            quantize_parallel(pool, isa, &mut q, x, n, cols);
        } else {
            q.quantize(isa, x, n, cols);
        }
        if jobs.iter().flatten().any(|j| j.k.offsets) {
            q.offsets();
        }
        run_jobs(pool, jobs, &q.view(0, n), then);
    });
}

/// [`matmul`] of a quantized matrix (its integer kernel `k`) against activations already
/// quantized (`q`'s `n` rows, of the matrix's width), with their block offsets where the
/// kernel wants them (it computes them itself otherwise).
///
/// # Panics
/// If `q` is not `n` rows of the matrix's width, or `out` is shorter than `n` of its rows.
pub(super) fn matmul_quantized(
    pool: &ThreadPool,
    k: Tiles,
    w: &RawTensor,
    q: &QAct,
    n: usize,
    out: &mut [f32],
) {
    assert!(out.len() >= n * w.rows, "output of {} too short", w.name);
    let view = q.view(0, n);
    assert!(
        view.tokens() == n && view.cols() == w.cols,
        "{}: activations of {} rows of {}, not {n} of {}",
        w.name,
        view.tokens(),
        view.cols(),
        w.cols
    );
    let job = Job {
        k,
        data: w.data.as_slice(),
        rb: w.row_bytes(),
        rows: w.rows,
        out: SyncPtr(out.as_mut_ptr()),
    };
    run_jobs(pool, &[Some(job)], &view, None);
}

/// The task of [`matmul_many_then`]: each thread its rows of every job, then `then`.
fn run_jobs(
    pool: &ThreadPool,
    jobs: &[Option<Job<'_>>],
    view: &kernels::ActView,
    then: Option<Then<'_>>,
) {
    pool.run(|i, nt| {
        for j in jobs.iter().flatten() {
            // Panels are split whole between threads.
            let align = if then.is_some() {
                THEN_ALIGN
            } else if j.k.layout == Layout::Panels {
                kernels::PANEL
            } else {
                4
            };
            let (r0, r1) = split_range(j.rows, i, nt, align);
            let (rows, out) = (j.rows, j.out);
            // SAFETY: rows r0..r1 of every token belong to this thread only, and
            // `t * rows + r + v.len()` is inside `out` (n tokens of `rows` outputs,
            // asserted by the callers; the run ends by r1).
            kernels::gemm_rows(&j.k, j.data, j.rb, r0, r1, view, |t, r, v| unsafe {
                std::ptr::copy_nonoverlapping(v.as_ptr(), out.at(t * rows + r), v.len())
            });
        }
        if let (Some(f), Some(first)) = (then, jobs[0]) {
            // Every job has `first`'s rows (asserted above): the rows this thread took.
            let (r0, r1) = split_range(first.rows, i, nt, THEN_ALIGN);
            let mut outs = [SyncPtr(std::ptr::null_mut()); MAX_TOGETHER];
            for (o, j) in outs.iter_mut().zip(jobs.iter().flatten()) {
                *o = j.out;
            }
            f(r0, r1, &outs[..jobs.len()]);
        }
    });
}

/// How many rows ahead an f16 product of several tokens prefetches its weights.
const AHEAD: usize = 4;

/// [`matmul`] for the formats without an integer kernel (or all, with `exact`): f32 or f16
/// rows dotted with f32 activations.
fn float_matmul(
    pool: &ThreadPool,
    isa: Isa,
    kernel: Kernel,
    w: &RawTensor,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let (rows, cols) = (w.rows, w.cols);
    assert!(out.len() >= n * rows, "output of {} too short", w.name);
    assert!(x.len() >= n * cols, "input of {} too short", w.name);
    let data = w.data.as_slice();
    let rb = w.row_bytes();
    let optr = SyncPtr(out.as_mut_ptr());
    match kernel {
        Kernel::F16 if data.as_ptr().align_offset(std::mem::align_of::<f16>()) == 0 => {
            // SAFETY: `f16` is two bytes with no invalid bit patterns, the pointer is
            // aligned (checked above) and `data` holds `rows * cols` of them.
            let wf: &[f16] =
                unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), rows * cols) };
            pool.run(|i, nt| {
                let (r0, r1) = split_range(rows, i, nt, 4);
                let xt = |t: usize| &x[t * cols..(t + 1) * cols];
                for r in r0..r1 {
                    let row = &wf[r * cols..(r + 1) * cols];
                    if n > 1 && r + AHEAD < r1 {
                        // With several tokens the row AHEAD on is asked for: 8 sequences of
                        // an F16 file 13% faster (docs/PERF.md, twenty-third session; why the
                        // hardware's prefetchers do not do it was not profiled).
                        let next = &wf[(r + AHEAD) * cols..(r + AHEAD + 1) * cols];
                        for c in (0..cols).step_by(32) {
                            kernels::prefetch(next[c..].as_ptr());
                        }
                    }
                    // Eight or four tokens at a time share each converted weight; two or three
                    // left over go as four (the last repeated, its sums dropped), which costs
                    // about what one token alone does. Every sum is the one-token one.
                    let mut t = 0;
                    while t < n {
                        let left = n - t;
                        if left >= 8 {
                            let v = kernels::vec::dot_f16_x8(
                                isa,
                                std::array::from_fn(|j| xt(t + j)),
                                row,
                            );
                            for (j, v) in v.into_iter().enumerate() {
                                // SAFETY: as above.
                                unsafe { optr.write((t + j) * rows + r, v) };
                            }
                            t += 8;
                        } else if left >= 2 {
                            let k = left.min(4);
                            let at = |j: usize| xt(t + j.min(k - 1));
                            let v =
                                kernels::vec::dot_f16_x4(isa, [at(0), at(1), at(2), at(3)], row);
                            for (j, v) in v.into_iter().take(k).enumerate() {
                                // SAFETY: as above.
                                unsafe { optr.write((t + j) * rows + r, v) };
                            }
                            t += k;
                        } else {
                            let v = kernels::vec::dot_f16(isa, xt(t), row);
                            // SAFETY: as above.
                            unsafe { optr.write(t * rows + r, v) };
                            t += 1;
                        }
                    }
                }
            });
        }
        Kernel::F16 | Kernel::Float => pool.run(|i, nt| {
            let (r0, r1) = split_range(rows, i, nt, 4);
            ROW.with(|s| {
                let mut buf = s.borrow_mut();
                if buf.len() < cols {
                    buf.resize(cols, 0.0);
                }
                for r in r0..r1 {
                    kernels::dequantize(w.ty, &data[r * rb..(r + 1) * rb], &mut buf[..cols]);
                    for t in 0..n {
                        let v = super::dot_f32(&buf[..cols], &x[t * cols..(t + 1) * cols]);
                        // SAFETY: as above.
                        unsafe { optr.write(t * rows + r, v) };
                    }
                }
            });
        }),
        Kernel::Quant(_) => unreachable!("quantized products go through matmul_many"),
    }
}

/// Quantizes `n` rows of `x` with every thread of the pool taking a share of the rows.
fn quantize_parallel(pool: &ThreadPool, isa: Isa, q: &mut QAct, x: &[f32], n: usize, cols: usize) {
    let parts = q.prepare(n, cols);
    pool.run(|i, nt| {
        let (t0, t1) = split_range(n, i, nt, 1);
        // SAFETY: threads take disjoint token ranges of the buffers `prepare` sized.
        let (qs, d, s) = unsafe { parts.rows(t0, t1) };
        kernels::quantize_rows(isa, &x[t0 * cols..t1 * cols], qs, d, s);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_model::backend::TensorBytes;
    use std::sync::Arc;

    /// An F16 product over 1 to 13 tokens (groups of eight and four, two or three padded to
    /// four, one alone) gives every token the sums of a product over that token alone, bit for
    /// bit: a verifying pass over proposals matches decoding one token at a time.
    #[test]
    fn f16_products_of_any_number_of_tokens_match_one_token_at_a_time() {
        let (rows, cols) = (37, 200);
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut f = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let data: Vec<u8> = (0..rows * cols)
            .flat_map(|_| f16::from_f32(f()).to_le_bytes())
            .collect();
        let w = RawTensor {
            name: "w".into(),
            ty: GgmlType::F16,
            rows,
            cols,
            data: TensorBytes::Owned(Arc::new(data)),
        };
        let pool = ThreadPool::new(2);
        for isa in Isa::available() {
            for n in 1..=13 {
                let x: Vec<f32> = (0..n * cols).map(|_| f()).collect();
                let mut out = vec![0f32; n * rows];
                float_matmul(&pool, isa, Kernel::F16, &w, &x, n, &mut out);
                for t in 0..n {
                    let mut one = vec![0f32; rows];
                    float_matmul(
                        &pool,
                        isa,
                        Kernel::F16,
                        &w,
                        &x[t * cols..(t + 1) * cols],
                        1,
                        &mut one,
                    );
                    let same = one
                        .iter()
                        .zip(&out[t * rows..(t + 1) * rows])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{isa:?}: token {t} of {n}");
                }
            }
        }
    }
}
