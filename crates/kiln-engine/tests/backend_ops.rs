//! Every operation of a backend on random inputs of awkward sizes, against a float64 reference
//! written here. Runs on the CPU backend, or on the GPU with `KILN_TEST_DEVICE=cuda`.

use std::sync::Arc;

use half::f16;
mod common;
use kiln_engine::device::{Device, DeviceKind};
use kiln_formats::gguf::GgmlType;
use kiln_model::{Arch, Backend, ModelConfig, PagedSeq, RawTensor, RopeStyle, TensorBytes};

struct Rng(u64);

impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

fn device() -> (Device, bool) {
    (
        common::test_device(2),
        common::test_kind() != DeviceKind::Cpu,
    )
}

/// ||a - b|| / ||b||, in f64.
fn rel(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut d, mut n) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        assert!(x.is_finite(), "non-finite output");
        d += (x as f64 - y) * (x as f64 - y);
        n += y * y;
    }
    (d / n.max(1e-30)).sqrt()
}

fn upload<B: Backend>(b: &B, v: &[f32]) -> B::Act {
    b.vector(v).unwrap()
}

fn read<B: Backend>(b: &B, a: &B::Act, n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    b.read(a, &mut out);
    b.finish().unwrap();
    out
}

fn f16_matrix(rng: &mut Rng, rows: usize, cols: usize) -> (RawTensor, Vec<f32>) {
    let vals: Vec<f32> = rng
        .vec(rows * cols)
        .into_iter()
        .map(|v| f16::from_f32(v).to_f32())
        .collect();
    let bytes: Vec<u8> = vals
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    let t = RawTensor {
        name: format!("w{rows}x{cols}"),
        ty: GgmlType::F16,
        rows,
        cols,
        data: TensorBytes::Owned(Arc::new(bytes)),
    };
    (t, vals)
}

fn cfg(heads: usize, kv_heads: usize, hd: usize, rope_dim: usize, style: RopeStyle) -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        n_layers: 1,
        dim: heads * hd,
        ffn_dim: 64,
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim: hd,
        rope_dim,
        rope_base: 10000.0,
        rope_style: style,
        rms_eps: 1e-5,
        vocab_size: 1000,
        context_length: 4096,
        qkv_bias: false,
    }
}

/// A pass's metadata for backends that keep it on the device.
fn begin<B: Backend>(b: &B, c: &ModelConfig, max_t: usize, seqs: &[PagedSeq<'_>], rows: &[usize]) {
    let n: usize = seqs.iter().map(|s| s.n).sum();
    let tokens: Vec<u32> = (0..n as u32).map(|i| i % c.vocab_size as u32).collect();
    b.begin_pass(c, max_t, &tokens, seqs, rows).unwrap();
}

/// [`begin`] a pass of one sequence of `n` rows from position 0 (products alone read it).
fn begin_rows<B: Backend>(b: &B, c: &ModelConfig, n: usize) {
    let seq = [0u32; 4];
    let seqs = [PagedSeq {
        row0: 0,
        n,
        pos0: 0,
        blocks: &seq,
    }];
    begin(b, c, n, &seqs, &[]);
}

/// The root of the sum of the squared terms of `x[n][cols] . w[rows][cols]^T`, for each
/// output, in float64: what rounding each term by a part of itself makes the sum wrong by (in
/// the root mean square), however much the terms cancel and however many there are.
fn ref_term_norms(w: &[f32], x: &[f32], n: usize, rows: usize, cols: usize) -> Vec<f64> {
    let sq = |v: &[f32]| v.iter().map(|a| a * a).collect::<Vec<f32>>();
    ref_matmul(&sq(w), &sq(x), n, rows, cols)
        .into_iter()
        .map(f64::sqrt)
        .collect()
}

/// The error of `a` against `b` relative to `m` (root mean squares).
fn rel_to(a: &[f32], b: &[f64], m: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    let n: f64 = m.iter().map(|y| y * y).sum();
    (d / n.max(1e-30)).sqrt()
}

/// `x[n][cols] . w[rows][cols]^T` in float64.
fn ref_matmul(w: &[f32], x: &[f32], n: usize, rows: usize, cols: usize) -> Vec<f64> {
    (0..n)
        .flat_map(|r| {
            (0..rows).map(move |o| {
                (0..cols)
                    .map(|i| w[o * cols + i] as f64 * x[r * cols + i] as f64)
                    .sum::<f64>()
            })
        })
        .collect()
}

#[test]
fn matmul_at_awkward_sizes() {
    let (d, gpu) = device();
    kiln_engine::with_backend!(d, b => matmul_at_awkward_sizes_on(b, gpu))
}

fn matmul_at_awkward_sizes_on<B: Backend>(b: B, gpu: bool) {
    // The CPU rounds activations to 8 bits; the GPU rounds them to f16 beyond 8 rows.
    let tol = if gpu { 3e-3 } else { 2e-2 };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // The GPU's scratch for f16 activations is sized by the widest activation of the
    // configuration (2 x ffn_dim here): as wide as the widest matrix below.
    let c = ModelConfig {
        ffn_dim: 1024,
        ..cfg(2, 1, 16, 16, RopeStyle::Halves)
    };
    for (rows, cols) in [
        (1, 32),
        (7, 64),
        (33, 100),
        (100, 96),
        (301, 136),
        (64, 264),
        // Few outputs over long rows: on the GPU, 2 to 8 rows split the columns over blocks.
        (40, 2048),
    ] {
        let (t, w) = f16_matrix(&mut rng, rows, cols);
        let m = b.matrix(t).unwrap();
        for n in [1usize, 2, 5, 8, 9, 40] {
            let x = rng.vec(n * cols);
            let xa = upload(&b, &x);
            let mut out = b.act(n * rows).unwrap();
            begin_rows(&b, &c, n);
            b.matmul(&m, &xa, n, &mut out);
            let got = read(&b, &out, n * rows);
            let want = ref_matmul(&w, &x, n, rows, cols);
            let e = rel(&got, &want);
            assert!(e < tol, "{rows}x{cols}, {n} rows: relative error {e:.2e}");
        }
    }
}

#[test]
fn elementwise_norm_gather_and_argmax() {
    let (d, _) = device();
    kiln_engine::with_backend!(d, b => elementwise_norm_gather_and_argmax_on(b))
}

fn elementwise_norm_gather_and_argmax_on<B: Backend>(b: B) {
    let mut rng = Rng(12345);
    let (n, dim) = (5usize, 203usize);
    let x = rng.vec(n * dim);
    let w = rng.vec(dim);
    let (xa, wa) = (upload(&b, &x), upload(&b, &w));
    let mut out = b.act(n * dim).unwrap();
    b.rms_norm(&xa, &wa, 1e-5, n, dim, &mut out);
    let got = read(&b, &out, n * dim);
    let w = &w;
    let want: Vec<f64> = (0..n)
        .flat_map(|r| {
            let xr = &x[r * dim..(r + 1) * dim];
            let ms = xr.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
            let s = 1.0 / (ms + 1e-5).sqrt();
            (0..dim).map(move |i| xr[i] as f64 * s * w[i] as f64)
        })
        .collect();
    assert!(rel(&got, &want) < 1e-5, "rms_norm");

    let len = 1029;
    let (p, q) = (rng.vec(len), rng.vec(len));
    let mut pa = upload(&b, &p);
    let qa = upload(&b, &q);
    b.add(&mut pa, &qa, len);
    let want: Vec<f64> = p
        .iter()
        .zip(&q)
        .map(|(&a, &c)| a as f64 + c as f64)
        .collect();
    assert!(rel(&read(&b, &pa, len), &want) < 1e-6, "add");
    let mut ga = upload(&b, &p);
    b.swiglu(&mut ga, &qa, len);
    let want: Vec<f64> = p
        .iter()
        .zip(&q)
        .map(|(&g, &u)| g as f64 / (1.0 + (-(g as f64)).exp()) * u as f64)
        .collect();
    assert!(rel(&read(&b, &ga, len), &want) < 1e-5, "swiglu");
    let (rows, width) = (7usize, 147usize);
    let bias = rng.vec(width);
    let xs = rng.vec(rows * width);
    let mut xa = upload(&b, &xs);
    b.add_bias(&mut xa, &upload(&b, &bias), rows, width);
    let want: Vec<f64> = (0..rows * width)
        .map(|i| xs[i] as f64 + bias[i % width] as f64)
        .collect();
    assert!(rel(&read(&b, &xa, rows * width), &want) < 1e-6, "add_bias");

    // Rows gathered, then the argmax of each, with a planted tie (the lower index wins).
    let c = cfg(2, 1, 16, 16, RopeStyle::Halves);
    let pick = [3usize, 0, 6];
    let blocks = [0u32; 1];
    begin(
        &b,
        &c,
        rows,
        &[PagedSeq {
            row0: 0,
            n: rows,
            pos0: 0,
            blocks: &blocks,
        }],
        &pick,
    );
    let mut xs = rng.vec(rows * width);
    xs[3 * width + 100] = 5.0;
    xs[3 * width + 120] = 5.0;
    xs[6 * width + 146] = 7.0;
    let xa = upload(&b, &xs);
    let mut g = b.act(pick.len() * width).unwrap();
    b.gather_rows(&xa, &pick, width, &mut g);
    let got = read(&b, &g, pick.len() * width);
    let want: Vec<f64> = pick
        .iter()
        .flat_map(|&r| xs[r * width..(r + 1) * width].iter().map(|&v| v as f64))
        .collect();
    assert_eq!(rel(&got, &want), 0.0, "gather_rows");
    let mut ids = Vec::new();
    b.argmax(&g, pick.len(), width, &mut ids);
    b.finish().unwrap();
    let best = |r: usize| {
        let row = &xs[r * width..(r + 1) * width];
        let mut bi = 0;
        for (i, &v) in row.iter().enumerate() {
            if v > row[bi] {
                bi = i;
            }
        }
        bi as u32
    };
    assert_eq!(ids, vec![100, best(0), 146]);
}

/// Reference attention of one row over positions 0..=pos of its sequence, with keys and
/// values rounded to f16 as the caches keep them.
#[allow(clippy::too_many_arguments)]
fn ref_attention(
    c: &ModelConfig,
    q: &[f32],
    keys: &[Vec<f32>],
    vals: &[Vec<f32>],
    pos: usize,
    out: &mut Vec<f64>,
) {
    let (hd, group) = (c.head_dim, c.n_heads / c.n_kv_heads);
    let r16 = |v: f32| f16::from_f32(v).to_f32() as f64;
    for h in 0..c.n_heads {
        let g = h / group;
        let qh = &q[h * hd..(h + 1) * hd];
        let scores: Vec<f64> = (0..=pos)
            .map(|p| {
                (0..hd)
                    .map(|d| qh[d] as f64 * r16(keys[p][g * hd + d]))
                    .sum::<f64>()
                    / (hd as f64).sqrt()
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for d in 0..hd {
            out.push(
                (0..=pos)
                    .map(|p| e[p] * r16(vals[p][g * hd + d]))
                    .sum::<f64>()
                    / z,
            );
        }
    }
}

fn ref_rope(c: &ModelConfig, x: &mut [f64], heads: usize, pos: usize) {
    let (hd, rd) = (c.head_dim, c.rope_dim);
    let half = rd / 2;
    for i in 0..half {
        let f = c.rope_base.powf(-2.0 * i as f32 / rd as f32);
        let theta = (pos as f32 * f) as f64;
        let (s, co) = theta.sin_cos();
        for h in 0..heads {
            let (a, b) = match c.rope_style {
                RopeStyle::Interleaved => (h * hd + 2 * i, h * hd + 2 * i + 1),
                RopeStyle::Halves => (h * hd + i, h * hd + i + half),
            };
            let (x0, x1) = (x[a], x[b]);
            x[a] = x0 * co - x1 * s;
            x[b] = x0 * s + x1 * co;
        }
    }
}

#[test]
fn rope_and_paged_attention_prefill_then_decode() {
    let (d, gpu) = device();
    kiln_engine::with_backend!(d, b => rope_and_paged_attention_prefill_then_decode_on(b, gpu))
}

fn rope_and_paged_attention_prefill_then_decode_on<B: Backend>(b: B, gpu: bool) {
    // The CPU also rounds queries and probabilities to f16, as llama.cpp does.
    let tol = if gpu { 2e-4 } else { 5e-3 };
    let mut rng = Rng(777);
    // On a GPU, decode steps of grouped heads take k_attn_gqa (group 3 with split positions;
    // group 7, more heads than warps, with short prompts in one split), the others k_attn.
    for (heads, kv_heads, hd, rd, style, lens) in [
        (
            6usize,
            2usize,
            40usize,
            40usize,
            RopeStyle::Halves,
            [3usize, 150usize],
        ),
        (4, 4, 24, 12, RopeStyle::Interleaved, [3, 150]),
        (14, 2, 64, 64, RopeStyle::Halves, [5, 40]),
        // Prompts over several 64-row tiles and 64-key steps of the tensor-core prefill
        // kernel (head sizes 64, 96 and 128 on a GPU), one of them with a partial rotation.
        (8, 2, 128, 64, RopeStyle::Halves, [20, 150]),
        (4, 1, 96, 96, RopeStyle::Interleaved, [31, 130]),
        (6, 3, 64, 64, RopeStyle::Halves, [1, 175]),
        // Head sizes that are not multiples of 8 (values read two or one at a time on a GPU).
        (2, 1, 18, 18, RopeStyle::Halves, [3, 150]),
        (3, 1, 9, 8, RopeStyle::Interleaved, [2, 140]),
    ] {
        let c = cfg(heads, kv_heads, hd, rd, style);
        let (dim, kvd) = (c.dim, c.kv_dim());
        // Two sequences, scrambled block tables; prompts of `lens` tokens, then one token each.
        let tables: [Vec<u32>; 2] = [vec![9, 4], vec![3, 0, 7, 1, 8, 2, 5, 6, 10, 11, 12]];
        let mut pool = b.kv_pool(&c, 13, kiln_model::KV_BLOCK).unwrap();
        let mut keys: Vec<Vec<Vec<f32>>> = vec![Vec::new(), Vec::new()];
        let mut vals: Vec<Vec<Vec<f32>>> = vec![Vec::new(), Vec::new()];
        for step in 0..2 {
            let counts: Vec<usize> = if step == 0 { lens.to_vec() } else { vec![1, 1] };
            let n: usize = counts.iter().sum();
            let mut seqs = Vec::new();
            let mut row0 = 0;
            for (s, &cnt) in counts.iter().enumerate() {
                let pos0 = if step == 0 { 0 } else { lens[s] };
                seqs.push(PagedSeq {
                    row0,
                    n: cnt,
                    pos0,
                    blocks: &tables[s],
                });
                row0 += cnt;
            }
            let q = rng.vec(n * dim);
            let k = rng.vec(n * kvd);
            let v = rng.vec(n * kvd);
            begin(&b, &c, n, &seqs, &[]);
            let (mut qa, mut ka, va) = (upload(&b, &q), upload(&b, &k), upload(&b, &v));
            b.rope(&c, &mut qa, heads, &seqs);
            b.rope(&c, &mut ka, kv_heads, &seqs);
            let qr = read(&b, &qa, n * dim);
            let kr = read(&b, &ka, n * kvd);
            // Rotations against the reference.
            let mut want_q = Vec::new();
            let mut want_k = Vec::new();
            for sq in &seqs {
                for t in 0..sq.n {
                    let row = sq.row0 + t;
                    let mut qv: Vec<f64> = q[row * dim..(row + 1) * dim]
                        .iter()
                        .map(|&x| x as f64)
                        .collect();
                    ref_rope(&c, &mut qv, heads, sq.pos0 + t);
                    want_q.extend(qv);
                    let mut kv: Vec<f64> = k[row * kvd..(row + 1) * kvd]
                        .iter()
                        .map(|&x| x as f64)
                        .collect();
                    ref_rope(&c, &mut kv, kv_heads, sq.pos0 + t);
                    want_k.extend(kv);
                }
            }
            assert!(rel(&qr, &want_q) < 1e-5, "rope q");
            assert!(rel(&kr, &want_k) < 1e-5, "rope k");
            let mut out = b.act(n * dim).unwrap();
            b.attention(&c, &mut pool, 0, &qa, &ka, &va, &seqs, &mut out);
            let got = read(&b, &out, n * dim);
            let mut want = Vec::new();
            for (s, sq) in seqs.iter().enumerate() {
                for t in 0..sq.n {
                    let row = sq.row0 + t;
                    keys[s].push(kr[row * kvd..(row + 1) * kvd].to_vec());
                    vals[s].push(v[row * kvd..(row + 1) * kvd].to_vec());
                }
            }
            for (s, sq) in seqs.iter().enumerate() {
                for t in 0..sq.n {
                    let row = sq.row0 + t;
                    ref_attention(
                        &c,
                        &qr[row * dim..(row + 1) * dim],
                        &keys[s],
                        &vals[s],
                        sq.pos0 + t,
                        &mut want,
                    );
                }
            }
            // A GPU's prefill on the tensor cores rounds queries and probabilities to f16 too.
            let tol = if gpu && step == 0 && matches!(hd, 64 | 96 | 128) {
                5e-3
            } else {
                tol
            };
            let e = rel(&got, &want);
            assert!(
                e < tol,
                "heads {heads}/{kv_heads}, hd {hd}, step {step}: relative error {e:.2e}"
            );
        }
    }
}

/// Decode attention over many rows at once (on a GPU the rows' KV heads fill it, so grouped
/// heads take k_attn_gqa): 200 sequences of 1 to 90 cached positions, then one query each,
/// against the reference over each sequence's keys and values.
#[test]
fn decode_attention_of_many_rows() {
    let (d, gpu) = device();
    kiln_engine::with_backend!(d, b => decode_attention_of_many_rows_on(b, gpu))
}

fn decode_attention_of_many_rows_on<B: Backend>(b: B, gpu: bool) {
    let tol = if gpu { 2e-4 } else { 5e-3 };
    let mut rng = Rng(4242);
    let c = cfg(14, 2, 64, 64, RopeStyle::Halves);
    let (dim, kvd, bs) = (c.dim, c.kv_dim(), kiln_model::KV_BLOCK);
    let lens: Vec<usize> = (0..200).map(|i| 1 + (i * 37) % 90).collect();
    // Block tables handed out in an order that is not the sequences'.
    let mut next = 0u32;
    let tables: Vec<Vec<u32>> = lens
        .iter()
        .map(|&l| {
            (0..(l + 1).div_ceil(bs))
                .map(|_| {
                    next += 1;
                    next - 1
                })
                .rev()
                .collect()
        })
        .collect();
    let mut pool = b.kv_pool(&c, next as usize, bs).unwrap();
    let mut keys: Vec<Vec<Vec<f32>>> = vec![Vec::new(); lens.len()];
    let mut vals: Vec<Vec<Vec<f32>>> = vec![Vec::new(); lens.len()];
    for step in 0..2 {
        let counts: Vec<usize> = if step == 0 {
            lens.clone()
        } else {
            vec![1; lens.len()]
        };
        let n: usize = counts.iter().sum();
        let mut seqs = Vec::new();
        let mut row0 = 0;
        for (s, &cnt) in counts.iter().enumerate() {
            seqs.push(PagedSeq {
                row0,
                n: cnt,
                pos0: if step == 0 { 0 } else { lens[s] },
                blocks: &tables[s],
            });
            row0 += cnt;
        }
        let (q, k, v) = (rng.vec(n * dim), rng.vec(n * kvd), rng.vec(n * kvd));
        begin(&b, &c, n, &seqs, &[]);
        let (qa, ka, va) = (upload(&b, &q), upload(&b, &k), upload(&b, &v));
        let mut out = b.act(n * dim).unwrap();
        b.attention(&c, &mut pool, 0, &qa, &ka, &va, &seqs, &mut out);
        let got = read(&b, &out, n * dim);
        for (s, sq) in seqs.iter().enumerate() {
            for t in 0..sq.n {
                let row = sq.row0 + t;
                keys[s].push(k[row * kvd..(row + 1) * kvd].to_vec());
                vals[s].push(v[row * kvd..(row + 1) * kvd].to_vec());
            }
        }
        if step == 0 {
            continue; // the prompts' attention is the other test's
        }
        let mut want = Vec::new();
        for (s, sq) in seqs.iter().enumerate() {
            let row = sq.row0;
            ref_attention(
                &c,
                &q[row * dim..(row + 1) * dim],
                &keys[s],
                &vals[s],
                sq.pos0,
                &mut want,
            );
        }
        let e = rel(&got, &want);
        assert!(
            e < tol,
            "decode of {} rows: relative error {e:.2e}",
            lens.len()
        );
    }
}

/// Sampling where the logits are, against the host reference of `kiln_model::sample` on the
/// same logits: greedy rows agree exactly; sampled rows agree on the token (the GPU's `exp` and
/// `log` may differ in the last bits, which moves a draw only at a boundary), always respect
/// top-k, and log-probabilities agree to 1e-3. On the CPU (two threads: rows that can be are
/// sampled in parts of the row, joined after) every token is the host's.
#[test]
fn sample_matches_the_host_reference() {
    let (d, gpu) = device();
    kiln_engine::with_backend!(d, b => sample_matches_the_host_reference_on(b, !gpu))
}

fn sample_matches_the_host_reference_on<B: Backend>(b: B, exact: bool) {
    use kiln_model::sample::{sample_rows, Adjust, RowSampling, Scratch};
    let mut rng = Rng(0x5A3D_1E55);
    // The last width has few distinct values: many equal logits at every boundary. Slices of
    // 262,144 / 16 logits are too large for shared memory and are read where they lie.
    let widths = [
        (7usize, 0),
        (1000, 0),
        (49_152, 0),
        (151_936, 0),
        (262_144, 0),
        (5000, 3),
    ];
    for (width, levels) in widths {
        let base = RowSampling {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            seed: 11,
            ..RowSampling::GREEDY
        };
        let kinds = [
            RowSampling::GREEDY,
            base,
            RowSampling {
                top_k: 0,
                top_p: 0.9,
                ..base
            },
            RowSampling {
                top_k: 0,
                top_p: 1.0,
                temperature: 1.3,
                ..base
            },
            RowSampling {
                min_p: 0.05,
                top_k: 0,
                ..base
            },
            RowSampling { top_k: 1, ..base },
            RowSampling {
                logprobs: Some(5),
                ..base
            },
            RowSampling {
                logprobs: Some(20),
                ..RowSampling::GREEDY
            },
            RowSampling {
                repetition_penalty: 1.3,
                adjust: (0, 3),
                ..base
            },
            // Constrained rows: mask 0 allows every third token and the last, mask 1 a
            // handful scattered over the row.
            RowSampling {
                mask: Some(0),
                ..base
            },
            RowSampling {
                mask: Some(1),
                logprobs: Some(3),
                ..RowSampling::GREEDY
            },
            RowSampling {
                mask: Some(1),
                adjust: (0, 3),
                top_k: 0,
                ..base
            },
        ];
        let words = kiln_model::sample::mask_words(width);
        let mut masks = vec![0u32; 2 * words];
        for t in (0..width).step_by(3).chain([width - 1]) {
            masks[t / 32] |= 1 << (t % 32);
        }
        for t in [1, width / 3, width / 2, width - 2] {
            masks[words + t / 32] |= 1 << (t % 32);
        }
        let mut rows = Vec::new();
        for c in 0..12u64 {
            for k in kinds {
                rows.push(RowSampling {
                    counter: c,
                    seed: 11 + c % 3,
                    ..k
                });
            }
        }
        let adjust = [
            Adjust {
                token: 0,
                repeated: true,
                add: 0.0,
            },
            Adjust {
                token: (width / 2) as u32,
                repeated: true,
                add: -0.5,
            },
            Adjust {
                token: (width - 1) as u32,
                repeated: false,
                add: 3.0,
            },
        ];
        // Logits like a model's: a few large values over a spread of small ones.
        let logits: Vec<f32> = (0..rows.len() * width)
            .map(|_| {
                let x = rng.f();
                if levels > 0 {
                    (x * levels as f32).floor()
                } else {
                    x * 4.0 + if x > 0.999 { 8.0 } else { 0.0 }
                }
            })
            .collect();
        let mut host = logits.clone();
        let mut want = Vec::new();
        sample_rows(
            &mut host,
            width,
            &rows,
            &adjust,
            &masks,
            &mut want,
            &mut Scratch::default(),
        );
        let mut dev = upload(&b, &logits);
        let mut got = Vec::new();
        b.sample(&mut dev, width, &rows, &adjust, &masks, &mut got);
        b.finish().unwrap();
        assert_eq!(got.len(), rows.len());
        let mut same = 0;
        for (i, (r, (g, w))) in rows.iter().zip(got.iter().zip(&want)).enumerate() {
            let adjusted = &host[i * width..(i + 1) * width];
            if r.is_greedy() {
                assert_eq!(g.token, w.token, "width {width}, row {i}: greedy");
            }
            same += (g.token == w.token) as usize;
            assert!((g.token as usize) < width);
            if let Some(m) = r.mask {
                let t = g.token as usize;
                assert!(
                    masks[m as usize * words + t / 32] >> (t % 32) & 1 == 1,
                    "width {width}, row {i}: token {t} is masked out"
                );
            }
            if r.top_k > 0 && (r.top_k as usize) < width {
                let mut v = adjusted.to_vec();
                v.sort_by(|a, b| b.total_cmp(a));
                let kth = v[r.top_k as usize - 1];
                assert!(
                    adjusted[g.token as usize] >= kth,
                    "width {width}, row {i}: outside top-k"
                );
            }
            if let Some(n) = r.logprobs {
                let n = (n as usize).min(width);
                assert_eq!(g.top().len(), n, "width {width}, row {i}");
                for (a, e) in g.top().iter().zip(w.top()) {
                    assert_eq!(a.0, e.0, "width {width}, row {i}: top log-probability ids");
                    assert!(
                        (a.1 - e.1).abs() < 1e-3,
                        "width {width}, row {i}: {} vs {}",
                        a.1,
                        e.1
                    );
                }
                if g.token == w.token {
                    assert!(
                        (g.logprob - w.logprob).abs() < 1e-3,
                        "width {width}, row {i}"
                    );
                }
            }
        }
        assert!(
            same * 100 >= rows.len() * 97 && (!exact || same == rows.len()),
            "width {width}: {same} of {} draws agree with the host",
            rows.len()
        );
    }
}

/// Random blocks of a quantized format, with sane f16 scales (at the given byte offsets of
/// each block).
fn quant_matrix(
    rng: &mut Rng,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    scales: &[usize],
) -> RawTensor {
    let (_, bb) = ty.block();
    let mut data: Vec<u8> = (0..rows * ty.bytes_for(cols))
        .map(|_| (rng.f() * 128.0 + 128.0) as u8)
        .collect();
    for blk in data.chunks_exact_mut(bb) {
        for &o in scales {
            let v = f16::from_f32(rng.f() * 0.05);
            blk[o..o + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    RawTensor {
        name: format!("{}-{rows}x{cols}", ty.name()),
        ty,
        rows,
        cols,
        data: TensorBytes::Owned(Arc::new(data)),
    }
}

/// Several products of one input at once give each product's own results bit for bit,
/// whatever the formats mixed (integer kernels, panels with rows after them, f16) and more
/// of them than one task takes.
#[test]
fn matmul_many_equals_separate_products() {
    let (d, _) = device();
    kiln_engine::with_backend!(d, b => matmul_many_equals_separate_products_on(b))
}

fn matmul_many_equals_separate_products_on<B: Backend>(b: B) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let c = ModelConfig {
        ffn_dim: 1024,
        ..cfg(2, 1, 16, 16, RopeStyle::Halves)
    };
    let cols = 576;
    let mats: Vec<_> = [
        quant_matrix(&mut rng, GgmlType::Q4_1, 48, cols, &[0, 2]),
        quant_matrix(&mut rng, GgmlType::Q8_0, 37, cols, &[0]),
        f16_matrix(&mut rng, 20, cols).0,
        quant_matrix(&mut rng, GgmlType::Q4_1, 7, cols, &[0, 2]),
        quant_matrix(&mut rng, GgmlType::Q4_0, 33, cols, &[0]),
        quant_matrix(&mut rng, GgmlType::Q8_0, 64, cols, &[0]),
    ]
    .into_iter()
    .map(|t| (t.rows, b.matrix(t).unwrap()))
    .collect();
    for n in [1usize, 3, 9] {
        let x = upload(&b, &rng.vec(n * cols));
        begin_rows(&b, &c, n);
        let mut outs: Vec<_> = mats.iter().map(|(r, _)| b.act(n * r).unwrap()).collect();
        let ws: Vec<_> = mats.iter().map(|(_, m)| m).collect();
        let mut refs: Vec<_> = outs.iter_mut().collect();
        b.matmul_many(&ws, &x, n, &mut refs);
        for (i, (rows, m)) in mats.iter().enumerate() {
            let mut alone = b.act(n * rows).unwrap();
            b.matmul(m, &x, n, &mut alone);
            let (got, want) = (read(&b, &outs[i], n * rows), read(&b, &alone, n * rows));
            assert!(got.iter().all(|v| v.is_finite()), "matrix {i}: not finite");
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "matrix {i}, {n} rows: together {got:?} alone {want:?}"
            );
        }
    }
}

/// The feed-forward block's gate and up products with `silu(gate) * up` (`matmul_swiglu`:
/// on the CPU one task of the pool, each thread's rows through silu after its products, where
/// the rows are a multiple of 32) give what the products followed by `swiglu` give, bit for
/// bit: 1 to 9 rows, panels only, an odd number of panels, rows after the last whole panel
/// (not a multiple of 32: the products, then `swiglu`), gate and up of one format or of two.
/// And the whole block (`feed_forward`, its output in place of its input: on the CPU each
/// thread also quantizes its rows of the results for the down product, which takes them as
/// they are) gives what `matmul_swiglu` followed by the down product gives, bit for bit.
#[test]
fn matmul_swiglu_equals_products_then_swiglu() {
    let (d, _) = device();
    kiln_engine::with_backend!(d, b => matmul_swiglu_equals_products_then_swiglu_on(b))
}

fn matmul_swiglu_equals_products_then_swiglu_on<B: Backend>(b: B) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // A pass's scratch is sized from its model's widths (a GPU's x in f16): the widest
    // product's rows and columns.
    let c = ModelConfig {
        ffn_dim: 1536,
        ..cfg(2, 1, 16, 16, RopeStyle::Halves)
    };
    // (gate, up, ffn rows, columns)
    for (tg, tu, ffn, cols) in [
        (GgmlType::Q4_1, GgmlType::Q4_1, 1536, 576),
        (GgmlType::Q4_1, GgmlType::Q4_1, 100, 96),
        (GgmlType::Q8_0, GgmlType::Q8_0, 80, 64),
        (GgmlType::Q8_0, GgmlType::Q8_0, 96, 64),
        (GgmlType::Q4_0, GgmlType::Q5_0, 224, 128),
        (GgmlType::Q4_K, GgmlType::Q6_K, 208, 512),
    ] {
        let scales = |t| match t {
            GgmlType::Q4_1 | GgmlType::Q4_K => &[0usize, 2][..],
            GgmlType::Q6_K => &[208],
            _ => &[0],
        };
        let wg = b
            .matrix(quant_matrix(&mut rng, tg, ffn, cols, scales(tg)))
            .unwrap();
        let wu = b
            .matrix(quant_matrix(&mut rng, tu, ffn, cols, scales(tu)))
            .unwrap();
        // The down product, of `ffn` columns, in the up matrix's format where its blocks fit.
        let wd = (ffn % 32 == 0).then(|| {
            let kquant = matches!(tu, GgmlType::Q4_K | GgmlType::Q6_K);
            let td = if kquant && ffn % 256 != 0 {
                GgmlType::Q8_0
            } else {
                tu
            };
            b.matrix(quant_matrix(&mut rng, td, cols, ffn, scales(td)))
                .unwrap()
        });
        for n in 1..=9 {
            let x = upload(&b, &rng.vec(n * cols));
            begin_rows(&b, &c, n);
            let (mut g1, mut u1) = (b.act(n * ffn).unwrap(), b.act(n * ffn).unwrap());
            b.matmul_many(&[&wg, &wu], &x, n, &mut [&mut g1, &mut u1]);
            b.swiglu(&mut g1, &u1, n * ffn);
            let (mut g2, mut u2) = (b.act(n * ffn).unwrap(), b.act(n * ffn).unwrap());
            b.matmul_swiglu(&wg, &wu, &x, n, ffn, &mut g2, &mut u2);
            let (want, got) = (read(&b, &g1, n * ffn), read(&b, &g2, n * ffn));
            for (i, (a, g)) in want.iter().zip(&got).enumerate() {
                assert!(
                    a.to_bits() == g.to_bits() && a.is_finite(),
                    "{tg:?}/{tu:?} {ffn}x{cols}, {n} rows: value {i}: {a} then {g}"
                );
            }
            if let Some(wd) = &wd {
                let mut o1 = b.act(n * cols).unwrap();
                b.matmul(wd, &g1, n, &mut o1);
                let (mut g3, mut u3) = (b.act(n * ffn).unwrap(), b.act(n * ffn).unwrap());
                let mut o3 = upload(&b, &read(&b, &x, n * cols));
                b.feed_forward(&wg, &wu, wd, &mut o3, n, ffn, &mut g3, &mut u3);
                let (want, got) = (read(&b, &o1, n * cols), read(&b, &o3, n * cols));
                for (i, (a, g)) in want.iter().zip(&got).enumerate() {
                    assert!(
                        a.to_bits() == g.to_bits() && a.is_finite(),
                        "{tg:?}/{tu:?} {ffn}x{cols} then down, {n} rows: value {i}: {a} then {g}"
                    );
                }
            }
        }
    }
}

/// Products of quantized matrices (4-bit and 8-bit blocks; on a GPU read in place with
/// `KILN_TEST_GPU_WEIGHTS=quantized`, else converted on upload) against float64 over the
/// blocks' decoded values, for 1 to 9 rows and row lengths of 1 to 65 blocks of 32.
#[test]
fn quantized_matmul_matches_the_reference() {
    let (d, gpu) = device();
    kiln_engine::with_backend!(d, b => quantized_matmul_matches_the_reference_on(b, gpu))
}

fn quantized_matmul_matches_the_reference_on<B: Backend>(b: B, gpu: bool) {
    // The CPU's products, and the GPU's of 1 to 8 rows with the weights read in place,
    // quantize x to 8 bits, per group of 32 as llama.cpp's do (the GPU's per group of 16), with
    // 4-bit offsets times the rounded group sums; the GPU's others use f16 weights.
    let in_place = std::env::var("KILN_TEST_GPU_WEIGHTS").is_ok_and(|s| s == "quantized");
    // Errors against the terms' root sum of squares (below): where x is rounded to 8 bits,
    // 3.7e-3 in the median on the CPU and 6.4e-3 at most over these sizes; a term left out,
    // an offset or a scale wrong moves it by a tenth or more. The f16 weights' and x's
    // roundings are near 3e-4 each.
    let tol = |n: usize| {
        if gpu && !(in_place && n <= 8) {
            1.5e-3
        } else {
            1.5e-2
        }
    };
    let mut rng = Rng(0x51_7cc1_b727_220a);
    let c = ModelConfig {
        ffn_dim: 2048,
        ..cfg(2, 1, 16, 16, RopeStyle::Halves)
    };
    for (ty, scales) in [
        (GgmlType::Q4_0, &[0usize][..]),
        (GgmlType::Q4_1, &[0, 2][..]),
        (GgmlType::Q8_0, &[0][..]),
        (GgmlType::Q4_K, &[0, 2][..]),
    ] {
        let sizes: &[(usize, usize)] = if ty == GgmlType::Q4_K {
            &[(9, 256), (33, 512), (130, 768), (17, 2048)]
        } else {
            &[
                (1, 32),
                (7, 64),
                (33, 96),
                (130, 352),
                (40, 896),
                (300, 576),
                // At least 2,048 columns: k_mvqr's at 6 to 8 rows too (Mvq::Sized).
                (20, 2080),
            ]
        };
        let mut largest = 0f64;
        for &(rows, cols) in sizes {
            let t = quant_matrix(&mut rng, ty, rows, cols, scales);
            let mut w = vec![0f32; rows * cols];
            kiln_formats::gguf::quant::dequantize(ty, t.data.as_slice(), &mut w).unwrap();
            let m = b.matrix(t).unwrap();
            for n in 1usize..=9 {
                let x = rng.vec(n * cols);
                let xa = upload(&b, &x);
                let mut out = b.act(n * rows).unwrap();
                begin_rows(&b, &c, n);
                b.matmul(&m, &xa, n, &mut out);
                let got = read(&b, &out, n * rows);
                let want = ref_matmul(&w, &x, n, rows, cols);
                assert!(got.iter().all(|v| v.is_finite()), "non-finite output");
                // Against the terms, not the outputs: x rounded to 8 bits is off by a part
                // of each term, and one output of 32 terms (1x32) can all but cancel (3.15e-2
                // of itself on an H100, read in place).
                let e = rel_to(&got, &want, &ref_term_norms(&w, &x, n, rows, cols));
                largest = largest.max(e);
                assert!(
                    e < tol(n),
                    "{} {rows}x{cols}, {n} rows: relative error {e:.2e}",
                    ty.name()
                );
            }
        }
        // Seen with --nocapture: the margin below the tolerance.
        eprintln!("{}: largest error {largest:.2e}", ty.name());
    }
}
