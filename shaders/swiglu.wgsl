// SwiGLU on the fused gate/up product: out[t, j] = silu(gate j) * up j, where each token row of
// gu holds the two interleaved (gate j at 2j, up j at 2j + 1; the weights' rows are uploaded in
// that order). Prompt chunks only: a decode step's product applies SwiGLU itself (matmul.wgsl).

struct Step {
    n_tokens: u32,
    past_len: u32,
    ids_offset: u32,
    sample_slot: u32,
}

struct Params {
    width: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> gu: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = gid.y * groups.x * 64u + gid.x;
    if idx >= step.n_tokens * p.width {
        return;
    }
    let g = gu[2u * idx];
    let u = gu[2u * idx + 1u];
    // g / (1 + exp(-g)) tends to -0 for very negative g (exp overflows to +inf): no NaN.
    out[idx] = g / (1.0 + exp(-g)) * u;
}
