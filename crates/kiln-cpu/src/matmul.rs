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
    /// One quantized product of a task.
    #[derive(Clone, Copy)]
    struct Job<'a> {
        k: Tiles,
        data: &'a [u8],
        rb: usize,
        rows: usize,
        out: SyncPtr<f32>,
    }
    let mut jobs: [Option<Job<'_>>; MAX_TOGETHER] = [None; MAX_TOGETHER];
    let mut count = 0;
    let mut cols = 0;
    for (kernel, w, out) in parts {
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
        let view = q.view(0, n);
        pool.run(|i, nt| {
            for j in jobs.iter().flatten() {
                // Panels are split whole between threads.
                let align = if j.k.layout == Layout::Panels {
                    kernels::PANEL
                } else {
                    4
                };
                let (r0, r1) = split_range(j.rows, i, nt, align);
                let (rows, out) = (j.rows, j.out);
                // SAFETY: rows r0..r1 of every token belong to this thread only, and
                // `t * rows + r + v.len()` is inside `out` (n tokens of `rows` outputs,
                // asserted above; the run ends by r1).
                kernels::gemm_rows(&j.k, j.data, j.rb, r0, r1, &view, |t, r, v| unsafe {
                    std::ptr::copy_nonoverlapping(v.as_ptr(), out.at(t * rows + r), v.len())
                });
            }
        });
    });
}

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
                    // Four tokens at a time share each converted weight.
                    let mut t = 0;
                    while t + 4 <= n {
                        let v = kernels::vec::dot_f16_x4(
                            isa,
                            [xt(t), xt(t + 1), xt(t + 2), xt(t + 3)],
                            row,
                        );
                        for (j, v) in v.into_iter().enumerate() {
                            // SAFETY: as above.
                            unsafe { optr.write((t + j) * rows + r, v) };
                        }
                        t += 4;
                    }
                    for t in t..n {
                        let v = kernels::vec::dot_f16(isa, xt(t), row);
                        // SAFETY: as above.
                        unsafe { optr.write(t * rows + r, v) };
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
