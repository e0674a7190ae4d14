//! Emotion: four numbers read off a system's energy, magnetization and frustration.

use serde::{Deserialize, Serialize};

use crate::memory::MemoryEntry;
use crate::system::IsingSystem;

/// A system's emotional state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Emotion {
    /// `tanh(-E / n)`: positive when the system sits in low energy.
    pub valence: f64,
    /// `1 - |m|`: high when the spins are undecided.
    pub arousal: f64,
    /// Frustration: share of unsatisfied bonds.
    pub tension: f64,
    /// `|m|`: how aligned the spins are.
    pub coherence: f64,
}

impl Emotion {
    /// A memory entry of this emotion with the empathy felt at the time.
    pub fn remember(self, empathy: f64) -> MemoryEntry {
        MemoryEntry {
            valence: self.valence,
            arousal: self.arousal,
            tension: self.tension,
            coherence: self.coherence,
            empathy,
        }
    }
}

/// The emotion of `system`.
pub fn emotion(system: &IsingSystem) -> Emotion {
    let (energy, frustration) = system.energy_and_frustration();
    let m = system.magnetization().abs();
    Emotion {
        valence: (-energy / system.n() as f64).tanh(),
        arousal: 1.0 - m,
        tension: frustration,
        coherence: m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_ferromagnet_is_calm_and_coherent() {
        let j = vec![0.0, 1.0, 1.0, 0.0];
        let s = IsingSystem::from_parts(j, vec![0.0; 2], vec![1, 1]).expect("valid");
        let e = emotion(&s);
        assert_eq!(e.coherence, 1.0);
        assert_eq!(e.arousal, 0.0);
        assert_eq!(e.tension, 0.0);
        assert!((e.valence - 0.5f64.tanh()).abs() < 1e-15);
        let s = IsingSystem::from_parts(vec![0.0, 1.0, 1.0, 0.0], vec![0.0; 2], vec![1, -1])
            .expect("valid");
        let e = emotion(&s);
        assert_eq!(e.coherence, 0.0);
        assert_eq!(e.tension, 1.0);
        assert!(e.valence < 0.0);
    }
}
