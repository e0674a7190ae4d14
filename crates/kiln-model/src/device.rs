//! The backend chosen at run time (`--device cpu|cuda`): one type for the CLI, the engine and
//! the server, whatever the device.

use crate::backend::{Backend, FusedRef, PagedSeq, PassKey, RawTensor};
use crate::cpu::CpuBackend;
#[cfg(feature = "cuda")]
use crate::cuda::CudaBackend;
use crate::sample::{Adjust, RowSampling, Sampled};
use crate::{ModelConfig, ModelError};

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// The CPU backend.
    Cpu,
    /// The CUDA backend on GPU `n`.
    Cuda(usize),
}

impl DeviceKind {
    /// `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" | "gpu" => Ok(DeviceKind::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceKind::Cuda(n)),
                _ => Err(format!("`{s}`: expected cpu, cuda or cuda:N")),
            },
        }
    }
}

/// A backend on the CPU or a GPU.
pub enum Device {
    /// CPU.
    Cpu(CpuBackend),
    /// NVIDIA GPU.
    #[cfg(feature = "cuda")]
    Cuda(Box<CudaBackend>),
}

impl Device {
    /// Opens the device: `threads` is for the CPU.
    pub fn open(kind: DeviceKind, threads: usize) -> Result<Self, ModelError> {
        Self::open_with_kv(kind, threads, crate::cpu::KvDtype::F16)
    }

    /// Opens the device with KV cache values stored as `kv` (f32 on the CPU only).
    pub fn open_with_kv(
        kind: DeviceKind,
        threads: usize,
        kv: crate::cpu::KvDtype,
    ) -> Result<Self, ModelError> {
        if kind != DeviceKind::Cpu && kv != crate::cpu::KvDtype::F16 {
            return Err(ModelError::Unsupported(format!(
                "a {} KV cache on the GPU (it keeps f16); use --kv-dtype f16 or --device cpu",
                kv.name()
            )));
        }
        match kind {
            DeviceKind::Cpu => Ok(Device::Cpu(CpuBackend::new(threads).with_kv_dtype(kv))),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda(n) => Ok(Device::Cuda(Box::new(CudaBackend::new(n)?))),
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda(_) => Err(ModelError::Device(
                "this kiln was built without CUDA: rebuild with `cargo build --release --features cuda` (CUDA 13 is loaded at run time, nothing is needed to build)".into(),
            )),
        }
    }

    /// A second backend on the same device for another model run in turn with this one's
    /// (a draft model): on the CPU the same threads, on a GPU the same GPU.
    pub fn sibling(&self) -> Result<Device, ModelError> {
        match self {
            Device::Cpu(c) => Ok(Device::Cpu(c.sharing_threads())),
            #[cfg(feature = "cuda")]
            Device::Cuda(c) => Ok(Device::Cuda(Box::new(CudaBackend::new(c.ordinal())?))),
        }
    }

    /// Bytes of weights the device holds apart from the model file's mapping (a GPU's
    /// uploaded copy); `None` on the CPU, which reads the file in place.
    pub fn held_weight_bytes(&self) -> Option<usize> {
        match self {
            Device::Cpu(_) => None,
            #[cfg(feature = "cuda")]
            Device::Cuda(c) => Some(c.weight_bytes()),
        }
    }

    /// The CUDA backend, when that is the device.
    #[cfg(feature = "cuda")]
    pub fn cuda(&self) -> Option<&CudaBackend> {
        match self {
            Device::Cuda(c) => Some(c),
            Device::Cpu(_) => None,
        }
    }
}

/// A value of the CPU or the GPU backend.
pub enum Either<C, G> {
    /// On the CPU.
    Cpu(C),
    /// On the GPU.
    #[cfg(feature = "cuda")]
    Cuda(G),
    #[doc(hidden)]
    #[cfg(not(feature = "cuda"))]
    _Never(std::marker::PhantomData<G>, std::convert::Infallible),
}

#[cfg(feature = "cuda")]
type G<T> = T;
#[cfg(not(feature = "cuda"))]
type G<T> = std::marker::PhantomData<T>;

#[cfg(feature = "cuda")]
type CudaAct = <CudaBackend as Backend>::Act;
#[cfg(feature = "cuda")]
type CudaMat = <CudaBackend as Backend>::Mat;
#[cfg(feature = "cuda")]
type CudaPool = <CudaBackend as Backend>::KvPool;
#[cfg(not(feature = "cuda"))]
type CudaAct = ();
#[cfg(not(feature = "cuda"))]
type CudaMat = ();
#[cfg(not(feature = "cuda"))]
type CudaPool = ();

type CpuAct = <CpuBackend as Backend>::Act;
type CpuMat = <CpuBackend as Backend>::Mat;
type CpuPool = <CpuBackend as Backend>::KvPool;

/// An activation buffer of either backend.
pub type DevAct = Either<CpuAct, G<CudaAct>>;
/// A weight matrix of either backend.
pub type DevMat = Either<CpuMat, G<CudaMat>>;
/// A KV pool of either backend.
pub type DevPool = Either<CpuPool, G<CudaPool>>;

const MIXED: &str = "a buffer of one device passed to another";

/// Unwraps the CPU side of every argument (the variants always match: every buffer of a
/// model comes from its own device).
macro_rules! cpu {
    ($($v:ident),*) => {
        $(let Either::Cpu($v) = $v else { unreachable!("{MIXED}") };)*
    };
}
#[cfg(feature = "cuda")]
macro_rules! gpu {
    ($($v:ident),*) => {
        $(let Either::Cuda($v) = $v else { unreachable!("{MIXED}") };)*
    };
}

impl Backend for Device {
    type Act = DevAct;
    type Mat = DevMat;
    type KvPool = DevPool;

    fn describe(&self) -> String {
        match self {
            Device::Cpu(b) => b.describe(),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.describe(),
        }
    }

    fn matrix(&self, t: RawTensor) -> Result<DevMat, ModelError> {
        match self {
            Device::Cpu(b) => b.matrix(t).map(Either::Cpu),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.matrix(t).map(Either::Cuda),
        }
    }

    fn vector(&self, data: &[f32]) -> Result<DevAct, ModelError> {
        match self {
            Device::Cpu(b) => b.vector(data).map(Either::Cpu),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.vector(data).map(Either::Cuda),
        }
    }

    fn act(&self, len: usize) -> Result<DevAct, ModelError> {
        match self {
            Device::Cpu(b) => b.act(len).map(Either::Cpu),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.act(len).map(Either::Cuda),
        }
    }

    fn kv_pool(
        &self,
        cfg: &ModelConfig,
        n_blocks: usize,
        block_size: usize,
    ) -> Result<DevPool, ModelError> {
        match self {
            Device::Cpu(b) => b.kv_pool(cfg, n_blocks, block_size).map(Either::Cpu),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.kv_pool(cfg, n_blocks, block_size).map(Either::Cuda),
        }
    }

    fn kv_block_bytes(&self, cfg: &ModelConfig, block_size: usize) -> usize {
        match self {
            Device::Cpu(b) => b.kv_block_bytes(cfg, block_size),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.kv_block_bytes(cfg, block_size),
        }
    }

    fn embed(&self, table: &DevMat, tokens: &[u32], out: &mut DevAct) {
        match self {
            Device::Cpu(b) => {
                cpu!(table, out);
                b.embed(table, tokens, out)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(table, out);
                b.embed(table, tokens, out)
            }
        }
    }

    fn rms_norm(&self, x: &DevAct, w: &DevAct, eps: f32, n: usize, dim: usize, out: &mut DevAct) {
        match self {
            Device::Cpu(b) => {
                cpu!(x, w, out);
                b.rms_norm(x, w, eps, n, dim, out)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(x, w, out);
                b.rms_norm(x, w, eps, n, dim, out)
            }
        }
    }

    fn matmul_many(&self, ws: &[&DevMat], x: &DevAct, n: usize, outs: &mut [&mut DevAct]) {
        match self {
            Device::Cpu(b) => {
                cpu!(x);
                let pairs = ws
                    .iter()
                    .zip(outs.iter_mut())
                    .map(|(w, o)| match (w, &mut **o) {
                        (Either::Cpu(w), Either::Cpu(o)) => (w, o),
                        _ => unreachable!("{MIXED}"),
                    });
                b.matmul_pairs(pairs, x, n)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => {
                for (w, out) in ws.iter().zip(outs.iter_mut()) {
                    self.matmul(w, x, n, out);
                }
            }
        }
    }

    fn matmul(&self, w: &DevMat, x: &DevAct, n: usize, out: &mut DevAct) {
        match self {
            Device::Cpu(b) => {
                cpu!(w, x, out);
                b.matmul(w, x, n, out)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(w, x, out);
                b.matmul(w, x, n, out)
            }
        }
    }

    fn add_bias(&self, x: &mut DevAct, bias: &DevAct, n: usize, width: usize) {
        match self {
            Device::Cpu(b) => {
                cpu!(x, bias);
                b.add_bias(x, bias, n, width)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(x, bias);
                b.add_bias(x, bias, n, width)
            }
        }
    }

    fn rope(&self, cfg: &ModelConfig, x: &mut DevAct, heads: usize, seqs: &[PagedSeq<'_>]) {
        match self {
            Device::Cpu(b) => {
                cpu!(x);
                b.rope(cfg, x, heads, seqs)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(x);
                b.rope(cfg, x, heads, seqs)
            }
        }
    }

    fn attention(
        &self,
        cfg: &ModelConfig,
        pool: &mut DevPool,
        layer: usize,
        q: &DevAct,
        k: &DevAct,
        v: &DevAct,
        seqs: &[PagedSeq<'_>],
        out: &mut DevAct,
    ) {
        match self {
            Device::Cpu(b) => {
                cpu!(pool, q, k, v, out);
                b.attention(cfg, pool, layer, q, k, v, seqs, out)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(pool, q, k, v, out);
                b.attention(cfg, pool, layer, q, k, v, seqs, out)
            }
        }
    }

    fn copy_kv_block(&self, pool: &mut DevPool, src: u32, dst: u32) {
        match self {
            Device::Cpu(b) => {
                cpu!(pool);
                b.copy_kv_block(pool, src, dst)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(pool);
                b.copy_kv_block(pool, src, dst)
            }
        }
    }

    fn swiglu(&self, gate: &mut DevAct, up: &DevAct, len: usize) {
        match self {
            Device::Cpu(b) => {
                cpu!(gate, up);
                b.swiglu(gate, up, len)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(gate, up);
                b.swiglu(gate, up, len)
            }
        }
    }

    fn add(&self, x: &mut DevAct, y: &DevAct, len: usize) {
        match self {
            Device::Cpu(b) => {
                cpu!(x, y);
                b.add(x, y, len)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(x, y);
                b.add(x, y, len)
            }
        }
    }

    fn gather_rows(&self, x: &DevAct, rows: &[usize], width: usize, out: &mut DevAct) {
        match self {
            Device::Cpu(b) => {
                cpu!(x, out);
                b.gather_rows(x, rows, width, out)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(x, out);
                b.gather_rows(x, rows, width, out)
            }
        }
    }

    fn read(&self, x: &DevAct, out: &mut [f32]) {
        match self {
            Device::Cpu(b) => {
                cpu!(x);
                b.read(x, out)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(x);
                b.read(x, out)
            }
        }
    }

    fn argmax(&self, x: &DevAct, rows: usize, width: usize, out: &mut Vec<u32>) {
        match self {
            Device::Cpu(b) => {
                cpu!(x);
                b.argmax(x, rows, width, out)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(x);
                b.argmax(x, rows, width, out)
            }
        }
    }

    fn sample(
        &self,
        logits: &mut DevAct,
        width: usize,
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
        out: &mut Vec<Sampled>,
    ) {
        match self {
            Device::Cpu(b) => {
                cpu!(logits);
                b.sample(logits, width, rows, adjust, masks, out)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(logits);
                b.sample(logits, width, rows, adjust, masks, out)
            }
        }
    }

    fn asynchronous(&self) -> bool {
        match self {
            Device::Cpu(b) => b.asynchronous(),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.asynchronous(),
        }
    }

    fn sample_start(
        &self,
        logits: &mut DevAct,
        width: usize,
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
    ) -> bool {
        match self {
            Device::Cpu(b) => {
                cpu!(logits);
                b.sample_start(logits, width, rows, adjust, masks)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(logits);
                b.sample_start(logits, width, rows, adjust, masks)
            }
        }
    }

    fn sample_wait(&self, out: &mut Vec<Sampled>) {
        match self {
            Device::Cpu(b) => b.sample_wait(out),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.sample_wait(out),
        }
    }

    fn begin_pass(
        &self,
        cfg: &ModelConfig,
        max_tokens: usize,
        tokens: &[u32],
        seqs: &[PagedSeq<'_>],
        rows: &[usize],
    ) -> Result<(), ModelError> {
        match self {
            Device::Cpu(b) => b.begin_pass(cfg, max_tokens, tokens, seqs, rows),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.begin_pass(cfg, max_tokens, tokens, seqs, rows),
        }
    }

    fn replay(&self, key: PassKey, pool: &DevPool) -> Result<bool, ModelError> {
        match self {
            Device::Cpu(b) => {
                cpu!(pool);
                b.replay(key, pool)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(pool);
                b.replay(key, pool)
            }
        }
    }

    fn end_record(&self) -> Result<(), ModelError> {
        match self {
            Device::Cpu(b) => b.end_record(),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.end_record(),
        }
    }

    fn finish(&self) -> Result<(), ModelError> {
        match self {
            Device::Cpu(b) => b.finish(),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.finish(),
        }
    }

    fn stack(
        &self,
        name: &str,
        parts: &[&RawTensor],
        bias: Option<&[f32]>,
    ) -> Result<Option<DevMat>, ModelError> {
        match self {
            Device::Cpu(b) => Ok(b.stack(name, parts, bias)?.map(Either::Cpu)),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => Ok(b.stack(name, parts, bias)?.map(Either::Cuda)),
        }
    }

    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn fused_layer(
        &self,
        cfg: &ModelConfig,
        l: FusedRef<'_, Self>,
        layer: usize,
        pool: &mut DevPool,
        n: usize,
        x: &mut DevAct,
        att: &mut DevAct,
    ) -> Result<(), ModelError> {
        match self {
            Device::Cpu(_) => Err(ModelError::Unsupported(
                "the CPU backend has no fused layers".into(),
            )),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => {
                gpu!(pool, x, att);
                fn a(v: &DevAct) -> Result<&CudaAct, ModelError> {
                    match v {
                        Either::Cuda(v) => Ok(v),
                        _ => Err(ModelError::Device(MIXED.into())),
                    }
                }
                fn m(v: &DevMat) -> Result<&CudaMat, ModelError> {
                    match v {
                        Either::Cuda(v) => Ok(v),
                        _ => Err(ModelError::Device(MIXED.into())),
                    }
                }
                let fl = FusedRef {
                    attn_norm: a(l.attn_norm)?,
                    qkv: m(l.qkv)?,
                    wo: m(l.wo)?,
                    ffn_norm: a(l.ffn_norm)?,
                    gate_up: m(l.gate_up)?,
                    down: m(l.down)?,
                };
                b.fused_layer(cfg, fl, layer, pool, n, x, att)
            }
        }
    }
}
