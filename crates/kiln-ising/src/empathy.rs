//! Empathy of A towards B: theory of mind, perspective accuracy, coupling similarity, score.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::anneal::{adaptive_steps, energy_from_local, metropolis, Workspace};
use crate::error::{IsingError, Result};
use crate::system::{dot, IsingSystem};

/// Weights of the four empathy terms; presets `balanced` (default) and `coupling`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    /// Weight of the overlap of predicted and true spins.
    pub overlap: f64,
    /// Weight of `max(0, 1 - energy_error)`.
    pub energy: f64,
    /// Weight of the coupling similarity.
    pub coupling: f64,
    /// Weight of `1 - min(1, mag_error)`.
    pub magnetization: f64,
}

impl Weights {
    /// The spec's main score: `0.4 overlap + 0.3 (1 - energy_error)+ + 0.3 coupling_sim`.
    pub const BALANCED: Weights = Weights {
        overlap: 0.4,
        energy: 0.3,
        coupling: 0.3,
        magnetization: 0.0,
    };
    /// The upstream second preset: `0.30 overlap + 0.60 coupling_sim + 0.10 (1 - min(1, mag_error))`.
    pub const COUPLING: Weights = Weights {
        overlap: 0.30,
        energy: 0.0,
        coupling: 0.60,
        magnetization: 0.10,
    };
    /// Names of the presets, in the order `preset` accepts them.
    pub const PRESET_NAMES: [&'static str; 2] = ["balanced", "coupling"];

    /// The preset called `name`.
    pub fn preset(name: &str) -> Result<Weights> {
        match name {
            "balanced" => Ok(Self::BALANCED),
            "coupling" => Ok(Self::COUPLING),
            other => Err(IsingError::UnknownPreset { name: other.into() }),
        }
    }

    /// The preset's name when these weights are one, else `custom`.
    pub fn name(&self) -> &'static str {
        if *self == Self::BALANCED {
            "balanced"
        } else if *self == Self::COUPLING {
            "coupling"
        } else {
            "custom"
        }
    }

    /// Checks every weight is finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        for (name, w) in [
            ("weights.overlap", self.overlap),
            ("weights.energy", self.energy),
            ("weights.coupling", self.coupling),
            ("weights.magnetization", self.magnetization),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(IsingError::InvalidParameter {
                    name: name.into(),
                    value: w.to_string(),
                    expected: "a finite number >= 0".into(),
                });
            }
        }
        Ok(())
    }

    /// The score from the four terms, clipped to [0, 1].
    #[inline]
    pub fn score(&self, overlap: f64, energy_error: f64, coupling_sim: f64, mag_error: f64) -> f64 {
        let s = self.overlap * overlap
            + self.energy * (1.0 - energy_error).max(0.0)
            + self.coupling * coupling_sim
            + self.magnetization * (1.0 - mag_error.min(1.0));
        s.clamp(0.0, 1.0)
    }
}

impl Default for Weights {
    fn default() -> Self {
        Self::BALANCED
    }
}

/// How to compute empathy: annealing steps (adaptive when `None`), seed, weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmpathyOptions {
    /// Annealing steps of the theory of mind; `None` means `50 + n / 10`.
    pub steps: Option<usize>,
    /// Seed of the theory-of-mind anneal.
    pub seed: u64,
    /// Score weights.
    pub weights: Weights,
}

impl Default for EmpathyOptions {
    fn default() -> Self {
        Self {
            steps: None,
            seed: 0,
            weights: Weights::BALANCED,
        }
    }
}

/// Empathy of A towards B with every term that went into it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Empathy {
    /// The score in [0, 1].
    pub score: f64,
    /// Share of predicted spins matching B's, up to a global flip (in [0.5, 1]).
    pub overlap: f64,
    /// `|E_pred - E_B| / max(|E_B|, 1)`.
    pub energy_error: f64,
    /// `|m_pred - m_B|`.
    pub mag_error: f64,
    /// `(cos + 1) / 2` of the couplings' upper triangles; exactly 1 for equal couplings.
    pub coupling_similarity: f64,
    /// Energy of the predicted state.
    pub predicted_energy: f64,
    /// Energy of B.
    pub target_energy: f64,
    /// Magnetization of the predicted state.
    pub predicted_magnetization: f64,
    /// Magnetization of B.
    pub target_magnetization: f64,
    /// Annealing steps used.
    pub steps: usize,
    /// Accepted flips in the theory-of-mind anneal.
    pub accepted: usize,
}

/// Overlap of two spin vectors up to a global flip: `max(share equal, share opposite)`.
pub fn overlap(a: &[i8], b: &[i8]) -> Result<f64> {
    if a.len() != b.len() || a.is_empty() {
        return Err(IsingError::SizeMismatch {
            what: "overlap",
            a: a.len(),
            b: b.len(),
        });
    }
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    Ok(overlap_from_count(equal, a.len()))
}

#[inline]
fn overlap_from_count(equal: usize, n: usize) -> f64 {
    let share = equal as f64 / n as f64;
    share.max((n - equal) as f64 / n as f64)
}

/// Coupling similarity `(cos + 1) / 2` of the upper triangles of `J_A` and `J_B`.
///
/// Exactly 1 when the couplings are equal (checked, not computed). When one matrix is all zero and
/// the other is not, the cosine is taken as 0 (similarity 0.5).
pub fn coupling_similarity(a: &IsingSystem, b: &IsingSystem) -> Result<f64> {
    if a.n() != b.n() {
        return Err(IsingError::SizeMismatch {
            what: "coupling similarity",
            a: a.n(),
            b: b.n(),
        });
    }
    // Equal matrices have bitwise equal norms, so the full comparison runs only when it can succeed.
    if a.coupling_norm().to_bits() == b.coupling_norm().to_bits() && a.couplings() == b.couplings()
    {
        return Ok(1.0);
    }
    let (na, nb) = (a.coupling_norm(), b.coupling_norm());
    if na == 0.0 || nb == 0.0 {
        return Ok(0.5);
    }
    let n = a.n();
    let (ja, jb) = (a.couplings(), b.couplings());
    let mut d = 0.0;
    for i in 0..n {
        let r = i * n + i + 1..(i + 1) * n;
        d += dot(&ja[r.clone()], &jb[r]);
    }
    let cos = (d / (na * nb)).clamp(-1.0, 1.0);
    Ok((cos + 1.0) / 2.0)
}

/// Cache of coupling similarities keyed by the two matrices' fingerprints, for repeated pairs.
///
/// The key holds both 64-bit fingerprints and both norms, and is order-free (similarity is
/// symmetric, bit for bit). Cleared when it reaches its capacity, so memory stays bounded.
#[derive(Debug, Clone)]
pub struct SimilarityCache {
    map: HashMap<[u64; 4], f64>,
    capacity: usize,
    hits: u64,
    misses: u64,
}

impl Default for SimilarityCache {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl SimilarityCache {
    /// A cache holding at most `capacity` pairs.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            capacity: capacity.max(1),
            hits: 0,
            misses: 0,
        }
    }

    /// The similarity of `a` and `b`, computed once per distinct pair of coupling matrices.
    pub fn get(&mut self, a: &IsingSystem, b: &IsingSystem) -> Result<f64> {
        let ka = [a.coupling_fingerprint(), a.coupling_norm().to_bits()];
        let kb = [b.coupling_fingerprint(), b.coupling_norm().to_bits()];
        let (lo, hi) = if ka <= kb { (ka, kb) } else { (kb, ka) };
        let key = [lo[0], lo[1], hi[0], hi[1]];
        if let Some(&v) = self.map.get(&key) {
            self.hits += 1;
            return Ok(v);
        }
        let v = coupling_similarity(a, b)?;
        self.misses += 1;
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert(key, v);
        Ok(v)
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that had to compute.
    pub fn misses(&self) -> u64 {
        self.misses
    }
}

/// Theory of mind: a clone of `b` annealed for `steps` (adaptive when `None`) with `seed`.
pub fn theory_of_mind(b: &IsingSystem, steps: Option<usize>, seed: u64) -> IsingSystem {
    let mut predicted = b.clone();
    crate::anneal::anneal(&mut predicted, steps, seed);
    predicted
}

/// Empathy of `a` towards `b`.
pub fn empathy(a: &IsingSystem, b: &IsingSystem, opts: &EmpathyOptions) -> Result<Empathy> {
    let sim = coupling_similarity(a, b)?;
    let target = Target::new(b);
    let mut ws = Workspace::new();
    Ok(empathy_prepared(b, &target, sim, opts, &mut ws))
}

/// Empathy with reusable buffers and a similarity cache (for loops over many pairs).
pub fn empathy_with(
    a: &IsingSystem,
    b: &IsingSystem,
    opts: &EmpathyOptions,
    cache: &mut SimilarityCache,
    ws: &mut Workspace,
) -> Result<Empathy> {
    let sim = cache.get(a, b)?;
    let target = Target::new(b);
    Ok(empathy_prepared(b, &target, sim, opts, ws))
}

/// Fast estimate without annealing: `0.7 (1 - min(|E_A - E_B| / 100, 1)) + 0.3 coupling_sim`.
pub fn fast_estimate(a: &IsingSystem, b: &IsingSystem) -> Result<f64> {
    let sim = coupling_similarity(a, b)?;
    Ok(fast_estimate_from(a.energy(), b.energy(), sim))
}

/// The fast estimate from the two energies and the coupling similarity.
#[inline]
pub fn fast_estimate_from(energy_a: f64, energy_b: f64, coupling_sim: f64) -> f64 {
    0.7 * (1.0 - ((energy_a - energy_b).abs() / 100.0).min(1.0)) + 0.3 * coupling_sim
}

/// B's starting state, computed once and reused by every observer (spins, local fields, E, m).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) spins: Vec<f64>,
    pub(crate) local: Vec<f64>,
    pub(crate) energy: f64,
    pub(crate) msum: f64,
}

impl Target {
    pub(crate) fn new(b: &IsingSystem) -> Self {
        let mut ws = Workspace::new();
        let energy = ws.load(b);
        let msum = ws.spins.iter().sum();
        Self {
            spins: ws.spins,
            local: ws.local,
            energy,
            msum,
        }
    }
}

/// The empathy pipeline once the similarity and B's starting state are known.
pub(crate) fn empathy_prepared(
    b: &IsingSystem,
    target: &Target,
    sim: f64,
    opts: &EmpathyOptions,
    ws: &mut Workspace,
) -> Empathy {
    let n = b.n();
    let steps = opts.steps.unwrap_or_else(|| adaptive_steps(n));
    ws.load_prepared(&target.spins, &target.local);
    let mut e_pred = target.energy;
    let mut msum = target.msum;
    let accepted = metropolis(
        b.couplings(),
        b.fields(),
        &mut ws.spins,
        &mut ws.local,
        steps,
        opts.seed,
        &mut e_pred,
        &mut msum,
        None,
    );
    // Recompute from the local fields rather than trusting the running sum alone.
    e_pred = energy_from_local(&ws.spins, &ws.local, b.fields());
    let equal = ws
        .spins
        .iter()
        .zip(&target.spins)
        .filter(|(p, t)| p == t)
        .count();
    let ov = overlap_from_count(equal, n);
    let e_b = target.energy;
    let energy_error = (e_pred - e_b).abs() / e_b.abs().max(1.0);
    let m_pred = msum / n as f64;
    let m_b = target.msum / n as f64;
    let mag_error = (m_pred - m_b).abs();
    Empathy {
        score: opts.weights.score(ov, energy_error, sim, mag_error),
        overlap: ov,
        energy_error,
        mag_error,
        coupling_similarity: sim,
        predicted_energy: e_pred,
        target_energy: e_b,
        predicted_magnetization: m_pred,
        target_magnetization: m_b,
        steps,
        accepted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_names() {
        assert_eq!(Weights::preset("balanced"), Ok(Weights::BALANCED));
        assert_eq!(
            Weights::preset("coupling").map(|w| w.name()),
            Ok("coupling")
        );
        assert!(matches!(
            Weights::preset("nope"),
            Err(IsingError::UnknownPreset { .. })
        ));
        let custom = Weights {
            overlap: 1.0,
            ..Weights::BALANCED
        };
        assert_eq!(custom.name(), "custom");
        assert!(Weights {
            energy: f64::NAN,
            ..Weights::BALANCED
        }
        .validate()
        .is_err());
        assert!(Weights {
            energy: -1.0,
            ..Weights::BALANCED
        }
        .validate()
        .is_err());
    }

    #[test]
    fn score_formulas_follow_spec() {
        let (ov, ee, sim, me) = (0.8, 0.25, 0.9, 0.4);
        let b = Weights::BALANCED.score(ov, ee, sim, me);
        assert!((b - (0.4 * 0.8 + 0.3 * 0.75 + 0.3 * 0.9)).abs() < 1e-15);
        let c = Weights::COUPLING.score(ov, ee, sim, me);
        assert!((c - (0.3 * 0.8 + 0.6 * 0.9 + 0.1 * 0.6)).abs() < 1e-15);
        // Energy error over 1 contributes nothing, and the score is clipped.
        let b = Weights::BALANCED.score(1.0, 3.0, 1.0, 0.0);
        assert!((b - 0.7).abs() < 1e-15);
        let big = Weights {
            overlap: 5.0,
            ..Weights::BALANCED
        };
        assert_eq!(big.score(1.0, 0.0, 1.0, 0.0), 1.0);
    }

    #[test]
    fn empathy_terms_match_direct_computation() {
        let a = IsingSystem::reference(20, 42).expect("valid");
        let b = IsingSystem::reference(20, 43).expect("valid");
        let opts = EmpathyOptions {
            steps: Some(100),
            seed: 100,
            weights: Weights::BALANCED,
        };
        let e = empathy(&a, &b, &opts).expect("same size");
        let predicted = theory_of_mind(&b, Some(100), 100);
        let ov = overlap(predicted.spins(), b.spins()).expect("same size");
        assert_eq!(e.overlap, ov);
        assert!((e.predicted_energy - predicted.energy()).abs() < 1e-9);
        assert!((e.target_energy - b.energy()).abs() < 1e-12);
        assert_eq!(e.predicted_magnetization, predicted.magnetization());
        assert_eq!(e.coupling_similarity, 1.0);
        let expect = (0.4 * ov
            + 0.3
                * (1.0 - (predicted.energy() - b.energy()).abs() / b.energy().abs().max(1.0))
                    .max(0.0)
            + 0.3)
            .clamp(0.0, 1.0);
        assert!((e.score - expect).abs() < 1e-9);
        assert_eq!(e.steps, 100);
        // The cached path gives the same bits.
        let mut cache = SimilarityCache::default();
        let mut ws = Workspace::new();
        let e2 = empathy_with(&a, &b, &opts, &mut cache, &mut ws).expect("same size");
        assert_eq!(e, e2);
    }

    #[test]
    fn similarity_of_different_couplings_is_below_one() {
        let a = IsingSystem::reference(4, 1).expect("valid");
        let neg: Vec<f64> = a.couplings().iter().map(|v| -v).collect();
        let b = IsingSystem::from_parts(neg, vec![0.0; 4], vec![1; 4]).expect("valid");
        let s = coupling_similarity(&a, &b).expect("same size");
        assert!(
            s.abs() < 1e-15,
            "negated couplings give cos = -1, got similarity {s}"
        );
        let j: Vec<f64> = (0..16)
            .map(|k| if k / 4 == k % 4 { 0.0 } else { -1.0 })
            .collect();
        let c = IsingSystem::from_parts(j, vec![0.0; 4], vec![1; 4]).expect("valid");
        // Upper triangle of a, pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3): [.5, .5, 1, 1, .5, .5]; of c: all -1.
        let dot = -4.0;
        let cos = dot / (a.coupling_norm() * 6f64.sqrt());
        let s = coupling_similarity(&a, &c).expect("same size");
        assert!((s - (cos + 1.0) / 2.0).abs() < 1e-15, "{s}");
        let z = IsingSystem::from_parts(vec![0.0; 16], vec![0.0; 4], vec![1; 4]).expect("valid");
        assert_eq!(coupling_similarity(&a, &z), Ok(0.5));
        assert_eq!(coupling_similarity(&z, &z), Ok(1.0));
        let c = IsingSystem::reference(5, 1).expect("valid");
        assert!(matches!(
            coupling_similarity(&a, &c),
            Err(IsingError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn cache_counts_hits_for_repeated_pairs() {
        let a = IsingSystem::reference(6, 1).expect("valid");
        let j: Vec<f64> = (0..36)
            .map(|k| {
                if k / 6 == k % 6 {
                    0.0
                } else {
                    0.25 * ((k / 6 + k % 6) % 4) as f64
                }
            })
            .collect();
        let b = IsingSystem::from_parts(j, vec![0.0; 6], vec![1; 6]).expect("valid");
        let mut cache = SimilarityCache::new(8);
        let s1 = cache.get(&a, &b).expect("same size");
        let s2 = cache.get(&b, &a).expect("same size");
        assert_eq!(s1, s2);
        assert_eq!(s1, coupling_similarity(&a, &b).expect("same size"));
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
    }

    #[test]
    fn fast_estimate_follows_spec() {
        let a = IsingSystem::reference(20, 1).expect("valid");
        let b = IsingSystem::reference(20, 2).expect("valid");
        let f = fast_estimate(&a, &b).expect("same size");
        let expect = 0.7 * (1.0 - ((a.energy() - b.energy()).abs() / 100.0).min(1.0)) + 0.3;
        assert!((f - expect).abs() < 1e-12);
        assert_eq!(fast_estimate_from(0.0, 500.0, 0.5), 0.15);
    }
}
