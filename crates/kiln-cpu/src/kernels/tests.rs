//! Every SIMD kernel against the scalar reference, and the reference against the file
//! format's own decoder, on random data of awkward sizes.

use half::f16;
use kiln_formats::gguf::GgmlType;

use super::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn ggml(fmt: Fmt) -> GgmlType {
    match fmt {
        Fmt::Q4_0 => GgmlType::Q4_0,
        Fmt::Q4_1 => GgmlType::Q4_1,
        Fmt::Q5_0 => GgmlType::Q5_0,
        Fmt::Q8_0 => GgmlType::Q8_0,
        Fmt::Q4_K => GgmlType::Q4_K,
        Fmt::Q5_K => GgmlType::Q5_K,
        Fmt::Q6_K => GgmlType::Q6_K,
    }
}

/// Random rows of a format, with sane f16 scales where the format keeps them.
fn random_rows(fmt: Fmt, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let ty = ggml(fmt);
    let (_, bb) = ty.block();
    let mut w: Vec<u8> = (0..rows * ty.bytes_for(cols))
        .map(|_| rng.next() as u8)
        .collect();
    let scales: &[usize] = match fmt {
        Fmt::Q4_0 | Fmt::Q5_0 | Fmt::Q8_0 => &[0],
        Fmt::Q4_1 | Fmt::Q4_K | Fmt::Q5_K => &[0, 2],
        Fmt::Q6_K => &[208],
    };
    for blk in w.chunks_exact_mut(bb) {
        for &o in scales {
            let v = f16::from_f32(rng.f() * 0.05);
            blk[o..o + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    w
}

fn run(k: Tiles, w: &[u8], rows: usize, rb: usize, a: &QAct, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * n];
    gemm_rows(&k, w, rb, 0, rows, &a.view(0, n), |t, r, v| {
        out[t * rows + r..][..v.len()].copy_from_slice(v)
    });
    out
}

const FORMATS: [Fmt; 7] = [
    Fmt::Q4_0,
    Fmt::Q4_1,
    Fmt::Q5_0,
    Fmt::Q8_0,
    Fmt::Q4_K,
    Fmt::Q5_K,
    Fmt::Q6_K,
];

fn sizes(fmt: Fmt) -> &'static [usize] {
    match fmt {
        Fmt::Q4_K | Fmt::Q5_K | Fmt::Q6_K => &[256, 768],
        _ => &[32, 96, 544, 576],
    }
}

#[test]
fn simd_kernels_match_scalar() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for fmt in FORMATS {
        for &cols in sizes(fmt) {
            // Under 16 rows, exactly 16 (one panel), and panels with rows after them.
            for &(rows, n) in &[
                (1, 1),
                (3, 2),
                (4, 4),
                (5, 7),
                (9, 5),
                (8, 1),
                (16, 3),
                (35, 9),
                (48, 1),
                // Panels at every token count of a tile, 2 to 8 (one call each).
                (16, 2),
                (32, 4),
                (16, 5),
                (16, 6),
                (32, 7),
                (16, 8),
            ] {
                let w = random_rows(fmt, rows, cols, &mut rng);
                let rb = ggml(fmt).bytes_for(cols);
                let x: Vec<f32> = (0..n * cols).map(|_| rng.f() * 3.0).collect();
                let (a, want, mag) = reference(fmt, &w, rows, cols, &x, n);
                for isa in Isa::available() {
                    let mut aq = QAct::new();
                    aq.quantize(isa, &x, n, cols);
                    assert_eq!(aq.qs[..n * cols], a.qs[..n * cols], "{isa:?} quantization");
                    assert_eq!(aq.d[..n * cols / 32], a.d[..n * cols / 32]);
                    assert_eq!(aq.s[..n * cols / 32], a.s[..n * cols / 32]);
                    // In the layout the kernel reads (panels for some), with the activations'
                    // offsets kept or not (the kernel then computes them itself).
                    let k = Tiles::new(isa, fmt);
                    let wk = repack(isa, fmt, &w, rows, cols).unwrap_or_else(|| w.clone());
                    let got = run(k, &wk, rows, rb, &aq, n);
                    if k.offsets {
                        aq.offsets();
                        let again = run(k, &wk, rows, rb, &aq, n);
                        assert_eq!(got, again, "{isa:?} {fmt:?} offsets kept");
                    }
                    // Sums in another order: off by a few roundings of the terms' size
                    // (formats with a minimum subtract two large sums, so the result can be
                    // far smaller than its terms).
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        let tol = 1e-4 * e.abs() + 1e-6 * mag[i] + 1e-6;
                        assert!(
                            (g - e).abs() <= tol,
                            "{isa:?} {fmt:?} {rows}x{cols} n={n} [{i}]: {g} vs {e} (terms {})",
                            mag[i]
                        );
                    }
                }
            }
        }
    }
}

/// The largest integer sums a block can make (every stored byte 0x00, 0xFF, 0x80 or 0x7F,
/// so values at their extremes, against activations all 127, all -127, or either as the
/// position's parity says): every SIMD kernel still gives the scalar results, so none of
/// their narrow sums overflows (a Q5_0 kernel that added its 8 products of a block in 16
/// bits failed here, not in `simd_kernels_match_scalar`'s random data).
#[test]
fn extreme_blocks_do_not_overflow() {
    let mut rng = Rng(0x2F1A_0C5D_9B3E_4471);
    for fmt in FORMATS {
        let cols = sizes(fmt)[0];
        let (rows, n) = (35, 8);
        let rb = ggml(fmt).bytes_for(cols);
        for fill in [0x00u8, 0xFF, 0x80, 0x7F] {
            let mut w = random_rows(fmt, rows, cols, &mut rng);
            let scales = w.clone();
            w.fill(fill);
            // The random rows' scale fields back (the values stay at the fill).
            let bb = ggml(fmt).block().1;
            let fields: &[usize] = match fmt {
                Fmt::Q4_0 | Fmt::Q5_0 | Fmt::Q8_0 => &[0],
                Fmt::Q4_1 | Fmt::Q4_K | Fmt::Q5_K => &[0, 2],
                Fmt::Q6_K => &[208],
            };
            for (blk, src) in w.chunks_exact_mut(bb).zip(scales.chunks_exact(bb)) {
                for &o in fields {
                    blk[o..o + 2].copy_from_slice(&src[o..o + 2]);
                }
            }
            for sign in [1.0f32, -1.0, 0.0] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| {
                        if sign != 0.0 {
                            sign
                        } else if i % 2 == 0 {
                            1.0
                        } else {
                            -1.0
                        }
                    })
                    .collect();
                let (_, want, mag) = reference(fmt, &w, rows, cols, &x, n);
                for isa in Isa::available() {
                    let mut aq = QAct::new();
                    aq.quantize(isa, &x, n, cols);
                    let k = Tiles::new(isa, fmt);
                    if k.offsets {
                        aq.offsets();
                    }
                    let wk = repack(isa, fmt, &w, rows, cols).unwrap_or_else(|| w.clone());
                    let got = run(k, &wk, rows, rb, &aq, n);
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        let tol = 1e-4 * e.abs() + 1e-6 * mag[i] + 1e-6;
                        assert!(
                            (g - e).abs() <= tol,
                            "{isa:?} {fmt:?} fill {fill:#x} sign {sign} [{i}]: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}

/// The scalar kernel's products of `rows` rows `w` with `n` tokens `x` (quantized by the
/// scalar code, which is returned too), and each result's size of terms ([`magnitudes`]).
fn reference(
    fmt: Fmt,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
) -> (QAct, Vec<f32>, Vec<f32>) {
    let mut a = QAct::new();
    a.quantize(Isa::Scalar, x, n, cols);
    let rb = ggml(fmt).bytes_for(cols);
    let want = run(Tiles::scalar(fmt), w, rows, rb, &a, n);
    (a, want, magnitudes(fmt, w, rows, cols, x, n))
}

/// `sum |w_i * x_i|` for each token and row (as `run` orders its results): the size of a
/// product's terms.
fn magnitudes(fmt: Fmt, w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
    let rb = ggml(fmt).bytes_for(cols);
    let mut deq = vec![0f32; rows * cols];
    for r in 0..rows {
        dequantize(
            ggml(fmt),
            &w[r * rb..(r + 1) * rb],
            &mut deq[r * cols..(r + 1) * cols],
        );
    }
    let mut mag = vec![0f32; rows * n];
    for t in 0..n {
        for r in 0..rows {
            let (wr, xt) = (&deq[r * cols..][..cols], &x[t * cols..][..cols]);
            mag[t * rows + r] = wr.iter().zip(xt).map(|(a, b)| (a * b).abs()).sum();
        }
    }
    mag
}

#[test]
fn scalar_kernels_match_dequantized_f32() {
    let mut rng = Rng(12345);
    for fmt in FORMATS {
        for &cols in sizes(fmt) {
            let rows = 3;
            let w = random_rows(fmt, rows, cols, &mut rng);
            let rb = ggml(fmt).bytes_for(cols);
            let x: Vec<f32> = (0..cols).map(|_| rng.f()).collect();
            let mut a = QAct::new();
            a.quantize(Isa::Scalar, &x, 1, cols);
            let got = run(Tiles::scalar(fmt), &w, rows, rb, &a, 1);
            for r in 0..rows {
                let mut deq = vec![0f32; cols];
                let row = &w[r * rb..(r + 1) * rb];
                kiln_formats::gguf::quant::dequantize(ggml(fmt), row, &mut deq).unwrap();
                let exact: f32 = deq.iter().zip(&x).map(|(a, b)| a * b).sum();
                let mag: f32 = deq.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
                // 8-bit activations: each value off by at most half a step of 1/127.
                assert!(
                    (got[r] - exact).abs() <= 0.01 * mag + 1e-6,
                    "{fmt:?} cols {cols} row {r}: {} vs {exact} (magnitude {mag})",
                    got[r]
                );
            }
        }
    }
}

/// A token's results do not depend on the tokens that share its product (how many, and
/// where it sits among them), nor on whether its activations' offsets were kept, for every
/// format and instruction set: a sequence's logits must not depend on its batch. The rows
/// cover a whole panel and rows after it; the widths odd and even block counts, and panels
/// past `HALVES_PANEL_BYTES` (2048 wide), whose 8 tokens go as one call, not two of 4.
#[test]
fn results_do_not_depend_on_the_batch() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut checked = 0;
    for isa in Isa::available() {
        for fmt in FORMATS.into_iter().chain([Fmt::Q5_0]) {
            let widths: &[usize] = match fmt {
                Fmt::Q4_K | Fmt::Q5_K | Fmt::Q6_K => &[256, 768, 2048],
                _ => &[32, 96, 544, 576, 1024, 1056, 2048],
            };
            for &cols in widths {
                let rows = 23;
                let w = random_rows(fmt, rows, cols, &mut rng);
                let rb = ggml(fmt).bytes_for(cols);
                let k = Tiles::new(isa, fmt);
                let w = repack(isa, fmt, &w, rows, cols).unwrap_or(w);
                let n = 21;
                let x: Vec<f32> = (0..n * cols).map(|_| rng.f() * 3.0).collect();
                // Each token alone (offsets kept or not), from rows split in two.
                let mut alone = vec![f32::NAN; rows * n];
                for t in 0..n {
                    for kept in [false, true] {
                        let mut one = QAct::new();
                        one.quantize(isa, &x[t * cols..(t + 1) * cols], 1, cols);
                        if kept {
                            one.offsets();
                        }
                        for (r0, r1) in [(0, 16), (16, rows)] {
                            gemm_rows(&k, &w, rb, r0, r1, &one.view(0, 1), |_, r0, vs| {
                                for (i, &v) in vs.iter().enumerate() {
                                    let r = r0 + i;
                                    if !kept {
                                        alone[t * rows + r] = v;
                                    }
                                    let e = alone[t * rows + r];
                                    assert_eq!(v.to_bits(), e.to_bits(), "{isa:?} {fmt:?} offsets");
                                }
                            });
                        }
                    }
                }
                // In batches of every size, each token at every place of a tile.
                for m in (1..=9).chain([13, 21]) {
                    let mut all = QAct::new();
                    all.quantize(isa, &x[..m * cols], m, cols);
                    all.offsets();
                    gemm_rows(&k, &w, rb, 0, rows, &all.view(0, m), |t, r0, vs| {
                        for (i, &v) in vs.iter().enumerate() {
                            let r = r0 + i;
                            let e = alone[t * rows + r];
                            assert_eq!(
                                v.to_bits(),
                                e.to_bits(),
                                "{isa:?} {fmt:?} {rows}x{cols} token {t} of {m}, row {r}: {v} vs {e}"
                            );
                        }
                    });
                    checked += m;
                }
            }
        }
    }
    eprintln!("{checked} tokens checked");
}

/// AVX2's Q4_1 and Q8_0 panels give AVX-512's panels' results bit for bit (the same exact
/// integer sums, the same floating-point operations in the same order), on a machine that has
/// both; elsewhere nothing is compared, and the test says so.
#[test]
fn avx2_panels_equal_avx512_panels() {
    let isas = Isa::available();
    if !(isas.contains(&Isa::Avx2) && isas.contains(&Isa::Avx512Vnni)) {
        eprintln!("not compared: this CPU lacks AVX2 or AVX-512 VNNI");
        return;
    }
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for fmt in [Fmt::Q4_1, Fmt::Q8_0] {
        for &cols in &[32usize, 576, 1056] {
            let rows = 37;
            let w = random_rows(fmt, rows, cols, &mut rng);
            let rb = ggml(fmt).bytes_for(cols);
            for n in [1usize, 4, 8, 13] {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.f() * 3.0).collect();
                let got: Vec<Vec<u32>> = [Isa::Avx2, Isa::Avx512Vnni]
                    .iter()
                    .map(|&isa| {
                        let mut a = QAct::new();
                        a.quantize(isa, &x, n, cols);
                        let wk = repack(isa, fmt, &w, rows, cols).expect("panels");
                        let v = run(Tiles::new(isa, fmt), &wk, rows, rb, &a, n);
                        v.iter().map(|f| f.to_bits()).collect()
                    })
                    .collect();
                assert_eq!(got[0], got[1], "{fmt:?} {rows}x{cols} n={n}");
            }
        }
    }
}

/// Rows interleaved for a kernel come back unchanged, so the embedding lookup (which reads
/// a row back) sees the file's values.
#[test]
fn repacked_rows_unpack_to_the_original() {
    let mut rng = Rng(0x5851_F42D_4C95_7F2D);
    // Each format on an instruction set whose kernel reads panels of it (K-quants: AVX2's).
    for (isa, fmt) in [
        (Isa::Avx512Vnni, Fmt::Q4_0),
        (Isa::Avx512Vnni, Fmt::Q4_1),
        (Isa::Avx512Vnni, Fmt::Q5_0),
        (Isa::Avx512Vnni, Fmt::Q8_0),
        (Isa::Avx2, Fmt::Q4_K),
        (Isa::Avx2, Fmt::Q6_K),
    ] {
        let widths: &[usize] = match fmt {
            Fmt::Q4_K | Fmt::Q6_K => &[256, 768],
            _ => &[32, 576, 1056],
        };
        for &cols in widths {
            let rows = 37;
            let w = random_rows(fmt, rows, cols, &mut rng);
            let rb = ggml(fmt).bytes_for(cols);
            let Some(p) = repack(isa, fmt, &w, rows, cols) else {
                panic!("{fmt:?} {cols}: not repacked");
            };
            assert_eq!(p.len(), w.len());
            assert_ne!(p, w, "{fmt:?} {cols}: the layout did not change");
            for r in 0..rows {
                let mut back = vec![0u8; rb];
                unpack_row(fmt, &p, cols, r, &mut back);
                assert_eq!(back, w[r * rb..(r + 1) * rb], "{fmt:?} {cols} row {r}");
            }
            // The panels shared among threads: the same bytes, and the ranges said to be
            // read cover the panels' bytes once each.
            let pool = crate::pool::ThreadPool::new(3);
            let ranges = std::sync::Mutex::new(Vec::new());
            let read = |a: usize, b: usize| ranges.lock().unwrap().push((a, b));
            let shared = repack_on(Some(&pool), isa, fmt, &w, rows, cols, Some(&read));
            assert_eq!(shared.as_ref(), Some(&p), "{fmt:?} {cols}: on 3 threads");
            let mut ranges = ranges.into_inner().unwrap();
            ranges.sort();
            let mut at = 0;
            for (a, b) in ranges {
                assert!(a == at && b > a, "{fmt:?} {cols}: read {a}..{b} after {at}");
                at = b;
            }
            assert_eq!(
                at,
                rows / PANEL * PANEL * rb,
                "{fmt:?} {cols}: panels' bytes read"
            );
        }
    }
    assert!(repack(Isa::Avx512Vnni, Fmt::Q4_1, &[0u8; 20 * 3 * 15], 15, 96).is_none());
    assert!(repack(Isa::Scalar, Fmt::Q4_1, &[0u8; 20 * 18 * 16], 16, 576).is_none());
}

/// The vector f16 conversions (KV cache stores, rounded attention operands) give `half`'s
/// results bit for bit, ties, subnormals, overflow and the scalar tails included.
#[test]
fn f16_conversions_match_half() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut x: Vec<f32> = (0..1000)
        .map(|i| {
            let v = rng.f();
            match i % 5 {
                0 => v * 1e-6,                   // f16 subnormals
                1 => v * 70000.0,                // beyond f16's range
                2 => (v * 2048.0).round() + 0.5, // ties
                _ => v * 10.0,
            }
        })
        .collect();
    x.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        65504.0,
        65520.0,
        5.96e-8,
    ]);
    for isa in Isa::available() {
        for n in [0, 1, 7, 8, 9, 31, x.len()] {
            let src = &x[..n];
            let mut got = vec![f16::ZERO; n];
            vec::to_f16(isa, src, &mut got);
            let mut round = src.to_vec();
            vec::round_f16(isa, &mut round);
            for (i, &v) in src.iter().enumerate() {
                let want = f16::from_f32(v);
                assert_eq!(got[i].to_bits(), want.to_bits(), "{isa:?} to_f16({v})");
                assert_eq!(
                    round[i].to_bits(),
                    want.to_f32().to_bits(),
                    "{isa:?} round_f16({v})"
                );
            }
        }
    }
}

/// Four or eight tokens against one f16 row give each token's own [`vec::dot_f16`] bit for
/// bit (so a verified pass over several tokens matches decoding one at a time), tails included.
#[test]
fn f16_dot_of_four_rows_matches_one_row_at_a_time() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for isa in Isa::available() {
        for n in [0, 1, 15, 16, 17, 31, 32, 33, 576, 1000] {
            let w: Vec<f16> = (0..n).map(|_| f16::from_f32(rng.f())).collect();
            let xs: Vec<Vec<f32>> = (0..8)
                .map(|_| (0..n).map(|_| rng.f() * 3.0).collect())
                .collect();
            let got = vec::dot_f16_x4(isa, [&xs[0], &xs[1], &xs[2], &xs[3]], &w);
            let got8 = vec::dot_f16_x8(isa, std::array::from_fn(|t| &xs[t][..]), &w);
            for t in 0..4 {
                let want = vec::dot_f16(isa, &xs[t], &w);
                assert_eq!(got[t].to_bits(), want.to_bits(), "{isa:?} n {n} token {t}");
            }
            for (t, g) in got8.iter().enumerate() {
                let want = vec::dot_f16(isa, &xs[t], &w);
                assert_eq!(g.to_bits(), want.to_bits(), "{isa:?} n {n} token {t} of 8");
            }
            if n > 0 {
                let exact: f64 = (0..n).map(|i| xs[0][i] as f64 * w[i].to_f64()).sum();
                assert!((got[0] as f64 - exact).abs() < 1e-3 * (1.0 + exact.abs()));
            }
        }
    }
}

/// The activations' quantization on every instruction set of this CPU is the scalar one bit
/// for bit, for finite values: 1 to 40 blocks (the AVX-512 path takes 16 at a time and the
/// rest one by one) of zeros, of signed zeros, of one value, of exact halves (ties to even),
/// of scales that round to zero at f16, of f16-subnormal scales, of scales whose inverse
/// overflows (quantized to zeros), of values far apart in size and of large ones.
#[test]
fn quantization_is_the_scalar_one_on_every_isa() {
    let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
    for nb in 1..=40usize {
        let x: Vec<f32> = (0..nb * 32)
            .map(|i| match (i / 32) % 11 {
                0 => 0.0,
                1 => 0.75,
                2 => rng.f() * 1e-6,
                3 => rng.f() * 6e4,
                4 => rng.f() * if i % 5 == 0 { 100.0 } else { 0.01 },
                5 => [0.0, -0.0][i % 2],
                // 127 and halves: with a scale of 1 the values tie between integers.
                6 => [127.0, -126.5, 0.5, 1.5, -2.5, 3.5][i % 6],
                7 => rng.f() * 1e-3,
                8 => rng.f() * 2e-37,
                9 => 0.25 + (i % 32) as f32,
                _ => rng.f() * 3.0,
            })
            .collect();
        let (mut q0, mut d0, mut s0) = (vec![0i8; nb * 32], vec![0f32; nb], vec![0f32; nb]);
        quantize_rows(Isa::Scalar, &x, &mut q0, &mut d0, &mut s0);
        for isa in Isa::available() {
            let (mut q, mut d, mut s) = (vec![0i8; nb * 32], vec![0f32; nb], vec![0f32; nb]);
            quantize_rows(isa, &x, &mut q, &mut d, &mut s);
            assert_eq!(q, q0, "{isa:?} {nb} blocks: values");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&d), bits(&d0), "{isa:?} {nb} blocks: scales");
            assert_eq!(bits(&s), bits(&s0), "{isa:?} {nb} blocks: sums");
        }
    }
    // The blocks named above are what they say.
    let one = |v: f32| {
        let x = [v; 32];
        let (mut q, mut d, mut s) = ([0i8; 32], [0f32; 1], [0f32; 1]);
        quantize_rows(Isa::Scalar, &x, &mut q, &mut d, &mut s);
        (q[0], d[0])
    };
    let (_, d) = one(1e-3);
    assert!(
        d > 0.0 && d < f16::MIN_POSITIVE.to_f32(),
        "an f16-subnormal scale: {d}"
    );
    assert_eq!(
        one(2e-37),
        (0, 0.0),
        "an inverse that overflows quantizes to zeros"
    );
}
