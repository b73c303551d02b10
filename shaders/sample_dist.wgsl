// Sampling on the GPU: the CPU sampler's distribution (src/sample.rs), drawn with a counter-based
// random number keyed by (seed, position), so that how many steps share a submission never changes
// a seeded output. One workgroup; thread `lid` owns the contiguous ids [lid * PER, (lid+1) * PER).
//
// Order, as on the CPU: repetition penalty over the last `last_n` tokens (each distinct id once),
// temperature, top-k (ties to the lower id), softmax, top-p (the smallest most-likely prefix whose
// probability reaches p; ties to the lower id), a draw from what is kept. Thresholds are found by
// bisection over the values' bit patterns instead of a sort. The chosen id goes where the greedy
// sampler puts it (ids[ids_offset + n_tokens], ids[0], history[position]), and out[sample_slot] gets
// (id, log-probability under the model's own softmax as f32 bits, flags, 0).

const WG: u32 = 256u;
const NON_FINITE: u32 = 1u;

struct Step {
    n_tokens: u32,
    past_len: u32,
    ids_offset: u32,
    sample_slot: u32,
}

struct Params {
    vocab: u32,
    top_k: u32,
    last_n: u32,
    seed_lo: u32,
    seed_hi: u32,
    temperature: f32,
    top_p: f32,
    penalty: f32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> history: array<u32>;
// Scaled logits, then their exp(v - max) (0 for ids that are not kept).
@group(0) @binding(6) var<storage, read_write> work: array<f32>;

var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> bad: atomic<u32>;

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// An order-preserving map of f32 to u32 (larger value, larger key).
fn key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn per_thread() -> u32 {
    return (p.vocab + WG - 1u) / WG;
}

fn sum_f(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half {
            red_f[lid] += red_f[lid + half];
        }
        workgroupBarrier();
    }
    let total = red_f[0];
    workgroupBarrier();
    return total;
}

fn sum_u(lid: u32, v: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half {
            red_u[lid] += red_u[lid + half];
        }
        workgroupBarrier();
    }
    let total = red_u[0];
    workgroupBarrier();
    return total;
}

fn max_f(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half {
            red_f[lid] = max(red_f[lid], red_f[lid + half]);
        }
        workgroupBarrier();
    }
    let m = red_f[0];
    workgroupBarrier();
    return m;
}

// Exclusive prefix sum of one value per thread (Hillis-Steele over workgroup memory).
fn scan_u(lid: u32, v: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var off = 1u; off < WG; off *= 2u) {
        var add = 0u;
        if lid >= off {
            add = red_u[lid - off];
        }
        workgroupBarrier();
        red_u[lid] += add;
        workgroupBarrier();
    }
    let inclusive = red_u[lid];
    workgroupBarrier();
    return inclusive - v;
}

fn scan_f(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var off = 1u; off < WG; off *= 2u) {
        var add = 0.0;
        if lid >= off {
            add = red_f[lid - off];
        }
        workgroupBarrier();
        red_f[lid] += add;
        workgroupBarrier();
    }
    let inclusive = red_f[lid];
    workgroupBarrier();
    return inclusive - v;
}

// A 32-bit integer hash with good avalanche (xorshift-multiply rounds).
fn mix(x0: u32) -> u32 {
    var x = x0;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

// A uniform draw in [0, 1) from (seed, position).
fn uniform01(position: u32) -> f32 {
    let h = mix(mix(mix(position ^ 0x9e3779b9u) ^ p.seed_lo) ^ p.seed_hi);
    return f32(h >> 8u) / 16777216.0;
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    if lid == 0u {
        atomicStore(&bad, 0u);
    }
    let per = per_thread();
    let lo = min(lid * per, p.vocab);
    let hi = min(lo + per, p.vocab);
    let position = step.past_len + step.n_tokens;

    // The model's own log-softmax normaliser (for the log-probability), and the non-finite check.
    var raw_max = -3.0e38;
    for (var i = lo; i < hi; i++) {
        let x = logits[i];
        if !is_finite(x) {
            atomicOr(&bad, NON_FINITE);
        } else {
            raw_max = max(raw_max, x);
        }
        work[i] = x;
    }
    let rmax = max_f(lid, raw_max);
    var raw_sum = 0.0;
    for (var i = lo; i < hi; i++) {
        let x = logits[i];
        if is_finite(x) {
            raw_sum += exp(x - rmax);
        }
    }
    let rsum = sum_f(lid, raw_sum);
    storageBarrier();

    // Repetition penalty: window positions [position - last_n, position), each distinct id once
    // (the first occurrence in the window applies it).
    let start = select(0u, position - p.last_n, position > p.last_n);
    if p.penalty != 1.0 && p.last_n > 0u {
        for (var j = start + lid; j < position; j += WG) {
            let t = history[j];
            var first = t < p.vocab;
            for (var e = start; e < j && first; e++) {
                first = history[e] != t;
            }
            if first {
                let l = work[t];
                work[t] = select(l * p.penalty, l / p.penalty, l > 0.0);
            }
        }
    }
    storageBarrier();
    workgroupBarrier();
    for (var i = lo; i < hi; i++) {
        work[i] = work[i] / p.temperature;
    }
    storageBarrier();
    workgroupBarrier();

    // Top-k: the largest key threshold with at least k values at or above it, by bisection.
    var thr = 0u;
    var take_ties = 0xffffffffu;
    if p.top_k > 0u && p.top_k < p.vocab {
        var lo_k = 0u;
        var hi_k = 0xffffffffu;
        for (var it = 0u; it < 32u; it++) {
            let mid = lo_k + (hi_k - lo_k) / 2u + (hi_k - lo_k) % 2u;
            var c = 0u;
            for (var i = lo; i < hi; i++) {
                c += u32(key(work[i]) >= mid);
            }
            if sum_u(lid, c) >= p.top_k {
                lo_k = mid;
            } else {
                hi_k = mid - 1u;
            }
        }
        thr = lo_k;
        var above = 0u;
        for (var i = lo; i < hi; i++) {
            above += u32(key(work[i]) > thr);
        }
        take_ties = p.top_k - sum_u(lid, above);
    }
    // Ties at the threshold are kept in id order, up to `take_ties`.
    var ties = 0u;
    for (var i = lo; i < hi; i++) {
        ties += u32(key(work[i]) == thr);
    }
    var rank = scan_u(lid, ties);
    var kept_max = -3.0e38;
    for (var i = lo; i < hi; i++) {
        let k = key(work[i]);
        var keep = k > thr;
        if k == thr {
            keep = rank < take_ties;
            rank += 1u;
        }
        if keep {
            kept_max = max(kept_max, work[i]);
        } else {
            work[i] = -3.0e38;
        }
    }
    let vmax = max_f(lid, kept_max);
    var z_part = 0.0;
    for (var i = lo; i < hi; i++) {
        let e = select(0.0, exp(work[i] - vmax), work[i] > -3.0e38);
        work[i] = e;
        z_part += e;
    }
    let z = sum_f(lid, z_part);

    // Top-p: the largest threshold whose mass at or above it reaches p * z, then ties in id order.
    if p.top_p < 1.0 {
        let need = p.top_p * z;
        var lo_p = 0u;
        var hi_p = 0x7f800000u;
        for (var it = 0u; it < 32u; it++) {
            let mid = lo_p + (hi_p - lo_p) / 2u + (hi_p - lo_p) % 2u;
            var m = 0.0;
            for (var i = lo; i < hi; i++) {
                let e = work[i];
                m += select(0.0, e, bitcast<u32>(e) >= mid);
            }
            if sum_f(lid, m) >= need {
                lo_p = mid;
            } else {
                hi_p = mid - 1u;
            }
        }
        var m_above = 0.0;
        var n_ties = 0u;
        for (var i = lo; i < hi; i++) {
            let b = bitcast<u32>(work[i]);
            m_above += select(0.0, work[i], b > lo_p);
            n_ties += u32(b == lo_p);
        }
        let above = sum_f(lid, m_above);
        let q = bitcast<f32>(lo_p);
        var want = 1u;
        if q > 0.0 {
            want = max(1u, u32(ceil((need - above) / q)));
        }
        var tie_rank = scan_u(lid, n_ties);
        for (var i = lo; i < hi; i++) {
            let b = bitcast<u32>(work[i]);
            if b < lo_p || (b == lo_p && tie_rank >= want) {
                work[i] = 0.0;
            }
            if b == lo_p {
                tie_rank += 1u;
            }
        }
    }
    storageBarrier();
    workgroupBarrier();

    // The draw: the id whose cumulative mass (in id order) first exceeds u * total.
    var mine = 0.0;
    for (var i = lo; i < hi; i++) {
        mine += work[i];
    }
    let before = scan_f(lid, mine);
    let total = sum_f(lid, mine);
    let goal = uniform01(position) * total;
    if lid == 0u {
        red_u[0] = 0xffffffffu;
    }
    workgroupBarrier();
    if goal >= before && goal < before + mine {
        var c = before;
        var chosen = 0xffffffffu;
        var last = 0xffffffffu;
        for (var i = lo; i < hi; i++) {
            c += work[i];
            if work[i] > 0.0 {
                last = i;
                if goal < c {
                    chosen = i;
                    break;
                }
            }
        }
        // Rounding in the running sum: the range's last id with mass.
        red_u[0] = select(chosen, last, chosen == 0xffffffffu);
    }
    workgroupBarrier();
    if lid == 0u {
        var chosen = red_u[0];
        if chosen == 0xffffffffu {
            // Rounding left the goal past the total: the last id with mass.
            chosen = 0u;
            for (var i = p.vocab; i > 0u; i--) {
                if work[i - 1u] > 0.0 {
                    chosen = i - 1u;
                    break;
                }
            }
        }
        let flags = atomicLoad(&bad);
        let logprob = logits[chosen] - rmax - log(rsum);
        ids[step.ids_offset + step.n_tokens] = chosen;
        ids[0] = chosen;
        history[position] = chosen;
        out[step.sample_slot] = vec4<u32>(chosen, bitcast<u32>(logprob), flags, 0u);
    }
}
