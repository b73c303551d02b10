// Appends this step's keys or values (n_tokens, width) f32 to a layer's cache at row past_len.
// The cache is f32, or f16 as two halves per u32 (low half first): the layout the attention
// kernels read with KV_F16.

// Specialisation constants (the host replaces these defaults).
const KV_F16: bool = false;

const F16_MAX: f32 = 65504.0;

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
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> cache: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = gid.y * groups.x * 64u + gid.x;
    let offset = step.past_len * p.width;
    if KV_F16 {
        if idx >= step.n_tokens * p.width / 2u {
            return;
        }
        // pack2x16float is undefined past the f16 range: saturate to the largest finite half, as
        // the host's conversion of K/V does (attention::kv_bytes).
        let pair = clamp(vec2<f32>(src[2u * idx], src[2u * idx + 1u]), vec2<f32>(-F16_MAX), vec2<f32>(F16_MAX));
        cache[offset / 2u + idx] = pack2x16float(pair);
    } else {
        if idx >= step.n_tokens * p.width {
            return;
        }
        cache[offset + idx] = bitcast<u32>(src[idx]);
    }
}
