//! # diffattn
//!
//! Differential Transformer V2 (DIFF V2) attention, and small language models built on it, on any GPU
//! through WebGPU (wgpu): natively on Vulkan, Metal, DX12 and GL, and in the browser through WASM.
//!
//! - [`attention`]: the kernels' host side: [`attention::AttentionOp`] on GPU buffers and
//!   [`attention::attention`] on host slices.
//! - [`reference`]: the float64 CPU oracle, where the DIFF V2 math is written out plainly.
//! - [`gpu`]: adapter and device, pipeline cache, buffers.
//! - [`model`]: config, safetensors weights, KV cache and the GPU forward pass ([`model::Engine`]).
//! - [`sample`], [`tokenizer`], [`generate`]: sampling, streaming detokenisation and the
//!   generation loop ([`generate::TextModel`], [`generate::Generation`]).

pub mod attention;
pub mod chat;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod model;
pub mod reference;
pub mod sample;
pub mod testing;
pub mod tokenizer;
pub mod util;

pub use attention::{AttentionCall, AttentionConfig, HostInputs, Kernel, KvDtype, Mode};
pub use error::{Error, Result};
pub use gpu::{Gpu, GpuOptions};

#[cfg(target_arch = "wasm32")]
pub mod wasm;
