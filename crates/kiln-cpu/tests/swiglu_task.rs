//! The feed-forward block's gate and up products with `silu(gate) * up` in one task of the
//! pool (`Backend::matmul_swiglu` on the CPU) give what the products followed by
//! `Backend::swiglu` give, bit for bit: every instruction set, 1 to 9 tokens, panels and the
//! rows after the last whole panel, gate and up of one format or of two.

use std::sync::Arc;

use half::f16;
use kiln_cpu::{CpuBackend, Isa};
use kiln_formats::gguf::GgmlType;
use kiln_model::backend::TensorBytes;
use kiln_model::{Backend, RawTensor};

/// A random matrix of `ty` whose f16 scales are small and finite.
fn random_matrix(ty: GgmlType, rows: usize, cols: usize, seed: &mut u64) -> RawTensor {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let (_, bb) = ty.block();
    let mut data: Vec<u8> = (0..rows * ty.bytes_for(cols))
        .map(|_| next() as u8)
        .collect();
    let scales: &[usize] = match ty {
        GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q4_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => unreachable!("a format this test makes"),
    };
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

#[test]
fn one_task_gives_the_products_then_swiglu() {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut checked = 0;
    for isa in Isa::available() {
        let be = CpuBackend::new(2).with_isa(isa);
        // (gate, up, ffn rows, columns): panels only; a panel's rows short at the end
        // (scalar rows after the last whole panel); two formats.
        for (tg, tu, ffn, cols) in [
            (GgmlType::Q4_1, GgmlType::Q4_1, 1536, 576),
            (GgmlType::Q4_1, GgmlType::Q4_1, 100, 96),
            (GgmlType::Q8_0, GgmlType::Q8_0, 72, 64),
            (GgmlType::Q4_K, GgmlType::Q6_K, 200, 512),
        ] {
            let wg = be
                .matrix(random_matrix(tg, ffn, cols, &mut seed))
                .expect("gate");
            let wu = be
                .matrix(random_matrix(tu, ffn, cols, &mut seed))
                .expect("up");
            for n in 1..=9 {
                let xs: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 7919 + n) % 97) as f32 / 24.0 - 2.0)
                    .collect();
                let x = be.vector(&xs).expect("x");
                let (mut g1, mut u1) = (be.act(n * ffn).unwrap(), be.act(n * ffn).unwrap());
                be.matmul_many(&[&wg, &wu], &x, n, &mut [&mut g1, &mut u1]);
                be.swiglu(&mut g1, &u1, n * ffn);
                let (mut g2, mut u2) = (be.act(n * ffn).unwrap(), be.act(n * ffn).unwrap());
                be.matmul_swiglu(&wg, &wu, &x, n, ffn, &mut g2, &mut u2);
                for (i, (a, b)) in g1.iter().zip(&g2).enumerate().take(n * ffn) {
                    assert!(
                        a.to_bits() == b.to_bits() && a.is_finite(),
                        "{isa:?} {tg:?}/{tu:?} {ffn}x{cols}, {n} tokens: value {i}: {a} then {b}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 36, "{checked} cases");
}
