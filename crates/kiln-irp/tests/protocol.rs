//! The protocol end to end over generators with controlled outputs: every halting rule, the
//! batched and sequential independent modes, and what refine mode shows the model.

use std::cell::RefCell;

use kiln_engine::FinishReason;
use kiln_irp::{
    CandidateSpec, Generated, Generator, HaltReason, Irp, IrpError, Mode, Profile, Refiner,
};

/// Hands out candidates whose model energy is exactly `energies[i]` for candidate i (the
/// profile weighs surprisal only), recording every call's specs.
struct Scripted {
    energies: Vec<f64>,
    scale: f64,
    calls: RefCell<Vec<Vec<CandidateSpec>>>,
}

impl Scripted {
    fn new(energies: &[f64], p: &Profile) -> Self {
        Scripted {
            energies: energies.to_vec(),
            scale: p.surprisal_scale,
            calls: RefCell::new(Vec::new()),
        }
    }
}

impl Generator for &Scripted {
    fn generate(&self, specs: &[CandidateSpec]) -> Result<Vec<Generated>, IrpError> {
        self.calls.borrow_mut().push(specs.to_vec());
        Ok(specs
            .iter()
            .map(|s| {
                // Candidate i has seed `seed + i`; the profiles below use seed 100.
                let i = (s.params.seed.unwrap() - 100) as usize;
                let e = self.energies[i];
                // energy = 1 - exp(-nll / scale)  =>  nll = -scale * ln(1 - e)
                let nll = -self.scale * (1.0 - e).ln();
                Generated {
                    text: format!("answer {i}"),
                    tokens: 1,
                    sum_logprob: -nll,
                    finish: FinishReason::Stop,
                    prompt_tokens: 3,
                    first_token_s: 0.0,
                }
            })
            .collect())
    }
}

fn profile(extra: &str) -> Profile {
    let base = "seed: 100\nenergy_weight_surprisal: 1\nenergy_weight_repetition: 0\n\
                energy_weight_truncation: 0\nenergy_weight_length: 0\n";
    Profile::default()
        .with_yaml(&format!("{base}{extra}"), "test.yaml")
        .unwrap()
}

fn run(p: &Profile, energies: &[f64], batch: bool) -> (kiln_irp::RefineResult, Vec<usize>) {
    let g = Scripted::new(energies, p);
    let mut irp = Irp::new(p.clone(), &g);
    irp.batch = batch;
    let r = irp.run("What is the answer?", &[]).unwrap();
    let sizes = g.calls.borrow().iter().map(Vec::len).collect();
    (r, sizes)
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
}

#[test]
fn converged() {
    let p = profile("iterations: 5\nenergy_convergence_threshold: 0.1");
    let (r, _) = run(&p, &[0.6, 0.3, 0.05, 0.01, 0.01], true);
    assert_eq!(r.info.halt_reason, HaltReason::Converged);
    assert_eq!(r.info.iterations, 3);
    assert_eq!(r.info.best_index, 2);
    assert_eq!(r.answer, "answer 2");
    assert!(
        close(&r.info.energies, &[0.6, 0.3, 0.05]),
        "{:?}",
        r.info.energies
    );
    assert_eq!(r.info.decoded, 5, "the batch decoded all five");
}

#[test]
fn temperature_floor() {
    // desktop schedule: 0.7, 0.66, 0.62, 0.58, 0.54 -> floor 0.5 after 5 steps, before the
    // budget of 7.
    let p = profile("iterations: 7");
    let (r, sizes) = run(&p, &[0.6, 0.5, 0.4, 0.3, 0.2, 0.2, 0.2], true);
    assert_eq!(r.info.halt_reason, HaltReason::TemperatureFloor);
    assert_eq!(r.info.iterations, 5);
    assert_eq!(sizes, [5], "candidates past the floor are never decoded");
    let t: Vec<f64> = r.info.temperatures.clone();
    let want = [0.7, 0.66, 0.62, 0.58, 0.54];
    assert!(
        t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
        "{t:?}"
    );
    assert_eq!(r.info.best_index, 4);
}

#[test]
fn plateau() {
    let p = profile(
        "iterations: 6\nmin_temperature: 0.1\nenergy_plateau_window: 3\nenergy_plateau_delta: 0.05",
    );
    let (r, _) = run(&p, &[0.9, 0.5, 0.52, 0.54, 0.2, 0.2], true);
    assert_eq!(r.info.halt_reason, HaltReason::Plateau);
    assert_eq!(r.info.iterations, 4);
    assert_eq!(r.info.best_index, 1);
}

#[test]
fn budget() {
    let p = profile("iterations: 3\nmin_temperature: 0.1");
    let (r, sizes) = run(&p, &[0.9, 0.5, 0.7], true);
    assert_eq!(r.info.halt_reason, HaltReason::Budget);
    assert_eq!(r.info.iterations, 3);
    assert_eq!(r.info.best_index, 1);
    assert_eq!(sizes, [3]);
}

#[test]
fn ties_keep_the_earliest() {
    let p = profile("iterations: 3\nmin_temperature: 0.1\nenergy_plateau_delta: 0");
    let (r, _) = run(&p, &[0.5, 0.4, 0.4], true);
    assert_eq!(r.info.best_index, 1);
}

#[test]
fn batched_equals_sequential() {
    for (energies, extra) in [
        (vec![0.6, 0.3, 0.05, 0.2, 0.2], "iterations: 5"),
        (vec![0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1], "iterations: 7"),
        (
            vec![0.9, 0.5, 0.52, 0.54, 0.2, 0.2],
            "iterations: 6\nmin_temperature: 0.1",
        ),
        (vec![0.9, 0.8, 0.7], "iterations: 3\nmin_temperature: 0.1"),
    ] {
        let p = profile(extra);
        let (a, sa) = run(&p, &energies, true);
        let (b, sb) = run(&p, &energies, false);
        assert_eq!(a.answer, b.answer, "{extra}");
        assert_eq!(a.info.energies, b.info.energies);
        assert_eq!(a.info.temperatures, b.info.temperatures);
        assert_eq!(a.info.best_index, b.info.best_index);
        assert_eq!(a.info.halt_reason, b.info.halt_reason);
        assert_eq!(sa.len(), 1, "one batch");
        assert_eq!(sb.iter().sum::<usize>(), b.info.iterations, "one per step");
    }
}

#[test]
fn specs_follow_the_schedule_and_seeds() {
    let p = profile("iterations: 5");
    let g = Scripted::new(&[0.9, 0.8, 0.7, 0.6, 0.5], &p);
    Irp::new(p.clone(), &g).run("Q?", &[]).unwrap();
    let calls = g.calls.borrow();
    let specs = &calls[0];
    for (i, s) in specs.iter().enumerate() {
        assert_eq!(s.params.seed, Some(100 + i as u64));
        assert!((s.params.temperature - p.temperature(i)).abs() < 1e-9);
        assert_eq!(s.params.max_tokens, p.max_tokens);
        assert_eq!((s.params.top_k, s.params.top_p), (p.top_k, p.top_p));
        assert_eq!(s.messages.last().unwrap().content, "Q?");
    }
}

#[test]
fn refine_mode_shows_the_best_answer_so_far() {
    let p = profile("iterations: 4\nmode: refine\nmin_temperature: 0.1");
    assert_eq!(p.mode, Mode::Refine);
    let g = Scripted::new(&[0.7, 0.4, 0.6, 0.5], &p);
    let r = Irp::new(p.clone(), &g)
        .run(
            "Why?",
            &[kiln_tokenizer::chat::Message::new("system", "Be brief.")],
        )
        .unwrap();
    let calls = g.calls.borrow();
    assert_eq!(calls.len(), 4, "sequential");
    assert_eq!(calls[0][0].messages[1].content, "Why?");
    assert_eq!(calls[0][0].messages[0].content, "Be brief.", "context kept");
    assert!(calls[1][0].messages[1].content.contains("answer 0"));
    assert!(calls[2][0].messages[1].content.contains("answer 1"));
    assert!(
        calls[3][0].messages[1].content.contains("answer 1"),
        "1 is still the best"
    );
    assert_eq!(r.answer, "answer 1");
}

#[test]
fn heuristic_energy_reproduces_the_seed() {
    // The seed's energy of "answer i" (2 words, no punctuation): 0.4 T/T0 + 0.3 * 0.96 + 0.09.
    let p = profile("iterations: 3\nenergy: heuristic\nmin_temperature: 0.1");
    let (r, _) = run(&p, &[0.5, 0.5, 0.5], true);
    for (e, t) in r.info.energies.iter().zip(&r.info.temperatures) {
        let want = 0.4 * *t / 0.7 + 0.3 * 0.96 + 0.09;
        assert!((e - want).abs() < 1e-6, "{e} vs {want}");
    }
    assert_eq!(
        r.info.best_index, 2,
        "the heuristic rewards the lowest temperature"
    );
    assert_eq!(r.info.energy_terms.terms.len(), 3);
}
