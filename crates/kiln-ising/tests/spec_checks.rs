//! The spec's "checks any implementation must pass", as property tests over random systems.

use kiln_ising::anneal::{anneal_traced, anneal_with, Workspace};
use kiln_ising::batch::{empathy_many, pair_seed, swarm_attention};
use kiln_ising::emotion::emotion;
use kiln_ising::empathy::{coupling_similarity, empathy, overlap, EmpathyOptions, Weights};
use kiln_ising::rng::exp_det;
use kiln_ising::social::{normalise, social_attention};
use kiln_ising::system::IsingSystem;
use proptest::prelude::*;

/// A random valid system: n in 1..=max_n, symmetric couplings in [-2, 2] with some zeros, fields,
/// and spins.
fn system(max_n: usize, with_fields: bool) -> impl Strategy<Value = IsingSystem> {
    (1..=max_n).prop_flat_map(move |n| {
        let pairs = n * (n - 1) / 2;
        (
            prop::collection::vec(prop_oneof![Just(0.0), -2.0..2.0f64], pairs),
            prop::collection::vec(-1.0..1.0f64, n),
            prop::collection::vec(prop::bool::ANY, n),
        )
            .prop_map(move |(upper, h, s)| {
                let mut j = vec![0.0; n * n];
                let mut k = 0;
                for r in 0..n {
                    for c in r + 1..n {
                        j[r * n + c] = upper[k];
                        j[c * n + r] = upper[k];
                        k += 1;
                    }
                }
                let h = if with_fields { h } else { vec![0.0; n] };
                let spins = s.iter().map(|&b| if b { 1 } else { -1 }).collect();
                IsingSystem::from_parts(j, h, spins).expect("generated systems are valid")
            })
    })
}

fn tolerance(e: f64) -> f64 {
    1e-9 * e.abs().max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// dE from the local formula equals the difference of two full energy evaluations.
    #[test]
    fn local_delta_energy_matches_full_energies(s in system(40, true), pick in any::<prop::sample::Index>()) {
        let i = pick.index(s.n());
        let before = s.energy();
        let mut flipped = s.clone();
        flipped.flip(i);
        let after = flipped.energy();
        let de = s.delta_energy(i);
        prop_assert!((de - (after - before)).abs() <= tolerance(before), "dE {} vs {}", de, after - before);
    }

    /// The annealer's incrementally tracked energy and magnetization match a full recomputation.
    #[test]
    fn annealer_tracks_energy_exactly(s in system(30, true), steps in 0usize..60, seed in any::<u64>()) {
        let mut a = s.clone();
        let mut trace = Vec::new();
        let rep = anneal_traced(&mut a, Some(steps), seed, &mut trace);
        prop_assert_eq!(trace.len(), steps + 1);
        prop_assert!((rep.final_energy - a.energy()).abs() <= tolerance(a.energy()));
        prop_assert!((rep.final_magnetization - a.magnetization()).abs() <= 1e-12);
        prop_assert!((rep.initial_energy - s.energy()).abs() <= tolerance(s.energy()));
    }

    /// The optimised annealer makes exactly the decisions of the spec's plain definition.
    #[test]
    fn annealer_matches_plain_definition(s in system(24, true), steps in 1usize..40, seed in any::<u64>()) {
        use kiln_ising::anneal::{acceptance_floor, beta};
        use kiln_ising::rng::{index_and_unit, Philox, STREAM_ANNEAL};
        let mut fast = s.clone();
        kiln_ising::anneal(&mut fast, Some(steps), seed);
        let mut plain = s.clone();
        let g = Philox::new(seed, STREAM_ANNEAL);
        for t in 0..steps {
            let b = beta(t, steps);
            for p in 0..10 {
                let k = (t * 10 + p) as u64;
                let (i, u) = index_and_unit(g.block(k / 4)[(k % 4) as usize], plain.n());
                let de = plain.delta_energy(i);
                if u < exp_det(-b * de).max(acceptance_floor(b)) {
                    plain.flip(i);
                }
            }
        }
        // Decisions agree unless a dE lands within rounding of a threshold, which random reals avoid.
        prop_assert_eq!(fast.spins(), plain.spins());
    }

    /// With h = 0, energy and emotion are unchanged by flipping every spin.
    #[test]
    fn global_flip_symmetry_without_fields(s in system(40, false)) {
        let mut f = s.clone();
        f.flip_all();
        prop_assert_eq!(s.energy(), f.energy());
        prop_assert_eq!(emotion(&s), emotion(&f));
    }

    /// Overlap is symmetric, flip-invariant and in [0.5, 1].
    #[test]
    fn overlap_is_symmetric(pair in (1usize..64).prop_flat_map(|n| (
        prop::collection::vec(prop::bool::ANY, n),
        prop::collection::vec(prop::bool::ANY, n),
    ))) {
        let to_spins = |v: &[bool]| v.iter().map(|&b| if b { 1i8 } else { -1 }).collect::<Vec<_>>();
        let (a, b) = (to_spins(&pair.0), to_spins(&pair.1));
        let ab = overlap(&a, &b).expect("same length");
        prop_assert_eq!(ab, overlap(&b, &a).expect("same length"));
        let nb: Vec<i8> = b.iter().map(|s| -s).collect();
        prop_assert_eq!(ab, overlap(&a, &nb).expect("same length"));
        prop_assert!((0.5..=1.0).contains(&ab));
        prop_assert_eq!(overlap(&a, &a).expect("same length"), 1.0);
    }

    /// Empathy of a system towards an identical copy has coupling similarity exactly 1.
    #[test]
    fn identical_copy_has_similarity_one(s in system(30, true), seed in any::<u64>(), steps in 0usize..30) {
        let copy = s.clone();
        prop_assert_eq!(coupling_similarity(&s, &copy).expect("same size"), 1.0);
        let opts = EmpathyOptions { steps: Some(steps), seed, weights: Weights::BALANCED };
        let e = empathy(&s, &copy, &opts).expect("same size");
        prop_assert_eq!(e.coupling_similarity, 1.0);
        prop_assert!((0.0..=1.0).contains(&e.score));
    }

    /// Coupling similarity is symmetric to the bit and within [0, 1].
    #[test]
    fn similarity_is_symmetric(pair in (2usize..20).prop_flat_map(|n| (system_n(n), system_n(n)))) {
        let (a, b) = pair;
        let ab = coupling_similarity(&a, &b).expect("same size");
        prop_assert_eq!(ab, coupling_similarity(&b, &a).expect("same size"));
        prop_assert!((0.0..=1.0).contains(&ab));
    }

    /// Same seed, same inputs: identical results, every time and with reused buffers.
    #[test]
    fn same_seed_same_result(s in system(30, true), other_seed in any::<u64>(), seed in any::<u64>(), steps in 1usize..80) {
        let b = IsingSystem::from_parts(s.couplings().to_vec(), s.fields().to_vec(), s.spins().to_vec()).expect("valid");
        let opts = EmpathyOptions { steps: Some(steps), seed, weights: Weights::COUPLING };
        let e1 = empathy(&s, &b, &opts).expect("same size");
        let e2 = empathy(&s, &b, &opts).expect("same size");
        prop_assert_eq!(e1, e2);
        let mut x = s.clone();
        let mut y = s.clone();
        let mut ws = Workspace::new();
        // A dirty workspace from another system must not leak into the next anneal.
        let mut junk = IsingSystem::reference(37, other_seed).expect("valid");
        anneal_with(&mut junk, Some(5), 1, &mut ws, None);
        let r1 = anneal_with(&mut x, Some(steps), seed, &mut ws, None);
        let r2 = kiln_ising::anneal(&mut y, Some(steps), seed);
        prop_assert_eq!(r1, r2);
        prop_assert_eq!(x, y);
    }

    /// Scores are in [0, 1] and attention weights sum to 1 whatever the scores.
    #[test]
    fn attention_weights_sum_to_one(scores in prop::collection::vec(prop_oneof![Just(0.0), 0.0..1.0f64], 1..50)) {
        let (w, uniform) = normalise(&scores);
        prop_assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        if scores.iter().all(|&s| s == 0.0) {
            prop_assert!(uniform);
            prop_assert!(w.iter().all(|&x| x == w[0]));
        }
    }

    /// Validation never panics: arbitrary (possibly broken) inputs give a system or an error.
    #[test]
    fn validation_never_panics(
        j in prop::collection::vec(prop_oneof![Just(f64::NAN), Just(0.0), Just(1.0), -3.0..3.0f64], 0..40),
        h in prop::collection::vec(prop_oneof![Just(f64::INFINITY), -1.0..1.0f64], 0..8),
        s in prop::collection::vec(-2i8..=2, 0..8),
    ) {
        if let Ok(sys) = IsingSystem::from_parts(j, h, s) {
            prop_assert!(sys.energy().is_finite());
        }
    }

    /// The deterministic exponential agrees with the platform one to a few ulp.
    #[test]
    fn exp_det_is_accurate(x in -700.0..700.0f64) {
        let (got, want) = (exp_det(x), x.exp());
        prop_assert!(((got - want) / want).abs() < 5e-16, "x {} got {} want {}", x, got, want);
    }
}

fn system_n(n: usize) -> impl Strategy<Value = IsingSystem> {
    system(n, true).prop_filter("exact size", move |s| s.n() == n)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// The swarm and the pair batch give bit-identical results on 1, 2 and 3 threads.
    #[test]
    fn batch_results_do_not_depend_on_thread_count(k in 2usize..9, n in 1usize..14, seed in any::<u64>(), steps in 1usize..40) {
        let agents: Vec<IsingSystem> = (0..k as u64)
            .map(|s| IsingSystem::reference(n, seed.wrapping_add(s)).expect("valid"))
            .collect();
        let opts = EmpathyOptions { steps: Some(steps), seed, weights: Weights::BALANCED };
        let one = swarm_attention(&agents, &opts, 1).expect("same sizes");
        for threads in [2, 3] {
            let many = swarm_attention(&agents, &opts, threads).expect("same sizes");
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&one.scores), bits(&many.scores));
            prop_assert_eq!(bits(&one.attention), bits(&many.attention));
        }
        let pairs: Vec<(usize, usize)> = (0..k).flat_map(|i| (0..k).map(move |j| (i, j))).collect();
        let p1 = empathy_many(&agents, &pairs, &opts, 1).expect("valid");
        let p3 = empathy_many(&agents, &pairs, &opts, 3).expect("valid");
        prop_assert_eq!(&p1, &p3);
        for (&(i, j), e) in pairs.iter().zip(&p1) {
            if i != j {
                prop_assert_eq!(e.score.to_bits(), one.scores[i * k + j].to_bits());
            }
            let single = empathy(&agents[i], &agents[j], &EmpathyOptions { seed: pair_seed(seed, i, j), ..opts }).expect("same size");
            prop_assert_eq!(&single, e);
        }
    }

    /// Social attention: weights sum to 1 and each is the agent's share of the total empathy.
    #[test]
    fn social_attention_normalises_empathy(k in 1usize..6, n in 2usize..16, seed in any::<u64>()) {
        let obs = IsingSystem::reference(n, seed).expect("valid");
        let agents: Vec<IsingSystem> = (1..=k as u64)
            .map(|s| IsingSystem::reference(n, seed ^ s).expect("valid"))
            .collect();
        let opts = EmpathyOptions { steps: Some(20), seed, weights: Weights::BALANCED };
        let sa = social_attention(&obs, &agents, &opts).expect("same sizes");
        prop_assert!((sa.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let total: f64 = sa.empathies.iter().map(|e| e.score).sum();
        for (w, e) in sa.weights.iter().zip(&sa.empathies) {
            prop_assert!((w - e.score / total).abs() < 1e-12);
        }
    }
}
