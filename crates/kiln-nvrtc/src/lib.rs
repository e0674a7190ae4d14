//! Run-time compilation of CUDA C++ with NVRTC for the device's architecture, and the on-disk
//! cache of the resulting cubins, shared by kiln's GPU paths (the language model's backend and
//! the Ising engine).
//!
//! A cubin is cached as `{prefix}-{key:016x}-{arch}.cubin` in [`cache_dir`], where the key is
//! FNV-1a over the source, the options and the NVRTC version, so any change compiles afresh.

use std::ffi::{c_char, CString};
use std::path::PathBuf;

use cudarc::nvrtc::sys as nvrtc_sys;

/// A kernel source and how to compile it.
#[derive(Debug, Clone)]
pub struct Program<'a> {
    /// The CUDA C++ source.
    pub source: &'a str,
    /// File name NVRTC reports in its log.
    pub name: &'a str,
    /// Start of the cache file's name.
    pub cache_prefix: &'a str,
    /// NVRTC options (the architecture among them).
    pub options: Vec<String>,
}

/// The folder of cached cubins: `$KILN_CACHE_DIR/cuda`, else `kiln/cuda` in the user's cache
/// folder (`$XDG_CACHE_HOME` or `~/.cache` on Linux).
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("KILN_CACHE_DIR").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(d).join("cuda"));
    }
    dirs::cache_dir().map(|c| c.join("kiln").join("cuda"))
}

/// Whether NVRTC (libnvrtc) can be loaded on this machine.
pub fn available() -> bool {
    // SAFETY: only tries to dlopen the library by name.
    unsafe { nvrtc_sys::is_culib_present() }
}

fn nvrtc_version() -> (i32, i32) {
    let (mut major, mut minor) = (0, 0);
    if !available() {
        return (major, minor);
    }
    // SAFETY: writes two ints.
    let _ = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    (major, minor)
}

impl Program<'_> {
    /// FNV-1a over the source, the options and the NVRTC version.
    pub fn cache_key(&self) -> u64 {
        let (major, minor) = nvrtc_version();
        let opts = self.options.join(" ");
        let version = format!("nvrtc {major}.{minor}");
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for part in [self.source, opts.as_str(), version.as_str()] {
            for &b in part.as_bytes().iter().chain(&[0u8]) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }

    /// Where the cubin for `arch` is cached.
    pub fn cache_path(&self, arch: &str) -> Option<PathBuf> {
        cache_dir().map(|d| {
            d.join(format!(
                "{}-{:016x}-{arch}.cubin",
                self.cache_prefix,
                self.cache_key()
            ))
        })
    }

    /// The cached cubin for `arch`, if there is a non-empty one.
    pub fn cached(&self, arch: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.cache_path(arch)?).ok()?;
        (!bytes.is_empty()).then_some(bytes)
    }

    /// Compiles and writes the cache (a failure to write is not an error: the cache only saves
    /// the next start's compile time).
    pub fn compile_and_store(&self, arch: &str) -> Result<Vec<u8>, String> {
        let cubin = self.compile()?;
        if let Some(path) = self.cache_path(arch) {
            if let Some(dir) = path.parent() {
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                let _ = std::fs::create_dir_all(dir)
                    .and_then(|()| std::fs::write(&tmp, &cubin))
                    .and_then(|()| std::fs::rename(&tmp, &path));
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok(cubin)
    }

    /// NVRTC: source to cubin. The error is NVRTC's message and log.
    pub fn compile(&self) -> Result<Vec<u8>, String> {
        let src = CString::new(self.source).map_err(|_| "the source holds a NUL byte")?;
        let name = CString::new(self.name).map_err(|_| "the name holds a NUL byte")?;
        let prog = cudarc::nvrtc::result::create_program(&src, Some(&name))
            .map_err(|e| format!("nvrtcCreateProgram: {e}"))?;
        // SAFETY: `prog` is live until destroyed below; buffers have the sizes NVRTC reports.
        let result = unsafe {
            let compiled = cudarc::nvrtc::result::compile_program(prog, &self.options);
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
                Err(e) => Err(format!("{e}\n{log}")),
                Ok(()) => {
                    let mut size = 0usize;
                    let r = nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size);
                    if r.result().is_err() || size == 0 {
                        Err(format!("nvrtcGetCUBINSize: {r:?}"))
                    } else {
                        let mut buf = vec![0u8; size];
                        let r = nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char);
                        match r.result() {
                            Ok(()) => Ok(buf),
                            Err(e) => Err(format!("nvrtcGetCUBIN: {e}")),
                        }
                    }
                }
            }
        };
        // SAFETY: created above, not destroyed yet.
        let _ = unsafe { cudarc::nvrtc::result::destroy_program(prog) };
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_follows_source_and_options() {
        let p = |src, opt: &str| Program {
            source: src,
            name: "t.cu",
            cache_prefix: "t",
            options: vec![opt.into()],
        };
        assert_eq!(p("a", "x").cache_key(), p("a", "x").cache_key());
        assert_ne!(p("a", "x").cache_key(), p("b", "x").cache_key());
        assert_ne!(p("a", "x").cache_key(), p("a", "y").cache_key());
    }
}
