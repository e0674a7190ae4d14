//! Emotional memory: a ring buffer of recent emotions with recall of means and the empathy trend.

use serde::{Deserialize, Serialize};

use crate::error::{IsingError, Result};

/// Entries kept by default.
pub const DEFAULT_CAPACITY: usize = 32;

/// One remembered moment: an emotion and the empathy felt.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct MemoryEntry {
    /// Valence at the time.
    pub valence: f64,
    /// Arousal at the time.
    pub arousal: f64,
    /// Tension at the time.
    pub tension: f64,
    /// Coherence at the time.
    pub coherence: f64,
    /// Empathy at the time.
    pub empathy: f64,
}

/// What recall returns.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Recall {
    /// Entries remembered.
    pub count: usize,
    /// Mean of each field over the remembered entries.
    pub mean: MemoryEntry,
    /// Mean empathy of the newer half minus the older half; `None` under 4 entries.
    ///
    /// With an odd count the middle entry belongs to the newer half.
    pub empathy_trend: Option<f64>,
}

/// A fixed-capacity ring buffer of memory entries; the oldest is dropped when full.
#[derive(Debug, Clone, PartialEq)]
pub struct EmotionalMemory {
    entries: Vec<MemoryEntry>,
    capacity: usize,
    next: usize,
}

impl Default for EmotionalMemory {
    fn default() -> Self {
        Self {
            entries: Vec::with_capacity(DEFAULT_CAPACITY),
            capacity: DEFAULT_CAPACITY,
            next: 0,
        }
    }
}

impl EmotionalMemory {
    /// A memory holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Result<Self> {
        if capacity == 0 {
            return Err(IsingError::InvalidParameter {
                name: "capacity".into(),
                value: "0".into(),
                expected: "at least 1 entry".into(),
            });
        }
        Ok(Self {
            entries: Vec::with_capacity(capacity),
            capacity,
            next: 0,
        })
    }

    /// Remembers `entry`, forgetting the oldest one when full.
    pub fn push(&mut self, entry: MemoryEntry) {
        if self.entries.len() < self.capacity {
            self.entries.push(entry);
        } else {
            self.entries[self.next] = entry;
        }
        self.next = (self.next + 1) % self.capacity;
    }

    /// Entries remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Largest number of entries kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries from oldest to newest.
    pub fn iter(&self) -> impl Iterator<Item = &MemoryEntry> {
        let split = if self.entries.len() < self.capacity {
            0
        } else {
            self.next
        };
        self.entries[split..]
            .iter()
            .chain(self.entries[..split].iter())
    }

    /// Means and empathy trend; `None` when nothing is remembered.
    pub fn recall(&self) -> Option<Recall> {
        let count = self.entries.len();
        if count == 0 {
            return None;
        }
        let mut sum = MemoryEntry::default();
        for e in self.iter() {
            sum.valence += e.valence;
            sum.arousal += e.arousal;
            sum.tension += e.tension;
            sum.coherence += e.coherence;
            sum.empathy += e.empathy;
        }
        let k = count as f64;
        let mean = MemoryEntry {
            valence: sum.valence / k,
            arousal: sum.arousal / k,
            tension: sum.tension / k,
            coherence: sum.coherence / k,
            empathy: sum.empathy / k,
        };
        let empathy_trend = (count >= 4).then(|| {
            let older = count / 2;
            let (mut old, mut new) = (0.0, 0.0);
            for (i, e) in self.iter().enumerate() {
                if i < older {
                    old += e.empathy;
                } else {
                    new += e.empathy;
                }
            }
            new / (count - older) as f64 - old / older as f64
        });
        Some(Recall {
            count,
            mean,
            empathy_trend,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(e: f64) -> MemoryEntry {
        MemoryEntry {
            valence: e * 2.0,
            empathy: e,
            ..MemoryEntry::default()
        }
    }

    #[test]
    fn ring_buffer_keeps_newest() {
        let mut m = EmotionalMemory::new(3).expect("valid");
        assert!(m.recall().is_none());
        for i in 0..5 {
            m.push(entry(i as f64));
        }
        assert_eq!(m.len(), 3);
        let order: Vec<f64> = m.iter().map(|e| e.empathy).collect();
        assert_eq!(order, vec![2.0, 3.0, 4.0]);
        let r = m.recall().expect("non-empty");
        assert_eq!(r.count, 3);
        assert!((r.mean.empathy - 3.0).abs() < 1e-15);
        assert!((r.mean.valence - 6.0).abs() < 1e-15);
        assert_eq!(r.empathy_trend, None);
    }

    #[test]
    fn trend_is_newer_half_minus_older_half() {
        let mut m = EmotionalMemory::default();
        assert_eq!(m.capacity(), DEFAULT_CAPACITY);
        for e in [0.1, 0.2, 0.7, 0.8] {
            m.push(entry(e));
        }
        let t = m.recall().and_then(|r| r.empathy_trend).expect("4 entries");
        assert!((t - 0.6).abs() < 1e-12, "trend {t}");
        m.push(entry(0.0));
        // Older: 0.1, 0.2; newer: 0.7, 0.8, 0.0.
        let t = m.recall().and_then(|r| r.empathy_trend).expect("5 entries");
        assert!((t - (0.5 - 0.15)).abs() < 1e-12, "trend {t}");
        // Falling empathy gives a negative trend, also after wrapping around.
        let mut m = EmotionalMemory::new(4).expect("valid");
        for e in [0.0, 0.0, 0.9, 0.9, 0.5, 0.1] {
            m.push(entry(e));
        }
        let t = m.recall().and_then(|r| r.empathy_trend).expect("4 entries");
        assert!((t - (0.3 - 0.9)).abs() < 1e-12, "trend {t}");
    }

    #[test]
    fn zero_capacity_is_rejected() {
        assert!(EmotionalMemory::new(0).is_err());
    }
}
