//! Attention maps for the demo's picture of DIFF V2, recomputed on the CPU from the host weights:
//! the GPU engine keeps no per-head probabilities (its flash kernels never materialise them), and
//! for a short prompt a plain f32 forward pass up to the chosen layer takes well under a second.
//! A visualisation, not an oracle: `reference::model` is the checked float64 model.

use crate::attention::Mode;
use crate::error::{Error, Result};
use crate::model::{Config, HostWeights};

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

struct Lin {
    w: Vec<f32>,
    n_in: usize,
    n_out: usize,
}

impl Lin {
    fn load(w: &HostWeights, name: &str) -> Result<Self> {
        let info = w.info(name)?;
        Ok(Self {
            n_out: info.shape[0],
            n_in: info.shape[1],
            w: w.to_f32(name)?,
        })
    }

    /// (T, n_in) -> (T, n_out); weights are (out, in) as PyTorch stores them.
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let t = x.len() / self.n_in;
        let mut y = vec![0.0; t * self.n_out];
        for r in 0..t {
            let xr = &x[r * self.n_in..][..self.n_in];
            for o in 0..self.n_out {
                let wr = &self.w[o * self.n_in..][..self.n_in];
                y[r * self.n_out + o] = wr.iter().zip(xr).map(|(a, b)| a * b).sum();
            }
        }
        y
    }
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut out = vec![0.0; x.len()];
    for (row, o) in x.chunks(d).zip(out.chunks_mut(d)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for i in 0..d {
            o[i] = row[i] * inv * w[i];
        }
    }
    out
}

/// Interleaved RoPE over (T, heads, d) at positions 0..T.
fn rope(x: &mut [f32], heads: usize, d: usize, theta: f64) {
    for (pos, row) in x.chunks_mut(heads * d).enumerate() {
        for h in row.chunks_mut(d) {
            for i in 0..d / 2 {
                let angle = pos as f64 * theta.powf(-2.0 * i as f64 / d as f64);
                let (s, c) = (angle.sin() as f32, angle.cos() as f32);
                let (a, b) = (h[2 * i], h[2 * i + 1]);
                h[2 * i] = a * c - b * s;
                h[2 * i + 1] = a * s + b * c;
            }
        }
    }
}

/// Causal softmax maps (T, T) for query head `qh` reading KV head `kh`.
#[allow(clippy::too_many_arguments)]
fn probs(
    q: &[f32],
    k: &[f32],
    t: usize,
    q_heads: usize,
    kv_heads: usize,
    d: usize,
    qh: usize,
    kh: usize,
) -> Vec<f32> {
    let scale = 1.0 / (d as f32).sqrt();
    let mut p = vec![0.0; t * t];
    for i in 0..t {
        let qi = &q[(i * q_heads + qh) * d..][..d];
        let row = &mut p[i * t..][..=i];
        for (j, s) in row.iter_mut().enumerate() {
            let kj = &k[(j * kv_heads + kh) * d..][..d];
            *s = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
        }
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for s in row.iter_mut() {
            *s /= sum;
        }
    }
    p
}

/// Causal attention output (T, q_heads, d) for all heads, DIFF V2 combined into (T, h, d).
fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lam: Option<&[f32]>,
    t: usize,
    cfg: &Config,
) -> Vec<f32> {
    let (qh_n, kv_n, d, h) = (
        cfg.q_heads() as usize,
        cfg.num_key_value_heads as usize,
        cfg.head_dim as usize,
        cfg.num_attention_heads as usize,
    );
    let group = qh_n / kv_n;
    let mut o = vec![0.0; t * qh_n * d];
    for qh in 0..qh_n {
        let kh = qh / group;
        let p = probs(q, k, t, qh_n, kv_n, d, qh, kh);
        for i in 0..t {
            let out = &mut o[(i * qh_n + qh) * d..][..d];
            for j in 0..=i {
                let w = p[i * t + j];
                let vj = &v[(j * kv_n + kh) * d..][..d];
                for (a, b) in out.iter_mut().zip(vj) {
                    *a += w * b;
                }
            }
        }
    }
    match lam {
        None => o,
        Some(lam) => {
            let mut c = vec![0.0; t * h * d];
            for i in 0..t {
                for hi in 0..h {
                    let l = lam[i * h + hi];
                    for x in 0..d {
                        c[(i * h + hi) * d + x] =
                            o[(i * qh_n + 2 * hi) * d + x] - l * o[(i * qh_n + 2 * hi + 1) * d + x];
                    }
                }
            }
            c
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

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
    let t = ids.len();
    let dm = cfg.hidden_size as usize;
    let eps = cfg.rms_norm_eps as f32;
    let (qh_n, kv_n, d, h) = (
        cfg.q_heads() as usize,
        cfg.num_key_value_heads as usize,
        cfg.head_dim as usize,
        cfg.num_attention_heads as usize,
    );

    let embed = w.to_f32("model.embed_tokens.weight")?;
    let mut x: Vec<f32> = ids
        .iter()
        .flat_map(|&id| embed[id as usize * dm..][..dm].to_vec())
        .collect();
    drop(embed);

    for l in 0..=layer as usize {
        let p = format!("model.layers.{l}");
        let a = rmsnorm(&x, &w.to_f32(&format!("{p}.input_layernorm.weight"))?, eps);
        let mut q = Lin::load(w, &format!("{p}.self_attn.q_proj.weight"))?.apply(&a);
        let mut k = Lin::load(w, &format!("{p}.self_attn.k_proj.weight"))?.apply(&a);
        rope(&mut q, qh_n, d, cfg.rope_theta);
        rope(&mut k, kv_n, d, cfg.rope_theta);
        let lam: Vec<f32> = Lin::load(w, &format!("{p}.self_attn.lambda_proj.weight"))?
            .apply(&a)
            .into_iter()
            .map(sigmoid)
            .collect();
        if l == layer as usize {
            let hi = head as usize;
            let kh = 2 * hi / (qh_n / kv_n);
            let p1 = probs(&q, &k, t, qh_n, kv_n, d, 2 * hi, kh);
            let p2 = probs(&q, &k, t, qh_n, kv_n, d, 2 * hi + 1, kh);
            let lambda: Vec<f32> = (0..t).map(|i| lam[i * h + hi]).collect();
            let diff = p1
                .iter()
                .zip(&p2)
                .enumerate()
                .map(|(idx, (a, b))| a - lambda[idx / t] * b)
                .collect();
            return Ok(Maps {
                p1,
                p2,
                lambda,
                diff,
            });
        }
        let v = Lin::load(w, &format!("{p}.self_attn.v_proj.weight"))?.apply(&a);
        let c = attend(&q, &k, &v, Some(&lam), t, cfg);
        let o = Lin::load(w, &format!("{p}.self_attn.o_proj.weight"))?.apply(&c);
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        let a = rmsnorm(
            &x,
            &w.to_f32(&format!("{p}.post_attention_layernorm.weight"))?,
            eps,
        );
        let gate = Lin::load(w, &format!("{p}.mlp.gate_proj.weight"))?.apply(&a);
        let up = Lin::load(w, &format!("{p}.mlp.up_proj.weight"))?.apply(&a);
        let hmid: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(g, u)| g * sigmoid(*g) * u)
            .collect();
        let down = Lin::load(w, &format!("{p}.mlp.down_proj.weight"))?.apply(&hmid);
        x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
    }
    unreachable!("the loop returns at the chosen layer")
}
