//! GGUF (v2/v3) model files, on the CPU: container parsing ([`container`]), dequantization
//! ([`quant`]), tokenizer conversion ([`tokenizer`]) and the Llama architecture summary and
//! tensor-name mapping (this module). No GPU code: the fuzz targets build it alone.
//!
//! # RoPE convention of GGUF `llama` files
//!
//! llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.modify_tensors`)
//! passes every Hugging Face `q_proj.weight` (with `n_head`) and
//! `k_proj.weight` (with `n_head_kv`) through
//!
//! ```text
//! permute(w, n_head) = w.reshape(n_head, 2, head_dim/2, in)
//!                       .swapaxes(1, 2)
//!                       .reshape(out, in)
//! ```
//!
//! Within each head, GGUF row `2i` is HF row `i` and GGUF row `2i+1` is HF
//! row `i + head_dim/2`. HF Llama applies RoPE with `rotate_half`, rotating
//! the *half-split* pairs `(i, i + head_dim/2)`; after the permutation those
//! pairs sit at `(2i, 2i+1)`. llama.cpp runs `arch = "llama"` with
//! `LLAMA_ROPE_TYPE_NORM` ("normal RoPE, operating on pairs of consecutive
//! head values"). So a GGUF llama file expects the **adjacent-pair
//! (interleaved) RoPE**: rotate `(x[2i], x[2i+1])` by `pos * base^(-2i/d)`.
//! Either apply interleaved RoPE to Q/K computed with the GGUF weights, or
//! un-permute the Q/K rows with [`hf_row_of_gguf_row`] and use half-split RoPE
//! as in HF. Frequencies are the same (`base^(-2i/d)` for pair `i`) in both
//! conventions. V, O and all other tensors are not permuted. Since the
//! attention scores `q·k` are invariant when Q and K are permuted alike, the
//! permutation is invisible except through RoPE.

pub mod container;
pub mod quant;
pub mod tokenizer;
pub mod write;

use thiserror::Error;

pub use container::{Gguf, GgufError, TensorInfo, Value};
pub use quant::{GgmlType, QuantError, dequantize};

/// Errors from [`model_summary`].
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ModelError {
    /// Missing or mistyped metadata.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// `general.architecture` is not `"llama"`.
    #[error("general.architecture = {0:?} is not supported (only \"llama\")")]
    UnsupportedArchitecture(String),
    /// Mixture-of-experts model.
    #[error("llama.expert_count = {0}: mixture-of-experts models are not supported")]
    MixtureOfExperts(u64),
    /// RoPE scaling requested.
    #[error("RoPE scaling is not supported ({0})")]
    RopeScaling(String),
    /// Rotary dimension differs from the head dimension.
    #[error(
        "partial rotary embedding is not supported: llama.rope.dimension_count = {rope_dim}, head dim = {head_dim}"
    )]
    PartialRotary {
        /// Rotary dimensions.
        rope_dim: u64,
        /// Head dimension.
        head_dim: u64,
    },
    /// A tensor with a bias.
    #[error("tensor {0:?}: biases are not supported")]
    Bias(String),
    /// Inconsistent hyper-parameters.
    #[error("invalid hyper-parameters: {0}")]
    BadHyperParameters(String),
    /// A tensor the architecture needs is missing.
    #[error("required tensor {0:?} is missing")]
    MissingTensor(String),
    /// A tensor has an unexpected shape.
    #[error(
        "tensor {name:?} has dims {found:?}, expected {expected:?} (ggml order, innermost first)"
    )]
    BadShape {
        /// Tensor name.
        name: String,
        /// Dims found.
        found: Vec<u64>,
        /// Dims expected.
        expected: Vec<u64>,
    },
    /// A tensor name that is not part of the Llama layout.
    #[error("unexpected tensor {0:?}")]
    UnexpectedTensor(String),
}

/// Hyper-parameters of a `llama` architecture GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// Number of transformer blocks (`llama.block_count`).
    pub n_layers: u32,
    /// Hidden size D (`llama.embedding_length`).
    pub d_model: u32,
    /// FFN inner size (`llama.feed_forward_length`).
    pub d_ff: u32,
    /// Query heads (`llama.attention.head_count`).
    pub n_heads: u32,
    /// Key/value heads (`llama.attention.head_count_kv`, default = `n_heads`).
    pub n_kv_heads: u32,
    /// Per-head dimension (`d_model / n_heads`).
    pub head_dim: u32,
    /// Rotary dimensions (`llama.rope.dimension_count`, default = `head_dim`); always equals `head_dim`.
    pub rope_dim: u32,
    /// RoPE base θ (`llama.rope.freq_base`, default 10000).
    pub rope_freq_base: f32,
    /// RMSNorm ε (`llama.attention.layer_norm_rms_epsilon`).
    pub rms_norm_eps: f32,
    /// Training context length (`llama.context_length`).
    pub context_length: u32,
    /// Vocabulary size (`llama.vocab_size`, else the length of `tokenizer.ggml.tokens`).
    pub vocab_size: u32,
    /// True when there is no `output.weight` and the LM head reuses `token_embd.weight`.
    pub tied_embeddings: bool,
}

fn u32_key(g: &Gguf<'_>, key: &str) -> Result<u32, ModelError> {
    let v = g.uint(key)?;
    u32::try_from(v)
        .map_err(|_| ModelError::BadHyperParameters(format!("{key} = {v} does not fit in u32")))
}

fn opt_u32_key(g: &Gguf<'_>, key: &str) -> Result<Option<u32>, ModelError> {
    match g.get(key) {
        None => Ok(None),
        Some(_) => u32_key(g, key).map(Some),
    }
}

/// Reads and validates the hyper-parameters and tensor set of a `llama` GGUF
/// file, refusing (by name) what a plain dense Llama runner cannot execute:
/// other architectures, mixture of experts, RoPE scaling (scaling keys or a
/// `rope_freqs.weight` tensor), partial rotary, biases, and missing or
/// mis-shaped tensors.
pub fn model_summary(g: &Gguf<'_>) -> Result<ModelSummary, ModelError> {
    let arch = g.str("general.architecture")?;
    if arch != "llama" {
        return Err(ModelError::UnsupportedArchitecture(arch.to_string()));
    }
    if let Some(n) = g
        .get("llama.expert_count")
        .map(|_| g.uint("llama.expert_count"))
        .transpose()?
        && n > 0
    {
        return Err(ModelError::MixtureOfExperts(n));
    }
    if g.get("llama.rope.scaling.type").is_some() {
        let t = g.str("llama.rope.scaling.type")?;
        if t != "none" {
            return Err(ModelError::RopeScaling(format!(
                "llama.rope.scaling.type = {t:?}"
            )));
        }
    }
    if let Some(Value::F32(f)) = g.get("llama.rope.scaling.factor")
        && *f != 0.0
        && *f != 1.0
        && g.get("llama.rope.scaling.type").is_none()
    {
        return Err(ModelError::RopeScaling(format!(
            "llama.rope.scaling.factor = {f}"
        )));
    }
    if g.tensor("rope_freqs.weight").is_some() {
        return Err(ModelError::RopeScaling(
            "tensor rope_freqs.weight (Llama 3.1 style frequency factors)".into(),
        ));
    }
    if let Some(t) = g.tensors().iter().find(|t| t.name.ends_with(".bias")) {
        return Err(ModelError::Bias(t.name.clone()));
    }

    let n_layers = u32_key(g, "llama.block_count")?;
    let d_model = u32_key(g, "llama.embedding_length")?;
    let d_ff = u32_key(g, "llama.feed_forward_length")?;
    let n_heads = u32_key(g, "llama.attention.head_count")?;
    let n_kv_heads = opt_u32_key(g, "llama.attention.head_count_kv")?.unwrap_or(n_heads);
    let context_length = u32_key(g, "llama.context_length")?;
    let rms_norm_eps = g.f32("llama.attention.layer_norm_rms_epsilon")?;
    let rope_freq_base = match g.get("llama.rope.freq_base") {
        None => 10000.0,
        Some(_) => g.f32("llama.rope.freq_base")?,
    };
    let bad = |s: String| Err(ModelError::BadHyperParameters(s));
    if n_layers == 0 || d_model == 0 || d_ff == 0 || n_heads == 0 || n_kv_heads == 0 {
        return bad(
            "block_count, embedding_length, feed_forward_length and head counts must be nonzero"
                .into(),
        );
    }
    if d_model % n_heads != 0 {
        return bad(format!(
            "embedding_length {d_model} is not a multiple of head_count {n_heads}"
        ));
    }
    if n_heads % n_kv_heads != 0 {
        return bad(format!(
            "head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}"
        ));
    }
    let head_dim = d_model / n_heads;
    if head_dim % 2 != 0 {
        return bad(format!("head dim {head_dim} is odd"));
    }
    for key in ["llama.attention.key_length", "llama.attention.value_length"] {
        if let Some(v) = opt_u32_key(g, key)?
            && v != head_dim
        {
            return bad(format!(
                "{key} = {v} differs from embedding_length / head_count = {head_dim}"
            ));
        }
    }
    let rope_dim = opt_u32_key(g, "llama.rope.dimension_count")?.unwrap_or(head_dim);
    if rope_dim != head_dim {
        return Err(ModelError::PartialRotary {
            rope_dim: rope_dim as u64,
            head_dim: head_dim as u64,
        });
    }
    let positive_finite = |x: f32| x.is_finite() && x > 0.0;
    if !positive_finite(rms_norm_eps) || !positive_finite(rope_freq_base) {
        return bad(format!(
            "rms eps {rms_norm_eps} / rope base {rope_freq_base} must be positive and finite"
        ));
    }
    let vocab_size = match opt_u32_key(g, "llama.vocab_size")? {
        Some(v) => v,
        None => match g.get("tokenizer.ggml.tokens") {
            Some(_) => g.string_array("tokenizer.ggml.tokens")?.len() as u32,
            None => {
                return Err(ModelError::Gguf(GgufError::MissingKey {
                    key: "llama.vocab_size".into(),
                }));
            }
        },
    };
    if vocab_size == 0 {
        return bad("vocabulary is empty".into());
    }

    let tied_embeddings = g.tensor("output.weight").is_none();
    let summary = ModelSummary {
        n_layers,
        d_model,
        d_ff,
        n_heads,
        n_kv_heads,
        head_dim,
        rope_dim,
        rope_freq_base,
        rms_norm_eps,
        context_length,
        vocab_size,
        tied_embeddings,
    };
    check_tensors(g, &summary)?;
    Ok(summary)
}

/// Expected tensors of a Llama model with their ggml dims (innermost first).
pub fn expected_tensors(s: &ModelSummary) -> Vec<(String, Vec<u64>)> {
    expected_tensor_iter(s).collect()
}

/// [`expected_tensors`] one at a time: `llama.block_count` is whatever the file says (up to
/// 2^32 - 1), so the list is only ever walked as far as the file's own tensors reach.
fn expected_tensor_iter(s: &ModelSummary) -> impl Iterator<Item = (String, Vec<u64>)> + '_ {
    let (d, ff, v) = (s.d_model as u64, s.d_ff as u64, s.vocab_size as u64);
    let kv = s.n_kv_heads as u64 * s.head_dim as u64;
    let head = [
        Some(("token_embd.weight".to_string(), vec![d, v])),
        Some(("output_norm.weight".to_string(), vec![d])),
        (!s.tied_embeddings).then(|| ("output.weight".to_string(), vec![d, v])),
    ];
    let blocks = (0..s.n_layers).flat_map(move |i| {
        let b = move |n: &str| format!("blk.{i}.{n}.weight");
        [
            (b("attn_norm"), vec![d]),
            (b("attn_q"), vec![d, d]),
            (b("attn_k"), vec![d, kv]),
            (b("attn_v"), vec![d, kv]),
            (b("attn_output"), vec![d, d]),
            (b("ffn_norm"), vec![d]),
            (b("ffn_gate"), vec![d, ff]),
            (b("ffn_up"), vec![d, ff]),
            (b("ffn_down"), vec![ff, d]),
        ]
    });
    head.into_iter().flatten().chain(blocks)
}

fn check_tensors(g: &Gguf<'_>, s: &ModelSummary) -> Result<(), ModelError> {
    // Walked lazily and stopped at the first missing tensor: tensor names are unique, so this
    // looks at no more names than the file has tensors, whatever block_count claims.
    let mut known = std::collections::HashSet::new();
    for (name, dims) in expected_tensor_iter(s) {
        let t = g
            .tensor(&name)
            .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
        if t.dims != dims {
            return Err(ModelError::BadShape {
                name,
                found: t.dims.clone(),
                expected: dims,
            });
        }
        known.insert(t.name.as_str());
    }
    if let Some(t) = g
        .tensors()
        .iter()
        .find(|t| !known.contains(t.name.as_str()))
    {
        return Err(ModelError::UnexpectedTensor(t.name.clone()));
    }
    Ok(())
}

/// Maps a GGUF llama tensor name to the Hugging Face `LlamaForCausalLM` name.
///
/// | GGUF | Hugging Face |
/// |------|--------------|
/// | `token_embd.weight` | `model.embed_tokens.weight` |
/// | `blk.N.attn_q.weight` | `model.layers.N.self_attn.q_proj.weight` (rows permuted, see crate docs) |
/// | `blk.N.attn_k.weight` | `model.layers.N.self_attn.k_proj.weight` (rows permuted) |
/// | `blk.N.attn_v.weight` | `model.layers.N.self_attn.v_proj.weight` |
/// | `blk.N.attn_output.weight` | `model.layers.N.self_attn.o_proj.weight` |
/// | `blk.N.attn_norm.weight` | `model.layers.N.input_layernorm.weight` |
/// | `blk.N.ffn_norm.weight` | `model.layers.N.post_attention_layernorm.weight` |
/// | `blk.N.ffn_gate.weight` | `model.layers.N.mlp.gate_proj.weight` |
/// | `blk.N.ffn_up.weight` | `model.layers.N.mlp.up_proj.weight` |
/// | `blk.N.ffn_down.weight` | `model.layers.N.mlp.down_proj.weight` |
/// | `output_norm.weight` | `model.norm.weight` |
/// | `output.weight` | `lm_head.weight` (absent: tied to `model.embed_tokens.weight`) |
///
/// GGUF dims are in ggml order (innermost first), the reverse of the
/// PyTorch shape: `[in, out]` for a weight that HF stores as `[out, in]`.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (n, rest) = rest.split_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0'))
    {
        return None;
    }
    let part = rest.strip_suffix(".weight")?;
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{n}.{hf}.weight"))
}

/// The GGUF name of a Hugging Face Llama tensor name (the inverse of [`hf_tensor_name`]).
pub fn gguf_tensor_name(hf_name: &str) -> Option<String> {
    match hf_name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (n, rest) = rest.split_once('.')?;
    let part = rest.strip_suffix(".weight")?;
    let gguf = match part {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    let name = format!("blk.{n}.{gguf}.weight");
    (hf_tensor_name(&name).as_deref() == Some(hf_name)).then_some(name)
}

/// The GGUF → Hugging Face name pairs for every tensor in the file (names
/// with no mapping are left out).
pub fn tensor_name_map(g: &Gguf<'_>) -> Vec<(String, String)> {
    g.tensors()
        .iter()
        .filter_map(|t| hf_tensor_name(&t.name).map(|h| (t.name.clone(), h)))
        .collect()
}

/// For a row `r` of a GGUF `attn_q`/`attn_k` weight (output feature `r`),
/// the row of the Hugging Face `q_proj`/`k_proj` weight it came from.
///
/// Within head `h = r / head_dim`, GGUF row `2i + j` (j in {0, 1}) holds HF
/// row `j * head_dim/2 + i`. Un-permuting with this lets a runner use
/// half-split (`rotate_half`) RoPE; without it, use adjacent-pair RoPE.
pub fn hf_row_of_gguf_row(r: usize, head_dim: usize) -> usize {
    let (h, w) = (r / head_dim, r % head_dim);
    let (i, j) = (w / 2, w % 2);
    h * head_dim + j * (head_dim / 2) + i
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;
    use crate::gguf::container::build::*;

    #[test]
    fn names() {
        assert_eq!(
            hf_tensor_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(
            hf_tensor_name("blk.12.attn_output.weight").unwrap(),
            "model.layers.12.self_attn.o_proj.weight"
        );
        assert_eq!(
            hf_tensor_name("blk.3.ffn_norm.weight").unwrap(),
            "model.layers.3.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf_tensor_name("blk.0.ffn_down.weight").unwrap(),
            "model.layers.0.mlp.down_proj.weight"
        );
        assert_eq!(hf_tensor_name("output.weight").unwrap(), "lm_head.weight");
        assert_eq!(hf_tensor_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_tensor_name("blk.1.attn_q.bias"), None);
        assert_eq!(hf_tensor_name("rope_freqs.weight"), None);
    }

    /// Re-implements the converter's permutation (reshape(n_head, 2, hd/2) →
    /// swapaxes(1, 2)) on row indices and checks the inverse map.
    #[test]
    fn rope_row_permutation() {
        let (n_head, hd) = (3usize, 8usize);
        // gguf_rows[new] = old, built the way numpy would lay out the swapped array
        let mut gguf_rows = Vec::new();
        for h in 0..n_head {
            for i in 0..hd / 2 {
                for j in 0..2 {
                    gguf_rows.push(h * hd + j * (hd / 2) + i);
                }
            }
        }
        for (new, &old) in gguf_rows.iter().enumerate() {
            assert_eq!(hf_row_of_gguf_row(new, hd), old);
        }
        // HF half-split pair (i, i + hd/2) lands on adjacent GGUF rows (2i, 2i+1)
        assert_eq!(hf_row_of_gguf_row(2, hd), 1);
        assert_eq!(hf_row_of_gguf_row(3, hd), 1 + hd / 2);
    }

    fn tiny(extra: Vec<Kv>, extra_tensors: &[&str]) -> Vec<u8> {
        let (d, ff, v, heads, kvh) = (8u64, 16u64, 4u64, 2u32, 1u32);
        let mut kvs = vec![
            kv_str("general.architecture", "llama"),
            kv_u32("llama.block_count", 1),
            kv_u32("llama.embedding_length", d as u32),
            kv_u32("llama.feed_forward_length", ff as u32),
            kv_u32("llama.attention.head_count", heads),
            kv_u32("llama.attention.head_count_kv", kvh),
            kv_u32("llama.context_length", 64),
            kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5),
            kv_f32("llama.rope.freq_base", 10000.0),
            kv_u32("llama.vocab_size", v as u32),
        ];
        kvs.extend(extra);
        let hd = d / heads as u64;
        let mut shapes: Vec<(String, Vec<u64>)> = vec![
            ("token_embd.weight".into(), vec![d, v]),
            ("output_norm.weight".into(), vec![d]),
            ("blk.0.attn_norm.weight".into(), vec![d]),
            ("blk.0.attn_q.weight".into(), vec![d, d]),
            ("blk.0.attn_k.weight".into(), vec![d, hd * kvh as u64]),
            ("blk.0.attn_v.weight".into(), vec![d, hd * kvh as u64]),
            ("blk.0.attn_output.weight".into(), vec![d, d]),
            ("blk.0.ffn_norm.weight".into(), vec![d]),
            ("blk.0.ffn_gate.weight".into(), vec![d, ff]),
            ("blk.0.ffn_up.weight".into(), vec![d, ff]),
            ("blk.0.ffn_down.weight".into(), vec![ff, d]),
        ];
        for n in extra_tensors {
            shapes.push((n.to_string(), vec![d]));
        }
        let mut off = 0;
        let ts: Vec<T> = shapes
            .into_iter()
            .map(|(name, dims)| {
                let n: u64 = dims.iter().product();
                let t = T {
                    name,
                    dims,
                    ty: 0,
                    offset: off,
                    data: vec![0; 4 * n as usize],
                };
                off = (off + 4 * n).next_multiple_of(32);
                t
            })
            .collect();
        file(&kvs, &ts)
    }

    #[test]
    fn summary_of_tiny_model() {
        let bytes = tiny(vec![], &[]);
        let g = Gguf::parse(&bytes).unwrap();
        let s = model_summary(&g).unwrap();
        assert_eq!(
            (s.n_layers, s.d_model, s.head_dim, s.n_kv_heads, s.rope_dim),
            (1, 8, 4, 1, 4)
        );
        assert!(s.tied_embeddings);
        assert_eq!(tensor_name_map(&g).len(), 11);
    }

    #[test]
    fn refusals() {
        let check = |extra: Vec<Kv>, tensors: &[&str], want: &str| {
            let bytes = tiny(extra, tensors);
            let g = Gguf::parse(&bytes).unwrap();
            let e = model_summary(&g).unwrap_err();
            assert!(e.to_string().contains(want), "{e} does not mention {want}");
        };
        check(vec![kv_u32("llama.expert_count", 8)], &[], "expert_count");
        check(
            vec![kv_str("llama.rope.scaling.type", "linear")],
            &[],
            "llama.rope.scaling.type",
        );
        check(
            vec![kv_u32("llama.rope.dimension_count", 2)],
            &[],
            "partial rotary",
        );
        check(vec![], &["blk.0.attn_q.bias"], "blk.0.attn_q.bias");
        check(vec![], &["rope_freqs.weight"], "rope_freqs");
        check(vec![], &["blk.0.weird.weight"], "unexpected tensor");
        // none is accepted
        let bytes = tiny(vec![kv_str("llama.rope.scaling.type", "none")], &[]);
        assert!(model_summary(&Gguf::parse(&bytes).unwrap()).is_ok());
        let mut kvs = vec![kv_str("general.architecture", "qwen2")];
        kvs.push(kv_u32("x", 1));
        let bytes = file(&kvs, &[]);
        assert_eq!(
            model_summary(&Gguf::parse(&bytes).unwrap()).unwrap_err(),
            ModelError::UnsupportedArchitecture("qwen2".into())
        );
    }
}
