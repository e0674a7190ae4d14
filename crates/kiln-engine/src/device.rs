//! The backend chosen at run time (`--device cpu|cuda`), and the one place where code
//! generic over [`Backend`](kiln_model::Backend) is dispatched to it: [`with_backend!`](crate::with_backend).
//! Everything below (the model, its passes, every operation) is then compiled for that
//! backend alone; nothing re-dispatches per operation.

use kiln_cpu::{CpuBackend, KvDtype};
#[cfg(feature = "cuda")]
use kiln_cuda::CudaBackend;
use kiln_model::ModelError;

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
        Self::open_with_kv(kind, threads, KvDtype::F16)
    }

    /// Opens the device with KV cache values stored as `kv` (f32 on the CPU only).
    pub fn open_with_kv(kind: DeviceKind, threads: usize, kv: KvDtype) -> Result<Self, ModelError> {
        if kind != DeviceKind::Cpu && kv != KvDtype::F16 {
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
}

/// Runs `$body` with `$b` bound to the backend `$device` holds (a [`Device`]), whatever it
/// is: the body is compiled once for each backend and the device is matched once, here.
/// This is the one dispatch on the device; everything the body calls (loading, the model's
/// passes, every operation) is generic over [`Backend`](kiln_model::Backend).
///
/// ```no_run
/// # use kiln_engine::device::{Device, DeviceKind};
/// let device = Device::open(DeviceKind::Cpu, 2)?;
/// let described = kiln_engine::with_backend!(device, b => kiln_model::Backend::describe(&b));
/// # Ok::<(), kiln_model::ModelError>(())
/// ```
#[cfg(feature = "cuda")]
#[macro_export]
macro_rules! with_backend {
    ($device:expr, $b:ident => $body:expr) => {
        match $device {
            $crate::device::Device::Cpu($b) => $body,
            $crate::device::Device::Cuda($b) => {
                let $b = *$b;
                $body
            }
        }
    };
}

/// See the version with CUDA.
#[cfg(not(feature = "cuda"))]
#[macro_export]
macro_rules! with_backend {
    ($device:expr, $b:ident => $body:expr) => {
        match $device {
            $crate::device::Device::Cpu($b) => $body,
        }
    };
}
