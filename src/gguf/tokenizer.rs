//! GPT-2 style (byte-level BPE) tokenizer metadata from GGUF, converted to a
//! Hugging Face `tokenizer.json` document.
//!
//! Pre-tokenizer: llama.cpp picks its split regexes from `tokenizer.ggml.pre`
//! (`llm_tokenizer_bpe` in `src/llama-vocab.cpp`). For `"smollm"` it applies
//! **two** passes, the same as for `"starcoder"`/`"refact"`:
//!
//! 1. `\p{N}` — every digit becomes its own piece;
//! 2. the GPT-2 regex
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
//!    (the ByteLevel default; HF adds a final `|\s+`, which llama.cpp's
//!    hand-written matcher also covers).
//!
//! So "smollm" is *not* plain GPT-2: digits are split individually. The Hugging
//! Face equivalent is `Sequence[Digits(individual_digits=true),
//! ByteLevel(add_prefix_space=false, use_regex=true)]`, which is what this
//! module emits. `"gpt-2"` emits the ByteLevel pass alone.
//!
//! BOS: for both supported `pre` values llama.cpp's default is *not* to add a
//! BOS token, and `tokenizer.ggml.add_bos_token` (when present) overrides that.
//! The SmolLM2 file sets it to `false`; its `bos_token_id` is 1 (`<|im_start|>`).

use serde_json::{Map, Value as Json, json};
use thiserror::Error;

use super::container::{Gguf, GgufError};

/// Token type of control tokens (`<|im_start|>` ...) in `tokenizer.ggml.token_type`.
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// Token type of user-defined tokens.
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Errors from reading tokenizer metadata.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TokenizerError {
    /// A required key is missing or has the wrong type.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// `tokenizer.ggml.model` is not `"gpt2"`.
    #[error("tokenizer.ggml.model = {0:?} is not supported (only \"gpt2\" byte-level BPE)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` is absent or not one of the supported values.
    #[error("tokenizer.ggml.pre = {0:?} is not supported (supported: \"smollm\", \"gpt-2\")")]
    UnsupportedPre(String),
    /// An array's length differs from the vocabulary size.
    #[error("{key} has {found} entries but the vocabulary has {expected}")]
    LengthMismatch {
        /// The key.
        key: &'static str,
        /// Vocabulary size.
        expected: usize,
        /// Entries found.
        found: usize,
    },
    /// A special token id is outside the vocabulary.
    #[error("{key} = {id} is outside the vocabulary of {n_vocab} tokens")]
    TokenIdOutOfRange {
        /// The key.
        key: &'static str,
        /// The id.
        id: u64,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// The same token text appears twice in the vocabulary.
    #[error("token {text:?} appears twice (ids {first} and {second})")]
    DuplicateToken {
        /// Token text.
        text: String,
        /// First id.
        first: usize,
        /// Second id.
        second: usize,
    },
    /// A merge rule is not two space-separated parts.
    #[error("merge {index} ({merge:?}) is not of the form \"left right\"")]
    BadMerge {
        /// Index in `tokenizer.ggml.merges`.
        index: usize,
        /// The rule.
        merge: String,
    },
}

/// Which llama.cpp pre-tokenizer the file asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// `"smollm"`: split digits individually, then the GPT-2 regex.
    SmolLm,
    /// `"gpt-2"`: the GPT-2 regex alone.
    Gpt2,
}

impl PreTokenizer {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "smollm" => Some(Self::SmolLm),
            "gpt-2" => Some(Self::Gpt2),
            _ => None,
        }
    }
}

/// Tokenizer metadata read from a GGUF file.
#[derive(Debug, Clone)]
pub struct TokenizerMetadata<'g> {
    /// Pre-tokenizer kind from `tokenizer.ggml.pre`.
    pub pre: PreTokenizer,
    /// Vocabulary, indexed by token id.
    pub tokens: &'g [String],
    /// Merge rules `"left right"` in rank order.
    pub merges: &'g [String],
    /// Token types (1 normal, 3 control, 4 user-defined, ...), one per token, if present.
    pub token_types: Option<&'g [i32]>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub padding_token_id: Option<u32>,
    /// Whether a BOS token is prepended when encoding (`tokenizer.ggml.add_bos_token`, default false).
    pub add_bos: bool,
    chat_template: Option<&'g str>,
}

fn opt_token_id(
    g: &Gguf<'_>,
    key: &'static str,
    n_vocab: usize,
) -> Result<Option<u32>, TokenizerError> {
    if g.get(key).is_none() {
        return Ok(None);
    }
    let id = g.uint(key)?;
    if id >= n_vocab as u64 {
        return Err(TokenizerError::TokenIdOutOfRange { key, id, n_vocab });
    }
    Ok(Some(id as u32))
}

impl<'g> TokenizerMetadata<'g> {
    /// Reads and checks the `tokenizer.*` keys of a GGUF file.
    pub fn from_gguf(g: &'g Gguf<'_>) -> Result<Self, TokenizerError> {
        let model = g.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.to_string()));
        }
        let pre_name = match g.get("tokenizer.ggml.pre") {
            None => "",
            Some(_) => g.str("tokenizer.ggml.pre")?,
        };
        let pre = PreTokenizer::from_name(pre_name)
            .ok_or_else(|| TokenizerError::UnsupportedPre(pre_name.into()))?;
        let tokens = g.string_array("tokenizer.ggml.tokens")?;
        let merges = g.string_array("tokenizer.ggml.merges")?;
        let token_types = match g.get("tokenizer.ggml.token_type") {
            None => None,
            Some(_) => Some(g.i32_array("tokenizer.ggml.token_type")?),
        };
        if let Some(tt) = token_types
            && tt.len() != tokens.len()
        {
            return Err(TokenizerError::LengthMismatch {
                key: "tokenizer.ggml.token_type",
                expected: tokens.len(),
                found: tt.len(),
            });
        }
        let n = tokens.len();
        let add_bos = match g.get("tokenizer.ggml.add_bos_token") {
            None => false,
            Some(_) => g.bool("tokenizer.ggml.add_bos_token")?,
        };
        let chat_template = match g.get("tokenizer.chat_template") {
            None => None,
            Some(_) => Some(g.str("tokenizer.chat_template")?),
        };
        let meta = TokenizerMetadata {
            pre,
            tokens,
            merges,
            token_types,
            bos_token_id: opt_token_id(g, "tokenizer.ggml.bos_token_id", n)?,
            eos_token_id: opt_token_id(g, "tokenizer.ggml.eos_token_id", n)?,
            padding_token_id: opt_token_id(g, "tokenizer.ggml.padding_token_id", n)?,
            add_bos,
            chat_template,
        };
        Ok(meta)
    }

    /// The Jinja chat template (`tokenizer.chat_template`), if the file has one.
    pub fn chat_template(&self) -> Option<&'g str> {
        self.chat_template
    }

    /// Ids of control tokens (token type 3).
    pub fn control_token_ids(&self) -> Vec<u32> {
        self.token_types
            .map(|tt| {
                tt.iter()
                    .enumerate()
                    .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL)
                    .map(|(i, _)| i as u32)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Builds a Hugging Face `tokenizer.json` document (BPE model with vocab and
    /// merges, byte-level pre-tokenizer per [`PreTokenizer`], ByteLevel decoder,
    /// control and user-defined tokens as added tokens matched whole).
    pub fn to_tokenizer_json(&self) -> Result<Json, TokenizerError> {
        let mut vocab = Map::new();
        let mut seen = std::collections::HashMap::with_capacity(self.tokens.len());
        for (id, t) in self.tokens.iter().enumerate() {
            if let Some(first) = seen.insert(t.as_str(), id) {
                return Err(TokenizerError::DuplicateToken {
                    text: t.clone(),
                    first,
                    second: id,
                });
            }
            vocab.insert(t.clone(), json!(id));
        }
        let mut merges = Vec::with_capacity(self.merges.len());
        for (index, m) in self.merges.iter().enumerate() {
            // byte-level tokens never contain a raw space, so exactly one space separates the parts
            let mut parts = m.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                    merges.push(json!([a, b]))
                }
                _ => {
                    return Err(TokenizerError::BadMerge {
                        index,
                        merge: m.clone(),
                    });
                }
            }
        }
        let added: Vec<Json> = self
            .token_types
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL || **t == TOKEN_TYPE_USER_DEFINED)
            .map(|(id, t)| {
                json!({
                    "id": id,
                    "content": self.tokens[id],
                    "single_word": false,
                    "lstrip": false,
                    "rstrip": false,
                    "normalized": false,
                    "special": *t == TOKEN_TYPE_CONTROL,
                })
            })
            .collect();
        let byte_level = json!({
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": true,
            "use_regex": true,
        });
        let pre_tokenizer = match self.pre {
            PreTokenizer::SmolLm => json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Digits", "individual_digits": true},
                    byte_level,
                ],
            }),
            PreTokenizer::Gpt2 => byte_level,
        };
        let post_processor = match (self.add_bos, self.bos_token_id) {
            (true, Some(bos)) => {
                let bos_text = &self.tokens[bos as usize];
                json!({
                    "type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos_text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [
                        {"SpecialToken": {"id": bos_text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": bos_text, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}
                    ],
                    "special_tokens": {bos_text.as_str(): {"id": bos_text, "ids": [bos], "tokens": [bos_text]}},
                })
            }
            _ => {
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
            }
        };
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges,
            },
        }))
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;
    use crate::gguf::container::build::*;

    fn tok_file(model: &str, pre: Option<&str>) -> Vec<u8> {
        let mut kvs = vec![
            kv_str("tokenizer.ggml.model", model),
            kv_str_array(
                "tokenizer.ggml.tokens",
                &["<|s|>", "a", "b", "ab", "Ġ", "Ġab"],
            ),
            kv_str_array("tokenizer.ggml.merges", &["a b", "Ġ ab"]),
            kv_i32_array("tokenizer.ggml.token_type", &[3, 1, 1, 1, 1, 1]),
            kv_u32("tokenizer.ggml.bos_token_id", 0),
            kv_u32("tokenizer.ggml.eos_token_id", 0),
            kv_str("tokenizer.chat_template", "{{ x }}"),
        ];
        if let Some(p) = pre {
            kvs.push(kv_str("tokenizer.ggml.pre", p));
        }
        file(&kvs, &[])
    }

    #[test]
    fn builds_json() {
        let bytes = tok_file("gpt2", Some("smollm"));
        let g = Gguf::parse(&bytes).unwrap();
        let m = TokenizerMetadata::from_gguf(&g).unwrap();
        assert_eq!(m.chat_template(), Some("{{ x }}"));
        assert_eq!(m.control_token_ids(), vec![0]);
        assert!(!m.add_bos);
        let j = m.to_tokenizer_json().unwrap();
        assert_eq!(j["model"]["type"], "BPE");
        assert_eq!(j["model"]["vocab"]["Ġab"], 5);
        assert_eq!(j["model"]["merges"][1], json!(["Ġ", "ab"]));
        assert_eq!(j["added_tokens"][0]["content"], "<|s|>");
        assert_eq!(j["added_tokens"][0]["special"], true);
        assert_eq!(j["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
        assert_eq!(j["decoder"]["type"], "ByteLevel");
    }

    #[test]
    fn refuses_unknown() {
        let bytes = tok_file("llama", Some("smollm"));
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(
            TokenizerMetadata::from_gguf(&g).unwrap_err(),
            TokenizerError::UnsupportedModel("llama".into())
        );
        let bytes = tok_file("gpt2", Some("qwen2"));
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(
            TokenizerMetadata::from_gguf(&g).unwrap_err(),
            TokenizerError::UnsupportedPre("qwen2".into())
        );
        let bytes = tok_file("gpt2", None);
        let g = Gguf::parse(&bytes).unwrap();
        assert!(matches!(
            TokenizerMetadata::from_gguf(&g),
            Err(TokenizerError::UnsupportedPre(_))
        ));
    }
}
