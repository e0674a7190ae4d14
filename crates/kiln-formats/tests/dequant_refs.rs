//! kiln's reference decoders against values computed by gguf-py (llama.cpp's Python
//! package), an independent implementation: see `data/make_dequant_refs.py`.
//!
//! The comparison is bitwise. Both sides compute each value with the same f32
//! operations in the same order (`d * q`, `d * q + m`, `d * sc * q - dmin * m` with f16
//! scales widened exactly to f32, and no fused multiply-add), so any difference, even
//! one ulp, means a different formula or a wrong bit. The one exception is NaN: its
//! payload is not a value (half's f16 widening sets the quiet bit, numpy's keeps the
//! payload as it is), so there both sides must merely be NaN.

use kiln_formats::gguf::quant::{dequantize, GgmlType};

const REFS: &str = include_str!("data/dequant_refs.txt");

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

struct Case {
    ty: GgmlType,
    label: String,
    n: usize,
    src: Vec<u8>,
    want: Vec<f32>,
}

fn cases() -> Vec<Case> {
    REFS.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 5, "fixture line: {}", &line[..40.min(line.len())]);
            let ty = GgmlType::ALL
                .into_iter()
                .find(|t| t.name() == f[0])
                .unwrap_or_else(|| panic!("unknown type {}", f[0]));
            let want: Vec<f32> = hex(f[4])
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let n: usize = f[2].parse().expect("element count");
            assert_eq!(want.len(), n);
            Case {
                ty,
                label: f[1].to_owned(),
                n,
                src: hex(f[3]),
                want,
            }
        })
        .collect()
}

#[test]
fn fixture_covers_every_supported_type() {
    let cases = cases();
    for ty in GgmlType::ALL.into_iter().filter(|t| t.is_supported()) {
        let n = cases.iter().filter(|c| c.ty == ty).count();
        assert!(n >= 2, "{} has {n} cases", ty.name());
    }
}

#[test]
fn dequantize_matches_gguf_py_bitwise() {
    let mut checked = 0;
    for c in cases() {
        let mut got = vec![f32::NAN; c.n];
        dequantize(c.ty, &c.src, &mut got)
            .unwrap_or_else(|e| panic!("{} {}: {e}", c.ty.name(), c.label));
        for (i, (g, w)) in got.iter().zip(&c.want).enumerate() {
            let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
            assert!(
                same,
                "{} {} element {i} (block {}): kiln {g:e} ({:#010x}), gguf-py {w:e} ({:#010x})",
                c.ty.name(),
                c.label,
                i / c.ty.block().0,
                g.to_bits(),
                w.to_bits()
            );
            checked += 1;
        }
    }
    assert!(checked > 4000, "only {checked} values checked");
}

/// One of the public per-block decoders.
type BlockDecoder = fn(&[u8], &mut [f32]);

#[test]
fn decoding_block_by_block_equals_decoding_the_row() {
    // The per-block public decoders agree with `dequantize` on every fixture block.
    use kiln_formats::gguf::quant::{
        dequant_q4_0, dequant_q4_1, dequant_q4_k, dequant_q5_k, dequant_q6_k, dequant_q8_0,
    };
    let mut blocks = 0;
    for c in cases() {
        let (elems, bytes) = c.ty.block();
        let one: Option<BlockDecoder> = match c.ty {
            GgmlType::Q8_0 => Some(dequant_q8_0),
            GgmlType::Q4_0 => Some(dequant_q4_0),
            GgmlType::Q4_1 => Some(dequant_q4_1),
            GgmlType::Q4_K => Some(dequant_q4_k),
            GgmlType::Q5_K => Some(dequant_q5_k),
            GgmlType::Q6_K => Some(dequant_q6_k),
            _ => None,
        };
        let Some(one) = one else { continue };
        for (b, w) in c.src.chunks_exact(bytes).zip(c.want.chunks_exact(elems)) {
            let mut o = vec![0f32; elems];
            one(b, &mut o);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&o), bits(w), "{} {}", c.ty.name(), c.label);
            blocks += 1;
        }
    }
    assert_eq!(blocks, 6 * 6, "six block formats, six blocks each");
}
