//! Candidate energies: a number in [0, 1] per candidate answer, lower is better.
//!
//! `heuristic` is the seed's formula, kept to reproduce its tables. `model` is grounded in the
//! model: the candidate's mean token surprisal at temperature 1, normalised as
//! `1 - exp(-mean_nll / surprisal_scale)`, plus penalties for repeated word 3-grams, for an
//! answer cut off by `max_tokens`, and for a length far from `target_words`; the weighted terms
//! are divided by the sum of the weights, so the total stays in [0, 1].

use serde::Serialize;

use crate::profile::{EnergyKind, Profile};
use crate::text::words;

/// What the energy functions need to know about a candidate.
#[derive(Debug, Clone, Copy)]
pub struct CandidateView<'a> {
    /// The answer text.
    pub text: &'a str,
    /// Temperature it was sampled at.
    pub temperature: f32,
    /// Sum of the chosen tokens' log-probabilities at temperature 1.
    pub sum_logprob: f64,
    /// Generated tokens (with a final end token, if any).
    pub tokens: usize,
    /// Whether `max_tokens` (or the context) cut it off before an end token.
    pub truncated: bool,
}

/// One term of an energy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Term {
    /// `surprisal`, `repetition`, `truncation`, `length` (model); `temperature`, `length`,
    /// `structure` (heuristic).
    pub name: &'static str,
    /// The term's value in [0, 1].
    pub value: f64,
    /// Its weight.
    pub weight: f64,
    /// What it was computed from (mean nats per token, words, ...).
    pub raw: f64,
}

/// An energy and the terms it is made of.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnergyTerms {
    /// Which function produced it.
    pub kind: EnergyKind,
    /// The energy, in [0, 1].
    pub total: f64,
    /// Its terms; `total` is their weighted sum (divided by the weights' sum for `model`).
    pub terms: Vec<Term>,
    /// Why the total is not the weighted sum, when it is not (an empty answer scores 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

/// The energy of `c` under `profile`'s energy function.
pub fn energy(profile: &Profile, c: &CandidateView<'_>) -> EnergyTerms {
    match profile.energy {
        EnergyKind::Heuristic => heuristic(profile.initial_temperature, c),
        EnergyKind::Model => model(profile, c),
    }
}

/// The seed's energy: `0.4 * T/T0 + 0.3 * min(1, |words - 50| / 50) + 0.3 * structure`, where
/// structure is 0 when the answer has sentence punctuation and a capital letter, else 0.3.
pub fn heuristic(t0: f32, c: &CandidateView<'_>) -> EnergyTerms {
    let n = words(c.text).count() as f64;
    let temp = c.temperature as f64 / t0 as f64;
    let len = ((n - 50.0).abs() / 50.0).min(1.0);
    let punct = c.text.contains(['.', '!', '?']);
    let capital = c.text.chars().any(char::is_uppercase);
    let structure = if punct && capital { 0.0 } else { 0.3 };
    let terms = vec![
        Term {
            name: "temperature",
            value: temp,
            weight: 0.4,
            raw: c.temperature as f64,
        },
        Term {
            name: "length",
            value: len,
            weight: 0.3,
            raw: n,
        },
        Term {
            name: "structure",
            value: structure,
            weight: 0.3,
            raw: (punct && capital) as u8 as f64,
        },
    ];
    EnergyTerms {
        kind: EnergyKind::Heuristic,
        total: terms.iter().map(|t| t.weight * t.value).sum(),
        terms,
        note: None,
    }
}

/// Share of word 3-grams (lowercased) that repeat an earlier one, in [0, 1].
pub fn repeated_trigram_share(text: &str) -> f64 {
    let w: Vec<String> = words(text).map(|w| w.to_lowercase()).collect();
    if w.len() < 4 {
        return 0.0;
    }
    let grams: Vec<&[String]> = w.windows(3).collect();
    let mut seen = std::collections::HashSet::with_capacity(grams.len());
    let repeats = grams.iter().filter(|g| !seen.insert(**g)).count();
    repeats as f64 / grams.len() as f64
}

/// The model energy (see the module documentation).
pub fn model(p: &Profile, c: &CandidateView<'_>) -> EnergyTerms {
    let mean_nll = if c.tokens == 0 {
        0.0
    } else {
        (-c.sum_logprob / c.tokens as f64).max(0.0)
    };
    let n = words(c.text).count();
    let target = p.target_words as f64;
    let terms = vec![
        Term {
            name: "surprisal",
            value: 1.0 - (-mean_nll / p.surprisal_scale).exp(),
            weight: p.energy_weight_surprisal,
            raw: mean_nll,
        },
        Term {
            name: "repetition",
            value: repeated_trigram_share(c.text),
            weight: p.energy_weight_repetition,
            raw: repeated_trigram_share(c.text),
        },
        Term {
            name: "truncation",
            value: if c.truncated { 1.0 } else { 0.0 },
            weight: p.energy_weight_truncation,
            raw: c.tokens as f64,
        },
        Term {
            name: "length",
            value: ((n as f64 - target).abs() / target).min(1.0),
            weight: p.energy_weight_length,
            raw: n as f64,
        },
    ];
    let wsum: f64 = terms.iter().map(|t| t.weight).sum();
    let (total, note) = if n == 0 {
        (1.0, Some("an empty answer scores 1"))
    } else {
        let s: f64 = terms.iter().map(|t| t.weight * t.value).sum();
        ((s / wsum.max(f64::MIN_POSITIVE)).clamp(0.0, 1.0), None)
    };
    EnergyTerms {
        kind: EnergyKind::Model,
        total,
        terms,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(text: &str, t: f32) -> CandidateView<'_> {
        CandidateView {
            text,
            temperature: t,
            sum_logprob: -10.0,
            tokens: 10,
            truncated: false,
        }
    }

    #[test]
    fn heuristic_reproduces_the_seed_formula() {
        // 50 words with punctuation and a capital: only the temperature term remains.
        let text = format!("Yes. {}", "word ".repeat(49));
        let e = heuristic(0.7, &view(&text, 0.7));
        assert!((e.total - 0.4).abs() < 1e-12, "{e:?}");
        let e = heuristic(0.7, &view(&text, 0.56));
        assert!((e.total - 0.32).abs() < 1e-6, "{e:?}");
        // 25 words, no punctuation: 0.4 * 0.5/0.7 + 0.3 * 0.5 + 0.3 * 0.3.
        let text = "word ".repeat(25);
        let e = heuristic(0.7, &view(&text, 0.5));
        let want = 0.4 * 0.5 / 0.7 + 0.15 + 0.09;
        assert!((e.total - want).abs() < 1e-7, "{} vs {want}", e.total);
        // 200 words: the length term saturates at 1.
        let text = format!("A {}.", "w ".repeat(199));
        let e = heuristic(0.7, &view(&text, 0.7));
        assert!((e.total - 0.7).abs() < 1e-12, "{e:?}");
    }

    #[test]
    fn model_energy_terms() {
        let p = Profile::default();
        // Mean surprisal of 1 nat with scale 2: 1 - e^-0.5.
        let text = format!("The sky looks blue. {}", "a b c d e ".repeat(9)); // 49 words
        let e = model(&p, &view(&text, 0.7));
        let s = &e.terms[0];
        assert_eq!(s.name, "surprisal");
        assert!((s.value - (1.0 - (-0.5f64).exp())).abs() < 1e-12);
        assert!((s.raw - 1.0).abs() < 1e-12);
        let rep = e.terms[1].value;
        assert!(rep > 0.7, "the 5-word phrase repeats 9 times: {rep}");
        assert_eq!(e.terms[2].value, 0.0);
        assert!((e.terms[3].value - 1.0 / 50.0).abs() < 1e-12);
        let want = (0.5 * s.value + 0.2 * rep + 0.1 * 0.02) / 1.0;
        assert!((e.total - want).abs() < 1e-12);
        // Truncation adds its weight.
        let mut v = view(&text, 0.7);
        v.truncated = true;
        let t = model(&p, &v);
        assert!((t.total - e.total - 0.2).abs() < 1e-12);
        // An empty answer is the worst.
        let empty = model(&p, &view("  ", 0.7));
        assert_eq!(empty.total, 1.0);
        assert!(empty.note.is_some());
    }

    #[test]
    fn model_energy_prefers_confident_answers() {
        let p = Profile::default();
        let text = "Paris is the capital of France.";
        let mut sure = view(text, 0.7);
        sure.sum_logprob = -1.0;
        let mut unsure = view(text, 0.7);
        unsure.sum_logprob = -40.0;
        assert!(model(&p, &sure).total < model(&p, &unsure).total);
    }

    #[test]
    fn trigram_share() {
        assert_eq!(repeated_trigram_share("one two three four"), 0.0);
        assert_eq!(repeated_trigram_share("a b c a b c"), 0.25); // abc bca cab abc
        assert_eq!(repeated_trigram_share("x"), 0.0);
    }
}
