// Interleaved (GPT-J style) rotary embedding, in place on (n_tokens, heads, d): dims (2i, 2i+1)
// rotate together by pos * theta^(-2i/d), pos = past_len + t. The (cos, sin) table is computed on
// the host in float64 for every position of the context, so no angle is rounded on the GPU.

struct Step {
    n_tokens: u32,
    past_len: u32,
    ids_offset: u32,
    sample_slot: u32,
}

struct Params {
    heads: u32,
    half_dim: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> x: array<vec2<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = gid.y * groups.x * 64u + gid.x;
    let per_token = p.heads * p.half_dim;
    if idx >= step.n_tokens * per_token {
        return;
    }
    let pos = step.past_len + idx / per_token;
    let cs = table[pos * p.half_dim + idx % p.half_dim];
    let v = x[idx];
    x[idx] = vec2<f32>(v.x * cs.x - v.y * cs.y, v.x * cs.y + v.y * cs.x);
}
