//! GPU == CPU, bit for bit: the swarm on the CUDA kernel against `batch::swarm_attention`.
//!
//! Compiled only with the `cuda` feature and meant for a machine with an NVIDIA GPU:
//! `cargo test --release -p kiln-ising --features cuda --test cuda`. Without a driver or GPU
//! they fail: a build with the feature is a claim that the GPU path works.
#![cfg(feature = "cuda")]

use kiln_ising::batch::{swarm_attention, Swarm};
use kiln_ising::cuda::{CudaEngine, CudaError};
use kiln_ising::empathy::{EmpathyOptions, Weights};
use kiln_ising::rng::{unit_f64, Philox};
use kiln_ising::system::IsingSystem;

fn engine() -> Option<CudaEngine> {
    match CudaEngine::new(0) {
        Ok(e) => Some(e),
        Err(e) => panic!("the CUDA engine did not start: {e}"),
    }
}

/// Random symmetric couplings in [-2, 2) with about a fifth zeros, fields in [-1, 1), random
/// spins: values whose sums round, unlike the reference system's halves and ones.
fn random_system(n: usize, seed: u64) -> IsingSystem {
    let g = Philox::new(seed, 77);
    let mut w = 0u64;
    let mut next = || {
        w += 1;
        unit_f64(g.word(w))
    };
    let mut j = vec![0.0; n * n];
    for r in 0..n {
        for c in r + 1..n {
            let v = if next() < 0.2 {
                0.0
            } else {
                4.0 * next() - 2.0
            };
            j[r * n + c] = v;
            j[c * n + r] = v;
        }
    }
    let h = (0..n).map(|_| 2.0 * next() - 1.0).collect();
    let spins = (0..n).map(|_| if next() < 0.5 { 1 } else { -1 }).collect();
    IsingSystem::from_parts(j, h, spins).expect("valid")
}

/// Reference systems with a second coupling family every third agent (as in batch's tests).
fn reference_swarm(k: usize, n: usize, seed: u64) -> Vec<IsingSystem> {
    (0..k as u64)
        .map(|s| {
            let a = IsingSystem::reference(n, seed + s).expect("valid");
            if s % 3 == 0 {
                let j: Vec<f64> = a.couplings().iter().map(|v| v * -0.5).collect();
                IsingSystem::from_parts(j, a.fields().to_vec(), a.spins().to_vec()).expect("valid")
            } else {
                a
            }
        })
        .collect()
}

fn assert_same(cpu: &Swarm, gpu: &Swarm, what: &str) {
    let k = cpu.agents;
    assert_eq!(gpu.agents, k, "{what}");
    for (x, (c, g)) in cpu.scores.iter().zip(&gpu.scores).enumerate() {
        assert!(
            c.to_bits() == g.to_bits(),
            "{what}: score ({}, {}) differs: cpu {c:e} ({:016x}), gpu {g:e} ({:016x})",
            x / k,
            x % k,
            c.to_bits(),
            g.to_bits()
        );
    }
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&cpu.attention),
        bits(&gpu.attention),
        "{what}: attention"
    );
    assert_eq!(cpu.uniform_rows, gpu.uniform_rows, "{what}");
    assert_eq!(cpu.distinct_couplings, gpu.distinct_couplings, "{what}");
}

fn check(e: &CudaEngine, agents: &[IsingSystem], opts: &EmpathyOptions, what: &str) -> bool {
    let cpu = swarm_attention(agents, opts, 2).expect("same sizes");
    let (gpu, t) = e.swarm_attention(agents, opts, 2).expect("the kernel runs");
    assert_same(&cpu, &gpu, what);
    t.shared_state
}

#[test]
fn reference_swarms_match_cpu_bitwise() {
    let Some(e) = engine() else { return };
    for (k, n, steps, seed) in [
        (2, 20, Some(100), 0),
        (37, 9, Some(30), 4),
        (70, 20, Some(100), 12345),
        (5, 1, Some(10), 1),
        (6, 2, Some(10), 2),
        (6, 3, Some(0), 3),
        (6, 33, Some(1), 5),
        (9, 70, None, 6),
    ] {
        let agents = reference_swarm(k, n, seed);
        for weights in [Weights::BALANCED, Weights::COUPLING] {
            let opts = EmpathyOptions {
                steps,
                seed: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                weights,
            };
            let what = format!("k={k} n={n} steps={steps:?} preset={}", weights.name());
            assert!(
                check(&e, &agents, &opts, &what),
                "{what}: expected shared state"
            );
        }
    }
}

#[test]
fn random_couplings_and_fields_match_cpu_bitwise() {
    let Some(e) = engine() else { return };
    for (k, n, steps) in [(40, 16, 50), (33, 25, 80), (12, 64, 40), (8, 130, 20)] {
        let agents: Vec<IsingSystem> = (0..k as u64)
            .map(|s| random_system(n, s * 31 + n as u64))
            .collect();
        let weights = Weights {
            overlap: 0.25,
            energy: 0.35,
            coupling: 0.2,
            magnetization: 0.2,
        };
        let opts = EmpathyOptions {
            steps: Some(steps),
            seed: 99,
            weights,
        };
        check(
            &e,
            &agents,
            &opts,
            &format!("random k={k} n={n} steps={steps}"),
        );
    }
}

#[test]
fn large_systems_use_global_memory_and_still_match() {
    let Some(e) = engine() else { return };
    let agents: Vec<IsingSystem> = (0..4).map(|s| random_system(700, s)).collect();
    let opts = EmpathyOptions {
        steps: Some(12),
        seed: 5,
        weights: Weights::BALANCED,
    };
    let shared = check(&e, &agents, &opts, "random k=4 n=700 steps=12");
    assert!(!shared, "n = 700 should not fit in shared memory");
}

#[test]
fn gpu_runs_are_repeatable_and_mixed_sizes_rejected() {
    let Some(e) = engine() else { return };
    let agents = reference_swarm(50, 20, 7);
    let opts = EmpathyOptions {
        steps: Some(100),
        seed: 3,
        weights: Weights::BALANCED,
    };
    let (a, _) = e.swarm_attention(&agents, &opts, 1).expect("runs");
    let (b, _) = e.swarm_attention(&agents, &opts, 4).expect("runs");
    assert_same(&a, &b, "two GPU runs");
    let mixed = vec![
        IsingSystem::reference(4, 0).expect("valid"),
        IsingSystem::reference(5, 0).expect("valid"),
    ];
    assert!(matches!(
        e.swarm_attention(&mixed, &opts, 1),
        Err(CudaError::Input(_))
    ));
    let (one, _) = e
        .swarm_attention(&agents[..1], &opts, 1)
        .expect("a single agent is fine");
    assert_eq!(one.pairs(), 0);
}
