//! kiln's iterative refinement (IRP), SNARC salience scoring and durable exchange memory,
//! built on the engine's public API as any user of the library would.
//!
//! - [`refine`]: the five-operation protocol, temperature schedule and halting rules;
//!   `independent` candidates are generated in one batch, `refine` candidates in sequence.
//! - [`energy`]: the seed's `heuristic` energy and the model-grounded `model` energy.
//! - [`profile`]: the YAML profiles (`edge`, `desktop`, `research`, or a file).
//! - [`snarc`]: five salience scores with explanations.
//! - [`memory`]: the SQLite store of exchanges, durable once reported stored.

pub mod energy;
pub mod generate;
pub mod memory;
pub mod profile;
pub mod refine;
pub mod snarc;
pub mod text;

use std::time::Instant;

pub use energy::{CandidateView, EnergyTerms, Term};
pub use generate::{CandidateSpec, EngineGenerator, Generated, Generator};
pub use memory::{Memory, MemoryError, NewExchange, OpenOptions, Stats, StoredExchange};
pub use profile::{Device, EnergyKind, Mode, Profile, ProfileError};
pub use refine::{
    check_halt, Candidate, HaltReason, Irp, RefineInfo, RefineResult, RefineState, Refiner, Timings,
};
pub use snarc::{Exchange, MemoryIndex, Score, SnarcConfig, SnarcScores};

/// Why a refinement run failed.
#[derive(Debug, thiserror::Error)]
pub enum IrpError {
    /// The engine refused a candidate or failed while generating it.
    #[error("generating a candidate: {0}")]
    Engine(String),
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
