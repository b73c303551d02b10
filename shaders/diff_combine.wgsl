// The second pass: merges the attention partials of each query head across KV chunks (online-softmax
// rescaling), then applies the DIFF V2 differential per output head i:
//
//     c_i = o_{2i} - sigmoid(lam_i) * o_{2i+1}
//
// Output head i pairs query heads 2i and 2i+1 (interleaved pairing), never i and i + h. In standard
// mode (diff = 0) output head i is query head i, passed through.
//
// Layouts: part_o (N, q_heads, n_chunks, d), part_ml (N, q_heads, n_chunks) as (max, sum),
// lam (N, out_heads) as raw logits, out (N, out_heads, d).

// Specialisation constants (the host replaces these defaults).
const HEAD_DIM: u32 = 64u;

const D4: u32 = HEAD_DIM / 4u;
const NEG_BIG: f32 = -3.0e38;

struct Params {
    n_queries: u32,
    seq_len: u32,
    q_heads: u32,
    kv_heads: u32,
    group: u32,
    heads_per_wg: u32,
    head_splits: u32,
    rows_per_wg: u32,
    past_len: u32,
    causal: u32,
    n_chunks: u32,
    out_heads: u32,
    scale: f32,
    diff: u32,
    chunk_len: u32,
    pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part_o: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> part_ml: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> lam: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;

// Softmax-weighted average of query head `qh` of token `n`, column block `c`, over all chunks.
fn merged(n: u32, qh: u32, c: u32) -> vec4<f32> {
    let first = (n * p.q_heads + qh) * p.n_chunks;
    var m = NEG_BIG;
    for (var ch = 0u; ch < p.n_chunks; ch++) {
        m = max(m, part_ml[first + ch].x);
    }
    var sum = 0.0;
    var acc = vec4<f32>(0.0);
    for (var ch = 0u; ch < p.n_chunks; ch++) {
        let ml = part_ml[first + ch];
        let w = exp(ml.x - m);
        sum += ml.y * w;
        acc += part_o[(first + ch) * D4 + c] * w;
    }
    return acc / sum;
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    // Large outputs spread over a 2D grid (64 threads per workgroup along x).
    let idx = gid.y * groups.x * 64u + gid.x;
    let total = p.n_queries * p.out_heads * D4;
    if idx >= total {
        return;
    }
    let c = idx % D4;
    let i = (idx / D4) % p.out_heads;
    let n = idx / (D4 * p.out_heads);
    if p.diff != 0u {
        let o1 = merged(n, 2u * i, c);
        let o2 = merged(n, 2u * i + 1u, c);
        out[idx] = o1 - sigmoid(lam[n * p.out_heads + i]) * o2;
    } else {
        out[idx] = merged(n, i, c);
    }
}
