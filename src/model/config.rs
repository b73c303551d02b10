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
    /// Per-head width; Hugging Face configs may leave it out (hidden_size / num_attention_heads).
    #[serde(default)]
    pub head_dim: u32,
    pub intermediate_size: u32,
    /// RoPE base; Hugging Face configs may give it in `rope_parameters` instead.
    #[serde(default)]
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: u32,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// `"diff_v2"` or `"standard"` (a Hugging Face `LlamaForCausalLM` config without it: standard).
    #[serde(default)]
    pub attention: String,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// The model's chat template (Jinja), where the files carry one (a GGUF's
    /// `tokenizer.chat_template`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Which RoPE pairs the files' Q and K rows rotate: `"adjacent"` (2i, 2i + 1: the engine's
    /// own convention, and GGUF's) or `"half"` (i, i + head_dim/2: Hugging Face Llama). Half-split
    /// weights are reordered into adjacent pairs at load. A Hugging Face `LlamaForCausalLM` config
    /// without the field means `"half"`; any other config must state it.
    #[serde(default)]
    pub rope_pairs: String,
    /// Hugging Face's model classes (only read, to recognise a `LlamaForCausalLM` directory).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// Hugging Face's RoPE block (`rope_theta`, `rope_type`); only `default` RoPE is run.
    #[serde(default, skip_serializing)]
    pub rope_parameters: Option<serde_json::Value>,
    /// Hugging Face's RoPE scaling; refused unless absent or null.
    #[serde(default, skip_serializing)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Hugging Face's bias switches; biases are refused.
    #[serde(default, skip_serializing)]
    pub attention_bias: bool,
    #[serde(default, skip_serializing)]
    pub mlp_bias: bool,
}

impl Config {
    /// Parses and validates `config.json` text; `path` only labels errors.
    pub fn from_json(path: &str, text: &str) -> Result<Self> {
        let mut cfg: Config = serde_json::from_str(text).map_err(|e| Error::Format {
            path: path.to_string(),
            message: format!("malformed config.json: {e}"),
        })?;
        cfg.resolve_hugging_face()
            .and_then(|()| cfg.validate())
            .map_err(|e| match e {
                Error::Config(m) => Error::Format {
                    path: path.to_string(),
                    message: format!("invalid config.json: {m}"),
                },
                e => e,
            })?;
        Ok(cfg)
    }

    /// Fills what a Hugging Face `LlamaForCausalLM` config leaves implicit (standard attention,
    /// half-split RoPE, head_dim, rope_theta in `rope_parameters`) and refuses what the engine
    /// does not run (RoPE scaling, biases) and configs that leave the RoPE pairing unstated.
    pub fn resolve_hugging_face(&mut self) -> Result<()> {
        let hf_llama = self.architectures.iter().any(|a| a == "LlamaForCausalLM");
        if hf_llama {
            if self.attention.is_empty() {
                self.attention = "standard".into();
            }
            if self.rope_pairs.is_empty() {
                self.rope_pairs = "half".into();
            }
        }
        if self.head_dim == 0 && self.num_attention_heads > 0 {
            self.head_dim = self.hidden_size / self.num_attention_heads;
        }
        if let Some(p) = &self.rope_parameters {
            let kind = p
                .get("rope_type")
                .and_then(|t| t.as_str())
                .unwrap_or("default");
            if kind != "default" {
                return Err(Error::config(format!(
                    "rope_parameters.rope_type = \"{kind}\" (only default RoPE is supported)"
                )));
            }
            if self.rope_theta == 0.0
                && let Some(theta) = p.get("rope_theta").and_then(|t| t.as_f64())
            {
                self.rope_theta = theta;
            }
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(Error::config("rope_scaling is not supported".to_string()));
        }
        if self.attention_bias || self.mlp_bias {
            return Err(Error::config(
                "attention or MLP biases are not supported".to_string(),
            ));
        }
        Ok(())
    }

    /// True when Q and K rows rotate half-split pairs and are reordered at load.
    pub fn half_split_rope(&self) -> bool {
        self.rope_pairs == "half"
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
        if self.rope_pairs != "adjacent" && self.rope_pairs != "half" {
            return Err(Error::config(format!(
                "rope_pairs = \"{}\" (expected \"adjacent\" or \"half\"; configs other than Hugging \
                 Face LlamaForCausalLM must state it)",
                self.rope_pairs
            )));
        }
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
