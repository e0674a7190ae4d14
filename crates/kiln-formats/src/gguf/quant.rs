//! The ggml block formats and their reference decoders.
//!
//! Each quantized type stores rows as a sequence of fixed-size blocks. The decoders
//! here are deliberately plain scalar code: they define what a value *is*, and every
//! optimised kernel in a backend is tested against them.

use half::{bf16, f16};

/// A ggml tensor type, as numbered in GGUF files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types, missing_docs)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
}

/// Bytes of one Q4_0 block (f16 scale + 16 bytes of nibbles).
pub const Q4_0_BYTES: usize = 18;
/// Bytes of one Q4_1 block (f16 scale, f16 minimum, 16 bytes of nibbles).
pub const Q4_1_BYTES: usize = 20;
/// Bytes of one Q8_0 block (f16 scale + 32 signed bytes).
pub const Q8_0_BYTES: usize = 34;
/// Bytes of one Q4_K super-block.
pub const Q4_K_BYTES: usize = 144;
/// Bytes of one Q5_K super-block.
pub const Q5_K_BYTES: usize = 176;
/// Bytes of one Q6_K super-block.
pub const Q6_K_BYTES: usize = 210;
/// Elements in a K-quant super-block.
pub const QK_K: usize = 256;

impl GgmlType {
    /// Every type, in tag order.
    pub const ALL: [GgmlType; 29] = {
        use GgmlType::*;
        [
            F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
            IQ2_XXS, IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, I8, I16, I32, I64, F64,
            IQ1_M, BF16,
        ]
    };

    /// The on-disk type tag (the inverse of [`GgmlType::from_tag`]).
    pub fn tag(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            IQ2_XXS => 16,
            IQ2_XS => 17,
            IQ3_XXS => 18,
            IQ1_S => 19,
            IQ4_NL => 20,
            IQ3_S => 21,
            IQ2_S => 22,
            IQ4_XS => 23,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            IQ1_M => 29,
            BF16 => 30,
        }
    }

    /// Decodes the on-disk type tag.
    pub fn from_tag(tag: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match tag {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            I64 | F64 => (1, 8),
            Q4_0 => (32, Q4_0_BYTES),
            Q4_1 => (32, Q4_1_BYTES),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, Q8_0_BYTES),
            Q8_1 => (32, 36),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, Q4_K_BYTES),
            Q5_K => (256, Q5_K_BYTES),
            Q6_K => (256, Q6_K_BYTES),
            Q8_K => (256, 292),
            IQ2_XXS => (256, 66),
            IQ2_XS => (256, 74),
            IQ3_XXS => (256, 98),
            IQ1_S => (256, 50),
            IQ4_NL => (32, 18),
            IQ3_S => (256, 110),
            IQ2_S => (256, 82),
            IQ4_XS => (256, 136),
            IQ1_M => (256, 56),
        }
    }

    /// The type's conventional name.
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
        }
    }

    /// Whether [`dequantize`] can decode this type.
    pub fn is_supported(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q4_K | Q5_K | Q6_K
        )
    }

    /// Bytes taken by `n` elements (n must be a multiple of the block size).
    pub fn bytes_for(self, n: usize) -> usize {
        let (b, s) = self.block();
        n / b * s
    }
}

/// Why a buffer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    /// The type has no decoder in kiln.
    #[error("type {0} cannot be decoded")]
    Unsupported(&'static str),
    /// The byte and element counts do not agree.
    #[error("{ty}: {bytes} bytes do not hold {n} elements")]
    Size {
        /// Type name.
        ty: &'static str,
        /// Bytes given.
        bytes: usize,
        /// Elements wanted.
        n: usize,
    },
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes `src` (whole blocks of type `ty`) into `out`, which fixes the element count.
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    if !ty.is_supported() {
        return Err(DequantError::Unsupported(ty.name()));
    }
    let (block, bytes) = ty.block();
    if out.len() % block != 0 || src.len() != out.len() / block * bytes {
        return Err(DequantError::Size {
            ty: ty.name(),
            bytes: src.len(),
            n: out.len(),
        });
    }
    let blocks = src.chunks_exact(bytes).zip(out.chunks_exact_mut(block));
    match ty {
        GgmlType::F32 => {
            for (b, o) in blocks {
                o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, o) in blocks {
                o[0] = f16_at(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (b, o) in blocks {
                o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => blocks.for_each(|(b, o)| dequant_q8_0(b, o)),
        GgmlType::Q4_0 => blocks.for_each(|(b, o)| dequant_q4_0(b, o)),
        GgmlType::Q4_1 => blocks.for_each(|(b, o)| dequant_q4_1(b, o)),
        GgmlType::Q5_0 => blocks.for_each(|(b, o)| dequant_q5_0(b, o)),
        GgmlType::Q4_K => blocks.for_each(|(b, o)| dequant_q4_k(b, o)),
        GgmlType::Q5_K => blocks.for_each(|(b, o)| dequant_q5_k(b, o)),
        GgmlType::Q6_K => blocks.for_each(|(b, o)| dequant_q6_k(b, o)),
        _ => unreachable!("is_supported covers the decoders above"),
    }
    Ok(())
}

/// Q8_0: `x = d * q`, q signed bytes.
///
/// # Panics
/// If `b` is shorter than [`Q8_0_BYTES`]; a shorter `o` gets only its first elements.
pub fn dequant_q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, o) in o.iter_mut().enumerate().take(32) {
        *o = d * (b[2 + i] as i8) as f32;
    }
}

/// Q4_0: `x = d * (q - 8)`; low nibbles are elements 0..16, high nibbles 16..32.
///
/// # Panics
/// If `b` is shorter than [`Q4_0_BYTES`] or `o` shorter than 32 elements.
pub fn dequant_q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        o[j] = d * ((q & 0xF) as i32 - 8) as f32;
        o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// Q4_1: `x = d * q + m`; nibble order as in Q4_0.
///
/// # Panics
/// If `b` is shorter than [`Q4_1_BYTES`] or `o` shorter than 32 elements.
pub fn dequant_q4_1(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    for j in 0..16 {
        let q = b[4 + j];
        o[j] = d * (q & 0xF) as f32 + m;
        o[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// Q5_0: `x = d * (q - 16)`, q of 5 bits: the low four of element `j < 16` in the low nibble
/// of byte `6 + j`, of element `j + 16` in its high nibble; the fifth bit of element `i` is bit
/// `i` of the little-endian `u32` at byte 2 (llama.cpp's fallback for K-quant rows that are
/// not a multiple of 256).
///
/// # Panics
/// If `b` is shorter than 22 bytes or `o` shorter than 32 elements.
pub fn dequant_q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let lo = (q & 0xF) as i32 | (((qh >> j) & 1) << 4) as i32;
        let hi = (q >> 4) as i32 | (((qh >> (j + 16)) & 1) << 4) as i32;
        o[j] = d * (lo - 16) as f32;
        o[j + 16] = d * (hi - 16) as f32;
    }
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K/Q5_K super-block.
///
/// # Panics
/// If `j` is not below 8 or `s` (the 12 packed scale bytes) is shorter than 12.
#[inline]
pub fn k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K: 8 sub-blocks of 32 with 6-bit scales and minimums, `x = d*sc*q - dmin*m`.
///
/// # Panics
/// If `b` is shorter than [`Q4_K_BYTES`] or `o` shorter than 256 elements.
pub fn dequant_q4_k(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for j in 0..4 {
        let (sc1, m1) = k_scale_min(2 * j, scales);
        let (sc2, m2) = k_scale_min(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * j..32 * j + 32];
        let out = &mut o[64 * j..64 * j + 64];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0xF) as f32 - m1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// Q5_K: as Q4_K with a fifth bit per element from `qh`.
///
/// # Panics
/// If `b` is shorter than [`Q5_K_BYTES`] or `o` shorter than 256 elements.
pub fn dequant_q5_k(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for j in 0..4 {
        let (sc1, m1) = k_scale_min(2 * j, scales);
        let (sc2, m2) = k_scale_min(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
        let q = &qs[32 * j..32 * j + 32];
        let out = &mut o[64 * j..64 * j + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * ((q[l] & 0xF) + h1) as f32 - m1;
            out[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// Q6_K: 16 sub-blocks of 16 with signed 8-bit scales, 6-bit values centred on 32.
///
/// # Panics
/// If `b` is shorter than [`Q6_K_BYTES`] or `o` shorter than 256 elements.
pub fn dequant_q6_k(b: &[u8], o: &mut [f32]) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &ql_all[64 * half..];
        let qh = &qh_all[32 * half..];
        let sc = &sc_all[8 * half..];
        let out = &mut o[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (tag, name, elements per block, bytes per block), from ggml's `type_traits` table
    /// (ggml.c / ggml-common.h), written out here rather than derived from the code.
    const TABLE: [(u32, &str, usize, usize); 29] = [
        (0, "F32", 1, 4),
        (1, "F16", 1, 2),
        (2, "Q4_0", 32, 18),
        (3, "Q4_1", 32, 20),
        (6, "Q5_0", 32, 22),
        (7, "Q5_1", 32, 24),
        (8, "Q8_0", 32, 34),
        // Two f16 (d, s) and 32 quants. gguf-py still says 40, from when d and s were f32.
        (9, "Q8_1", 32, 36),
        (10, "Q2_K", 256, 84),
        (11, "Q3_K", 256, 110),
        (12, "Q4_K", 256, 144),
        (13, "Q5_K", 256, 176),
        (14, "Q6_K", 256, 210),
        (15, "Q8_K", 256, 292),
        (16, "IQ2_XXS", 256, 66),
        (17, "IQ2_XS", 256, 74),
        (18, "IQ3_XXS", 256, 98),
        (19, "IQ1_S", 256, 50),
        (20, "IQ4_NL", 32, 18),
        (21, "IQ3_S", 256, 110),
        (22, "IQ2_S", 256, 82),
        (23, "IQ4_XS", 256, 136),
        (24, "I8", 1, 1),
        (25, "I16", 1, 2),
        (26, "I32", 1, 4),
        (27, "I64", 1, 8),
        (28, "F64", 1, 8),
        (29, "IQ1_M", 256, 56),
        (30, "BF16", 1, 2),
    ];

    #[test]
    fn every_type_has_ggml_tag_name_and_block() {
        for (i, &(tag, name, elems, bytes)) in TABLE.iter().enumerate() {
            let ty = GgmlType::from_tag(tag).unwrap_or_else(|| panic!("tag {tag} ({name})"));
            assert_eq!(ty, GgmlType::ALL[i], "ALL is in tag order");
            assert_eq!(ty.tag(), tag);
            assert_eq!(ty.name(), name);
            assert_eq!(format!("{ty:?}"), name);
            assert_eq!(ty.block(), (elems, bytes), "{name}");
            assert_eq!(ty.bytes_for(3 * elems), 3 * bytes, "{name}");
        }
    }

    #[test]
    fn unknown_tags_are_refused() {
        // 4 and 5 were Q4_2 and Q4_3, long removed; 31.. are newer or invalid.
        for tag in [4, 5, 31, 32, 33, 34, 39, 1000, u32::MAX] {
            assert_eq!(GgmlType::from_tag(tag), None, "tag {tag}");
        }
    }

    #[test]
    fn supported_types_are_the_ten_with_decoders() {
        let supported: Vec<_> = GgmlType::ALL
            .iter()
            .filter(|t| t.is_supported())
            .map(|t| t.name())
            .collect();
        assert_eq!(
            supported,
            ["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "BF16"]
        );
        // The size constants agree with the table.
        assert_eq!(GgmlType::Q4_0.block().1, Q4_0_BYTES);
        assert_eq!(GgmlType::Q4_1.block().1, Q4_1_BYTES);
        assert_eq!(GgmlType::Q8_0.block().1, Q8_0_BYTES);
        assert_eq!(GgmlType::Q4_K.block(), (QK_K, Q4_K_BYTES));
        assert_eq!(GgmlType::Q5_K.block(), (QK_K, Q5_K_BYTES));
        assert_eq!(GgmlType::Q6_K.block(), (QK_K, Q6_K_BYTES));
    }

    #[test]
    fn unsupported_types_are_an_error_not_a_panic() {
        for ty in GgmlType::ALL.iter().filter(|t| !t.is_supported()) {
            let (elems, bytes) = ty.block();
            let mut out = vec![0f32; elems];
            assert_eq!(
                dequantize(*ty, &vec![0u8; bytes], &mut out),
                Err(DequantError::Unsupported(ty.name()))
            );
        }
    }

    #[test]
    fn size_mismatches_are_errors() {
        for ty in GgmlType::ALL.iter().filter(|t| t.is_supported()) {
            let (elems, bytes) = ty.block();
            let size_err = |b: usize, n: usize| {
                Err(DequantError::Size {
                    ty: ty.name(),
                    bytes: b,
                    n,
                })
            };
            let src = vec![0u8; 2 * bytes];
            // Right sizes decode.
            let mut out = vec![1f32; 2 * elems];
            assert_eq!(dequantize(*ty, &src, &mut out), Ok(()), "{}", ty.name());
            assert!(out.iter().all(|&x| x == 0.0));
            // One byte short or long.
            let mut out = vec![0f32; 2 * elems];
            assert_eq!(
                dequantize(*ty, &src[..2 * bytes - 1], &mut out),
                size_err(2 * bytes - 1, 2 * elems)
            );
            let long = vec![0u8; 2 * bytes + 1];
            assert_eq!(
                dequantize(*ty, &long, &mut out),
                size_err(2 * bytes + 1, 2 * elems)
            );
            // One block too many elements wanted.
            let mut out = vec![0f32; 3 * elems];
            assert_eq!(
                dequantize(*ty, &src, &mut out),
                size_err(2 * bytes, 3 * elems)
            );
            // Output not a whole number of blocks.
            if elems > 1 {
                let mut out = vec![0f32; 2 * elems - 1];
                assert_eq!(
                    dequantize(*ty, &src, &mut out),
                    size_err(2 * bytes, 2 * elems - 1)
                );
            }
            // Nothing in, nothing out.
            assert_eq!(dequantize(*ty, &[], &mut []), Ok(()));
        }
        let msg = DequantError::Size {
            ty: "Q4_K",
            bytes: 143,
            n: 256,
        }
        .to_string();
        assert_eq!(msg, "Q4_K: 143 bytes do not hold 256 elements");
    }

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_by_hand() {
        let mut b = [0u8; Q8_0_BYTES];
        b[..2].copy_from_slice(&f16_bytes(0.5));
        for i in 0..32 {
            b[2 + i] = (i as i8 * 4 - 64) as u8; // -64, -60, .., 60
        }
        b[2 + 31] = 0x80; // -128
        let mut o = [0f32; 32];
        dequantize(GgmlType::Q8_0, &b, &mut o).unwrap();
        for (i, &x) in o.iter().enumerate().take(31) {
            assert_eq!(x, 0.5 * (i as f32 * 4.0 - 64.0));
        }
        assert_eq!(o[31], -64.0);
    }

    #[test]
    fn q4_0_and_q4_1_by_hand() {
        let mut b = [0u8; Q4_1_BYTES];
        b[..2].copy_from_slice(&f16_bytes(2.0));
        b[2..4].copy_from_slice(&f16_bytes(-1.0));
        // Low nibble j, high nibble 15 - j: element j is j, element j + 16 is 15 - j.
        for j in 0..16 {
            b[4 + j] = (j as u8) | ((15 - j as u8) << 4);
        }
        let mut o = [0f32; 32];
        dequantize(GgmlType::Q4_1, &b, &mut o).unwrap();
        for j in 0..16 {
            assert_eq!(o[j], 2.0 * j as f32 - 1.0);
            assert_eq!(o[j + 16], 2.0 * (15 - j) as f32 - 1.0);
        }
        // Q4_0 is the same layout without the minimum, centred on 8.
        let mut b0 = [0u8; Q4_0_BYTES];
        b0[..2].copy_from_slice(&f16_bytes(2.0));
        b0[2..].copy_from_slice(&b[4..]);
        dequantize(GgmlType::Q4_0, &b0, &mut o).unwrap();
        for j in 0..16 {
            assert_eq!(o[j], 2.0 * (j as f32 - 8.0));
            assert_eq!(o[j + 16], 2.0 * (7.0 - j as f32));
        }
    }

    #[test]
    fn k_scale_min_unpacks_six_bits() {
        // Sub-blocks 0..4 sit in the low 6 bits of bytes 0..4 (scales) and 4..8 (mins);
        // 4..8 take their low 4 bits from bytes 8..12 and their top 2 bits from the
        // top 2 bits of bytes 0..4 (scales) and 4..8 (mins).
        let s = [
            0b01_000001,
            0b10_000010,
            0b11_000011,
            0b00_111111,
            0b11_000101,
            0b00_000110,
            0b01_000111,
            0b10_001000,
            0x9A,
            0xBC,
            0xDE,
            0xF0,
        ];
        let want = [
            (1, 5),
            (2, 6),
            (3, 7),
            (63, 8),
            (0x1A, 0x39),
            (0x2C, 0x0B),
            (0x3E, 0x1D),
            (0x00, 0x2F),
        ];
        for (j, &w) in want.iter().enumerate() {
            assert_eq!(k_scale_min(j, &s), w, "sub-block {j}");
        }
    }
}
