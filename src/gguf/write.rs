//! Writing GGUF (v3) files and quantizing to the block types a writer needs: what the project's
//! own tooling uses to make test and benchmark models (random weights of a real architecture) in
//! the format people download, so that they load through the same path as a real checkpoint.

use super::quant::GgmlType;

/// File alignment of the tensor data (ggml's default, `general.alignment` unset).
const ALIGNMENT: usize = 32;

/// A metadata value the writer can store.
#[derive(Clone, Debug)]
pub enum MetaValue {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// An array of strings.
    Strs(Vec<String>),
    /// An array of i32.
    I32s(Vec<i32>),
}

/// A GGUF file being assembled: metadata in order, then tensors in order.
#[derive(Default)]
pub struct GgufWriter {
    meta: Vec<(String, MetaValue)>,
    /// (name, ggml dims innermost first, type, encoded bytes).
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    /// Adds a metadata entry.
    pub fn meta(&mut self, key: &str, value: MetaValue) -> &mut Self {
        self.meta.push((key.to_string(), value));
        self
    }

    /// Adds a tensor of `shape` (outermost first, as in safetensors) encoded as `ty` from f32
    /// values. Refused: a type the writer cannot quantize to, or rows that are not whole blocks.
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ty: GgmlType,
        values: &[f32],
    ) -> Result<&mut Self, String> {
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(format!(
                "tensor `{name}`: {} values for shape {shape:?}",
                values.len()
            ));
        }
        let row = *shape.last().unwrap_or(&1);
        if !(row as u64).is_multiple_of(ty.block_size()) {
            return Err(format!(
                "tensor `{name}`: rows of {row} are not whole {} blocks",
                ty.name()
            ));
        }
        let bytes = quantize(ty, values)?;
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensors.push((name.to_string(), dims, ty, bytes));
        Ok(self)
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        put_u32(&mut out, 3);
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, self.meta.len() as u64);
        for (key, value) in &self.meta {
            put_str(&mut out, key);
            put_value(&mut out, value);
        }
        let mut offset = 0usize;
        for (name, dims, ty, bytes) in &self.tensors {
            put_str(&mut out, name);
            put_u32(&mut out, dims.len() as u32);
            for &d in dims {
                put_u64(&mut out, d);
            }
            put_u32(&mut out, ty.id());
            put_u64(&mut out, offset as u64);
            offset = (offset + bytes.len()).next_multiple_of(ALIGNMENT);
        }
        out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
        for (_, _, _, bytes) in &self.tensors {
            out.extend(bytes);
            out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
        }
        out
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend(v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend(v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend(s.as_bytes());
}

/// GGUF value type ids (see [`super::container::ValueType`]).
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

fn put_value(out: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U32(v) => {
            put_u32(out, T_U32);
            put_u32(out, *v);
        }
        MetaValue::F32(v) => {
            put_u32(out, T_F32);
            out.extend(v.to_le_bytes());
        }
        MetaValue::Bool(v) => {
            put_u32(out, T_BOOL);
            out.push(*v as u8);
        }
        MetaValue::Str(s) => {
            put_u32(out, T_STRING);
            put_str(out, s);
        }
        MetaValue::Strs(items) => {
            put_u32(out, T_ARRAY);
            put_u32(out, T_STRING);
            put_u64(out, items.len() as u64);
            for s in items {
                put_str(out, s);
            }
        }
        MetaValue::I32s(items) => {
            put_u32(out, T_ARRAY);
            put_u32(out, T_I32);
            put_u64(out, items.len() as u64);
            for v in items {
                out.extend(v.to_le_bytes());
            }
        }
    }
}

/// Encodes f32 values as `ty`: F32, F16, BF16, Q8_0 (a scale per 32 values, max |x| / 127),
/// Q4_0 (max |x| / -8, as ggml picks the sign) and Q4_1 (scale and minimum per 32 values,
/// round-to-nearest); the k-quants are read-only here.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, String> {
    let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
    let blocks = values.chunks(32);
    let mut out = Vec::new();
    match ty {
        GgmlType::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        GgmlType::F16 => values.iter().for_each(|&v| out.extend(f16(v))),
        GgmlType::BF16 => values
            .iter()
            .for_each(|&v| out.extend(half::bf16::from_f32(v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for b in blocks {
                let amax = b.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16(d));
                out.extend(
                    b.iter()
                        .map(|x| (x * inv).round().clamp(-127.0, 127.0) as i8 as u8),
                );
            }
        }
        GgmlType::Q4_0 => {
            for b in blocks {
                // The value of largest magnitude maps to -8, so the grid reaches it exactly.
                let max = b
                    .iter()
                    .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
                let d = max / -8.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16(d));
                let q = |x: f32| ((x * inv + 8.5).floor() as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|i| q(b[i]) | (q(b[i + 16]) << 4)));
            }
        }
        GgmlType::Q4_1 => {
            for b in blocks {
                let min = b.iter().fold(f32::INFINITY, |m, &x| m.min(x));
                let max = b.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let d = (max - min) / 15.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16(d));
                out.extend(f16(min));
                let q = |x: f32| (((x - min) * inv).round() as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|i| q(b[i]) | (q(b[i + 16]) << 4)));
            }
        }
        GgmlType::Q4_K | GgmlType::Q6_K => {
            return Err(format!("writing {} is not implemented", ty.name()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{Gguf, dequantize};

    fn values(n: usize) -> Vec<f32> {
        let mut rng = crate::util::Rng::new(3);
        rng.normals(n, 0.05)
    }

    #[test]
    fn quantized_values_round_trip_within_half_a_step() {
        let x = values(32 * 20);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let bytes = quantize(ty, &x).unwrap();
            assert_eq!(bytes.len() as u64, ty.bytes_for(x.len() as u64).unwrap());
            let y = dequantize(ty, &bytes, x.len() as u64).unwrap();
            for (b, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let range = xb.iter().fold(0f32, |m, v| m.max(v.abs())) * 2.0;
                // Half a step; Q4_0's grid stops one step short of the opposite extreme, so
                // there a whole step.
                let bound = match ty {
                    GgmlType::Q8_0 => range / 254.0 * 0.5,
                    GgmlType::Q4_0 => range / 16.0,
                    _ => range / 15.0 * 0.5,
                };
                for (a, c) in xb.iter().zip(yb) {
                    // Plus the f16 rounding of the scale.
                    assert!((a - c).abs() <= bound + range * 1e-3, "{ty:?} block {b}");
                }
            }
        }
    }

    #[test]
    fn written_file_parses_with_its_metadata_and_tensors() {
        let x = values(64 * 32);
        let mut w = GgufWriter::default();
        w.meta("general.architecture", MetaValue::Str("llama".into()))
            .meta("llama.block_count", MetaValue::U32(2))
            .meta("a.f", MetaValue::F32(0.5))
            .meta("a.b", MetaValue::Bool(true))
            .meta("a.s", MetaValue::Strs(vec!["x".into(), "yz".into()]))
            .meta("a.i", MetaValue::I32s(vec![1, -2]));
        w.tensor("m", &[64, 32], GgmlType::Q4_1, &x).unwrap();
        w.tensor("v", &[5], GgmlType::F32, &x[..5]).unwrap();
        let bytes = w.to_bytes();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.str("general.architecture").unwrap(), "llama");
        assert_eq!(g.uint("llama.block_count").unwrap(), 2);
        assert!(g.bool("a.b").unwrap());
        let t = &g.tensors()[0];
        assert_eq!(
            (t.name.as_str(), t.dims.as_slice()),
            ("m", &[32u64, 64][..])
        );
        let back = dequantize(t.ty, g.tensor_bytes(t), t.n_elements).unwrap();
        assert_eq!(back.len(), x.len());
        let v = &g.tensors()[1];
        let back = dequantize(v.ty, g.tensor_bytes(v), v.n_elements).unwrap();
        assert_eq!(back, &x[..5]);
    }

    #[test]
    fn partial_blocks_and_k_quants_are_refused() {
        let mut w = GgufWriter::default();
        assert!(w.tensor("m", &[2, 48], GgmlType::Q8_0, &[0.0; 96]).is_err());
        assert!(
            w.tensor("m", &[1, 256], GgmlType::Q4_K, &[0.0; 256])
                .is_err()
        );
        assert!(w.tensor("m", &[2, 2], GgmlType::F32, &[0.0; 3]).is_err());
    }
}
