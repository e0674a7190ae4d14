//! Matrix products on the CPU: quantized weights against 8-bit activations through the
//! [`kernels`](super::kernels), other formats through f32 rows.

use std::cell::RefCell;

use half::f16;
use kiln_gguf::GgmlType;

use super::kernels::{self, Fmt, Isa, Pack8, QAct, TileFn, WideFn};
use super::pool::{split_range, ThreadPool};
use super::SyncPtr;
use crate::backend::RawTensor;

thread_local! {
    /// The calling thread's quantized activations; grows to the largest input and stays.
    static QACT: RefCell<QAct> = RefCell::new(QAct::new());
    /// The calling thread's activations regrouped for the 8-token kernels.
    static PACK8: RefCell<Pack8> = RefCell::new(Pack8::new());
    /// One weight row decoded to f32, per thread (formats without an integer kernel).
    static ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// How a matrix is multiplied.
#[derive(Clone, Copy)]
pub(super) enum Kernel {
    /// Integer tiles against quantized activations, and the 8-token kernel of the format
    /// where the instruction set has one.
    Quant(TileFn, Option<(WideFn, Fmt)>),
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
            Some(f) => Kernel::Quant(
                kernels::tile_fn(isa, f),
                kernels::wide_fn(isa, f).map(|wf| (wf, f)),
            ),
            None if t.ty == GgmlType::F16 => Kernel::F16,
            None => Kernel::Float,
        }
    }
}

/// Tokens in a last, partial group at which the 8-token kernel beats the 4x4 tiles even
/// with the padding.
const WIDE_MIN: usize = 5;

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
    let (rows, cols) = (w.rows, w.cols);
    let data = w.data.as_slice();
    let rb = w.row_bytes();
    let optr = SyncPtr(out.as_mut_ptr());
    match kernel {
        Kernel::Quant(tf, wide) => QACT.with(|q| {
            let mut q = q.borrow_mut();
            if n >= PAR_QUANT_MIN && pool.n_threads() > 1 {
                quantize_parallel(pool, isa, &mut q, x, n, cols);
            } else {
                q.quantize(isa, x, n, cols);
            }
            let view = q.view(0, n);
            // Whole groups of 8 tokens go through the 8-token kernel, and a last group of 5
            // to 7 padded to 8; fewer tokens (single-sequence decode) through the tiles.
            let groups = match wide {
                Some(_) => n / 8 + usize::from(n % 8 >= WIDE_MIN),
                None => 0,
            };
            let n_wide = n.min(groups * 8);
            PACK8.with(|pk| {
                let mut pk = pk.borrow_mut();
                if n_wide > 0 {
                    pk.pack(&view, groups);
                }
                let pk: &Pack8 = &pk;
                let rest = view.skip(n_wide);
                pool.run(|i, nt| {
                    let (r0, r1) = split_range(rows, i, nt, 4);
                    // SAFETY (both stores): rows r0..r1 of every token belong to this thread
                    // only, and `t * rows + r` is inside `out` (n tokens of `rows` outputs).
                    if let Some((wf, fmt)) = wide.filter(|_| n_wide > 0) {
                        kernels::gemm_rows_wide(
                            wf,
                            fmt,
                            data,
                            rb,
                            r0,
                            r1,
                            &view,
                            pk,
                            n_wide,
                            |r, t, v| unsafe { optr.write(t * rows + r, v) },
                        );
                    }
                    if n_wide < n {
                        kernels::gemm_rows(tf, data, rb, r0, r1, &rest, |r, t, v| unsafe {
                            optr.write((n_wide + t) * rows + r, v)
                        });
                    }
                });
            });
        }),
        Kernel::F16 if data.as_ptr().align_offset(std::mem::align_of::<f16>()) == 0 => {
            // SAFETY: `f16` is two bytes with no invalid bit patterns, the pointer is
            // aligned (checked above) and `data` holds `rows * cols` of them.
            let wf: &[f16] =
                unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), rows * cols) };
            pool.run(|i, nt| {
                let (r0, r1) = split_range(rows, i, nt, 4);
                for r in r0..r1 {
                    let row = &wf[r * cols..(r + 1) * cols];
                    for t in 0..n {
                        let v = kernels::vec::dot_f16(isa, &x[t * cols..(t + 1) * cols], row);
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
