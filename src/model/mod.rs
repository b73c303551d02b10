//! The language model: config, weights, KV cache and the GPU forward pass.
//!
//! Data flows one way: model files ([`ModelSource`]) -> config and host weights
//! ([`Config`], [`HostWeights`]) -> GPU buffers and prepared dispatches ([`Engine`]) -> logits.

#[cfg(feature = "gpu")]
pub mod cache;
pub mod config;
#[cfg(feature = "gpu")]
pub mod engine;
pub mod files;
pub mod gguf;
#[cfg(feature = "gpu")]
pub mod plan;
pub mod random;
pub mod weights;

pub use config::Config;
#[cfg(feature = "gpu")]
pub use engine::{Engine, EngineOptions, Sampled};
pub use files::ModelSource;
pub use weights::{HostWeights, Shard, WeightDtype};
