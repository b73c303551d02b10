//! Choosing the next token from logits, on the CPU.
//!
//! Order of operations: repetition penalty, then greedy (temperature 0 or top-k 1) or
//! temperature scaling, top-k, top-p (nucleus), and a draw from the renormalised distribution.
//! Every random draw comes from one seeded generator, so a seed reproduces a run exactly.
//! A logit bias, where given, is added before all of it.

use crate::error::{Error, Result};
use crate::util::Rng;

/// The most alternatives a step reports ([`top_logprobs`], `GenerateOptions::top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The largest finite logit bias taken (in magnitude); beyond it a bias could overflow a logit.
/// A bias of minus infinity bans its token.
pub const MAX_LOGIT_BIAS: f32 = 1.0e6;

/// A likely token and its log-probability under the model's own distribution (the raw logits:
/// no bias, penalty or temperature).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Alternative {
    /// The token id.
    pub id: u32,
    /// Its natural-log probability.
    pub logprob: f32,
}

/// Sampling settings (see docs/model-format.md for the exact definitions).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 (or below) means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p; 1 keeps all.
    pub top_p: f32,
    /// CTRL-style penalty for tokens already seen: a positive logit is divided by it, a
    /// negative one multiplied. 1 disables it.
    pub repeat_penalty: f32,
    /// How many recent tokens (prompt included) the penalty looks at; 0 means all.
    pub repeat_last_n: usize,
    /// Seeds the random draws (the same seed, settings and prompt give the same tokens).
    pub seed: u64,
    /// Added to the raw logits before anything else, as (token id, bias); entries for one id add
    /// up, and a bias of `f32::NEG_INFINITY` bans the token. Ids must lie in the vocabulary and
    /// finite biases within [`MAX_LOGIT_BIAS`] in magnitude ([`SamplingParams::check`]).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: 0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// The repetition penalty used where none is given: 1.1 when sampling, none (1) for greedy
    /// decoding, so that temperature 0 is plain argmax, as other engines' greedy is.
    pub fn default_repeat_penalty(temperature: f32) -> f32 {
        if temperature <= 0.0 { 1.0 } else { 1.1 }
    }

    /// Argmax with nothing applied first (no penalty, no bias).
    pub fn is_plain_greedy(&self) -> bool {
        self.is_greedy()
            && (self.repeat_penalty == 1.0 || self.repeat_penalty <= 0.0)
            && self.logit_bias.is_empty()
    }

    /// Refuses a logit bias the sampler cannot apply for a vocabulary of `vocab` tokens: an id
    /// outside it, a NaN or positive-infinite bias, a finite one beyond [`MAX_LOGIT_BIAS`], or a
    /// bias that bans every token.
    pub fn check(&self, vocab: u32) -> Result<()> {
        for &(id, b) in &self.logit_bias {
            if id >= vocab {
                return Err(Error::config(format!(
                    "logit bias for token {id}: outside the vocabulary ({vocab} tokens)"
                )));
            }
            if b.is_nan() || b == f32::INFINITY || (b.is_finite() && b.abs() > MAX_LOGIT_BIAS) {
                return Err(Error::config(format!(
                    "logit bias {b} for token {id}: a finite value within +-{MAX_LOGIT_BIAS}, \
                     or -inf to ban the token"
                )));
            }
        }
        // A token with any -inf entry is banned whatever else is added to it.
        let banned: std::collections::HashSet<u32> = self
            .logit_bias
            .iter()
            .filter(|(_, b)| *b == f32::NEG_INFINITY)
            .map(|(id, _)| *id)
            .collect();
        if banned.len() >= vocab as usize {
            return Err(Error::config(
                "the logit bias bans every token of the vocabulary",
            ));
        }
        Ok(())
    }

    /// The logit bias as one value per vocabulary entry (entries for one id added up); `None`
    /// when there is none.
    pub fn dense_bias(&self, vocab: u32) -> Option<Vec<f32>> {
        if self.logit_bias.is_empty() {
            return None;
        }
        let mut dense = vec![0.0f32; vocab as usize];
        add_bias(&mut dense, &self.logit_bias);
        Some(dense)
    }

    /// Argmax after the repetition penalty (temperature 0 or top-k 1): no random draw.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }

    /// Whether the GPU sampler (`Engine::set_gpu_sampling`) takes these settings: plain greedy;
    /// greedy or a finite temperature above 0 with top_p in (0, 1], each with a repetition penalty
    /// that is off or looks back over 1 to 256 tokens. Anything else samples on the CPU from read-back logits.
    pub fn runs_on_gpu(&self) -> bool {
        if self.is_plain_greedy() {
            return true;
        }
        let window = self.repeat_penalty == 1.0
            || (self.repeat_penalty > 0.0
                && self.repeat_penalty.is_finite()
                && (1..=256).contains(&self.repeat_last_n));
        if self.is_greedy() {
            return window;
        }
        self.temperature > 0.0
            && self.temperature.is_finite()
            && self.top_p > 0.0
            && self.top_p <= 1.0
            && window
    }

    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            seed: 0,
            logit_bias: Vec::new(),
        }
    }
}

/// Adds each (id, bias) to `logits` (ids beyond them are skipped: [`SamplingParams::check`]
/// refuses those).
fn add_bias(logits: &mut [f32], bias: &[(u32, f32)]) {
    for &(id, b) in bias {
        if let Some(l) = logits.get_mut(id as usize) {
            *l += b;
        }
    }
}

/// log(sum exp(l)) over the finite logits, in float64: the normaliser of the model's own
/// log-probabilities.
pub fn log_normaliser(logits: &[f32]) -> f64 {
    let finite = || logits.iter().filter(|x| x.is_finite()).map(|&x| x as f64);
    let max = finite().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + finite().map(|x| (x - max).exp()).sum::<f64>().ln()
}

/// The log-probability of `id` under the model's own distribution (the raw logits).
pub fn logprob(logits: &[f32], id: u32) -> f32 {
    step_logprobs(logits, id, 0).0
}

/// Sorts (id, value) candidates most likely first, ties to the lower id, keeping the first `k`
/// (0 keeps all). A total order, so partial selection of the top k and a full sort agree exactly.
fn keep_most_likely(cand: &mut Vec<(u32, f64)>, k: usize) {
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k > 0 && k < cand.len() {
        cand.select_nth_unstable_by(k - 1, order);
        cand.truncate(k);
    }
    cand.sort_by(order);
}

/// The `n` most likely tokens under the raw logits (at most [`MAX_TOP_LOGPROBS`]), most likely
/// first, ties to the lower id; non-finite logits are left out.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<Alternative> {
    if n == 0 {
        return Vec::new();
    }
    ranked(logits, n, log_normaliser(logits))
}

/// `id`'s log-probability and the step's `n` alternatives ([`logprob`] and [`top_logprobs`]),
/// with the normaliser computed once.
pub fn step_logprobs(logits: &[f32], id: u32, n: usize) -> (f32, Vec<Alternative>) {
    let z = log_normaliser(logits);
    let l = logits.get(id as usize).copied().unwrap_or(f32::NAN) as f64;
    let top = if n == 0 {
        Vec::new()
    } else {
        ranked(logits, n, z)
    };
    ((l - z) as f32, top)
}

/// [`top_logprobs`] given the normaliser `z`.
fn ranked(logits: &[f32], n: usize, z: f64) -> Vec<Alternative> {
    let mut cand: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .filter(|(_, x)| x.is_finite())
        .map(|(i, &x)| (i as u32, x as f64))
        .collect();
    keep_most_likely(&mut cand, n.min(MAX_TOP_LOGPROBS));
    cand.into_iter()
        .map(|(id, x)| Alternative {
            id,
            logprob: (x - z) as f32,
        })
        .collect()
}

/// The index of the largest logit; the lowest index wins a tie, NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// A seeded sampler.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = Rng::new(params.seed);
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Adds the settings' logit bias to `logits`.
    pub fn bias(&self, logits: &mut [f32]) {
        add_bias(logits, &self.params.logit_bias);
    }

    /// Applies the repetition penalty to the tokens of `history` (each distinct id once).
    pub fn penalise(&self, logits: &mut [f32], history: &[u32]) {
        let r = self.params.repeat_penalty;
        if r == 1.0 || r <= 0.0 {
            return;
        }
        let n = self.params.repeat_last_n;
        let window = if n == 0 {
            history
        } else {
            &history[history.len().saturating_sub(n)..]
        };
        let mut seen = std::collections::HashSet::new();
        for &id in window {
            if let Some(l) = logits.get_mut(id as usize)
                && seen.insert(id)
            {
                *l = if *l > 0.0 { *l / r } else { *l * r };
            }
        }
    }

    /// The probabilities the sampler would draw from (after bias, penalty, temperature, top-k
    /// and top-p), as (id, p) sorted by decreasing p. Greedy gives one entry with p = 1.
    pub fn distribution(&self, logits: &[f32], history: &[u32]) -> Vec<(u32, f64)> {
        let mut l = logits.to_vec();
        self.bias(&mut l);
        self.penalise(&mut l, history);
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return vec![(argmax(&l), 1.0)];
        }
        let t = p.temperature as f64;
        let mut cand: Vec<(u32, f64)> = l
            .iter()
            .enumerate()
            // Banned tokens (bias -inf) have no probability; NaN none either.
            .filter(|(_, x)| **x > f32::NEG_INFINITY)
            .map(|(i, &x)| (i as u32, x as f64 / t))
            .collect();
        keep_most_likely(&mut cand, p.top_k);
        let max = cand.first().map_or(0.0, |c| c.1);
        let mut total = 0.0;
        for c in cand.iter_mut() {
            c.1 = (c.1 - max).exp();
            total += c.1;
        }
        for c in cand.iter_mut() {
            c.1 /= total;
        }
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = cand.len();
            for (i, c) in cand.iter().enumerate() {
                cum += c.1;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
            let total: f64 = cand.iter().map(|c| c.1).sum();
            for c in cand.iter_mut() {
                c.1 /= total;
            }
        }
        cand
    }

    /// Draws the next token.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let dist = self.distribution(logits, history);
        if dist.len() == 1 {
            return dist[0].0;
        }
        let u = self.rng.uniform();
        let mut cum = 0.0;
        for &(id, p) in &dist {
            cum += p;
            if u < cum {
                return id;
            }
        }
        dist.last().map_or(0, |c| c.0)
    }
}
