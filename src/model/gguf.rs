//! A GGUF file (architecture `llama`) as a model: config, weights and tokenizer.
//!
//! The file's Q and K rows already suit the engine's RoPE: llama.cpp's converter permutes them so
//! that adjacent pairs (2i, 2i + 1) rotate together, which is the pairing the engine uses (see
//! [`crate::gguf`]). Matrices keep the file's type, block types included: their block bytes go to
//! the GPU as they are and the product and embedding kernels dequantize them in place (see
//! shaders/dequant.wgsl), so a Q4_1 model takes about its file size of GPU memory. Vectors (the
//! norms) are dequantized to f32 at load.

use super::config::Config;
use super::weights::{HostWeights, WeightDtype};
use crate::error::{Error, Result};
use crate::gguf::{self, Gguf, tokenizer::TokenizerMetadata};

/// True if `bytes` start like a GGUF file.
pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"GGUF")
}

/// Parses a GGUF file into the engine's config, weights and `tokenizer.json` bytes. `origin`
/// labels errors (the path or URL). Refused by name: architectures other than `llama`, what the
/// engine does not implement (RoPE scaling, partial rotary, experts, biases), unsupported tensor
/// types and tokenizers.
pub fn load(origin: &str, bytes: &[u8]) -> Result<(Config, HostWeights, Option<Vec<u8>>)> {
    let format = |message: String| Error::Format {
        path: origin.to_string(),
        message,
    };
    let g = Gguf::parse(bytes).map_err(|e| format(format!("GGUF: {e}")))?;
    let s = gguf::model_summary(&g).map_err(|e| format(format!("GGUF: {e}")))?;
    let tok =
        TokenizerMetadata::from_gguf(&g).map_err(|e| format(format!("GGUF tokenizer: {e}")))?;
    let tokenizer_json = serde_json::to_vec(
        &tok.to_tokenizer_json()
            .map_err(|e| format(format!("GGUF tokenizer: {e}")))?,
    )
    .map_err(|e| format(format!("GGUF tokenizer: {e}")))?;
    // llama.cpp prepends BOS unless the file says not to.
    let add_bos = g.bool("tokenizer.ggml.add_bos_token").unwrap_or(true);
    let token_id = |key: &str| g.uint(key).ok().and_then(|v| u32::try_from(v).ok());
    let cfg = Config {
        vocab_size: s.vocab_size,
        hidden_size: s.d_model,
        num_hidden_layers: s.n_layers,
        num_attention_heads: s.n_heads,
        num_key_value_heads: s.n_kv_heads,
        head_dim: s.head_dim,
        intermediate_size: s.d_ff,
        rope_theta: s.rope_freq_base as f64,
        rms_norm_eps: s.rms_norm_eps as f64,
        max_position_embeddings: s.context_length,
        tie_word_embeddings: s.tied_embeddings,
        attention: "standard".into(),
        bos_token_id: if add_bos {
            token_id("tokenizer.ggml.bos_token_id")
        } else {
            None
        },
        eos_token_id: token_id("tokenizer.ggml.eos_token_id"),
        chat_template: tok.chat_template().map(str::to_string),
        // llama.cpp's converter already reordered Q and K rows into adjacent pairs.
        rope_pairs: "adjacent".into(),
        architectures: Vec::new(),
        rope_parameters: None,
        rope_scaling: None,
        attention_bias: false,
        mlp_bias: false,
    };
    cfg.validate()
        .map_err(|e| format(format!("GGUF hyper-parameters: {e}")))?;
    let mut tensors = Vec::with_capacity(g.tensors().len());
    for t in g.tensors() {
        let Some(name) = gguf::hf_tensor_name(&t.name) else {
            return Err(format(format!("GGUF: unexpected tensor `{}`", t.name)));
        };
        let bytes = g.tensor_bytes(t);
        // ggml lists dims innermost first: the reverse of the (out, in) shape.
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        let (dtype, raw) = if shape.len() == 1 {
            let values = gguf::dequantize(t.ty, bytes, t.n_elements)
                .map_err(|e| format(format!("GGUF tensor `{}`: {e}", t.name)))?;
            (WeightDtype::F32, bytemuck::cast_slice(&values).to_vec())
        } else {
            // Checked here so that a damaged size reads as a GGUF error, not a shape error.
            t.ty.bytes_for(t.n_elements)
                .map_err(|e| format(format!("GGUF tensor `{}`: {e}", t.name)))?;
            (WeightDtype::from_ggml(t.ty), bytes.to_vec())
        };
        tensors.push((name, dtype, shape, raw));
    }
    let weights = HostWeights::from_tensors(origin, tensors)?;
    weights.check(&cfg)?;
    Ok((cfg, weights, Some(tokenizer_json)))
}
