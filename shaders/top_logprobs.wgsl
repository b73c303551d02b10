// The most likely tokens of a step with their log-probabilities, for callers that ask for the
// alternatives to each pick. It reads the raw logits of the last position (the model's own
// distribution: no bias, penalty or temperature), so the list is the same whichever sampler picked.
//
// One workgroup. Each invocation scans a strided share of the vocabulary, keeping its best N in a
// private list sorted by value (its ids rise as it scans, so an equal value never displaces an
// earlier one: ties go to the lower id, as on the CPU). Then N rounds of a workgroup argmax over
// the lists' heads take the overall best out in order. The log-probability of a logit l is
// l - (max + log sum exp(l_i - max)) over the finite logits; non-finite logits are left out (the
// picking kernel reports them as an error). Results go to out[sample_slot * MAX_N + r] as
// (id, log-probability as f32 bits); NONE as the id where fewer than N finite logits exist.

// Invocations (a power of two; the host picks fewer on CPU adapters, whose barriers are dear).
const WG: u32 = 256u;
// The most alternatives a step can ask for (the host sets it to its MAX_TOP_LOGPROBS).
const MAX_N: u32 = 20u;
const NONE: u32 = 0xffffffffu;

struct Step {
    n_tokens: u32,
    past_len: u32,
    ids_offset: u32,
    sample_slot: u32,
}

struct Params {
    vocab: u32,
    // Alternatives wanted (at most MAX_N).
    n: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<vec2<u32>>;

var<workgroup> red_v: array<f32, WG>;
var<workgroup> red_id: array<u32, WG>;
var<workgroup> red_lane: array<u32, WG>;
// Scratch of reduce.wgsl (appended by the shader loader): max_f and sum_f.
var<workgroup> red_f: array<f32, WG>;

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// (value, id) pairs ordered by value, then by lower id; NONE loses to any entry.
fn better(v: f32, i: u32, w: f32, j: u32) -> bool {
    return i != NONE && (j == NONE || v > w || (v == w && i < j));
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    let n = min(p.n, MAX_N);
    var best_v: array<f32, MAX_N>;
    var best_id: array<u32, MAX_N>;
    var count = 0u;
    // An online max and sum of exp for the normaliser, in the same pass.
    var m = -3.0e38;
    var s = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        let x = logits[i];
        if !is_finite(x) {
            continue;
        }
        if x > m {
            s = s * exp(m - x) + 1.0;
            m = x;
        } else {
            s += exp(x - m);
        }
        if n > 0u && (count < n || x > best_v[n - 1u]) {
            // Fill a new slot, or drop the list's last; move the smaller values down.
            var j = min(count, n - 1u);
            while j > 0u && x > best_v[j - 1u] {
                best_v[j] = best_v[j - 1u];
                best_id[j] = best_id[j - 1u];
                j -= 1u;
            }
            best_v[j] = x;
            best_id[j] = i;
            count = min(count + 1u, n);
        }
    }
    let top = max_f(lid, m);
    let total = sum_f(lid, s * exp(m - top));
    let lse = top + log(total);

    var head = 0u;
    for (var r = 0u; r < n; r++) {
        let has = head < count;
        red_v[lid] = select(0.0, best_v[min(head, MAX_N - 1u)], has);
        red_id[lid] = select(NONE, best_id[min(head, MAX_N - 1u)], has);
        red_lane[lid] = lid;
        workgroupBarrier();
        for (var half = WG / 2u; half > 0u; half /= 2u) {
            if lid < half && better(red_v[lid + half], red_id[lid + half], red_v[lid], red_id[lid]) {
                red_v[lid] = red_v[lid + half];
                red_id[lid] = red_id[lid + half];
                red_lane[lid] = red_lane[lid + half];
            }
            workgroupBarrier();
        }
        let id = red_id[0];
        let v = red_v[0];
        if id != NONE && red_lane[0] == lid {
            head += 1u;
        }
        if lid == 0u {
            out[step.sample_slot * MAX_N + r] = vec2<u32>(id, bitcast<u32>(v - lse));
        }
        // The next round overwrites what this one read.
        workgroupBarrier();
    }
}
