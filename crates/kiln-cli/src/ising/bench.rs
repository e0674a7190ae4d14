//! Benchmarks of the workloads (`kiln ising bench`): medians of repeated wall-clock timings.

use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;

use kiln_ising::batch::{emotions, swarm_attention};
use kiln_ising::empathy::{empathy, EmpathyOptions, Weights};
use kiln_ising::error::Result;
use kiln_ising::social::social_attention;
use kiln_ising::system::IsingSystem;

/// Annealing steps used by the empathy, social and swarm benchmarks (the spec's workload).
pub const BENCH_STEPS: usize = 100;

/// What `bench` measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// One empathy, n = 20, 100 steps, on one thread (microseconds, median; a new seed each call).
    pub empathy_n20_us: f64,
    /// Social attention of one observer over 5 agents, n = 20, 100 steps, one thread (microseconds).
    pub social5_us: f64,
    /// Emotion of 100 systems of n = 20, one thread (microseconds).
    pub emotion100_us: f64,
    /// All-pairs swarm empathies per second on `threads` threads.
    pub swarm_pairs_per_s: f64,
    /// Agents in the swarm benchmark.
    pub swarm_agents: usize,
    /// Threads used by the swarm benchmark.
    pub threads: usize,
    /// Repeats each median is taken over.
    pub repeats: usize,
    /// Where the swarm benchmark ran: `cpu` or `cuda` (the other three always run on one CPU thread).
    pub device: &'static str,
    /// The GPU's name, when the swarm ran on one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// Swarm empathies per second counting the kernels' time alone (CUDA events), on a GPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm_kernel_pairs_per_s: Option<f64>,
}

/// Median of `repeats` timings of `inner` calls of `f`, in microseconds per call.
pub fn median_us(repeats: usize, inner: usize, mut f: impl FnMut()) -> f64 {
    let inner = inner.max(1);
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let t = Instant::now();
            for _ in 0..inner {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / inner as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Runs every benchmark; the swarm one with `swarm_agents` agents on `threads` threads.
pub fn run(repeats: usize, swarm_agents: usize, threads: usize) -> Result<BenchReport> {
    let (empathy_n20_us, social5_us, emotion100_us) = single_thread(repeats)?;
    let swarm = swarm_agents_of(swarm_agents)?;
    let opts = swarm_options();
    let pairs = swarm.len() * (swarm.len() - 1);
    let swarm_repeats = repeats.clamp(1, 3);
    let secs = median_us(swarm_repeats, 1, || {
        let _ = black_box(swarm_attention(black_box(&swarm), &opts, threads));
    }) / 1e6;
    Ok(BenchReport {
        empathy_n20_us,
        social5_us,
        emotion100_us,
        swarm_pairs_per_s: pairs as f64 / secs,
        swarm_agents: swarm.len(),
        threads,
        repeats,
        device: "cpu",
        gpu: None,
        swarm_kernel_pairs_per_s: None,
    })
}

/// Like [`run`], with the swarm on `engine`'s GPU: one untimed warm-up, then the median of up to
/// five runs (wall time of the whole call, and the kernels' own time).
#[cfg(feature = "cuda")]
pub fn run_cuda(
    repeats: usize,
    swarm_agents: usize,
    threads: usize,
    engine: &kiln_ising::cuda::CudaEngine,
) -> std::result::Result<BenchReport, kiln_ising::cuda::CudaError> {
    let (empathy_n20_us, social5_us, emotion100_us) = single_thread(repeats)?;
    let swarm = swarm_agents_of(swarm_agents)?;
    let opts = swarm_options();
    let pairs = swarm.len() * (swarm.len() - 1);
    engine.swarm_attention(&swarm, &opts, threads)?;
    let mut wall = Vec::new();
    let mut kernel = Vec::new();
    for _ in 0..repeats.clamp(1, 5) {
        let (_, t) = engine.swarm_attention(black_box(&swarm), &opts, threads)?;
        wall.push(t.seconds);
        kernel.push(t.kernel_seconds);
    }
    Ok(BenchReport {
        empathy_n20_us,
        social5_us,
        emotion100_us,
        swarm_pairs_per_s: pairs as f64 / median(&mut wall),
        swarm_agents: swarm.len(),
        threads,
        repeats,
        device: "cuda",
        gpu: Some(engine.device_name().to_string()),
        swarm_kernel_pairs_per_s: Some(pairs as f64 / median(&mut kernel)),
    })
}

#[cfg(feature = "cuda")]
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The swarm benchmark's agents: reference systems of n = 20 with seeds 0.. (at least two).
fn swarm_agents_of(k: usize) -> Result<Vec<IsingSystem>> {
    (0..k.max(2) as u64)
        .map(|s| IsingSystem::reference(20, s))
        .collect()
}

/// Options of the empathy, social and swarm benchmarks.
fn swarm_options() -> EmpathyOptions {
    EmpathyOptions {
        steps: Some(BENCH_STEPS),
        seed: 100,
        weights: Weights::BALANCED,
    }
}

/// The one-thread latency benchmarks: one empathy, social attention over 5, emotion of 100 (us).
fn single_thread(repeats: usize) -> Result<(f64, f64, f64)> {
    let a = IsingSystem::reference(20, 42)?;
    let b = IsingSystem::reference(20, 43)?;
    let opts = swarm_options();
    // The anneal seed changes on every call: repeating one seed would let the branch predictor
    // learn its 1,000 accept/reject decisions and flatter the figure.
    black_box(empathy(&a, &b, &opts)?);
    let mut call = 0u64;
    let empathy_n20_us = median_us(repeats, 200, || {
        call += 1;
        let o = EmpathyOptions { seed: call, ..opts };
        let _ = black_box(empathy(black_box(&a), black_box(&b), &o));
    });

    let agents: Vec<IsingSystem> = (1..=5)
        .map(|s| IsingSystem::reference(20, s))
        .collect::<Result<_>>()?;
    let social5_us = median_us(repeats, 40, || {
        call += 1;
        let o = EmpathyOptions { seed: call, ..opts };
        let _ = black_box(social_attention(black_box(&a), &agents, &o));
    });

    let hundred: Vec<IsingSystem> = (0..100)
        .map(|s| IsingSystem::reference(20, s))
        .collect::<Result<_>>()?;
    let emotion100_us = median_us(repeats, 20, || {
        black_box(emotions(black_box(&hundred), 1));
    });
    Ok((empathy_n20_us, social5_us, emotion100_us))
}
