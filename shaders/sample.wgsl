// Greedy token choice on the GPU, so that a decode step reads back a token id and not the logits.
//
// One workgroup scans the logits of the last position: the largest logit wins (the lowest id on a
// tie, as the CPU sampler's argmax), its log-probability is l - max - log(sum_i exp(l_i - max)),
// and any NaN or infinite logit raises a flag that the host turns into an error. The chosen id is written
// to ids[ids_offset + n_tokens], where the next step's embedding gather reads it, and to ids[0],
// where the next submission's first step does; the result goes to out[sample_slot] for the host:
// (id, log-probability as f32 bits, flags, 0).
//
// With a repetition penalty (penalty != 1), the argmax is over the penalised logits: each distinct
// id among the last `last_n` tokens has its logit divided by the penalty if positive, multiplied if
// not, as the CPU sampler does; the log-probability stays the model's own. The window's ids are
// marked in `marks` (a vocab-sized scratch, zero between calls) and unmarked after the scan.
//
// With a logit bias (`biased` = 1), bias[i] is added to each logit before the penalty, as on the
// CPU; a bias of -inf bans its token (never picked, and not a non-finite logit of the model's).

// Invocations (a power of two; the host picks fewer on CPU adapters, whose barriers are dear).
const WG: u32 = 256u;
// Flag bits of out[slot].z.
const NON_FINITE: u32 = 1u;

struct Step {
    n_tokens: u32,
    past_len: u32,
    ids_offset: u32,
    sample_slot: u32,
}

struct Params {
    vocab: u32,
    // Tokens the penalty looks back over (0: none).
    last_n: u32,
    penalty: f32,
    // 1: add `bias` to the logits first.
    biased: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<u32>>;
// Token ids by position (the penalty window of the sampling kernel, sample_dist.wgsl).
@group(0) @binding(5) var<storage, read_write> history: array<u32>;
// 1 for the ids in the penalty window during a call, else 0.
@group(0) @binding(6) var<storage, read_write> marks: array<u32>;
// One value per vocabulary entry, added to the logits where `biased` is 1.
@group(0) @binding(7) var<storage, read> bias: array<f32>;

var<workgroup> best_value: array<f32, WG>;
var<workgroup> best_id: array<u32, WG>;
var<workgroup> sums: array<f32, WG>;
// The largest raw logit (the model's own softmax, for the log-probability).
var<workgroup> raw_max: array<f32, WG>;
var<workgroup> bad: atomic<u32>;

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// The bit pattern of -inf: a token the logit bias bans.
fn is_banned(x: f32) -> bool {
    return bitcast<u32>(x) == 0xff800000u;
}

// (value, id) pairs ordered by value, then by lower id.
fn better(v: f32, i: u32, w: f32, j: u32) -> bool {
    return v > w || (v == w && i < j);
}

@compute @workgroup_size(WG)
fn greedy(@builtin(local_invocation_index) lid: u32) {
    if lid == 0u {
        atomicStore(&bad, 0u);
    }
    let position = step.past_len + step.n_tokens;
    let penalise = p.penalty != 1.0 && p.last_n > 0u;
    let start = select(0u, position - p.last_n, position > p.last_n);
    if penalise {
        for (var j = start + lid; j < position; j += WG) {
            let t = history[j];
            if t < p.vocab {
                marks[t] = 1u;
            }
        }
    }
    storageBarrier();
    workgroupBarrier();
    var v = -3.0e38;
    var id = 0xffffffffu;
    var rmax = -3.0e38;
    var non_finite = false;
    for (var i = lid; i < p.vocab; i += WG) {
        let raw = logits[i];
        var x = raw;
        if p.biased != 0u {
            x += bias[i];
        }
        if penalise && marks[i] != 0u {
            x = select(x * p.penalty, x / p.penalty, x > 0.0);
        }
        // -inf is a banned token: never better than a candidate, and no fault of the model's.
        if !is_finite(raw) || (!is_finite(x) && !is_banned(x)) {
            non_finite = true;
        } else {
            rmax = max(rmax, raw);
            if better(x, i, v, id) {
                v = x;
                id = i;
            }
        }
    }
    storageBarrier();
    workgroupBarrier();
    if penalise {
        for (var j = start + lid; j < position; j += WG) {
            let t = history[j];
            if t < p.vocab {
                marks[t] = 0u;
            }
        }
    }
    best_value[lid] = v;
    best_id[lid] = id;
    raw_max[lid] = rmax;
    workgroupBarrier();
    if non_finite {
        atomicOr(&bad, NON_FINITE);
    }
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half && better(best_value[lid + half], best_id[lid + half], best_value[lid], best_id[lid]) {
            best_value[lid] = best_value[lid + half];
            best_id[lid] = best_id[lid + half];
        }
        if lid < half {
            raw_max[lid] = max(raw_max[lid], raw_max[lid + half]);
        }
        workgroupBarrier();
    }
    let top = raw_max[0];
    var s = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        let x = logits[i];
        if is_finite(x) {
            s += exp(x - top);
        }
    }
    sums[lid] = s;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half {
            sums[lid] += sums[lid + half];
        }
        workgroupBarrier();
    }
    let flags = atomicLoad(&bad);
    if lid == 0u {
        // An all-non-finite row leaves no candidate: id 0 with the flag set, never used as a token.
        let chosen = select(best_id[0], 0u, best_id[0] == 0xffffffffu);
        ids[step.ids_offset + step.n_tokens] = chosen;
        // Also the first input of a decode submission started before this one is read back: every
        // step's embedding has run by now, so ids[0] is free to take it.
        ids[0] = chosen;
        history[step.past_len + step.n_tokens] = chosen;
        // log p = l_chosen - (top + log sum_i exp(l_i - top)), under the unpenalised logits.
        let logprob = logits[chosen] - top - log(sums[0]);
        out[step.sample_slot] = vec4<u32>(chosen, bitcast<u32>(logprob), flags, 0u);
    }
}
