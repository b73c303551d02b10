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

//!
//! # Features
//!
//! - `gpu` (default): everything that runs on wgpu. Without it the crate is its CPU half: the
//!   parsers (model directories, GGUF, tokenizers, the `attn` input file), the float64 reference
//!   and sampling. The fuzz targets (`fuzz/`) build that half alone, which keeps the instrumented
//!   build small.
//! - `cli` (default): the `diffattn` binary's own dependencies.

#[cfg(feature = "gpu")]
pub mod attention;
#[cfg(feature = "gpu")]
pub mod chat;
pub mod error;
#[cfg(feature = "gpu")]
pub mod generate;
pub mod gguf;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod model;
pub mod reference;
pub mod sample;
#[cfg(feature = "gpu")]
pub mod testing;
pub mod tokenizer;
pub mod util;

/// Without the `gpu` feature: the attention op's shapes and options and the `attn` input file,
/// at the same paths as in the full build.
#[cfg(not(feature = "gpu"))]
pub mod attention {
    pub mod io;
    mod types;

    pub use types::*;
}

pub use attention::{AttentionCall, AttentionConfig, HostInputs, Kernel, KvDtype, Mode};
pub use error::{Error, Result};
#[cfg(feature = "gpu")]
pub use gpu::{Gpu, GpuOptions};

#[cfg(all(target_arch = "wasm32", feature = "gpu"))]
pub mod wasm;
