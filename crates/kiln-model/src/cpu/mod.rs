//! The CPU backend: weights used in place from the memory map, work split over a
//! persistent thread pool.

mod pool;

use std::cell::RefCell;

use half::f16;
use kiln_gguf::GgmlType;

use crate::backend::{Backend, RawTensor};
use crate::config::RopeStyle;
use crate::{ModelConfig, ModelError};
pub use pool::{split_range, ThreadPool};

/// Runs the decoder on the CPU.
#[derive(Debug)]
pub struct CpuBackend {
    pool: ThreadPool,
}

impl CpuBackend {
    /// A backend with `threads` worker threads (0 picks the number of cores).
    pub fn new(threads: usize) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        CpuBackend {
            pool: ThreadPool::new(threads),
        }
    }

    /// Threads in use.
    pub fn threads(&self) -> usize {
        self.pool.n_threads()
    }
}

/// A weight matrix as the file stores it.
pub struct CpuMat {
    raw: RawTensor,
}

/// One sequence's key/value cache, f16, laid out `[layer][position][kv_dim]`.
pub struct CpuKv {
    k: Vec<f16>,
    v: Vec<f16>,
    capacity: usize,
    kv_dim: usize,
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
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
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

fn dequant_row(raw: &RawTensor, row: usize, out: &mut [f32]) {
    let rb = raw.row_bytes();
    let src = &raw.data.as_slice()[row * rb..(row + 1) * rb];
    // Sizes were checked when the matrix was taken in.
    let _ = kiln_gguf::quant::dequantize(raw.ty, src, &mut out[..raw.cols]);
}

impl Backend for CpuBackend {
    type Act = Vec<f32>;
    type Mat = CpuMat;
    type Kv = CpuKv;

    fn describe(&self) -> String {
        format!("cpu ({} threads)", self.pool.n_threads())
    }

    fn matrix(&self, t: RawTensor) -> Result<CpuMat, ModelError> {
        if !t.ty.is_supported() {
            return Err(ModelError::Unsupported(format!(
                "tensor `{}` uses type {}, which the CPU backend cannot compute with",
                t.name,
                t.ty.name()
            )));
        }
        let (block, _) = t.ty.block();
        if t.cols % block != 0 || t.data.as_slice().len() != t.rows * t.row_bytes() {
            return Err(ModelError::Config(format!(
                "tensor `{}`: {} bytes do not hold {} x {} {} values",
                t.name,
                t.data.as_slice().len(),
                t.rows,
                t.cols,
                t.ty.name()
            )));
        }
        Ok(CpuMat { raw: t })
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

    fn kv_cache(&self, cfg: &ModelConfig, capacity: usize) -> Result<CpuKv, ModelError> {
        let kv_dim = cfg.kv_dim();
        let len = cfg
            .n_layers
            .checked_mul(capacity)
            .and_then(|x| x.checked_mul(kv_dim))
            .ok_or_else(|| ModelError::OutOfMemory(format!("KV cache of {capacity} tokens")))?;
        let alloc = |what: &str| -> Result<Vec<f16>, ModelError> {
            let mut v = Vec::new();
            v.try_reserve_exact(len).map_err(|_| {
                ModelError::OutOfMemory(format!(
                    "{what} cache of {capacity} tokens ({} MiB)",
                    len * 2 >> 20
                ))
            })?;
            v.resize(len, f16::ZERO);
            Ok(v)
        };
        Ok(CpuKv {
            k: alloc("key")?,
            v: alloc("value")?,
            capacity,
            kv_dim,
        })
    }

    fn embed(&self, table: &CpuMat, tokens: &[u32], out: &mut Vec<f32>) {
        let cols = table.raw.cols;
        for (t, &id) in tokens.iter().enumerate() {
            let row = (id as usize).min(table.raw.rows - 1);
            dequant_row(&table.raw, row, &mut out[t * cols..(t + 1) * cols]);
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
        for t in 0..n {
            let xr = &x[t * dim..(t + 1) * dim];
            let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let scale = 1.0 / ((ss / dim as f64) as f32 + eps).sqrt();
            let o = &mut out[t * dim..(t + 1) * dim];
            for i in 0..dim {
                o[i] = xr[i] * scale * w[i];
            }
        }
    }

    fn matmul(&self, w: &CpuMat, x: &Vec<f32>, n: usize, out: &mut Vec<f32>) {
        let raw = &w.raw;
        let (rows, cols) = (raw.rows, raw.cols);
        let optr = SyncPtr(out.as_mut_ptr());
        let f32_rows = raw.ty == GgmlType::F32;
        self.pool.run(|i, nt| {
            let (r0, r1) = split_range(rows, i, nt, 4);
            SCRATCH.with(|s| {
                let mut buf = s.borrow_mut();
                if buf.len() < cols {
                    buf.resize(cols, 0.0);
                }
                for r in r0..r1 {
                    let row: &[f32] = if f32_rows {
                        // F32 rows can be read in place only if aligned; decode to be safe.
                        dequant_row(raw, r, &mut buf);
                        &buf[..cols]
                    } else {
                        dequant_row(raw, r, &mut buf);
                        &buf[..cols]
                    };
                    for t in 0..n {
                        let v = dot_f32(row, &x[t * cols..(t + 1) * cols]);
                        // SAFETY: row r of every token belongs to this thread only.
                        unsafe { optr.write(t * rows + r, v) };
                    }
                }
            });
        });
    }

    fn add_bias(&self, x: &mut Vec<f32>, b: &Vec<f32>, n: usize, width: usize) {
        for t in 0..n {
            for (a, c) in x[t * width..(t + 1) * width].iter_mut().zip(b) {
                *a += c;
            }
        }
    }

    fn rope(&self, cfg: &ModelConfig, x: &mut Vec<f32>, heads: usize, pos0: usize, n: usize) {
        let hd = cfg.head_dim;
        let rd = cfg.rope_dim;
        let half = rd / 2;
        for t in 0..n {
            let pos = (pos0 + t) as f32;
            for i in 0..half {
                let theta = pos * cfg.rope_base.powf(-2.0 * i as f32 / rd as f32);
                let (sin, cos) = theta.sin_cos();
                for h in 0..heads {
                    let base = (t * heads + h) * hd;
                    let (a, b) = match cfg.rope_style {
                        RopeStyle::Interleaved => (base + 2 * i, base + 2 * i + 1),
                        RopeStyle::Halves => (base + i, base + i + half),
                    };
                    let (x0, x1) = (x[a], x[b]);
                    x[a] = x0 * cos - x1 * sin;
                    x[b] = x0 * sin + x1 * cos;
                }
            }
        }
    }

    fn attention(
        &self,
        cfg: &ModelConfig,
        kv: &mut CpuKv,
        layer: usize,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        pos0: usize,
        n: usize,
        out: &mut Vec<f32>,
    ) {
        let kvd = kv.kv_dim;
        let base = layer * kv.capacity * kvd;
        for t in 0..n {
            let dst = base + (pos0 + t) * kvd;
            for i in 0..kvd {
                kv.k[dst + i] = f16::from_f32(k[t * kvd + i]);
                kv.v[dst + i] = f16::from_f32(v[t * kvd + i]);
            }
        }
        let (nh, hd) = (cfg.n_heads, cfg.head_dim);
        let group = nh / cfg.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let (kc, vc) = (&kv.k[base..], &kv.v[base..]);
        let optr = SyncPtr(out.as_mut_ptr());
        let jobs = n * nh;
        self.pool.run(|i, nt| {
            let (j0, j1) = split_range(jobs, i, nt, 1);
            SCRATCH.with(|s| {
                let mut sc = s.borrow_mut();
                let need = pos0 + n + hd;
                if sc.len() < need {
                    sc.resize(need, 0.0);
                }
                let (scores, acc) = sc.split_at_mut(pos0 + n);
                for job in j0..j1 {
                    let (t, h) = (job / nh, job % nh);
                    let kvh = h / group;
                    let qh = &q[(t * nh + h) * hd..(t * nh + h + 1) * hd];
                    let len = pos0 + t + 1;
                    let mut max = f32::NEG_INFINITY;
                    for (p, s) in scores[..len].iter_mut().enumerate() {
                        let kr = &kc[p * kvd + kvh * hd..p * kvd + (kvh + 1) * hd];
                        let mut d = 0f32;
                        for (a, b) in qh.iter().zip(kr) {
                            d += a * b.to_f32();
                        }
                        *s = d * scale;
                        max = max.max(*s);
                    }
                    let mut sum = 0f32;
                    for s in scores[..len].iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let inv = 1.0 / sum;
                    let acc = &mut acc[..hd];
                    acc.fill(0.0);
                    for (p, &s) in scores[..len].iter().enumerate() {
                        let w = s * inv;
                        let vr = &vc[p * kvd + kvh * hd..p * kvd + (kvh + 1) * hd];
                        for (a, b) in acc.iter_mut().zip(vr) {
                            *a += w * b.to_f32();
                        }
                    }
                    for (d, &a) in acc.iter().enumerate() {
                        // SAFETY: each (token, head) slice belongs to one job.
                        unsafe { optr.write((t * nh + h) * hd + d, a) };
                    }
                }
            });
        });
    }

    fn swiglu(&self, gate: &mut Vec<f32>, up: &Vec<f32>, len: usize) {
        for (g, u) in gate[..len].iter_mut().zip(&up[..len]) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) {
        for (a, b) in x[..len].iter_mut().zip(&y[..len]) {
            *a += b;
        }
    }

    fn copy_row(&self, x: &Vec<f32>, row: usize, width: usize, out: &mut Vec<f32>) {
        out[..width].copy_from_slice(&x[row * width..(row + 1) * width]);
    }

    fn read(&self, x: &Vec<f32>, out: &mut [f32]) {
        let n = out.len();
        out.copy_from_slice(&x[..n]);
    }
}
