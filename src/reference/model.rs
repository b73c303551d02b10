//! The whole model on the CPU: the oracle for the GPU engine. In float64 ([`RefModel`]) it runs
//! the same weights, widened or dequantized exactly (ggml block types through [`super::dequant`],
//! not the GPU's decoder), with no cache, no chunking and no fused operations, recomputing the
//! whole sequence each call, so it shares no logic with the engine beyond the math itself.
//!
//! The model is written once, generic over the float type: the browser's attention maps run the
//! same layers in f32 ([`Layer`], [`Layer::attention_probs`]), where float64 weights would double
//! the wasm memory for a picture.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use crate::attention::Mode;
use crate::error::{Error, Result};
use crate::model::{Config, HostWeights};

/// The float types the CPU model runs in (f64 for the oracle, f32 for the attention maps).
pub trait Real:
    Copy
    + Debug
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + Sum
    + 'static
{
    /// `x` rounded to this type.
    fn of(x: f64) -> Self;
    /// e^self.
    fn exp(self) -> Self;
    /// The square root.
    fn sqrt(self) -> Self;
    /// A tensor in this type (f64: exact; f32: widened, block types dequantized in f32).
    fn tensor(weights: &HostWeights, name: &str) -> Result<Vec<Self>>;
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn tensor(weights: &HostWeights, name: &str) -> Result<Vec<Self>> {
        weights.to_f64(name)
    }
}

impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn tensor(weights: &HostWeights, name: &str) -> Result<Vec<Self>> {
        weights.to_f32(name)
    }
}

struct Linear<F> {
    w: Vec<F>,
    n_in: usize,
    n_out: usize,
}

impl<F: Real> Linear<F> {
    fn load(weights: &HostWeights, name: &str) -> Result<Self> {
        let info = weights.info(name)?;
        Ok(Self {
            n_out: info.shape[0],
            n_in: info.shape[1],
            w: F::tensor(weights, name)?,
        })
    }

    fn apply(&self, x: &[F]) -> Vec<F> {
        (0..self.n_out)
            .map(|o| {
                let row = &self.w[o * self.n_in..][..self.n_in];
                row.iter().zip(x).map(|(&a, &b)| a * b).sum()
            })
            .collect()
    }
}

fn sigmoid<F: Real>(x: F) -> F {
    F::of(1.0) / (F::of(1.0) + (-x).exp())
}

fn rmsnorm<F: Real>(x: &[F], w: &[F], eps: f64) -> Vec<F> {
    let ms = x.iter().map(|&v| v * v).sum::<F>() / F::of(x.len() as f64);
    let inv = F::of(1.0) / (ms + F::of(eps)).sqrt();
    x.iter().zip(w).map(|(&a, &b)| a * inv * b).collect()
}

/// Interleaved RoPE on one head vector at position `pos` (half-split checkpoints are reordered
/// at load, so the model sees adjacent pairs either way).
fn rope<F: Real>(x: &mut [F], pos: usize, theta: f64) {
    let d = x.len();
    for i in 0..d / 2 {
        let angle = pos as f64 * theta.powf(-2.0 * i as f64 / d as f64);
        let (s, c) = angle.sin_cos();
        let (s, c) = (F::of(s), F::of(c));
        let (a, b) = (x[2 * i], x[2 * i + 1]);
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = a * s + b * c;
    }
}

/// One decoder layer's weights.
pub struct Layer<F> {
    ln_in: Vec<F>,
    ln_post: Vec<F>,
    q: Linear<F>,
    k: Linear<F>,
    v: Linear<F>,
    o: Linear<F>,
    lam: Option<Linear<F>>,
    gate: Linear<F>,
    up: Linear<F>,
    down: Linear<F>,
}

/// One layer's attention, as the demo draws it.
pub struct AttentionProbs<F> {
    /// Softmax probabilities per query head, (q_heads, T, T) row-major; future entries are 0.
    pub probs: Vec<F>,
    /// sigmoid(lambda) per token and output head, (T, h) (DIFF V2 only).
    pub lambda: Option<Vec<F>>,
}

/// What attention computes for a sequence: per-head probabilities and the lambda weights.
struct Attended<F> {
    /// Per query head and query position, the probabilities over positions 0..=t.
    probs: Vec<Vec<Vec<F>>>,
    /// sigmoid(lambda) per position, per output head.
    lambda: Option<Vec<Vec<F>>>,
    /// Values per position (kv_heads * d).
    v: Vec<Vec<F>>,
}

impl<F: Real> Layer<F> {
    /// Layer `l` of a model, in F.
    pub fn load(cfg: &Config, weights: &HostWeights, l: u32) -> Result<Self> {
        let p = format!("model.layers.{l}");
        let lin = |name: &str| Linear::load(weights, &format!("{p}.{name}"));
        Ok(Self {
            ln_in: F::tensor(weights, &format!("{p}.input_layernorm.weight"))?,
            ln_post: F::tensor(weights, &format!("{p}.post_attention_layernorm.weight"))?,
            q: lin("self_attn.q_proj.weight")?,
            k: lin("self_attn.k_proj.weight")?,
            v: lin("self_attn.v_proj.weight")?,
            o: lin("self_attn.o_proj.weight")?,
            lam: match cfg.mode() {
                Mode::Diff => Some(lin("self_attn.lambda_proj.weight")?),
                Mode::Standard => None,
            },
            gate: lin("mlp.gate_proj.weight")?,
            up: lin("mlp.up_proj.weight")?,
            down: lin("mlp.down_proj.weight")?,
        })
    }

    /// Softmax attention of every query head over the causal prefix of `x` (T, hidden).
    fn attend(&self, cfg: &Config, x: &[Vec<F>]) -> Attended<F> {
        let d = cfg.head_dim as usize;
        let hq = cfg.q_heads() as usize;
        let group = hq / cfg.num_key_value_heads as usize;
        let a: Vec<Vec<F>> = x
            .iter()
            .map(|r| rmsnorm(r, &self.ln_in, cfg.rms_norm_eps))
            .collect();
        let mut q: Vec<Vec<F>> = a.iter().map(|r| self.q.apply(r)).collect();
        let mut k: Vec<Vec<F>> = a.iter().map(|r| self.k.apply(r)).collect();
        let v: Vec<Vec<F>> = a.iter().map(|r| self.v.apply(r)).collect();
        for pos in 0..x.len() {
            for head in q[pos].chunks_mut(d) {
                rope(head, pos, cfg.rope_theta);
            }
            for head in k[pos].chunks_mut(d) {
                rope(head, pos, cfg.rope_theta);
            }
        }
        let scale = F::of(1.0 / (d as f64).sqrt());
        let probs = (0..hq)
            .map(|j| {
                let kv = j / group;
                (0..x.len())
                    .map(|t| {
                        let qj = &q[t][j * d..][..d];
                        let scores: Vec<F> = (0..=t)
                            .map(|s| {
                                let ks = &k[s][kv * d..][..d];
                                qj.iter().zip(ks).map(|(&a, &b)| a * b).sum::<F>() * scale
                            })
                            .collect();
                        let m = scores
                            .iter()
                            .copied()
                            .fold(scores[0], |m, s| if s > m { s } else { m });
                        let e: Vec<F> = scores.iter().map(|&s| (s - m).exp()).collect();
                        let z: F = e.iter().copied().sum();
                        e.into_iter().map(|w| w / z).collect()
                    })
                    .collect()
            })
            .collect();
        let lambda = self.lam.as_ref().map(|lam| {
            a.iter()
                .map(|r| lam.apply(r).into_iter().map(sigmoid).collect())
                .collect()
        });
        Attended { probs, lambda, v }
    }

    /// The layer applied to `x` (T, hidden) in place.
    pub fn forward(&self, cfg: &Config, x: &mut [Vec<F>]) {
        let d = cfg.head_dim as usize;
        let hq = cfg.q_heads() as usize;
        let group = hq / cfg.num_key_value_heads as usize;
        let h = cfg.num_attention_heads as usize;
        let att = self.attend(cfg, x);
        for t in 0..x.len() {
            // o: every query head's probability-weighted values.
            let mut o = vec![vec![F::default(); d]; hq];
            for (j, oj) in o.iter_mut().enumerate() {
                let kv = j / group;
                for (s, &w) in att.probs[j][t].iter().enumerate() {
                    for (acc, &vv) in oj.iter_mut().zip(&att.v[s][kv * d..][..d]) {
                        *acc += w * vv;
                    }
                }
            }
            // c: output head i = o[2i] - sigmoid(lam_i) o[2i+1] (DIFF V2), or o (standard).
            let mut c = Vec::with_capacity(h * d);
            match &att.lambda {
                Some(lam) => {
                    for (i, &s) in lam[t].iter().enumerate() {
                        c.extend(o[2 * i].iter().zip(&o[2 * i + 1]).map(|(&p, &q)| p - s * q));
                    }
                }
                None => o.iter().for_each(|oi| c.extend_from_slice(oi)),
            }
            for (xv, y) in x[t].iter_mut().zip(self.o.apply(&c)) {
                *xv += y;
            }
            let b = rmsnorm(&x[t], &self.ln_post, cfg.rms_norm_eps);
            let g = self.gate.apply(&b);
            let u = self.up.apply(&b);
            let m: Vec<F> = g
                .iter()
                .zip(&u)
                .map(|(&g, &u)| g * sigmoid(g) * u)
                .collect();
            for (xv, y) in x[t].iter_mut().zip(self.down.apply(&m)) {
                *xv += y;
            }
        }
    }

    /// This layer's attention probabilities for the input `x` (T, hidden), which is the output
    /// of the layers before it.
    pub fn attention_probs(&self, cfg: &Config, x: &[Vec<F>]) -> AttentionProbs<F> {
        let t_len = x.len();
        let att = self.attend(cfg, x);
        let mut probs = vec![F::default(); att.probs.len() * t_len * t_len];
        for (j, rows) in att.probs.iter().enumerate() {
            for (t, row) in rows.iter().enumerate() {
                probs[(j * t_len + t) * t_len..][..row.len()].copy_from_slice(row);
            }
        }
        AttentionProbs {
            probs,
            lambda: att.lambda.map(|l| l.concat()),
        }
    }
}

/// Attention maps of one output head i (DIFF V2): the softmax maps of query heads 2i and 2i + 1,
/// sigmoid(lambda) per query token, and p1 - lambda p2; each (T, T) row-major, future positions 0.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Maps<F> {
    pub p1: Vec<F>,
    pub p2: Vec<F>,
    pub lambda: Vec<F>,
    pub diff: Vec<F>,
}

/// The float64 maps: the oracle of the browser's `attentionMaps`.
pub type RefMaps = Maps<f64>;

fn check_maps_request(cfg: &Config, ids: &[u32], layer: u32, head: u32) -> Result<()> {
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
    Ok(())
}

fn maps_of<F: Real>(att: AttentionProbs<F>, cfg: &Config, t: usize, head: u32) -> Maps<F> {
    let h = cfg.num_attention_heads as usize;
    let i = head as usize;
    let map = |qh: usize| att.probs[qh * t * t..][..t * t].to_vec();
    let (p1, p2) = (map(2 * i), map(2 * i + 1));
    let all = att.lambda.unwrap_or_default();
    let lambda: Vec<F> = (0..t).map(|q| all[q * h + i]).collect();
    let diff = p1
        .iter()
        .zip(&p2)
        .enumerate()
        .map(|(k, (&a, &b))| a - lambda[k / t] * b)
        .collect();
    Maps {
        p1,
        p2,
        lambda,
        diff,
    }
}

/// The attention maps of output head `head` in layer `layer` over `ids`, computed in F with one
/// layer's weights in memory at a time (the browser's maps run this in f32).
pub fn attention_maps<F: Real>(
    cfg: &Config,
    weights: &HostWeights,
    ids: &[u32],
    layer: u32,
    head: u32,
) -> Result<Maps<F>> {
    check_maps_request(cfg, ids, layer, head)?;
    let mut x = embed::<F>(cfg, weights, ids)?;
    for l in 0..layer {
        Layer::<F>::load(cfg, weights, l)?.forward(cfg, &mut x);
    }
    let att = Layer::<F>::load(cfg, weights, layer)?.attention_probs(cfg, &x);
    Ok(maps_of(att, cfg, ids.len(), head))
}

/// The embedding rows of `ids` in F (T, hidden).
pub fn embed<F: Real>(cfg: &Config, weights: &HostWeights, ids: &[u32]) -> Result<Vec<Vec<F>>> {
    let table = F::tensor(weights, "model.embed_tokens.weight")?;
    Ok(rows(&table, cfg.hidden_size as usize, ids))
}

fn rows<F: Real>(table: &[F], dm: usize, ids: &[u32]) -> Vec<Vec<F>> {
    ids.iter()
        .map(|&id| table[id as usize * dm..][..dm].to_vec())
        .collect()
}

/// The model in F: [`RefModel`] is the float64 oracle.
pub struct Model<F> {
    cfg: Config,
    embed: Vec<F>,
    layers: Vec<Layer<F>>,
    norm: Vec<F>,
    head: Linear<F>,
}

/// The float64 model: the oracle every GPU result is checked against.
pub type RefModel = Model<f64>;

impl<F: Real> Model<F> {
    /// Loads every weight in F (checked against the config first).
    pub fn new(cfg: &Config, weights: &HostWeights) -> Result<Self> {
        weights.check(cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| Layer::load(cfg, weights, l))
            .collect::<Result<_>>()?;
        let head = if cfg.tie_word_embeddings {
            Linear::load(weights, "model.embed_tokens.weight")?
        } else {
            Linear::load(weights, "lm_head.weight")?
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed: F::tensor(weights, "model.embed_tokens.weight")?,
            layers,
            norm: F::tensor(weights, "model.norm.weight")?,
            head,
        })
    }

    /// Logits (vocab) at every position of `ids`.
    pub fn forward(&self, ids: &[u32]) -> Vec<Vec<F>> {
        let mut x = rows(&self.embed, self.cfg.hidden_size as usize, ids);
        for layer in &self.layers {
            layer.forward(&self.cfg, &mut x);
        }
        x.iter()
            .map(|r| {
                self.head
                    .apply(&rmsnorm(r, &self.norm, self.cfg.rms_norm_eps))
            })
            .collect()
    }

    /// The attention maps of output head `head` in layer `layer` over `ids` (DIFF V2 models), from
    /// the layers already loaded.
    pub fn attention_maps(&self, ids: &[u32], layer: u32, head: u32) -> Result<Maps<F>> {
        check_maps_request(&self.cfg, ids, layer, head)?;
        let mut x = rows(&self.embed, self.cfg.hidden_size as usize, ids);
        for l in &self.layers[..layer as usize] {
            l.forward(&self.cfg, &mut x);
        }
        let att = self.layers[layer as usize].attention_probs(&self.cfg, &x);
        Ok(maps_of(att, &self.cfg, ids.len(), head))
    }

    /// Logits at the last position of `ids`.
    pub fn last_logits(&self, ids: &[u32]) -> Vec<F> {
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
