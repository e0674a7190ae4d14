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

/// How the GPU holds the model's weight matrices (`--gpu-weights`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GpuWeights {
    /// Every matrix converted to f16 on upload (the fastest kernels today).
    #[default]
    F16,
    /// Q4_0, Q4_1, Q4_K and Q8_0 matrices kept in the file's block format and read in place
    /// (less memory); other matrices f16.
    Quantized,
    /// As `Quantized`, with float matrices (F32, F16, BF16) quantized to Q8_0 on load.
    Q8,
    /// As `Quantized`, with float matrices quantized to Q4_K on load (Q8_0 where rows do
    /// not fill blocks of 256).
    Q4,
}

impl GpuWeights {
    /// `f16`, `q8`, `q4` or `quantized`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "f16" => Ok(GpuWeights::F16),
            "quantized" => Ok(GpuWeights::Quantized),
            "q8" => Ok(GpuWeights::Q8),
            "q4" => Ok(GpuWeights::Q4),
            _ => Err(format!("`{s}`: expected f16, q8, q4 or quantized")),
        }
    }

    /// The flag's value.
    pub fn name(self) -> &'static str {
        match self {
            GpuWeights::F16 => "f16",
            GpuWeights::Quantized => "quantized",
            GpuWeights::Q8 => "q8",
            GpuWeights::Q4 => "q4",
        }
    }

    /// Whether block-quantized matrices stay so on the GPU.
    pub fn in_place(self) -> bool {
        self != GpuWeights::F16
    }

    /// The type float matrices are quantized to on load, if any.
    pub fn quantize_on_load(self) -> Option<kiln_model::quantize::QuantType> {
        use kiln_model::quantize::QuantType;
        match self {
            GpuWeights::Q8 => Some(QuantType::Q8_0),
            GpuWeights::Q4 => Some(QuantType::Q4K),
            GpuWeights::F16 | GpuWeights::Quantized => None,
        }
    }
}

/// Switches for developers comparing paths (`--dev NAME=VALUE`, hidden from `--help`): each
/// `None` or `false` leaves the backend's default. Set by [`DevOptions::set`], which names
/// what it refuses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevOptions {
    /// `cpu-isa=scalar|avx2|avx512|neon|neon-dot`: a lesser instruction set than the CPU's best.
    pub cpu_isa: Option<String>,
    /// `cpu-exact=1`: f32 activations for every CPU product (slow).
    pub cpu_exact: bool,
    /// `cpu-pad=1`: decoding passes padded as the CUDA backend pads those it records (to
    /// test the padding without a GPU).
    pub cpu_pad: bool,
    /// `cuda-fused=0|1`: whole layers through the fused path.
    pub cuda_fused: Option<bool>,
    /// `cuda-graphs=0|1`: decode passes recorded as CUDA graphs.
    pub cuda_graphs: Option<bool>,
    /// `cuda-pdl=0|1`: programmatic dependent launch.
    pub cuda_pdl: Option<bool>,
    /// `cuda-mvt=0|1`: the tensor-core matrix-vector kernel for 3 to 8 rows.
    pub cuda_mvt: Option<bool>,
    /// `cuda-fa=0|1`: prefill attention on the tensor cores (else on the CUDA cores).
    pub cuda_fa: Option<bool>,
    /// `cuda-mv-plain=1`: the plain matrix-vector kernels only.
    pub cuda_mv_plain: bool,
    /// `cuda-mv1d=0|1`: one-row products read x in their loop over the weights instead of
    /// staging it in shared memory first.
    pub cuda_mv1d: Option<bool>,
    /// `cuda-mvpf=0|1`: matrix-vector products (one row, and 3 to 8 rows on the tensor cores)
    /// start their weights on their way to L2 before waiting for the kernel before.
    pub cuda_mvpf: Option<bool>,
    /// `cuda-mvpre=2|4`: pieces of each row a lane of the one-row product (x read in the
    /// loop) reads before waiting for the kernel before.
    pub cuda_mvpre: Option<usize>,
    /// `cuda-gqa=0|1|all`: decode attention grouped by KV head never, when the rows fill
    /// the GPU (the default), or always.
    pub cuda_gqa: Option<String>,
    /// `cuda-qx=0|1`: one-row products of weights read in place round their output for the
    /// next product themselves (else a k_quant_x launch before each product does).
    pub cuda_qx: Option<bool>,
    /// `cuda-qks=1|2|4|8`: warps that share each output of a one-row product of weights read
    /// in place, splitting its columns (else chosen by the product's shape).
    pub cuda_qks: Option<usize>,
    /// `cuda-qwide=0|1`: those products, with 2 or 4 warps an output, in blocks of 16 or 32
    /// warps that hold whole groups of 16 outputs (else blocks of 8 warps that share them), and
    /// those of many outputs without SwiGLU four outputs a warp (else two).
    pub cuda_qwide: Option<bool>,
    /// `cuda-mvq=0|1|all`: which products of 2 to 8 rows of weights read in place read them
    /// as they are stored (k_mvqr; 1: those the backend picks by size, the default), the others
    /// dequantizing the matrix to f16 first.
    pub cuda_mvq: Option<String>,
    /// `cuda-mvts=memory|cluster|none`: how the blocks of the 3-to-8-row tensor-core product
    /// that share a tile of outputs add their sums (through a scratch buffer and a counter,
    /// the default; in a thread block cluster's shared memory, sm_90 and later; or no tile
    /// shared by blocks).
    pub cuda_mvts: Option<String>,
    /// `cuda-mvtks=1|2|4|8`: the fewest warps of that product sharing a tile of outputs (2 by
    /// default).
    pub cuda_mvtks: Option<usize>,
}

impl DevOptions {
    /// Sets one switch from `NAME=VALUE`.
    pub fn set(&mut self, spec: &str) -> Result<(), String> {
        let (name, value) = spec
            .split_once('=')
            .ok_or_else(|| format!("`{spec}`: expected NAME=VALUE"))?;
        let flag = || match value {
            "0" | "off" | "false" => Ok(false),
            "1" | "on" | "true" => Ok(true),
            _ => Err(format!("`{spec}`: expected {name}=0 or {name}=1")),
        };
        match name {
            "cpu-isa" => {
                kiln_cpu::Isa::named(value)?;
                self.cpu_isa = Some(value.to_owned());
            }
            "cpu-exact" => self.cpu_exact = flag()?,
            "cpu-pad" => self.cpu_pad = flag()?,
            "cuda-fused" => self.cuda_fused = Some(flag()?),
            "cuda-graphs" => self.cuda_graphs = Some(flag()?),
            "cuda-pdl" => self.cuda_pdl = Some(flag()?),
            "cuda-mvt" => self.cuda_mvt = Some(flag()?),
            "cuda-fa" => self.cuda_fa = Some(flag()?),
            "cuda-mv-plain" => self.cuda_mv_plain = flag()?,
            "cuda-mv1d" => self.cuda_mv1d = Some(flag()?),
            "cuda-mvpf" => self.cuda_mvpf = Some(flag()?),
            "cuda-mvpre" => match value {
                "2" => self.cuda_mvpre = Some(2),
                "4" => self.cuda_mvpre = Some(4),
                _ => return Err(format!("`{spec}`: expected cuda-mvpre=2 or cuda-mvpre=4")),
            },
            "cuda-qx" => self.cuda_qx = Some(flag()?),
            "cuda-qwide" => self.cuda_qwide = Some(flag()?),
            "cuda-mvq" => match value {
                "0" | "1" | "all" => self.cuda_mvq = Some(value.to_owned()),
                _ => return Err(format!("`{spec}`: expected cuda-mvq=0, 1 or all")),
            },
            "cuda-mvts" => match value {
                "memory" | "cluster" | "none" => self.cuda_mvts = Some(value.to_owned()),
                _ => {
                    return Err(format!(
                        "`{spec}`: expected cuda-mvts=memory, cluster or none"
                    ))
                }
            },
            "cuda-mvtks" => match value {
                "1" | "2" | "4" | "8" => self.cuda_mvtks = value.parse().ok(),
                _ => return Err(format!("`{spec}`: expected cuda-mvtks=1, 2, 4 or 8")),
            },
            "cuda-qks" => match value {
                "1" | "2" | "4" | "8" => self.cuda_qks = value.parse().ok(),
                _ => return Err(format!("`{spec}`: expected cuda-qks=1, 2, 4 or 8")),
            },
            "cuda-gqa" => match value {
                "0" | "1" | "all" => self.cuda_gqa = Some(value.to_owned()),
                _ => return Err(format!("`{spec}`: expected cuda-gqa=0, 1 or all")),
            },
            _ => return Err(format!(
                "`{name}`: no such switch (cpu-isa, cpu-exact, cpu-pad, cuda-fused, cuda-graphs, cuda-pdl, cuda-mvt, cuda-fa, cuda-mv-plain, cuda-mv1d, cuda-mvpf, cuda-mvpre, cuda-gqa, cuda-qx, cuda-qks, cuda-qwide, cuda-mvq, cuda-mvts, cuda-mvtks)"
            )),
        }
        Ok(())
    }

    fn any_cpu(&self) -> Option<&'static str> {
        if self.cpu_isa.is_some() {
            Some("cpu-isa")
        } else if self.cpu_exact {
            Some("cpu-exact")
        } else if self.cpu_pad {
            Some("cpu-pad")
        } else {
            None
        }
    }

    fn any_cuda(&self) -> Option<&'static str> {
        [
            (self.cuda_fused.is_some(), "cuda-fused"),
            (self.cuda_graphs.is_some(), "cuda-graphs"),
            (self.cuda_pdl.is_some(), "cuda-pdl"),
            (self.cuda_mvt.is_some(), "cuda-mvt"),
            (self.cuda_fa.is_some(), "cuda-fa"),
            (self.cuda_mv_plain, "cuda-mv-plain"),
            (self.cuda_mv1d.is_some(), "cuda-mv1d"),
            (self.cuda_mvpf.is_some(), "cuda-mvpf"),
            (self.cuda_mvpre.is_some(), "cuda-mvpre"),
            (self.cuda_gqa.is_some(), "cuda-gqa"),
            (self.cuda_qx.is_some(), "cuda-qx"),
            (self.cuda_qks.is_some(), "cuda-qks"),
            (self.cuda_qwide.is_some(), "cuda-qwide"),
            (self.cuda_mvq.is_some(), "cuda-mvq"),
            (self.cuda_mvts.is_some(), "cuda-mvts"),
            (self.cuda_mvtks.is_some(), "cuda-mvtks"),
        ]
        .into_iter()
        .find(|c| c.0)
        .map(|c| c.1)
    }
}

/// Everything [`Device::open_with`] takes: what users choose and the developers' switches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceOptions {
    /// CPU threads (0: one per core).
    pub threads: usize,
    /// How the CPU stores cached keys and values (a GPU keeps f16).
    pub kv_dtype: KvDtype,
    /// How a GPU holds quantized weights.
    pub gpu_weights: GpuWeights,
    /// Switches for comparing paths.
    pub dev: DevOptions,
}

impl Device {
    /// Opens the device with default options: `threads` is for the CPU.
    pub fn open(kind: DeviceKind, threads: usize) -> Result<Self, ModelError> {
        Self::open_with(
            kind,
            &DeviceOptions {
                threads,
                ..Default::default()
            },
        )
    }

    /// Opens the device with `opts`; an option that does not apply to it is an error that
    /// names it (nothing asked for is dropped).
    pub fn open_with(kind: DeviceKind, opts: &DeviceOptions) -> Result<Self, ModelError> {
        let d = &opts.dev;
        let not_here = |what: &str, device: &str| {
            ModelError::Unsupported(format!("{what} applies to --device {device} only"))
        };
        match kind {
            DeviceKind::Cpu => {
                if let Some(n) = d.any_cuda() {
                    return Err(not_here(n, "cuda"));
                }
                if opts.gpu_weights != GpuWeights::F16 {
                    return Err(not_here("--gpu-weights", "cuda"));
                }
                if opts.threads > kiln_cpu::MAX_THREADS {
                    return Err(ModelError::Input(format!(
                        "--threads {}: at most {}",
                        opts.threads,
                        kiln_cpu::MAX_THREADS
                    )));
                }
                let mut b = CpuBackend::new(opts.threads)
                    .with_kv_dtype(opts.kv_dtype)
                    .with_exact(d.cpu_exact)
                    .with_padding(d.cpu_pad);
                if let Some(isa) = &d.cpu_isa {
                    b = b.with_isa(kiln_cpu::Isa::named(isa).map_err(ModelError::Input)?);
                }
                Ok(Device::Cpu(b))
            }
            DeviceKind::Cuda(n) => {
                if opts.kv_dtype != KvDtype::F16 {
                    return Err(ModelError::Unsupported(format!(
                        "a {} KV cache on the GPU (it keeps f16); use --kv-dtype f16 or --device cpu",
                        opts.kv_dtype.name()
                    )));
                }
                if let Some(c) = d.any_cpu() {
                    return Err(not_here(c, "cpu"));
                }
                // k_mv1d4 is a variant of the direct kernel: the staged one has no such count.
                if d.cuda_mvpre == Some(4) && d.cuda_mv1d == Some(false) {
                    return Err(ModelError::Input(
                        "cuda-mvpre=4 applies to the direct one-row kernel: drop cuda-mv1d=0 or cuda-mvpre=4".into(),
                    ));
                }
                Self::open_cuda(n, opts)
            }
        }
    }

    #[cfg(feature = "cuda")]
    fn open_cuda(n: usize, opts: &DeviceOptions) -> Result<Self, ModelError> {
        use kiln_cuda::{CudaOptions, Gqa, Mvq, MvtSplit};
        let d = &opts.dev;
        let base = CudaOptions::default();
        let co = CudaOptions {
            quantized: opts.gpu_weights.in_place(),
            fused: d.cuda_fused.unwrap_or(base.fused),
            graphs: d.cuda_graphs.unwrap_or(base.graphs),
            pdl: d.cuda_pdl.unwrap_or(base.pdl),
            mvt: d.cuda_mvt.unwrap_or(base.mvt),
            flash: d.cuda_fa.unwrap_or(base.flash),
            mv_plain: d.cuda_mv_plain,
            mv1_direct: d.cuda_mv1d.unwrap_or(base.mv1_direct),
            mv1_prefetch: d.cuda_mvpf.unwrap_or(base.mv1_prefetch),
            mv1_pre4: d.cuda_mvpre.map_or(base.mv1_pre4, |n| n == 4),
            qx: d.cuda_qx.unwrap_or(base.qx),
            qks: d.cuda_qks.unwrap_or(base.qks),
            q_wide: d.cuda_qwide.unwrap_or(base.q_wide),
            mvq: match d.cuda_mvq.as_deref() {
                Some("0") => Mvq::Off,
                Some("all") => Mvq::All,
                _ => base.mvq,
            },
            gqa: match d.cuda_gqa.as_deref() {
                Some("0") => Gqa::Off,
                Some("all") => Gqa::All,
                _ => base.gqa,
            },
            mvt_split: match d.cuda_mvts.as_deref() {
                Some("memory") => MvtSplit::Memory,
                Some("cluster") => MvtSplit::Cluster,
                Some("none") => MvtSplit::None,
                _ => base.mvt_split,
            },
            mvt_ks: d.cuda_mvtks.unwrap_or(base.mvt_ks),
        };
        Ok(Device::Cuda(Box::new(CudaBackend::with_options(n, &co)?)))
    }

    #[cfg(not(feature = "cuda"))]
    fn open_cuda(_: usize, _: &DeviceOptions) -> Result<Self, ModelError> {
        Err(ModelError::Device(
            "this kiln was built without CUDA: rebuild with `cargo build --release --features cuda` (CUDA 13 is loaded at run time, nothing is needed to build)".into(),
        ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_are_parsed_or_refused_by_name() {
        let mut d = DevOptions::default();
        for s in [
            "cpu-isa=scalar",
            "cpu-exact=1",
            "cpu-pad=1",
            "cuda-fused=0",
            "cuda-graphs=off",
            "cuda-pdl=false",
            "cuda-mvt=0",
            "cuda-fa=0",
            "cuda-mv-plain=1",
            "cuda-mv1d=1",
            "cuda-mvpf=0",
            "cuda-mvpre=4",
            "cuda-gqa=all",
            "cuda-mvq=all",
            "cuda-mvts=cluster",
            "cuda-mvtks=4",
        ] {
            d.set(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        assert_eq!(d.cpu_isa.as_deref(), Some("scalar"));
        assert!(d.cpu_exact && d.cpu_pad && d.cuda_mv_plain);
        assert_eq!(
            (d.cuda_fused, d.cuda_graphs, d.cuda_pdl, d.cuda_mvt),
            (Some(false), Some(false), Some(false), Some(false))
        );
        assert_eq!(d.cuda_fa, Some(false));
        assert_eq!(d.cuda_mv1d, Some(true));
        assert_eq!(d.cuda_mvpf, Some(false));
        assert_eq!(d.cuda_mvpre, Some(4));
        assert_eq!(d.cuda_gqa.as_deref(), Some("all"));
        assert_eq!(d.cuda_mvq.as_deref(), Some("all"));
        assert_eq!(d.cuda_mvts.as_deref(), Some("cluster"));
        assert_eq!(d.cuda_mvtks, Some(4));
        for (s, word) in [
            ("cuda-graph=0", "no such switch"),
            ("cuda-graphs", "NAME=VALUE"),
            ("cuda-graphs=2", "cuda-graphs=0 or cuda-graphs=1"),
            ("cuda-gqa=some", "cuda-gqa=0, 1 or all"),
            ("cuda-mvq=2", "cuda-mvq=0, 1 or all"),
            ("cuda-mvts=1", "cuda-mvts=memory, cluster or none"),
            ("cuda-mvtks=3", "cuda-mvtks=1, 2, 4 or 8"),
            ("cuda-mvpre=3", "cuda-mvpre=2 or cuda-mvpre=4"),
            ("cpu-isa=mmx", "instruction set `mmx`"),
        ] {
            let e = DevOptions::default().set(s).unwrap_err();
            assert!(e.contains(word), "{s}: {e}");
        }
    }

    #[test]
    fn options_for_another_device_are_errors() {
        let mut opts = DeviceOptions {
            threads: 1,
            ..Default::default()
        };
        opts.dev.set("cuda-graphs=0").unwrap();
        let e = Device::open_with(DeviceKind::Cpu, &opts).err().unwrap();
        assert!(
            e.to_string()
                .contains("cuda-graphs applies to --device cuda only"),
            "{e}"
        );
        let opts = DeviceOptions {
            threads: 1,
            gpu_weights: GpuWeights::Quantized,
            ..Default::default()
        };
        let e = Device::open_with(DeviceKind::Cpu, &opts).err().unwrap();
        assert!(e.to_string().contains("--gpu-weights"), "{e}");
        let mut opts = DeviceOptions {
            threads: 1,
            ..Default::default()
        };
        opts.dev.set("cpu-exact=1").unwrap();
        let e = Device::open_with(DeviceKind::Cuda(0), &opts).err().unwrap();
        assert!(
            e.to_string()
                .contains("cpu-exact applies to --device cpu only"),
            "{e}"
        );
        // A count of early pieces for the staged one-row kernel, which has none to change.
        let mut cuda = DeviceOptions::default();
        cuda.dev.set("cuda-mvpre=4").unwrap();
        cuda.dev.set("cuda-mv1d=0").unwrap();
        let e = Device::open_with(DeviceKind::Cuda(0), &cuda).err().unwrap();
        assert!(
            e.to_string().contains("cuda-mvpre=4 applies to the direct"),
            "{e}"
        );
        // What applies is used.
        let d = Device::open_with(DeviceKind::Cpu, &opts).unwrap();
        let described = crate::with_backend!(d, b => kiln_model::Backend::describe(&b));
        assert!(described.contains("f32 activations"), "{described}");
    }
}
