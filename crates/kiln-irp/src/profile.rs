//! Refinement profiles: flat `key: value` YAML files that users copy and edit.
//!
//! Three profiles are built in (`edge`, `desktop`, `research`; the files are `profiles/*.yaml` at
//! the repository root). A profile file may set any subset of the keys; the rest take the
//! `desktop` values. Unknown keys and out-of-range values are errors that name the key and the
//! file.

use std::path::Path;

use serde::Serialize;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergyKind {
    /// The seed's formula (rewards low temperature and ~50 words); kept to reproduce its tables.
    Heuristic,
    /// Mean token surprisal under the model plus repetition, truncation and length penalties.
    Model,
}

/// How candidates relate to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every candidate answers the question afresh; all are decoded as one batch.
    Independent,
    /// Each candidate sees the best answer so far and is asked to improve it.
    Refine,
}

/// Where the model should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// The CPU backend.
    Cpu,
    /// A CUDA GPU.
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
    /// A line that is not `key: value`.
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

/// Every key a profile may set.
pub const KEYS: &[&str] = &[
    "iterations",
    "initial_temperature",
    "min_temperature",
    "temp_reduction",
    "max_tokens",
    "energy_convergence_threshold",
    "energy_plateau_window",
    "energy_plateau_delta",
    "energy",
    "mode",
    "energy_weight_surprisal",
    "energy_weight_repetition",
    "energy_weight_truncation",
    "energy_weight_length",
    "surprisal_scale",
    "target_words",
    "seed",
    "top_k",
    "top_p",
    "salience_threshold",
    "history_exchanges",
    "model_keep_alive",
    "max_memory_mb",
    "device",
    "precision",
    "enable_thermal_monitoring",
    "draft_max",
];

/// Splits flat YAML into `(line, key, value)`; comments, blank lines and `---` are skipped.
pub fn parse_flat_yaml(
    text: &str,
    file: &str,
) -> Result<Vec<(usize, String, String)>, ProfileError> {
    let mut out: Vec<(usize, String, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let syntax = |what: String| ProfileError::Syntax {
            file: file.to_owned(),
            line,
            what,
        };
        let body = strip_comment(raw);
        let trimmed = body.trim_end();
        if trimmed.trim().is_empty() || trimmed.trim() == "---" {
            continue;
        }
        if trimmed.starts_with(char::is_whitespace) {
            return Err(syntax(
                "indented line: profiles are flat `key: value` lines (no nesting)".into(),
            ));
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            return Err(syntax(format!("`{trimmed}` is not a `key: value` line")));
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(syntax(format!(
                "`{key}` is not a key (lowercase letters, digits and `_`)"
            )));
        }
        let value = unquote(value.trim());
        if value.is_empty() {
            return Err(syntax(format!(
                "`{key}` has no value (nested maps and lists are not supported)"
            )));
        }
        if out.iter().any(|(_, k, _)| k == key) {
            return Err(ProfileError::Duplicate {
                file: file.to_owned(),
                key: key.to_owned(),
            });
        }
        out.push((line, key.to_owned(), value.to_owned()));
    }
    Ok(out)
}

/// Drops a `#` comment that starts the line or follows whitespace, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev_ws = true;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev_ws => return &line[..i],
            None => {}
        }
        prev_ws = c.is_whitespace();
    }
    line
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
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
        for (_, key, value) in parse_flat_yaml(text, file)? {
            self.set(&key, &value, file)?;
        }
        self.check(file)?;
        Ok(self)
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

    /// Sets one key from its text; `file` names the source in errors. Call [`Profile::check`]
    /// after the last key for the checks that involve several keys.
    pub fn set(&mut self, key: &str, value: &str, file: &str) -> Result<(), ProfileError> {
        let bad = |expected: &str| ProfileError::Value {
            file: file.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
            expected: expected.to_owned(),
        };
        let int = |lo: u64, hi: u64| -> Result<u64, ProfileError> {
            value
                .parse::<u64>()
                .ok()
                .filter(|v| (lo..=hi).contains(v))
                .ok_or_else(|| bad(&format!("an integer from {lo} to {hi}")))
        };
        // `lo_open`: the lower bound itself is excluded.
        let real = |lo: f64, hi: f64, lo_open: bool| -> Result<f64, ProfileError> {
            let ok =
                |v: &f64| v.is_finite() && (if lo_open { *v > lo } else { *v >= lo }) && *v <= hi;
            value.parse::<f64>().ok().filter(ok).ok_or_else(|| {
                bad(&format!(
                    "a number in {}{lo}, {hi}]",
                    if lo_open { "(" } else { "[" }
                ))
            })
        };
        let boolean = || -> Result<bool, ProfileError> {
            match value {
                "true" | "yes" | "on" => Ok(true),
                "false" | "no" | "off" => Ok(false),
                _ => Err(bad("true or false")),
            }
        };
        match key {
            "iterations" => self.iterations = int(1, 64)? as usize,
            "initial_temperature" => self.initial_temperature = real(0.0, 2.0, true)? as f32,
            "min_temperature" => self.min_temperature = real(0.0, 2.0, false)? as f32,
            "temp_reduction" => self.temp_reduction = real(0.0, 1.0, false)? as f32,
            "max_tokens" => self.max_tokens = int(1, 4096)? as usize,
            "energy_convergence_threshold" => {
                self.energy_convergence_threshold = real(0.0, 1.0, false)?
            }
            "energy_plateau_window" => self.energy_plateau_window = int(2, 64)? as usize,
            "energy_plateau_delta" => self.energy_plateau_delta = real(0.0, 1.0, false)?,
            "energy" => {
                self.energy = match value {
                    "model" => EnergyKind::Model,
                    "heuristic" => EnergyKind::Heuristic,
                    _ => return Err(bad("model or heuristic")),
                }
            }
            "mode" => {
                self.mode = match value {
                    "independent" => Mode::Independent,
                    "refine" => Mode::Refine,
                    _ => return Err(bad("independent or refine")),
                }
            }
            "energy_weight_surprisal" => self.energy_weight_surprisal = real(0.0, 10.0, false)?,
            "energy_weight_repetition" => self.energy_weight_repetition = real(0.0, 10.0, false)?,
            "energy_weight_truncation" => self.energy_weight_truncation = real(0.0, 10.0, false)?,
            "energy_weight_length" => self.energy_weight_length = real(0.0, 10.0, false)?,
            "surprisal_scale" => self.surprisal_scale = real(0.0, 20.0, true)?,
            "target_words" => self.target_words = int(1, 2000)? as usize,
            "seed" => self.seed = int(0, u64::MAX)?,
            "top_k" => self.top_k = int(0, 1 << 20)? as usize,
            "top_p" => self.top_p = real(0.0, 1.0, true)? as f32,
            "draft_max" => {
                self.draft_max = int(0, kiln_engine::sampling::MAX_PROMPT_LOOKUP as u64)? as usize
            }
            "salience_threshold" => self.salience_threshold = real(0.0, 1.0, false)?,
            "history_exchanges" => self.history_exchanges = int(0, 64)? as usize,
            "model_keep_alive" => {
                // kiln keeps the model loaded for the whole process; `false` would ask for
                // something it does not do.
                if !boolean()? {
                    return Err(bad(
                        "true (kiln keeps the model loaded for the whole process; unloading between runs is not implemented)",
                    ));
                }
                self.model_keep_alive = true;
            }
            "max_memory_mb" => self.max_memory_mb = int(64, 1 << 20)? as usize,
            "device" => {
                self.device = match value {
                    "cpu" => Device::Cpu,
                    "cuda" | "gpu" => Device::Cuda,
                    "auto" => Device::Auto,
                    _ => return Err(bad("cpu, cuda or auto")),
                }
            }
            "precision" => {
                // Profiles do not convert weights; a precision other than the file's own
                // would be a promise kiln does not keep.
                if value != "auto" {
                    return Err(bad(
                        "auto (kiln runs the model file's own format; convert the model to change it)",
                    ));
                }
                self.precision = value.to_owned();
            }
            "enable_thermal_monitoring" => self.enable_thermal_monitoring = boolean()?,
            _ => {
                return Err(ProfileError::UnknownKey {
                    file: file.to_owned(),
                    key: key.to_owned(),
                    known: KEYS.join(", "),
                })
            }
        }
        Ok(())
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
        let keys: Vec<String> = parse_flat_yaml(DESKTOP_YAML, "desktop")
            .unwrap()
            .into_iter()
            .map(|(_, k, _)| k)
            .collect();
        for k in KEYS {
            assert!(keys.iter().any(|x| x == k), "desktop.yaml lacks `{k}`");
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
        assert_eq!(strip_comment("a: \"x # y\" # z"), "a: \"x # y\" ");
        assert_eq!(strip_comment("a: x#y"), "a: x#y");
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
