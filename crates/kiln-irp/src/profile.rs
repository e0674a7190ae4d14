//! Refinement profiles: flat `key: value` YAML files that users copy and edit.
//!
//! Three profiles are built in (`edge`, `desktop`, `research`; the files are `profiles/*.yaml` at
//! the repository root). A profile file may set any subset of the keys; the rest take the
//! `desktop` values. Unknown keys and out-of-range values are errors that name the key and the
//! file; a file that is not flat `key: value` YAML is an error that names the line.
//!
//! A file is read into [`ProfileFile`] (every key optional) by serde with `serde-saphyr`, in
//! two passes over the text: the first checks the shape (one mapping of plain keys to single
//! values, no key twice) and notes where each key is, the second reads the typed values; then
//! [`ProfileFile::check`] checks each value's range and [`Profile::check`] the keys together.
//!
//! Why `serde-saphyr`: `serde_yaml` is archived, `serde_yml` has had soundness advisories, and
//! `serde_norway` (the maintained fork of `serde_yaml`) parses with `unsafe-libyaml`, a
//! machine translation of libyaml's C into unsafe Rust, and had its last release in December
//! 2024. `serde-saphyr` is safe Rust (`forbid(unsafe_code)`, its parser too), released
//! regularly (2.2.0 in November 2026), refuses duplicate keys by default, and its errors carry
//! their kind and position, so that ours can name the key, the value and the line. It costs
//! more crates than `serde_norway` (ten new to the build against three), and needs Rust 1.89.

use std::path::Path;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::{MessageFormatter, Spanned};

/// The `desktop` profile, which also supplies the defaults of every other profile.
pub const DESKTOP_YAML: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../profiles/desktop.yaml"
));
/// The `edge` profile.
pub const EDGE_YAML: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../profiles/edge.yaml"
));
/// The `research` profile.
pub const RESEARCH_YAML: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../profiles/research.yaml"
));

/// Which energy function scores candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergyKind {
    /// The seed's formula (rewards low temperature and ~50 words); kept to reproduce its tables.
    Heuristic,
    /// Mean token surprisal under the model plus repetition, truncation and length penalties.
    Model,
}

/// How candidates relate to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every candidate answers the question afresh; all are decoded as one batch.
    Independent,
    /// Each candidate sees the best answer so far and is asked to improve it.
    Refine,
}

/// Where the model should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// The CPU backend.
    Cpu,
    /// A CUDA GPU (`gpu` is read as `cuda`).
    #[serde(alias = "gpu")]
    Cuda,
    /// The best one this build has.
    Auto,
}

/// Every setting of a refinement run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    /// The profile's name (`edge`, `desktop`, `research`) or the file it came from.
    pub name: String,
    /// Most candidates (the `budget` halting rule).
    pub iterations: usize,
    /// Temperature of the first candidate.
    pub initial_temperature: f32,
    /// The temperature floor (the `temperature_floor` halting rule).
    pub min_temperature: f32,
    /// How much the temperature drops per candidate.
    pub temp_reduction: f32,
    /// Tokens per candidate.
    pub max_tokens: usize,
    /// Halt (`converged`) when the best energy is below this.
    pub energy_convergence_threshold: f64,
    /// How many recent energies the `plateau` rule looks at.
    pub energy_plateau_window: usize,
    /// How close those energies must be for a plateau.
    pub energy_plateau_delta: f64,
    /// The energy function.
    pub energy: EnergyKind,
    /// Independent candidates (batched) or self-refinement (sequential).
    pub mode: Mode,
    /// Weight of the normalised surprisal in the model energy.
    pub energy_weight_surprisal: f64,
    /// Weight of the repeated 3-gram share in the model energy.
    pub energy_weight_repetition: f64,
    /// Weight of the cut-off penalty in the model energy.
    pub energy_weight_truncation: f64,
    /// Weight of the length penalty in the model energy.
    pub energy_weight_length: f64,
    /// Nats of mean surprisal that map to 1 - 1/e in the normalised term.
    pub surprisal_scale: f64,
    /// The answer length (in words) the length penalty aims at.
    pub target_words: usize,
    /// Seed of candidate 0; candidate i uses `seed + i`.
    pub seed: u64,
    /// Top-k sampling of the candidates (0: all tokens).
    pub top_k: usize,
    /// Nucleus sampling of the candidates.
    pub top_p: f32,
    /// An exchange is salient when its SNARC total is at least this.
    pub salience_threshold: f64,
    /// Earlier exchanges kept as context in `kiln chat --refine`.
    pub history_exchanges: usize,
    /// Keep the model loaded between runs: always true (kiln keeps it for the whole
    /// process); `false` is refused.
    pub model_keep_alive: bool,
    /// Memory budget for weights, activations and the KV cache, in MiB.
    pub max_memory_mb: usize,
    /// Where to run.
    pub device: Device,
    /// Weight precision: only `auto` (the model file's own) is accepted.
    pub precision: String,
    /// Record the hottest thermal zone before and after each run.
    pub enable_thermal_monitoring: bool,
    /// Speculative decoding of every candidate with the engine's draft model (`kiln --draft`):
    /// most tokens proposed a step, 0 to 16 (0: off). Candidates keep their own tokens.
    pub draft_max: usize,
}

/// A profile that cannot be used; every variant names the file (or request field) and the key.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Not a built-in name and not a readable file.
    #[error(
        "cannot read the profile {file}: {source} (built-in profiles: edge, desktop, research)"
    )]
    Io {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// Text that is not flat `key: value` YAML.
    #[error("{file}: line {line}: {what}")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A key kiln does not know.
    #[error("{file}: unknown key `{key}`; known keys: {known}")]
    UnknownKey {
        /// The file.
        file: String,
        /// The key.
        key: String,
        /// Every known key.
        known: String,
    },
    /// A key given twice.
    #[error("{file}: key `{key}` is given twice")]
    Duplicate {
        /// The file.
        file: String,
        /// The key.
        key: String,
    },
    /// A value of the wrong type or out of range.
    #[error("{file}: `{key}` is `{value}`; expected {expected}")]
    Value {
        /// The file.
        file: String,
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// What is accepted.
        expected: String,
    },
}

/// The keys a profile file may set, each optional: a key left out keeps the value of the
/// profile the file is applied to (the `desktop` profile, for a file named by `--profile`).
/// The fields are those of [`Profile`], less `name`; numbers are read as `f64` and checked
/// before they are narrowed.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    /// [`Profile::iterations`].
    pub iterations: Option<usize>,
    /// [`Profile::initial_temperature`].
    pub initial_temperature: Option<f64>,
    /// [`Profile::min_temperature`].
    pub min_temperature: Option<f64>,
    /// [`Profile::temp_reduction`].
    pub temp_reduction: Option<f64>,
    /// [`Profile::max_tokens`].
    pub max_tokens: Option<usize>,
    /// [`Profile::energy_convergence_threshold`].
    pub energy_convergence_threshold: Option<f64>,
    /// [`Profile::energy_plateau_window`].
    pub energy_plateau_window: Option<usize>,
    /// [`Profile::energy_plateau_delta`].
    pub energy_plateau_delta: Option<f64>,
    /// [`Profile::energy`].
    pub energy: Option<EnergyKind>,
    /// [`Profile::mode`].
    pub mode: Option<Mode>,
    /// [`Profile::energy_weight_surprisal`].
    pub energy_weight_surprisal: Option<f64>,
    /// [`Profile::energy_weight_repetition`].
    pub energy_weight_repetition: Option<f64>,
    /// [`Profile::energy_weight_truncation`].
    pub energy_weight_truncation: Option<f64>,
    /// [`Profile::energy_weight_length`].
    pub energy_weight_length: Option<f64>,
    /// [`Profile::surprisal_scale`].
    pub surprisal_scale: Option<f64>,
    /// [`Profile::target_words`].
    pub target_words: Option<usize>,
    /// [`Profile::seed`].
    pub seed: Option<u64>,
    /// [`Profile::top_k`].
    pub top_k: Option<usize>,
    /// [`Profile::top_p`].
    pub top_p: Option<f64>,
    /// [`Profile::salience_threshold`].
    pub salience_threshold: Option<f64>,
    /// [`Profile::history_exchanges`].
    pub history_exchanges: Option<usize>,
    /// [`Profile::model_keep_alive`].
    pub model_keep_alive: Option<bool>,
    /// [`Profile::max_memory_mb`].
    pub max_memory_mb: Option<usize>,
    /// [`Profile::device`].
    pub device: Option<Device>,
    /// [`Profile::precision`].
    pub precision: Option<String>,
    /// [`Profile::enable_thermal_monitoring`].
    pub enable_thermal_monitoring: Option<bool>,
    /// [`Profile::draft_max`].
    pub draft_max: Option<usize>,
}

/// What one key accepts: the range [`ProfileFile::check`] holds it to, and the words of its
/// errors (of the wrong type or out of range).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    /// An integer from `lo` to `hi`.
    Int(u64, u64),
    /// A finite number from `lo` to `hi`; `lo` itself excluded when `open`.
    Real { lo: f64, hi: f64, open: bool },
    /// `true` or `false`.
    Bool,
    /// One of a few words, or one value only: what is accepted, in words.
    Words(&'static str),
}

impl Rule {
    const fn real(lo: f64, hi: f64) -> Rule {
        Rule::Real {
            lo,
            hi,
            open: false,
        }
    }

    const fn above(lo: f64, hi: f64) -> Rule {
        Rule::Real { lo, hi, open: true }
    }

    /// The rule of `key`; `None` for a key that is not a profile's.
    fn of(key: &str) -> Option<Rule> {
        Some(match key {
            "iterations" => Rule::Int(1, 64),
            "initial_temperature" => Rule::above(0.0, 2.0),
            "min_temperature" => Rule::real(0.0, 2.0),
            "temp_reduction" => Rule::real(0.0, 1.0),
            "max_tokens" => Rule::Int(1, 4096),
            "energy_convergence_threshold" => Rule::real(0.0, 1.0),
            "energy_plateau_window" => Rule::Int(2, 64),
            "energy_plateau_delta" => Rule::real(0.0, 1.0),
            "energy" => Rule::Words("model or heuristic"),
            "mode" => Rule::Words("independent or refine"),
            "energy_weight_surprisal"
            | "energy_weight_repetition"
            | "energy_weight_truncation"
            | "energy_weight_length" => Rule::real(0.0, 10.0),
            "surprisal_scale" => Rule::above(0.0, 20.0),
            "target_words" => Rule::Int(1, 2000),
            "seed" => Rule::Int(0, u64::MAX),
            "top_k" => Rule::Int(0, 1 << 20),
            "top_p" => Rule::above(0.0, 1.0),
            "salience_threshold" => Rule::real(0.0, 1.0),
            "history_exchanges" => Rule::Int(0, 64),
            // kiln keeps the model loaded for the whole process; `false` would ask for
            // something it does not do.
            "model_keep_alive" => Rule::Words(
                "true (kiln keeps the model loaded for the whole process; unloading between runs is not implemented)",
            ),
            "max_memory_mb" => Rule::Int(64, 1 << 20),
            "device" => Rule::Words("cpu, cuda or auto"),
            // Profiles do not convert weights; a precision other than the file's own would
            // be a promise kiln does not keep.
            "precision" => Rule::Words(
                "auto (kiln runs the model file's own format; convert the model to change it)",
            ),
            "enable_thermal_monitoring" => Rule::Bool,
            "draft_max" => Rule::Int(0, kiln_engine::sampling::MAX_PROMPT_LOOKUP as u64),
            _ => return None,
        })
    }

    /// What is accepted, in words.
    fn expected(self) -> String {
        match self {
            Rule::Int(lo, hi) => format!("an integer from {lo} to {hi}"),
            Rule::Real { lo, hi, open } => {
                format!("a number in {}{lo}, {hi}]", if open { "(" } else { "[" })
            }
            Rule::Bool => "true or false".into(),
            Rule::Words(w) => w.into(),
        }
    }
}

/// The error for `key` holding `value` (as written, or as read when it is out of range).
fn bad_value(file: &str, key: &str, value: impl std::fmt::Display) -> ProfileError {
    ProfileError::Value {
        file: file.to_owned(),
        key: key.to_owned(),
        value: value.to_string(),
        expected: Rule::of(key).map_or_else(|| "a value".into(), Rule::expected),
    }
}

impl ProfileFile {
    /// Reads a profile document (flat `key: value` YAML from `file`) and checks the range of
    /// every value it gives.
    pub fn from_yaml(text: &str, file: &str) -> Result<ProfileFile, ProfileError> {
        let entries = scan(text, file)?;
        // A value's error points at the value: it belongs to the last key before it.
        let owner = |at: (u64, u64)| {
            entries
                .iter()
                .rev()
                .find(|e| e.at <= at)
                .map(|e| (e.key.as_str(), e.written.as_str()))
        };
        Self::typed(text, file, owner)
    }

    /// One key set from its text, as `--set KEY=VALUE` and the server's `refine` object give
    /// it: the text is read as a YAML scalar would be (`3`, `0.5`, `true`, `refine`), and
    /// checked.
    pub fn from_setting(key: &str, value: &str, file: &str) -> Result<ProfileFile, ProfileError> {
        // Both quoted as JSON strings, which YAML reads as double-quoted scalars: the text
        // cannot be taken for YAML syntax, and serde-saphyr reads a quoted `3` as a number
        // where the field is one.
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let doc = format!("{}: {}", quote(key), quote(value));
        Self::typed(&doc, file, |_| Some((key, value)))
    }

    /// The typed read; `owner` names the key, and the value as written, at an error's
    /// (line, column).
    fn typed<'a>(
        text: &str,
        file: &str,
        owner: impl Fn((u64, u64)) -> Option<(&'a str, &'a str)>,
    ) -> Result<ProfileFile, ProfileError> {
        let read = serde_saphyr::from_str_with_options::<Option<ProfileFile>>(text, options())
            .map_err(|e| {
                let e = e.without_snippet();
                if let serde_saphyr::Error::SerdeUnknownField {
                    field, expected, ..
                } = e
                {
                    return ProfileError::UnknownKey {
                        file: file.to_owned(),
                        key: field.clone(),
                        known: expected.join(", "),
                    };
                }
                match e.location().and_then(|l| owner((l.line(), l.column()))) {
                    Some((key, value)) => bad_value(file, key, value),
                    None => syntax(file, e),
                }
            })?;
        let f = read.unwrap_or_default();
        f.check(file)?;
        Ok(f)
    }

    /// Checks the range of every value given (the checks of one key; [`Profile::check`] has
    /// those that involve several).
    pub fn check(&self, file: &str) -> Result<(), ProfileError> {
        let int = |key: &str, v: Option<u64>| match (v, Rule::of(key)) {
            (Some(v), Some(Rule::Int(lo, hi))) if !(lo..=hi).contains(&v) => {
                Err(bad_value(file, key, v))
            }
            _ => Ok(()),
        };
        let real = |key: &str, v: Option<f64>| match (v, Rule::of(key)) {
            (Some(v), Some(Rule::Real { lo, hi, open }))
                if !(v.is_finite() && (if open { v > lo } else { v >= lo }) && v <= hi) =>
            {
                Err(bad_value(file, key, v))
            }
            _ => Ok(()),
        };
        // Every field named, as `Profile::apply` takes them: a new one is a compile error
        // here until its rule is checked (or it is said to need none).
        let ProfileFile {
            iterations,
            initial_temperature,
            min_temperature,
            temp_reduction,
            max_tokens,
            energy_convergence_threshold,
            energy_plateau_window,
            energy_plateau_delta,
            energy: _,
            mode: _,
            energy_weight_surprisal,
            energy_weight_repetition,
            energy_weight_truncation,
            energy_weight_length,
            surprisal_scale,
            target_words,
            seed,
            top_k,
            top_p,
            salience_threshold,
            history_exchanges,
            model_keep_alive,
            max_memory_mb,
            device: _,
            precision,
            enable_thermal_monitoring: _,
            draft_max,
        } = self;
        let n = |v: &Option<usize>| v.map(|v| v as u64);
        int("iterations", n(iterations))?;
        real("initial_temperature", *initial_temperature)?;
        real("min_temperature", *min_temperature)?;
        real("temp_reduction", *temp_reduction)?;
        int("max_tokens", n(max_tokens))?;
        real(
            "energy_convergence_threshold",
            *energy_convergence_threshold,
        )?;
        int("energy_plateau_window", n(energy_plateau_window))?;
        real("energy_plateau_delta", *energy_plateau_delta)?;
        real("energy_weight_surprisal", *energy_weight_surprisal)?;
        real("energy_weight_repetition", *energy_weight_repetition)?;
        real("energy_weight_truncation", *energy_weight_truncation)?;
        real("energy_weight_length", *energy_weight_length)?;
        real("surprisal_scale", *surprisal_scale)?;
        int("target_words", n(target_words))?;
        int("seed", *seed)?;
        int("top_k", n(top_k))?;
        real("top_p", *top_p)?;
        real("salience_threshold", *salience_threshold)?;
        int("history_exchanges", n(history_exchanges))?;
        int("max_memory_mb", n(max_memory_mb))?;
        int("draft_max", n(draft_max))?;
        if *model_keep_alive == Some(false) {
            return Err(bad_value(file, "model_keep_alive", false));
        }
        match precision {
            Some(p) if p != "auto" => Err(bad_value(file, "precision", p)),
            _ => Ok(()),
        }
    }
}

/// One `key: value` entry of a profile document.
struct Entry {
    key: String,
    /// The key's (line, column).
    at: (u64, u64),
    /// The value as written (without its quotes).
    written: String,
}

/// An entry's value, as the first pass sees it.
enum Node {
    Scalar,
    Null,
    /// A list or a map.
    Nested,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i128<E>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u128<E>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Node, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Node::Nested)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Node, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Node::Nested)
            }
        }
        d.deserialize_any(V)
    }
}

/// The entries of a document, in order, with where each key and value is.
struct Entries(Vec<(Spanned<String>, Spanned<Node>)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`key: value` lines")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = m.next_key::<Spanned<String>>()? {
                    out.push((key, m.next_value::<Spanned<Node>>()?));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The first pass: the document is one mapping of keys (lowercase letters, digits and `_`)
/// to single values, each key once (serde-saphyr refuses a duplicate key by default).
fn scan(text: &str, file: &str) -> Result<Vec<Entry>, ProfileError> {
    let mut opts = options();
    // `.nan` and `.inf` are values here, to be refused by name in the second pass.
    opts.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::PassThrough;
    let entries = serde_saphyr::from_str_with_options::<Option<Entries>>(text, opts)
        .map_err(|e| match e.without_snippet() {
            serde_saphyr::Error::DuplicateMappingKey { key: Some(key), .. } => {
                ProfileError::Duplicate {
                    file: file.to_owned(),
                    key: key.clone(),
                }
            }
            other => syntax(file, other),
        })?
        .map_or_else(Vec::new, |e| e.0);
    let mut out = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let at = (key.referenced.line(), key.referenced.column());
        let key = key.value;
        let err = |what: String| ProfileError::Syntax {
            file: file.to_owned(),
            line: at.0 as usize,
            what,
        };
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(err(format!(
                "`{}` is not a key (lowercase letters, digits and `_`)",
                key.escape_debug()
            )));
        }
        match value.value {
            Node::Scalar => {}
            Node::Null => return Err(err(format!("`{key}` has no value"))),
            Node::Nested => {
                return Err(err(format!(
                "`{key}` holds a list or a map: profiles are flat `key: value` lines (no nesting)"
            )))
            }
        }
        let span = value.referenced.span();
        let written = span
            .byte_offset()
            .zip(span.byte_len())
            .and_then(|(at, len)| text.get(at as usize..(at + len) as usize))
            .map(unquote)
            .unwrap_or_default()
            .to_owned();
        out.push(Entry { key, at, written });
    }
    Ok(out)
}

/// How profiles are read: a key given twice is an error, `yes`/`no`/`on`/`off` are booleans
/// (as kiln has always read them; both serde-saphyr's defaults, set here so that a
/// change of default cannot loosen them), and errors come without the source excerpt: ours
/// name the file and the line.
fn options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    o.strict_booleans = false;
    o.with_snippet = false;
    o
}

/// A value as written, without the quotes around it.
fn unquote(v: &str) -> &str {
    let v = v.trim();
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

/// A YAML error that is not about one value: it names the line, in serde-saphyr's words for
/// users.
fn syntax(file: &str, e: &serde_saphyr::Error) -> ProfileError {
    let what = serde_saphyr::UserMessageFormatter
        .format_message(e)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    ProfileError::Syntax {
        file: file.to_owned(),
        line: e.location().map_or(1, |l| l.line().max(1) as usize),
        what,
    }
}

impl Default for Profile {
    fn default() -> Self {
        // The embedded file is checked by the tests; a failure here is a build defect.
        let mut p = Self::bare()
            .with_yaml(DESKTOP_YAML, "profiles/desktop.yaml")
            .unwrap_or_else(|e| panic!("the embedded desktop profile: {e}"));
        p.name = "desktop".into();
        p
    }
}

impl Profile {
    /// The built-in profile `name` (`edge`, `desktop` or `research`), if there is one.
    pub fn builtin(name: &str) -> Option<Result<Profile, ProfileError>> {
        let text = match name {
            "edge" => EDGE_YAML,
            "desktop" => return Some(Ok(Profile::default())),
            "research" => RESEARCH_YAML,
            _ => return None,
        };
        let file = format!("profiles/{name}.yaml");
        Some(Profile::default().with_yaml(text, &file).map(|mut p| {
            p.name = name.to_owned();
            p
        }))
    }

    /// A built-in profile by name, or a YAML file by path.
    pub fn load(spec: &str) -> Result<Profile, ProfileError> {
        if let Some(p) = Self::builtin(spec) {
            return p;
        }
        Self::from_file(Path::new(spec))
    }

    /// Reads a profile file; missing keys take the `desktop` values.
    pub fn from_file(path: &Path) -> Result<Profile, ProfileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            file: file.clone(),
            source,
        })?;
        let mut p = Profile::default().with_yaml(&text, &file)?;
        p.name = file;
        Ok(p)
    }

    /// This profile with the keys of `text` (flat YAML from `file`) applied, then checked.
    pub fn with_yaml(mut self, text: &str, file: &str) -> Result<Profile, ProfileError> {
        self.apply(ProfileFile::from_yaml(text, file)?);
        self.check(file)?;
        Ok(self)
    }

    /// Sets one key from its text; `file` names the source in errors. Call [`Profile::check`]
    /// after the last key for the checks that involve several keys.
    pub fn set(&mut self, key: &str, value: &str, file: &str) -> Result<(), ProfileError> {
        self.apply(ProfileFile::from_setting(key, value, file)?);
        Ok(())
    }

    /// Takes every value `f` gives (checked by [`ProfileFile::check`]).
    pub fn apply(&mut self, f: ProfileFile) {
        let ProfileFile {
            iterations,
            initial_temperature,
            min_temperature,
            temp_reduction,
            max_tokens,
            energy_convergence_threshold,
            energy_plateau_window,
            energy_plateau_delta,
            energy,
            mode,
            energy_weight_surprisal,
            energy_weight_repetition,
            energy_weight_truncation,
            energy_weight_length,
            surprisal_scale,
            target_words,
            seed,
            top_k,
            top_p,
            salience_threshold,
            history_exchanges,
            model_keep_alive,
            max_memory_mb,
            device,
            precision,
            enable_thermal_monitoring,
            draft_max,
        } = f;
        fn take<T>(to: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *to = v;
            }
        }
        let narrow = |v: Option<f64>| v.map(|v| v as f32);
        take(&mut self.iterations, iterations);
        take(&mut self.initial_temperature, narrow(initial_temperature));
        take(&mut self.min_temperature, narrow(min_temperature));
        take(&mut self.temp_reduction, narrow(temp_reduction));
        take(&mut self.max_tokens, max_tokens);
        take(
            &mut self.energy_convergence_threshold,
            energy_convergence_threshold,
        );
        take(&mut self.energy_plateau_window, energy_plateau_window);
        take(&mut self.energy_plateau_delta, energy_plateau_delta);
        take(&mut self.energy, energy);
        take(&mut self.mode, mode);
        take(&mut self.energy_weight_surprisal, energy_weight_surprisal);
        take(&mut self.energy_weight_repetition, energy_weight_repetition);
        take(&mut self.energy_weight_truncation, energy_weight_truncation);
        take(&mut self.energy_weight_length, energy_weight_length);
        take(&mut self.surprisal_scale, surprisal_scale);
        take(&mut self.target_words, target_words);
        take(&mut self.seed, seed);
        take(&mut self.top_k, top_k);
        take(&mut self.top_p, narrow(top_p));
        take(&mut self.salience_threshold, salience_threshold);
        take(&mut self.history_exchanges, history_exchanges);
        take(&mut self.model_keep_alive, model_keep_alive);
        take(&mut self.max_memory_mb, max_memory_mb);
        take(&mut self.device, device);
        take(&mut self.precision, precision);
        take(
            &mut self.enable_thermal_monitoring,
            enable_thermal_monitoring,
        );
        take(&mut self.draft_max, draft_max);
    }

    /// Zeroed values, before the desktop file is applied.
    fn bare() -> Profile {
        Profile {
            name: String::new(),
            iterations: 1,
            initial_temperature: 0.7,
            min_temperature: 0.5,
            temp_reduction: 0.0,
            max_tokens: 1,
            energy_convergence_threshold: 0.0,
            energy_plateau_window: 3,
            energy_plateau_delta: 0.0,
            energy: EnergyKind::Model,
            mode: Mode::Independent,
            energy_weight_surprisal: 0.5,
            energy_weight_repetition: 0.2,
            energy_weight_truncation: 0.2,
            energy_weight_length: 0.1,
            surprisal_scale: 2.0,
            target_words: 50,
            seed: 0,
            top_k: 40,
            top_p: 0.95,
            salience_threshold: 0.15,
            history_exchanges: 3,
            model_keep_alive: true,
            max_memory_mb: 1024,
            device: Device::Auto,
            precision: "auto".into(),
            enable_thermal_monitoring: false,
            draft_max: 0,
        }
    }

    /// The checks that involve several keys.
    pub fn check(&self, file: &str) -> Result<(), ProfileError> {
        if self.min_temperature > self.initial_temperature {
            return Err(ProfileError::Value {
                file: file.to_owned(),
                key: "min_temperature".into(),
                value: self.min_temperature.to_string(),
                expected: format!("at most initial_temperature ({})", self.initial_temperature),
            });
        }
        let w = self.energy_weight_surprisal
            + self.energy_weight_repetition
            + self.energy_weight_truncation
            + self.energy_weight_length;
        if self.energy == EnergyKind::Model && w <= 0.0 {
            return Err(ProfileError::Value {
                file: file.to_owned(),
                key: "energy_weight_surprisal".into(),
                value: self.energy_weight_surprisal.to_string(),
                expected: "the four energy_weight_* keys to add up to more than 0".into(),
            });
        }
        Ok(())
    }

    /// The temperature of candidate `i` (0-based):
    /// `max(min_temperature, initial_temperature - i * temp_reduction)`.
    pub fn temperature(&self, i: usize) -> f32 {
        let t = self.initial_temperature as f64 - i as f64 * self.temp_reduction as f64;
        t.max(self.min_temperature as f64) as f32
    }

    /// The engine's sampling parameters for candidate `i`: its temperature, its own seed
    /// (`seed + i`), the profile's top-k, top-p and token limit.
    pub fn sampling(&self, i: usize) -> kiln_engine::SamplingParams {
        kiln_engine::SamplingParams {
            temperature: self.temperature(i),
            top_k: self.top_k,
            top_p: self.top_p,
            seed: Some(self.seed.wrapping_add(i as u64)),
            max_tokens: self.max_tokens,
            draft_max: self.draft_max,
            ..kiln_engine::SamplingParams::default()
        }
    }

    /// Whether `t` has reached the floor (within float rounding of the schedule).
    pub fn at_floor(&self, t: f32) -> bool {
        t <= self.min_temperature + 1e-6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_match_the_spec_table() {
        let e = Profile::builtin("edge").unwrap().unwrap();
        assert_eq!(
            (
                e.iterations,
                e.initial_temperature,
                e.min_temperature,
                e.temp_reduction,
                e.max_tokens
            ),
            (3, 0.7, 0.54, 0.053, 150)
        );
        assert!(e.model_keep_alive && e.enable_thermal_monitoring);
        assert_eq!(e.max_memory_mb, 1200);
        let d = Profile::builtin("desktop").unwrap().unwrap();
        assert_eq!(
            (
                d.iterations,
                d.initial_temperature,
                d.min_temperature,
                d.temp_reduction,
                d.max_tokens
            ),
            (5, 0.7, 0.5, 0.04, 200)
        );
        assert_eq!(d.energy, EnergyKind::Model);
        assert_eq!(d.mode, Mode::Independent);
        assert_eq!(
            (
                d.energy_convergence_threshold,
                d.energy_plateau_window,
                d.energy_plateau_delta
            ),
            (0.1, 3, 0.05)
        );
        let r = Profile::builtin("research").unwrap().unwrap();
        assert_eq!(
            (
                r.iterations,
                r.initial_temperature,
                r.min_temperature,
                r.temp_reduction,
                r.max_tokens
            ),
            (7, 0.7, 0.5, 0.04, 200)
        );
        assert!(Profile::builtin("laptop").is_none());
    }

    #[test]
    fn desktop_file_sets_every_key() {
        let f = ProfileFile::from_yaml(DESKTOP_YAML, "desktop").unwrap();
        let f = serde_json::to_value(&f).unwrap();
        let f = f.as_object().unwrap();
        for (k, v) in f {
            assert!(!v.is_null(), "desktop.yaml lacks `{k}`");
        }
        // A file can set every setting of a profile but its name, and each key has a rule.
        let p = serde_json::to_value(Profile::default()).unwrap();
        let mut settings: Vec<&String> = p.as_object().unwrap().keys().collect();
        settings.retain(|k| *k != "name");
        settings.sort();
        let mut keys: Vec<&String> = f.keys().collect();
        keys.sort();
        assert_eq!(keys, settings);
        for k in keys {
            assert!(Rule::of(k).is_some(), "`{k}` has no rule");
        }
    }

    #[test]
    fn a_subset_takes_desktop_defaults() {
        let p = Profile::default()
            .with_yaml(
                "# mine\niterations: 9   # more\nmode: refine\n",
                "mine.yaml",
            )
            .unwrap();
        assert_eq!(p.iterations, 9);
        assert_eq!(p.mode, Mode::Refine);
        let d = Profile::default();
        assert_eq!(p.max_tokens, d.max_tokens);
        assert_eq!(p.min_temperature, d.min_temperature);
        assert_eq!(p.energy, d.energy);
    }

    #[test]
    fn quoted_values_and_hashes_inside_quotes() {
        let p = Profile::default()
            .with_yaml("---\nprecision: \"auto\"\ndevice: 'cpu'\n", "q.yaml")
            .unwrap();
        assert_eq!(p.precision, "auto");
        assert_eq!(p.device, Device::Cpu);
        // A `#` inside quotes, or not after a space, is part of the value; after a space, a
        // comment.
        let p = Profile::default()
            .with_yaml("precision: auto # a comment\n", "q.yaml")
            .unwrap();
        assert_eq!(p.precision, "auto");
        for (text, value) in [
            ("precision: \"x # y\" # z\n", "x # y"),
            ("precision: x#y\n", "x#y"),
        ] {
            match Profile::default().with_yaml(text, "q.yaml").unwrap_err() {
                ProfileError::Value { key, value: v, .. } => {
                    assert_eq!((key.as_str(), v.as_str()), ("precision", value), "{text:?}")
                }
                other => panic!("{text:?}: {other}"),
            }
        }
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_file() {
        let e = Profile::default()
            .with_yaml("iterations: 3\nitterations: 4\n", "my.yaml")
            .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("my.yaml") && m.contains("`itterations`"), "{m}");
        assert!(matches!(e, ProfileError::UnknownKey { .. }));
    }

    #[test]
    fn out_of_range_values_name_the_key_and_the_file() {
        let cases = [
            ("iterations: 0", "iterations"),
            ("iterations: 65", "iterations"),
            ("iterations: three", "iterations"),
            ("initial_temperature: 0", "initial_temperature"),
            ("initial_temperature: 2.5", "initial_temperature"),
            ("min_temperature: -0.1", "min_temperature"),
            ("temp_reduction: 1.5", "temp_reduction"),
            ("max_tokens: 0", "max_tokens"),
            (
                "energy_convergence_threshold: 1.2",
                "energy_convergence_threshold",
            ),
            ("energy_plateau_window: 1", "energy_plateau_window"),
            ("energy_plateau_delta: nan", "energy_plateau_delta"),
            ("energy: vibes", "energy"),
            ("mode: parallel", "mode"),
            ("surprisal_scale: 0", "surprisal_scale"),
            ("top_p: 0", "top_p"),
            ("salience_threshold: 2", "salience_threshold"),
            ("model_keep_alive: maybe", "model_keep_alive"),
            ("max_memory_mb: 10", "max_memory_mb"),
            ("device: tpu", "device"),
            ("precision: q2", "precision"),
            ("precision: q8_0", "precision"),
            ("model_keep_alive: false", "model_keep_alive"),
            ("energy_weight_length: -1", "energy_weight_length"),
            // Cross-key: the floor above the start.
            ("min_temperature: 0.9", "min_temperature"),
        ];
        for (line, key) in cases {
            let e = Profile::default().with_yaml(line, "p.yaml").unwrap_err();
            match &e {
                ProfileError::Value { key: k, file, .. } => {
                    assert_eq!((k.as_str(), file.as_str()), (key, "p.yaml"), "{line}")
                }
                other => panic!("{line}: {other}"),
            }
            let m = e.to_string();
            assert!(m.contains(key) && m.contains("p.yaml"), "{m}");
        }
    }

    #[test]
    fn zero_weights_are_refused_for_the_model_energy() {
        let y = "energy_weight_surprisal: 0\nenergy_weight_repetition: 0\nenergy_weight_truncation: 0\nenergy_weight_length: 0\n";
        assert!(Profile::default().with_yaml(y, "w.yaml").is_err());
        let ok = format!("{y}energy: heuristic\n");
        assert!(Profile::default().with_yaml(&ok, "w.yaml").is_ok());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        for (text, line) in [
            ("iterations: 3\nnested:\n  a: 1\n", 2),
            ("iterations 3\n", 1),
            ("iterations: 3\n  mode: refine\n", 2),
            ("Iterations: 3\n", 1),
        ] {
            match Profile::default().with_yaml(text, "s.yaml").unwrap_err() {
                ProfileError::Syntax { line: l, file, .. } => {
                    assert_eq!((l, file.as_str()), (line, "s.yaml"), "{text:?}")
                }
                other => panic!("{text:?}: {other}"),
            }
        }
        assert!(matches!(
            Profile::default().with_yaml("mode: refine\nmode: independent\n", "d.yaml"),
            Err(ProfileError::Duplicate { .. })
        ));
    }

    #[test]
    fn values_of_the_wrong_type_name_the_key_and_the_value_as_written() {
        for (text, key, value) in [
            ("iterations: three\n", "iterations", "three"),
            (
                "max_tokens: 9\ninitial_temperature: 'hot'\n",
                "initial_temperature",
                "hot",
            ),
            ("top_k: -1", "top_k", "-1"),
            ("iterations: 3.0", "iterations", "3.0"),
            ("{iterations: 3, mode: x}", "mode", "x"),
            ("energy_plateau_delta: .nan", "energy_plateau_delta", "NaN"),
            ("seed: 18446744073709551616", "seed", "18446744073709551616"),
        ] {
            match Profile::default().with_yaml(text, "t.yaml").unwrap_err() {
                ProfileError::Value {
                    key: k,
                    value: v,
                    file,
                    ..
                } => assert_eq!(
                    (k.as_str(), v.as_str(), file.as_str()),
                    (key, value, "t.yaml"),
                    "{text:?}"
                ),
                other => panic!("{text:?}: {other}"),
            }
        }
    }

    #[test]
    fn what_is_not_flat_key_value_yaml_names_the_line() {
        for (text, line, says) in [
            ("iterations:\n", 1, "no value"),
            ("max_tokens: 9\niterations: ~\n", 2, "no value"),
            ("iterations: [1, 2]\n", 1, "list or a map"),
            ("max_tokens: 9\n---\nmax_tokens: 8\n", 3, "multiple"),
            ("- iterations: 3\n", 1, "mapping"),
            ("seed: 1\nmode: \"refine\" x\n", 2, "trailing"),
        ] {
            match Profile::default().with_yaml(text, "s.yaml").unwrap_err() {
                ProfileError::Syntax { line: l, what, .. } => {
                    assert_eq!(l, line, "{text:?}: {what}");
                    assert!(what.contains(says), "{text:?}: {what}");
                }
                other => panic!("{text:?}: {other}"),
            }
        }
        // Nothing but comments, or nothing at all, sets nothing.
        for text in ["", "# nothing\n", "---\n"] {
            assert_eq!(
                Profile::default().with_yaml(text, "e.yaml").unwrap(),
                Profile::default()
            );
        }
    }

    #[test]
    fn settings_are_read_as_yaml_scalars_and_nothing_more() {
        let mut p = Profile::default();
        for (k, v) in [
            ("iterations", "3"),
            ("top_p", "0.5"),
            ("enable_thermal_monitoring", "yes"),
            ("model_keep_alive", "on"),
            ("device", "gpu"),
            ("mode", "refine"),
            ("seed", "18446744073709551615"),
        ] {
            p.set(k, v, "the command line").unwrap();
        }
        assert_eq!((p.iterations, p.top_p, p.seed), (3, 0.5, u64::MAX));
        assert!(p.enable_thermal_monitoring);
        assert_eq!((p.device, p.mode), (Device::Cuda, Mode::Refine));
        // A value is one scalar whatever it holds: no second key comes in with it.
        for (k, v) in [
            ("mode", "refine\nmode: independent"),
            ("precision", "auto\niterations: 9"),
            ("iterations", ""),
            ("iterations", "0"),
        ] {
            match p.set(k, v, "the command line").unwrap_err() {
                ProfileError::Value {
                    key, value, file, ..
                } => assert_eq!(
                    (key.as_str(), value.as_str(), file.as_str()),
                    (k, v, "the command line")
                ),
                other => panic!("{k}={v:?}: {other}"),
            }
        }
        assert!(matches!(
            p.set("Iterations", "3", "the command line"),
            Err(ProfileError::UnknownKey { key, .. }) if key == "Iterations"
        ));
        assert_eq!(p.iterations, 3);
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = Profile::load("/nonexistent/prof.yaml").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/prof.yaml"), "{e}");
    }

    #[test]
    fn schedule_arithmetic() {
        let d = Profile::builtin("desktop").unwrap().unwrap();
        let want = [0.7, 0.66, 0.62, 0.58, 0.54, 0.5, 0.5, 0.5];
        for (i, w) in want.iter().enumerate() {
            assert!(
                (d.temperature(i) - w).abs() < 1e-6,
                "T_{i} = {}",
                d.temperature(i)
            );
        }
        assert!(!d.at_floor(d.temperature(4)));
        assert!(d.at_floor(d.temperature(5)), "0.7 - 5 * 0.04 reaches 0.5");
        let e = Profile::builtin("edge").unwrap().unwrap();
        let want = [0.7, 0.647, 0.594, 0.541, 0.54];
        for (i, w) in want.iter().enumerate() {
            assert!(
                (e.temperature(i) - w).abs() < 1e-6,
                "edge T_{i} = {}",
                e.temperature(i)
            );
        }
        assert!(
            !e.at_floor(e.temperature(3)),
            "0.541 is above the 0.54 floor"
        );
        assert!(e.at_floor(e.temperature(4)));
        // No reduction: the temperature never moves.
        let flat = Profile::default()
            .with_yaml("temp_reduction: 0", "f")
            .unwrap();
        assert_eq!(flat.temperature(10), 0.7);
    }
}
