//! The iterative refinement protocol (IRP): five operations, a temperature schedule and four
//! halting rules.
//!
//! `init` builds the state; `step` produces one more candidate at the current temperature,
//! scores it with `energy`, keeps it if it is the best so far and lowers the temperature;
//! `halt` is checked after every step (first match wins: converged, temperature_floor,
//! plateau, budget); `result` returns the best answer with everything that led to it.
//!
//! In `independent` mode the candidates do not depend on each other, so the first `step`
//! generates every candidate the schedule can reach in one call to the generator (the engine
//! decodes them as one batch) and later steps take them in iteration order: the halting rules
//! see exactly the sequence a one-at-a-time run would see, and the result is the same.

use std::collections::VecDeque;
use std::time::Instant;

use kiln_engine::FinishReason;
use kiln_tokenizer::chat::Message;
use serde::Serialize;

use crate::energy::{energy, CandidateView, EnergyTerms};
use crate::generate::{CandidateSpec, Generated, Generator};
use crate::profile::{EnergyKind, Mode, Profile};
use crate::IrpError;

/// Why refinement stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HaltReason {
    /// The best energy fell below `energy_convergence_threshold`.
    Converged,
    /// The temperature reached `min_temperature`.
    TemperatureFloor,
    /// The last `energy_plateau_window` energies lie within `energy_plateau_delta`.
    Plateau,
    /// `iterations` candidates were produced.
    Budget,
}

impl HaltReason {
    /// The name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            HaltReason::Converged => "converged",
            HaltReason::TemperatureFloor => "temperature_floor",
            HaltReason::Plateau => "plateau",
            HaltReason::Budget => "budget",
        }
    }
}

impl std::fmt::Display for HaltReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The halting rules in spec order, after `energies.len()` steps; `next_temperature` is the
/// temperature the next step would use.
pub fn check_halt(p: &Profile, energies: &[f64], next_temperature: f32) -> Option<HaltReason> {
    let best = energies.iter().copied().fold(f64::INFINITY, f64::min);
    if best < p.energy_convergence_threshold {
        return Some(HaltReason::Converged);
    }
    if p.at_floor(next_temperature) {
        return Some(HaltReason::TemperatureFloor);
    }
    let w = p.energy_plateau_window;
    if energies.len() >= w {
        let last = &energies[energies.len() - w..];
        let hi = last.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lo = last.iter().copied().fold(f64::INFINITY, f64::min);
        if hi - lo <= p.energy_plateau_delta {
            return Some(HaltReason::Plateau);
        }
    }
    if energies.len() >= p.iterations {
        return Some(HaltReason::Budget);
    }
    None
}

/// Candidates a run starting at iteration `i` can reach before a halting rule that does not
/// depend on energies (temperature floor, budget) stops it.
pub fn reachable(p: &Profile, i: usize) -> usize {
    (1..)
        .find(|&n| i + n >= p.iterations || p.at_floor(p.temperature(i + n)))
        .unwrap_or(1)
}

/// One scored candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// The answer.
    pub text: String,
    /// Its temperature (rounded to 6 decimals for display; sampling used the f32 value).
    pub temperature: f64,
    /// Its seed.
    pub seed: u64,
    /// Its energy.
    pub energy: f64,
    /// The energy's terms.
    pub terms: EnergyTerms,
    /// Generated tokens.
    pub tokens: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Why generation stopped.
    pub finish: FinishReason,
}

/// Seconds per phase of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Until the first token of each generation call (prompt processing), summed over calls.
    pub prefill_s: f64,
    /// The rest of each generation call.
    pub decode_s: f64,
    /// Scoring candidates.
    pub energy_s: f64,
    /// The whole run.
    pub total_s: f64,
}

/// Everything a refinement run knows between steps.
#[derive(Debug, Clone)]
pub struct RefineState {
    /// The question.
    pub question: String,
    /// Earlier messages of the conversation.
    pub context: Vec<Message>,
    /// Steps done.
    pub iteration: usize,
    /// Temperature of the next step.
    pub temperature: f32,
    /// Candidates so far, in iteration order.
    pub candidates: Vec<Candidate>,
    /// Index of the best (lowest-energy, earliest on ties) candidate.
    pub best: Option<usize>,
    /// Set by the run loop when a halting rule fired.
    pub halt: Option<HaltReason>,
    /// Phase timings so far.
    pub timings: Timings,
    /// Candidates decoded, including batch members a halt made unnecessary.
    pub decoded: usize,
    prefetched: VecDeque<Generated>,
    started: Instant,
    thermal_start: Option<f64>,
}

/// A candidate as the info output shows it.
pub type CandidateInfo = Candidate;

/// What a run reports besides the answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefineInfo {
    /// The profile's name.
    pub profile: String,
    /// The mode.
    pub mode: Mode,
    /// The energy function.
    pub energy: EnergyKind,
    /// Steps run.
    pub iterations: usize,
    /// Energy of every candidate, in order.
    pub energies: Vec<f64>,
    /// Temperature of every candidate, in order.
    pub temperatures: Vec<f64>,
    /// Index of the chosen candidate.
    pub best_index: usize,
    /// Its energy.
    pub best_energy: f64,
    /// Why the run stopped.
    pub halt_reason: HaltReason,
    /// The chosen candidate's energy terms.
    pub energy_terms: EnergyTerms,
    /// Every candidate.
    pub candidates: Vec<CandidateInfo>,
    /// Phase timings.
    pub timings: Timings,
    /// Prompt tokens over all candidates.
    pub prompt_tokens: usize,
    /// Generated tokens over the candidates used.
    pub completion_tokens: usize,
    /// Candidates decoded (a batch can decode some that an early halt leaves unused).
    pub decoded: usize,
    /// Hottest thermal zone before and after, in °C, when monitoring is on and readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thermal_c: Option<[f64; 2]>,
}

impl RefineInfo {
    /// The short JSON form the server returns as `refinement`: iterations, energies,
    /// temperatures, best index and energy, halt reason, the best candidate's energy terms,
    /// profile, mode and energy function.
    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::json!({
            "profile": self.profile,
            "mode": self.mode,
            "energy": self.energy,
            "iterations": self.iterations,
            "energies": self.energies,
            "temperatures": self.temperatures,
            "best_index": self.best_index,
            "best_energy": self.best_energy,
            "halt_reason": self.halt_reason,
            "energy_terms": self.energy_terms,
            "decoded": self.decoded,
        })
    }
}

/// The best answer and the info.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefineResult {
    /// The chosen answer.
    pub answer: String,
    /// How it was chosen.
    pub info: RefineInfo,
}

/// The five operations every refiner implements, and the loop that drives them.
pub trait Refiner {
    /// Builds the state: iteration 0, the initial temperature, no best.
    fn init(&self, question: &str, context: &[Message]) -> RefineState;
    /// Produces one more candidate at the current temperature, scores it, keeps it if best,
    /// and lowers the temperature.
    fn step(&self, state: &mut RefineState) -> Result<(), IrpError>;
    /// A candidate's energy in [0, 1]; lower is better.
    fn energy(&self, state: &RefineState, candidate: &CandidateView<'_>) -> EnergyTerms;
    /// `Some(reason)` when refinement should stop.
    fn halt(&self, state: &RefineState) -> Option<HaltReason>;
    /// The best answer and the info.
    fn result(&self, state: RefineState) -> RefineResult;

    /// Runs the protocol to a halt.
    fn run(&self, question: &str, context: &[Message]) -> Result<RefineResult, IrpError> {
        let mut st = self.init(question, context);
        loop {
            self.step(&mut st)?;
            if let Some(h) = self.halt(&st) {
                st.halt = Some(h);
                return Ok(self.result(st));
            }
        }
    }
}

/// The refiner of a profile over a generator.
pub struct Irp<G: Generator> {
    /// Settings.
    pub profile: Profile,
    /// Where candidates come from.
    pub generator: G,
    /// In `independent` mode, generate every reachable candidate in one call (true, the
    /// default) or one per step (false: the sequential reference).
    pub batch: bool,
}

/// The user message of a `refine`-mode step that improves on `best`.
pub fn refine_prompt(question: &str, best: &str) -> String {
    format!(
        "{question}\n\nHere is a draft answer:\n\n{best}\n\nWrite a better answer to the question: fix any mistakes and make it clear, correct and complete. Reply with the answer only."
    )
}

/// The hottest thermal zone in °C (Linux sysfs), if any is readable.
pub fn hottest_thermal_zone_c() -> Option<f64> {
    let dir = std::fs::read_dir("/sys/class/thermal").ok()?;
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("temp")).ok())
        .filter_map(|s| s.trim().parse::<f64>().ok())
        .map(|milli| milli / 1000.0)
        .reduce(f64::max)
}

impl<G: Generator> Irp<G> {
    /// A batched refiner.
    pub fn new(profile: Profile, generator: G) -> Self {
        Irp {
            profile,
            generator,
            batch: true,
        }
    }

    fn spec(&self, messages: Vec<Message>, i: usize) -> CandidateSpec {
        CandidateSpec {
            messages,
            params: self.profile.sampling(i),
        }
    }

    fn messages(&self, st: &RefineState, user: String) -> Vec<Message> {
        let mut m = st.context.clone();
        m.push(Message::new("user", user));
        m
    }

    fn generate(&self, st: &mut RefineState, specs: &[CandidateSpec]) -> Result<(), IrpError> {
        let t = Instant::now();
        let got = self.generator.generate(specs)?;
        let wall = t.elapsed().as_secs_f64();
        let prefill = got
            .iter()
            .map(|g| g.first_token_s)
            .fold(0.0, f64::max)
            .min(wall);
        st.timings.prefill_s += prefill;
        st.timings.decode_s += wall - prefill;
        st.decoded += got.len();
        st.prefetched.extend(got);
        Ok(())
    }
}

impl<G: Generator> Refiner for Irp<G> {
    fn init(&self, question: &str, context: &[Message]) -> RefineState {
        RefineState {
            question: question.to_owned(),
            context: context.to_vec(),
            iteration: 0,
            temperature: self.profile.temperature(0),
            candidates: Vec::new(),
            best: None,
            halt: None,
            timings: Timings::default(),
            decoded: 0,
            prefetched: VecDeque::new(),
            started: Instant::now(),
            thermal_start: if self.profile.enable_thermal_monitoring {
                hottest_thermal_zone_c()
            } else {
                None
            },
        }
    }

    fn step(&self, st: &mut RefineState) -> Result<(), IrpError> {
        let i = st.iteration;
        if st.prefetched.is_empty() {
            let specs: Vec<CandidateSpec> = match self.profile.mode {
                Mode::Independent => {
                    let n = if self.batch {
                        reachable(&self.profile, i)
                    } else {
                        1
                    };
                    let msgs = self.messages(st, st.question.clone());
                    (i..i + n).map(|k| self.spec(msgs.clone(), k)).collect()
                }
                Mode::Refine => {
                    let user = match st.best {
                        Some(b) => refine_prompt(&st.question, &st.candidates[b].text),
                        None => st.question.clone(),
                    };
                    vec![self.spec(self.messages(st, user), i)]
                }
            };
            self.generate(st, &specs)?;
        }
        let g = st
            .prefetched
            .pop_front()
            .ok_or_else(|| IrpError::Engine("the generator returned no candidate".into()))?;
        let temperature = self.profile.temperature(i);
        let t = Instant::now();
        let view = CandidateView {
            text: &g.text,
            temperature,
            sum_logprob: g.sum_logprob,
            tokens: g.tokens,
            truncated: matches!(g.finish, FinishReason::Length | FinishReason::ContextFull),
        };
        let terms = self.energy(st, &view);
        st.timings.energy_s += t.elapsed().as_secs_f64();
        let e = terms.total;
        st.candidates.push(Candidate {
            text: g.text,
            temperature: (temperature as f64 * 1e6).round() / 1e6,
            seed: self.profile.seed.wrapping_add(i as u64),
            energy: e,
            terms,
            tokens: g.tokens,
            prompt_tokens: g.prompt_tokens,
            finish: g.finish,
        });
        if st.best.is_none_or(|b| e < st.candidates[b].energy) {
            st.best = Some(i);
        }
        st.iteration += 1;
        st.temperature = self.profile.temperature(st.iteration);
        Ok(())
    }

    fn energy(&self, _state: &RefineState, candidate: &CandidateView<'_>) -> EnergyTerms {
        energy(&self.profile, candidate)
    }

    fn halt(&self, st: &RefineState) -> Option<HaltReason> {
        let energies: Vec<f64> = st.candidates.iter().map(|c| c.energy).collect();
        check_halt(&self.profile, &energies, st.temperature)
    }

    fn result(&self, mut st: RefineState) -> RefineResult {
        st.timings.total_s = st.started.elapsed().as_secs_f64();
        let best = st.best.unwrap_or(0);
        let chosen = st.candidates.get(best);
        let thermal_c = match (st.thermal_start, self.profile.enable_thermal_monitoring) {
            (Some(a), true) => hottest_thermal_zone_c().map(|b| [a, b]),
            _ => None,
        };
        RefineResult {
            answer: chosen.map(|c| c.text.clone()).unwrap_or_default(),
            info: RefineInfo {
                profile: self.profile.name.clone(),
                mode: self.profile.mode,
                energy: self.profile.energy,
                iterations: st.candidates.len(),
                energies: st.candidates.iter().map(|c| c.energy).collect(),
                temperatures: st.candidates.iter().map(|c| c.temperature).collect(),
                best_index: best,
                best_energy: chosen.map_or(1.0, |c| c.energy),
                halt_reason: st.halt.unwrap_or(HaltReason::Budget),
                energy_terms: chosen.map(|c| c.terms.clone()).unwrap_or(EnergyTerms {
                    kind: self.profile.energy,
                    total: 1.0,
                    terms: Vec::new(),
                    note: None,
                }),
                prompt_tokens: st.candidates.iter().map(|c| c.prompt_tokens).sum(),
                completion_tokens: st.candidates.iter().map(|c| c.tokens).sum(),
                decoded: st.decoded,
                timings: st.timings,
                thermal_c,
                candidates: st.candidates,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(yaml: &str) -> Profile {
        Profile::default().with_yaml(yaml, "test").unwrap()
    }

    #[test]
    fn converged_fires_first() {
        let p = profile("energy_convergence_threshold: 0.1");
        assert_eq!(
            check_halt(&p, &[0.5, 0.09], 0.6),
            Some(HaltReason::Converged)
        );
        assert_eq!(check_halt(&p, &[0.1], 0.6), None, "strictly below");
        // Converged wins over every other rule that also holds.
        assert_eq!(
            check_halt(&p, &[0.05, 0.05, 0.05, 0.05, 0.05], 0.5),
            Some(HaltReason::Converged)
        );
    }

    #[test]
    fn temperature_floor_before_plateau_and_budget() {
        let p = profile("");
        assert_eq!(
            check_halt(&p, &[0.5, 0.5, 0.5, 0.5, 0.5], p.temperature(5)),
            Some(HaltReason::TemperatureFloor)
        );
        assert_eq!(check_halt(&p, &[0.5], p.temperature(1)), None);
    }

    #[test]
    fn plateau_needs_a_full_window() {
        let p = profile("energy_plateau_window: 3\nenergy_plateau_delta: 0.05\niterations: 10");
        assert_eq!(check_halt(&p, &[0.5, 0.52], 0.62), None);
        assert_eq!(
            check_halt(&p, &[0.5, 0.52, 0.54], 0.58),
            Some(HaltReason::Plateau)
        );
        assert_eq!(check_halt(&p, &[0.5, 0.52, 0.56], 0.58), None);
        // Only the last window counts.
        assert_eq!(
            check_halt(&p, &[0.9, 0.3, 0.5, 0.5, 0.5], 0.52),
            Some(HaltReason::Plateau)
        );
        // The boundary is inclusive (0.25 and 0.5 are exact in binary).
        let q = profile("energy_plateau_delta: 0.25\niterations: 10");
        assert_eq!(
            check_halt(&q, &[0.5, 0.75, 0.5], 0.6),
            Some(HaltReason::Plateau)
        );
    }

    #[test]
    fn budget_last() {
        let p = profile("iterations: 3\nmin_temperature: 0.1");
        assert_eq!(
            check_halt(&p, &[0.9, 0.5, 0.2], p.temperature(3)),
            Some(HaltReason::Budget)
        );
        assert_eq!(check_halt(&p, &[0.9, 0.5], p.temperature(2)), None);
    }

    #[test]
    fn reachable_candidates() {
        let d = Profile::builtin("desktop").unwrap().unwrap();
        assert_eq!(reachable(&d, 0), 5);
        let r = Profile::builtin("research").unwrap().unwrap();
        assert_eq!(reachable(&r, 0), 5, "the floor is reached after 5 of 7");
        let e = Profile::builtin("edge").unwrap().unwrap();
        assert_eq!(reachable(&e, 0), 3);
        assert_eq!(reachable(&d, 3), 2);
        let one = profile("iterations: 1");
        assert_eq!(reachable(&one, 0), 1);
    }
}
