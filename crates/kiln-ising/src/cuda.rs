//! The CUDA path of the swarm's all-pairs empathy (feature `cuda`): bit-identical to the CPU.
//!
//! [`CudaEngine`] loads the driver and NVRTC at run time (nothing CUDA is linked, so a binary built
//! with the feature still starts on a machine without a GPU and reports why it cannot use one),
//! compiles `cuda_kernel.cu` for the device's architecture with `--fmad=false`, and keeps the
//! cubin on disk keyed by a hash of the source, the options and the NVRTC version. The host
//! prepares exactly what the CPU path prepares (`batch::SwarmPlan`: coupling classes, their
//! similarities, each target's starting state, the temperature table); the kernel runs one
//! theory-of-mind anneal per thread, and the attention rows are normalised on the host as before.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use thiserror::Error;

use crate::anneal::{acceptance_floor, adaptive_steps, beta, PROPOSALS_PER_STEP};
use crate::batch::{finish_swarm, Swarm, SwarmPlan};
use crate::empathy::EmpathyOptions;
use crate::error::IsingError;
use crate::system::IsingSystem;

/// The kernel source, compiled at run time by NVRTC.
pub const KERNEL_SOURCE: &str = include_str!("cuda_kernel.cu");

/// Threads per block unless [`CudaEngine::with_block_threads`] says otherwise.
const DEFAULT_THREADS: u32 = 128;
/// Largest per-launch scratch of the global-memory kernel (systems too large for shared memory).
const SCRATCH_BUDGET: usize = 1 << 30;

/// Why the CUDA path could not run.
#[derive(Debug, Error)]
pub enum CudaError {
    /// The NVIDIA driver library is not on this machine.
    #[error("no NVIDIA driver found (libcuda.so could not be loaded): --device cuda needs an NVIDIA GPU with a CUDA 13 driver; use --device cpu here")]
    NoDriver,
    /// NVRTC (the run-time CUDA compiler) is not on this machine.
    #[error("NVRTC (libnvrtc.so.13) could not be loaded: install the CUDA 13 runtime libraries and add their lib folder to LD_LIBRARY_PATH (e.g. /usr/local/cuda-13.0/targets/x86_64-linux/lib)")]
    NoNvrtc,
    /// The driver is there but has no usable GPU.
    #[error("no CUDA device {ordinal}: the driver reports {count} device(s)")]
    NoDevice {
        /// The device asked for.
        ordinal: usize,
        /// Devices the driver sees.
        count: i32,
    },
    /// A driver call failed.
    #[error("CUDA {what} failed: {source}")]
    Driver {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        source: DriverError,
    },
    /// NVRTC rejected the kernel (its log is included).
    #[error("NVRTC could not compile the Ising kernel for {arch} ({options}):\n{log}")]
    Compile {
        /// Target architecture, e.g. `sm_90`.
        arch: String,
        /// The options passed.
        options: String,
        /// NVRTC's log.
        log: String,
    },
    /// The loading of the CUDA libraries panicked (e.g. a driver older than CUDA 13).
    #[error("the CUDA libraries could not be used: {0}; a CUDA 13 driver is needed")]
    Unusable(String),
    /// The inputs are invalid (the same checks as the CPU path), or too large for the kernel.
    #[error(transparent)]
    Input(#[from] IsingError),
}

fn drv<T>(what: &'static str, r: Result<T, DriverError>) -> Result<T, CudaError> {
    r.map_err(|source| CudaError::Driver { what, source })
}

/// Where the compiled kernel came from when the engine started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelOrigin {
    /// Compiled by NVRTC now (and written to the cache when possible).
    Compiled,
    /// Read from the on-disk cache.
    Cached,
}

/// Timings of one GPU swarm computation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwarmTiming {
    /// Wall time of the whole call: host preparation, uploads, kernels, download, attention rows.
    pub seconds: f64,
    /// Time of the kernels alone, from CUDA events.
    pub kernel_seconds: f64,
    /// Threads per block used.
    pub threads_per_block: u32,
    /// Whether the per-thread state lived in shared memory (else in global scratch).
    pub shared_state: bool,
}

/// A CUDA device with the swarm kernels loaded.
#[derive(Debug)]
pub struct CudaEngine {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    shared_fn: CudaFunction,
    global_fn: CudaFunction,
    name: String,
    arch: String,
    max_shared_optin: usize,
    origin: KernelOrigin,
    setup_seconds: f64,
    threads: u32,
}

impl CudaEngine {
    /// Opens device `ordinal`, compiling the kernel or loading it from the cache.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        Self::with_block_threads(ordinal, DEFAULT_THREADS)
    }

    /// [`CudaEngine::new`] with `threads` threads per block of the kernel (a multiple of 32,
    /// 32 to 256; 128 by default), for comparisons.
    pub fn with_block_threads(ordinal: usize, threads: u32) -> Result<Self, CudaError> {
        if !threads.is_multiple_of(32) || !(32..=256).contains(&threads) {
            return Err(CudaError::Unusable(format!(
                "{threads} threads per block: expected a multiple of 32 from 32 to 256"
            )));
        }
        // cudarc panics when a library or symbol is missing; turn that into an error.
        match std::panic::catch_unwind(|| Self::open(ordinal, threads)) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(CudaError::Unusable(msg))
            }
        }
    }

    fn open(ordinal: usize, threads: u32) -> Result<Self, CudaError> {
        let t0 = Instant::now();
        // SAFETY: only tries to dlopen the libraries by name.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        if !kiln_nvrtc::available() {
            return Err(CudaError::NoNvrtc);
        }
        let count = drv("device count", CudaContext::device_count())?;
        if ordinal >= usize::try_from(count).unwrap_or(0) {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let ctx = drv("context creation", CudaContext::new(ordinal))?;
        let stream = ctx.default_stream();
        let name = drv("device name", ctx.name())?;
        let (major, minor) = drv("compute capability", ctx.compute_capability())?;
        let arch = format!("sm_{major}{minor}");
        let max_shared_optin = drv(
            "shared memory limit",
            ctx.attribute(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            ),
        )?;
        let (cubin, origin) = kernel_cubin(&arch)?;
        let module = match ctx.load_module(Ptx::from_binary(cubin)) {
            Ok(m) => m,
            // A damaged cache entry: compile afresh (which also rewrites the entry).
            Err(_) if origin == KernelOrigin::Cached => {
                let cubin = compile_and_store(&arch)?;
                drv("module load", ctx.load_module(Ptx::from_binary(cubin)))?
            }
            Err(e) => {
                return Err(CudaError::Driver {
                    what: "module load",
                    source: e,
                })
            }
        };
        let shared_fn = drv(
            "function lookup",
            module.load_function("swarm_empathy_shared"),
        )?;
        let global_fn = drv(
            "function lookup",
            module.load_function("swarm_empathy_global"),
        )?;
        Ok(Self {
            ctx,
            stream,
            shared_fn,
            global_fn,
            name,
            arch,
            max_shared_optin: usize::try_from(max_shared_optin).unwrap_or(48 * 1024),
            origin,
            setup_seconds: t0.elapsed().as_secs_f64(),
            threads,
        })
    }

    /// The GPU's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// The architecture the kernel was compiled for, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Whether the kernel was compiled now or read from the cache.
    pub fn kernel_origin(&self) -> KernelOrigin {
        self.origin
    }

    /// Seconds spent opening the device and compiling or loading the kernel.
    pub fn setup_seconds(&self) -> f64 {
        self.setup_seconds
    }

    /// All-pairs empathy and attention of a swarm: the same result, bit for bit, as
    /// `batch::swarm_attention(agents, opts, threads)`; `threads` is used for the host-side
    /// preparation only.
    pub fn swarm_attention(
        &self,
        agents: &[IsingSystem],
        opts: &EmpathyOptions,
        threads: usize,
    ) -> Result<(Swarm, SwarmTiming), CudaError> {
        let t0 = Instant::now();
        let k = agents.len();
        let plan = SwarmPlan::new(agents, threads)?;
        let n = agents.first().map_or(1, IsingSystem::n);
        let steps = opts.steps.unwrap_or_else(|| adaptive_steps(n));
        let too_large = |name: &str, value: usize, expected: &str| {
            CudaError::Input(IsingError::InvalidParameter {
                name: name.into(),
                value: value.to_string(),
                expected: expected.into(),
            })
        };
        if steps
            .checked_mul(PROPOSALS_PER_STEP)
            .is_none_or(|p| p > i32::MAX as usize)
        {
            return Err(too_large("steps", steps, "at most 214748364 on the GPU"));
        }
        if k > i32::MAX as usize {
            return Err(too_large("agents", k, "fewer than 2^31 on the GPU"));
        }
        let mut timing = SwarmTiming {
            seconds: 0.0,
            kernel_seconds: 0.0,
            threads_per_block: self.threads,
            shared_state: true,
        };
        if k < 2 {
            timing.seconds = t0.elapsed().as_secs_f64();
            return Ok((finish_swarm(k, vec![0.0; k * k], plan.classes()), timing));
        }

        // Inputs, laid out as the kernel reads them.
        let classes = plan.classes();
        let mut couplings = Vec::with_capacity(classes * n * n);
        for &r in &plan.reps {
            couplings.extend_from_slice(agents[r].couplings());
        }
        let class_of: Vec<u32> = plan.class.iter().map(|&c| c as u32).collect();
        let mut fields = Vec::with_capacity(k * n);
        let mut tspins = Vec::with_capacity(k * n);
        let mut tlocal = Vec::with_capacity(k * n);
        for (a, t) in agents.iter().zip(&plan.targets) {
            fields.extend_from_slice(a.fields());
            tspins.extend_from_slice(a.spins());
            tlocal.extend_from_slice(&t.local);
        }
        let tenergy: Vec<f64> = plan.targets.iter().map(|t| t.energy).collect();
        let tmsum: Vec<f64> = plan.targets.iter().map(|t| t.msum).collect();
        // The table holds what `metropolis` computes at each step; one entry at least, so the
        // buffer is never empty.
        let betas: Vec<f64> = (0..steps.max(1)).map(|t| beta(t, steps.max(1))).collect();
        let floors: Vec<f64> = betas.iter().map(|&b| acceptance_floor(b)).collect();

        let s = &self.stream;
        let up = "upload";
        let d_couplings = drv(up, s.clone_htod(&couplings))?;
        let d_class = drv(up, s.clone_htod(&class_of))?;
        let d_sim = drv(up, s.clone_htod(&plan.sim_table))?;
        let d_fields = drv(up, s.clone_htod(&fields))?;
        let d_tspins = drv(up, s.clone_htod(&tspins))?;
        let d_tlocal = drv(up, s.clone_htod(&tlocal))?;
        let d_tenergy = drv(up, s.clone_htod(&tenergy))?;
        let d_tmsum = drv(up, s.clone_htod(&tmsum))?;
        let d_betas = drv(up, s.clone_htod(&betas))?;
        let d_floors = drv(up, s.clone_htod(&floors))?;
        let mut d_scores = drv("allocation", s.alloc_zeros::<f64>(k * k))?;

        // Shared memory if the block's state fits (halving the block down to one warp), else the
        // global-memory kernel.
        let mut tpb = self.threads;
        let shared_bytes = |t: u32| {
            let t = t as usize;
            8 * (n * (n | 1) + n + n * t) + n + n * t
        };
        while tpb > 32 && shared_bytes(tpb) > self.max_shared_optin {
            tpb /= 2;
        }
        let use_shared = shared_bytes(tpb) <= self.max_shared_optin;
        let (func, smem, per_block_scratch) = if use_shared {
            let bytes = shared_bytes(tpb);
            drv(
                "shared memory attribute",
                self.shared_fn.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                ),
            )?;
            (&self.shared_fn, bytes as u32, 0usize)
        } else {
            tpb = self.threads;
            (&self.global_fn, 0u32, 9 * n * tpb as usize)
        };
        timing.threads_per_block = tpb;
        timing.shared_state = use_shared;
        let blocks_x = k.div_ceil(tpb as usize);
        // Targets per launch: the grid's y limit, and the scratch budget for the global kernel.
        let mut chunk = k.min(65_535);
        if per_block_scratch > 0 {
            chunk = chunk.min((SCRATCH_BUDGET / (per_block_scratch * blocks_x)).max(1));
        }
        let mut d_scratch = drv(
            "allocation",
            s.alloc_zeros::<u8>((per_block_scratch * blocks_x * chunk).max(1)),
        )?;

        let start = drv(
            "event",
            self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)),
        )?;
        let end = drv(
            "event",
            self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)),
        )?;
        drv("event record", start.record(s))?;
        let (k32, n32, steps32) = (k as u32, n as u32, steps as u32);
        let classes32 = classes as u32;
        let w = opts.weights;
        let mut j0 = 0usize;
        while j0 < k {
            let targets = chunk.min(k - j0);
            let cfg = LaunchConfig {
                grid_dim: (blocks_x as u32, targets as u32, 1),
                block_dim: (tpb, 1, 1),
                shared_mem_bytes: smem,
            };
            let j0_32 = j0 as u32;
            let mut l = s.launch_builder(func);
            l.arg(&k32)
                .arg(&n32)
                .arg(&steps32)
                .arg(&opts.seed)
                .arg(&j0_32)
                .arg(&d_couplings)
                .arg(&d_class)
                .arg(&d_sim)
                .arg(&classes32)
                .arg(&d_fields)
                .arg(&d_tspins)
                .arg(&d_tlocal)
                .arg(&d_tenergy)
                .arg(&d_tmsum)
                .arg(&d_betas)
                .arg(&d_floors)
                .arg(&w.overlap)
                .arg(&w.energy)
                .arg(&w.coupling)
                .arg(&w.magnetization)
                .arg(&mut d_scores)
                .arg(&mut d_scratch);
            // SAFETY: the argument list matches KILN_SWARM_PARAMS in cuda_kernel.cu one for one,
            // every buffer has the length the kernel indexes (k, k*n, classes*n*n, classes^2,
            // steps, k*k, and blocks_x * targets * 9 n tpb bytes of scratch), and the dynamic
            // shared memory is what the kernel lays out for tpb threads.
            drv("kernel launch", unsafe { l.launch(cfg) })?;
            j0 += targets;
        }
        drv("event record", end.record(s))?;
        let scores = drv("download", s.clone_dtoh(&d_scores))?;
        drv("synchronize", s.synchronize())?;
        timing.kernel_seconds = f64::from(drv("event timing", start.elapsed_ms(&end))?) / 1e3;
        let swarm = finish_swarm(k, scores, classes);
        timing.seconds = t0.elapsed().as_secs_f64();
        Ok((swarm, timing))
    }
}

/// The options NVRTC compiles with: no multiply-add contraction, so every f64 operation rounds
/// exactly as the CPU's does.
fn compile_options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--fmad=false".into(),
        "--std=c++17".into(),
    ]
}

/// The folder of cached cubins (see [`kiln_nvrtc::cache_dir`]).
pub use kiln_nvrtc::cache_dir;

fn program(arch: &str) -> kiln_nvrtc::Program<'static> {
    kiln_nvrtc::Program {
        source: KERNEL_SOURCE,
        name: "kiln_ising_swarm.cu",
        cache_prefix: "ising-swarm",
        options: compile_options(arch),
    }
}

/// The cubin for `arch`, from the cache when it holds one.
fn kernel_cubin(arch: &str) -> Result<(Vec<u8>, KernelOrigin), CudaError> {
    match program(arch).cached(arch) {
        Some(bytes) => Ok((bytes, KernelOrigin::Cached)),
        None => Ok((compile_and_store(arch)?, KernelOrigin::Compiled)),
    }
}

/// Compiles the kernel and writes it to the cache.
fn compile_and_store(arch: &str) -> Result<Vec<u8>, CudaError> {
    let p = program(arch);
    p.compile_and_store(arch).map_err(|log| CudaError::Compile {
        arch: arch.into(),
        options: p.options.join(" "),
        log,
    })
}
