//! One spin system: couplings `J`, fields `h`, spins `s`, and the observables defined on them.

use crate::error::{IsingError, Result};
use crate::rng::{Philox, STREAM_SPINS};

/// Largest number of spins a system may have (the coupling matrix is n x n f64: 128 MiB here).
pub const MAX_N: usize = 4096;

/// Relative tolerance under which `J[i][j]` and `J[j][i]` count as equal (they are then averaged).
pub const SYMMETRY_TOLERANCE: f64 = 1e-9;

/// An Ising system: `n` spins in {-1, +1}, symmetric zero-diagonal couplings, and fields.
///
/// Fields are private so that the invariants checked at construction (square, symmetric, zero
/// diagonal, finite, spins +-1) and the cached coupling norm and fingerprint always hold.
#[derive(Debug, Clone, PartialEq)]
pub struct IsingSystem {
    n: usize,
    j: Vec<f64>,
    h: Vec<f64>,
    spins: Vec<i8>,
    j_norm: f64,
    j_fingerprint: u64,
    bonds: usize,
}

impl IsingSystem {
    /// The spec's reference system for `(n, seed)`: seeded spins, `J_ij = 1` if `(i+j) % 3 == 0`
    /// else `0.5`, `h_i = 0.1 (i/n - 0.5)`.
    pub fn reference(n: usize, seed: u64) -> Result<Self> {
        check_n("n", n)?;
        let mut j = vec![0.0; n * n];
        for r in 0..n {
            for c in 0..n {
                if r != c {
                    j[r * n + c] = if (r + c) % 3 == 0 { 1.0 } else { 0.5 };
                }
            }
        }
        let h = (0..n).map(|i| 0.1 * (i as f64 / n as f64 - 0.5)).collect();
        let g = Philox::new(seed, STREAM_SPINS);
        let spins = (0..n)
            .map(|i| if g.word(i as u64) >> 31 == 1 { 1 } else { -1 })
            .collect();
        Ok(Self::assemble(n, j, h, spins))
    }

    /// A user-supplied system: `couplings` flat row-major n x n, `fields` and `spins` of length n.
    ///
    /// Requires n in 1..=MAX_N, finite values, a zero diagonal, symmetry within
    /// `SYMMETRY_TOLERANCE` (the two entries are then replaced by their mean) and spins of +-1.
    pub fn from_parts(couplings: Vec<f64>, fields: Vec<f64>, spins: Vec<i8>) -> Result<Self> {
        let n = spins.len();
        check_n("spins", n)?;
        if couplings.len() != n * n {
            return Err(IsingError::WrongLength {
                field: "couplings".into(),
                got: couplings.len(),
                expected: n * n,
            });
        }
        check_vector("fields", &fields, n)?;
        for (i, &s) in spins.iter().enumerate() {
            if s != 1 && s != -1 {
                return Err(IsingError::BadSpin {
                    field: format!("spins[{i}]"),
                    value: f64::from(s),
                });
            }
        }
        let j = check_couplings("couplings", couplings, n)?;
        Ok(Self::assemble(n, j, fields, spins))
    }

    /// A user-supplied system with couplings given as rows (as they arrive in JSON).
    pub fn from_rows(rows: &[Vec<f64>], fields: Vec<f64>, spins: Vec<i8>) -> Result<Self> {
        let n = rows.len();
        check_n("couplings", n)?;
        let mut flat = Vec::with_capacity(n * n);
        for (i, row) in rows.iter().enumerate() {
            if row.len() != n {
                return Err(IsingError::WrongLength {
                    field: format!("couplings[{i}]"),
                    got: row.len(),
                    expected: n,
                });
            }
            flat.extend_from_slice(row);
        }
        if spins.len() != n {
            return Err(IsingError::WrongLength {
                field: "spins".into(),
                got: spins.len(),
                expected: n,
            });
        }
        Self::from_parts(flat, fields, spins)
    }

    fn assemble(n: usize, j: Vec<f64>, h: Vec<f64>, spins: Vec<i8>) -> Self {
        let (j_norm, j_fingerprint) = norm_and_fingerprint(&j, n);
        let bonds = count_bonds(&j, n);
        Self {
            n,
            j,
            h,
            spins,
            j_norm,
            j_fingerprint,
            bonds,
        }
    }

    /// Number of spins.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Couplings, flat row-major n x n.
    pub fn couplings(&self) -> &[f64] {
        &self.j
    }

    /// One coupling `J_ij`.
    pub fn coupling(&self, i: usize, j: usize) -> f64 {
        self.j[i * self.n + j]
    }

    /// Fields `h`.
    pub fn fields(&self) -> &[f64] {
        &self.h
    }

    /// Spins, each -1 or +1.
    pub fn spins(&self) -> &[i8] {
        &self.spins
    }

    /// Replaces the spins (checked: length n, each -1 or +1).
    pub fn set_spins(&mut self, spins: Vec<i8>) -> Result<()> {
        check_vector_len("spins", spins.len(), self.n)?;
        if let Some(i) = spins.iter().position(|&s| s != 1 && s != -1) {
            return Err(IsingError::BadSpin {
                field: format!("spins[{i}]"),
                value: f64::from(spins[i]),
            });
        }
        self.spins = spins;
        Ok(())
    }

    /// Flips spin `i` (no-op when `i >= n`).
    pub fn flip(&mut self, i: usize) {
        if let Some(s) = self.spins.get_mut(i) {
            *s = -*s;
        }
    }

    /// Flips every spin (the global symmetry of the `h = 0` energy).
    pub fn flip_all(&mut self) {
        for s in &mut self.spins {
            *s = -*s;
        }
    }

    /// Euclidean norm of the upper triangle of `J` (cached; used by coupling similarity).
    pub fn coupling_norm(&self) -> f64 {
        self.j_norm
    }

    /// 64-bit fingerprint of `J` (cached; keys the coupling-similarity cache).
    pub fn coupling_fingerprint(&self) -> u64 {
        self.j_fingerprint
    }

    /// Energy `E = - sum_{i<j} J_ij s_i s_j - sum_i h_i s_i`.
    pub fn energy(&self) -> f64 {
        self.energy_and_frustration().0
    }

    /// Magnetization `m = sum_i s_i / n`.
    pub fn magnetization(&self) -> f64 {
        let sum: i64 = self.spins.iter().map(|&s| i64::from(s)).sum();
        sum as f64 / self.n as f64
    }

    /// Share of bonds (`i < j`, `J_ij != 0`) that are unsatisfied (`J_ij s_i s_j < 0`); 0 when there are none.
    pub fn frustration(&self) -> f64 {
        self.energy_and_frustration().1
    }

    /// Local field `sum_j J_ij s_j` on spin `i`.
    pub fn local_field(&self, i: usize) -> f64 {
        let row = &self.j[i * self.n..(i + 1) * self.n];
        row.iter()
            .zip(&self.spins)
            .map(|(&jij, &s)| jij * f64::from(s))
            .sum()
    }

    /// Energy change of flipping spin `i`: `dE = 2 s_i (sum_j J_ij s_j + h_i)`.
    pub fn delta_energy(&self, i: usize) -> f64 {
        2.0 * f64::from(self.spins[i]) * (self.local_field(i) + self.h[i])
    }

    /// Energy and frustration in one pass.
    ///
    /// Runs over full rows (regular, vectorisable) and halves: with symmetric couplings and a zero
    /// diagonal, `sum_{i<j}` is half of `sum_{i != j}`, and each bond is seen twice.
    pub fn energy_and_frustration(&self) -> (f64, f64) {
        let n = self.n;
        let mut buf = SpinBuf::new(&self.spins);
        let s = buf.as_slice();
        let mut pair = 0.0;
        let mut unsatisfied_twice = 0usize;
        for (i, &si) in s.iter().enumerate() {
            let row = &self.j[i * n..(i + 1) * n];
            let (local, unsat) = row_field_and_unsatisfied(row, s, si);
            pair += si * local;
            unsatisfied_twice += unsat;
        }
        let field = dot(&self.h, s);
        let frustration = if self.bonds == 0 {
            0.0
        } else {
            (unsatisfied_twice / 2) as f64 / self.bonds as f64
        };
        (-0.5 * pair - field, frustration)
    }

    /// Number of bonds: pairs `i < j` with `J_ij != 0` (cached).
    pub fn bonds(&self) -> usize {
        self.bonds
    }

    pub(crate) fn set_couplings_trusted(&mut self, j: Vec<f64>) {
        debug_assert_eq!(j.len(), self.n * self.n);
        let (norm, fp) = norm_and_fingerprint(&j, self.n);
        self.bonds = count_bonds(&j, self.n);
        self.j = j;
        self.j_norm = norm;
        self.j_fingerprint = fp;
    }

    pub(crate) fn spins_mut(&mut self) -> &mut [i8] {
        &mut self.spins
    }
}

/// Spins as f64 without a heap allocation for the common small sizes.
pub(crate) struct SpinBuf {
    small: [f64; 64],
    large: Vec<f64>,
    n: usize,
}

impl SpinBuf {
    pub(crate) fn new(spins: &[i8]) -> Self {
        let n = spins.len();
        let mut b = Self {
            small: [0.0; 64],
            large: Vec::new(),
            n,
        };
        if n <= 64 {
            for (d, &s) in b.small.iter_mut().zip(spins) {
                *d = f64::from(s);
            }
        } else {
            b.large = spins.iter().map(|&s| f64::from(s)).collect();
        }
        b
    }

    pub(crate) fn as_slice(&mut self) -> &[f64] {
        if self.n <= 64 {
            &self.small[..self.n]
        } else {
            &self.large
        }
    }
}

/// `sum_j J_ij s_j` over one row, and how many `j` have `J_ij s_j s_i < 0`.
#[inline]
fn row_field_and_unsatisfied(row: &[f64], s: &[f64], si: f64) -> (f64, usize) {
    let len = row.len().min(s.len());
    let (row, s) = (&row[..len], &s[..len]);
    let mut acc = [0.0f64; 4];
    let mut unsat = [0usize; 4];
    let mut cr = row.chunks_exact(4);
    let mut cs = s.chunks_exact(4);
    for (r, x) in (&mut cr).zip(&mut cs) {
        for l in 0..4 {
            let p = r[l] * x[l];
            acc[l] += p;
            unsat[l] += usize::from(p * si < 0.0);
        }
    }
    let mut tail = 0.0;
    let mut tail_unsat = 0;
    for (r, x) in cr.remainder().iter().zip(cs.remainder()) {
        let p = r * x;
        tail += p;
        tail_unsat += usize::from(p * si < 0.0);
    }
    (
        (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail,
        unsat.iter().sum::<usize>() + tail_unsat,
    )
}

/// Dot product with four accumulators in a fixed order (deterministic, and not latency bound).
#[inline]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut acc = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        acc[0] += x[0] * y[0];
        acc[1] += x[1] * y[1];
        acc[2] += x[2] * y[2];
        acc[3] += x[3] * y[3];
    }
    let mut tail = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

fn check_n(field: &str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(IsingError::Empty {
            field: field.into(),
        });
    }
    if n > MAX_N {
        return Err(IsingError::TooLarge {
            field: format!("{field}: n"),
            got: n,
            max: MAX_N,
        });
    }
    Ok(())
}

fn check_vector_len(field: &str, got: usize, n: usize) -> Result<()> {
    if got != n {
        return Err(IsingError::WrongLength {
            field: field.into(),
            got,
            expected: n,
        });
    }
    Ok(())
}

fn check_vector(field: &str, v: &[f64], n: usize) -> Result<()> {
    check_vector_len(field, v.len(), n)?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(IsingError::NotFinite {
            field: format!("{field}[{i}]"),
            value: v[i],
        });
    }
    Ok(())
}

fn check_couplings(field: &str, mut j: Vec<f64>, n: usize) -> Result<Vec<f64>> {
    for r in 0..n {
        for c in 0..n {
            let v = j[r * n + c];
            if !v.is_finite() {
                return Err(IsingError::NotFinite {
                    field: format!("{field}[{r}][{c}]"),
                    value: v,
                });
            }
        }
        let d = j[r * n + r];
        if d != 0.0 {
            return Err(IsingError::NonZeroDiagonal {
                field: field.into(),
                i: r,
                value: d,
            });
        }
    }
    for r in 0..n {
        for c in r + 1..n {
            let (a, b) = (j[r * n + c], j[c * n + r]);
            if a != b {
                let scale = a.abs().max(b.abs()).max(1.0);
                if (a - b).abs() > SYMMETRY_TOLERANCE * scale {
                    return Err(IsingError::Asymmetric {
                        field: field.into(),
                        i: r,
                        j: c,
                        a,
                        b,
                    });
                }
                let m = 0.5 * (a + b);
                j[r * n + c] = m;
                j[c * n + r] = m;
            }
        }
    }
    Ok(j)
}

fn count_bonds(j: &[f64], n: usize) -> usize {
    (0..n)
        .map(|i| {
            j[i * n + i + 1..(i + 1) * n]
                .iter()
                .filter(|&&v| v != 0.0)
                .count()
        })
        .sum()
}

/// Norm of the upper triangle and a 64-bit content hash of it (with `-0.0` read as `0.0`).
fn norm_and_fingerprint(j: &[f64], n: usize) -> (f64, u64) {
    let mut sq = 0.0;
    let mut hash = 0x9E37_79B9_7F4A_7C15u64 ^ n as u64;
    for i in 0..n {
        let row = &j[i * n + i + 1..(i + 1) * n];
        sq += dot(row, row);
        for &v in row {
            let bits = (v + 0.0).to_bits();
            hash = (hash ^ bits)
                .wrapping_mul(0xFF51_AFD7_ED55_8CCD)
                .rotate_left(29);
        }
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    hash ^= hash >> 33;
    (sq.sqrt(), hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_energy(s: &IsingSystem) -> f64 {
        let n = s.n();
        let sp = s.spins();
        let mut e = 0.0;
        for i in 0..n {
            for j in i + 1..n {
                e -= s.coupling(i, j) * f64::from(sp[i]) * f64::from(sp[j]);
            }
            e -= s.fields()[i] * f64::from(sp[i]);
        }
        e
    }

    #[test]
    fn reference_construction_follows_spec() {
        let s = IsingSystem::reference(7, 3).expect("valid");
        assert_eq!(s.n(), 7);
        assert_eq!(s.coupling(1, 2), 1.0);
        assert_eq!(s.coupling(1, 3), 0.5);
        assert_eq!(s.coupling(0, 0), 0.0);
        assert_eq!(s.coupling(0, 3), 1.0);
        assert!((s.fields()[0] + 0.05).abs() < 1e-15);
        assert!((s.fields()[6] - 0.1 * (6.0 / 7.0 - 0.5)).abs() < 1e-15);
        assert!(s.spins().iter().all(|&x| x == 1 || x == -1));
        assert!((s.energy() - brute_energy(&s)).abs() < 1e-12);
        // Different seeds give different spins for a reasonable n.
        let a = IsingSystem::reference(64, 1).expect("valid");
        let b = IsingSystem::reference(64, 2).expect("valid");
        assert_ne!(a.spins(), b.spins());
        assert_eq!(a.couplings(), b.couplings());
        assert_eq!(a.coupling_fingerprint(), b.coupling_fingerprint());
    }

    #[test]
    fn large_system_energy_matches_brute_force() {
        let s = IsingSystem::reference(100, 11).expect("valid");
        assert!((s.energy() - brute_energy(&s)).abs() < 1e-9);
    }

    #[test]
    fn validation_errors_name_the_field() {
        let e = IsingSystem::reference(0, 1).unwrap_err();
        assert!(matches!(e, IsingError::Empty { .. }), "{e}");
        let e = IsingSystem::reference(MAX_N + 1, 1).unwrap_err();
        assert!(matches!(e, IsingError::TooLarge { .. }), "{e}");
        let e = IsingSystem::from_parts(vec![], vec![], vec![]).unwrap_err();
        assert!(matches!(e, IsingError::Empty { .. }));

        let e = IsingSystem::from_parts(vec![0.0; 3], vec![0.0; 2], vec![1, -1]).unwrap_err();
        assert_eq!(
            e,
            IsingError::WrongLength {
                field: "couplings".into(),
                got: 3,
                expected: 4
            }
        );
        let e = IsingSystem::from_rows(&[vec![0.0, 1.0], vec![1.0]], vec![0.0; 2], vec![1, 1])
            .unwrap_err();
        assert!(e.to_string().contains("couplings[1]"), "{e}");

        let e = IsingSystem::from_parts(vec![0.0, 1.0, 2.0, 0.0], vec![0.0; 2], vec![1, 1])
            .unwrap_err();
        assert!(
            matches!(e, IsingError::Asymmetric { i: 0, j: 1, .. }),
            "{e}"
        );

        let e =
            IsingSystem::from_parts(vec![0.0, f64::NAN, f64::NAN, 0.0], vec![0.0; 2], vec![1, 1])
                .unwrap_err();
        assert!(e.to_string().contains("couplings[0][1]") && e.to_string().contains("NaN"));

        let e = IsingSystem::from_parts(vec![0.0; 4], vec![0.0, f64::INFINITY], vec![1, 1])
            .unwrap_err();
        assert!(e.to_string().contains("fields[1]"), "{e}");

        let e = IsingSystem::from_parts(vec![1.0, 0.0, 0.0, 0.0], vec![0.0; 2], vec![1, 1])
            .unwrap_err();
        assert!(matches!(e, IsingError::NonZeroDiagonal { i: 0, .. }));

        let e = IsingSystem::from_parts(vec![0.0; 4], vec![0.0; 2], vec![1, 0]).unwrap_err();
        assert!(e.to_string().contains("spins[1]"), "{e}");

        let mut s = IsingSystem::reference(3, 0).expect("valid");
        assert!(s.set_spins(vec![1, 1]).is_err());
        assert!(s.set_spins(vec![1, 2, 1]).is_err());
        assert!(s.set_spins(vec![1, -1, 1]).is_ok());
    }

    #[test]
    fn near_symmetric_couplings_are_averaged() {
        let s = IsingSystem::from_parts(vec![0.0, 1.0, 1.0 + 1e-12, 0.0], vec![0.0; 2], vec![1, 1])
            .expect("within tolerance");
        assert_eq!(s.coupling(0, 1), s.coupling(1, 0));
    }

    #[test]
    fn frustration_counts_unsatisfied_bonds() {
        // Antiferromagnetic triangle: at most two of three bonds can be satisfied.
        let j = vec![0.0, -1.0, -1.0, -1.0, 0.0, -1.0, -1.0, -1.0, 0.0];
        let s = IsingSystem::from_parts(j, vec![0.0; 3], vec![1, -1, 1]).expect("valid");
        assert!((s.frustration() - 1.0 / 3.0).abs() < 1e-15);
        let s = IsingSystem::from_parts(vec![0.0; 4], vec![0.0; 2], vec![1, -1]).expect("valid");
        assert_eq!(s.frustration(), 0.0);
    }

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f64> = (0..13).map(|i| i as f64 * 0.5).collect();
        let b: Vec<f64> = (0..13).map(|i| 1.0 - i as f64).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-12);
    }
}
