//! The language model: config, weights, KV cache and the GPU forward pass.
//!
//! Data flows one way: model files ([`ModelSource`]) -> config and host weights
//! ([`Config`], [`HostWeights`]) -> GPU buffers and prepared dispatches ([`Engine`]) -> logits.

pub mod cache;
pub mod config;
pub mod engine;
pub mod files;
pub mod gguf;
pub mod plan;
pub mod random;
pub mod weights;

pub use config::Config;
pub use engine::{Engine, EngineOptions, Sampled};
pub use files::ModelSource;
pub use weights::{HostWeights, Shard, WeightDtype};
