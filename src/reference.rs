//! The float64 CPU oracle. This is the DIFF V2 math written as plainly as possible; every GPU kernel
//! is checked against it.

use crate::attention::{AttentionCall, AttentionConfig, HostInputs, Mode, check_host};
use crate::error::Result;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Softmax attention of every query head: returns o (N, q_heads, d), before the differential.
///
/// Query head j reads KV head j / (q_heads / kv_heads). With a causal mask, query row n sits at
/// position past_len + n and sees keys 0..=past_len + n.
pub fn head_outputs(
    cfg: &AttentionConfig,
    call: &AttentionCall,
    x: &HostInputs,
) -> Result<Vec<f64>> {
    check_host(cfg, call, x)?;
    let (n_q, s_len) = (call.n_queries as usize, call.seq_len as usize);
    let (qh_n, kv_n, d) = (
        cfg.q_heads() as usize,
        cfg.kv_heads as usize,
        cfg.head_dim as usize,
    );
    let group = qh_n / kv_n;
    let scale = cfg.scale() as f64;
    let mut o = vec![0.0f64; n_q * qh_n * d];
    let mut scores = vec![0.0f64; s_len];
    for n in 0..n_q {
        let visible = if call.causal {
            (call.past_len as usize + n + 1).min(s_len)
        } else {
            s_len
        };
        for qh in 0..qh_n {
            let kvh = qh / group;
            let q = &x.q[(n * qh_n + qh) * d..][..d];
            let mut max = f64::NEG_INFINITY;
            for (j, s) in scores[..visible].iter_mut().enumerate() {
                let k = &x.k[(j * kv_n + kvh) * d..][..d];
                let dot: f64 = q.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
                *s = dot * scale;
                max = max.max(*s);
            }
            let mut sum = 0.0;
            for s in scores[..visible].iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let out = &mut o[(n * qh_n + qh) * d..][..d];
            for (j, &p) in scores[..visible].iter().enumerate() {
                let v = &x.v[(j * kv_n + kvh) * d..][..d];
                for (acc, &vv) in out.iter_mut().zip(v) {
                    *acc += p / sum * vv as f64;
                }
            }
        }
    }
    Ok(o)
}

/// The full layer output c (N, h, d).
///
/// DIFF V2: `c[n, i] = o[n, 2i] - sigmoid(lam[n, i]) * o[n, 2i + 1]`: output head i pairs the
/// interleaved query heads 2i and 2i + 1 (not i and i + h). Standard: c = o.
pub fn attention(cfg: &AttentionConfig, call: &AttentionCall, x: &HostInputs) -> Result<Vec<f64>> {
    let o = head_outputs(cfg, call, x)?;
    if cfg.mode == Mode::Standard {
        return Ok(o);
    }
    let (h, d) = (cfg.heads as usize, cfg.head_dim as usize);
    let mut c = vec![0.0f64; call.n_queries as usize * h * d];
    for n in 0..call.n_queries as usize {
        for i in 0..h {
            let lam = sigmoid(x.lam[n * h + i] as f64);
            let o1 = &o[(n * 2 * h + 2 * i) * d..][..d];
            let o2 = &o[(n * 2 * h + 2 * i + 1) * d..][..d];
            for (t, out) in c[(n * h + i) * d..][..d].iter_mut().enumerate() {
                *out = o1[t] - lam * o2[t];
            }
        }
    }
    Ok(c)
}

/// Error of `got` against `reference`: (max abs error, relative L2 error). A NaN or infinity in
/// `got` gives infinite errors, so it can never pass.
pub fn compare(got: &[f32], reference: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), reference.len(), "compare: length mismatch");
    let mut max_abs = 0.0f64;
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &r) in got.iter().zip(reference) {
        let g = g as f64;
        if !g.is_finite() {
            return (f64::INFINITY, f64::INFINITY);
        }
        let e = (g - r).abs();
        max_abs = max_abs.max(e);
        num += e * e;
        den += r * r;
    }
    let rel = if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    };
    (max_abs, rel)
}

pub mod dequant;
pub mod model;
