use std::path::PathBuf;

/// Everything that can be wrong with a GGUF file, naming the file and the part at fault.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// File at fault.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not GGUF or is damaged; `what` says where and how.
    #[error("{path}: not a valid GGUF file: {what}")]
    Malformed {
        /// File at fault.
        path: PathBuf,
        /// What is wrong, with the offset or key concerned.
        what: String,
    },
    /// A metadata key the caller needs is absent.
    #[error("{path}: metadata key `{key}` is missing")]
    MissingKey {
        /// File at fault.
        path: PathBuf,
        /// The key looked for.
        key: String,
    },
    /// A metadata key has another type than expected.
    #[error("{path}: metadata key `{key}` is {found}, expected {expected}")]
    WrongType {
        /// File at fault.
        path: PathBuf,
        /// The key.
        key: String,
        /// The type found.
        found: String,
        /// The type wanted.
        expected: &'static str,
    },
    /// A tensor the caller needs is absent.
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor {
        /// File at fault.
        path: PathBuf,
        /// Tensor name.
        name: String,
    },
    /// A tensor uses a block format kiln cannot decode.
    #[error("{path}: tensor `{name}` uses type {ty}, which kiln cannot decode (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)")]
    Unsupported {
        /// File at fault.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// The type's name.
        ty: String,
    },
}
