//! Attention maps for the demo's picture of DIFF V2, recomputed on the CPU from the host weights:
//! the GPU engine keeps no per-head probabilities (its flash kernels never materialise them). They
//! come from the CPU model of `reference::model` run in f32 (the same layers as the float64
//! oracle, `diffattn maps`), one layer's weights in memory at a time; for a short prompt that
//! takes well under a second.

use crate::error::Result;
use crate::model::{Config, HostWeights};
use crate::reference::model::Maps;

/// Prompts are cut to this many tokens: the maps are for looking at, and the cost is quadratic.
pub const MAX_TOKENS: usize = 64;

/// The maps of output head `head` in layer `layer` over (at most [`MAX_TOKENS`] of) `ids`.
pub fn attention_maps(
    cfg: &Config,
    w: &HostWeights,
    ids: &[u32],
    layer: u32,
    head: u32,
) -> Result<Maps<f32>> {
    let ids = &ids[..ids.len().min(MAX_TOKENS)];
    crate::reference::model::attention_maps::<f32>(cfg, w, ids, layer, head)
}
