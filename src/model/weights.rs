//! Weights on the host: safetensors shards parsed from bytes, checked against the config, and the
//! few conversions the GPU upload and the float64 reference need.
//!
//! Parsing works on byte buffers only, so the browser can hand in what it fetched; reading a
//! directory is a separate, native-only step (`super::files`).

use super::config::Config;
use crate::attention::Mode;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

/// Storage type of a weight tensor. 16-bit types stay 16-bit on the GPU (packed in u32 pairs);
/// the ggml block types (from GGUF files) stay as their block bytes and are dequantized inside
/// the product and embedding kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum WeightDtype {
    F32,
    F16,
    BF16,
    /// ggml Q8_0: blocks of 32, an f16 scale and 32 signed bytes.
    Q8_0,
    /// ggml Q4_0: blocks of 32, an f16 scale and 32 nibbles offset by 8.
    Q4_0,
    /// ggml Q4_1: blocks of 32, an f16 scale, an f16 minimum and 32 nibbles.
    Q4_1,
    /// ggml Q4_K: super-blocks of 256 with 6-bit sub-block scales and minimums.
    Q4_K,
    /// ggml Q6_K: super-blocks of 256, 6-bit values with 8-bit sub-block scales.
    Q6_K,
}

impl WeightDtype {
    /// Every storage type, in [`WeightDtype::shader_code`] order.
    pub const ALL: [WeightDtype; 8] = [
        WeightDtype::F32,
        WeightDtype::F16,
        WeightDtype::BF16,
        WeightDtype::Q8_0,
        WeightDtype::Q4_0,
        WeightDtype::Q4_1,
        WeightDtype::Q4_K,
        WeightDtype::Q6_K,
    ];

    /// The ggml block types.
    pub const QUANTIZED: [WeightDtype; 5] = [
        WeightDtype::Q8_0,
        WeightDtype::Q4_0,
        WeightDtype::Q4_1,
        WeightDtype::Q4_K,
        WeightDtype::Q6_K,
    ];

    /// The same layout as a ggml type (the float types have one too).
    pub fn ggml(self) -> GgmlType {
        match self {
            WeightDtype::F32 => GgmlType::F32,
            WeightDtype::F16 => GgmlType::F16,
            WeightDtype::BF16 => GgmlType::BF16,
            WeightDtype::Q8_0 => GgmlType::Q8_0,
            WeightDtype::Q4_0 => GgmlType::Q4_0,
            WeightDtype::Q4_1 => GgmlType::Q4_1,
            WeightDtype::Q4_K => GgmlType::Q4_K,
            WeightDtype::Q6_K => GgmlType::Q6_K,
        }
    }

    /// The storage type of a ggml tensor type (every one the GGUF parser accepts has one).
    pub fn from_ggml(ty: GgmlType) -> Self {
        *Self::ALL
            .iter()
            .find(|d| d.ggml() == ty)
            .expect("every supported ggml type is a weight type")
    }

    /// The type's lower-case name (`"f16"`, `"q4_k"`), as the browser build reports it.
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::BF16 => "bf16",
            WeightDtype::Q8_0 => "q8_0",
            WeightDtype::Q4_0 => "q4_0",
            WeightDtype::Q4_1 => "q4_1",
            WeightDtype::Q4_K => "q4_k",
            WeightDtype::Q6_K => "q6_k",
        }
    }

    /// True for the ggml block types.
    pub fn is_quantized(self) -> bool {
        self.ggml().block_size() > 1
    }

    /// Elements per block (1 for the float types): rows must hold whole blocks.
    pub fn block_size(self) -> usize {
        self.ggml().block_size() as usize
    }

    /// Bytes that `elements` values take, or `None` when they are not whole blocks.
    pub fn bytes_for(self, elements: usize) -> Option<usize> {
        let ty = self.ggml();
        ty.bytes_for(elements as u64)
            .ok()
            .and_then(|b| usize::try_from(b).ok())
    }

    /// The value of the shaders' `WEIGHT_DTYPE` constant (matmul.wgsl, embed.wgsl, dequant.wgsl).
    pub fn shader_code(self) -> u32 {
        Self::ALL
            .iter()
            .position(|&d| d == self)
            .expect("listed in ALL") as u32
    }
}

/// Where one tensor lives: shard index, dtype, shape and byte range in that shard.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub shard: usize,
    pub dtype: WeightDtype,
    pub shape: Vec<usize>,
    pub bytes: Range<usize>,
}

/// One safetensors file's bytes and the name it came from (for error messages).
pub struct Shard {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// All tensors of a model, validated for format; [`HostWeights::check`] validates them against a
/// config.
pub struct HostWeights {
    shards: Vec<Shard>,
    tensors: BTreeMap<String, TensorInfo>,
}

/// Parses `model.safetensors.index.json`: the shard file names it references, in first-use order.
pub fn parse_index(path: &str, text: &str) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let index: Index = serde_json::from_str(text).map_err(|e| Error::Format {
        path: path.to_string(),
        message: format!("malformed safetensors index: {e}"),
    })?;
    let mut files: Vec<String> = index.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(Error::Format {
            path: path.to_string(),
            message: "the safetensors index lists no tensors".into(),
        });
    }
    Ok(files)
}

fn describe_safetensors_error(e: safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall | E::InvalidHeaderLength | E::MetadataIncompleteBuffer => {
            format!("safetensors file is truncated ({e})")
        }
        other => format!("safetensors header is damaged ({other})"),
    }
}

impl HostWeights {
    /// Parses safetensors shards. A tensor name in two shards is an error.
    pub fn from_shards(shards: Vec<Shard>) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            let parsed = SafeTensors::deserialize(&shard.bytes).map_err(|e| Error::Format {
                path: shard.name.clone(),
                message: describe_safetensors_error(e),
            })?;
            let base = shard.bytes.as_ptr() as usize;
            for (name, view) in parsed.iter() {
                let dtype = match view.dtype() {
                    Dtype::F32 => WeightDtype::F32,
                    Dtype::F16 => WeightDtype::F16,
                    Dtype::BF16 => WeightDtype::BF16,
                    other => {
                        return Err(Error::Format {
                            path: shard.name.clone(),
                            message: format!(
                                "tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"
                            ),
                        });
                    }
                };
                let start = view.data().as_ptr() as usize - base;
                let info = TensorInfo {
                    shard: i,
                    dtype,
                    shape: view.shape().to_vec(),
                    bytes: start..start + view.data().len(),
                };
                if tensors.insert(name.to_string(), info).is_some() {
                    return Err(Error::Format {
                        path: shard.name.clone(),
                        message: format!("tensor `{name}` appears in more than one shard"),
                    });
                }
            }
        }
        Ok(Self { shards, tensors })
    }

    /// Tensors already decoded (a GGUF file's, dequantized): each becomes its own shard, labelled
    /// `origin:name` in errors.
    pub fn from_tensors(
        origin: &str,
        tensors: Vec<(String, WeightDtype, Vec<usize>, Vec<u8>)>,
    ) -> Result<Self> {
        let mut map = BTreeMap::new();
        let mut shards = Vec::with_capacity(tensors.len());
        for (name, dtype, shape, bytes) in tensors {
            let elements: usize = shape.iter().product();
            // Blocks run along rows, so a row must hold whole blocks.
            let row = shape.last().copied().unwrap_or(1);
            if !row.is_multiple_of(dtype.block_size()) {
                return Err(Error::Format {
                    path: origin.to_string(),
                    message: format!(
                        "tensor `{name}` of shape {shape:?} has rows of {row} {dtype:?} values, \
                         not a whole number of {}-value blocks",
                        dtype.block_size()
                    ),
                });
            }
            if dtype.bytes_for(elements) != Some(bytes.len()) {
                return Err(Error::Format {
                    path: origin.to_string(),
                    message: format!(
                        "tensor `{name}` of shape {shape:?} has {} bytes",
                        bytes.len()
                    ),
                });
            }
            let info = TensorInfo {
                shard: shards.len(),
                dtype,
                shape,
                bytes: 0..bytes.len(),
            };
            shards.push(Shard {
                name: format!("{origin}:{name}"),
                bytes,
            });
            if map.insert(name.clone(), info).is_some() {
                return Err(Error::Format {
                    path: origin.to_string(),
                    message: format!("tensor `{name}` appears twice"),
                });
            }
        }
        Ok(Self {
            shards,
            tensors: map,
        })
    }

    /// The same weights with each head's Q and K rows reordered from half-split RoPE pairs
    /// (i, i + d/2), Hugging Face Llama's, into adjacent pairs (2i, 2i + 1), the engine's: row
    /// 2i + j of a head takes row j * d/2 + i. Attention scores do not change (Q and K move
    /// alike); only which rows RoPE rotates together does.
    pub fn with_adjacent_rope_pairs(&self, cfg: &Config, origin: &str) -> Result<Self> {
        let d = cfg.head_dim as usize;
        let mut out = Vec::with_capacity(self.tensors.len());
        for (name, info) in &self.tensors {
            let raw = &self.shards[info.shard].bytes[info.bytes.clone()];
            let qk = name.ends_with("self_attn.q_proj.weight")
                || name.ends_with("self_attn.k_proj.weight");
            let bytes = if qk {
                let row = raw.len() / info.shape[0];
                let mut b = vec![0u8; raw.len()];
                for r in 0..info.shape[0] {
                    let (head, w) = (r / d, r % d);
                    let from = head * d + (w % 2) * (d / 2) + w / 2;
                    b[r * row..(r + 1) * row].copy_from_slice(&raw[from * row..(from + 1) * row]);
                }
                b
            } else {
                raw.to_vec()
            };
            out.push((name.clone(), info.dtype, info.shape.clone(), bytes));
        }
        Self::from_tensors(origin, out)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            files: self.file_list(),
        })
    }

    fn file_list(&self) -> String {
        let names: Vec<&str> = self.shards.iter().map(|s| s.name.as_str()).collect();
        names.join(", ")
    }

    /// The raw little-endian bytes of a tensor as stored.
    pub fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.info(name)?;
        Ok((info, &self.shards[info.shard].bytes[info.bytes.clone()]))
    }

    /// A tensor widened to f32 (exact for f16 and bf16; block types dequantized in f32).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (info, raw) = self.raw(name)?;
        Ok(widen(info.dtype, raw))
    }

    /// A tensor in float64, exact for every type: what the float64 reference computes with.
    pub fn to_f64(&self, name: &str) -> Result<Vec<f64>> {
        let (info, raw) = self.raw(name)?;
        let ty = info.dtype.ggml();
        let n = raw.len() as u64 / ty.block_bytes() * ty.block_size();
        crate::reference::dequant::dequantize(ty, raw, n).map_err(|e| Error::Format {
            path: self.shards[info.shard].name.clone(),
            message: format!("tensor `{name}`: {e}"),
        })
    }

    /// Checks every tensor the config implies (name, shape) and that nothing else is present.
    pub fn check(&self, cfg: &Config) -> Result<()> {
        let embed = "model.embed_tokens.weight";
        let e = self.info(embed)?;
        let want = [cfg.vocab_size as usize, cfg.hidden_size as usize];
        if e.shape != want {
            return Err(Error::ConfigMismatch(format!(
                "vocab_size = {} and hidden_size = {} imply {embed} of shape {:?}, but it is {:?}",
                cfg.vocab_size, cfg.hidden_size, want, e.shape
            )));
        }
        let expected = expected_tensors(cfg);
        for (name, shape) in &expected {
            let info = self.info(name)?;
            if &info.shape != shape {
                return Err(Error::shape(
                    name,
                    format!("{shape:?}"),
                    format!("{:?}", info.shape),
                ));
            }
        }
        let known: HashMap<&str, ()> = expected.iter().map(|(n, _)| (n.as_str(), ())).collect();
        if let Some(extra) = self.names().find(|n| !known.contains_key(n)) {
            return Err(Error::ConfigMismatch(explain_extra(cfg, extra)));
        }
        // A NaN or infinite weight would silently turn every output into NaN: refuse it by name.
        for name in self.names() {
            let (info, raw) = self.raw(name)?;
            if let Some(i) = first_non_finite(info.dtype, raw) {
                return Err(Error::Model(format!(
                    "tensor `{name}` holds a non-finite value (NaN or infinity) at element {i}"
                )));
            }
        }
        Ok(())
    }

    /// Total bytes of tensor data (for progress reports).
    pub fn total_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.bytes.len() as u64).sum()
    }
}

fn explain_extra(cfg: &Config, name: &str) -> String {
    if let Some(rest) = name.strip_prefix("model.layers.")
        && let Some(layer) = rest.split('.').next().and_then(|l| l.parse::<u32>().ok())
        && layer >= cfg.num_hidden_layers
    {
        return format!(
            "num_hidden_layers = {} but the weights have layer {layer} (`{name}`)",
            cfg.num_hidden_layers
        );
    }
    if name.ends_with("lambda_proj.weight") {
        return format!(
            "attention = \"{}\" but the weights have `{name}` (a DIFF V2 tensor)",
            cfg.attention
        );
    }
    if name == "lm_head.weight" {
        return format!("tie_word_embeddings = true but the weights have `{name}`");
    }
    format!("unexpected tensor `{name}`")
}

/// Every tensor name the config implies, with its shape (linear weights are (out, in)).
pub fn expected_tensors(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let d_model = cfg.hidden_size as usize;
    let hd = cfg.head_dim as usize;
    let q_out = cfg.q_heads() as usize * hd;
    let kv_out = cfg.num_key_value_heads as usize * hd;
    let attn_out = cfg.num_attention_heads as usize * hd;
    let inter = cfg.intermediate_size as usize;
    let mut t = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size as usize, d_model],
    )];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        t.push((format!("{p}.input_layernorm.weight"), vec![d_model]));
        t.push((format!("{p}.self_attn.q_proj.weight"), vec![q_out, d_model]));
        t.push((
            format!("{p}.self_attn.k_proj.weight"),
            vec![kv_out, d_model],
        ));
        t.push((
            format!("{p}.self_attn.v_proj.weight"),
            vec![kv_out, d_model],
        ));
        t.push((
            format!("{p}.self_attn.o_proj.weight"),
            vec![d_model, attn_out],
        ));
        if cfg.mode() == Mode::Diff {
            t.push((
                format!("{p}.self_attn.lambda_proj.weight"),
                vec![cfg.num_attention_heads as usize, d_model],
            ));
        }
        t.push((
            format!("{p}.post_attention_layernorm.weight"),
            vec![d_model],
        ));
        t.push((format!("{p}.mlp.gate_proj.weight"), vec![inter, d_model]));
        t.push((format!("{p}.mlp.up_proj.weight"), vec![inter, d_model]));
        t.push((format!("{p}.mlp.down_proj.weight"), vec![d_model, inter]));
    }
    t.push(("model.norm.weight".to_string(), vec![d_model]));
    if !cfg.tie_word_embeddings {
        t.push((
            "lm_head.weight".to_string(),
            vec![cfg.vocab_size as usize, d_model],
        ));
    }
    t
}

/// Index of the first NaN or infinity in little-endian `raw` of `dtype` (all exponent bits set).
pub fn first_non_finite(dtype: WeightDtype, raw: &[u8]) -> Option<usize> {
    match dtype {
        WeightDtype::F32 => raw.chunks_exact(4).position(|b| {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000
        }),
        WeightDtype::F16 => raw
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        WeightDtype::BF16 => raw
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
        // A block's values are finite when its f16 scales are (the integers are small), so only
        // the scales are looked at; the index given is the block's first element.
        quantized => {
            let ty = quantized.ggml();
            let scales: &[usize] = match quantized {
                WeightDtype::Q4_1 | WeightDtype::Q4_K => &[0, 2],
                WeightDtype::Q6_K => &[208],
                _ => &[0],
            };
            raw.chunks_exact(ty.block_bytes() as usize)
                .position(|blk| {
                    scales
                        .iter()
                        .any(|&o| u16::from_le_bytes([blk[o], blk[o + 1]]) & 0x7c00 == 0x7c00)
                })
                .map(|b| b * ty.block_size() as usize)
        }
    }
}

/// Widens stored values to f32: f16 through `half`, bf16 by a 16-bit shift, block types through
/// the GGUF dequantizer. `raw` must be whole blocks (as every tensor's bytes are).
pub fn widen(dtype: WeightDtype, raw: &[u8]) -> Vec<f32> {
    match dtype {
        WeightDtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        WeightDtype::F16 => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        WeightDtype::BF16 => raw
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect(),
        quantized => {
            let ty = quantized.ggml();
            let n = raw.len() as u64 / ty.block_bytes() * ty.block_size();
            let whole = &raw[..(n / ty.block_size() * ty.block_bytes()) as usize];
            crate::gguf::dequantize(ty, whole, n).expect("whole blocks dequantize")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q4_k_block(d: f32) -> Vec<u8> {
        let mut b = vec![0x11u8; 144];
        b[0..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        b
    }

    #[test]
    fn block_rows_must_be_whole_blocks() {
        // 2 rows of 128 values: 256 values, one Q4_K block's worth, but no row is a block.
        let t = vec![(
            "w".to_string(),
            WeightDtype::Q4_K,
            vec![2, 128],
            q4_k_block(1.0),
        )];
        let err = HostWeights::from_tensors("t.gguf", t)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("not a whole number of 256-value blocks"),
            "{err}"
        );
        let t = vec![(
            "w".to_string(),
            WeightDtype::Q4_K,
            vec![1, 256],
            vec![0; 143],
        )];
        let err = HostWeights::from_tensors("t.gguf", t)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("has 143 bytes"), "{err}");
    }

    #[test]
    fn a_non_finite_block_scale_is_found() {
        let mut raw = q4_k_block(1.0);
        raw.extend(q4_k_block(f32::INFINITY));
        assert_eq!(first_non_finite(WeightDtype::Q4_K, &raw), Some(256));
        assert_eq!(first_non_finite(WeightDtype::Q4_K, &raw[..144]), None);
        let w = HostWeights::from_tensors(
            "t.gguf",
            vec![("w".into(), WeightDtype::Q4_K, vec![2, 256], raw)],
        )
        .unwrap();
        assert_eq!(w.to_f64("w").unwrap().len(), 512);
        assert_eq!(w.to_f32("w").unwrap().len(), 512);
    }

    #[test]
    fn shader_codes_follow_the_wgsl_constants() {
        // dequant.wgsl's DQ_ constants.
        let codes: Vec<u32> = WeightDtype::QUANTIZED
            .iter()
            .map(|d| d.shader_code())
            .collect();
        assert_eq!(codes, [3, 4, 5, 6, 7]);
        for d in WeightDtype::ALL {
            assert_eq!(WeightDtype::from_ggml(d.ggml()), d);
        }
    }
}
