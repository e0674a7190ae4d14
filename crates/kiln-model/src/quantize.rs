//! Quantizing float weights at load time into ggml block formats (`--quantize q8_0|q4_k`).
//!
//! The encoders follow llama.cpp's reference quantizers (`quantize_row_q8_0_ref`,
//! `quantize_row_q4_K_ref` with `make_qkx2_quants`), so a matrix quantized here matches one
//! that llama.cpp's `llama-quantize` would write; the decoders in [`kiln_formats::gguf::quant`] are the
//! ground truth the tests round-trip through.

use std::sync::Arc;

use half::f16;
use kiln_formats::gguf::quant::{Q4_K_BYTES, Q8_0_BYTES, QK_K};
use kiln_formats::gguf::GgmlType;

use crate::backend::{RawTensor, TensorBytes};
use crate::{ModelError, Weights};

/// The formats `--quantize` can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    /// 8-bit, blocks of 32 with an f16 scale (8.5 bits per weight).
    Q8_0,
    /// 4-bit k-quant, super-blocks of 256 (4.5 bits per weight).
    Q4K,
}

impl QuantType {
    /// Parses a command-line name (`q8_0`, `q4_k`).
    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" => Some(Self::Q8_0),
            "q4_k" | "q4_k_m" => Some(Self::Q4K),
            _ => None,
        }
    }

    /// The ggml type written.
    pub fn ggml(self) -> GgmlType {
        match self {
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4K => GgmlType::Q4_K,
        }
    }
}

/// What [`quantize_weights`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuantReport {
    /// Matrices written in the format asked for.
    pub quantized: usize,
    /// Matrices written as Q8_0 instead because their rows do not fill Q4_K's 256-value blocks.
    pub fallback_q8_0: usize,
    /// Matrices left as they were (already quantized, or rows not a multiple of 32).
    pub kept: usize,
    /// Weight bytes before.
    pub bytes_before: usize,
    /// Weight bytes after.
    pub bytes_after: usize,
}

/// Encodes `x` (a multiple of 32 values) as Q8_0 blocks.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * Q8_0_BYTES);
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(b.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    out
}

/// Encodes `x` (a multiple of 32 values) as Q4_0 blocks: `x = d * (q - 8)`, with `d` chosen
/// so that the value of largest magnitude lands exactly on level 0 (-8 steps), as llama.cpp's
/// reference encoder does.
pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * kiln_formats::gguf::quant::Q4_0_BYTES);
    for b in x.chunks_exact(32) {
        // The value of largest magnitude, with its sign.
        let max = b
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        let level = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
        for j in 0..16 {
            out.push(level(b[j]) | (level(b[j + 16]) << 4));
        }
    }
    out
}

/// Encodes `x` (a multiple of 32 values) as Q4_1 blocks: `x = d * q + m`, `m` the block's
/// minimum and `d` a 15th of its range.
pub fn quantize_q4_1(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * kiln_formats::gguf::quant::Q4_1_BYTES);
    for b in x.chunks_exact(32) {
        let (lo, hi) = b
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let d = (hi - lo) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&f16::from_f32(lo).to_le_bytes());
        let level = |v: f32| (((v - lo) * id + 0.5) as i32).clamp(0, 15) as u8;
        for j in 0..16 {
            out.push(level(b[j]) | (level(b[j + 16]) << 4));
        }
    }
    out
}

fn nearest_int(v: f32) -> i32 {
    v.round() as i32
}

/// llama.cpp's `make_qkx2_quants`: a scale and minimum for `x` on levels `0..=nmax`, refined by
/// a weighted least-squares search. Returns (scale, -min) and fills `l` with the levels.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * diff * diff;
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let w = weights[i];
            let q = q as f32;
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * diff * diff;
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Encodes `x` (a multiple of 256 values) as Q4_K super-blocks.
pub fn quantize_q4_k(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK_K * Q4_K_BYTES);
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    for xb in x.chunks_exact(QK_K) {
        let mut scales = [0f32; 8];
        let mut mins = [0f32; 8];
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..8 {
            let xs = &xb[32 * j..32 * j + 32];
            let av_x = (xs.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = av_x + v.abs();
            }
            let (s, m) = make_qkx2_quants(
                15,
                xs,
                &weights,
                &mut l[32 * j..32 * j + 32],
                &mut laux,
                -1.0,
                0.1,
                20,
            );
            scales[j] = s;
            mins[j] = m;
            max_scale = max_scale.max(s);
            max_min = max_min.max(m);
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut sc = [0u8; 12];
        for j in 0..8 {
            let ls = nearest_int(inv_scale * scales[j]).clamp(0, 63) as u8;
            let lm = nearest_int(inv_min * mins[j]).clamp(0, 63) as u8;
            if j < 4 {
                sc[j] = ls;
                sc[j + 4] = lm;
            } else {
                sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                sc[j - 4] |= (ls >> 4) << 6;
                sc[j] |= (lm >> 4) << 6;
            }
        }
        let d = f16::from_f32(max_scale / 63.0);
        let dmin = f16::from_f32(max_min / 63.0);
        for j in 0..8 {
            let (s, m) = kiln_formats::gguf::quant::k_scale_min(j, &sc);
            let dj = d.to_f32() * s as f32;
            if dj == 0.0 {
                continue;
            }
            let dm = dmin.to_f32() * m as f32;
            for i in 0..32 {
                l[32 * j + i] = nearest_int((xb[32 * j + i] + dm) / dj).clamp(0, 15) as u8;
            }
        }
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&dmin.to_le_bytes());
        out.extend_from_slice(&sc);
        for j in (0..QK_K).step_by(64) {
            out.extend((0..32).map(|i| l[j + i] | (l[j + i + 32] << 4)));
        }
    }
    out
}

/// `encode(x)` for a block format of `block` values a block, worked out on `threads` threads:
/// each takes a run of whole blocks and the runs' bytes are joined in order. Blocks are encoded
/// independently, so the bytes are those of one `encode(x)`.
fn encode_on(x: &[f32], block: usize, encode: Encode, threads: usize) -> Vec<u8> {
    let blocks = x.len() / block;
    let threads = threads.min(blocks).max(1);
    if threads == 1 {
        return encode(x);
    }
    let run = blocks.div_ceil(threads) * block;
    std::thread::scope(|s| {
        let parts: Vec<_> = x.chunks(run).map(|c| s.spawn(move || encode(c))).collect();
        let mut out = Vec::new();
        for p in parts {
            match p.join() {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(e) => std::panic::resume_unwind(e),
            }
        }
        out
    })
}

/// [`encode_on`] over the machine's cores, each thread taking at least 64 blocks (a small
/// tensor is not worth a thread).
fn encode_par(x: &[f32], block: usize, encode: Encode) -> Vec<u8> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    encode_on(x, block, encode, cores.min(x.len() / block / 64))
}

/// An encoder of f32 values into a block format's bytes.
type Encode = fn(&[f32]) -> Vec<u8>;

/// The values a block of `ty` holds and its encoder; an error naming the type for the types
/// this module cannot write.
fn encoder(ty: GgmlType) -> Result<(usize, Encode), ModelError> {
    Ok(match ty {
        GgmlType::F16 => (1, encode_f16),
        GgmlType::Q8_0 => (32, quantize_q8_0),
        GgmlType::Q4_0 => (32, quantize_q4_0),
        GgmlType::Q4_1 => (32, quantize_q4_1),
        GgmlType::Q4_K => (QK_K, quantize_q4_k),
        other => {
            return Err(ModelError::Unsupported(format!(
                "quantizing to {} is not implemented",
                other.name()
            )))
        }
    })
}

/// Encodes `x` as little-endian f16 values.
fn encode_f16(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect()
}

fn quantize_matrix(t: &RawTensor, ty: GgmlType) -> Result<RawTensor, ModelError> {
    let (_, encode) = encoder(ty)?;
    // Whole tensors are spread over the cores by the caller.
    let data = encode(&t.to_f32()?);
    Ok(RawTensor {
        name: t.name.clone(),
        ty,
        rows: t.rows,
        cols: t.cols,
        data: TensorBytes::Owned(Arc::new(data)),
    })
}

/// Quantizes every float weight matrix (F32, F16, BF16) to `q`, spread over the machine's
/// cores. Matrices whose rows do not fill Q4_K's 256-value super-blocks get Q8_0, as llama.cpp
/// falls back to a 32-block type; norms and biases stay f32.
pub fn quantize_weights(w: &mut Weights, q: QuantType) -> Result<QuantReport, ModelError> {
    let mut r = QuantReport {
        bytes_before: w.bytes(),
        ..Default::default()
    };
    let mut jobs: Vec<(&mut RawTensor, GgmlType)> = Vec::new();
    for t in w.matrices_mut() {
        let float = matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        let target = match q.ggml() {
            GgmlType::Q4_K if t.cols % QK_K == 0 => GgmlType::Q4_K,
            _ if t.cols % 32 == 0 => GgmlType::Q8_0,
            _ => {
                r.kept += 1;
                continue;
            }
        };
        if !float {
            r.kept += 1;
        } else {
            if target == q.ggml() {
                r.quantized += 1;
            } else {
                r.fallback_q8_0 += 1;
            }
            jobs.push((t, target));
        }
    }
    // Largest first, dealt round-robin: the threads finish at about the same time.
    jobs.sort_by_key(|(t, _)| std::cmp::Reverse(t.rows * t.cols));
    let n_threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len().max(1));
    let mut lanes: Vec<Vec<(&mut RawTensor, GgmlType)>> =
        (0..n_threads).map(|_| Vec::new()).collect();
    for (i, j) in jobs.into_iter().enumerate() {
        lanes[i % n_threads].push(j);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .into_iter()
            .map(|lane| {
                s.spawn(move || -> Result<(), ModelError> {
                    for (t, ty) in lane {
                        *t = quantize_matrix(t, ty)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| ModelError::Unsupported("a quantizing thread panicked".into()))??;
        }
        Ok::<(), ModelError>(())
    })?;
    r.bytes_after = w.bytes();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_formats::gguf::quant::dequantize;

    /// A deterministic pseudo-random signal with outliers, like real weight rows.
    fn signal(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let u = (s as f32 / u32::MAX as f32) - 0.5;
                if i % 97 == 0 {
                    u * 8.0
                } else {
                    u * 0.2
                }
            })
            .collect()
    }

    fn rmse(a: &[f32], b: &[f32]) -> f32 {
        (a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>() / a.len() as f32).sqrt()
    }

    #[test]
    fn q8_0_round_trip_is_within_half_a_step() {
        let x = signal(32 * 64, 1);
        let q = quantize_q8_0(&x);
        assert_eq!(q.len(), 64 * Q8_0_BYTES);
        let mut y = vec![0f32; x.len()];
        dequantize(GgmlType::Q8_0, &q, &mut y).unwrap();
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = amax / 127.0;
            for (a, b) in xb.iter().zip(yb) {
                // Half a step, plus the f16 rounding of the scale over up to 127 steps.
                assert!((a - b).abs() <= 0.5 * step + 127.0 * step * 1e-3 + 1e-7);
            }
        }
    }

    #[test]
    fn q4_k_round_trip_error_is_small() {
        let x = signal(QK_K * 16, 7);
        let q = quantize_q4_k(&x);
        assert_eq!(q.len(), 16 * Q4_K_BYTES);
        let mut y = vec![0f32; x.len()];
        dequantize(GgmlType::Q4_K, &q, &mut y).unwrap();
        let e = rmse(&x, &y);
        let s = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        // 4.5 bits per weight: llama.cpp's reference lands near 10% relative RMS error on
        // heavy-tailed data like this; a wrong layout is far worse.
        assert!(e / s < 0.15, "relative rmse {}", e / s);
        eprintln!("q4_k relative rmse with outliers: {}", e / s);
        // Without outliers the 4-bit grid fits each sub-block well.
        let x: Vec<f32> = signal(QK_K * 16, 3)
            .iter()
            .map(|v| v.clamp(-0.1, 0.1))
            .collect();
        let mut y = vec![0f32; x.len()];
        dequantize(GgmlType::Q4_K, &quantize_q4_k(&x), &mut y).unwrap();
        let s = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        assert!(
            rmse(&x, &y) / s < 0.12,
            "relative rmse {}",
            rmse(&x, &y) / s
        );
    }

    #[test]
    fn constant_and_zero_blocks() {
        for v in [0.0f32, 1.5, -2.0] {
            let x = vec![v; QK_K];
            let mut y = vec![0f32; QK_K];
            dequantize(GgmlType::Q4_K, &quantize_q4_k(&x), &mut y).unwrap();
            assert!(
                y.iter().all(|&b| (b - v).abs() < 0.02),
                "q4_k {v}: {:?}",
                &y[..4]
            );
            dequantize(GgmlType::Q8_0, &quantize_q8_0(&x), &mut y).unwrap();
            assert!(y.iter().all(|&b| (b - v).abs() < 0.02), "q8_0 {v}");
        }
    }

    #[test]
    fn blocks_encoded_on_several_threads_are_the_blocks_encoded_on_one() {
        // 37 super-blocks: runs of unequal length, the last one short.
        let x = signal(37 * QK_K, 11);
        for threads in [2, 3, 7, 64] {
            assert_eq!(
                encode_on(&x, QK_K, quantize_q4_k, threads),
                quantize_q4_k(&x),
                "q4_k on {threads} threads"
            );
            assert_eq!(
                encode_on(&x, 32, quantize_q4_1, threads),
                quantize_q4_1(&x),
                "q4_1 on {threads} threads"
            );
            assert_eq!(
                encode_on(&x[..1001], 1, encode_f16, threads),
                encode_f16(&x[..1001]),
                "f16 on {threads} threads"
            );
        }
    }

    #[test]
    fn names() {
        assert_eq!(QuantType::from_name("Q8_0"), Some(QuantType::Q8_0));
        assert_eq!(QuantType::from_name("q4_k"), Some(QuantType::Q4K));
        assert_eq!(QuantType::from_name("q5_k"), None);
    }

    /// Q4_0 and Q4_1 round trips: every value within half a step of its block (a step being
    /// the block's scale; Q4_0's levels run -8..=7, so a value at the other extreme from the
    /// largest magnitude may clip by up to a whole step), constant blocks and zeros included.
    #[test]
    fn q4_0_and_q4_1_round_trip_within_their_steps() {
        let mut x: Vec<f32> = (0..32 * 40)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1 + i / 320) as f32)
            .collect();
        x[..32].fill(0.0);
        x[32..64].fill(-0.75);
        for (ty, q) in [
            (GgmlType::Q4_0, quantize_q4_0(&x)),
            (GgmlType::Q4_1, quantize_q4_1(&x)),
        ] {
            let bytes = if ty == GgmlType::Q4_0 { 18 } else { 20 };
            assert_eq!(q.len(), x.len() / 32 * bytes);
            let mut y = vec![0f32; x.len()];
            dequantize(ty, &q, &mut y).unwrap();
            for (bi, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let (lo, hi) = xb
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                let amax = lo.abs().max(hi.abs());
                let (step, within) = if ty == GgmlType::Q4_0 {
                    (amax / 8.0, 1.0)
                } else {
                    ((hi - lo) / 15.0, 0.5)
                };
                for (a, b) in xb.iter().zip(yb) {
                    assert!(
                        (a - b).abs() <= step * within + amax * 2e-3 + 1e-6,
                        "{ty:?} block {bi}: {a} -> {b} (step {step})"
                    );
                }
            }
        }
    }
}

/// The types `kiln quantize` writes a GGUF file in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    /// Every matrix as f16 (quantized matrices decoded).
    F16,
    /// Float matrices as Q8_0.
    Q8_0,
    /// Float matrices as Q4_K, Q8_0 where rows do not fill 256-value blocks.
    Q4K,
    /// Float matrices as Q4_0; the token embedding and output head as Q8_0.
    Q4_0,
    /// Float matrices as Q4_1; the token embedding and output head as Q8_0 (the mix of the
    /// default model's file).
    Q4_1,
}

impl FileType {
    /// Parses a command-line name; the error names the type and what can be written.
    pub fn from_name(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            // Not `q4_k_m`: llama.cpp's mix of that name keeps some matrices in Q6_K.
            "q4_k" => Ok(Self::Q4K),
            "q4_0" => Ok(Self::Q4_0),
            "q4_1" => Ok(Self::Q4_1),
            other => Err(format!(
                "`{other}`: kiln quantize writes f16, q8_0, q4_0, q4_1 or q4_k (it has no encoder for other types yet)"
            )),
        }
    }

    /// `general.file_type` as llama.cpp numbers it (`LLAMA_FTYPE_MOSTLY_*`).
    fn ftype(self) -> u32 {
        match self {
            Self::F16 => 1,
            Self::Q8_0 => 7,
            // MOSTLY_Q4_K_S: Q4_K, and Q8_0 where rows do not fill its blocks.
            Self::Q4K => 14,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
        }
    }
}

/// What [`quantize_file`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileReport {
    /// Tensors in the file.
    pub tensors: usize,
    /// Matrices written in the type asked for.
    pub converted: usize,
    /// Matrices written as Q8_0 instead of the type asked for: rows that do not fill Q4_K's
    /// blocks, and the token embedding and output head of q4_0 and q4_1 files.
    pub fallback_q8_0: usize,
    /// Tensors copied as they were: vectors, matrices already quantized (for q8_0 and q4_k, as
    /// `--quantize` on load), matrices already in the type, rows not a multiple of 32.
    pub kept: usize,
    /// Tensor bytes before.
    pub bytes_before: u64,
    /// Tensor bytes after.
    pub bytes_after: u64,
}

/// A copy of `file` with its matrices in `to`, ready to write, and what was done. The
/// metadata (architecture, tokenizer, chat template...) is copied, `general.file_type` set.
/// `progress(done, total, name)` is called after each tensor.
pub fn quantize_file(
    file: &kiln_formats::gguf::GgufFile,
    to: FileType,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<(kiln_formats::gguf::GgufWriter, FileReport), ModelError> {
    let mut w = kiln_formats::gguf::GgufWriter::new();
    for (k, v) in file.metadata() {
        if k != "general.file_type" {
            w = w.metadata(k.clone(), v.clone());
        }
    }
    w = w.metadata(
        "general.file_type",
        kiln_formats::gguf::Value::U32(to.ftype()),
    );
    let mut r = FileReport {
        tensors: file.tensors().len(),
        ..Default::default()
    };
    let total = file.tensors().len();
    for (i, t) in file.tensors().iter().enumerate() {
        let src = file.tensor_data(t);
        r.bytes_before += src.len() as u64;
        let cols = t.row_len();
        let float = matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        let target = if t.dims.len() != 2 {
            None
        } else {
            match to {
                FileType::F16 if t.ty != GgmlType::F16 && t.ty.is_supported() => {
                    Some(GgmlType::F16)
                }
                FileType::Q8_0 if float && cols % 32 == 0 => Some(GgmlType::Q8_0),
                FileType::Q4K if float && cols % QK_K == 0 => Some(GgmlType::Q4_K),
                FileType::Q4K if float && cols % 32 == 0 => Some(GgmlType::Q8_0),
                FileType::Q4_0 | FileType::Q4_1 if float && cols % 32 == 0 => {
                    // The embedding and head read 4 bits badly: llama.cpp's q4 mixes keep
                    // them wider too.
                    if matches!(t.name.as_str(), "token_embd.weight" | "output.weight") {
                        Some(GgmlType::Q8_0)
                    } else if to == FileType::Q4_0 {
                        Some(GgmlType::Q4_0)
                    } else {
                        Some(GgmlType::Q4_1)
                    }
                }
                _ => None,
            }
        };
        let data = match target {
            None => {
                r.kept += 1;
                src.to_vec()
            }
            Some(ty) => {
                let mut x = vec![0f32; t.n_elements() as usize];
                kiln_formats::gguf::quant::dequantize(t.ty, src, &mut x).map_err(|e| {
                    ModelError::Input(format!("tensor `{}` ({}): {e}", t.name, t.ty.name()))
                })?;
                if ty == GgmlType::Q8_0 && to != FileType::Q8_0 {
                    r.fallback_q8_0 += 1;
                } else {
                    r.converted += 1;
                }
                // Spread over the cores: a tensor's blocks do not depend on each other.
                let (block, encode) = encoder(ty)?;
                encode_par(&x, block, encode)
            }
        };
        r.bytes_after += data.len() as u64;
        w = w.tensor(t.name.clone(), &t.dims, target.unwrap_or(t.ty), data);
        progress(i + 1, total, &t.name);
    }
    Ok((w, r))
}
