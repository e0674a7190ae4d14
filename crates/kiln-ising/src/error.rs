//! Typed errors: each names the field that is wrong and what was expected.

use thiserror::Error;

/// Everything that can go wrong when building systems or asking for empathy.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum IsingError {
    /// A system needs at least one spin.
    #[error("{field}: n = 0, a system needs at least one spin")]
    Empty {
        /// Which input was empty.
        field: String,
    },
    /// A size over the documented limit.
    #[error("{field} = {got} is over the limit of {max}")]
    TooLarge {
        /// Which input is too large.
        field: String,
        /// The size given.
        got: usize,
        /// The largest size accepted.
        max: usize,
    },
    /// A coupling matrix that is not n x n, or a vector of the wrong length.
    #[error("{field} has length {got}, expected {expected}")]
    WrongLength {
        /// Which input has the wrong length (e.g. `couplings[3]`).
        field: String,
        /// The length given.
        got: usize,
        /// The length expected.
        expected: usize,
    },
    /// Couplings must be symmetric.
    #[error("{field} are not symmetric: J[{i}][{j}] = {a} but J[{j}][{i}] = {b}; expected J[i][j] == J[j][i]")]
    Asymmetric {
        /// Which input.
        field: String,
        /// Row of the first entry.
        i: usize,
        /// Column of the first entry.
        j: usize,
        /// `J[i][j]`.
        a: f64,
        /// `J[j][i]`.
        b: f64,
    },
    /// Couplings must have a zero diagonal (a spin does not couple to itself).
    #[error("{field}: J[{i}][{i}] = {value}, expected 0 on the diagonal")]
    NonZeroDiagonal {
        /// Which input.
        field: String,
        /// Index on the diagonal.
        i: usize,
        /// The value found.
        value: f64,
    },
    /// NaN or infinity where a finite number is needed.
    #[error("{field} is {value}, expected a finite number")]
    NotFinite {
        /// Which input, with its index.
        field: String,
        /// The value found.
        value: f64,
    },
    /// A spin that is not -1 or +1.
    #[error("{field} is {value}, expected -1 or +1")]
    BadSpin {
        /// Which spin, with its index.
        field: String,
        /// The value found.
        value: f64,
    },
    /// Two systems that must have the same number of spins do not.
    #[error("{what} needs systems of equal size, got n = {a} and n = {b}")]
    SizeMismatch {
        /// The operation that needs equal sizes.
        what: &'static str,
        /// Size of the first system.
        a: usize,
        /// Size of the second system.
        b: usize,
    },
    /// A weight preset name that does not exist.
    #[error("unknown weight preset '{name}', expected one of: balanced, coupling")]
    UnknownPreset {
        /// The name given.
        name: String,
    },
    /// A parameter outside its valid range.
    #[error("{name} = {value}, expected {expected}")]
    InvalidParameter {
        /// The parameter's name.
        name: String,
        /// The value given, as text.
        value: String,
        /// What would have been accepted.
        expected: String,
    },
    /// A required field is missing from a request.
    #[error("{field} is missing: {expected}")]
    Missing {
        /// The missing field.
        field: String,
        /// What to supply.
        expected: String,
    },
}

impl IsingError {
    /// The same error with `prefix.` put in front of the field name (e.g. `agents[2].`).
    pub fn in_field(self, prefix: &str) -> Self {
        let p = |f: String| format!("{prefix}.{f}");
        match self {
            Self::Empty { field } => Self::Empty { field: p(field) },
            Self::TooLarge { field, got, max } => Self::TooLarge {
                field: p(field),
                got,
                max,
            },
            Self::WrongLength {
                field,
                got,
                expected,
            } => Self::WrongLength {
                field: p(field),
                got,
                expected,
            },
            Self::Asymmetric { field, i, j, a, b } => Self::Asymmetric {
                field: p(field),
                i,
                j,
                a,
                b,
            },
            Self::NonZeroDiagonal { field, i, value } => Self::NonZeroDiagonal {
                field: p(field),
                i,
                value,
            },
            Self::NotFinite { field, value } => Self::NotFinite {
                field: p(field),
                value,
            },
            Self::BadSpin { field, value } => Self::BadSpin {
                field: p(field),
                value,
            },
            Self::Missing { field, expected } => Self::Missing {
                field: p(field),
                expected,
            },
            Self::InvalidParameter {
                name,
                value,
                expected,
            } => Self::InvalidParameter {
                name: p(name),
                value,
                expected,
            },
            other => other,
        }
    }
}

/// Result with the engine's error type.
pub type Result<T> = std::result::Result<T, IsingError>;
