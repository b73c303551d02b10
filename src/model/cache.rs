//! The KV cache: per layer, keys and values for every position of the context, preallocated.
//!
//! Layout per layer and tensor: (context, h_kv, d), f32 or f16 (two halves per u32, low half
//! first), exactly what the attention kernels read. Keys are stored after RoPE, so a cached key
//! never needs rotating again.

use super::config::Config;
use crate::attention::KvDtype;
use crate::error::Result;
use crate::gpu::Gpu;

pub struct KvCache {
    layers: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    dtype: KvDtype,
    context: u32,
}

impl KvCache {
    pub fn new(gpu: &Gpu, cfg: &Config, context: u32, dtype: KvDtype) -> Result<Self> {
        let bytes =
            context as u64 * cfg.num_key_value_heads as u64 * cfg.head_dim as u64 * dtype.bytes();
        gpu.check_binding("the KV cache of one layer", bytes)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                Ok((
                    gpu.storage(&format!("layer {l} key cache"), bytes)?,
                    gpu.storage(&format!("layer {l} value cache"), bytes)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            dtype,
            context,
        })
    }

    pub fn layer(&self, l: usize) -> (&wgpu::Buffer, &wgpu::Buffer) {
        let (k, v) = &self.layers[l];
        (k, v)
    }

    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    pub fn context(&self) -> u32 {
        self.context
    }

    /// Bytes held on the GPU by all layers.
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(|(k, v)| k.size() + v.size()).sum()
    }
}
