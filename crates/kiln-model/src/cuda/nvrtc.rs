//! Run-time compilation of `kernels.cu` with NVRTC, with an on-disk cubin cache.

use std::ffi::{c_char, CString};
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::{sys as nvrtc_sys, Ptx};

use crate::ModelError;

/// The kernel source, compiled at run time.
pub const SOURCE: &str = include_str!("kernels.cu");

fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "-DINFINITY=__int_as_float(0x7f800000)".into(),
    ]
}

/// `$KILN_CACHE_DIR/cuda`, else `$XDG_CACHE_HOME/kiln/cuda`, else `~/.cache/kiln/cuda`.
fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env("KILN_CACHE_DIR") {
        return Some(d.join("cuda"));
    }
    if let Some(d) = env("XDG_CACHE_HOME") {
        return Some(d.join("kiln").join("cuda"));
    }
    env("HOME").map(|h| h.join(".cache").join("kiln").join("cuda"))
}

/// FNV-1a over the source, the options and the NVRTC version.
fn cache_key(arch: &str) -> u64 {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes two ints.
    let _ = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    let opts = options(arch).join(" ");
    let version = format!("nvrtc {major}.{minor}");
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in [SOURCE, opts.as_str(), version.as_str()] {
        for &b in part.as_bytes().iter().chain(&[0u8]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The kernels loaded on `ctx`, compiled for `arch` or read from the cache.
pub fn load(ctx: &Arc<CudaContext>, arch: &str) -> Result<Arc<CudaModule>, ModelError> {
    let path = cache_dir().map(|d| d.join(format!("lm-{:016x}-{arch}.cubin", cache_key(arch))));
    if let Some(bytes) = path.as_ref().and_then(|p| std::fs::read(p).ok()) {
        if let Ok(m) = ctx.load_module(Ptx::from_binary(bytes)) {
            return Ok(m);
        }
    }
    let cubin = compile(arch)?;
    if let Some(path) = &path {
        if let Some(dir) = path.parent() {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let _ = std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&tmp, &cubin))
                .and_then(|()| std::fs::rename(&tmp, path));
            let _ = std::fs::remove_file(&tmp);
        }
    }
    ctx.load_module(Ptx::from_binary(cubin))
        .map_err(|e| ModelError::Device(format!("loading the kernels: {e}")))
}

fn compile(arch: &str) -> Result<Vec<u8>, ModelError> {
    let opts = options(arch);
    let fail = |log: String| {
        ModelError::Device(format!(
            "NVRTC could not compile the kernels for {arch} ({}):\n{log}",
            opts.join(" ")
        ))
    };
    let src = CString::new(SOURCE).map_err(|_| fail("the source holds a NUL byte".into()))?;
    let name = CString::new("kiln_lm.cu").map_err(|_| fail("bad name".into()))?;
    let prog = cudarc::nvrtc::result::create_program(&src, Some(&name))
        .map_err(|e| fail(format!("nvrtcCreateProgram: {e}")))?;
    // SAFETY: `prog` is live until destroyed below; buffers have the sizes NVRTC reports.
    let result = unsafe {
        let compiled = cudarc::nvrtc::result::compile_program(prog, &opts);
        let log = cudarc::nvrtc::result::get_program_log(prog)
            .map(|l| {
                let bytes: Vec<u8> = l
                    .iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| c as u8)
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        match compiled {
            Err(e) => Err(fail(format!("{e}\n{log}"))),
            Ok(()) => {
                let mut size = 0usize;
                let r = nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size);
                if r.result().is_err() || size == 0 {
                    Err(fail(format!("nvrtcGetCUBINSize: {r:?}")))
                } else {
                    let mut buf = vec![0u8; size];
                    let r = nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char);
                    match r.result() {
                        Ok(()) => Ok(buf),
                        Err(e) => Err(fail(format!("nvrtcGetCUBIN: {e}"))),
                    }
                }
            }
        }
    };
    // SAFETY: created above, not destroyed yet.
    let _ = unsafe { cudarc::nvrtc::result::destroy_program(prog) };
    result
}
