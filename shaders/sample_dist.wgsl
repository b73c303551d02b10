// Sampling on the GPU: the CPU sampler's distribution (src/sample.rs), drawn with a counter-based
// random number keyed by (seed, position), so that how many steps share a submission never changes
// a seeded output. One workgroup; thread `lid` owns the contiguous ids [lid * PER, (lid+1) * PER).
//
// Order, as on the CPU: logit bias (where `biased` is 1; -inf bans a token), repetition penalty
// over the last `last_n` tokens (each distinct id once), temperature, top-k (ties to the lower
// id), softmax, top-p (the smallest most-likely prefix whose probability reaches p; ties to the
// lower id), a draw from what is kept. The chosen id goes where
// the greedy sampler puts it (ids[ids_offset + n_tokens], ids[0], history[position]), and
// out[sample_slot] gets (id, log-probability under the model's own softmax as f32 bits, flags, 0).
//
// Two paths, chosen by the uniform top_k. With 1 <= top_k <= WG (the usual settings), the k-th
// largest value is found by a radix select (four rounds of 8-bit histograms), the k survivors are
// gathered into workgroup memory in id order, and top-p and the draw work there: each survivor
// finds its rank by comparing against the others, so the nucleus is exact without a sort. Without
// top-k (or a larger k), the thresholds are found by bisection over the values' bit patterns
// (32 rounds each for top-k and top-p), which needs no bound on how many values survive.

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
    // 1: add `bias` to the logits first.
    biased: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> history: array<u32>;
// Scaled logits, then their exp(v - max) (0 for ids that are not kept).
@group(0) @binding(6) var<storage, read_write> work: array<f32>;
// One value per vocabulary entry, added to the logits where `biased` is 1.
@group(0) @binding(7) var<storage, read> bias: array<f32>;

// Scratch of reduce.wgsl (appended by the shader loader): max_f and sum_f; scan_f here too.
var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> bad: atomic<u32>;
// The radix select's histogram, and the digit each round picks (with the count above it).
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> picked: vec2<u32>;
// The top-k survivors in id order, their masses in rank order, and which ranks top-p keeps.
var<workgroup> cand_id: array<u32, WG>;
var<workgroup> cand_v: array<f32, WG>;
var<workgroup> by_rank: array<f32, WG>;
var<workgroup> rank_kept: array<u32, WG>;
var<workgroup> chosen_at: atomic<u32>;
var<workgroup> last_at: atomic<u32>;

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

    // One pass over the logits: the model's own log-softmax normaliser (an online max and sum,
    // for the log-probability), the non-finite check, and the biased, temperature-scaled copy.
    // Scaling before the penalty is the same as after it: dividing by T > 0 keeps each sign.
    var m = -3.0e38;
    var sum = 0.0;
    for (var i = lo; i < hi; i++) {
        let x = logits[i];
        if !is_finite(x) {
            atomicOr(&bad, NON_FINITE);
        } else if x > m {
            sum = sum * exp(m - x) + 1.0;
            m = x;
        } else {
            sum += exp(x - m);
        }
        var b = 0.0;
        if p.biased != 0u {
            b = bias[i];
        }
        work[i] = (x + b) / p.temperature;
    }
    let rmax = max_f(lid, m);
    let rsum = sum_f(lid, sum * exp(m - rmax));
    storageBarrier();
    penalise(lid, position);
    storageBarrier();
    workgroupBarrier();

    var chosen: u32;
    if p.top_k > 0u && p.top_k <= WG {
        chosen = pick_narrow(lid, lo, hi, position);
    } else {
        chosen = pick_wide(lid, lo, hi, position);
    }
    if lid == 0u {
        let flags = atomicLoad(&bad);
        let logprob = logits[chosen] - rmax - log(rsum);
        ids[step.ids_offset + step.n_tokens] = chosen;
        ids[0] = chosen;
        history[position] = chosen;
        out[step.sample_slot] = vec4<u32>(chosen, bitcast<u32>(logprob), flags, 0u);
    }
}

// Repetition penalty: window positions [position - last_n, position), each distinct id once
// (the first occurrence in the window applies it).
fn penalise(lid: u32, position: u32) {
    if p.penalty == 1.0 || p.last_n == 0u {
        return;
    }
    let start = select(0u, position - p.last_n, position > p.last_n);
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

// The k-th largest key, one byte at a time from the top: each round counts, per digit, the values
// that match the bytes chosen so far, and picks the digit where the count from the top reaches
// what is still needed. Returns (threshold key, how many values equal to it to keep).
fn radix_select(lid: u32, lo: u32, hi: u32) -> vec2<u32> {
    var prefix = 0u;
    var need = p.top_k;
    for (var round = 0u; round < 4u; round++) {
        let shift = 24u - 8u * round;
        let high = ~(0xffffffffu >> (8u * round));
        // WG is 256: one digit per thread.
        atomicStore(&hist[lid], 0u);
        workgroupBarrier();
        for (var i = lo; i < hi; i++) {
            let k = key(work[i]);
            if (k & high) == prefix {
                atomicAdd(&hist[(k >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        // Thread lid holds digit 255 - lid, so an inclusive scan counts the values at or above it.
        let digit = 255u - lid;
        let c = atomicLoad(&hist[digit]);
        let above = scan_u(lid, c);
        if above < need && above + c >= need {
            picked = vec2<u32>(digit, above);
        }
        workgroupBarrier();
        let pk = picked;
        prefix |= pk.x << shift;
        need -= pk.y;
        workgroupBarrier();
    }
    return vec2<u32>(prefix, need);
}

// top_k in 1..=WG: the survivors gathered in workgroup memory, top-p by exact ranks, the draw.
fn pick_narrow(lid: u32, lo: u32, hi: u32, position: u32) -> u32 {
    let sel = radix_select(lid, lo, hi);
    let thr = sel.x;
    var ties = 0u;
    for (var i = lo; i < hi; i++) {
        ties += u32(key(work[i]) == thr);
    }
    // Ties at the threshold are kept in id order: each thread's first tie has this rank.
    let first_tie = scan_u(lid, ties);
    var kept = 0u;
    var r = first_tie;
    for (var i = lo; i < hi; i++) {
        let k = key(work[i]);
        if k > thr {
            kept += 1u;
        } else if k == thr {
            kept += u32(r < sel.y);
            r += 1u;
        }
    }
    var slot = scan_u(lid, kept);
    r = first_tie;
    for (var i = lo; i < hi; i++) {
        let k = key(work[i]);
        var keep = k > thr;
        if k == thr {
            keep = r < sel.y;
            r += 1u;
        }
        if keep {
            cand_id[slot] = i;
            cand_v[slot] = work[i];
            slot += 1u;
        }
    }
    workgroupBarrier();

    // Thread t < n holds survivor t (ids ascending with t).
    let n = p.top_k;
    let mine = lid < n;
    let v = select(-3.0e38, cand_v[lid], mine);
    let vmax = max_f(lid, v);
    let e = select(0.0, exp(v - vmax), mine);
    var mass = e;
    if p.top_p < 1.0 {
        let z = sum_f(lid, e);
        // Rank: survivors more likely than this one, or as likely with a lower id.
        var rank = 0u;
        for (var j = 0u; j < n; j++) {
            let w = cand_v[j];
            rank += u32(w > v || (w == v && j < lid));
        }
        if mine {
            by_rank[rank] = e;
        }
        workgroupBarrier();
        let r = select(0.0, by_rank[lid], mine);
        // Keep ranks whose more likely mass has not yet reached p.
        let before = scan_f(lid, r);
        rank_kept[lid] = u32(mine && before < p.top_p * z);
        workgroupBarrier();
        mass = select(0.0, e, mine && rank_kept[rank] == 1u);
    }

    // The draw, in id order.
    if lid == 0u {
        atomicStore(&chosen_at, 0xffffffffu);
        atomicStore(&last_at, 0u);
    }
    let before = scan_f(lid, mass);
    let total = sum_f(lid, mass);
    let goal = uniform01(position) * total;
    if mass > 0.0 {
        atomicMax(&last_at, lid + 1u);
        if goal >= before && goal < before + mass {
            atomicMin(&chosen_at, lid);
        }
    }
    workgroupBarrier();
    var at = atomicLoad(&chosen_at);
    if at == 0xffffffffu {
        // Rounding left the goal past the total: the last survivor with mass.
        at = max(atomicLoad(&last_at), 1u) - 1u;
    }
    return cand_id[at];
}

// Any top_k (0 keeps all): thresholds by bisection over the values' bit patterns.
fn pick_wide(lid: u32, lo: u32, hi: u32, position: u32) -> u32 {
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
    workgroupBarrier();
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
    return chosen;
}
