//! The kernels of `kernels/*.cu`, compiled by NVRTC for the device or read from the cubin cache
//! (`kiln_nvrtc`).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::Ptx;

use kiln_model::ModelError;

/// The kernel source, compiled at run time as one program: the files of `kernels/` by
/// operation, in this order (each may use what the files before it define; `prelude.cu` holds
/// the shared helpers, `sample.cu` the sampling kernels).
pub const SOURCE: &str = concat!(
    include_str!("kernels/prelude.cu"),
    include_str!("kernels/elementwise.cu"),
    include_str!("kernels/matvec.cu"),
    include_str!("kernels/rope_kv.cu"),
    include_str!("kernels/attention.cu"),
    include_str!("kernels/matvec_rows.cu"),
    include_str!("kernels/attention_mma.cu"),
    include_str!("kernels/argmax.cu"),
    include_str!("kernels/quant.cu"),
    include_str!("kernels/sample.cu"),
);

fn program(arch: &str) -> kiln_nvrtc::Program<'static> {
    kiln_nvrtc::Program {
        source: SOURCE,
        name: "kiln_lm.cu",
        cache_prefix: "lm",
        options: vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".into(),
            "-DINFINITY=__int_as_float(0x7f800000)".into(),
        ],
    }
}

/// The kernels loaded on `ctx`, compiled for `arch` or read from the cache.
pub fn load(ctx: &Arc<CudaContext>, arch: &str) -> Result<Arc<CudaModule>, ModelError> {
    let p = program(arch);
    if let Some(bytes) = p.cached(arch) {
        if let Ok(m) = ctx.load_module(Ptx::from_binary(bytes)) {
            return Ok(m);
        }
    }
    let cubin = p.compile_and_store(arch).map_err(|log| {
        ModelError::Device(format!(
            "NVRTC could not compile the kernels for {arch} ({}):\n{log}",
            p.options.join(" ")
        ))
    })?;
    ctx.load_module(Ptx::from_binary(cubin))
        .map_err(|e| ModelError::Device(format!("loading the kernels: {e}")))
}
