//! The CUDA backend (feature `cuda`): f16 weights and KV cache on the GPU, f32 activations.
//!
//! Nothing CUDA is linked: the driver, NVRTC and cuBLAS are loaded at run time, so a binary
//! built with the feature starts on a machine without a GPU and [`CudaBackend::new`] says why
//! it cannot open one. The kernels (`kernels/*.cu`, by operation) are compiled by NVRTC for the device's
//! architecture and the cubin is cached on disk, keyed by a hash of the source, the options
//! and the NVRTC version.
//!
//! A pass of up to [`MV_ROWS`] rows uses the matrix-vector kernels (k_mv1d for one row, k_mvr
//! for two, k_mvt on the tensor cores for 3 to 8; k_mv1q and k_mvqr for weights read in
//! place, k_mv for the other cases), which
//! read each weight once for all rows and fuse the RMSNorm before them and the residual add or
//! SwiGLU after them; larger passes (prefill, big batches) convert the activations to f16 and
//! use cuBLAS. A decoder layer is six kernels at decode (ten with weights read in place: each
//! product's x is rounded to bytes first). Decode passes are recorded as CUDA graphs (a shape
//! on its second run) and replayed: the per-pass metadata (token ids, positions, block tables)
//! sits in one device buffer that the kernels read, uploaded before each pass.

mod launch;

use launch::{Dev, Epilogue, Kernel, KernelArgs, Kernels, A, MAX_ARGS};
mod nvrtc;

pub use nvrtc::SOURCE as KERNEL_SOURCE;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::cublas::{result as blas_result, sys as blas_sys, CudaBlas};
use cudarc::driver::sys::{CUdevice_attribute, CUstreamCaptureMode};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg,
};

use kiln_model::backend::{Backend, FusedRef, HostWords, PagedSeq, PassKey, RawTensor};
use kiln_model::config::RopeStyle;
use kiln_model::sample::{Adjust, RowSampling, Sampled, MAX_TOP_LOGPROBS};
use kiln_model::{ModelConfig, ModelError};

/// Rows a pass may have for the matrix-vector kernel (more go to cuBLAS).
pub const MV_ROWS: usize = 8;
const MV_WARPS: usize = 8;
/// Outputs per group of warps in the one-row kernel (`MV1_OUT` in kernels/matvec_rows.cu).
const MV1_OUT: usize = 2;
/// Outputs per warp of the `n`-row kernel k_mvr (`MVR_OUT` in kernels/matvec_rows.cu).
fn mvr_out(n: usize) -> usize {
    if n <= 4 {
        4
    } else {
        2
    }
}
/// Words one row of x takes rounded to bytes by k_quant_x (`QX_WORDS` in kernels/quant.cu):
/// the bytes, then a sum and a scale per group of 16.
fn qx_words(cols: usize) -> usize {
    cols / 4 + 2 * (cols / 16)
}
const ATT_T: u32 = 128;
/// Blocks whose sums k_mvt's scratch holds (blocks that share a tile, 256 floats each).
const MVT_TILES: usize = 4096;

/// Most splits of a decode attention's positions: the merge (`combine_splits` in
/// attention.cu) holds each split's weight and sum in 64 shared slots.
const MAX_SPLITS: usize = 64;

/// Groups of 16 outputs whose x for the next product k_mv1q can round itself (`qx_cnt`).
const QX_GROUPS: usize = 4096;

/// The next product's x, rounded to bytes by the product before (k_mv1q's `txq`): which half
/// of the scratch holds it, for which vector and RMSNorm weights, over how many columns.
#[derive(Clone, Copy)]
struct QxReady {
    half: usize,
    x: u64,
    norm: u64,
    cols: usize,
    /// The launch count just after the product that made it.
    after: u64,
}

const MAX_HD: usize = 256;
const BLAS_WORKSPACE: usize = 32 << 20;
/// Most bytes of x the staged matrix-vector kernels keep in shared memory.
const MV_STAGE_MAX: usize = 96 << 10;
/// Query rows and key positions per tile of the prefill attention kernel (TQ, TK).
const TILE_Q: usize = 32;
/// Query rows per tile of the tensor-core prefill attention kernel (MMA_Q).
const MMA_Q: usize = 64;
/// Passes whose sequences each run at most this many rows get attention split over the
/// context as decode passes do (see `begin_pass`).
const SHORT_PASS_ROWS: usize = 16;
const TILE_K: usize = 64;
/// Largest head size of the prefill attention kernel.
const TILE_MAX_HD: usize = 128;

/// Dynamic shared memory of `k_attn_tile` for head size `hd`.
fn tile_smem(hd: usize) -> usize {
    4 * (TILE_Q * (hd + 4) + TILE_K * (hd + 4) + TILE_K * hd + TILE_Q * (TILE_K + 1))
}

/// An activation buffer on the device.
pub struct CudaAct {
    buf: CudaSlice<f32>,
}

/// A weight matrix on the device: f16 rows, with an optional f32 bias per row.
pub struct CudaMat {
    /// f16 rows (one value when the matrix is quantized).
    w: CudaSlice<u16>,
    /// Quantized rows, read in place by the products of 1 to 8 rows (k_mv1q, k_mvqr) and
    /// dequantized to f16 for the others.
    q: Option<QuantRows>,
    rows: usize,
    cols: usize,
    bias: Option<CudaSlice<f32>>,
}

/// Rows in groups of 32 values: 4-bit (Q4_0, Q4_1, Q4_K repacked: 16 bytes, a scale and an
/// offset per group) or 8-bit (Q8_0: 32 bytes and a scale per group).
struct QuantRows {
    bits: i32,
    q: CudaSlice<u8>,
    s: CudaSlice<f32>,
    m: Option<CudaSlice<f32>>,
}

/// The KV pool: f16, laid out `[block][layer][k|v][offset][kv_dim]`.
pub struct CudaKvPool {
    buf: CudaSlice<u16>,
    id: u64,
    n_blocks: usize,
    block_bytes: usize,
}

static NEXT_POOL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

struct Graph(CudaGraph);
// SAFETY: a graph is only touched under the backend's mutex, from one thread at a time.
unsafe impl Send for Graph {}

/// Mutable state: the pass metadata, scratch buffers, recorded graphs, the first error.
#[derive(Default)]
struct St {
    meta: Option<CudaSlice<u32>>,
    meta_cap: usize,
    max_t: usize,
    host: Vec<u32>,
    xh: Option<CudaSlice<u16>>,
    big: Option<CudaSlice<f32>>,
    part: Option<CudaSlice<f32>>,
    part_cap: usize,
    /// Per (row, head): how many of a decode attention's splits have finished (k_attn's last
    /// one merges them and resets it).
    attn_cnt: Option<CudaSlice<u32>>,
    cnt_cap: usize,
    inv_freq: Option<CudaSlice<f32>>,
    rope_key: (usize, u32),
    splits: usize,
    /// This pass adds one position per row: the attention kernel writes the new keys and
    /// values into the cache itself (no k_kv_write).
    decode_pass: bool,
    /// This pass's decode attention runs k_attn_gqa (one block per KV head).
    gqa_pass: bool,
    tiles: Option<CudaSlice<u32>>,
    deq: Option<CudaSlice<u16>>,
    am_val: Option<CudaSlice<f32>>,
    am_idx: Option<CudaSlice<u32>>,
    am_out: Option<CudaSlice<u32>>,
    /// Sampling: row parameters and adjustments in, tokens and log-probabilities out.
    samp_in: Option<CudaSlice<u32>>,
    samp_out: Option<CudaSlice<u32>>,
    /// Per row and slice: what k_sample_part found, and the tokens it kept.
    samp_info: Option<CudaSlice<u32>>,
    samp_cand: Option<CudaSlice<u32>>,
    samp_host: Vec<u32>,
    /// Page-locked staging for uploads with token masks (a megabyte or more at many
    /// constrained rows): a pageable copy that large blocks the host until the pass before
    /// it ends, where this one is queued behind it and returns at once. Rewritten only after
    /// `sample_wait` has synchronised the stream.
    samp_pinned: Option<cudarc::driver::PinnedHostSlice<u32>>,
    /// The sampling `sample_start` launched, for `sample_wait` to read.
    samp_pending: Option<SampPending>,
    n_tiles: usize,
    graphs: HashMap<(PassKey, u64, usize), Graph>,
    /// How often each shape without a graph has run.
    seen: HashMap<(PassKey, u64, usize), u32>,
    recording: Option<(PassKey, u64, usize)>,
    err: Option<String>,
    max_act: usize,
}

/// Most shared memory `k_sample_part` takes for its slice of a row (its static arrays take
/// about 2.4 KiB more, within the 48 KiB a block gets without asking).
const SAMPLE_STAGE_MAX: usize = 44 * 1024;

/// A sampling launched and not yet read: where its tokens are and what each row asked for.
struct SampPending {
    n: usize,
    width: usize,
    /// The device output buffer; null when the launch failed (the rows then read token 0,
    /// and the error is reported by `finish`).
    out: Dev<u32>,
    /// Each row's count of top log-probabilities, if asked for.
    logprobs: Vec<Option<u8>>,
}

impl SampPending {
    fn failed(n: usize) -> Self {
        SampPending {
            n,
            width: 0,
            out: Dev::NULL,
            logprobs: Vec::new(),
        }
    }
}

/// Runs the decoder on one NVIDIA GPU.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    _workspace: CudaSlice<u8>,
    k: Kernels,
    name: String,
    arch: String,
    sms: usize,
    fused: bool,
    graphs: bool,
    weight_bytes: std::sync::atomic::AtomicUsize,
    /// Values of the largest quantized matrix (the size of the dequantization scratch).
    max_q: std::sync::atomic::AtomicUsize,
    /// Quantized matrices kept as such ([`CudaOptions::quantized`]).
    quant: bool,
    /// The plain matrix-vector kernel only (for comparisons).
    mv_plain: bool,
    /// One-row products by k_mv1d (x read in the loop) instead of k_mv1 (x staged).
    mv1_direct: bool,
    /// Matrix-vector products start all their weights on their way to L2 before the wait.
    mv1_prefetch: bool,
    /// How k_mvt's blocks sharing a tile add their sums (never clusters before sm_90).
    mvt_split: MvtSplit,
    /// k_mv1d4 (four pieces of each row read before the wait) instead of k_mv1d (two).
    mv1_pre4: bool,
    /// Programmatic dependent launch (sm_90 and later, unless turned off).
    pdl: bool,
    /// 3..8 rows through k_mvt on the tensor cores (sm_80 and later, unless turned off: k_mvr).
    mvt: bool,
    /// Prefill attention through k_attn_mma where the head size has one.
    flash: bool,
    /// Decode attention through k_attn_gqa where the heads allow it ([`Gqa`]).
    gqa: Gqa,
    /// The options it was opened with (a sibling gets the same).
    opts: CudaOptions,
    /// k_mvt's sums of blocks that share a tile, and its per-tile counters (zero between
    /// launches: the last block of a tile resets its own).
    mvt_ws: CudaSlice<f32>,
    mvt_cnt: CudaSlice<u32>,
    /// k_mv1q's per-group counters for rounding its output as the next x (zero between
    /// launches, as `mvt_cnt`).
    qx_cnt: CudaSlice<u32>,
    /// Set by a one-row product that left its output rounded for the next; taken by the next
    /// product, and good only if no other kernel was launched in between (which may change
    /// the vector): see `launches`.
    qx: Mutex<Option<QxReady>>,
    /// Kernels launched so far (for `qx`: counting is cheaper than clearing on every launch).
    launches: std::sync::atomic::AtomicU64,
    st: Mutex<St>,
    /// Each kernel's parameter sizes in bytes by argument count, as the driver reports them
    /// (asked on the first launch), against which every launch's arguments are checked.
    params: Mutex<HashMap<(usize, usize), Vec<usize>>>,
    /// The address ranges of the page-locked words [`Backend::host_words`] gave out and
    /// that are still alive: masks inside one are uploaded as they are.
    pinned_words: PinnedRanges,
    /// A stream of its own for uploading such masks beside the pass (made on first use).
    side: Mutex<Option<SideCopy>>,
}

/// A second stream, made with the driver's calls alone (so that cudarc, which counts its own
/// streams, keeps treating the backend as one stream), and the event that ends an upload on
/// it: the sampling, on the main stream, waits for that event, not for the pass.
struct SideCopy {
    stream: cudarc::driver::sys::CUstream,
    done: cudarc::driver::sys::CUevent,
    ctx: Arc<CudaContext>,
}

// SAFETY: the handles are used under the backend's lock, from one thread at a time.
unsafe impl Send for SideCopy {}

impl SideCopy {
    fn new(ctx: &Arc<CudaContext>) -> Option<Self> {
        use cudarc::driver::result::{event, stream};
        ctx.bind_to_thread().ok()?;
        let s = stream::create(stream::StreamKind::NonBlocking).ok()?;
        match event::create(cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING) {
            Ok(done) => Some(SideCopy {
                stream: s,
                done,
                ctx: ctx.clone(),
            }),
            Err(_) => {
                // SAFETY: made just above, used by nothing.
                let _ = unsafe { stream::destroy(s) };
                None
            }
        }
    }
}

impl Drop for SideCopy {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: made by `SideCopy::new`, destroyed once, here (the backend has
            // synchronised its work before it is dropped, or the driver waits for it).
            unsafe {
                let _ = cudarc::driver::result::event::destroy(self.done);
                let _ = cudarc::driver::result::stream::destroy(self.stream);
            }
        }
    }
}

/// When decode attention takes k_attn_gqa (one block per KV head and row) over k_attn (one
/// per query head and row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gqa {
    /// Never (k_attn only).
    Off,
    /// When the KV heads of the rows make at least one block per SM: with fewer, k_attn's
    /// blocks per query head finish sooner (H200, 132 SMs, Qwen2.5-0.5B shape, 2 KV heads:
    /// k_attn_gqa made 1 to 64 rows 5 to 9% slower, 128 rows 9% and 256 rows 13% faster;
    /// docs/PERF.md, "Many streams on the GPU", which call measured which row count).
    #[default]
    Filled,
    /// At any number of rows.
    All,
}

/// Which products of 2 to [`MV_ROWS`] rows of weights read in place k_mvqr takes (the others
/// dequantize the matrix to f16 first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mvq {
    /// None.
    Off,
    /// Up to 5 rows, and 6 to 8 rows of matrices of at least 2,048 columns. On an H100
    /// (docs/PERF.md, thirty-first session), k_mvqr won at 2 to 5 rows on the SmolLM2-135M
    /// shape (576 and 1,536 columns; Q4_1: 2,260 to 4,666 tok/s against 1,958 to 4,270
    /// dequantized) and at 2, 5 and 8 rows on the Llama-3.2-1B shape (2,048 and 8,192;
    /// Q4_0, Q8_0, Q4_K at 8 rows: 3,431 to 4,689 against 2,881 to 3,005), but lost on the
    /// SmolLM2 shape at 7 and 8 rows (8: 5,567 against 6,881) and was even at 6 (5,020
    /// against 4,959). There a lane's half groups of 16 values are 36 a row of 576 columns,
    /// two turns of a warp's 32 lanes with 4 busy in the second.
    #[default]
    Sized,
    /// Every product of 2 to 8 rows whose columns are whole groups of 32.
    All,
}

/// How the blocks of k_mvt that share a tile of 16 outputs (each taking part of its columns)
/// add their sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MvtSplit {
    /// Each leaves its sums in a scratch buffer in global memory, and the last to finish
    /// (found by a counter) adds them.
    #[default]
    Memory,
    /// The tile's blocks are one thread block cluster (sm_90 and later, at most 8 blocks):
    /// block 0 adds the others' sums from their shared memory.
    Cluster,
    /// No tile is shared by blocks: each block's 8 warps take all of a tile's columns.
    None,
}

/// How the CUDA backend runs: what users choose (`quantized`) and the switches developers
/// compare paths with (each on by default where the GPU has it). The CLI fills it from
/// `--gpu-weights` and `--dev NAME=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaOptions {
    /// Q4_0, Q4_1, Q4_K and Q8_0 matrices kept in the file's block format and read in place
    /// (less memory), instead of converted to f16 on upload.
    pub quantized: bool,
    /// Whole decoder layers through the fused path (stacked q|k|v and gate|up).
    pub fused: bool,
    /// Decode passes recorded as CUDA graphs and replayed.
    pub graphs: bool,
    /// Programmatic dependent launch (sm_90 and later).
    pub pdl: bool,
    /// The tensor-core matrix-vector kernel k_mvt for 3 to 8 rows (sm_80 and later).
    pub mvt: bool,
    /// Prefill attention on the tensor cores (k_attn_mma, sm_80 and later, head sizes 64, 96
    /// and 128) instead of the CUDA cores (k_attn_tile).
    pub flash: bool,
    /// The plain matrix-vector kernels instead of the staged ones.
    pub mv_plain: bool,
    /// One-row products read x in their loop over the weights (k_mv1d) instead of staging
    /// it in shared memory first (k_mv1).
    pub mv1_direct: bool,
    /// Matrix-vector products (k_mv1, k_mv1d, k_mv1q and k_mvt) start all their weights on
    /// their way to L2 before waiting for the kernel before.
    pub mv1_prefetch: bool,
    /// One-row products (x read in the loop) by k_mv1d4, which reads four pieces of each of
    /// its rows before the wait, instead of k_mv1d (two).
    pub mv1_pre4: bool,
    /// One-row products of weights read in place round their output to bytes for the next
    /// product (instead of a k_quant_x launch before it).
    pub qx: bool,
    /// Warps sharing each output of those products (1, 2, 4 or 8; 0: chosen by shape).
    pub qks: usize,
    /// Those products with 2 or 4 warps an output in blocks of 16 or 32 warps, which hold
    /// whole groups of 16 outputs (else blocks of 8, sharing each group), and those of many
    /// outputs without SwiGLU (the head) four outputs a warp; off: k_mv1q for all.
    pub q_wide: bool,
    /// Which products of 2 to 8 rows of weights read in place k_mvqr takes (each weight read
    /// once, as it is stored) instead of dequantizing the matrix to f16 first ([`Mvq`]).
    pub mvq: Mvq,
    /// When decode attention groups query heads by KV head.
    pub gqa: Gqa,
    /// How k_mvt's blocks sharing a tile add their sums.
    pub mvt_split: MvtSplit,
    /// The fewest warps of k_mvt that share a tile (1, 2, 4 or 8), splitting its columns
    /// (more are taken where the product has too few tiles to fill the GPU). 2 by default:
    /// against 1, 5 and 8 rows 2.5 to 4.4% faster on the Qwen2.5-0.5B and Llama-3.2-1B shapes
    /// (an H100, 2026-12-07, docs/PERF.md); 4 no better than 2.
    pub mvt_ks: usize,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            quantized: false,
            fused: true,
            graphs: true,
            pdl: true,
            mvt: true,
            flash: true,
            mv_plain: false,
            mv1_direct: true,
            mv1_prefetch: false,
            mv1_pre4: false,
            qx: true,
            qks: 0,
            q_wide: true,
            mvq: Mvq::Sized,
            gqa: Gqa::Filled,
            mvt_split: MvtSplit::Memory,
            mvt_ks: 2,
        }
    }
}

/// Words of a sampling upload from which it goes through page-locked memory (64 KiB: the
/// token masks of a few constrained rows).
const PINNED_UPLOAD_MIN: usize = 16 * 1024;

/// Address ranges (start, end) of live [`PinnedWords`], shared with each of them, which
/// takes its own out when dropped.
#[derive(Clone, Default)]
struct PinnedRanges(Arc<Mutex<Vec<(usize, usize)>>>);

impl PinnedRanges {
    fn lock(&self) -> MutexGuard<'_, Vec<(usize, usize)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `words` lie inside one range.
    fn holds(&self, words: &[u32]) -> bool {
        let start = words.as_ptr() as usize;
        let end = start + std::mem::size_of_val(words);
        self.lock().iter().any(|&(a, b)| a <= start && end <= b)
    }
}

/// Page-locked host words ([`Backend::host_words`]): token masks the host's threads write
/// and the device's copy engine reads as they are.
struct PinnedWords {
    ptr: *mut u32,
    len: usize,
    /// Keeps the context that owns the memory alive.
    ctx: Arc<CudaContext>,
    /// Where its range is known to the backend.
    ranges: PinnedRanges,
}

// SAFETY: the words are owned by this value alone; the pointer is not shared.
unsafe impl Send for PinnedWords {}

impl PinnedWords {
    fn new(ctx: &Arc<CudaContext>, ranges: &PinnedRanges, len: usize) -> Option<Self> {
        ctx.bind_to_thread().ok()?;
        let bytes = len.checked_mul(4)?.max(4);
        // SAFETY: a fresh allocation of `bytes` bytes (cached, not write-combined: the host
        // writes and reads it), zeroed below before any read.
        let ptr = unsafe { cudarc::driver::result::malloc_host(bytes, 0) }.ok()? as *mut u32;
        // SAFETY: `ptr` holds `len` u32s.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        let at = ptr as usize;
        ranges.lock().push((at, at + len * 4));
        Some(PinnedWords {
            ptr,
            len,
            ctx: ctx.clone(),
            ranges: ranges.clone(),
        })
    }
}

impl HostWords for PinnedWords {
    fn words(&self) -> &[u32] {
        // SAFETY: `ptr` holds `len` initialised u32s, owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn words_mut(&mut self) -> &mut [u32] {
        // SAFETY: as in `words`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedWords {
    fn drop(&mut self) {
        let at = self.ptr as usize;
        self.ranges.lock().retain(|&(a, _)| a != at);
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by `malloc_host` and freed once, here.
            let _ = unsafe { cudarc::driver::result::free_host(self.ptr.cast()) };
        }
    }
}

fn dev(what: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Device(format!("{what}: {e}"))
}

impl CudaBackend {
    /// Opens GPU `ordinal`: loads the driver, NVRTC and cuBLAS, compiles the kernels (or
    /// reads them from the cache).
    pub fn new(ordinal: usize) -> Result<Self, ModelError> {
        Self::with_options(ordinal, &CudaOptions::default())
    }

    /// [`CudaBackend::new`] with `opts`.
    pub fn with_options(ordinal: usize, opts: &CudaOptions) -> Result<Self, ModelError> {
        match std::panic::catch_unwind(|| Self::open(ordinal, opts.clone())) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(ModelError::Device(format!(
                    "the CUDA libraries could not be used: {msg}; a CUDA 13 driver, NVRTC and cuBLAS are needed"
                )))
            }
        }
    }

    /// The GPU's ordinal (`cuda:N`).
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    fn open(ordinal: usize, opts: CudaOptions) -> Result<Self, ModelError> {
        // SAFETY: only tries to dlopen the libraries by name.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(ModelError::Device(
                "no NVIDIA driver found (libcuda.so could not be loaded): --device cuda needs an NVIDIA GPU with a CUDA 13 driver; use --device cpu here".into(),
            ));
        }
        if !kiln_nvrtc::available() {
            return Err(ModelError::Device(
                "NVRTC (libnvrtc.so.13) could not be loaded: install the CUDA 13 runtime libraries and add their lib folder to LD_LIBRARY_PATH".into(),
            ));
        }
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(ModelError::Device(
                "cuBLAS (libcublas.so.13) could not be loaded: install the CUDA 13 runtime libraries and add their lib folder to LD_LIBRARY_PATH".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(|e| dev("device count", e))?;
        if ordinal >= usize::try_from(count).unwrap_or(0) {
            return Err(ModelError::Device(format!(
                "no CUDA device {ordinal}: the driver reports {count} device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| dev("context creation", e))?;
        // One stream, ordered: no per-buffer events (they would also break graph capture).
        // SAFETY: every buffer is used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| dev("stream creation", e))?;
        let name = ctx.name().map_err(|e| dev("device name", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| dev("compute capability", e))?;
        let arch = format!("sm_{major}{minor}");
        let sms = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| dev("multiprocessor count", e))? as usize;
        let module = nvrtc::load(&ctx, &arch)?;
        let k = Kernels::load(|n| {
            module
                .load_function(n)
                .map_err(|e| dev(&format!("kernel {n}"), e))
        })?;
        k.attn_tile
            .f
            .set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                tile_smem(TILE_MAX_HD) as i32,
            )
            .map_err(|e| dev("shared memory attribute", e))?;
        k.mv1
            .f
            .set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                MV_STAGE_MAX as i32,
            )
            .map_err(|e| dev("shared memory attribute", e))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| dev("cuBLAS", e))?;
        let workspace = stream
            .alloc_zeros::<u8>(BLAS_WORKSPACE)
            .map_err(|e| dev("cuBLAS workspace", e))?;
        // A fixed workspace: cuBLAS allocates nothing while a graph is being recorded.
        // SAFETY: the workspace outlives the handle (both live in the backend).
        let r = unsafe {
            blas_sys::cublasSetWorkspace_v2(
                *blas.handle(),
                workspace.device_ptr(&stream).0 as *mut std::ffi::c_void,
                BLAS_WORKSPACE,
            )
        };
        r.result().map_err(|e| dev("cuBLAS workspace", e))?;
        let mvt_ws = stream
            .alloc_zeros::<f32>(MVT_TILES * 256)
            .map_err(|e| dev("matrix-vector scratch", e))?;
        let mvt_cnt = stream
            .alloc_zeros::<u32>(MVT_TILES)
            .map_err(|e| dev("matrix-vector scratch", e))?;
        let qx_cnt = stream
            .alloc_zeros::<u32>(QX_GROUPS)
            .map_err(|e| dev("matrix-vector scratch", e))?;
        Ok(CudaBackend {
            ctx,
            stream,
            blas,
            _workspace: workspace,
            k,
            name,
            arch,
            sms,
            fused: opts.fused,
            graphs: opts.graphs,
            weight_bytes: Default::default(),
            max_q: Default::default(),
            quant: opts.quantized,
            mv_plain: opts.mv_plain,
            mv1_direct: opts.mv1_direct,
            mv1_prefetch: opts.mv1_prefetch,
            mv1_pre4: opts.mv1_pre4,
            pdl: major >= 9 && opts.pdl,
            // Clusters need sm_90; elsewhere k_mvt's blocks add their sums through memory.
            mvt_split: match opts.mvt_split {
                MvtSplit::Cluster if major < 9 => MvtSplit::Memory,
                m => m,
            },
            mvt: major >= 8 && opts.mvt,
            flash: major >= 8 && opts.flash,
            gqa: opts.gqa,
            opts,
            mvt_ws,
            mvt_cnt,
            qx_cnt,
            qx: Mutex::new(None),
            launches: Default::default(),
            st: Mutex::new(St::default()),
            params: Mutex::new(HashMap::new()),
            pinned_words: PinnedRanges::default(),
            side: Mutex::new(None),
        })
    }

    /// The GPU's name.
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// Bytes of weights (matrices and vectors) uploaded.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of device memory in use on the GPU (all processes) and in total.
    pub fn memory_used(&self) -> Option<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .ok()
            .map(|(free, total)| (total - free, total))
    }

    fn st(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note<E: std::fmt::Display>(&self, what: &str, r: Result<(), E>) {
        if let Err(e) = r {
            let mut st = self.st();
            if st.err.is_none() {
                st.err = Some(format!("{what}: {e}"));
            }
        }
    }

    fn p<T>(&self, s: &CudaSlice<T>) -> Dev<T> {
        Dev::of(s, &self.stream)
    }

    /// The buffer in `slot`, or null.
    fn po<T>(&self, slot: &Option<CudaSlice<T>>) -> Dev<T> {
        Dev::of_opt(slot.as_ref(), &self.stream)
    }

    /// Launches kernel `k` with `smem` bytes of dynamic shared memory. A failure is kept for
    /// `finish` to report.
    fn launch<T: KernelArgs>(
        &self,
        k: &Kernel<T>,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: T,
    ) {
        self.launch_cluster(k, grid, block, smem, 1, args);
    }

    /// Launches kernel `k` as [`Self::launch`] does, its blocks in clusters of `cluster` along
    /// the grid's y (above 1: sm_90 and later; 1 to 8, a divisor of `grid.1`). With dependent
    /// launch on, programmatic stream serialization is allowed: the kernel may start before
    /// the previous one on the stream ends. Every kernel in `kernels/` calls `pdl_wait()`
    /// before it touches memory an earlier kernel writes (a test checks that each one does),
    /// so only its weight prefetch overlaps.
    fn launch_cluster<T: KernelArgs>(
        &self,
        k: &Kernel<T>,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        cluster: u32,
        args: T,
    ) {
        self.launches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let list = args.args();
        let args = list.as_slice();
        if let Err(e) = self.check_args(k, args) {
            self.note("kernel launch", Err::<(), _>(e));
            return;
        }
        if self.pdl || cluster > 1 {
            self.launch_ex(&k.f, grid, block, smem, args, cluster);
            return;
        }
        let mut b = self.stream.launch_builder(&k.f);
        for a in args {
            match a {
                A::P(p) => b.arg(p),
                A::I(i) => b.arg(i),
                A::L(l) => b.arg(l),
                A::F(x) => b.arg(x),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: the arguments are the kernel's own, in the order and types of its
        // signature (build.rs writes them from it; `check_args` checked their sizes), and
        // every pointer is a live device buffer of the sizes it reads.
        let r = unsafe { b.launch(cfg) };
        self.note("kernel launch", r.map(|_| ()));
    }

    /// Whether each of `args` has the size of the kernel's parameter in its place (an `int`
    /// given where a `long long` is taken would leave four bytes of garbage in the kernel's
    /// value), and none is past the signature's end. The sizes are the driver's, asked once
    /// per kernel and argument count (asking past the last parameter is an API error, which
    /// only a launch with too many arguments makes).
    fn check_args<T>(&self, k: &Kernel<T>, args: &[A]) -> Result<(), String> {
        use cudarc::driver::sys;
        let func = k.f.cu_function();
        let mut cache = self.params.lock().unwrap_or_else(|p| p.into_inner());
        let sizes = cache.entry((func as usize, args.len())).or_insert_with(|| {
            (0..args.len())
                .map(|i| {
                    let (mut offset, mut size) = (0usize, 0usize);
                    // SAFETY: `func` is a loaded kernel; the driver writes two integers.
                    let r = unsafe { sys::cuFuncGetParamInfo(func, i, &mut offset, &mut size) };
                    if r == sys::CUresult::CUDA_SUCCESS {
                        size
                    } else {
                        0
                    }
                })
                .collect()
        });
        if args.iter().map(|a| a.size()).eq(sizes.iter().copied()) {
            return Ok(());
        }
        let given: Vec<usize> = args.iter().map(|a| a.size()).collect();
        Err(format!(
            "{} takes parameters of {sizes:?} bytes (0: none), the launch passed {given:?} (a bug in kiln: build.rs maps a parameter type wrongly, or the kernels changed without a rebuild)",
            k.name
        ))
    }

    /// A launch through `cuLaunchKernelEx`: with programmatic stream serialization when
    /// dependent launch is on, and in clusters of `cluster` blocks along y when it is above 1.
    fn launch_ex(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[A],
        cluster: u32,
    ) {
        use cudarc::driver::sys;
        // On the stack: no allocation per launch (the attention kernels take 20 arguments, the most).
        let mut params = [std::ptr::null_mut::<std::ffi::c_void>(); MAX_ARGS];
        for (slot, a) in params.iter_mut().zip(args) {
            *slot = match a {
                A::P(p) => p as *const u64 as *mut std::ffi::c_void,
                A::I(i) => i as *const i32 as *mut std::ffi::c_void,
                A::L(l) => l as *const i64 as *mut std::ffi::c_void,
                A::F(x) => x as *const f32 as *mut std::ffi::c_void,
            };
        }
        // SAFETY: plain C structs; the value union is read by the driver per `id`.
        let mut attrs: [sys::CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
        let mut n = 0;
        if self.pdl {
            attrs[n].id =
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attrs[n].value.programmaticStreamSerializationAllowed = 1;
            n += 1;
        }
        if cluster > 1 {
            attrs[n].id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
            attrs[n].value.clusterDim.x = 1;
            attrs[n].value.clusterDim.y = cluster;
            attrs[n].value.clusterDim.z = 1;
            n += 1;
        }
        let cfg = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: self.stream.cu_stream(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: n as u32,
        };
        let r = self.ctx.bind_to_thread();
        self.note("binding the context", r);
        // SAFETY: as in `launch_cluster`: the arguments follow the kernel's signature, and each
        // parameter pointer points into `args`, which outlives the call (the driver copies the
        // values at launch).
        let r = unsafe {
            sys::cuLaunchKernelEx(
                &cfg,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result();
        self.note("kernel launch", r);
    }

    fn alloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        what: &str,
        len: usize,
    ) -> Result<CudaSlice<T>, ModelError> {
        self.stream.alloc_zeros::<T>(len.max(1)).map_err(|e| {
            ModelError::OutOfMemory(format!(
                "{what} ({} MiB) on {}: {e}",
                (len * std::mem::size_of::<T>()) >> 20,
                self.name
            ))
        })
    }

    /// The metadata buffer's pointer and its row capacity.
    fn meta(&self) -> (Dev<u32>, i32) {
        let st = self.st();
        (self.po(&st.meta), st.max_t as i32)
    }

    /// The scratch buffers: f16 activations (`xh`), f32 products (`big`), attention partials.
    fn scratch(&self) -> (Dev<u16>, Dev<f32>, Dev<f32>) {
        let st = self.st();
        (self.po(&st.xh), self.po(&st.big), self.po(&st.part))
    }

    /// `out += W x` (the residual add) over `n` rows of `dim` values; `next` as in `linear`.
    fn residual(
        &self,
        w: &CudaMat,
        x: Dev<f32>,
        n: usize,
        out: Dev<f32>,
        dim: usize,
        next: Option<Dev<f32>>,
    ) {
        self.linear(w, x, n, None, out, dim, Epilogue::Accumulate, false, next);
    }

    /// `out (epi)= W x` over `n` rows; `x` rows of `w.cols` values, `out` rows `out_stride`
    /// apart. `norm`: RMSNorm x first. `bias_later`: on the matrix-unit path (more than
    /// MV_ROWS rows), leave the bias for the caller to add (k_kv_write does, for the fused
    /// q|k|v projection). `next`: `out` is the x of the very next product, RMSNorm'd with these
    /// weights (null: none); a one-row product of weights read in place then rounds it for that
    /// product itself, one k_quant_x launch fewer.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        w: &CudaMat,
        x: Dev<f32>,
        n: usize,
        norm: Option<(&CudaAct, f32)>,
        out: Dev<f32>,
        out_stride: usize,
        epi: Epilogue,
        bias_later: bool,
        next: Option<Dev<f32>>,
    ) {
        let outs = if epi == Epilogue::SwiGlu {
            w.rows / 2
        } else {
            w.rows
        };
        let bias = self.po(&w.bias);
        let (nw, eps) = norm.map_or((Dev::NULL, 0.0), |(a, e)| (self.p(&a.buf), e));
        let staged = w.cols.is_multiple_of(8) && n * w.cols * 4 <= MV_STAGE_MAX;
        let (outs_i, cols) = (outs as i32, w.cols as i32);
        // x normalized and rounded to bytes once, into the f16 scratch (free at one row), then
        // read by every block of the product. The scratch is made at a pass's start, as the
        // dequantization scratch the other paths use is: products run inside passes. Its two
        // halves alternate: a product reads x from one and may leave the next x in the other.
        let launched = self.launches.load(std::sync::atomic::Ordering::Relaxed);
        let ready = (self.qx.lock().unwrap_or_else(|p| p.into_inner()).take())
            .filter(|r| r.after == launched);
        let (xq, half_words) = {
            let st = self.st();
            (
                self.po(&st.xh).cast::<u32>(),
                st.xh.as_ref().map_or(0, |b| b.len() / 4),
            )
        };
        // Words a rounded x of `c` columns takes: the bytes, then per group of 16 its sum,
        // scale and (left by a product) sum of squares.
        let fits = |c: usize| c / 4 + 3 * (c / 16) <= half_words;
        if let (Some(q), 1, false) = (&w.q, n, xq.is_null() || !fits(w.cols)) {
            // The product before left this x rounded (its norm's scale still to take)?
            let held = ready.filter(|r| r.x == x.addr() && r.norm == nw.addr() && r.cols == w.cols);
            let (half, xnorm) = match held {
                Some(r) => (r.half, !nw.is_null()),
                None => {
                    self.quant_x(1, x, cols, nw, eps, xq);
                    (0, false)
                }
            };
            let then = next.filter(|_| {
                self.opts.qx && outs.is_multiple_of(16) && outs / 16 <= QX_GROUPS && fits(outs)
            });
            let ks = match self.opts.qks {
                // A product of fewer groups of 16 outputs than SMs (one block each) splits its
                // columns over two warps at least: its blocks then have twice the warps, each
                // half the row (the SmolLM2-135M shape's in blocks of 16: 2 to 5% faster on
                // an H100, docs/PERF.md, twenty-eighth session).
                0 if self.opts.q_wide && outs.div_ceil(16) < self.sms => {
                    self.col_split(outs.div_ceil(2), w.cols / 4).max(2)
                }
                0 => self.col_split(outs.div_ceil(2), w.cols / 4),
                k => k.min(MV_WARPS),
            };
            // Blocks of 8 * ks warps hold whole groups of 16 outputs (round them for the next
            // x themselves); with 8 warps, ks blocks share a group.
            // A product of many outputs without SwiGLU or a next x to round (the head) takes
            // four outputs a warp (k_mv1q4).
            let four = self.opts.q_wide
                && ks == 1
                && epi != Epilogue::SwiGlu
                && then.is_none()
                && outs.div_ceil(16) >= 4 * self.sms;
            let (kernel, warps, per_warp) = match ks {
                _ if four => (&self.k.mv1q4, MV_WARPS, 4),
                2 if self.opts.q_wide => (&self.k.mv1q16, 16, 2),
                4 if self.opts.q_wide => (&self.k.mv1q32, 32, 2),
                _ => (&self.k.mv1q, MV_WARPS, 2),
            };
            self.launch(
                kernel,
                (outs.div_ceil(per_warp * warps / ks) as u32, 1, 1),
                (warps * 32) as u32,
                0,
                launch::Mv1q {
                    q: self.p(&q.q),
                    s: self.p(&q.s),
                    m: self.po(&q.m),
                    bits: q.bits,
                    bias,
                    outs: outs_i,
                    cols,
                    xq: xq.at(half * half_words),
                    xnorm: i32::from(xnorm),
                    eps,
                    out,
                    mode: epi,
                    ks: ks as i32,
                    txq: then.map_or(Dev::NULL, |_| xq.at((1 - half) * half_words)),
                    tnw: then.unwrap_or(Dev::NULL),
                    tcnt: self.p(&self.qx_cnt),
                    pf: i32::from(self.mv1_prefetch),
                },
            );
            if let Some(norm) = then {
                *self.qx.lock().unwrap_or_else(|p| p.into_inner()) = Some(QxReady {
                    half: 1 - half,
                    x: out.addr(),
                    norm: norm.addr(),
                    cols: outs,
                    after: self.launches.load(std::sync::atomic::Ordering::Relaxed),
                });
            }
            return;
        }
        // 2 to 8 rows of weights read in place: x rounded to bytes, a row a block (k_quant_x),
        // then k_mvqr reads each weight once for all rows at its quantized size (else the
        // matrix is dequantized to f16 first, below).
        let rows_fit = n * qx_words(w.cols) <= 2 * half_words;
        if let (Some(q), true) = (
            &w.q,
            (2..=MV_ROWS).contains(&n)
                && match self.opts.mvq {
                    Mvq::Off => false,
                    Mvq::Sized => n <= 5 || w.cols >= 2048,
                    Mvq::All => true,
                }
                && w.cols.is_multiple_of(32)
                && !xq.is_null()
                && rows_fit,
        ) {
            if let Some(kernel) = self.k.mvqr(n) {
                self.quant_x(n, x, cols, nw, eps, xq);
                let ks = self.col_split(outs.div_ceil(2), w.cols / 4);
                self.launch(
                    kernel,
                    (outs.div_ceil(2 * MV_WARPS / ks) as u32, 1, 1),
                    (MV_WARPS * 32) as u32,
                    0,
                    launch::Mvqr {
                        q: self.p(&q.q),
                        s: self.p(&q.s),
                        m: self.po(&q.m),
                        bits: q.bits,
                        bias,
                        outs: outs_i,
                        cols,
                        xq,
                        out,
                        out_stride: out_stride as i32,
                        mode: epi,
                        ks: ks as i32,
                    },
                );
                return;
            }
        }
        let wp = self.f16_ptr(w);
        if n == 1 && staged && !self.mv_plain {
            let ks = self.col_split(outs.div_ceil(MV1_OUT), w.cols);
            let (kernel, smem) = if self.mv1_direct && self.mv1_pre4 {
                (&self.k.mv1d4, 0)
            } else if self.mv1_direct {
                (&self.k.mv1d, 0)
            } else {
                (&self.k.mv1, (w.cols * 4) as u32)
            };
            self.launch(
                kernel,
                (outs.div_ceil(MV1_OUT * MV_WARPS / ks) as u32, 1, 1),
                (MV_WARPS * 32) as u32,
                smem,
                launch::Mv1 {
                    w: wp,
                    bias,
                    outs: outs_i,
                    cols,
                    x,
                    nw,
                    eps,
                    out,
                    mode: epi,
                    ks: ks as i32,
                    pf: i32::from(self.mv1_prefetch),
                    // The model's own f16 rows (no kernel before writes them).
                    early: i32::from(w.q.is_none()),
                },
            );
            return;
        }
        // k_mvt from 3 rows: at 2, k_mvr was 8% faster on the H200 (1,883 against 1,739 tok/s),
        // at 5 and 8 k_mvt 16% and 55% (3 and 4 rows were not measured on their own).
        if (3..=MV_ROWS).contains(&n) && w.cols.is_multiple_of(32) && self.mvt && !self.mv_plain {
            let (ks, splits) = self.mvt_split(outs.div_ceil(16), w.cols / 32);
            let groups = MV_WARPS / ks;
            let cluster = splits > 1 && self.mvt_split == MvtSplit::Cluster;
            self.launch_cluster(
                &self.k.mvt,
                (outs.div_ceil(16 * groups) as u32, splits as u32, 1),
                (MV_WARPS * 32) as u32,
                0,
                if cluster { splits as u32 } else { 1 },
                launch::Mvt {
                    w: wp,
                    bias,
                    outs: outs_i,
                    cols,
                    x,
                    n: n as i32,
                    nw,
                    eps,
                    out,
                    out_stride: out_stride as i32,
                    mode: epi,
                    ks: ks as i32,
                    splits: splits as i32,
                    ws: self.p(&self.mvt_ws),
                    cnt: self.p(&self.mvt_cnt),
                    pf: i32::from(self.mv1_prefetch),
                    // The model's own f16 rows (no kernel before writes them).
                    early: i32::from(w.q.is_none()),
                    cluster: i32::from(cluster),
                },
            );
            return;
        }
        let mvr =
            (self.k.mvr(n)).filter(|_| n <= MV_ROWS && w.cols.is_multiple_of(8) && !self.mv_plain);
        if let Some(kernel) = mvr {
            let per = mvr_out(n);
            let ks = self.col_split(outs.div_ceil(per), w.cols);
            self.launch(
                kernel,
                (outs.div_ceil(per * MV_WARPS / ks) as u32, 1, 1),
                (MV_WARPS * 32) as u32,
                0,
                launch::Mvr {
                    w: wp,
                    bias,
                    outs: outs_i,
                    cols,
                    x,
                    nw,
                    eps,
                    out,
                    out_stride: out_stride as i32,
                    mode: epi,
                    ks: ks as i32,
                },
            );
            return;
        }
        if n <= MV_ROWS {
            self.launch(
                &self.k.mv,
                (outs.div_ceil(MV_WARPS) as u32, 1, 1),
                (MV_WARPS * 32) as u32,
                0,
                launch::Mv {
                    w: wp,
                    bias,
                    outs: outs_i,
                    cols,
                    x,
                    n: n as i32,
                    nw,
                    eps,
                    out,
                    out_stride: out_stride as i32,
                    mode: epi,
                },
            );
            return;
        }
        // Through the matrix units: x to f16 (normalised on the way), then cuBLAS.
        let (xh, big, _) = self.scratch();
        // A block a row, of as many threads as a quarter of the row needs (32 to 256).
        let threads = (w.cols / 4).next_multiple_of(32).clamp(32, 256);
        self.launch(
            &self.k.to_f16,
            (n as u32, 1, 1),
            threads as u32,
            0,
            launch::ToF16 {
                x,
                w: nw,
                eps,
                dim: cols,
                out: xh,
            },
        );
        let (dst, ld, beta) = match epi {
            Epilogue::Store => (out, out_stride, 0.0f32),
            Epilogue::Accumulate => (out, out_stride, 1.0f32),
            Epilogue::SwiGlu => (big, w.rows, 0.0f32),
        };
        self.gemm(w, xh, n, dst, ld, beta);
        if !bias.is_null() && epi != Epilogue::SwiGlu && !bias_later {
            self.launch(
                &self.k.add_bias,
                (outs.div_ceil(256) as u32, n.clamp(1, 65535) as u32, 1),
                256,
                0,
                launch::AddBias {
                    x: out,
                    b: bias,
                    n: n as i32,
                    width: outs_i,
                    stride: out_stride as i32,
                },
            );
        }
        if epi == Epilogue::SwiGlu {
            // SwiGLU into f16, for the next product; the caller's `out` is then unused and
            // the result sits in `xh`.
            let per = if outs.is_multiple_of(4) { 4 } else { 1 };
            self.launch(
                &self.k.swiglu_f16,
                (outs.div_ceil(256 * per) as u32, n.clamp(1, 65535) as u32, 1),
                256,
                0,
                launch::SwigluF16 {
                    gu: big,
                    n: n as i32,
                    half: outs_i,
                    out: xh,
                },
            );
        }
    }

    /// The matrix as f16 rows: its own, or (quantized) dequantized into the scratch buffer.
    fn f16_ptr(&self, w: &CudaMat) -> Dev<u16> {
        let Some(q) = &w.q else {
            return self.p(&w.w);
        };
        let deq = self.po(&self.st().deq);
        let groups = w.rows * w.cols / 32;
        // Four threads a group (k_dequant).
        self.launch(
            &self.k.dequant,
            ((4 * groups).div_ceil(256) as u32, 1, 1),
            256,
            0,
            launch::Dequant {
                q: self.p(&q.q),
                s: self.p(&q.s),
                m: self.po(&q.m),
                bits: q.bits,
                groups: groups as i64,
                out: deq,
            },
        );
        deq
    }

    /// k_mvt's warps per tile (`ks`) and blocks per tile (`splits`) for `tiles` tiles of 16
    /// outputs and `steps` steps of 32 columns: warps first (from [`CudaOptions::mvt_ks`]),
    /// then blocks, until about two blocks per SM, with at least one step for each warp. Blocks share a tile only when
    /// all 8 warps of a block do (one tile a block), and only within the scratch's tiles.
    fn mvt_split(&self, tiles: usize, steps: usize) -> (usize, usize) {
        let (mut ks, mut splits) = (self.opts.mvt_ks.clamp(1, MV_WARPS), 1usize);
        while ks > 1 && ks > steps {
            ks /= 2;
        }
        // A cluster holds at most 8 blocks (the portable size).
        let most = match self.mvt_split {
            MvtSplit::Memory => usize::MAX,
            MvtSplit::Cluster => 8,
            MvtSplit::None => 1,
        };
        let blocks = |ks: usize, splits: usize| tiles.div_ceil(MV_WARPS / ks) * splits;
        while blocks(ks, splits) < 2 * self.sms {
            let (k2, s2) = if ks < MV_WARPS {
                (ks * 2, splits)
            } else {
                (ks, splits * 2)
            };
            if k2 * s2 > steps || (s2 > 1 && tiles * s2 > MVT_TILES) || s2 > most {
                break;
            }
            (ks, splits) = (k2, s2);
        }
        (ks, splits)
    }

    /// `rows` rows of x (`cols` each; RMSNorm'd with `nw` unless it is null) rounded to bytes
    /// by k_quant_x into `xq`, [`qx_words`] words a row.
    fn quant_x(&self, rows: usize, x: Dev<f32>, cols: i32, nw: Dev<f32>, eps: f32, xq: Dev<u32>) {
        self.launch(
            &self.k.quant_x,
            (rows as u32, 1, 1),
            256,
            0,
            launch::QuantX {
                x,
                cols,
                nw,
                eps,
                xq,
            },
        );
    }

    /// Warps sharing one output's columns in the staged kernels (1, 2, 4 or 8): more until
    /// the grid fills the GPU, keeping at least 24 16-byte chunks per warp. `units` is the
    /// number of work items that take a group of warps each.
    fn col_split(&self, units: usize, cols: usize) -> usize {
        let nvec = cols / 8;
        let mut ks = 1usize;
        while ks < MV_WARPS && units * ks / MV_WARPS < 2 * self.sms && nvec / (2 * ks) >= 24 {
            ks *= 2;
        }
        ks
    }

    /// `C[n][w.rows] (+)= x_h[n][w.cols] . W^T` with cuBLAS, f16 inputs, f32 accumulation.
    fn gemm(&self, w: &CudaMat, xh: Dev<u16>, n: usize, c: Dev<f32>, ldc: usize, beta: f32) {
        let alpha = 1.0f32;
        // Column-major view: C (rows x n) = W^T(cols x rows)^T . X (cols x n).
        // SAFETY: the pointers are live device buffers of the sizes given.
        let r = unsafe {
            blas_result::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                w.rows as i32,
                n as i32,
                w.cols as i32,
                &alpha as *const f32 as *const std::ffi::c_void,
                self.f16_ptr(w).addr() as *const std::ffi::c_void,
                blas_sys::cudaDataType_t::CUDA_R_16F,
                w.cols as i32,
                xh.addr() as *const std::ffi::c_void,
                blas_sys::cudaDataType_t::CUDA_R_16F,
                w.cols as i32,
                &beta as *const f32 as *const std::ffi::c_void,
                c.addr() as *mut std::ffi::c_void,
                blas_sys::cudaDataType_t::CUDA_R_32F,
                ldc as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        self.note("cuBLAS gemm", r);
    }

    /// `out[n][w.rows] += W . x_h (+ bias)` with x already f16 in the scratch `xh`.
    fn gemm_xh(&self, w: &CudaMat, xh: Dev<u16>, n: usize, out: Dev<f32>, ld: usize) {
        self.gemm(w, xh, n, out, ld, 1.0);
        if let Some(b) = &w.bias {
            self.launch(
                &self.k.add_bias,
                (w.rows.div_ceil(256) as u32, n.clamp(1, 65535) as u32, 1),
                256,
                0,
                launch::AddBias {
                    x: out,
                    b: self.p(b),
                    n: n as i32,
                    width: w.rows as i32,
                    stride: ld as i32,
                },
            );
        }
    }

    /// Writes k, v into the pool and attends; q, k, v are rows of the given strides.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        cfg: &ModelConfig,
        pool: &CudaKvPool,
        layer: usize,
        n: usize,
        (q, qs): (Dev<f32>, usize),
        (k, ks): (Dev<f32>, usize),
        (v, vs): (Dev<f32>, usize),
        rope: bool,
        qkv_bias: Dev<f32>,
        out: Dev<f32>,
        out_h: Dev<u16>,
        round: bool,
    ) {
        let (meta, max_t) = self.meta();
        let (splits, decode, gqa, inv_freq, part, tiles, n_tiles, cnt) = {
            let st = self.st();
            (
                st.splits.max(1),
                st.decode_pass,
                st.gqa_pass,
                self.po(&st.inv_freq),
                self.po(&st.part),
                self.po(&st.tiles),
                st.n_tiles,
                self.po(&st.attn_cnt),
            )
        };
        // k_attn merges its own splits; k_attn_gqa's go to k_attn_combine.
        let cnt = if gqa { Dev::NULL } else { cnt };
        let interleaved = i32::from(cfg.rope_style == RopeStyle::Interleaved);
        let pool_p = self.p(&pool.buf);
        let (layer, n_layers, bs) = (
            layer as i32,
            cfg.n_layers as i32,
            kiln_model::KV_BLOCK as i32,
        );
        let (hd, rd) = (cfg.head_dim as i32, cfg.rope_dim as i32);
        let (n_heads, n_kv_heads) = (cfg.n_heads as i32, cfg.n_kv_heads as i32);
        let (qs, ks, vs, dim) = (qs as i32, ks as i32, vs as i32, cfg.dim as i32);
        let rope = i32::from(rope);
        if !decode {
            self.launch(
                &self.k.kv_write,
                (n as u32, 1, 1),
                128,
                0,
                launch::KvWrite {
                    k,
                    k_stride: ks,
                    v,
                    v_stride: vs,
                    meta,
                    max_t,
                    pool: pool_p,
                    layer,
                    n_layers,
                    bs,
                    kvd: cfg.kv_dim() as i32,
                    hd,
                    rd,
                    interleaved,
                    inv_freq,
                    rope_k: rope,
                    q,
                    q_stride: qs,
                    q_width: dim,
                    bias: qkv_bias,
                },
            );
        }
        let scale = 1.0 / (cfg.head_dim as f32).sqrt();
        if n_tiles > 0 && tile_ok(cfg.head_dim) {
            let (kernel, smem) = match self.mma_attn(cfg.head_dim) {
                Some(k) => (k, 0),
                None => (&self.k.attn_tile, tile_smem(cfg.head_dim) as u32),
            };
            self.launch(
                kernel,
                (cfg.n_heads as u32, n_tiles as u32, 1),
                128,
                smem,
                launch::AttnTile {
                    q,
                    q_stride: qs,
                    pool: pool_p,
                    meta,
                    max_t,
                    layer,
                    n_layers,
                    bs,
                    n_heads,
                    n_kv_heads,
                    hd,
                    rd,
                    interleaved,
                    inv_freq,
                    rope_q: rope,
                    scale,
                    tiles,
                    out,
                    out_stride: dim,
                    out_h,
                },
            );
            return;
        }
        // `round` (one row, W_o read in place next): k_attn rounds its output to bytes for
        // W_o's product (k_mv1q's x, groups of 16 inside a head) when it merges its own splits,
        // one k_quant_x launch a layer fewer. The rounded x goes to half 0 of the f16 scratch;
        // the product reads it there and may leave its own output for the next in half 1.
        let txq = if round && n == 1 && !gqa && (splits == 1 || !cnt.is_null()) {
            let st = self.st();
            let words = st.xh.as_ref().map_or(0, |b| b.len() / 4);
            let c = cfg.n_heads * cfg.head_dim;
            (cfg.head_dim.is_multiple_of(16)
                && c.is_multiple_of(16)
                && c / 4 + 3 * (c / 16) <= words)
                .then(|| self.po(&st.xh).cast::<u32>())
                .filter(|p| !p.is_null())
        } else {
            None
        };
        let args = launch::Attn {
            q,
            q_stride: qs,
            pool: pool_p,
            meta,
            max_t,
            layer,
            n_layers,
            bs,
            n_heads,
            n_kv_heads,
            hd,
            rd,
            interleaved,
            inv_freq,
            rope_q: rope,
            scale,
            splits: splits as i32,
            out,
            out_stride: dim,
            part,
            out_h,
            // Decode passes: the new keys and values, written by the attention kernel.
            kin: k,
            k_stride: ks,
            vin: v,
            v_stride: vs,
            bias: if decode { qkv_bias } else { Dev::NULL },
            q_width: dim,
            fuse_kv: i32::from(decode),
            cnt,
            txq: txq.unwrap_or(Dev::NULL),
        };
        if gqa {
            self.launch(
                &self.k.attn_gqa,
                (cfg.n_kv_heads as u32, n as u32, splits as u32),
                128,
                0,
                args,
            );
        } else {
            self.launch(
                &self.k.attn,
                (cfg.n_heads as u32, n as u32, splits as u32),
                ATT_T,
                0,
                args,
            );
            if txq.is_some() {
                *self.qx.lock().unwrap_or_else(|p| p.into_inner()) = Some(QxReady {
                    half: 0,
                    x: out.addr(),
                    norm: 0,
                    cols: cfg.n_heads * cfg.head_dim,
                    after: self.launches.load(std::sync::atomic::Ordering::Relaxed),
                });
            }
        }
        if splits > 1 && cnt.is_null() {
            self.launch(
                &self.k.attn_combine,
                (cfg.n_heads as u32, n as u32, 1),
                cfg.head_dim.next_multiple_of(32).min(256) as u32,
                0,
                launch::AttnCombine {
                    part,
                    n_heads,
                    hd,
                    splits: splits as i32,
                    out,
                    out_stride: dim,
                    out_h,
                },
            );
        }
    }

    /// Weights as f16 values (converted from any block format).
    fn f16_bytes(t: &RawTensor) -> Result<Vec<u8>, ModelError> {
        use kiln_formats::gguf::GgmlType;
        if t.ty == GgmlType::F16 {
            return Ok(t.data.as_slice().to_vec());
        }
        let f = t.to_f32()?;
        let mut out = Vec::with_capacity(f.len() * 2);
        for v in f {
            out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        Ok(out)
    }

    fn upload_mat(
        &self,
        name: &str,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        bias: Option<&[f32]>,
    ) -> Result<CudaMat, ModelError> {
        let w = self.alloc::<u16>(name, rows * cols)?;
        let dst = self.p(&w);
        // SAFETY: `w` holds rows * cols f16 values, `bytes` that many bytes times two.
        let r = unsafe {
            cudarc::driver::result::memcpy_htod_async(dst.addr(), bytes, self.stream.cu_stream())
        };
        r.map_err(|e| dev(&format!("uploading {name}"), e))?;
        let bias = match bias {
            Some(b) => Some(
                self.stream
                    .clone_htod(b)
                    .map_err(|e| dev(&format!("uploading the bias of {name}"), e))?,
            ),
            None => None,
        };
        // Pageable copies may return before the data is read: finish before `bytes` goes.
        self.stream
            .synchronize()
            .map_err(|e| dev(&format!("uploading {name}"), e))?;
        self.weight_bytes.fetch_add(
            bytes.len() + bias.as_ref().map_or(0, |b| b.len() * 4),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(CudaMat {
            w,
            q: None,
            rows,
            cols,
            bias,
        })
    }

    /// A quantized matrix (parts stacked by rows), when every part is of one family the
    /// kernels read in place: 4-bit (Q4_0, Q4_1, Q4_K) or 8-bit (Q8_0).
    fn upload_quant(
        &self,
        name: &str,
        parts: &[&RawTensor],
        bias: Option<&[f32]>,
    ) -> Result<Option<CudaMat>, ModelError> {
        let Some(bits) = quant_bits(parts) else {
            return Ok(None);
        };
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let cols = parts[0].cols;
        let groups = rows * cols / 32;
        let mut q = Vec::with_capacity(groups * if bits == 4 { 16 } else { 32 });
        let mut sc = Vec::with_capacity(groups);
        let mut mn = Vec::with_capacity(if bits == 4 { groups } else { 0 });
        for p in parts {
            repack(p, &mut q, &mut sc, &mut mn)?;
        }
        fn up<T>(
            name: &str,
            what: &str,
            r: Result<T, cudarc::driver::DriverError>,
        ) -> Result<T, ModelError> {
            r.map_err(|e| dev(&format!("uploading {name} ({what})"), e))
        }
        let qd = up(name, "quants", self.stream.clone_htod(&q))?;
        let sd = up(name, "scales", self.stream.clone_htod(&sc))?;
        let md = if bits == 4 {
            Some(up(name, "offsets", self.stream.clone_htod(&mn))?)
        } else {
            None
        };
        let bias = match bias {
            Some(b) => Some(up(name, "bias", self.stream.clone_htod(b))?),
            None => None,
        };
        up(name, "sync", self.stream.synchronize())?;
        self.weight_bytes.fetch_add(
            q.len() + 4 * (sc.len() + mn.len()) + bias.as_ref().map_or(0, |b| b.len() * 4),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.max_q
            .fetch_max(rows * cols, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(CudaMat {
            w: self.alloc::<u16>(name, 1)?,
            q: Some(QuantRows {
                bits,
                q: qd,
                s: sd,
                m: md,
            }),
            rows,
            cols,
            bias,
        }))
    }

    fn clear_graphs(st: &mut St) {
        st.graphs.clear();
        st.seen.clear();
    }
}

/// Whether k_attn_gqa takes these heads: a group of query heads per KV head larger than one,
/// up to GQ_MAXG, head size a multiple of 8 up to GQ_HD, and the group's outputs within
/// GQ_ACC per thread (kernels/attention.cu).
fn gqa_ok(cfg: &ModelConfig) -> bool {
    let (h, kv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    if kv == 0 || !h.is_multiple_of(kv) {
        return false;
    }
    let group = h / kv;
    (2..=16).contains(&group) && hd.is_multiple_of(8) && hd <= 128 && group * hd <= 128 * 8
}

impl CudaBackend {
    /// The tensor-core prefill attention kernel for head size `hd`, where it is on and has one
    /// (its tiles then hold MMA_Q rows, k_attn_tile's TILE_Q).
    fn mma_attn(&self, hd: usize) -> Option<&Kernel<launch::AttnTile>> {
        self.k.attn_mma(hd).filter(|_| self.flash)
    }
}

/// Whether the prefill attention kernels take head size `hd`.
fn tile_ok(hd: usize) -> bool {
    hd.is_multiple_of(4) && hd <= TILE_MAX_HD
}

fn grow<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    be: &CudaBackend,
    slot: &mut Option<CudaSlice<T>>,
    len: usize,
    what: &str,
) -> Result<bool, ModelError> {
    if slot.as_ref().is_some_and(|s| s.len() >= len) {
        return Ok(false);
    }
    *slot = None;
    *slot = Some(be.alloc::<T>(what, len)?);
    Ok(true)
}

impl Backend for CudaBackend {
    type Act = CudaAct;
    type Mat = CudaMat;
    type KvPool = CudaKvPool;

    fn sibling(&self) -> Result<Self, ModelError> {
        CudaBackend::with_options(self.ordinal(), &self.opts)
    }

    fn memory(&self) -> Option<kiln_model::DeviceMemory> {
        let used = self.memory_used();
        Some(kiln_model::DeviceMemory {
            weights: self.weight_bytes(),
            in_use: used.map(|u| u.0),
            total: used.map(|u| u.1),
        })
    }

    fn describe(&self) -> String {
        format!(
            "CUDA {} ({}, {} SMs, {}{}{})",
            self.name,
            self.arch,
            self.sms,
            if self.quant {
                "Q4/Q8 weights read in place, others f16"
            } else {
                "f16 weights"
            },
            if self.fused { ", fused layers" } else { "" },
            if self.graphs { ", graphs" } else { "" }
        )
    }

    fn matrix(&self, t: RawTensor) -> Result<CudaMat, ModelError> {
        if self.quant {
            if let Some(m) = self.upload_quant(&t.name, &[&t], None)? {
                return Ok(m);
            }
        }
        let bytes = Self::f16_bytes(&t)?;
        self.upload_mat(&t.name, &bytes, t.rows, t.cols, None)
    }

    fn stack(
        &self,
        name: &str,
        parts: &[&RawTensor],
        bias: Option<&[f32]>,
    ) -> Result<Option<CudaMat>, ModelError> {
        if !self.fused || parts.is_empty() {
            return Ok(None);
        }
        let cols = parts[0].cols;
        if parts.iter().any(|p| p.cols != cols) {
            return Ok(None);
        }
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        if bias.is_some_and(|b| b.len() != rows) {
            return Err(ModelError::Config(format!(
                "{name}: {} bias values for {rows} rows",
                bias.map_or(0, <[f32]>::len)
            )));
        }
        let label = format!("{} (+{} more)", parts[0].name, parts.len() - 1);
        if self.quant {
            if let Some(m) = self.upload_quant(&label, parts, bias)? {
                return Ok(Some(m));
            }
        }
        let mut bytes = Vec::with_capacity(rows * cols * 2);
        for p in parts {
            bytes.extend_from_slice(&Self::f16_bytes(p)?);
        }
        self.upload_mat(&label, &bytes, rows, cols, bias).map(Some)
    }

    fn vector(&self, data: &[f32]) -> Result<CudaAct, ModelError> {
        let buf = self
            .stream
            .clone_htod(data)
            .map_err(|e| dev("uploading a vector", e))?;
        self.weight_bytes
            .fetch_add(data.len() * 4, std::sync::atomic::Ordering::Relaxed);
        Ok(CudaAct { buf })
    }

    fn act(&self, len: usize) -> Result<CudaAct, ModelError> {
        let buf = self.alloc::<f32>("activations", len)?;
        let mut st = self.st();
        st.max_act = st.max_act.max(len);
        Ok(CudaAct { buf })
    }

    fn kv_pool(
        &self,
        cfg: &ModelConfig,
        n_blocks: usize,
        block_size: usize,
    ) -> Result<CudaKvPool, ModelError> {
        if block_size != kiln_model::KV_BLOCK {
            return Err(ModelError::Unsupported(format!(
                "KV blocks of {block_size} positions (the CUDA kernels use {})",
                kiln_model::KV_BLOCK
            )));
        }
        if cfg.head_dim > MAX_HD || (cfg.head_dim > ATT_T as usize && cfg.head_dim % 2 == 1) {
            return Err(ModelError::Unsupported(format!(
                "head size {} (the CUDA attention kernel takes up to {MAX_HD}, odd sizes up to {ATT_T})",
                cfg.head_dim
            )));
        }
        let per = 2 * cfg.n_layers * block_size * cfg.kv_dim();
        let len = n_blocks
            .checked_mul(per)
            .ok_or_else(|| ModelError::OutOfMemory(format!("{n_blocks} KV blocks")))?;
        Ok(CudaKvPool {
            buf: self.alloc::<u16>("KV cache", len)?,
            id: NEXT_POOL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            n_blocks,
            block_bytes: per * 2,
        })
    }

    fn kv_block_bytes(&self, cfg: &ModelConfig, block_size: usize) -> usize {
        2 * cfg.n_layers * block_size * cfg.kv_dim() * 2
    }

    fn begin_pass(
        &self,
        cfg: &ModelConfig,
        max_tokens: usize,
        tokens: &[u32],
        seqs: &[PagedSeq<'_>],
        rows: &[usize],
    ) -> Result<(), ModelError> {
        *self.qx.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let mut st = self.st();
        if let Some(e) = st.err.take() {
            return Err(ModelError::Device(e));
        }
        let n = tokens.len();
        let max_t = max_tokens.max(n);
        let nblocks: usize = seqs.iter().map(|s| s.blocks.len()).sum();
        let need = 5 * max_t + nblocks;
        let mut changed = false;
        if st.max_t != max_t || st.meta_cap < need {
            let cap = need.max(st.meta_cap).next_power_of_two();
            st.meta = None;
            st.meta = Some(self.alloc::<u32>("pass metadata", cap)?);
            st.meta_cap = cap;
            st.max_t = max_t;
            changed = true;
        }
        let qkvw = cfg.dim + 2 * cfg.kv_dim();
        let widest = qkvw.max(2 * cfg.ffn_dim).max(cfg.dim);
        let mut xh = st.xh.take();
        changed |= grow(self, &mut xh, max_t * widest, "f16 scratch")?;
        st.xh = xh;
        let max_q = self.max_q.load(std::sync::atomic::Ordering::Relaxed);
        if max_q > 0 {
            let mut deq = st.deq.take();
            changed |= grow(self, &mut deq, max_q, "dequantization scratch")?;
            st.deq = deq;
        }
        let mut big = st.big.take();
        changed |= grow(self, &mut big, max_t * widest, "scratch")?;
        st.big = big;
        let rope_key = (cfg.rope_dim, cfg.rope_base.to_bits());
        if st.inv_freq.is_none() || st.rope_key != rope_key {
            st.rope_key = rope_key;
            changed = true;
            let half = cfg.rope_dim / 2;
            let f: Vec<f32> = (0..half.max(1))
                .map(|i| cfg.rope_base.powf(-2.0 * i as f32 / cfg.rope_dim as f32))
                .collect();
            st.inv_freq = Some(
                self.stream
                    .clone_htod(&f)
                    .map_err(|e| dev("uploading rotary frequencies", e))?,
            );
        }
        // Attention splits: enough blocks to fill the GPU at decode and for passes of a few
        // rows per sequence (verifying proposed tokens, scoring), whose few query rows would
        // otherwise walk a long context in a handful of blocks; one for prefill.
        let longest = seqs.iter().map(|s| s.pos0 + s.n).max().unwrap_or(1);
        let decode = seqs.iter().all(|s| s.n == 1);
        let short = seqs.iter().all(|s| s.n <= SHORT_PASS_ROWS);
        st.decode_pass = decode;
        st.gqa_pass = decode
            && gqa_ok(cfg)
            && match self.gqa {
                Gqa::Off => false,
                Gqa::All => true,
                Gqa::Filled => n * cfg.n_kv_heads >= self.sms,
            };
        let splits = if short {
            let blocks_per_split = if st.gqa_pass {
                cfg.n_kv_heads
            } else {
                cfg.n_heads
            };
            let base = n * blocks_per_split;
            let fill = (2 * self.sms).div_ceil(base.max(1));
            fill.min(longest.div_ceil(64))
                .clamp(1, MAX_SPLITS)
                .next_power_of_two()
        } else {
            1
        };
        st.splits = splits;
        // Prefill passes: tiles of consecutive rows of one sequence for the tiled kernel.
        st.n_tiles = 0;
        if splits == 1 && !seqs.iter().all(|s| s.n == 1) && tile_ok(cfg.head_dim) {
            let per = if self.mma_attn(cfg.head_dim).is_some() {
                MMA_Q
            } else {
                TILE_Q
            };
            let mut t: Vec<u32> = Vec::new();
            for s in seqs {
                for r in (0..s.n).step_by(per) {
                    t.extend([(s.row0 + r) as u32, per.min(s.n - r) as u32]);
                }
            }
            let mut tiles = st.tiles.take();
            grow(self, &mut tiles, t.len(), "attention tiles")?;
            if let Some(buf) = &tiles {
                let dst = self.p(buf);
                // SAFETY: the buffer holds at least `t.len()` u32s; pageable copies are staged
                // before the call returns.
                unsafe {
                    cudarc::driver::result::memcpy_htod_async(
                        dst.addr(),
                        &t[..],
                        self.stream.cu_stream(),
                    )
                }
                .map_err(|e| dev("uploading attention tiles", e))?;
            }
            st.tiles = tiles;
            st.n_tiles = t.len() / 2;
        }
        let part_len = n * cfg.n_heads * splits * (cfg.head_dim + 2);
        if splits > 1 && st.part_cap < part_len {
            let cap = part_len.next_power_of_two();
            st.part = None;
            st.part = Some(self.alloc::<f32>("attention partials", cap)?);
            st.part_cap = cap;
            changed = true;
        }
        let cnt_len = n * cfg.n_heads;
        if splits > 1 && st.cnt_cap < cnt_len {
            let cap = cnt_len.next_power_of_two();
            st.attn_cnt = None;
            st.attn_cnt = Some(self.alloc::<u32>("attention split counts", cap)?);
            st.cnt_cap = cap;
            changed = true;
        }
        if changed {
            CudaBackend::clear_graphs(&mut st);
        }
        // tokens | row_pos | row_seq | out_rows | seq_blk | blocks
        let mut h = std::mem::take(&mut st.host);
        h.clear();
        h.resize(5 * max_t, 0);
        h[..n].copy_from_slice(tokens);
        let mut off = 0u32;
        for (si, s) in seqs.iter().enumerate() {
            for t in 0..s.n {
                h[max_t + s.row0 + t] = (s.pos0 + t) as u32;
                h[2 * max_t + s.row0 + t] = si as u32;
            }
            h[4 * max_t + si] = off;
            off += s.blocks.len() as u32;
        }
        for (i, &r) in rows.iter().enumerate() {
            h[3 * max_t + i] = r as u32;
        }
        for s in seqs {
            h.extend_from_slice(s.blocks);
        }
        let dst = self.po(&st.meta);
        // SAFETY: the metadata buffer holds at least `h.len()` u32s.
        let r = unsafe {
            cudarc::driver::result::memcpy_htod_async(dst.addr(), &h[..], self.stream.cu_stream())
        };
        st.host = h;
        r.map_err(|e| dev("uploading pass metadata", e))
    }

    fn decode_rows(&self, rows: usize) -> usize {
        if self.graphs {
            kiln_model::backend::padded_decode_rows(rows)
        } else {
            rows
        }
    }

    fn replay(&self, key: PassKey, pool: &CudaKvPool) -> Result<bool, ModelError> {
        if !self.graphs {
            return Ok(false);
        }
        let mut st = self.st();
        let k = (key, pool.id, st.splits);
        if let Some(g) = st.graphs.get(&k) {
            g.0.launch().map_err(|e| dev("graph launch", e))?;
            return Ok(true);
        }
        // A shape is recorded the second time it runs: under continuous batching many batch
        // sizes occur once or twice (requests arriving and leaving), and recording costs far
        // more than running a pass directly; shapes that stay are recorded on their second step.
        let seen = st.seen.entry(k).or_insert(0);
        *seen += 1;
        if *seen < 2 {
            return Ok(false);
        }
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| dev("graph capture", e))?;
        st.recording = Some(k);
        Ok(false)
    }

    fn end_record(&self) -> Result<(), ModelError> {
        let mut st = self.st();
        let Some(k) = st.recording.take() else {
            return Ok(());
        };
        let g = self
            .stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            .map_err(|e| dev("graph capture", e))?;
        if let Some(e) = st.err.take() {
            return Err(ModelError::Device(e));
        }
        let g = g.ok_or_else(|| ModelError::Device("graph capture recorded nothing".into()))?;
        g.launch().map_err(|e| dev("graph launch", e))?;
        st.graphs.insert(k, Graph(g));
        Ok(())
    }

    fn finish(&self) -> Result<(), ModelError> {
        match self.st().err.take() {
            Some(e) => Err(ModelError::Device(e)),
            None => Ok(()),
        }
    }

    fn embed(&self, table: &CudaMat, tokens: &[u32], out: &mut CudaAct) {
        let (meta, max_t) = self.meta();
        let n = tokens.len();
        let (cols, vocab) = (table.cols as i32, table.rows as i32);
        if let Some(q) = &table.q {
            self.launch(
                &self.k.embed_q,
                (n as u32, 1, 1),
                256,
                0,
                launch::EmbedQ {
                    q: self.p(&q.q),
                    s: self.p(&q.s),
                    m: self.po(&q.m),
                    bits: q.bits,
                    meta,
                    max_t,
                    cols,
                    vocab,
                    out: self.p(&out.buf),
                },
            );
            return;
        }
        self.launch(
            &self.k.embed,
            (n as u32, 1, 1),
            256,
            0,
            launch::Embed {
                table: self.p(&table.w),
                meta,
                max_t,
                dim: cols,
                vocab,
                out: self.p(&out.buf),
            },
        );
    }

    fn rms_norm(
        &self,
        x: &CudaAct,
        w: &CudaAct,
        eps: f32,
        n: usize,
        dim: usize,
        out: &mut CudaAct,
    ) {
        self.launch(
            &self.k.rmsnorm,
            (n as u32, 1, 1),
            256,
            0,
            launch::Rmsnorm {
                x: self.p(&x.buf),
                w: self.p(&w.buf),
                eps,
                dim: dim as i32,
                out: self.p(&out.buf),
            },
        );
    }

    fn matmul(&self, w: &CudaMat, x: &CudaAct, n: usize, out: &mut CudaAct) {
        let o = self.p(&out.buf);
        let x = self.p(&x.buf);
        self.linear(w, x, n, None, o, w.rows, Epilogue::Store, false, None);
    }

    fn add_bias(&self, x: &mut CudaAct, b: &CudaAct, n: usize, width: usize) {
        self.launch(
            &self.k.add_bias,
            (width.div_ceil(256) as u32, n.clamp(1, 65535) as u32, 1),
            256,
            0,
            launch::AddBias {
                x: self.p(&x.buf),
                b: self.p(&b.buf),
                n: n as i32,
                width: width as i32,
                stride: width as i32,
            },
        );
    }

    fn rope(&self, cfg: &ModelConfig, x: &mut CudaAct, heads: usize, seqs: &[PagedSeq<'_>]) {
        let (meta, max_t) = self.meta();
        let inv_freq = self.po(&self.st().inv_freq);
        let n: usize = seqs.iter().map(|s| s.n).sum();
        self.launch(
            &self.k.rope,
            (n as u32, 1, 1),
            128,
            0,
            launch::Rope {
                x: self.p(&x.buf),
                stride: (heads * cfg.head_dim) as i32,
                heads: heads as i32,
                meta,
                max_t,
                hd: cfg.head_dim as i32,
                rd: cfg.rope_dim as i32,
                interleaved: i32::from(cfg.rope_style == RopeStyle::Interleaved),
                inv_freq,
            },
        );
    }

    fn attention(
        &self,
        cfg: &ModelConfig,
        pool: &mut CudaKvPool,
        layer: usize,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
        seqs: &[PagedSeq<'_>],
        out: &mut CudaAct,
    ) {
        let n: usize = seqs.iter().map(|s| s.n).sum();
        let kvd = cfg.kv_dim();
        self.attend(
            cfg,
            pool,
            layer,
            n,
            (self.p(&q.buf), cfg.dim),
            (self.p(&k.buf), kvd),
            (self.p(&v.buf), kvd),
            false,
            Dev::NULL,
            self.p(&out.buf),
            Dev::NULL,
            false,
        );
    }

    fn copy_kv_block(&self, pool: &mut CudaKvPool, src: u32, dst: u32) {
        if src as usize >= pool.n_blocks || dst as usize >= pool.n_blocks || src == dst {
            return;
        }
        let base = self.p(&pool.buf).cast::<u8>();
        let bb = pool.block_bytes;
        // SAFETY: both blocks lie inside the pool and do not overlap.
        let r = unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                base.at(dst as usize * bb).addr(),
                base.at(src as usize * bb).addr(),
                pool.block_bytes,
                self.stream.cu_stream(),
            )
        };
        self.note("KV block copy", r);
    }

    fn swiglu(&self, gate: &mut CudaAct, up: &CudaAct, len: usize) {
        self.launch(
            &self.k.swiglu,
            (len.div_ceil(256) as u32, 1, 1),
            256,
            0,
            launch::Swiglu {
                gate: self.p(&gate.buf),
                up: self.p(&up.buf),
                len: len as i64,
            },
        );
    }

    fn add(&self, x: &mut CudaAct, y: &CudaAct, len: usize) {
        self.launch(
            &self.k.add,
            (len.div_ceil(256) as u32, 1, 1),
            256,
            0,
            launch::Add {
                x: self.p(&x.buf),
                y: self.p(&y.buf),
                len: len as i64,
            },
        );
    }

    fn gather_rows(&self, x: &CudaAct, rows: &[usize], width: usize, out: &mut CudaAct) {
        let (meta, max_t) = self.meta();
        self.launch(
            &self.k.gather,
            (rows.len() as u32, 1, 1),
            256,
            0,
            launch::Gather {
                x: self.p(&x.buf),
                meta,
                max_t,
                width: width as i32,
                out: self.p(&out.buf),
            },
        );
    }

    fn read(&self, x: &CudaAct, out: &mut [f32]) {
        let n = out.len().min(x.buf.len());
        let r = self
            .stream
            .memcpy_dtoh(&x.buf.slice(0..n), &mut out[..n])
            .and_then(|()| self.stream.synchronize());
        self.note("reading results", r);
    }

    fn argmax(&self, x: &CudaAct, rows: usize, width: usize, out: &mut Vec<u32>) {
        const PARTS: usize = 64;
        let bufs = {
            let mut st = self.st();
            let (mut v, mut i, mut o) = (st.am_val.take(), st.am_idx.take(), st.am_out.take());
            let r = grow(self, &mut v, rows * PARTS, "argmax")
                .and_then(|_| grow(self, &mut i, rows * PARTS, "argmax"))
                .and_then(|_| grow(self, &mut o, rows, "argmax"));
            let ptrs = (self.po(&v), self.po(&i), self.po(&o));
            (st.am_val, st.am_idx, st.am_out) = (v, i, o);
            r.map(|_| ptrs)
        };
        let (pv, pi, po) = match bufs {
            Ok(b) => b,
            Err(e) => {
                self.note("argmax", Err(e));
                return;
            }
        };
        self.launch(
            &self.k.argmax_part,
            (rows as u32, PARTS as u32, 1),
            256,
            0,
            launch::ArgmaxPart {
                x: self.p(&x.buf),
                width: width as i32,
                parts: PARTS as i32,
                pv,
                pi,
            },
        );
        self.launch(
            &self.k.argmax_final,
            (rows as u32, 1, 1),
            32,
            0,
            launch::ArgmaxFinal {
                pv,
                pi,
                parts: PARTS as i32,
                out: po,
            },
        );
        out.clear();
        out.resize(rows, 0);
        // SAFETY: the buffer holds at least `rows` u32s; the copy is synchronised below.
        let r = unsafe {
            cudarc::driver::result::memcpy_dtoh_async(
                &mut out[..],
                po.addr(),
                self.stream.cu_stream(),
            )
        }
        .and_then(|()| self.stream.synchronize());
        self.note("reading token ids", r);
    }

    fn sample(
        &self,
        logits: &mut CudaAct,
        width: usize,
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
        out: &mut Vec<Sampled>,
    ) {
        self.sample_start(logits, width, rows, adjust, masks);
        self.sample_wait(out);
    }

    fn asynchronous(&self) -> bool {
        true
    }

    fn work_done(&self) -> bool {
        if self.ctx.bind_to_thread().is_err() {
            return false;
        }
        // SAFETY: the backend's own stream, alive as long as the backend; a query waits for
        // nothing and changes nothing.
        let r = unsafe { cudarc::driver::sys::cuStreamQuery(self.stream.cu_stream()) };
        r == cudarc::driver::sys::CUresult::CUDA_SUCCESS
    }

    fn sample_start(
        &self,
        logits: &mut CudaAct,
        width: usize,
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
    ) -> bool {
        // Layouts of sample.cu: SAMPLE_ROW_WORDS, SAMPLE_PARTS, SAMPLE_INFO, SAMPLE_CAP.
        const ROW: usize = 13;
        const PARTS: usize = 16;
        const INFO: usize = 8;
        const CAP: usize = 128;
        const OUT: usize = 1 + 2 * MAX_TOP_LOGPROBS;
        let n = rows.len();
        let mut st = self.st();
        let mut h = std::mem::take(&mut st.samp_host);
        h.clear();
        for r in rows {
            h.extend([
                r.temperature.to_bits(),
                r.top_k,
                r.top_p.to_bits(),
                r.min_p.to_bits(),
                r.repetition_penalty.to_bits(),
                r.seed as u32,
                (r.seed >> 32) as u32,
                r.counter as u32,
                (r.counter >> 32) as u32,
                r.adjust.0,
                r.adjust.1,
                r.logprobs.map_or(u32::MAX, u32::from),
                r.mask.unwrap_or(u32::MAX),
            ]);
        }
        for a in adjust {
            h.extend([a.token, a.repeated as u32, a.add.to_bits()]);
        }
        let masks_at = h.len();
        let masked = rows.iter().any(|r| r.mask.is_some());
        let total = masks_at + if masked { masks.len() } else { 0 };
        // Masks in page-locked memory ([`Backend::host_words`]) go to the device as they are,
        // by a copy of their own; the rest of the upload is staged.
        let direct = masked && self.pinned_words.holds(masks);
        let staged = if direct { masks_at } else { total };
        // Large uploads (masks) go through page-locked memory, small ones as they are.
        let mut pinned = if staged >= PINNED_UPLOAD_MIN {
            let mut p = st.samp_pinned.take();
            if p.as_ref().is_none_or(|p| p.len() < staged) {
                // Cached, not write-combined: the host copies into it at memcpy speed.
                // SAFETY: the words are written below before they are read.
                p = unsafe {
                    self.ctx
                        .alloc_pinned_with_flags::<u32>(staged.next_power_of_two(), 0)
                }
                .ok();
            }
            p
        } else {
            None
        };
        let staged_in_pinned = match pinned.as_mut().map(|p| p.as_mut_slice()) {
            Some(Ok(p)) => {
                p[..masks_at].copy_from_slice(&h);
                p[masks_at..staged].copy_from_slice(&masks[..staged - masks_at]);
                true
            }
            _ => false,
        };
        if masked && !direct && !staged_in_pinned {
            h.extend_from_slice(masks);
        }
        let (mut inb, mut outb) = (st.samp_in.take(), st.samp_out.take());
        let (mut infob, mut candb) = (st.samp_info.take(), st.samp_cand.take());
        let in_grew = grow(self, &mut inb, total, "sampling parameters");
        // A buffer made now is made in the main stream's order, after the pass: only one made
        // before (whose making, and last use, a finished step has waited for) takes the
        // masks from the side stream.
        let beside = direct && matches!(in_grew, Ok(false));
        let grown = in_grew
            .and_then(|_| grow(self, &mut outb, n * (1 + OUT), "sampled tokens"))
            .and_then(|_| grow(self, &mut infob, n * PARTS * INFO, "sampling slices"))
            .and_then(|_| grow(self, &mut candb, n * PARTS * CAP * 2, "sampling candidates"));
        let (pin, pout) = (self.po(&inb), self.po(&outb));
        let (pinfo, pcand) = (self.po(&infob), self.po(&candb));
        (st.samp_in, st.samp_out) = (inb, outb);
        (st.samp_info, st.samp_cand) = (infob, candb);
        drop(st);
        if let Err(e) = grown {
            self.note("sampling", Err(e));
            let mut st = self.st();
            st.samp_host = h;
            st.samp_pinned = pinned;
            st.samp_pending = Some(SampPending::failed(n));
            return true;
        }
        let r = match pinned.as_ref().filter(|_| staged_in_pinned) {
            // SAFETY: the device buffer holds at least `total` u32s, the pinned one at least
            // `staged` written words, which stay untouched until `sample_wait` synchronises.
            Some(p) => p.as_ptr().and_then(|ptr| unsafe {
                let src = std::slice::from_raw_parts(ptr, staged);
                cudarc::driver::result::memcpy_htod_async(pin.addr(), src, self.stream.cu_stream())
            }),
            // SAFETY: the buffer holds at least `h.len()` u32s; pageable copies are staged
            // before the call returns.
            None => unsafe {
                cudarc::driver::result::memcpy_htod_async(
                    pin.addr(),
                    &h[..],
                    self.stream.cu_stream(),
                )
            },
        }
        .and_then(|()| {
            if !direct {
                return Ok(());
            }
            // The masks are ready while the pass still runs: beside it, on the side stream,
            // the main stream waiting for that copy before the sampling (else after the pass).
            let mut side = self.side.lock().unwrap_or_else(|e| e.into_inner());
            if beside && side.is_none() {
                *side = SideCopy::new(&self.ctx);
            }
            let on = match side.as_ref().filter(|_| beside) {
                Some(c) => c.stream,
                None => self.stream.cu_stream(),
            };
            // SAFETY: the device buffer holds `total` u32s from `pin`, so `masks.len()` from
            // `masks_at`; the caller leaves the page-locked masks unchanged until
            // `sample_wait` (the contract of `host_words`), which waits for the main stream,
            // and so for the copy.
            unsafe {
                cudarc::driver::result::memcpy_htod_async(pin.at(masks_at).addr(), masks, on)?;
                match side.as_ref().filter(|_| beside) {
                    Some(c) => {
                        cudarc::driver::result::event::record(c.done, c.stream)?;
                        cudarc::driver::result::stream::wait_event(
                            self.stream.cu_stream(),
                            c.done,
                            cudarc::driver::sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                        )
                    }
                    None => Ok(()),
                }
            }
        });
        self.note("uploading sampling parameters", r);
        let lp = self.p(&logits.buf);
        // Each slice is read once into shared memory where it fits SAMPLE_STAGE_MAX (a
        // vocabulary up to 180,224 tokens); later passes over it read it there.
        let slice_bytes = width.div_ceil(PARTS) * 4;
        let staged = slice_bytes <= SAMPLE_STAGE_MAX;
        self.launch(
            &self.k.sample_part,
            (n as u32, PARTS as u32, 1),
            256,
            if staged { slice_bytes as u32 } else { 0 },
            launch::SamplePart {
                logits: lp,
                width: width as i32,
                params: pin,
                adj: pin.at(n * ROW),
                masks: pin.at(masks_at),
                info: pinfo,
                cand: pcand,
                staged: i32::from(staged),
            },
        );
        self.launch(
            &self.k.sample_merge,
            (n as u32, 1, 1),
            1024,
            0,
            launch::SampleMerge {
                logits: lp,
                width: width as i32,
                params: pin,
                info: pinfo,
                cand: pcand,
                out: pout,
                rows: n as i32,
            },
        );
        let mut st = self.st();
        st.samp_host = h;
        st.samp_pinned = pinned;
        let mut pending = SampPending::failed(0);
        pending.n = n;
        pending.width = width;
        pending.out = pout;
        pending.logprobs.extend(rows.iter().map(|r| r.logprobs));
        st.samp_pending = Some(pending);
        true
    }

    fn host_words(&self, n: usize) -> Option<Box<dyn HostWords>> {
        PinnedWords::new(&self.ctx, &self.pinned_words, n)
            .map(|w| Box::new(w) as Box<dyn HostWords>)
    }

    fn sample_wait(&self, out: &mut Vec<Sampled>) {
        // Layout of sample.cu's output: SAMPLE_OUT words per row after the tokens.
        const OUT: usize = 1 + 2 * MAX_TOP_LOGPROBS;
        out.clear();
        let mut st = self.st();
        let Some(p) = st.samp_pending.take() else {
            return;
        };
        let n = p.n;
        if p.out.is_null() {
            out.extend(std::iter::repeat_n(Sampled::token(0), n));
            return;
        }
        let mut h = std::mem::take(&mut st.samp_host);
        drop(st);
        let want_lp = p.logprobs.iter().any(|k| k.is_some());
        let words = if want_lp { n * (1 + OUT) } else { n };
        h.clear();
        h.resize(words, 0);
        // SAFETY: the output buffer holds at least `words` u32s; synchronised below.
        let r = unsafe {
            cudarc::driver::result::memcpy_dtoh_async(
                &mut h[..],
                p.out.addr(),
                self.stream.cu_stream(),
            )
        }
        .and_then(|()| self.stream.synchronize());
        self.note("reading sampled tokens", r);
        for (i, lp) in p.logprobs.iter().enumerate() {
            let mut s = Sampled::token(h[i]);
            if let (Some(k), true) = (lp, want_lp) {
                let o = &h[n + i * OUT..n + (i + 1) * OUT];
                s.logprob = f32::from_bits(o[0]);
                let k = (*k as usize).min(MAX_TOP_LOGPROBS).min(p.width);
                for j in 0..k {
                    s.top[j] = (o[1 + 2 * j], f32::from_bits(o[2 + 2 * j]));
                }
                s.n_top = k as u8;
            }
            out.push(s);
        }
        self.st().samp_host = h;
    }

    fn fused_layer(
        &self,
        cfg: &ModelConfig,
        l: FusedRef<'_, Self>,
        layer: usize,
        pool: &mut CudaKvPool,
        n: usize,
        x: &mut CudaAct,
        att: &mut CudaAct,
    ) -> Result<(), ModelError> {
        let (dim, kvd, ffn) = (cfg.dim, cfg.kv_dim(), cfg.ffn_dim);
        let qkvw = dim + 2 * kvd;
        let (xh, big, _) = self.scratch();
        let xp = self.p(&x.buf);
        let ap = self.p(&att.buf);
        // On the matrix units (more than MV_ROWS rows) the q|k|v bias is added by k_kv_write
        // and the attention writes its output in f16 for W_o's product: two launches a layer
        // fewer than a separate bias and conversion.
        let units = n > MV_ROWS;
        let qkv_bias = match (&l.qkv.bias, units) {
            (Some(b), true) => self.p(b),
            _ => Dev::NULL,
        };
        // q|k|v = W_qkv . rmsnorm(x) (+ bias), into `big`.
        let norm = Some((l.attn_norm, cfg.rms_eps));
        self.linear(l.qkv, xp, n, norm, big, qkvw, Epilogue::Store, units, None);
        // Rotate k into the cache, q inside the attention kernel.
        self.attend(
            cfg,
            pool,
            layer,
            n,
            (big, qkvw),
            (big.at(dim), qkvw),
            (big.at(dim + kvd), qkvw),
            true,
            qkv_bias,
            ap,
            if units { xh } else { Dev::NULL },
            // W_o read in place at one row: the attention rounds its output for it.
            !units && l.wo.q.is_some() && self.opts.qx,
        );
        // x += W_o . att
        if units {
            self.gemm_xh(l.wo, xh, n, xp, dim);
        } else {
            self.residual(l.wo, ap, n, xp, dim, Some(self.p(&l.ffn_norm.buf)));
        }
        // h = silu(W_gate . rmsnorm(x)) * (W_up . rmsnorm(x)); x += W_down . h
        let norm = Some((l.ffn_norm, cfg.rms_eps));
        let next = Some(Dev::NULL);
        self.linear(
            l.gate_up,
            xp,
            n,
            norm,
            big,
            ffn,
            Epilogue::SwiGlu,
            false,
            next,
        );
        if units {
            // The SwiGLU output is already f16 in `xh`.
            self.gemm_xh(l.down, xh, n, xp, dim);
        } else {
            let next = l.next_norm.map(|a| self.p(&a.buf));
            self.residual(l.down, big, n, xp, dim, next);
        }
        Ok(())
    }
}

/// The family the quantized kernels read for these parts (all of one), if any.
fn quant_bits(parts: &[&RawTensor]) -> Option<i32> {
    use kiln_formats::gguf::GgmlType as T;
    let bits = |t: T| match t {
        T::Q4_0 | T::Q4_1 | T::Q4_K => Some(4),
        T::Q8_0 => Some(8),
        _ => None,
    };
    let first = bits(parts.first()?.ty)?;
    let cols = parts[0].cols;
    let same = parts
        .iter()
        .all(|p| bits(p.ty) == Some(first) && p.cols == cols && p.cols.is_multiple_of(32));
    same.then_some(first)
}

/// Appends a tensor's rows in the kernels' layout: per group of 32 values the quants (4-bit:
/// byte b holds q[b] low and q[b + 16] high), a scale and (4-bit) an offset, value = d * q + m.
fn repack(
    t: &RawTensor,
    q: &mut Vec<u8>,
    sc: &mut Vec<f32>,
    mn: &mut Vec<f32>,
) -> Result<(), ModelError> {
    use kiln_formats::gguf::GgmlType as T;
    let f16 = |b: &[u8], i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let data = t.data.as_slice();
    let (block_vals, block_bytes) = match t.ty {
        T::Q4_0 => (32, 18),
        T::Q4_1 => (32, 20),
        T::Q8_0 => (32, 34),
        T::Q4_K => (256, 144),
        other => {
            return Err(ModelError::Unsupported(format!(
                "{}: {} rows on the GPU",
                t.name,
                other.name()
            )))
        }
    };
    let blocks = t.rows * t.cols / block_vals;
    if data.len() < blocks * block_bytes {
        return Err(ModelError::Config(format!(
            "{}: {} bytes for {blocks} blocks",
            t.name,
            data.len()
        )));
    }

    for b in data[..blocks * block_bytes].chunks_exact(block_bytes) {
        match t.ty {
            T::Q4_0 => {
                let d = f16(b, 0);
                q.extend_from_slice(&b[2..18]);
                sc.push(d);
                mn.push(-8.0 * d);
            }
            T::Q4_1 => {
                q.extend_from_slice(&b[4..20]);
                sc.push(f16(b, 0));
                mn.push(f16(b, 2));
            }
            T::Q8_0 => {
                q.extend_from_slice(&b[2..34]);
                sc.push(f16(b, 0));
            }
            _ => {
                // Q4_K: four pairs of 32-value sub-blocks; pair j's 32 bytes hold sub-block
                // 2j in the low nibbles and 2j + 1 in the high ones.
                let (d, dmin) = (f16(b, 0), f16(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                for j in 0..4 {
                    let src = &qs[32 * j..32 * j + 32];
                    for (half, shift) in [(0usize, 0u8), (1, 4)] {
                        let (s, m) = kiln_formats::gguf::quant::k_scale_min(2 * j + half, scales);
                        let v = |i: usize| (src[i] >> shift) & 15;
                        q.extend((0..16).map(|i| v(i) | (v(i + 16) << 4)));
                        sc.push(d * f32::from(s));
                        mn.push(-dmin * f32::from(m));
                    }
                }
            }
        }
    }
    Ok(())
}
