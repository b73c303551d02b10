//! `config.json`: the model's shape, in the Hugging Face Llama key names (see docs/model-format.md).

use crate::attention::Mode;
use crate::error::{Error, Result};

/// The model's hyper-parameters as `config.json` spells them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub vocab_size: u32,
    pub hidden_size: u32,
    pub num_hidden_layers: u32,
    /// Output heads h (DIFF V2 projects 2h query heads).
    pub num_attention_heads: u32,
    pub num_key_value_heads: u32,
    pub head_dim: u32,
    pub intermediate_size: u32,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: u32,
    pub tie_word_embeddings: bool,
    /// `"diff_v2"` or `"standard"`.
    pub attention: String,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// The model's chat template (Jinja), where the files carry one (a GGUF's
    /// `tokenizer.chat_template`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
}

impl Config {
    /// Parses and validates `config.json` text; `path` only labels errors.
    pub fn from_json(path: &str, text: &str) -> Result<Self> {
        let cfg: Config = serde_json::from_str(text).map_err(|e| Error::Format {
            path: path.to_string(),
            message: format!("malformed config.json: {e}"),
        })?;
        cfg.validate().map_err(|e| match e {
            Error::Config(m) => Error::Format {
                path: path.to_string(),
                message: format!("invalid config.json: {m}"),
            },
            e => e,
        })?;
        Ok(cfg)
    }

    pub fn mode(&self) -> Mode {
        match self.attention.as_str() {
            "standard" => Mode::Standard,
            _ => Mode::Diff,
        }
    }

    /// Query heads: 2h in DIFF V2, h in standard attention.
    pub fn q_heads(&self) -> u32 {
        match self.mode() {
            Mode::Diff => 2 * self.num_attention_heads,
            Mode::Standard => self.num_attention_heads,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.attention != "diff_v2" && self.attention != "standard" {
            return Err(Error::config(format!(
                "attention = \"{}\" (expected \"diff_v2\" or \"standard\")",
                self.attention
            )));
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::config(format!("{name} must be at least 1")));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(Error::config(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        // The matrix kernels read weight rows 8 values (16 bytes of f16) at a time.
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("head_dim", self.head_dim),
        ] {
            if v % 8 != 0 {
                return Err(Error::config(format!(
                    "{name} = {v} must be a multiple of 8"
                )));
            }
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(Error::config(format!(
                "rope_theta = {} must be positive",
                self.rope_theta
            )));
        }
        // eps = 0 makes an all-zero row 0/0 = NaN; eps >= 1 swamps every activation.
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(Error::config(format!(
                "rms_norm_eps = {} must be a positive number below 1",
                self.rms_norm_eps
            )));
        }
        // Every tensor and index the kernels compute must fit u32: bound the dimensions so that
        // the largest products (q heads x head_dim x context, intermediate x hidden) cannot wrap.
        let limits = [
            ("num_attention_heads", self.num_attention_heads, 1u32 << 16),
            ("num_key_value_heads", self.num_key_value_heads, 1 << 16),
            ("head_dim", self.head_dim, 1 << 12),
            ("hidden_size", self.hidden_size, 1 << 17),
            ("intermediate_size", self.intermediate_size, 1 << 19),
            ("vocab_size", self.vocab_size, 1 << 22),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 12),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 24,
            ),
        ];
        if let Some((name, v, max)) = limits.iter().find(|(_, v, max)| v > max) {
            return Err(Error::config(format!(
                "{name} = {v} is beyond what the engine supports ({max})"
            )));
        }
        for (name, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
        ] {
            if let Some(id) = id
                && id >= self.vocab_size
            {
                return Err(Error::config(format!(
                    "{name} = {id} is outside the vocabulary ({})",
                    self.vocab_size
                )));
            }
        }
        Ok(())
    }
}
