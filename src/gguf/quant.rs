//! ggml tensor element types and CPU reference dequantization.
//!
//! Only the types listed in [`GgmlType`] are supported. Block layouts (all
//! little-endian, blocks stored back to back along a row):
//!
//! | type | elements/block | bytes/block | layout |
//! |------|----------------|-------------|--------|
//! | F32  | 1   | 4   | `f32` |
//! | F16  | 1   | 2   | IEEE half |
//! | BF16 | 1   | 2   | bfloat16 |
//! | Q4_0 | 32  | 18  | `f16 d`, 16 bytes of nibbles; `x = (q - 8) * d` |
//! | Q4_1 | 32  | 20  | `f16 d`, `f16 m`, 16 bytes of nibbles; `x = q * d + m` |
//! | Q8_0 | 32  | 34  | `f16 d`, 32 × `i8`; `x = q * d` |
//! | Q4_K | 256 | 144 | `f16 d`, `f16 dmin`, 12 bytes packed 6-bit scales/mins, 128 bytes nibbles |
//! | Q6_K | 256 | 210 | 128 bytes `ql`, 64 bytes `qh`, 16 × `i8` scales, `f16 d` |
//!
//! For Q4_0/Q4_1, byte `j` of the nibble array holds element `j` in its low
//! nibble and element `j + 16` in its high nibble.

use half::{bf16, f16};
use thiserror::Error;

/// Errors from type lookup and dequantization.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum QuantError {
    /// The ggml type id is not one this crate supports (the name is given when the id is a known ggml type).
    #[error("unsupported ggml tensor type {id}{}", name.map(|n| format!(" ({n})")).unwrap_or_default())]
    UnsupportedType {
        /// Raw ggml type id.
        id: u32,
        /// ggml's name for the type, if the id is known.
        name: Option<&'static str>,
    },
    /// A row length is not a multiple of the type's block size.
    #[error("{ty}: row length {row_len} is not a multiple of the block size {block_size}")]
    RowNotBlockMultiple {
        /// Element type.
        ty: GgmlType,
        /// Offending number of elements.
        row_len: u64,
        /// Required block size.
        block_size: u64,
    },
    /// The byte slice does not have the size implied by the element count.
    #[error("{ty}: {n_elements} elements need {expected} bytes, got {got}")]
    WrongByteLength {
        /// Element type.
        ty: GgmlType,
        /// Number of elements requested.
        n_elements: u64,
        /// Bytes the elements occupy.
        expected: u64,
        /// Bytes supplied.
        got: u64,
    },
    /// Size computation overflowed.
    #[error("{ty}: size of {n_elements} elements overflows")]
    Overflow {
        /// Element type.
        ty: GgmlType,
        /// Number of elements requested.
        n_elements: u64,
    },
}

/// The ggml element types supported by this crate (value = ggml type id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit float.
    F32 = 0,
    /// IEEE 754 half.
    F16 = 1,
    /// 4-bit, block 32, symmetric (`(q-8)*d`).
    Q4_0 = 2,
    /// 4-bit, block 32, with minimum (`q*d+m`).
    Q4_1 = 3,
    /// 8-bit, block 32.
    Q8_0 = 8,
    /// 4-bit k-quant, super-block 256.
    Q4_K = 12,
    /// 6-bit k-quant, super-block 256.
    Q6_K = 14,
    /// bfloat16.
    BF16 = 30,
}

/// ggml's names for type ids, including ones this crate does not support
/// (used only to name them in errors).
fn known_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

impl GgmlType {
    /// All supported types.
    pub const ALL: [GgmlType; 8] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::BF16,
    ];

    /// Looks up a ggml type id; unsupported ids give [`QuantError::UnsupportedType`].
    pub fn from_id(id: u32) -> Result<Self, QuantError> {
        Self::ALL
            .into_iter()
            .find(|t| t.id() == id)
            .ok_or(QuantError::UnsupportedType {
                id,
                name: known_type_name(id),
            })
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name for the type (e.g. `"Q4_K"`).
    pub fn name(self) -> &'static str {
        known_type_name(self.id()).expect("supported types are named")
    }

    /// Number of elements in one block.
    pub fn block_size(self) -> u64 {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4_K | GgmlType::Q6_K => 256,
        }
    }

    /// Number of bytes in one block.
    pub fn block_bytes(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_K => 144,
            GgmlType::Q6_K => 210,
        }
    }

    /// Checks that `n_elements` are whole blocks and that `len` bytes is exactly what they
    /// occupy: what every dequantizer requires of its input.
    pub fn check_bytes(self, n_elements: u64, len: usize) -> Result<(), QuantError> {
        let expected = self.bytes_for(n_elements)?;
        if expected != len as u64 {
            return Err(QuantError::WrongByteLength {
                ty: self,
                n_elements,
                expected,
                got: len as u64,
            });
        }
        Ok(())
    }

    /// Bytes occupied by `n_elements` elements, which must be a whole number of blocks.
    pub fn bytes_for(self, n_elements: u64) -> Result<u64, QuantError> {
        let bs = self.block_size();
        if !n_elements.is_multiple_of(bs) {
            return Err(QuantError::RowNotBlockMultiple {
                ty: self,
                row_len: n_elements,
                block_size: bs,
            });
        }
        (n_elements / bs)
            .checked_mul(self.block_bytes())
            .ok_or(QuantError::Overflow {
                ty: self,
                n_elements,
            })
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `n_elements` elements of type `ty` from `bytes` into `f32`.
///
/// `n_elements` must be a multiple of the block size (each row of a ggml
/// tensor is, so a whole tensor or any run of whole rows is accepted) and
/// `bytes` must be exactly the size those elements occupy.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: u64) -> Result<Vec<f32>, QuantError> {
    ty.check_bytes(n_elements, bytes.len())?;
    // The length matches, and n_elements <= bytes.len() * 8 for every type, so this fits.
    let n = usize::try_from(n_elements).map_err(|_| QuantError::Overflow { ty, n_elements })?;
    let mut out = Vec::with_capacity(n);
    let bb = ty.block_bytes() as usize;
    match ty {
        GgmlType::F32 => {
            out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        GgmlType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for blk in bytes.chunks_exact(bb) {
                let d = f16_at(blk, 0);
                out.extend(blk[2..34].iter().map(|&q| (q as i8) as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            for blk in bytes.chunks_exact(bb) {
                let d = f16_at(blk, 0);
                let qs = &blk[2..18];
                out.extend(qs.iter().map(|&b| ((b & 0x0f) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&b| ((b >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for blk in bytes.chunks_exact(bb) {
                let d = f16_at(blk, 0);
                let m = f16_at(blk, 2);
                let qs = &blk[4..20];
                out.extend(qs.iter().map(|&b| (b & 0x0f) as f32 * d + m));
                out.extend(qs.iter().map(|&b| (b >> 4) as f32 * d + m));
            }
        }
        GgmlType::Q4_K => {
            for blk in bytes.chunks_exact(bb) {
                dequant_q4_k_block(blk, &mut out);
            }
        }
        GgmlType::Q6_K => {
            for blk in bytes.chunks_exact(bb) {
                dequant_q6_k_block(blk, &mut out);
            }
        }
    }
    debug_assert_eq!(out.len(), n);
    Ok(out)
}

/// Unpacks the 6-bit (scale, min) pair of sub-block `j` (0..8) from the
/// 12-byte Q4_K scale array.
///
/// Bytes 0..4 hold scales 0..4 in their low 6 bits, bytes 4..8 hold mins 0..4
/// in their low 6 bits. Sub-blocks 4..8 use a low nibble from bytes 8..12
/// (scale in bits 0..4, min in bits 4..8) and take their top two bits from
/// bits 6..8 of bytes 0..4 (scales) and 4..8 (mins).
pub fn q4_k_scale_min(scales: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 0x3f, scales[j + 4] & 0x3f)
    } else {
        let lo = scales[j + 4];
        let sc = (lo & 0x0f) | ((scales[j - 4] >> 6) << 4);
        let m = (lo >> 4) | ((scales[j] >> 6) << 4);
        (sc, m)
    }
}

/// One Q4_K super-block (144 bytes) -> 256 values.
///
/// The 128 nibble bytes form four 32-byte groups; group `g` covers elements
/// `64g..64g+64`: the low nibbles give elements `64g..64g+32` (sub-block `2g`),
/// the high nibbles `64g+32..64g+64` (sub-block `2g+1`).
fn dequant_q4_k_block(blk: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(blk, 0);
    let dmin = f16_at(blk, 2);
    let scales: &[u8; 12] = blk[4..16].try_into().expect("12 bytes");
    let qs = &blk[16..144];
    for g in 0..4 {
        let bytes = &qs[32 * g..32 * g + 32];
        let (sc_lo, m_lo) = q4_k_scale_min(scales, 2 * g);
        let (sc_hi, m_hi) = q4_k_scale_min(scales, 2 * g + 1);
        let (d_lo, min_lo) = (d * sc_lo as f32, dmin * m_lo as f32);
        let (d_hi, min_hi) = (d * sc_hi as f32, dmin * m_hi as f32);
        out.extend(bytes.iter().map(|&b| d_lo * (b & 0x0f) as f32 - min_lo));
        out.extend(bytes.iter().map(|&b| d_hi * (b >> 4) as f32 - min_hi));
    }
}

/// One Q6_K super-block (210 bytes) -> 256 values.
///
/// Element `e` (0..256) lies in half `h = e / 128`, group `g = (e % 128) / 32`
/// and lane `l = e % 32`. Its low 4 bits are in `ql[64h + l + 32*(g & 1)]`
/// (low nibble for `g < 2`, high nibble otherwise), its high 2 bits are bits
/// `2g..2g+2` of `qh[32h + l]`, and its scale is `scales[e / 16]`.
fn dequant_q6_k_block(blk: &[u8], out: &mut Vec<f32>) {
    let ql = &blk[0..128];
    let qh = &blk[128..192];
    let scales = &blk[192..208];
    let d = f16_at(blk, 208);
    for e in 0..256usize {
        let (h, g, l) = (e / 128, (e % 128) / 32, e % 32);
        let lo_byte = ql[64 * h + l + 32 * (g & 1)];
        let lo = if g < 2 { lo_byte & 0x0f } else { lo_byte >> 4 };
        let hi = (qh[32 * h + l] >> (2 * g)) & 0x03;
        let q = ((hi << 4) | lo) as i32 - 32;
        let sc = scales[e / 16] as i8 as f32;
        out.push(d * sc * q as f32);
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    /// Deterministic pseudo-random numbers for tests (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    // ---- tiny reference quantizers (test only) ----

    fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in x.chunks(32) {
            let amax = b.iter().fold(0f32, |a, &v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            out.extend(h(d));
            out.extend(
                b.iter()
                    .map(|&v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8),
            );
        }
        out
    }

    fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in x.chunks(32) {
            // signed max-magnitude value maps to -8
            let mut maxv = 0f32;
            for &v in b {
                if v.abs() > maxv.abs() {
                    maxv = v;
                }
            }
            let d = maxv / -8.0;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            out.extend(h(d));
            let q = |v: f32| ((v * id + 8.5).floor() as i32).clamp(0, 15) as u8;
            for j in 0..16 {
                out.push(q(b[j]) | (q(b[j + 16]) << 4));
            }
        }
        out
    }

    fn quantize_q4_1(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in x.chunks(32) {
            let mn = b.iter().cloned().fold(f32::INFINITY, f32::min);
            let mx = b.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let d = (mx - mn) / 15.0;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            out.extend(h(d));
            out.extend(h(mn));
            let q = |v: f32| (((v - mn) * id + 0.5).floor() as i32).clamp(0, 15) as u8;
            for j in 0..16 {
                out.push(q(b[j]) | (q(b[j + 16]) << 4));
            }
        }
        out
    }

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng(seed);
        (0..n).map(|_| r.unit() * 3.0).collect()
    }

    fn max_abs(x: &[f32]) -> f32 {
        x.iter().fold(0f32, |a, &v| a.max(v.abs()))
    }

    #[test]
    fn q8_0_round_trip() {
        let x = rand_vec(32 * 8, 1);
        let q = quantize_q8_0(&x);
        assert_eq!(q.len(), 8 * 34);
        let y = dequantize(GgmlType::Q8_0, &q, x.len() as u64).unwrap();
        for (b, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            // step d = amax/127; error <= d/2 plus f16 rounding of d (rel 2^-11 of amax)
            let bound = max_abs(xs) / 127.0 * 0.5 + max_abs(xs) * 1e-3;
            for (a, b2) in xs.iter().zip(ys) {
                assert!((a - b2).abs() <= bound, "block {b}: {a} vs {b2}");
            }
        }
    }

    #[test]
    fn q4_0_round_trip() {
        let x = rand_vec(32 * 8, 2);
        let q = quantize_q4_0(&x);
        assert_eq!(q.len(), 8 * 18);
        let y = dequantize(GgmlType::Q4_0, &q, x.len() as u64).unwrap();
        for (xs, ys) in x.chunks(32).zip(y.chunks(32)) {
            let d = max_abs(xs) / 8.0;
            for (a, b) in xs.iter().zip(ys) {
                // levels are -8d..=7d: values beyond 7d on the side opposite the
                // block's extreme value clamp to 7d (error < d), others round (error <= d/2)
                let bound = if a.abs() <= 7.0 * d { d * 0.5 } else { d };
                assert!((a - b).abs() <= bound + d * 1e-2, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn q4_1_round_trip() {
        let x = rand_vec(32 * 8, 3);
        let q = quantize_q4_1(&x);
        assert_eq!(q.len(), 8 * 20);
        let y = dequantize(GgmlType::Q4_1, &q, x.len() as u64).unwrap();
        for (xs, ys) in x.chunks(32).zip(y.chunks(32)) {
            let mn = xs.iter().cloned().fold(f32::INFINITY, f32::min);
            let mx = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let d = (mx - mn) / 15.0;
            for (a, b) in xs.iter().zip(ys) {
                assert!(
                    (a - b).abs() <= d * 0.5 + (mx.abs() + mn.abs()) * 1e-3,
                    "{a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn q4_0_nibble_order_exact() {
        // d = 0.5; byte j = lo (j % 16) | hi (15 - j % 16) << 4
        let mut blk = Vec::from(h(0.5));
        for j in 0..16u8 {
            blk.push(j | ((15 - j) << 4));
        }
        let y = dequantize(GgmlType::Q4_0, &blk, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[j + 16], ((15 - j) as f32 - 8.0) * 0.5);
        }
    }

    #[test]
    fn q4_1_exact() {
        let mut blk = Vec::from(h(0.25));
        blk.extend(h(-1.0));
        for j in 0..16u8 {
            blk.push(j | ((15 - j) << 4));
        }
        let y = dequantize(GgmlType::Q4_1, &blk, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], j as f32 * 0.25 - 1.0);
            assert_eq!(y[j + 16], (15 - j) as f32 * 0.25 - 1.0);
        }
    }

    #[test]
    fn q8_0_exact() {
        let mut blk = Vec::from(h(2.0));
        for j in 0..32i32 {
            blk.push((j * 8 - 128) as i8 as u8);
        }
        let y = dequantize(GgmlType::Q8_0, &blk, 32).unwrap();
        for j in 0..32 {
            assert_eq!(y[j], (j as f32 * 8.0 - 128.0) * 2.0);
        }
    }

    /// Packs a Q4_K super-block from logical values, following the layout
    /// description (independent of the decoder's code path).
    fn pack_q4_k(d: f32, dmin: f32, sc: [u8; 8], mn: [u8; 8], q: &[u8; 256]) -> Vec<u8> {
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
        }
        let mut out = Vec::from(h(d));
        out.extend(h(dmin));
        out.extend(s);
        for chunk in 0..4 {
            for l in 0..32 {
                out.push(q[64 * chunk + l] | (q[64 * chunk + 32 + l] << 4));
            }
        }
        assert_eq!(out.len(), 144);
        out
    }

    #[test]
    fn q4_k_hand_built() {
        let mut r = Rng(7);
        for _trial in 0..20 {
            let sc: [u8; 8] = std::array::from_fn(|_| (r.next() % 64) as u8);
            let mn: [u8; 8] = std::array::from_fn(|_| (r.next() % 64) as u8);
            let q: [u8; 256] = std::array::from_fn(|_| (r.next() % 16) as u8);
            let (d, dmin) = (0.125f32, 0.0625f32); // exact in f16
            let blk = pack_q4_k(d, dmin, sc, mn, &q);
            // the unpacker alone
            let sarr: [u8; 12] = blk[4..16].try_into().unwrap();
            for j in 0..8 {
                assert_eq!(q4_k_scale_min(&sarr, j), (sc[j], mn[j]), "sub-block {j}");
            }
            let y = dequantize(GgmlType::Q4_K, &blk, 256).unwrap();
            for e in 0..256 {
                let sub = e / 32;
                let want = d * sc[sub] as f32 * q[e] as f32 - dmin * mn[sub] as f32;
                assert_eq!(y[e], want, "element {e}");
            }
        }
    }

    #[test]
    fn q4_k_literal_block() {
        // scales bytes chosen so every sub-block has distinct (sc, m) using the high bits:
        // sc = [1,2,3,4, 17,34,51,63], m = [5,6,7,8, 33,18,3,48]
        let sc = [1u8, 2, 3, 4, 17, 34, 51, 63];
        let mn = [5u8, 6, 7, 8, 33, 18, 3, 48];
        // bytes 0..4: sc[j] | (sc[j+4]>>4)<<6 : 17>>4=1, 34>>4=2, 51>>4=3, 63>>4=3
        // bytes 4..8: mn[j] | (mn[j+4]>>4)<<6 : 33>>4=2, 18>>4=1, 3>>4=0, 48>>4=3
        // bytes 8..12: (sc[j+4]&15) | (mn[j+4]&15)<<4 : (1,1) (2,2) (3,3) (15,0)
        let s: [u8; 12] = [
            1 | 1 << 6,
            2 | 2 << 6,
            3 | 3 << 6,
            4 | 3 << 6,
            5 | 2 << 6,
            6 | 1 << 6,
            7,
            8 | 3 << 6,
            0x11,
            0x22,
            0x33,
            0x0f,
        ];
        for j in 0..8 {
            assert_eq!(q4_k_scale_min(&s, j), (sc[j], mn[j]));
        }
        let mut blk = Vec::from(h(1.0));
        blk.extend(h(0.5));
        blk.extend(s);
        // every nibble byte = 0x3A: low nibble 10 (first 32 of each 64), high 3
        blk.extend([0x3Au8; 128]);
        let y = dequantize(GgmlType::Q4_K, &blk, 256).unwrap();
        for e in 0..256 {
            let sub = e / 32;
            let q = if sub % 2 == 0 { 10.0 } else { 3.0 };
            assert_eq!(
                y[e],
                sc[sub] as f32 * q - 0.5 * mn[sub] as f32,
                "element {e}"
            );
        }
    }

    /// Packs a Q6_K super-block from logical 6-bit values and 16 scales.
    fn pack_q6_k(d: f32, scales: [i8; 16], q: &[u8; 256]) -> Vec<u8> {
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for half in 0..2 {
            for l in 0..32 {
                let base = 128 * half;
                let q0 = q[base + l];
                let q1 = q[base + l + 32];
                let q2 = q[base + l + 64];
                let q3 = q[base + l + 96];
                ql[64 * half + l] = (q0 & 15) | ((q2 & 15) << 4);
                ql[64 * half + l + 32] = (q1 & 15) | ((q3 & 15) << 4);
                qh[32 * half + l] =
                    (q0 >> 4) | ((q1 >> 4) << 2) | ((q2 >> 4) << 4) | ((q3 >> 4) << 6);
            }
        }
        let mut out = Vec::new();
        out.extend(ql);
        out.extend(qh);
        out.extend(scales.iter().map(|&s| s as u8));
        out.extend(h(d));
        assert_eq!(out.len(), 210);
        out
    }

    #[test]
    fn q6_k_hand_built() {
        let mut r = Rng(11);
        for _trial in 0..20 {
            let scales: [i8; 16] = std::array::from_fn(|_| (r.next() % 256) as u8 as i8);
            let q: [u8; 256] = std::array::from_fn(|_| (r.next() % 64) as u8);
            let d = 0.03125f32;
            let blk = pack_q6_k(d, scales, &q);
            let y = dequantize(GgmlType::Q6_K, &blk, 256).unwrap();
            for e in 0..256 {
                let want = d * scales[e / 16] as f32 * (q[e] as f32 - 32.0);
                assert_eq!(y[e], want, "element {e}");
            }
        }
    }

    #[test]
    fn q6_k_literal_block() {
        // ql all 0x21 (low nibble 1, high 2), qh all 0b11_10_01_00, scales = 1..=16, d = 1
        let mut blk = vec![0x21u8; 128];
        blk.extend([0b1110_0100u8; 64]);
        blk.extend((1..=16).map(|s: u8| s));
        blk.extend(h(1.0));
        let y = dequantize(GgmlType::Q6_K, &blk, 256).unwrap();
        for e in 0..256 {
            let g = (e % 128) / 32;
            let lo = if g < 2 { 1 } else { 2 };
            let q = ((g as i32) << 4 | lo) - 32;
            assert_eq!(y[e], ((e / 16) as f32 + 1.0) * q as f32, "element {e}");
        }
    }

    #[test]
    fn float_types() {
        let v = [1.5f32, -2.25, 0.0, 65504.0];
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(dequantize(GgmlType::F32, &b, 4).unwrap(), v);
        let b: Vec<u8> = v
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::F16, &b, 4).unwrap(), v);
        let b: Vec<u8> = [1.5f32, -2.25, 0.0, 3.0e38]
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect();
        let y = dequantize(GgmlType::BF16, &b, 4).unwrap();
        assert_eq!(&y[..3], &[1.5, -2.25, 0.0]);
        assert!((y[3] / 3.0e38 - 1.0).abs() < 1e-2);
    }

    #[test]
    fn errors() {
        assert_eq!(
            GgmlType::from_id(13),
            Err(QuantError::UnsupportedType {
                id: 13,
                name: Some("Q5_K")
            })
        );
        assert_eq!(
            GgmlType::from_id(99),
            Err(QuantError::UnsupportedType { id: 99, name: None })
        );
        assert!(
            GgmlType::from_id(13)
                .unwrap_err()
                .to_string()
                .contains("Q5_K")
        );
        assert!(matches!(
            dequantize(GgmlType::Q4_K, &[0; 144], 255),
            Err(QuantError::RowNotBlockMultiple { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 33], 32),
            Err(QuantError::WrongByteLength { .. })
        ));
        assert!(matches!(
            GgmlType::F32.bytes_for(u64::MAX / 2),
            Err(QuantError::Overflow { .. })
        ));
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Ok(t));
        }
    }
}
