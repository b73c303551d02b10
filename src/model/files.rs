//! A model directory's contents as bytes, and (natively) reading them from disk.

use super::config::Config;
use super::weights::{HostWeights, Shard};
use crate::error::Result;
#[cfg(not(target_arch = "wasm32"))]
use {super::weights::parse_index, crate::error::Error};

/// The file names of the format (docs/model-format.md).
pub const CONFIG: &str = "config.json";
pub const SINGLE: &str = "model.safetensors";
pub const INDEX: &str = "model.safetensors.index.json";
pub const TOKENIZER: &str = "tokenizer.json";

/// Everything a model needs, already in memory: what the browser assembles from fetches and what
/// [`ModelSource::read_dir`] reads natively.
pub struct ModelSource {
    /// A label for errors (the directory or URL).
    pub origin: String,
    pub config_json: String,
    pub shards: Vec<Shard>,
    pub tokenizer_json: Option<Vec<u8>>,
    /// A whole GGUF file instead: config, weights and tokenizer come from it, and the fields
    /// above are ignored.
    pub gguf: Option<Vec<u8>>,
}

impl ModelSource {
    /// Parses the config and weights and checks them against each other.
    pub fn parse(self) -> Result<(Config, HostWeights, Option<Vec<u8>>)> {
        if let Some(bytes) = &self.gguf {
            return super::gguf::load(&self.origin, bytes);
        }
        let cfg = Config::from_json(&format!("{}/{CONFIG}", self.origin), &self.config_json)?;
        let mut weights = HostWeights::from_shards(self.shards)?;
        weights.check(&cfg)?;
        if cfg.half_split_rope() {
            weights = weights.with_adjacent_rope_pairs(&cfg, &self.origin)?;
        }
        Ok((cfg, weights, self.tokenizer_json))
    }

    /// Reads a model: a directory (see [`ModelSource::read_dir`]) or a `.gguf` file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(path: &std::path::Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Self> {
        if path.is_dir() {
            return Self::read_dir(path, progress);
        }
        let origin = path.display().to_string();
        if !path.is_file() {
            return Err(Error::NotFound {
                what: "model directory or GGUF file".into(),
                path: origin,
            });
        }
        let total = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        progress(0, total);
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        progress(bytes.len() as u64, total);
        if !super::gguf::is_gguf(&bytes) {
            return Err(Error::Format {
                path: origin,
                message: "not a model directory and not a GGUF file (no GGUF magic)".into(),
            });
        }
        Ok(Self {
            origin,
            config_json: String::new(),
            shards: vec![],
            tokenizer_json: None,
            gguf: Some(bytes),
        })
    }

    /// Reads `config.json`, the weights (single file or index + shards) and `tokenizer.json` from
    /// a directory. `progress(done, total)` is called as weight bytes are read.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_dir(dir: &std::path::Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Self> {
        let origin = dir.display().to_string();
        if !dir.is_dir() {
            return Err(Error::NotFound {
                what: "model directory".into(),
                path: origin,
            });
        }
        let config_json = read_text(&dir.join(CONFIG), "config.json")?;
        let index_path = dir.join(INDEX);
        let files: Vec<String> = if index_path.is_file() {
            let text = read_text(&index_path, "safetensors index")?;
            parse_index(&index_path.display().to_string(), &text)?
        } else if dir.join(SINGLE).is_file() {
            vec![SINGLE.to_string()]
        } else {
            return Err(Error::NotFound {
                what: format!("weights ({SINGLE} or {INDEX})"),
                path: origin,
            });
        };
        let paths: Vec<std::path::PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        for p in &paths {
            if !p.is_file() {
                return Err(Error::NotFound {
                    what: "weight shard".into(),
                    path: p.display().to_string(),
                });
            }
        }
        let total: u64 = paths
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        let mut done = 0;
        progress(0, total);
        let mut shards = Vec::new();
        for p in &paths {
            let bytes = std::fs::read(p).map_err(|e| io(p, e))?;
            done += bytes.len() as u64;
            progress(done, total);
            shards.push(Shard {
                name: p.display().to_string(),
                bytes,
            });
        }
        let tok_path = dir.join(TOKENIZER);
        let tokenizer_json = if tok_path.is_file() {
            Some(std::fs::read(&tok_path).map_err(|e| io(&tok_path, e))?)
        } else {
            None
        };
        Ok(Self {
            origin,
            config_json,
            shards,
            tokenizer_json,
            gguf: None,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn io(path: &std::path::Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn read_text(path: &std::path::Path, what: &str) -> Result<String> {
    if !path.is_file() {
        return Err(Error::NotFound {
            what: what.into(),
            path: path.display().to_string(),
        });
    }
    std::fs::read_to_string(path).map_err(|e| io(path, e))
}
