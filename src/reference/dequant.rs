//! ggml block dequantization in float64: what the float64 model reference multiplies by, so that
//! it and the GPU (which dequantizes inside its product kernels) compute with the same weights.
//!
//! Written per element from the block layouts (see [`crate::gguf::quant`] for the table), not
//! per block like the f32 decoder there, so the two share no code: each is checked against the
//! `gguf` Python package's output (tests/gguf_dequant.rs). Every value here is exact: a block
//! value is at most an f16 scale times two small integers, minus another such product, which
//! float64 holds without rounding.

use crate::gguf::{GgmlType, QuantError};

fn f16_at(b: &[u8], i: usize) -> f64 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f64()
}

/// Element `e` of one block of type `ty`.
fn element(ty: GgmlType, blk: &[u8], e: usize) -> f64 {
    match ty {
        GgmlType::F32 => f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]) as f64,
        GgmlType::F16 => f16_at(blk, 0),
        GgmlType::BF16 => half::bf16::from_le_bytes([blk[0], blk[1]]).to_f64(),
        GgmlType::Q8_0 => f16_at(blk, 0) * (blk[2 + e] as i8) as f64,
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            // Byte j holds element j (low nibble) and element j + 16 (high nibble).
            let at = if ty == GgmlType::Q4_0 { 2 } else { 4 };
            let byte = blk[at + e % 16];
            let q = if e < 16 { byte & 0x0f } else { byte >> 4 } as f64;
            if ty == GgmlType::Q4_0 {
                (q - 8.0) * f16_at(blk, 0)
            } else {
                q * f16_at(blk, 0) + f16_at(blk, 2)
            }
        }
        GgmlType::Q4_K => {
            // Sub-block j = e / 32 has a 6-bit scale and min; nibbles come in 64-element
            // groups, low nibbles first.
            let j = e / 32;
            let s = &blk[4..16];
            let (sc, m) = if j < 4 {
                (s[j] & 63, s[j + 4] & 63)
            } else {
                (
                    (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4),
                    (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                )
            };
            let byte = blk[16 + 32 * (e / 64) + e % 32];
            let q = if j.is_multiple_of(2) {
                byte & 15
            } else {
                byte >> 4
            };
            f16_at(blk, 0) * sc as f64 * q as f64 - f16_at(blk, 2) * m as f64
        }
        GgmlType::Q6_K => {
            // Element e: half h, quarter g of that half, lane l. Low 4 bits in ql, high 2 in qh.
            let (h, g, l) = (e / 128, (e % 128) / 32, e % 32);
            let lo = (blk[64 * h + 32 * (g % 2) + l] >> (4 * (g / 2))) & 15;
            let hi = (blk[128 + 32 * h + l] >> (2 * g)) & 3;
            let q = (lo | (hi << 4)) as f64 - 32.0;
            f16_at(blk, 208) * (blk[192 + e / 16] as i8) as f64 * q
        }
    }
}

/// Dequantizes `n_elements` elements of type `ty` from `bytes` into float64. The same inputs
/// are accepted and refused as by [`crate::gguf::dequantize`]: whole blocks, exact length.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: u64) -> Result<Vec<f64>, QuantError> {
    ty.check_bytes(n_elements, bytes.len())?;
    let (bs, bb) = (ty.block_size() as usize, ty.block_bytes() as usize);
    Ok(bytes
        .chunks_exact(bb)
        .flat_map(|blk| (0..bs).map(move |e| element(ty, blk, e)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_f32_decoder_to_its_rounding() {
        let mut rng = crate::util::Rng::new(3);
        for ty in GgmlType::ALL {
            let n = 512u64;
            let mut bytes: Vec<u8> = (0..ty.bytes_for(n).unwrap())
                .map(|_| (rng.uniform() * 256.0) as u8)
                .collect();
            // Finite scales: an f16 of random bits may be NaN.
            let bb = ty.block_bytes() as usize;
            for blk in bytes.chunks_exact_mut(bb) {
                let offsets: &[usize] = match ty {
                    GgmlType::Q6_K => &[208],
                    GgmlType::Q4_1 | GgmlType::Q4_K => &[0, 2],
                    GgmlType::F32 => &[],
                    _ => &[0],
                };
                for &o in offsets {
                    let v = half::f16::from_f32(rng.uniform() as f32 - 0.5);
                    blk[o..o + 2].copy_from_slice(&v.to_le_bytes());
                }
                if ty == GgmlType::F32 {
                    blk.copy_from_slice(&(rng.uniform() as f32).to_le_bytes());
                }
            }
            let wide = dequantize(ty, &bytes, n).unwrap();
            let narrow = crate::gguf::dequantize(ty, &bytes, n).unwrap();
            for (i, (a, b)) in wide.iter().zip(&narrow).enumerate() {
                assert!(
                    (a - *b as f64).abs() <= a.abs() * 2f64.powi(-24),
                    "{ty} element {i}: {a} vs {b}"
                );
            }
        }
        assert!(matches!(
            dequantize(GgmlType::Q4_0, &[0; 17], 32),
            Err(QuantError::WrongByteLength { .. })
        ));
    }
}
