//! Attention maps for the demo's picture of DIFF V2, recomputed on the CPU from the host weights:
//! the GPU engine keeps no per-head probabilities (its flash kernels never materialise them). They
//! come from the CPU model of `reference::model` run in f32 (the same layers as the float64
//! oracle), one layer's weights in memory at a time; for a short prompt that takes well under a
//! second.

use crate::attention::Mode;
use crate::error::{Error, Result};
use crate::model::{Config, HostWeights};
use crate::reference::model::{Layer, embed};

/// Row-major (T, T) maps for one output head i: softmax of query heads 2i and 2i+1, lambda per
/// query token, and p1 - lambda * p2. Masked (future) entries are 0.
pub struct Maps {
    pub p1: Vec<f32>,
    pub p2: Vec<f32>,
    pub lambda: Vec<f32>,
    pub diff: Vec<f32>,
}

/// Prompts are cut to this many tokens: the maps are for looking at, and the cost is quadratic.
pub const MAX_TOKENS: usize = 64;

pub fn attention_maps(
    cfg: &Config,
    w: &HostWeights,
    ids: &[u32],
    layer: u32,
    head: u32,
) -> Result<Maps> {
    if cfg.mode() != Mode::Diff {
        return Err(Error::Unsupported(
            "attention maps of DIFF V2 need a diff_v2 model".into(),
        ));
    }
    if layer >= cfg.num_hidden_layers || head >= cfg.num_attention_heads {
        return Err(Error::config(format!(
            "layer {layer}, head {head}: the model has {} layers and {} heads",
            cfg.num_hidden_layers, cfg.num_attention_heads
        )));
    }
    if ids.is_empty() {
        return Err(Error::config("attention maps need a non-empty prompt"));
    }
    let ids = &ids[..ids.len().min(MAX_TOKENS)];
    let mut x = embed::<f32>(cfg, w, ids)?;
    for l in 0..layer {
        Layer::<f32>::load(cfg, w, l)?.forward(cfg, &mut x);
    }
    let att = Layer::<f32>::load(cfg, w, layer)?.attention_probs(cfg, &x);
    let t = ids.len();
    let h = cfg.num_attention_heads as usize;
    let hi = head as usize;
    let map = |qh: usize| att.probs[qh * t * t..][..t * t].to_vec();
    let (p1, p2) = (map(2 * hi), map(2 * hi + 1));
    let all = att
        .lambda
        .ok_or_else(|| Error::Unsupported("attention maps need lambda".into()))?;
    let lambda: Vec<f32> = (0..t).map(|i| all[i * h + hi]).collect();
    let diff = p1
        .iter()
        .zip(&p2)
        .enumerate()
        .map(|(idx, (a, b))| a - lambda[idx / t] * b)
        .collect();
    Ok(Maps {
        p1,
        p2,
        lambda,
        diff,
    })
}
