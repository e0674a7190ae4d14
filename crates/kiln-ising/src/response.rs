//! Acting on empathy: the compassionate response of A to B.

use serde::Serialize;

use crate::error::{IsingError, Result};
use crate::rng::{unit_f64, Philox, STREAM_NOISE};
use crate::system::IsingSystem;

/// Parameters of the compassionate response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResponseOptions {
    /// Blend strength: A moves `strength * e` of the way to B's couplings (spec: 0.1).
    pub strength: f64,
    /// Spin noise: each spin flips with probability `noise_temperature * (1 - e)` (spec: 0.05).
    pub noise_temperature: f64,
    /// Seed of the spin noise.
    pub seed: u64,
}

impl Default for ResponseOptions {
    fn default() -> Self {
        Self {
            strength: 0.1,
            noise_temperature: 0.05,
            seed: 0,
        }
    }
}

/// Which branch the response took.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// Empathy above 0.5: couplings blended towards B's with rate `b`.
    Blend {
        /// The blend rate `strength * e`.
        rate: f64,
    },
    /// Empathy at most 0.5: spins flipped at random.
    Noise {
        /// Flip probability per spin.
        probability: f64,
        /// Spins flipped.
        flipped: usize,
    },
}

/// Applies A's compassionate response to B given empathy score `e` in [0, 1].
pub fn compassionate_response(
    a: &mut IsingSystem,
    b: &IsingSystem,
    e: f64,
    opts: &ResponseOptions,
) -> Result<Response> {
    check_unit("empathy", e)?;
    check_unit("strength", opts.strength)?;
    check_unit("noise_temperature", opts.noise_temperature)?;
    if e > 0.5 {
        if a.n() != b.n() {
            return Err(IsingError::SizeMismatch {
                what: "compassionate response (coupling blend)",
                a: a.n(),
                b: b.n(),
            });
        }
        let rate = opts.strength * e;
        // Same operation on (i, j) and (j, i): symmetry and the zero diagonal are preserved.
        let j: Vec<f64> = a
            .couplings()
            .iter()
            .zip(b.couplings())
            .map(|(&ja, &jb)| (1.0 - rate) * ja + rate * jb)
            .collect();
        a.set_couplings_trusted(j);
        Ok(Response::Blend { rate })
    } else {
        let probability = opts.noise_temperature * (1.0 - e);
        let g = Philox::new(opts.seed, STREAM_NOISE);
        let mut flipped = 0;
        for (i, s) in a.spins_mut().iter_mut().enumerate() {
            if unit_f64(g.word(i as u64)) < probability {
                *s = -*s;
                flipped += 1;
            }
        }
        Ok(Response::Noise {
            probability,
            flipped,
        })
    }
}

fn check_unit(name: &str, v: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&v) {
        return Err(IsingError::InvalidParameter {
            name: name.into(),
            value: v.to_string(),
            expected: "a number in [0, 1]".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::empathy::coupling_similarity;

    fn other(n: usize) -> IsingSystem {
        let j: Vec<f64> = (0..n * n)
            .map(|k| if k / n == k % n { 0.0 } else { -0.5 })
            .collect();
        IsingSystem::from_parts(j, vec![0.0; n], vec![1; n]).expect("valid")
    }

    #[test]
    fn high_empathy_blends_couplings_towards_b() {
        let mut a = IsingSystem::reference(6, 1).expect("valid");
        let b = other(6);
        let before = a.clone();
        let sim0 = coupling_similarity(&a, &b).expect("same size");
        let r = compassionate_response(&mut a, &b, 0.8, &ResponseOptions::default()).expect("ok");
        assert_eq!(r, Response::Blend { rate: 0.1 * 0.8 });
        let rate = 0.08;
        assert!(
            (a.coupling(0, 1) - ((1.0 - rate) * before.coupling(0, 1) + rate * -0.5)).abs() < 1e-15
        );
        assert_eq!(a.coupling(2, 2), 0.0);
        assert_eq!(a.coupling(1, 4), a.coupling(4, 1));
        assert_eq!(a.spins(), before.spins());
        assert!(coupling_similarity(&a, &b).expect("same size") > sim0);
    }

    #[test]
    fn low_empathy_flips_spins_with_the_right_rate() {
        let n = 4000;
        let mut a =
            IsingSystem::from_parts(vec![0.0; n * n], vec![0.0; n], vec![1; n]).expect("valid");
        let b = a.clone();
        let opts = ResponseOptions {
            seed: 5,
            ..ResponseOptions::default()
        };
        let r = compassionate_response(&mut a, &b, 0.2, &opts).expect("ok");
        let Response::Noise {
            probability,
            flipped,
        } = r
        else {
            panic!("expected the noise branch, got {r:?}");
        };
        assert!((probability - 0.04).abs() < 1e-15);
        let flipped_now = a.spins().iter().filter(|&&s| s == -1).count();
        assert_eq!(flipped, flipped_now);
        // 160 expected; 5 sigma is about 62.
        assert!((100..=220).contains(&flipped), "flipped {flipped}");
        assert_eq!(a.couplings(), b.couplings());
    }

    #[test]
    fn bad_parameters_are_rejected() {
        let mut a = IsingSystem::reference(3, 1).expect("valid");
        let b = IsingSystem::reference(4, 1).expect("valid");
        let o = ResponseOptions::default();
        assert!(compassionate_response(&mut a, &b, f64::NAN, &o).is_err());
        assert!(compassionate_response(&mut a, &b, 1.5, &o).is_err());
        assert!(matches!(
            compassionate_response(&mut a, &b, 0.9, &o),
            Err(IsingError::SizeMismatch { .. })
        ));
    }
}
