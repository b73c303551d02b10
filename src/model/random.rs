//! Random models in the real file format: what the tests and `examples/random_model.rs` load.
//! They exercise every code path of the loader and the engine without a trained checkpoint.

use super::config::Config;
use super::files::{CONFIG, INDEX, ModelSource, SINGLE, TOKENIZER};
use super::weights::{Shard, WeightDtype, expected_tensors};
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::gguf::write::{GgufWriter, MetaValue};
use crate::util::Rng;

/// The shape and storage of a random model. Vocabulary ids: 0 is `<|endoftext|>`, 1..=256 the
/// 256 bytes of a byte-level tokenizer, the rest unused by the tokenizer.
#[derive(Clone, Debug)]
pub struct RandomModel {
    pub attention: String,
    pub vocab_size: u32,
    pub hidden_size: u32,
    pub layers: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub intermediate_size: u32,
    pub context: u32,
    pub tied: bool,
    /// F32, F16 or BF16: the files are safetensors, which hold no ggml block types, so those
    /// are written as F32 (quantized weights come from GGUF files).
    pub dtype: WeightDtype,
    /// 1: a single `model.safetensors`; more: that many shards plus the index.
    pub shards: usize,
    pub seed: u64,
}

impl RandomModel {
    /// A tiny model (fast on a software adapter): D = 32, 2 layers, h = 2, h_kv = 1, d = 16.
    pub fn tiny(attention: &str, seed: u64) -> Self {
        Self {
            attention: attention.to_string(),
            vocab_size: 264,
            hidden_size: 32,
            layers: 2,
            heads: 2,
            kv_heads: 1,
            head_dim: 16,
            intermediate_size: 48,
            context: 96,
            tied: true,
            dtype: WeightDtype::F32,
            shards: 1,
            seed,
        }
    }

    /// Names of the shapes [`RandomModel::preset`] knows.
    pub const PRESETS: &'static [&'static str] = &["diffv2-small", "smollm2-135m"];

    /// A model of a named real shape with random weights (benchmarks): `diffv2-small` (the shipped
    /// model: D = 384, 6 layers, h = 6, h_kv = 2, d = 64, FFN 1024, vocab 8192, context 512) or
    /// `smollm2-135m` (SmolLM2-135M: standard attention, D = 576, 30 layers, h = 9, h_kv = 3,
    /// d = 64, FFN 1536, vocab 49152, context 8192; RoPE base 10000 here, which costs the same).
    pub fn preset(name: &str, dtype: WeightDtype, seed: u64) -> Option<Self> {
        let base = Self {
            dtype,
            ..Self::tiny("diff_v2", seed)
        };
        match name {
            "diffv2-small" => Some(Self {
                vocab_size: 8192,
                hidden_size: 384,
                layers: 6,
                heads: 6,
                kv_heads: 2,
                head_dim: 64,
                intermediate_size: 1024,
                context: 512,
                ..base
            }),
            "smollm2-135m" => Some(Self {
                attention: "standard".into(),
                vocab_size: 49152,
                hidden_size: 576,
                layers: 30,
                heads: 9,
                kv_heads: 3,
                head_dim: 64,
                intermediate_size: 1536,
                context: 8192,
                ..base
            }),
            _ => None,
        }
    }

    pub fn config(&self) -> Config {
        Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: self.kv_heads,
            head_dim: self.head_dim,
            intermediate_size: self.intermediate_size,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: self.context,
            tie_word_embeddings: self.tied,
            attention: self.attention.clone(),
            bos_token_id: None,
            eos_token_id: Some(0),
            chat_template: None,
            rope_pairs: "adjacent".into(),
            architectures: Vec::new(),
            rope_parameters: None,
            rope_scaling: None,
            attention_bias: false,
            mlp_bias: false,
        }
    }

    /// Every tensor with random values. Scales keep activations near unit size so that logits
    /// are well separated (greedy choices are not near-ties).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut rng = Rng::new(self.seed);
        expected_tensors(&self.config())
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values = if shape.len() == 1 {
                    (0..n).map(|_| 1.0 + 0.2 * rng.normal()).collect()
                } else if name.contains("embed_tokens") || name == "lm_head.weight" {
                    rng.normals(n, 1.0)
                } else {
                    rng.normals(n, 1.0 / (shape[1] as f32).sqrt())
                };
                (name, shape, values)
            })
            .collect()
    }

    fn encode(&self, values: &[f32]) -> Vec<u8> {
        match self.dtype {
            WeightDtype::F32 => bytemuck::cast_slice(values).to_vec(),
            WeightDtype::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            WeightDtype::BF16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            // safetensors has no ggml block types (see `dtype`).
            _ => bytemuck::cast_slice(values).to_vec(),
        }
    }

    /// The files of the model directory: (file name, bytes).
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let dtype = match self.dtype {
            WeightDtype::F32 => safetensors::Dtype::F32,
            WeightDtype::F16 => safetensors::Dtype::F16,
            WeightDtype::BF16 => safetensors::Dtype::BF16,
            _ => safetensors::Dtype::F32,
        };
        let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors()
            .into_iter()
            .map(|(n, s, v)| (n, s, self.encode(&v)))
            .collect();
        let n_shards = self.shards.max(1);
        let mut files = Vec::new();
        let mut weight_map = serde_json::Map::new();
        for s in 0..n_shards {
            let name = if n_shards == 1 {
                SINGLE.to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", s + 1, n_shards)
            };
            let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
                .iter()
                .enumerate()
                .filter(|(i, _)| i % n_shards == s)
                .map(|(_, (n, shape, bytes))| {
                    weight_map.insert(n.clone(), serde_json::Value::String(name.clone()));
                    let view = safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes)
                        .expect("consistent tensor view");
                    (n.clone(), view)
                })
                .collect();
            let bytes = safetensors::serialize(views, None).expect("serialisable tensors");
            files.push((name, bytes));
        }
        if n_shards > 1 {
            let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
            files.push((INDEX.to_string(), index.to_string().into_bytes()));
        }
        let config = serde_json::to_string_pretty(&self.config()).expect("config serialises");
        files.push((CONFIG.to_string(), config.into_bytes()));
        files.push((TOKENIZER.to_string(), byte_tokenizer_json().into_bytes()));
        files
    }

    /// The model as an in-memory source (no file system).
    pub fn source(&self) -> ModelSource {
        let mut config_json = String::new();
        let mut tokenizer_json = None;
        let mut shards = Vec::new();
        for (name, bytes) in self.files() {
            if name == CONFIG {
                config_json = String::from_utf8(bytes).expect("utf-8 config");
            } else if name == TOKENIZER {
                tokenizer_json = Some(bytes);
            } else if name.ends_with(".safetensors") {
                shards.push(Shard { name, bytes });
            }
        }
        ModelSource {
            origin: "random model".into(),
            config_json,
            shards,
            tokenizer_json,
            gguf: None,
        }
    }

    /// The model as a GGUF file (architecture `llama`, standard attention only), its matrices
    /// quantized to `matrices` (F32, F16, BF16, Q8_0, Q4_0 or Q4_1) and its token embedding to
    /// Q8_0 as SmolLM2's file has it, the norms f32, and the byte-level vocabulary of
    /// [`byte_tokenizer_json`] padded with unreachable tokens to the vocabulary size. The values
    /// are [`RandomModel::tensors`]' before quantization.
    pub fn gguf_bytes(&self, matrices: GgmlType) -> Result<Vec<u8>> {
        self.gguf_bytes_typed(&|_| matrices)
    }

    /// [`RandomModel::gguf_bytes`] with each matrix's type chosen by its (Hugging Face) tensor
    /// name, e.g. to mix types within q/k/v as Q4_K_M files do; the embedding stays Q8_0.
    pub fn gguf_bytes_typed(&self, matrix_type: &dyn Fn(&str) -> GgmlType) -> Result<Vec<u8>> {
        let cfg = self.config();
        if cfg.attention != "standard" {
            return Err(Error::config(
                "a GGUF random model has standard attention (GGUF files hold llama models)",
            ));
        }
        if self.vocab_size < 257 {
            return Err(Error::config(
                "a GGUF random model needs a vocabulary of at least 257",
            ));
        }
        let mut w = GgufWriter::default();
        let u = MetaValue::U32;
        w.meta("general.architecture", MetaValue::Str("llama".into()))
            .meta("llama.block_count", u(self.layers))
            .meta("llama.embedding_length", u(self.hidden_size))
            .meta("llama.feed_forward_length", u(self.intermediate_size))
            .meta("llama.attention.head_count", u(self.heads))
            .meta("llama.attention.head_count_kv", u(self.kv_heads))
            .meta("llama.context_length", u(self.context))
            .meta("llama.rope.dimension_count", u(self.head_dim))
            .meta(
                "llama.rope.freq_base",
                MetaValue::F32(cfg.rope_theta as f32),
            )
            .meta(
                "llama.attention.layer_norm_rms_epsilon",
                MetaValue::F32(cfg.rms_norm_eps as f32),
            )
            .meta("tokenizer.ggml.model", MetaValue::Str("gpt2".into()))
            .meta("tokenizer.ggml.pre", MetaValue::Str("smollm".into()))
            .meta("tokenizer.ggml.eos_token_id", u(0))
            .meta("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
        let mut tokens = vec!["<|endoftext|>".to_string()];
        tokens.extend(byte_chars().into_iter().map(|c| c.to_string()));
        tokens.extend((tokens.len()..self.vocab_size as usize).map(|i| format!("<unused{i}>")));
        // ggml token types: 3 control, 1 normal.
        let mut types = vec![1i32; tokens.len()];
        types[0] = 3;
        w.meta("tokenizer.ggml.tokens", MetaValue::Strs(tokens))
            .meta("tokenizer.ggml.token_type", MetaValue::I32s(types))
            .meta("tokenizer.ggml.merges", MetaValue::Strs(Vec::new()));
        for (name, shape, values) in self.tensors() {
            let ty = if shape.len() == 1 {
                GgmlType::F32
            } else if name.contains("embed_tokens") {
                GgmlType::Q8_0
            } else {
                matrix_type(&name)
            };
            let gguf_name = crate::gguf::gguf_tensor_name(&name)
                .ok_or_else(|| Error::config(format!("no GGUF name for tensor `{name}`")))?;
            w.tensor(&gguf_name, &shape, ty, &values)
                .map_err(Error::config)?;
        }
        Ok(w.to_bytes())
    }

    /// [`RandomModel::gguf_bytes`] as an in-memory source.
    pub fn gguf_source(&self, matrices: GgmlType) -> Result<ModelSource> {
        Ok(ModelSource {
            origin: format!("random {} GGUF model", matrices.name()),
            config_json: String::new(),
            shards: Vec::new(),
            tokenizer_json: None,
            gguf: Some(self.gguf_bytes(matrices)?),
        })
    }

    /// Writes the model directory.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn write_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, bytes) in self.files() {
            std::fs::write(dir.join(name), bytes)?;
        }
        Ok(())
    }
}

/// GPT-2's byte-to-character map used by byte-level BPE: printable bytes map to themselves,
/// the rest to code points from 256 on.
fn byte_chars() -> Vec<char> {
    let printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut chars = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        chars[b as usize] = char::from_u32(c).expect("valid code point");
    }
    chars
}

/// A byte-level tokenizer with no merges: `<|endoftext|>` = 0 and byte b = b + 1. Every string
/// encodes (one token per byte), and multi-byte characters span several tokens, which is what
/// the streaming detokeniser must handle.
pub fn byte_tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<|endoftext|>".into(), 0.into());
    for (b, c) in byte_chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), (b as u32 + 1).into());
    }
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": []
        }
    })
    .to_string()
}
