//! Metropolis annealing with the spec's schedule and exploration floor.
//!
//! Step `t` of `steps` runs at `beta_t = 0.1 exp(10 t / steps)` and makes 10 proposals; each picks
//! a spin uniformly and flips it with probability `max(exp(-beta dE), 0.1 / (1 + beta))`.
//! Proposal `k` (counting over the whole anneal, `k = 10 t + p`) reads word `k % 4` of Philox
//! block `k / 4` of stream `STREAM_ANNEAL`, split by `rng::index_and_unit` into the spin to try
//! and the uniform number that decides. Blocks are generated 16 at a time (64 proposals).

use serde::Serialize;

use crate::rng::{exp_det, index_and_unit, Philox, STREAM_ANNEAL};
use crate::system::{dot, IsingSystem};

/// Metropolis proposals made at each temperature step.
pub const PROPOSALS_PER_STEP: usize = 10;
/// Philox blocks generated at once (each gives four proposals).
const CHUNK_BLOCKS: usize = 16;
const CHUNK_PROPOSALS: usize = CHUNK_BLOCKS * 4;

/// Step count used when the caller gives none: `50 + n / 10`.
pub fn adaptive_steps(n: usize) -> usize {
    50 + n / 10
}

/// Inverse temperature of step `t` of `steps`: `0.1 exp(10 t / steps)`.
#[inline]
pub fn beta(t: usize, steps: usize) -> f64 {
    0.1 * exp_det(10.0 * t as f64 / steps as f64)
}

/// Exploration floor on the acceptance probability at inverse temperature `beta`.
#[inline]
pub fn acceptance_floor(beta: f64) -> f64 {
    0.1 / (1.0 + beta)
}

/// The state after a step, for plotting energy and magnetization over the anneal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TracePoint {
    /// Steps completed (0 is the initial state).
    pub step: usize,
    /// Inverse temperature of the step just completed (of step 0 for the initial state).
    pub beta: f64,
    /// Energy after the step.
    pub energy: f64,
    /// Magnetization after the step.
    pub magnetization: f64,
}

/// What an anneal did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AnnealReport {
    /// Temperature steps run.
    pub steps: usize,
    /// Proposals made (`10 * steps`).
    pub proposals: usize,
    /// Proposals accepted.
    pub accepted: usize,
    /// Energy before.
    pub initial_energy: f64,
    /// Energy after.
    pub final_energy: f64,
    /// Magnetization before.
    pub initial_magnetization: f64,
    /// Magnetization after.
    pub final_magnetization: f64,
}

/// Reusable buffers for annealing (spins as f64 and local fields), so hot loops do not allocate.
#[derive(Debug, Clone, Default)]
pub struct Workspace {
    pub(crate) spins: Vec<f64>,
    pub(crate) local: Vec<f64>,
}

impl Workspace {
    /// An empty workspace; it grows to the largest system it is used with.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads `system`'s spins and computes its local fields; returns its energy.
    pub(crate) fn load(&mut self, system: &IsingSystem) -> f64 {
        let n = system.n();
        let j = system.couplings();
        self.spins.clear();
        self.spins
            .extend(system.spins().iter().map(|&s| f64::from(s)));
        self.local.clear();
        self.local
            .extend((0..n).map(|i| dot(&j[i * n..(i + 1) * n], &self.spins)));
        energy_from_local(&self.spins, &self.local, system.fields())
    }

    /// Copies a prepared state (spins and local fields) in.
    pub(crate) fn load_prepared(&mut self, spins: &[f64], local: &[f64]) {
        self.spins.clear();
        self.spins.extend_from_slice(spins);
        self.local.clear();
        self.local.extend_from_slice(local);
    }
}

/// Energy from spins and local fields: `-1/2 sum_i s_i L_i - sum_i h_i s_i` (zero diagonal).
#[inline]
pub(crate) fn energy_from_local(spins: &[f64], local: &[f64], h: &[f64]) -> f64 {
    -0.5 * dot(spins, local) - dot(h, spins)
}

/// Anneals `system` in place for `steps` (adaptive when `None`) with `seed`.
pub fn anneal(system: &mut IsingSystem, steps: Option<usize>, seed: u64) -> AnnealReport {
    let mut ws = Workspace::new();
    anneal_with(system, steps, seed, &mut ws, None)
}

/// Anneals like `anneal` and records the state after every step (plus the initial state) in `trace`.
pub fn anneal_traced(
    system: &mut IsingSystem,
    steps: Option<usize>,
    seed: u64,
    trace: &mut Vec<TracePoint>,
) -> AnnealReport {
    let mut ws = Workspace::new();
    anneal_with(system, steps, seed, &mut ws, Some(trace))
}

/// Anneals with caller-provided buffers and an optional trace.
pub fn anneal_with(
    system: &mut IsingSystem,
    steps: Option<usize>,
    seed: u64,
    ws: &mut Workspace,
    trace: Option<&mut Vec<TracePoint>>,
) -> AnnealReport {
    let n = system.n();
    let steps = steps.unwrap_or_else(|| adaptive_steps(n));
    let e0 = ws.load(system);
    let m0 = system.magnetization();
    let mut energy = e0;
    let mut msum = m0 * n as f64;
    let accepted = metropolis(
        system.couplings(),
        system.fields(),
        &mut ws.spins,
        &mut ws.local,
        steps,
        seed,
        &mut energy,
        &mut msum,
        trace,
    );
    for (d, &s) in system.spins_mut().iter_mut().zip(&ws.spins) {
        *d = if s > 0.0 { 1 } else { -1 };
    }
    AnnealReport {
        steps,
        proposals: steps * PROPOSALS_PER_STEP,
        accepted,
        initial_energy: e0,
        final_energy: energy,
        initial_magnetization: m0,
        final_magnetization: msum / n as f64,
    }
}

/// The Metropolis kernel over raw buffers; returns the number of accepted flips.
///
/// `local[i] = sum_j J_ij s_j` is kept up to date in O(n) per accepted flip; `energy` and `msum`
/// (sum of spins) are updated in O(1). Nothing is allocated unless a trace is requested.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn metropolis(
    j: &[f64],
    h: &[f64],
    spins: &mut [f64],
    local: &mut [f64],
    steps: usize,
    seed: u64,
    energy: &mut f64,
    msum: &mut f64,
    mut trace: Option<&mut Vec<TracePoint>>,
) -> usize {
    let n = spins.len();
    let local = &mut local[..n];
    let h = &h[..n];
    let j = &j[..n * n];
    let rng = Philox::new(seed, STREAM_ANNEAL);
    let mut accepted = 0usize;
    let mut e = *energy;
    let mut m = *msum;
    if let Some(tr) = trace.as_deref_mut() {
        tr.clear();
        tr.reserve(steps + 1);
        tr.push(TracePoint {
            step: 0,
            beta: if steps > 0 { beta(0, steps) } else { 0.0 },
            energy: e,
            magnetization: m / n as f64,
        });
    }
    let total = steps * PROPOSALS_PER_STEP;
    let mut t = 0;
    let mut b = if steps > 0 { beta(0, steps) } else { 0.0 };
    let mut floor = acceptance_floor(b);
    let mut step_end = PROPOSALS_PER_STEP;
    let mut k = 0;
    while k < total {
        let words: [[u32; 4]; CHUNK_BLOCKS] = rng.blocks((k / 4) as u64);
        let end = (k + CHUNK_PROPOSALS).min(total);
        for kk in k..end {
            let w = words[(kk - k) / 4][kk % 4];
            let (i, u) = index_and_unit(w, n);
            let s = spins[i];
            let de = 2.0 * s * (local[i] + h[i]);
            if accept(de, b, floor, u) {
                let d = -2.0 * s;
                spins[i] = -s;
                let row = &j[i * n..(i + 1) * n];
                for (l, &jj) in local.iter_mut().zip(row) {
                    *l += d * jj;
                }
                e += de;
                m += d;
                accepted += 1;
            }
            if kk + 1 == step_end {
                if let Some(tr) = trace.as_deref_mut() {
                    tr.push(TracePoint {
                        step: t + 1,
                        beta: b,
                        energy: e,
                        magnetization: m / n as f64,
                    });
                }
                t += 1;
                step_end += PROPOSALS_PER_STEP;
                if t < steps {
                    b = beta(t, steps);
                    floor = acceptance_floor(b);
                }
            }
        }
        k = end;
    }
    *energy = e;
    *msum = m;
    accepted
}

/// Metropolis decision `u < max(exp(-beta dE), floor)`, with cheap bounds before the exponential.
///
/// The bounds only skip `exp_det` when they decide with a margin far above its error, so the
/// decision is always the one `u < max(exp_det(-beta dE), floor)` would make. They are combined
/// without short-circuits: the outcomes are random, and unpredictable branches cost more than the
/// few multiplies; only the rare undecided case branches (to the exponential).
#[inline(always)]
fn accept(de: f64, beta: f64, floor: f64, u: f64) -> bool {
    let x = beta * de;
    // e^x >= 1 + x + x^2/2 + x^3/6 + x^4/24 for x >= 0, so u * that > 1 means u > e^-x.
    let series = 1.0 + x * (1.0 + x * (0.5 + x * ((1.0 / 6.0) + x * (1.0 / 24.0))));
    // e^-x >= 1 - x for all x, which also covers dE <= 0 (then e^-x >= 1 > u).
    let sure_yes = (de <= 0.0) | (u < floor) | (u < (1.0 - x) - 1e-9);
    let sure_no = u * series > 1.0 + 1e-9;
    if sure_yes | sure_no {
        sure_yes
    } else {
        u < exp_det(-x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_spec() {
        assert!((beta(0, 100) - 0.1).abs() < 1e-15);
        assert!((beta(50, 100) - 0.1 * 5f64.exp()).abs() < 1e-12);
        assert!((acceptance_floor(1.0) - 0.05).abs() < 1e-15);
        assert_eq!(adaptive_steps(20), 52);
        assert_eq!(adaptive_steps(9), 50);
        assert_eq!(adaptive_steps(105), 60);
    }

    #[test]
    fn accept_matches_plain_definition() {
        use crate::rng::unit_f64;
        let g = Philox::new(3, 9);
        for k in 0..20_000u64 {
            let w = g.block(k);
            let de = (unit_f64(w[0]) - 0.3) * 20.0;
            let b = 0.1 * exp_det(10.0 * unit_f64(w[1]));
            let u = unit_f64(w[2]);
            let floor = acceptance_floor(b);
            let plain = u < exp_det(-b * de).max(floor);
            assert_eq!(accept(de, b, floor, u), plain, "de={de} b={b} u={u}");
        }
    }

    /// The plain definition, one proposal at a time, with full recomputation of dE.
    fn reference_anneal(s: &mut IsingSystem, steps: usize, seed: u64) -> usize {
        let g = Philox::new(seed, STREAM_ANNEAL);
        let n = s.n();
        let mut accepted = 0;
        for t in 0..steps {
            let b = beta(t, steps);
            for p in 0..PROPOSALS_PER_STEP {
                let k = (t * PROPOSALS_PER_STEP + p) as u64;
                let (i, u) = index_and_unit(g.block(k / 4)[(k % 4) as usize], n);
                let de = s.delta_energy(i);
                if u < exp_det(-b * de).max(acceptance_floor(b)) {
                    s.flip(i);
                    accepted += 1;
                }
            }
        }
        accepted
    }

    #[test]
    fn kernel_matches_reference_loop() {
        for (n, seed) in [(1, 1), (2, 2), (12, 12345), (20, 42), (33, 7), (70, 9)] {
            let start = IsingSystem::reference(n, seed).expect("valid");
            for steps in [1, 10, 100] {
                let mut a = start.clone();
                let mut b = start.clone();
                let rep = anneal(&mut a, Some(steps), seed ^ 0xABC);
                let acc = reference_anneal(&mut b, steps, seed ^ 0xABC);
                assert_eq!(a, b, "n={n} seed={seed} steps={steps}");
                assert_eq!(rep.accepted, acc);
            }
        }
    }

    #[test]
    fn tracked_energy_and_magnetization_match_recomputation() {
        let mut s = IsingSystem::reference(20, 5).expect("valid");
        let mut trace = Vec::new();
        let rep = anneal_traced(&mut s, Some(100), 77, &mut trace);
        assert_eq!(trace.len(), 101);
        assert_eq!(rep.proposals, 1000);
        assert!(rep.accepted > 0 && rep.accepted <= 1000);
        assert!((rep.final_energy - s.energy()).abs() < 1e-9);
        assert!((rep.final_magnetization - s.magnetization()).abs() < 1e-12);
        assert_eq!(trace[100].energy, rep.final_energy);
    }

    #[test]
    fn annealing_lowers_energy_of_reference_system() {
        // The reference couplings are ferromagnetic: a cold anneal should end well below a random state.
        let mut lowered = 0;
        for seed in 0..10 {
            let mut s = IsingSystem::reference(20, seed).expect("valid");
            let rep = anneal(&mut s, Some(100), seed + 100);
            if rep.final_energy < rep.initial_energy {
                lowered += 1;
            }
        }
        assert!(
            lowered >= 8,
            "only {lowered} of 10 anneals lowered the energy"
        );
    }

    #[test]
    fn zero_steps_leaves_system_unchanged() {
        let mut s = IsingSystem::reference(10, 1).expect("valid");
        let before = s.clone();
        let rep = anneal(&mut s, Some(0), 3);
        assert_eq!(s, before);
        assert_eq!(rep.accepted, 0);
    }
}
