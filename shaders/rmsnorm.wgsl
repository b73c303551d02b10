// RMSNorm: out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, one workgroup per row.
// With `last_only`, the single output row is the last token's: the final norm before the LM head,
// which after a prefill chunk only the last position needs.

struct Step {
    n_tokens: u32,
    past_len: u32,
    ids_offset: u32,
    sample_slot: u32,
}

struct Params {
    d: u32,
    eps: f32,
    last_only: u32,
    pad0: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.x;
    var src = row;
    if p.last_only != 0u {
        src = step.n_tokens - 1u;
    }
    let base = src * p.d;
    var ss = 0.0;
    for (var c = lid; c < p.d; c += 64u) {
        let v = x[base + c];
        ss += v * v;
    }
    red[lid] = ss;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(p.d) + p.eps);
    for (var c = lid; c < p.d; c += 64u) {
        out[row * p.d + c] = x[base + c] * inv * w[c];
    }
}
