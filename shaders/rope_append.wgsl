// Splits one token row of the fused q/k/v/lambda product, laid out [q | k | v | lambda]:
// RoPE on q (into the query buffer) and on k (into the key cache at the token's position), v into
// the value cache, lambda logits into their buffer. One invocation per (dim pair) or lambda value.
//
// RoPE is interleaved (GPT-J style): dims (2i, 2i+1) rotate together by pos * theta^(-2i/d),
// pos = past_len + t, with (cos, sin) from a table computed on the host in float64.
// The cache is f32, or f16 with each pair packed in one u32 (low half first); pack2x16float is
// undefined past the f16 range, so values saturate to the largest finite half first, as the
// host's conversion of K/V does (attention::kv_bytes).

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
    // Query heads, KV heads, head_dim / 2, lambda values per token (0 in standard mode).
    q_heads: u32,
    kv_heads: u32,
    half_dim: u32,
    lam_heads: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> qkvl: array<f32>;
@group(0) @binding(4) var<storage, read_write> q: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(7) var<storage, read_write> lam: array<f32>;

fn rotate(v: vec2<f32>, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(v.x * cs.x - v.y * cs.y, v.x * cs.y + v.y * cs.x);
}

// Stores pair `pair` (of the kv_heads * half_dim pairs of one position) at position `pos`.
fn store_kv(is_key: bool, pos: u32, pair: u32, v: vec2<f32>) {
    let per_pos = p.kv_heads * p.half_dim;
    let at = pos * per_pos + pair;
    if KV_F16 {
        let word = pack2x16float(clamp(v, vec2<f32>(-F16_MAX), vec2<f32>(F16_MAX)));
        if is_key {
            k_cache[at] = word;
        } else {
            v_cache[at] = word;
        }
    } else if is_key {
        k_cache[2u * at] = bitcast<u32>(v.x);
        k_cache[2u * at + 1u] = bitcast<u32>(v.y);
    } else {
        v_cache[2u * at] = bitcast<u32>(v.x);
        v_cache[2u * at + 1u] = bitcast<u32>(v.y);
    }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = gid.y * groups.x * 64u + gid.x;
    let q_pairs = p.q_heads * p.half_dim;
    let kv_pairs = p.kv_heads * p.half_dim;
    let per_token = q_pairs + 2u * kv_pairs + p.lam_heads;
    if idx >= step.n_tokens * per_token {
        return;
    }
    let t = idx / per_token;
    let r = idx % per_token;
    let pos = step.past_len + t;
    let row = t * (2u * (q_pairs + 2u * kv_pairs) + p.lam_heads);
    if r < q_pairs {
        let v = vec2<f32>(qkvl[row + 2u * r], qkvl[row + 2u * r + 1u]);
        q[t * q_pairs + r] = rotate(v, table[pos * p.half_dim + r % p.half_dim]);
    } else if r < q_pairs + kv_pairs {
        let pair = r - q_pairs;
        let at = row + 2u * r;
        let v = vec2<f32>(qkvl[at], qkvl[at + 1u]);
        store_kv(true, pos, pair, rotate(v, table[pos * p.half_dim + pair % p.half_dim]));
    } else if r < q_pairs + 2u * kv_pairs {
        let pair = r - q_pairs - kv_pairs;
        let at = row + 2u * r;
        store_kv(false, pos, pair, vec2<f32>(qkvl[at], qkvl[at + 1u]));
    } else {
        let j = r - q_pairs - 2u * kv_pairs;
        lam[t * p.lam_heads + j] = qkvl[row + 2u * (q_pairs + 2u * kv_pairs) + j];
    }
}
