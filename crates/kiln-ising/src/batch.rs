//! Batches over all cores: many empathies, many emotions, and a swarm's all-pairs attention.
//!
//! Work is handed out in chunks to scoped threads; every result depends only on its own inputs and
//! its own seed (derived from the base seed and the pair's indices by Philox), never on which
//! thread computed it or in what order, so the output is bit-identical for any thread count.

use std::sync::Mutex;

use serde::Serialize;

use crate::anneal::Workspace;
use crate::emotion::{emotion, Emotion};
use crate::empathy::{coupling_similarity, empathy_prepared, Empathy, EmpathyOptions, Target};
use crate::error::{IsingError, Result};
use crate::rng::derive_seed;
use crate::social::normalise;
use crate::system::IsingSystem;

/// Threads to use by default: the machine's available parallelism (at least 1).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `f(first_index, chunk)` over `out` in chunks of `chunk` items on up to `threads` threads.
///
/// Chunks are taken from a shared queue, so uneven work balances itself; with one thread (or one
/// chunk) everything runs on the caller's thread with no spawn.
pub fn parallel_chunks<T, F>(out: &mut [T], chunk: usize, threads: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync,
{
    let chunk = chunk.max(1);
    let threads = threads.max(1).min(out.len().div_ceil(chunk));
    if threads <= 1 {
        for (k, c) in out.chunks_mut(chunk).enumerate() {
            f(k * chunk, c);
        }
        return;
    }
    let queue = Mutex::new(out.chunks_mut(chunk).enumerate());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let next = match queue.lock() {
                    Ok(mut q) => q.next(),
                    Err(_) => None,
                };
                match next {
                    Some((k, c)) => f(k * chunk, c),
                    None => break,
                }
            });
        }
    });
}

/// Seed of the empathy of agent `i` towards agent `j` in a run seeded with `base`.
pub fn pair_seed(base: u64, i: usize, j: usize) -> u64 {
    derive_seed(base, i as u32, j as u32)
}

/// Emotions of many systems, spread over `threads`.
pub fn emotions(systems: &[IsingSystem], threads: usize) -> Vec<Emotion> {
    let mut out = vec![
        Emotion {
            valence: 0.0,
            arousal: 0.0,
            tension: 0.0,
            coherence: 0.0,
        };
        systems.len()
    ];
    let chunk = systems.len().div_ceil(threads.max(1) * 4).max(64);
    parallel_chunks(&mut out, chunk, threads, |first, c| {
        for (k, e) in c.iter_mut().enumerate() {
            *e = emotion(&systems[first + k]);
        }
    });
    out
}

/// Empathy for each `(observer, target)` index pair of `systems`; pair `(a, b)` is annealed with
/// `pair_seed(opts.seed, a, b)`.
pub fn empathy_many(
    systems: &[IsingSystem],
    pairs: &[(usize, usize)],
    opts: &EmpathyOptions,
    threads: usize,
) -> Result<Vec<Empathy>> {
    let len = systems.len();
    let mut sims = Vec::with_capacity(pairs.len());
    for (k, &(a, b)) in pairs.iter().enumerate() {
        if a >= len || b >= len {
            return Err(IsingError::InvalidParameter {
                name: format!("pairs[{k}]"),
                value: format!("({a}, {b})"),
                expected: format!("indices below {len}"),
            });
        }
        sims.push(coupling_similarity(&systems[a], &systems[b])?);
    }
    let mut out: Vec<Option<Empathy>> = vec![None; pairs.len()];
    parallel_chunks(&mut out, 16, threads, |first, c| {
        let mut ws = Workspace::new();
        for (k, slot) in c.iter_mut().enumerate() {
            let (a, b) = pairs[first + k];
            let o = EmpathyOptions {
                seed: pair_seed(opts.seed, a, b),
                ..*opts
            };
            let target = Target::new(&systems[b]);
            *slot = Some(empathy_prepared(
                &systems[b],
                &target,
                sims[first + k],
                &o,
                &mut ws,
            ));
        }
    });
    Ok(out.into_iter().flatten().collect())
}

/// All-pairs empathy and attention of a swarm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Swarm {
    /// Number of agents `k`.
    pub agents: usize,
    /// Empathy scores, row-major k x k: row `i` is agent `i`'s empathy towards each other agent
    /// (the diagonal is 0: an agent does not attend to itself).
    pub scores: Vec<f64>,
    /// Attention weights, row-major k x k: each row sums to 1 over the other agents.
    pub attention: Vec<f64>,
    /// Rows that fell back to uniform attention.
    pub uniform_rows: usize,
    /// Distinct coupling matrices found (coupling similarity is computed once per pair of these).
    pub distinct_couplings: usize,
}

impl Swarm {
    /// Empathy pairs computed (`k (k - 1)`).
    pub fn pairs(&self) -> usize {
        self.agents * self.agents.saturating_sub(1)
    }
}

/// Social attention of every agent over all the others (all `k (k - 1)` ordered pairs).
///
/// Pair `(i, j)` is annealed with `pair_seed(opts.seed, i, j)`. Agents must all have the same n.
pub fn swarm_attention(
    agents: &[IsingSystem],
    opts: &EmpathyOptions,
    threads: usize,
) -> Result<Swarm> {
    let k = agents.len();
    let plan = SwarmPlan::new(agents, threads)?;
    let mut scores = vec![0.0; k * k];
    parallel_chunks(&mut scores, k.max(1), threads, |first, row| {
        let i = first / k;
        let mut ws = Workspace::new();
        for (j, v) in row.iter_mut().enumerate() {
            if i == j {
                continue;
            }
            let o = EmpathyOptions {
                seed: pair_seed(opts.seed, i, j),
                ..*opts
            };
            *v = empathy_prepared(&agents[j], &plan.targets[j], plan.sim(i, j), &o, &mut ws).score;
        }
    });
    Ok(finish_swarm(k, scores, plan.classes()))
}

/// What every backend of [`swarm_attention`] computes before the anneals: coupling classes, their
/// similarity table, and each agent's starting state as a target.
#[derive(Debug, Clone)]
pub(crate) struct SwarmPlan {
    /// Coupling class of each agent.
    pub(crate) class: Vec<usize>,
    /// One agent per class (its representative).
    pub(crate) reps: Vec<usize>,
    /// Coupling similarity of class `a` to class `b` at `a * classes + b`.
    pub(crate) sim_table: Vec<f64>,
    /// Each agent's starting state (spins, local fields, energy, spin sum).
    pub(crate) targets: Vec<Target>,
}

impl SwarmPlan {
    /// Checks that all agents have the same n and computes the plan on `threads` threads.
    pub(crate) fn new(agents: &[IsingSystem], threads: usize) -> Result<Self> {
        if let Some(first) = agents.first() {
            if let Some(bad) = agents.iter().find(|a| a.n() != first.n()) {
                return Err(IsingError::SizeMismatch {
                    what: "a swarm",
                    a: first.n(),
                    b: bad.n(),
                });
            }
        }
        let (class, reps) = coupling_classes(agents);
        let classes = reps.len();
        let mut sim_table = vec![0.0; classes * classes];
        parallel_chunks(&mut sim_table, classes.max(1), threads, |first, row| {
            let a = &agents[reps[first / classes]];
            for (c, v) in row.iter_mut().enumerate() {
                // Sizes were checked above, so this cannot fail; 0.5 would be the neutral value.
                *v = coupling_similarity(a, &agents[reps[c]]).unwrap_or(0.5);
            }
        });
        let targets = agents.iter().map(Target::new).collect();
        Ok(Self {
            class,
            reps,
            sim_table,
            targets,
        })
    }

    /// Number of distinct coupling matrices.
    pub(crate) fn classes(&self) -> usize {
        self.reps.len()
    }

    /// Coupling similarity of agent `i` to agent `j`.
    #[inline]
    pub(crate) fn sim(&self, i: usize, j: usize) -> f64 {
        self.sim_table[self.class[i] * self.classes() + self.class[j]]
    }
}

/// The swarm from its k x k scores (diagonal 0): attention rows normalised on the CPU.
pub(crate) fn finish_swarm(k: usize, scores: Vec<f64>, distinct_couplings: usize) -> Swarm {
    let mut attention = vec![0.0; k * k];
    let mut uniform_rows = 0;
    let mut others = Vec::with_capacity(k);
    for i in 0..k {
        others.clear();
        others.extend((0..k).filter(|&j| j != i).map(|j| scores[i * k + j]));
        let (w, uniform) = normalise(&others);
        uniform_rows += usize::from(uniform && k > 1);
        for (wj, j) in w.into_iter().zip((0..k).filter(|&j| j != i)) {
            attention[i * k + j] = wj;
        }
    }
    Swarm {
        agents: k,
        scores,
        attention,
        uniform_rows,
        distinct_couplings,
    }
}

/// Groups agents by equal coupling matrices: the class of each agent and one representative per class.
fn coupling_classes(agents: &[IsingSystem]) -> (Vec<usize>, Vec<usize>) {
    let mut class = Vec::with_capacity(agents.len());
    let mut reps: Vec<usize> = Vec::new();
    for a in agents {
        let found = reps.iter().position(|&r| {
            let b = &agents[r];
            b.coupling_fingerprint() == a.coupling_fingerprint()
                && b.coupling_norm().to_bits() == a.coupling_norm().to_bits()
                && b.couplings() == a.couplings()
        });
        match found {
            Some(c) => class.push(c),
            None => {
                class.push(reps.len());
                reps.push(class.len() - 1);
            }
        }
    }
    (class, reps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::empathy::empathy;

    fn swarm_agents(k: usize, n: usize) -> Vec<IsingSystem> {
        (0..k)
            .map(|s| {
                let mut a = IsingSystem::reference(n, s as u64).expect("valid");
                if s % 3 == 0 {
                    // A second coupling family so the similarity table is not trivial.
                    let j: Vec<f64> = a.couplings().iter().map(|v| v * -0.5).collect();
                    a = IsingSystem::from_parts(j, a.fields().to_vec(), a.spins().to_vec())
                        .expect("valid");
                }
                a
            })
            .collect()
    }

    #[test]
    fn parallel_chunks_covers_everything_once() {
        for threads in 1..5 {
            let mut v = vec![0usize; 103];
            parallel_chunks(&mut v, 10, threads, |first, c| {
                for (k, x) in c.iter_mut().enumerate() {
                    *x += first + k;
                }
            });
            assert_eq!(v, (0..103).collect::<Vec<_>>());
        }
    }

    #[test]
    fn swarm_matches_single_empathies() {
        let agents = swarm_agents(6, 9);
        let opts = EmpathyOptions {
            steps: Some(30),
            seed: 4,
            ..EmpathyOptions::default()
        };
        let s = swarm_attention(&agents, &opts, 2).expect("same sizes");
        assert_eq!(s.distinct_couplings, 2);
        assert_eq!(s.pairs(), 30);
        for i in 0..6 {
            assert_eq!(s.scores[i * 6 + i], 0.0);
            assert_eq!(s.attention[i * 6 + i], 0.0);
            let row: f64 = s.attention[i * 6..i * 6 + 6].iter().sum();
            assert!((row - 1.0).abs() < 1e-12);
            for j in 0..6 {
                if i != j {
                    let o = EmpathyOptions {
                        seed: pair_seed(4, i, j),
                        ..opts
                    };
                    let e = empathy(&agents[i], &agents[j], &o).expect("same size");
                    assert_eq!(e.score, s.scores[i * 6 + j], "pair ({i}, {j})");
                }
            }
        }
        let many = empathy_many(&agents, &[(0, 1), (2, 5)], &opts, 2).expect("valid pairs");
        assert_eq!(many[1].score, s.scores[2 * 6 + 5]);
        assert!(empathy_many(&agents, &[(0, 9)], &opts, 2).is_err());
    }

    #[test]
    fn swarm_rejects_mixed_sizes() {
        let agents = vec![
            IsingSystem::reference(4, 0).expect("valid"),
            IsingSystem::reference(5, 0).expect("valid"),
        ];
        assert!(matches!(
            swarm_attention(&agents, &EmpathyOptions::default(), 1),
            Err(IsingError::SizeMismatch { .. })
        ));
        let empty = swarm_attention(&[], &EmpathyOptions::default(), 2).expect("empty is fine");
        assert_eq!(empty.pairs(), 0);
    }

    #[test]
    fn emotions_match_single_calls() {
        let systems = swarm_agents(150, 7);
        let e1 = emotions(&systems, 1);
        let e3 = emotions(&systems, 3);
        assert_eq!(e1, e3);
        assert_eq!(e1[42], emotion(&systems[42]));
    }
}
