//! Request and response types for `POST /v1/ising/empathy` and `POST /v1/ising/social`.
//!
//! The handlers are pure functions so the HTTP server stays a thin shell: it deserializes the body,
//! calls the handler, and maps `Err` to a 400 with the error's message. Limits live here.

use serde::{Deserialize, Serialize};

use crate::empathy::{empathy, fast_estimate_from, EmpathyOptions, Weights};
use crate::error::{IsingError, Result};
use crate::social::social_attention;
use crate::system::IsingSystem;

/// Largest `n` a request may ask for.
pub const MAX_REQUEST_N: usize = 256;
/// Most agents a social request may carry.
pub const MAX_REQUEST_AGENTS: usize = 128;
/// Most annealing steps a request may ask for.
pub const MAX_REQUEST_STEPS: usize = 2000;

/// A system in a request: either the reference construction (`n`, `seed`) or explicit
/// `couplings` (rows), `fields` (default all 0) and `spins` (each -1 or +1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSpec {
    /// Spins of the reference construction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Seed of the reference construction's spins (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Coupling matrix rows (n x n, symmetric, zero diagonal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub couplings: Option<Vec<Vec<f64>>>,
    /// Fields (length n); all 0 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<f64>>,
    /// Spins (length n, each -1 or +1); required with `couplings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spins: Option<Vec<f64>>,
}

impl SystemSpec {
    /// The reference system `(n, seed)`.
    pub fn reference(n: usize, seed: u64) -> Self {
        Self {
            n: Some(n),
            seed: Some(seed),
            ..Self::default()
        }
    }

    /// Builds and validates the system, with n limited to `max_n`.
    pub fn build(&self, max_n: usize) -> Result<IsingSystem> {
        match &self.couplings {
            None => {
                if self.spins.is_some() || self.fields.is_some() {
                    return Err(IsingError::Missing {
                        field: "couplings".into(),
                        expected: "give couplings with spins/fields, or only n and seed for the reference system".into(),
                    });
                }
                let n = self.n.ok_or_else(|| IsingError::Missing {
                    field: "n".into(),
                    expected: "give n (and optionally seed) for the reference system, or couplings and spins".into(),
                })?;
                check_size("n", n, max_n)?;
                IsingSystem::reference(n, self.seed.unwrap_or(0))
            }
            Some(rows) => {
                let n = rows.len();
                check_size("couplings: n", n, max_n)?;
                if let Some(given) = self.n {
                    if given != n {
                        return Err(IsingError::WrongLength {
                            field: "couplings".into(),
                            got: n,
                            expected: given,
                        });
                    }
                }
                let spins = self.spins.as_ref().ok_or_else(|| IsingError::Missing {
                    field: "spins".into(),
                    expected: format!("{n} spins, each -1 or +1, to go with the couplings"),
                })?;
                let mut s = Vec::with_capacity(spins.len());
                for (i, &v) in spins.iter().enumerate() {
                    if v == 1.0 {
                        s.push(1i8);
                    } else if v == -1.0 {
                        s.push(-1i8);
                    } else {
                        return Err(IsingError::BadSpin {
                            field: format!("spins[{i}]"),
                            value: v,
                        });
                    }
                }
                let fields = self.fields.clone().unwrap_or_else(|| vec![0.0; n]);
                IsingSystem::from_rows(rows, fields, s)
            }
        }
    }
}

fn check_size(field: &str, n: usize, max: usize) -> Result<()> {
    if n == 0 {
        return Err(IsingError::Empty {
            field: field.into(),
        });
    }
    if n > max {
        return Err(IsingError::TooLarge {
            field: field.into(),
            got: n,
            max,
        });
    }
    Ok(())
}

/// Options shared by both endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreOptions {
    /// Annealing steps (default `50 + n / 10`, at most `MAX_REQUEST_STEPS`).
    #[serde(default)]
    pub steps: Option<usize>,
    /// Seed of the anneals (default 0).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Weight preset: `balanced` (default) or `coupling`.
    #[serde(default)]
    pub preset: Option<String>,
    /// Custom weights (instead of a preset).
    #[serde(default)]
    pub weights: Option<Weights>,
}

impl ScoreOptions {
    /// Validated empathy options.
    pub fn resolve(&self) -> Result<EmpathyOptions> {
        if let Some(s) = self.steps {
            if s > MAX_REQUEST_STEPS {
                return Err(IsingError::TooLarge {
                    field: "steps".into(),
                    got: s,
                    max: MAX_REQUEST_STEPS,
                });
            }
        }
        let weights = match (&self.preset, &self.weights) {
            (Some(_), Some(_)) => {
                return Err(IsingError::InvalidParameter {
                    name: "preset".into(),
                    value: "given together with weights".into(),
                    expected: "either a preset name or custom weights, not both".into(),
                })
            }
            (Some(p), None) => Weights::preset(p)?,
            (None, Some(w)) => {
                w.validate()?;
                *w
            }
            (None, None) => Weights::BALANCED,
        };
        Ok(EmpathyOptions {
            steps: self.steps,
            seed: self.seed.unwrap_or(0),
            weights,
        })
    }
}

/// Body of `POST /v1/ising/empathy`: empathy of `a` towards `b`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmpathyRequest {
    /// The observer.
    pub a: SystemSpec,
    /// The one observed.
    pub b: SystemSpec,
    /// Steps, seed and weights.
    #[serde(flatten)]
    pub options: ScoreOptions,
}

/// Reply of `POST /v1/ising/empathy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmpathyResponse {
    /// The empathy score in [0, 1].
    pub empathy: f64,
    /// Overlap of predicted and true spins (flip-symmetric).
    pub overlap: f64,
    /// Relative energy error of the prediction.
    pub energy_error: f64,
    /// Magnetization error of the prediction.
    pub mag_error: f64,
    /// Coupling similarity in [0, 1].
    pub coupling_similarity: f64,
    /// The fast estimate (no annealing), for comparison.
    pub fast_estimate: f64,
    /// Name of the weight preset (`custom` for custom weights).
    pub preset: String,
    /// The weights used.
    pub weights: Weights,
    /// Annealing steps used.
    pub steps: usize,
    /// Seed used.
    pub seed: u64,
    /// Number of spins.
    pub n: usize,
    /// Energy of the predicted state.
    pub predicted_energy: f64,
    /// Energy of B.
    pub target_energy: f64,
}

/// Handles `POST /v1/ising/empathy`.
pub fn handle_empathy_request(req: &EmpathyRequest) -> Result<EmpathyResponse> {
    let opts = req.options.resolve()?;
    let a = req.a.build(MAX_REQUEST_N).map_err(|e| e.in_field("a"))?;
    let b = req.b.build(MAX_REQUEST_N).map_err(|e| e.in_field("b"))?;
    let e = empathy(&a, &b, &opts)?;
    Ok(EmpathyResponse {
        empathy: e.score,
        overlap: e.overlap,
        energy_error: e.energy_error,
        mag_error: e.mag_error,
        coupling_similarity: e.coupling_similarity,
        fast_estimate: fast_estimate_from(a.energy(), e.target_energy, e.coupling_similarity),
        preset: opts.weights.name().into(),
        weights: opts.weights,
        steps: e.steps,
        seed: opts.seed,
        n: a.n(),
        predicted_energy: e.predicted_energy,
        target_energy: e.target_energy,
    })
}

/// Body of `POST /v1/ising/social`: attention of `observer` over `agents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocialRequest {
    /// The observer.
    pub observer: SystemSpec,
    /// The agents attended to (1 to `MAX_REQUEST_AGENTS`).
    pub agents: Vec<SystemSpec>,
    /// Steps, seed and weights.
    #[serde(flatten)]
    pub options: ScoreOptions,
}

/// Reply of `POST /v1/ising/social`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocialResponse {
    /// Attention weights, one per agent, summing to 1.
    pub weights: Vec<f64>,
    /// Empathy towards each agent.
    pub empathies: Vec<f64>,
    /// Whether the weights are uniform because every empathy was about 0.
    pub uniform: bool,
    /// Name of the weight preset.
    pub preset: String,
    /// Annealing steps used per agent.
    pub steps: usize,
    /// Seed used.
    pub seed: u64,
}

/// Handles `POST /v1/ising/social`.
pub fn handle_social_request(req: &SocialRequest) -> Result<SocialResponse> {
    if req.agents.is_empty() {
        return Err(IsingError::Empty {
            field: "agents".into(),
        });
    }
    if req.agents.len() > MAX_REQUEST_AGENTS {
        return Err(IsingError::TooLarge {
            field: "agents".into(),
            got: req.agents.len(),
            max: MAX_REQUEST_AGENTS,
        });
    }
    let opts = req.options.resolve()?;
    let observer = req
        .observer
        .build(MAX_REQUEST_N)
        .map_err(|e| e.in_field("observer"))?;
    let mut agents = Vec::with_capacity(req.agents.len());
    for (k, spec) in req.agents.iter().enumerate() {
        let a = spec
            .build(MAX_REQUEST_N)
            .map_err(|e| e.in_field(&format!("agents[{k}]")))?;
        if a.n() != observer.n() {
            return Err(IsingError::SizeMismatch {
                what: "social attention (observer and every agent)",
                a: observer.n(),
                b: a.n(),
            });
        }
        agents.push(a);
    }
    let sa = social_attention(&observer, &agents, &opts)?;
    Ok(SocialResponse {
        empathies: sa.empathies.iter().map(|e| e.score).collect(),
        steps: sa.empathies.first().map_or(0, |e| e.steps),
        weights: sa.weights,
        uniform: sa.uniform,
        preset: opts.weights.name().into(),
        seed: opts.seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(a: SystemSpec, b: SystemSpec) -> EmpathyRequest {
        EmpathyRequest {
            a,
            b,
            options: ScoreOptions {
                steps: Some(50),
                ..ScoreOptions::default()
            },
        }
    }

    #[test]
    fn empathy_request_from_json() {
        let body = r#"{"a": {"n": 10, "seed": 1}, "b": {"n": 10, "seed": 2}, "steps": 60, "seed": 7, "preset": "coupling"}"#;
        let r: EmpathyRequest = serde_json::from_str(body).expect("valid json");
        let resp = handle_empathy_request(&r).expect("valid request");
        assert_eq!(resp.preset, "coupling");
        assert_eq!(resp.steps, 60);
        assert_eq!(resp.seed, 7);
        assert_eq!(resp.coupling_similarity, 1.0);
        assert!((0.0..=1.0).contains(&resp.empathy));
        // Same request, same bits.
        assert_eq!(resp, handle_empathy_request(&r).expect("valid request"));
    }

    #[test]
    fn explicit_systems_are_validated() {
        let ok = SystemSpec {
            couplings: Some(vec![vec![0.0, 1.0], vec![1.0, 0.0]]),
            spins: Some(vec![1.0, -1.0]),
            ..SystemSpec::default()
        };
        assert!(handle_empathy_request(&req(ok.clone(), ok.clone())).is_ok());

        let asym = SystemSpec {
            couplings: Some(vec![vec![0.0, 1.0], vec![2.0, 0.0]]),
            ..ok.clone()
        };
        let e = handle_empathy_request(&req(ok.clone(), asym)).unwrap_err();
        assert!(
            e.to_string().starts_with("b.couplings are not symmetric"),
            "{e}"
        );

        let ragged = SystemSpec {
            couplings: Some(vec![vec![0.0, 1.0], vec![1.0]]),
            ..ok.clone()
        };
        let e = handle_empathy_request(&req(ragged, ok.clone())).unwrap_err();
        assert!(
            e.to_string()
                .contains("a.couplings[1] has length 1, expected 2"),
            "{e}"
        );

        let nan = SystemSpec {
            fields: Some(vec![0.0, f64::NAN]),
            ..ok.clone()
        };
        let e = handle_empathy_request(&req(ok.clone(), nan)).unwrap_err();
        assert!(e.to_string().contains("b.fields[1] is NaN"), "{e}");

        let bad_spin = SystemSpec {
            spins: Some(vec![1.0, 0.5]),
            ..ok.clone()
        };
        let e = handle_empathy_request(&req(ok.clone(), bad_spin)).unwrap_err();
        assert!(e.to_string().contains("b.spins[1] is 0.5"), "{e}");

        let no_spins = SystemSpec {
            spins: None,
            ..ok.clone()
        };
        assert!(matches!(
            handle_empathy_request(&req(no_spins, ok.clone())),
            Err(IsingError::Missing { .. })
        ));

        let e = handle_empathy_request(&req(SystemSpec::reference(0, 1), ok.clone())).unwrap_err();
        assert!(e.to_string().contains("n = 0"), "{e}");
        let e = handle_empathy_request(&req(
            SystemSpec::reference(MAX_REQUEST_N + 1, 1),
            ok.clone(),
        ))
        .unwrap_err();
        assert!(matches!(e, IsingError::TooLarge { .. }), "{e}");
        let e = handle_empathy_request(&req(SystemSpec::reference(3, 1), ok)).unwrap_err();
        assert!(matches!(e, IsingError::SizeMismatch { .. }), "{e}");
    }

    #[test]
    fn options_are_validated() {
        let mut r = req(SystemSpec::reference(4, 1), SystemSpec::reference(4, 2));
        r.options.steps = Some(MAX_REQUEST_STEPS + 1);
        assert!(matches!(
            handle_empathy_request(&r),
            Err(IsingError::TooLarge { .. })
        ));
        r.options.steps = None;
        r.options.preset = Some("warm".into());
        assert!(matches!(
            handle_empathy_request(&r),
            Err(IsingError::UnknownPreset { .. })
        ));
        r.options.weights = Some(Weights::COUPLING);
        assert!(handle_empathy_request(&r).is_err());
        r.options.preset = None;
        let resp = handle_empathy_request(&r).expect("custom weights equal to a preset");
        assert_eq!(resp.preset, "coupling");
        assert_eq!(resp.steps, 50);
    }

    #[test]
    fn social_request_limits_and_weights() {
        let body = r#"{"observer": {"n": 8}, "agents": [{"n": 8, "seed": 1}, {"n": 8, "seed": 2}, {"n": 8, "seed": 3}], "steps": 20}"#;
        let r: SocialRequest = serde_json::from_str(body).expect("valid json");
        let resp = handle_social_request(&r).expect("valid");
        assert_eq!(resp.weights.len(), 3);
        assert!((resp.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(resp.preset, "balanced");

        let empty = SocialRequest {
            agents: vec![],
            ..r.clone()
        };
        assert!(matches!(
            handle_social_request(&empty),
            Err(IsingError::Empty { .. })
        ));
        let many = SocialRequest {
            agents: vec![SystemSpec::reference(8, 0); MAX_REQUEST_AGENTS + 1],
            ..r.clone()
        };
        assert!(matches!(
            handle_social_request(&many),
            Err(IsingError::TooLarge { .. })
        ));
        let mut mixed = r.clone();
        mixed.agents[1] = SystemSpec::reference(9, 0);
        assert!(matches!(
            handle_social_request(&mixed),
            Err(IsingError::SizeMismatch { .. })
        ));
        let mut bad = r;
        bad.agents[2] = SystemSpec::reference(0, 0);
        let e = handle_social_request(&bad).unwrap_err();
        assert!(e.to_string().starts_with("agents[2].n"), "{e}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let body = r#"{"a": {"n": 4, "sead": 1}, "b": {"n": 4}}"#;
        assert!(serde_json::from_str::<EmpathyRequest>(body).is_err());
    }
}
