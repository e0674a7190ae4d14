//! kiln's iterative refinement (IRP), SNARC salience scoring and durable exchange memory,
//! built on the engine's public API as any user of the library would.
//!
//! - [`refine`]: the five-operation protocol, temperature schedule and halting rules;
//!   `independent` candidates are generated in one batch, `refine` candidates in sequence.
//! - [`energy`]: the seed's `heuristic` energy and the model-grounded `model` energy.
//! - [`profile`]: the YAML profiles (`edge`, `desktop`, `research`, or a file), read with serde.
//! - [`snarc`]: five salience scores with explanations; Surprise is measured with the model
//!   when one is given ([`score_and_store_with_model`]), lexically otherwise.
//! - [`memory`]: the SQLite store of exchanges, durable once reported stored.

pub mod energy;
pub mod generate;
pub mod memory;
pub mod profile;
pub mod refine;
pub mod snarc;
pub mod text;

use std::time::Instant;

use kiln_tokenizer::chat::Message;

pub use energy::{CandidateView, EnergyTerms, Term};
pub use generate::{CandidateSpec, EngineGenerator, Generated, Generator};
pub use memory::{Memory, MemoryError, NewExchange, OpenOptions, Stats, StoredExchange};
pub use profile::{Device, EnergyKind, Mode, Profile, ProfileError, ProfileFile};
pub use refine::{
    check_halt, Candidate, HaltReason, Irp, RefineInfo, RefineResult, RefineState, Refiner, Timings,
};
pub use snarc::{Exchange, MemoryIndex, Score, SnarcConfig, SnarcScores, Surprisal, SurpriseModel};

/// Why a refinement run failed.
#[derive(Debug, thiserror::Error)]
pub enum IrpError {
    /// The engine refused a candidate or failed while generating it.
    #[error("generating a candidate: {0}")]
    Engine(String),
    /// The model could not score a text (for Surprise).
    #[error("scoring the question with the model: {0}")]
    Scoring(String),
    /// The memory store failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// SNARC scores of an exchange, where it was stored, and how long scoring and storing took.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The scores.
    pub snarc: SnarcScores,
    /// The stored exchange's id (`None` without a store).
    pub id: Option<i64>,
    /// Seconds spent scoring and storing.
    pub seconds: f64,
}

/// Scores an exchange (against `memory` when there is one) and stores it there. `recent` are
/// the conversation's earlier questions; `None` takes the last three stored ones.
pub fn score_and_store(
    profile: &Profile,
    memory: Option<&mut Memory>,
    ex: &NewExchange<'_>,
    recent: Option<&[String]>,
) -> Result<Recorded, MemoryError> {
    let t = Instant::now();
    let cfg = SnarcConfig {
        threshold: profile.salience_threshold,
        ..SnarcConfig::default()
    };
    let (snarc, id) = match memory {
        Some(m) => {
            let (id, s) = m.record(&cfg, ex, recent)?;
            (s, Some(id))
        }
        None => {
            let scored = snarc::score(
                &cfg,
                &Exchange {
                    question: ex.question,
                    answer: ex.answer,
                    final_energy: ex.irp.map(|i| i.best_energy),
                    recent_questions: recent.unwrap_or_default(),
                },
                &MemoryIndex::default(),
            );
            (scored.scores, None)
        }
    };
    Ok(Recorded {
        snarc,
        id,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Like [`score_and_store`], with Surprise measured by `model`: the mean surprisal of the
/// question's tokens given `conversation`, the messages before the question (system message
/// and earlier exchanges; no earlier user turn makes it the first exchange, Surprise 0).
/// When the model cannot score (the engine shut down, the conversation does not fit the
/// context), Surprise falls back to the lexical measure against the conversation's questions
/// and its explanation says why, so that a stored exchange is never lost to scoring.
pub fn score_and_store_with_model(
    profile: &Profile,
    memory: Option<&mut Memory>,
    ex: &NewExchange<'_>,
    conversation: &[Message],
    model: &dyn SurpriseModel,
) -> Result<Recorded, MemoryError> {
    let t = Instant::now();
    let cfg = SnarcConfig {
        threshold: profile.salience_threshold,
        ..SnarcConfig::default()
    };
    let surprise = snarc::model_surprise(model, conversation, ex.question).unwrap_or_else(|e| {
        let recent: Vec<String> = conversation
            .iter()
            .filter(|m| m.role == "user")
            .map(|m| m.content.clone())
            .collect();
        let mut s = snarc::lexical_surprise(ex.question, &recent);
        s.why = format!("{}; the model could not score the question: {e}", s.why);
        s
    });
    let (snarc, id) = match memory {
        Some(m) => {
            let (id, s) = m.record_with_surprise(&cfg, ex, surprise)?;
            (s, Some(id))
        }
        None => {
            let scored = snarc::score_with_surprise(
                &cfg,
                &Exchange {
                    question: ex.question,
                    answer: ex.answer,
                    final_energy: ex.irp.map(|i| i.best_energy),
                    recent_questions: &[],
                },
                &MemoryIndex::default(),
                surprise,
            );
            (scored.scores, None)
        }
    };
    Ok(Recorded {
        snarc,
        id,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Earlier exchanges as chat messages (user, assistant, ...), after `system` messages: the
/// conversation a question's model Surprise is measured against. A one-off question can use
/// the last stored exchanges ([`Memory::recent_exchanges`]).
pub fn conversation(system: &[Message], exchanges: &[(String, String)]) -> Vec<Message> {
    let mut msgs = system.to_vec();
    for (q, a) in exchanges {
        msgs.push(Message::new("user", q.clone()));
        msgs.push(Message::new("assistant", a.clone()));
    }
    msgs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model that cannot score.
    struct Broken;

    impl SurpriseModel for Broken {
        fn surprisal(&self, _: &[Message], _: &str) -> Result<Surprisal, IrpError> {
            Err(IrpError::Scoring("the engine has shut down".into()))
        }
    }

    #[test]
    fn model_surprise_falls_back_to_lexical_with_the_reason() {
        let history = conversation(
            &[Message::new("system", "Be brief.")],
            &[("Why is the sky blue?".into(), "Rayleigh scattering.".into())],
        );
        assert_eq!(history.len(), 3);
        assert_eq!(history[1], Message::new("user", "Why is the sky blue?"));
        let ex = NewExchange {
            source: "test",
            session: None,
            question: "Why is grass green?",
            answer: "Chlorophyll.",
            irp: None,
        };
        let rec =
            score_and_store_with_model(&Profile::default(), None, &ex, &history, &Broken).unwrap();
        let s = &rec.snarc.surprise;
        assert!((s.value - 2.0 / 3.0).abs() < 1e-12, "{s:?}");
        assert!(
            s.why.starts_with("lexical") && s.why.contains("shut down"),
            "{s:?}"
        );
        assert_eq!(rec.id, None);
    }
}
