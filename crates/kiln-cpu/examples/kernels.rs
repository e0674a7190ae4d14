//! Speed of the CPU backend's matrix products per weight format, in GB/s of weights read
//! (one token: decode) and GMAC/s (many tokens: prefill), on a matrix that fits in cache
//! and on one that does not.
//!
//! `cargo run --release -p kiln-cpu --example kernels -- [threads] [batch|sample|attention|step|quantize|norm]`
//! (`ISA=scalar|avx2|avx512` in the environment picks a lesser instruction set): with a second
//! argument, products at 1 to 8 tokens, the host sampler on two rows (one peaked, one flat),
//! decode attention, the matrix products of one decode step of the default model at 1 to 8
//! tokens, the activations' quantization, or RMSNorm of 1 to 8 rows.

use std::sync::Arc;
use std::time::Instant;

use half::f16;
use kiln_cpu::CpuBackend;
use kiln_formats::gguf::GgmlType;
use kiln_model::{
    Arch, Backend, ModelConfig, PagedSeq, RawTensor, RopeStyle, TensorBytes, KV_BLOCK,
};

/// Random blocks with f16 scales in a sane range (offsets of the f16 fields per format).
fn random_matrix(ty: GgmlType, rows: usize, cols: usize) -> RawTensor {
    let (_, bb) = ty.block();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut data: Vec<u8> = (0..rows * ty.bytes_for(cols))
        .map(|_| next() as u8)
        .collect();
    let scales: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    if ty == GgmlType::F16 {
        for c in data.chunks_exact_mut(2) {
            let v = f16::from_f32((next() % 2000) as f32 / 1000.0 - 1.0);
            c.copy_from_slice(&v.to_le_bytes());
        }
    }
    for blk in data.chunks_exact_mut(bb) {
        for &o in scales {
            let v = f16::from_f32((next() % 1000) as f32 / 20000.0);
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

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let isa = match std::env::var("ISA") {
        Err(_) => kiln_cpu::Isa::detect(),
        Ok(name) => kiln_cpu::Isa::named(&name).unwrap_or_else(|e| {
            eprintln!("ISA: {e}");
            std::process::exit(2);
        }),
    };
    let be = CpuBackend::new(threads).with_isa(isa);
    println!("{}", be.describe());
    match std::env::args().nth(2).as_deref() {
        Some("batch") => return batch_sweep(&be),
        Some("sample") => return sample_sweep(),
        Some("attention") => return attention_sweep(&be),
        Some("step") => return step_products(&be),
        Some("quantize") => return quantize_sweep(isa),
        Some("norm") => return norm_sweep(&be),
        Some("pool") => return pool_sweep(&be),
        _ => {}
    }
    println!(
        "{:<6} {:>14} {:>14} {:>16}",
        "format", "n=1 cached", "n=1 DRAM", "n=64 cached"
    );
    let cols = 1536;
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::F16,
    ] {
        let mut cells = Vec::new();
        for (rows, n, reps) in [(256, 1, 2000), (65536, 1, 10), (256, 64, 100)] {
            let t = random_matrix(ty, rows, cols);
            let bytes = t.data.as_slice().len();
            let m = be.matrix(t).expect("matrix");
            let s = time_product(&be, &m, rows, cols, n, reps);
            cells.push(if n == 1 {
                format!("{:>9.1} GB/s", bytes as f64 / s / 1e9)
            } else {
                format!("{:>9.1} GMAC/s", (rows * cols * n) as f64 / s / 1e9)
            });
        }
        println!(
            "{:<6} {:>14} {:>14} {:>16}",
            ty.name(),
            cells[0],
            cells[1],
            cells[2]
        );
    }
}

/// Seconds one product of `m` (`rows` x `cols`) with `n` tokens takes, the mean of `reps`
/// after one untimed product.
fn time_product(
    be: &CpuBackend,
    m: &<CpuBackend as Backend>::Mat,
    rows: usize,
    cols: usize,
    n: usize,
    reps: usize,
) -> f64 {
    let x = be
        .vector(
            &(0..n * cols)
                .map(|i| (i % 7) as f32 - 3.0)
                .collect::<Vec<_>>(),
        )
        .expect("x");
    let mut out = be.act(n * rows).expect("out");
    be.matmul(m, &x, n, &mut out);
    let t0 = Instant::now();
    for _ in 0..reps {
        be.matmul(m, &x, n, &mut out);
    }
    t0.elapsed().as_secs_f64() / reps as f64
}

/// The host sampler on one row of SmolLM2's vocabulary (49,152 logits, spread like a model's:
/// most near zero, a few far above): microseconds a row, greedy and with refinement's
/// filters (temperature 0.7, top-k 40, top-p 0.95) with and without the chosen token's
/// log-probability (refinement asks for it).
fn sample_sweep() {
    use kiln_model::sample::{sample_row, RowSampling, Scratch};
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let peaked: Vec<f32> = (0..49_152)
        .map(|i| {
            let g: f32 = (0..4).map(|_| uniform()).sum::<f32>() - 2.0;
            // A few dozen tokens stand well above the rest, as after a real prompt.
            if i % 1500 == 7 {
                14.0 + 4.0 * g
            } else {
                3.0 * g
            }
        })
        .collect();
    // Flat: about a fifth of the vocabulary within 17.5 T (T 0.7) of the largest logit, as a
    // real row of the default model had (10,606 tokens; docs/PERF.md, forty-first session).
    let flat: Vec<f32> = (0..49_152).map(|_| 10.0 - 56.7 * uniform()).collect();
    let mut s = Scratch::default();
    for (rname, row) in [("peaked", &peaked), ("flat", &flat)] {
        for (name, p) in [
            ("greedy", RowSampling::GREEDY),
            (
                "T 0.7 top-k 40 top-p 0.95",
                RowSampling {
                    temperature: 0.7,
                    top_k: 40,
                    top_p: 0.95,
                    seed: 3,
                    ..RowSampling::GREEDY
                },
            ),
            (
                "T 0.7 top-k 40 top-p 0.95 logprob",
                RowSampling {
                    temperature: 0.7,
                    top_k: 40,
                    top_p: 0.95,
                    seed: 3,
                    logprobs: Some(0),
                    ..RowSampling::GREEDY
                },
            ),
            (
                "T 0.7 top-p 0.9",
                RowSampling {
                    temperature: 0.7,
                    top_p: 0.9,
                    seed: 3,
                    ..RowSampling::GREEDY
                },
            ),
            (
                "T 0.7, 5 top logprobs",
                RowSampling {
                    temperature: 0.7,
                    seed: 3,
                    logprobs: Some(5),
                    ..RowSampling::GREEDY
                },
            ),
            (
                "T 0.7",
                RowSampling {
                    temperature: 0.7,
                    seed: 3,
                    ..RowSampling::GREEDY
                },
            ),
        ] {
            let reps = 2000;
            let best = (0..5)
                .map(|_| {
                    let mut r = row.clone();
                    let t = Instant::now();
                    for c in 0..reps {
                        let p = RowSampling { counter: c, ..p };
                        std::hint::black_box(sample_row(&mut r, &p, None, &[], &mut s));
                    }
                    t.elapsed().as_secs_f64() / reps as f64 * 1e6
                })
                .fold(f64::INFINITY, f64::min);
            println!("sample_row {rname:<6} {name:<36} {best:>7.1} us a row");
        }
    }
}

/// RMSNorm of 1 to 8 rows of the default model's width (the rows and weights in the caches):
/// microseconds a call, the best of 20 loops of 2,000.
/// The pool's cost a task: tasks whose parts do nothing, and tasks whose parts each work
/// about 2 and 10 us (a loop of dependent multiply-adds), best of 10 loops of 20,000 tasks,
/// against the same work run alone on this thread as many times (best of 10 loops).
fn pool_sweep(be: &CpuBackend) {
    let spin = |n: u32| {
        let mut x = 1.0f64;
        for _ in 0..n {
            x = std::hint::black_box(x * 1.000_000_1 + 1e-9);
        }
        x
    };
    // How many multiply-adds take a nanosecond on this thread, roughly.
    let t0 = Instant::now();
    spin(10_000_000);
    let per_ns = 10_000_000.0 / (t0.elapsed().as_nanos() as f64);
    let tasks = 20_000;
    let best = |run: &dyn Fn()| {
        (0..10)
            .map(|_| {
                let t0 = Instant::now();
                for _ in 0..tasks {
                    run();
                }
                t0.elapsed().as_secs_f64() / f64::from(tasks) * 1e6
            })
            .fold(f64::INFINITY, f64::min)
    };
    for work in [0u32, 2_000, 10_000] {
        let n = (f64::from(work) * per_ns) as u32;
        let alone = best(&|| {
            std::hint::black_box(spin(n));
        });
        let task = best(&|| {
            be.host_run(&|_, _| {
                std::hint::black_box(spin(n));
            })
        });
        println!(
            "parts of {alone:5.2} us: {task:6.2} us a task ({:5.2} us more than a part)",
            task - alone
        );
    }
}

fn norm_sweep(be: &CpuBackend) {
    let dim = 576;
    let w: Vec<f32> = (0..dim).map(|i| 1.0 + (i % 13) as f32 * 0.01).collect();
    for n in [1usize, 2, 4, 8] {
        let x: Vec<f32> = (0..n * dim)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0)
            .collect();
        let mut out = vec![0f32; n * dim];
        let best = (0..20)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..2000 {
                    be.rms_norm(&x, &w, 1e-5, n, dim, &mut out);
                    std::hint::black_box(&out);
                }
                t.elapsed().as_secs_f64() / 2000.0 * 1e6
            })
            .fold(f64::INFINITY, f64::min);
        println!("rms_norm {n} x {dim}: {best:.3} us");
        // The residual add of the same rows (serial work between a step's tasks).
        let mut acc = x.clone();
        let best = (0..20)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..2000 {
                    be.add(&mut acc, &out, n * dim);
                    std::hint::black_box(&acc);
                }
                t.elapsed().as_secs_f64() / 2000.0 * 1e6
            })
            .fold(f64::INFINITY, f64::min);
        println!("add {n} x {dim}: {best:.3} us");
    }
}

/// Decode-sized products (SmolLM2-135M's shapes) at 1 to 8 tokens: microseconds a product
/// and its cost against one token, the figure batched decoding (refinement, serving) rests on.
fn batch_sweep(be: &CpuBackend) {
    // FORMATS=q5_0,q4_0 (ggml's type names) for others than Q4_1 and Q8_0.
    let formats: Vec<GgmlType> = match std::env::var("FORMATS") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                GgmlType::ALL
                    .into_iter()
                    .find(|t| t.name().eq_ignore_ascii_case(n))
                    .unwrap_or_else(|| {
                        eprintln!("FORMATS: unknown format {n}");
                        std::process::exit(2)
                    })
            })
            .collect(),
        Err(_) => vec![GgmlType::Q4_1, GgmlType::Q8_0],
    };
    for ty in formats {
        let shapes: &[(usize, usize)] = if ty.block().0 == 256 {
            &[(1536, 768), (768, 1536), (49152, 768), (196608, 768)]
        } else {
            &[(1536, 576), (576, 1536), (49152, 576), (196608, 576)]
        };
        for &(rows, cols) in shapes {
            let t = random_matrix(ty, rows, cols);
            let m = be.matrix(t).expect("matrix");
            let mut line = format!("{:<5} {rows:>5}x{cols:<5}", ty.name());
            let mut one = 0.0;
            for n in [1usize, 2, 3, 4, 5, 6, 8] {
                let reps = (400_000_000 / (rows * cols * n)).max(3);
                // The best of 5 rounds: this machine's neighbours come and go.
                let us = (0..5)
                    .map(|_| time_product(be, &m, rows, cols, n, reps) * 1e6)
                    .fold(f64::INFINITY, f64::min);
                if n == 1 {
                    one = us;
                }
                line += &format!("  n={n} {us:>7.1}us {:>4.2}x", us / one);
            }
            println!("{line}");
        }
    }
}

/// The matrix products of one decode step of the default model (SmolLM2-135M-Instruct Q4_1:
/// 30 layers of q, k, v, o, gate, up and down in Q4_1, the output head in Q8_0), as the decoder
/// runs them (q, k, v in one `matmul_many`, gate and up in another, o, down and the head
/// alone), at 1, 2, 4 and 8 tokens: milliseconds a step (the best of 5 after one untimed),
/// tokens a second and products a second. What a step of n sequences costs before its
/// attention, norms, sampling and the waits between them.
fn step_products(be: &CpuBackend) {
    let q4 = |rows, cols| {
        be.matrix(random_matrix(GgmlType::Q4_1, rows, cols))
            .expect("matrix")
    };
    // Per layer: [q, k, v], o, [gate, up], down.
    let layers: Vec<_> = (0..30)
        .map(|_| {
            (
                [q4(576, 576), q4(192, 576), q4(192, 576)],
                q4(576, 576),
                [q4(1536, 576), q4(1536, 576)],
                q4(576, 1536),
            )
        })
        .collect();
    let head = be
        .matrix(random_matrix(GgmlType::Q8_0, 49152, 576))
        .expect("matrix");
    let per_layer = 576 * 576 * 2 + 192 * 576 * 2 + 1536 * 576 * 3;
    let weights = 30 * per_layer + 49152 * 576;
    for n in [1usize, 2, 4, 8] {
        let x = |cols: usize| {
            be.vector(
                &(0..n * cols)
                    .map(|i| (i % 7) as f32 - 3.0)
                    .collect::<Vec<_>>(),
            )
            .expect("x")
        };
        let (x576, x1536) = (x(576), x(1536));
        let mut outs: Vec<_> = [576, 192, 192, 576, 1536, 1536, 576, 49152]
            .iter()
            .map(|&rows| be.act(n * rows).expect("out"))
            .collect();
        let best = (0..6)
            .map(|_| {
                let t0 = Instant::now();
                for (qkv, o, gate_up, down) in &layers {
                    let [oq, ok, ov, oo, og, ou, od, _] = &mut outs[..] else {
                        unreachable!("eight outputs")
                    };
                    be.matmul_many(&[&qkv[0], &qkv[1], &qkv[2]], &x576, n, &mut [oq, ok, ov]);
                    be.matmul(o, &x576, n, oo);
                    be.matmul_many(&[&gate_up[0], &gate_up[1]], &x576, n, &mut [og, ou]);
                    be.matmul(down, &x1536, n, od);
                }
                be.matmul(&head, &x576, n, &mut outs[7]);
                t0.elapsed().as_secs_f64()
            })
            .skip(1)
            .fold(f64::INFINITY, f64::min);
        println!(
            "{n} tokens: {:7.3} ms a step, {:7.1} tokens/s, {:6.1} G products/s",
            best * 1e3,
            n as f64 / best,
            (weights * n) as f64 / best / 1e9
        );
    }
}

/// The activations' quantization (`ISA`, else the best of this CPU) of 1 and 8 rows of 576
/// and 1536 values (the default model's product inputs): ns a 32-value block, the best of 5
/// rounds of 2,000 calls, the whole input at once and in slices of 15 blocks (which AVX-512
/// quantizes one block at a time, as it did for every block before it took 16 together).
fn quantize_sweep(isa: kiln_cpu::Isa) {
    for cols in [576usize, 1536] {
        for n in [1usize, 8] {
            let nb = n * cols / 32;
            let x: Vec<f32> = (0..nb * 32)
                .map(|i| ((i * 37) % 101) as f32 * 0.01 - 0.5)
                .collect();
            let (mut q, mut d, mut s) = (vec![0i8; nb * 32], vec![0f32; nb], vec![0f32; nb]);
            let mut time = |slice: usize| {
                (0..5)
                    .map(|_| {
                        let t = Instant::now();
                        for _ in 0..2000 {
                            for b0 in (0..nb).step_by(slice) {
                                let b1 = (b0 + slice).min(nb);
                                kiln_cpu::quantize_activations(
                                    isa,
                                    &x[b0 * 32..b1 * 32],
                                    &mut q[b0 * 32..b1 * 32],
                                    &mut d[b0..b1],
                                    &mut s[b0..b1],
                                );
                            }
                        }
                        t.elapsed().as_secs_f64() / 2000.0 / nb as f64 * 1e9
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            let (whole, by15) = (time(nb), time(15));
            println!(
                "{n} x {cols}: {whole:5.2} ns a block whole, {by15:5.2} in slices of 15 ({:.2} us a call whole)",
                whole * nb as f64 / 1e3
            );
        }
    }
}

/// Decode attention of SmolLM2-135M's shape (9 heads, 3 KV heads of 64, 30 layers) for 1, 5 and 8
/// sequences of 80 positions (`LEN`): per layer with the pool in cache ("hot"), and over all layers
/// with a 2.9 MB Q4_1 product run between layers, as a step's weights pass ("cold"); in µs a
/// layer and ns per (position, head).
fn attention_sweep(be: &CpuBackend) {
    let c = ModelConfig {
        arch: Arch::Llama,
        n_layers: 30,
        dim: 576,
        ffn_dim: 1536,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        rope_dim: 64,
        rope_base: 10000.0,
        rope_style: RopeStyle::Halves,
        rms_eps: 1e-5,
        vocab_size: 49152,
        context_length: 2048,
        qkv_bias: false,
    };
    // `LEN` in the environment: the positions each sequence attends to (80 by default).
    let len: usize = match std::env::var("LEN") {
        Err(_) => 80,
        Ok(v) => match v.parse() {
            Ok(n) if n >= 1 => n,
            _ => {
                eprintln!("LEN: {v:?} is not a number of positions (1 or more)");
                std::process::exit(2);
            }
        },
    };
    let per_seq = len.div_ceil(KV_BLOCK);
    // A step's weights, one Q4_1 matrix a layer (2.9 MB each), run through the pool as the
    // model does so that its threads stay as busy as in a step.
    let weights: Vec<_> = (0..c.n_layers)
        .map(|_| {
            be.matrix(random_matrix(GgmlType::Q4_1, 8192, 576))
                .expect("matrix")
        })
        .collect();
    for n in [1usize, 5, 8] {
        let mut pool = be.kv_pool(&c, n * per_seq, KV_BLOCK).expect("pool");
        let tables: Vec<Vec<u32>> = (0..n)
            .map(|s| {
                (0..per_seq as u32)
                    .map(|b| b + (s * per_seq) as u32)
                    .collect()
            })
            .collect();
        let q = be
            .vector(
                &(0..n * 576)
                    .map(|i| ((i % 13) as f32 - 6.0) * 0.1)
                    .collect::<Vec<_>>(),
            )
            .expect("q");
        let kv = be
            .vector(
                &(0..n * 192)
                    .map(|i| ((i % 11) as f32 - 5.0) * 0.1)
                    .collect::<Vec<_>>(),
            )
            .expect("kv");
        let mut out = be.act(n * 576).expect("out");
        // Each sequence decoding its token at position `p`.
        let at = |p: usize| -> Vec<PagedSeq<'_>> {
            tables
                .iter()
                .enumerate()
                .map(|(i, t)| PagedSeq {
                    row0: i,
                    n: 1,
                    pos0: p,
                    blocks: t,
                })
                .collect()
        };
        // Fill every position of every layer.
        for layer in 0..c.n_layers {
            for p in 0..len {
                be.attention(&c, &mut pool, layer, &q, &kv, &kv, &at(p), &mut out);
            }
        }
        let seqs = at(len - 1);
        let pairs = (n * len * c.n_heads) as f64;
        // The best of 5 rounds of 80: this machine's neighbours come and go.
        let reps = 80;
        let hot = (0..5)
            .map(|_| {
                let t0 = Instant::now();
                for r in 0..reps {
                    be.attention(&c, &mut pool, r % 2, &q, &kv, &kv, &seqs, &mut out);
                }
                t0.elapsed().as_secs_f64() / reps as f64
            })
            .fold(f64::INFINITY, f64::min);
        let mut wout = be.act(n * 8192).expect("out");
        // The best of 5 passes over the layers.
        let cold = (0..5)
            .map(|_| {
                let mut t = 0.0;
                for (layer, w) in weights.iter().enumerate() {
                    be.matmul(w, &q, n, &mut wout);
                    let t0 = Instant::now();
                    be.attention(&c, &mut pool, layer, &q, &kv, &kv, &seqs, &mut out);
                    t += t0.elapsed().as_secs_f64();
                }
                t / c.n_layers as f64
            })
            .fold(f64::INFINITY, f64::min);
        println!(
            "{n} seq x {len}: hot {:6.1} us/layer {:5.1} ns/pair, cold {:6.1} us/layer {:5.1} ns/pair",
            hot * 1e6,
            hot * 1e9 / pairs,
            cold * 1e6,
            cold * 1e9 / pairs
        );
    }
}
