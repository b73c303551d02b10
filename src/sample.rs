//! Choosing the next token from logits, on the CPU.
//!
//! Order of operations: repetition penalty, then greedy (temperature 0 or top-k 1) or
//! temperature scaling, top-k, top-p (nucleus), and a draw from the renormalised distribution.
//! Every random draw comes from one seeded generator, so a seed reproduces a run exactly.

use crate::util::Rng;

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
    pub seed: u64,
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
        }
    }
}

impl SamplingParams {
    /// The repetition penalty used where none is given: 1.1 when sampling, none (1) for greedy
    /// decoding, so that temperature 0 is plain argmax, as other engines' greedy is.
    pub fn default_repeat_penalty(temperature: f32) -> f32 {
        if temperature <= 0.0 { 1.0 } else { 1.1 }
    }

    /// Argmax with nothing applied first (no penalty): what the GPU picks without a round trip.
    pub fn is_plain_greedy(&self) -> bool {
        self.is_greedy() && (self.repeat_penalty == 1.0 || self.repeat_penalty <= 0.0)
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
        }
    }
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

    /// The probabilities the sampler would draw from (after penalty, temperature, top-k and
    /// top-p), as (id, p) sorted by decreasing p. Greedy gives one entry with p = 1.
    pub fn distribution(&self, logits: &[f32], history: &[u32]) -> Vec<(u32, f64)> {
        let mut l = logits.to_vec();
        self.penalise(&mut l, history);
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return vec![(argmax(&l), 1.0)];
        }
        let t = p.temperature as f64;
        let mut cand: Vec<(u32, f64)> = l
            .iter()
            .enumerate()
            .filter(|(_, x)| !x.is_nan())
            .map(|(i, &x)| (i as u32, x as f64 / t))
            .collect();
        // Most likely first, ties to the lower id: a total order, so partial selection of the
        // top k and a full sort agree exactly.
        let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, order);
            cand.truncate(p.top_k);
        }
        cand.sort_by(order);
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
