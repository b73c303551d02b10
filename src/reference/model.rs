//! The whole model in float64 on the CPU: the oracle for the GPU engine. It runs the same
//! weights, widened or dequantized exactly to float64 (ggml block types through
//! [`super::dequant`], not the GPU's decoder), with no cache, no chunking and no fused
//! operations, recomputing the whole sequence each call, so it shares no logic with the engine
//! beyond the math itself.

use crate::attention::Mode;
use crate::error::{Error, Result};
use crate::model::{Config, HostWeights};

struct Linear {
    w: Vec<f64>,
    n_in: usize,
    n_out: usize,
}

impl Linear {
    fn apply(&self, x: &[f64]) -> Vec<f64> {
        (0..self.n_out)
            .map(|o| {
                let row = &self.w[o * self.n_in..][..self.n_in];
                row.iter().zip(x).map(|(a, b)| a * b).sum()
            })
            .collect()
    }
}

struct Layer {
    ln_in: Vec<f64>,
    ln_post: Vec<f64>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    lam: Option<Linear>,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Attention maps of one output head (see [`RefModel::attention_maps`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RefMaps {
    pub p1: Vec<f64>,
    pub p2: Vec<f64>,
    pub lambda: Vec<f64>,
    pub diff: Vec<f64>,
}

/// The float64 model.
pub struct RefModel {
    cfg: Config,
    embed: Vec<f64>,
    layers: Vec<Layer>,
    norm: Vec<f64>,
    head: Linear,
}

fn rmsnorm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(a, b)| a * inv * b).collect()
}

/// Interleaved RoPE on one head vector at position `pos`.
fn rope(x: &mut [f64], pos: usize, theta: f64) {
    let d = x.len();
    for i in 0..d / 2 {
        let angle = pos as f64 * theta.powf(-2.0 * i as f64 / d as f64);
        let (s, c) = angle.sin_cos();
        let (a, b) = (x[2 * i], x[2 * i + 1]);
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = a * s + b * c;
    }
}

impl RefModel {
    pub fn new(cfg: &Config, weights: &HostWeights) -> Result<Self> {
        weights.check(cfg)?;
        let lin = |name: &str| -> Result<Linear> {
            let info = weights.info(name)?;
            Ok(Linear {
                n_out: info.shape[0],
                n_in: info.shape[1],
                w: weights.to_f64(name)?,
            })
        };
        let vec = |name: &str| -> Result<Vec<f64>> { weights.to_f64(name) };
        let mut layers = Vec::new();
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            layers.push(Layer {
                ln_in: vec(&format!("{p}.input_layernorm.weight"))?,
                ln_post: vec(&format!("{p}.post_attention_layernorm.weight"))?,
                q: lin(&format!("{p}.self_attn.q_proj.weight"))?,
                k: lin(&format!("{p}.self_attn.k_proj.weight"))?,
                v: lin(&format!("{p}.self_attn.v_proj.weight"))?,
                o: lin(&format!("{p}.self_attn.o_proj.weight"))?,
                lam: match cfg.mode() {
                    Mode::Diff => Some(lin(&format!("{p}.self_attn.lambda_proj.weight"))?),
                    Mode::Standard => None,
                },
                gate: lin(&format!("{p}.mlp.gate_proj.weight"))?,
                up: lin(&format!("{p}.mlp.up_proj.weight"))?,
                down: lin(&format!("{p}.mlp.down_proj.weight"))?,
            });
        }
        let head = if cfg.tie_word_embeddings {
            lin("model.embed_tokens.weight")?
        } else {
            lin("lm_head.weight")?
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed: vec("model.embed_tokens.weight")?,
            layers,
            norm: vec("model.norm.weight")?,
            head,
        })
    }

    /// Logits (vocab) at every position of `ids`.
    pub fn forward(&self, ids: &[u32]) -> Vec<Vec<f64>> {
        let eps = self.cfg.rms_norm_eps;
        let mut x = self.embed(ids);
        for layer in &self.layers {
            self.layer(layer, &mut x, None);
        }
        x.iter()
            .map(|r| self.head.apply(&rmsnorm(r, &self.norm, eps)))
            .collect()
    }

    /// The attention maps of output head `head` in layer `layer` over `ids` (DIFF V2 models):
    /// the two softmax maps of query heads 2*head and 2*head + 1, sigmoid(lambda) per query
    /// token, and p1 - lambda p2; each (T, T) row-major, future positions 0. The float64 oracle
    /// of the browser's `attentionMaps`.
    pub fn attention_maps(&self, ids: &[u32], layer: u32, head: u32) -> Result<RefMaps> {
        let cfg = &self.cfg;
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
        if let Some(&bad) = ids.iter().find(|&&id| id >= cfg.vocab_size) {
            return Err(Error::Model(format!(
                "token id {bad} is outside the vocabulary ({})",
                cfg.vocab_size
            )));
        }
        let mut x = self.embed(ids);
        for l in &self.layers[..layer as usize] {
            self.layer(l, &mut x, None);
        }
        let mut maps = RefMaps {
            p1: Vec::new(),
            p2: Vec::new(),
            lambda: Vec::new(),
            diff: Vec::new(),
        };
        self.layer(
            &self.layers[layer as usize],
            &mut x,
            Some((head as usize, &mut maps)),
        );
        Ok(maps)
    }

    fn embed(&self, ids: &[u32]) -> Vec<Vec<f64>> {
        let dm = self.cfg.hidden_size as usize;
        ids.iter()
            .map(|&id| self.embed[id as usize * dm..][..dm].to_vec())
            .collect()
    }

    /// One decoder layer over the whole sequence `x`, in place. With `maps`, the probabilities
    /// of that output head are recorded as they are computed.
    fn layer(&self, layer: &Layer, x: &mut [Vec<f64>], mut maps: Option<(usize, &mut RefMaps)>) {
        let cfg = &self.cfg;
        let d = cfg.head_dim as usize;
        let hq = cfg.q_heads() as usize;
        let hkv = cfg.num_key_value_heads as usize;
        let h = cfg.num_attention_heads as usize;
        let eps = cfg.rms_norm_eps;
        let t_len = x.len();
        if let Some((_, m)) = maps.as_mut() {
            m.p1 = vec![0.0; t_len * t_len];
            m.p2 = vec![0.0; t_len * t_len];
            m.lambda = vec![0.0; t_len];
        }
        let a: Vec<Vec<f64>> = x.iter().map(|r| rmsnorm(r, &layer.ln_in, eps)).collect();
        let mut q: Vec<Vec<f64>> = a.iter().map(|r| layer.q.apply(r)).collect();
        let mut k: Vec<Vec<f64>> = a.iter().map(|r| layer.k.apply(r)).collect();
        let v: Vec<Vec<f64>> = a.iter().map(|r| layer.v.apply(r)).collect();
        for pos in 0..t_len {
            for head in q[pos].chunks_mut(d) {
                rope(head, pos, cfg.rope_theta);
            }
            for head in k[pos].chunks_mut(d) {
                rope(head, pos, cfg.rope_theta);
            }
        }
        let scale = 1.0 / (d as f64).sqrt();
        let group = hq / hkv;
        for t in 0..t_len {
            // o: every query head's softmax attention over positions 0..=t.
            let mut o = vec![vec![0.0f64; d]; hq];
            for (j, oj) in o.iter_mut().enumerate() {
                let kv = j / group;
                let qj = &q[t][j * d..][..d];
                let scores: Vec<f64> = (0..=t)
                    .map(|s| {
                        let ks = &k[s][kv * d..][..d];
                        qj.iter().zip(ks).map(|(a, b)| a * b).sum::<f64>() * scale
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (s, w) in e.iter().enumerate() {
                    for (acc, vv) in oj.iter_mut().zip(&v[s][kv * d..][..d]) {
                        *acc += w / z * vv;
                    }
                }
                if let Some((i, m)) = maps.as_mut() {
                    let row = if j == 2 * *i {
                        &mut m.p1
                    } else if j == 2 * *i + 1 {
                        &mut m.p2
                    } else {
                        continue;
                    };
                    for (s, w) in e.iter().enumerate() {
                        row[t * t_len + s] = w / z;
                    }
                }
            }
            // c: output head i = o[2i] - sigmoid(lam_i) o[2i+1] (DIFF V2), or o (standard).
            let mut c = Vec::with_capacity(h * d);
            match &layer.lam {
                Some(lam) => {
                    let l = lam.apply(&a[t]);
                    for i in 0..h {
                        let s = 1.0 / (1.0 + (-l[i]).exp());
                        if let Some((want, m)) = maps.as_mut()
                            && *want == i
                        {
                            m.lambda[t] = s;
                        }
                        c.extend(o[2 * i].iter().zip(&o[2 * i + 1]).map(|(p, q)| p - s * q));
                    }
                }
                None => o.iter().for_each(|oi| c.extend_from_slice(oi)),
            }
            for (xv, y) in x[t].iter_mut().zip(layer.o.apply(&c)) {
                *xv += y;
            }
            let b = rmsnorm(&x[t], &layer.ln_post, eps);
            let g = layer.gate.apply(&b);
            let u = layer.up.apply(&b);
            let m: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            for (xv, y) in x[t].iter_mut().zip(layer.down.apply(&m)) {
                *xv += y;
            }
        }
        if let Some((_, m)) = maps {
            m.diff = (0..t_len * t_len)
                .map(|k| m.p1[k] - m.lambda[k / t_len] * m.p2[k])
                .collect();
        }
    }

    /// Logits at the last position of `ids`.
    pub fn last_logits(&self, ids: &[u32]) -> Vec<f64> {
        self.forward(ids).pop().unwrap_or_default()
    }

    /// Greedy continuation of `n` tokens (lowest id wins a tie), no stop at EOS.
    pub fn greedy(&self, ids: &[u32], n: usize) -> Vec<u32> {
        let mut seq = ids.to_vec();
        let mut out = Vec::new();
        for _ in 0..n {
            let logits = self.last_logits(&seq);
            let mut best = 0;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = i;
                }
            }
            out.push(best as u32);
            seq.push(best as u32);
        }
        out
    }
}
