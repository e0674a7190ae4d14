//! Counter-based random numbers (Philox4x32-10) and a deterministic `exp`.
//!
//! Every random draw in the engine is a pure function of `(seed, stream, counter)`: there is no
//! generator state carried between draws, so a result never depends on how work is split over
//! threads or devices. The same function is trivial to write as a GPU kernel (two 32x32->64
//! multiplies per round), which is why Philox is used rather than a sequential generator.
//!
//! `exp_det` exists for the same reason: the platform `exp` may differ by an ulp between libm
//! versions or between CPU and GPU, and one ulp can flip a Metropolis decision. `exp_det` uses only
//! correctly rounded `+`, `-`, `*` in a fixed order, so any IEEE-754 machine gets the same bits.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Stream id for the Metropolis proposals of annealing.
pub const STREAM_ANNEAL: u64 = 0;
/// Stream id for the initial spins of the reference construction.
pub const STREAM_SPINS: u64 = 1;
/// Stream id for the spin noise of the compassionate response.
pub const STREAM_NOISE: u64 = 2;
/// Tag placed in the counter of `derive_seed` so derived seeds never coincide with a stream block.
const DERIVE_TAG: u64 = 0x5EED_0000_0000_0001;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// One Philox4x32-10 block: four 32-bit words from a 128-bit counter and a 64-bit key.
#[inline]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = ctr;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// `L` independent Philox blocks computed round by round, so the multiplies overlap.
///
/// Kept out of line on purpose: when LLVM 22 (rustc 1.95) inlined this into the annealing loop it
/// produced wrong high halves of the products (and different ones from run to run); the
/// `kernel_matches_reference_loop` tests in `anneal` guard against that coming back.
#[inline(never)]
fn philox_lanes<const L: usize>(ctrs: [[u32; 4]; L], key: [u32; 2]) -> [[u32; 4]; L] {
    let mut c0 = [0u32; L];
    let mut c1 = [0u32; L];
    let mut c2 = [0u32; L];
    let mut c3 = [0u32; L];
    for (l, c) in ctrs.iter().enumerate() {
        c0[l] = c[0];
        c1[l] = c[1];
        c2[l] = c[2];
        c3[l] = c[3];
    }
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        for l in 0..L {
            let (hi0, lo0) = mulhilo(M0, c0[l]);
            let (hi1, lo1) = mulhilo(M1, c2[l]);
            let n0 = hi1 ^ c1[l] ^ k[0];
            let n2 = hi0 ^ c3[l] ^ k[1];
            c0[l] = n0;
            c1[l] = lo1;
            c2[l] = n2;
            c3[l] = lo0;
        }
    }
    let mut out = [[0u32; 4]; L];
    for (l, o) in out.iter_mut().enumerate() {
        *o = [c0[l], c1[l], c2[l], c3[l]];
    }
    out
}

/// A keyed Philox stream: block `i` of stream `s` under seed `k` is a pure function of `(k, s, i)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Philox {
    key: [u32; 2],
    stream: [u32; 2],
}

impl Philox {
    /// Stream `stream` of generator `seed`.
    pub fn new(seed: u64, stream: u64) -> Self {
        Self {
            key: [seed as u32, (seed >> 32) as u32],
            stream: [stream as u32, (stream >> 32) as u32],
        }
    }

    /// The four words of block `index`.
    #[inline]
    pub fn block(&self, index: u64) -> [u32; 4] {
        philox4x32_10(self.counter(index), self.key)
    }

    /// Blocks `first .. first + L`, computed together for instruction-level parallelism.
    #[inline]
    pub fn blocks<const L: usize>(&self, first: u64) -> [[u32; 4]; L] {
        let mut ctrs = [[0u32; 4]; L];
        for (i, c) in ctrs.iter_mut().enumerate() {
            *c = self.counter(first + i as u64);
        }
        philox_lanes(ctrs, self.key)
    }

    /// Word `index` of the stream (block `index / 4`, word `index % 4`).
    #[inline]
    pub fn word(&self, index: u64) -> u32 {
        self.block(index / 4)[(index % 4) as usize]
    }

    #[inline(always)]
    fn counter(&self, index: u64) -> [u32; 4] {
        [
            index as u32,
            (index >> 32) as u32,
            self.stream[0],
            self.stream[1],
        ]
    }
}

/// A seed for sub-task `(a, b)` of a run seeded with `base` (e.g. the pair `(i, j)` of a swarm).
pub fn derive_seed(base: u64, a: u32, b: u32) -> u64 {
    let w = philox4x32_10(
        [a, b, DERIVE_TAG as u32, (DERIVE_TAG >> 32) as u32],
        [base as u32, (base >> 32) as u32],
    );
    u64::from(w[0]) | (u64::from(w[1]) << 32)
}

/// A uniform number in the open interval (0, 1) from one 32-bit word.
#[inline(always)]
pub fn unit_f64(w: u32) -> f64 {
    (f64::from(w) + 0.5) * (1.0 / 4_294_967_296.0)
}

/// A uniform index in `0..n` and, independent of it, a uniform number in (0, 1), from one word.
///
/// `w * n` is split at bit 32: the high part is the index (multiply-shift), and the low part is
/// uniform on a grid of step `n / 2^32` whatever the index is (the idea behind Lemire's bounded
/// integers). For n <= 4096 that grid is finer than 1e-6, far below the smallest acceptance
/// probability annealing can ask for (the floor, >= 4.5e-5), and it halves the random words used.
#[inline(always)]
pub fn index_and_unit(w: u32, n: usize) -> (usize, f64) {
    let p = u64::from(w) * n as u64;
    ((p >> 32) as usize, unit_f64(p as u32))
}

/// A uniform index in `0..n` from one 32-bit word (multiply-shift; bias below `n / 2^32`).
#[inline(always)]
pub fn index_below(w: u32, n: usize) -> usize {
    ((u64::from(w) * n as u64) >> 32) as usize
}

/// ln 2 split in two (fdlibm's constants, by bit pattern): the high part has 20 trailing zero bits.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
const INV_LN2: f64 = std::f64::consts::LOG2_E;
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;
const C2: f64 = 1.0 / 2.0;
const C3: f64 = 1.0 / 6.0;
const C4: f64 = 1.0 / 24.0;
const C5: f64 = 1.0 / 120.0;
const C6: f64 = 1.0 / 720.0;
const C7: f64 = 1.0 / 5040.0;
const C8: f64 = 1.0 / 40320.0;
const C9: f64 = 1.0 / 362_880.0;
const C10: f64 = 1.0 / 3_628_800.0;
const C11: f64 = 1.0 / 39_916_800.0;
const C12: f64 = 1.0 / 479_001_600.0;
const C13: f64 = 1.0 / 6_227_020_800.0;

/// `e^x` from basic IEEE operations only, so every machine gets the same bits (within 2 ulp of exact).
#[inline]
pub fn exp_det(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x > 709.78 {
        return f64::INFINITY;
    }
    if x < -745.2 {
        return 0.0;
    }
    // x = k ln2 + r with |r| <= ln2 / 2; k * LN2_HI is exact (LN2_HI has 20 trailing zero bits).
    // Round to nearest (ties to even) by adding and subtracting 1.5 * 2^52: plain IEEE arithmetic,
    // unlike `f64::round`, which is a libm call on baseline x86-64.
    let k = (x * INV_LN2 + ROUND_MAGIC) - ROUND_MAGIC;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // Taylor series to r^13 (truncation < 5e-18 on |r| <= 0.347): the tail r^2 (C2 + C3 r + ...)
    // is evaluated Estrin-style, and 1 is added last so its rounding error stays below half an ulp.
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    let a0 = C2 + C3 * r;
    let a1 = C4 + C5 * r;
    let a2 = C6 + C7 * r;
    let a3 = C8 + C9 * r;
    let a4 = C10 + C11 * r;
    let a5 = C12 + C13 * r;
    let b0 = a0 + a1 * r2;
    let b1 = a2 + a3 * r2;
    let b2 = a4 + a5 * r2;
    let q = (b0 + b1 * r4) + b2 * r8;
    let p = 1.0 + (r + r2 * q);
    scale_pow2(p, k as i32)
}

/// `p * 2^k` for `p` in [0.5, 2) without overflow in the intermediate scale factors.
#[inline(always)]
fn scale_pow2(p: f64, k: i32) -> f64 {
    if (-1021..=1022).contains(&k) {
        p * f64::from_bits(((k + 1023) as u64) << 52)
    } else if k > 1022 {
        p * f64::from_bits(((k - 1 + 1023) as u64) << 52) * 2.0
    } else {
        // Subnormal results: scale in two steps so the second multiply rounds once.
        p * f64::from_bits(((k + 1000 + 1023) as u64) << 52) * f64::from_bits((23u64) << 52)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answers() {
        // Known-answer vectors of Philox4x32-10 from the Random123 distribution.
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn lanes_match_single_blocks() {
        let g = Philox::new(0xDEAD_BEEF_1234, 7);
        let many: [[u32; 4]; 5] = g.blocks(40);
        for (i, b) in many.iter().enumerate() {
            assert_eq!(*b, g.block(40 + i as u64));
        }
    }

    #[test]
    fn streams_and_seeds_differ() {
        assert_ne!(Philox::new(1, 0).block(0), Philox::new(2, 0).block(0));
        assert_ne!(Philox::new(1, 0).block(0), Philox::new(1, 1).block(0));
        assert_ne!(derive_seed(5, 1, 2), derive_seed(5, 2, 1));
        assert_eq!(derive_seed(5, 1, 2), derive_seed(5, 1, 2));
    }

    #[test]
    fn unit_and_index_ranges() {
        assert!(unit_f64(0) > 0.0);
        assert!(unit_f64(u32::MAX) < 1.0);
        assert_eq!(index_below(0, 20), 0);
        assert_eq!(index_below(u32::MAX, 20), 19);
        // Uniformity sanity: every index is hit and none dominates.
        let g = Philox::new(9, 0);
        let mut counts = [0usize; 7];
        for i in 0..70_000u64 {
            counts[index_below(g.word(i), 7)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "counts {counts:?}");
        }
    }

    #[test]
    fn index_and_unit_are_independent() {
        let g = Philox::new(11, 0);
        let mut sum = [0.0f64; 7];
        let mut low = [0usize; 7];
        let mut count = [0usize; 7];
        for k in 0..140_000u64 {
            let (i, u) = index_and_unit(g.word(k), 7);
            assert!(u > 0.0 && u < 1.0);
            sum[i] += u;
            count[i] += 1;
            low[i] += usize::from(u < 0.1);
        }
        for i in 0..7 {
            let mean = sum[i] / count[i] as f64;
            assert!((mean - 0.5).abs() < 0.01, "index {i}: mean u {mean}");
            let share = low[i] as f64 / count[i] as f64;
            assert!(
                (share - 0.1).abs() < 0.01,
                "index {i}: P(u < 0.1) = {share}"
            );
        }
    }

    /// The CUDA kernel spells these constants as bit patterns; if one drifted, the GPU would stop
    /// matching the CPU bit for bit. (Checked here because CI has no GPU.)
    #[test]
    fn cuda_kernel_constants_match() {
        let src = include_str!("cuda_kernel.cu");
        let value = |name: &str| -> &str {
            let prefix = format!("#define KILN_{name} ");
            let line = src
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("cuda_kernel.cu does not define KILN_{name}"));
            line[prefix.len()..].trim()
        };
        let f64_bits = |name: &str| -> u64 {
            let v = value(name);
            let hex = v
                .strip_prefix("KILN_F64(0x")
                .and_then(|h| h.strip_suffix(')'))
                .unwrap_or_else(|| panic!("KILN_{name} = {v} is not KILN_F64(0x...)"));
            u64::from_str_radix(hex, 16).expect("hex")
        };
        let u32_value = |name: &str| -> u32 {
            let v = value(name);
            let hex = v
                .strip_prefix("0x")
                .and_then(|h| h.strip_suffix('u'))
                .unwrap_or_else(|| panic!("KILN_{name} = {v} is not 0x...u"));
            u32::from_str_radix(hex, 16).expect("hex")
        };
        for (name, want) in [
            ("INV_LN2", INV_LN2),
            ("LN2_HI", LN2_HI),
            ("LN2_LO", LN2_LO),
            ("ROUND_MAGIC", ROUND_MAGIC),
            ("EXP_MAX", 709.78),
            ("EXP_MIN", -745.2),
            ("C2", C2),
            ("C3", C3),
            ("C4", C4),
            ("C5", C5),
            ("C6", C6),
            ("C7", C7),
            ("C8", C8),
            ("C9", C9),
            ("C10", C10),
            ("C11", C11),
            ("C12", C12),
            ("C13", C13),
            ("INV_2_32", 1.0 / 4_294_967_296.0),
            ("MARGIN", 1e-9),
            ("ONE_PLUS_MARGIN", 1.0 + 1e-9),
        ] {
            assert_eq!(f64_bits(name), want.to_bits(), "KILN_{name}");
        }
        for (name, want) in [
            ("M0", M0),
            ("M1", M1),
            ("W0", W0),
            ("W1", W1),
            ("DERIVE_TAG_LO", DERIVE_TAG as u32),
            ("DERIVE_TAG_HI", (DERIVE_TAG >> 32) as u32),
        ] {
            assert_eq!(u32_value(name), want, "KILN_{name}");
        }
        // The kernel's accept() uses C2, C3, C4 where anneal.rs writes 0.5, 1/6, 1/24.
        assert_eq!(C2, 0.5);
        assert_eq!(C3, 1.0 / 6.0);
        assert_eq!(C4, 1.0 / 24.0);
    }

    #[test]
    fn exp_det_matches_libm() {
        let mut x = -745.0;
        while x < 709.0 {
            let got = exp_det(x);
            let want = x.exp();
            let rel = ((got - want) / want).abs();
            assert!(rel < 4e-16 || want < 1e-300, "x={x} got={got} want={want}");
            x += 0.0137;
        }
        assert_eq!(exp_det(0.0), 1.0);
        assert_eq!(exp_det(-1000.0), 0.0);
        assert!(exp_det(1000.0).is_infinite());
        assert!(exp_det(f64::NAN).is_nan());
    }
}
