//! Social attention: an observer's empathy to each of several agents, normalised to weights.

use serde::Serialize;

use crate::anneal::Workspace;
use crate::empathy::{empathy_with, Empathy, EmpathyOptions, SimilarityCache};
use crate::error::Result;
use crate::rng::derive_seed;
use crate::system::IsingSystem;

/// Below this total score every agent counts as unattended and the weights are uniform.
pub const ZERO_TOTAL: f64 = 1e-12;

/// Social attention of one observer over agents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SocialAttention {
    /// Attention weights, summing to 1.
    pub weights: Vec<f64>,
    /// Empathy towards each agent.
    pub empathies: Vec<Empathy>,
    /// Whether the weights fell back to uniform because every score was about 0.
    pub uniform: bool,
}

/// Normalises scores to weights summing to 1; uniform (and `true`) when their total is about 0.
pub fn normalise(scores: &[f64]) -> (Vec<f64>, bool) {
    let total: f64 = scores.iter().sum();
    if scores.is_empty() {
        return (Vec::new(), true);
    }
    if total.is_finite() && total > ZERO_TOTAL {
        (scores.iter().map(|s| s / total).collect(), false)
    } else {
        (vec![1.0 / scores.len() as f64; scores.len()], true)
    }
}

/// Seed of the observer's anneal towards agent `k`: derived from `(seed, 0, k)`.
pub fn agent_seed(seed: u64, k: usize) -> u64 {
    derive_seed(seed, 0, k as u32)
}

/// Social attention of `observer` over `agents` (each annealed with `agent_seed(opts.seed, k)`).
pub fn social_attention(
    observer: &IsingSystem,
    agents: &[IsingSystem],
    opts: &EmpathyOptions,
) -> Result<SocialAttention> {
    let mut cache = SimilarityCache::default();
    let mut ws = Workspace::new();
    let mut empathies = Vec::with_capacity(agents.len());
    for (k, agent) in agents.iter().enumerate() {
        let o = EmpathyOptions {
            seed: agent_seed(opts.seed, k),
            ..*opts
        };
        empathies.push(empathy_with(observer, agent, &o, &mut cache, &mut ws)?);
    }
    let scores: Vec<f64> = empathies.iter().map(|e| e.score).collect();
    let (weights, uniform) = normalise(&scores);
    Ok(SocialAttention {
        weights,
        empathies,
        uniform,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_sums_to_one_or_is_uniform() {
        let (w, u) = normalise(&[1.0, 3.0]);
        assert_eq!(w, vec![0.25, 0.75]);
        assert!(!u);
        let (w, u) = normalise(&[0.0, 0.0, 0.0, 0.0]);
        assert_eq!(w, vec![0.25; 4]);
        assert!(u);
        let (w, u) = normalise(&[]);
        assert!(w.is_empty() && u);
    }

    #[test]
    fn attention_follows_empathy() {
        let obs = IsingSystem::reference(12, 0).expect("valid");
        let agents: Vec<IsingSystem> = (1..6)
            .map(|s| IsingSystem::reference(12, s).expect("valid"))
            .collect();
        let opts = EmpathyOptions {
            steps: Some(40),
            seed: 9,
            ..EmpathyOptions::default()
        };
        let sa = social_attention(&obs, &agents, &opts).expect("same sizes");
        assert_eq!(sa.weights.len(), 5);
        assert!((sa.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let total: f64 = sa.empathies.iter().map(|e| e.score).sum();
        for (w, e) in sa.weights.iter().zip(&sa.empathies) {
            assert!((w - e.score / total).abs() < 1e-12);
        }
        assert!(!sa.uniform);
        let again = social_attention(&obs, &agents, &opts).expect("same sizes");
        assert_eq!(sa, again);
    }
}
