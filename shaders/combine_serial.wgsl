// The second pass for CPU adapters: diff_combine.wgsl's merge and DIFF V2 differential,
//
//     c_i = o_{2i} - sigmoid(lam_i) * o_{2i+1}
//
// (output head i pairs query heads 2i and 2i+1; standard mode passes query head i through), with
// one invocation per (token, output head, 4-column block) looping over every chunk itself: no
// workgroup memory and no barriers, which a CPU adapter pays for with a context switch per lane
// group (diff_combine.wgsl's reduction trees cost SwiftShader milliseconds per call). Each
// invocation recomputes its head's running max over the chunks; a decode call has few.
//
// Layouts as in diff_combine.wgsl: part_o (N, q_heads, n_chunks, d), part_ml (N, q_heads,
// n_chunks) as (max, sum), lam (N, out_heads) as raw logits, out (N, out_heads, d).

// Specialisation constants (the host replaces these defaults).
const HEAD_DIM: u32 = 64u;
const WG: u32 = 8u;
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
    direct: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part_o: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> part_ml: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> lam: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;

// Columns 4c .. 4c + 4 of query head `qh` of token `n`, merged over the chunks.
fn merged(n: u32, qh: u32, c: u32) -> vec4<f32> {
    let first = (n * p.q_heads + qh) * p.n_chunks;
    var m = NEG_BIG;
    for (var ch = 0u; ch < p.n_chunks; ch++) {
        m = max(m, part_ml[first + ch].x);
    }
    var acc = vec4<f32>(0.0);
    var sum = 0.0;
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

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Invocations spread over a 2D grid when there are more than fit in one dimension.
    let idx = (wg.y * groups.x + wg.x) * WG + lid;
    if idx >= p.n_queries * p.out_heads * D4 {
        return;
    }
    let c = idx % D4;
    let row = idx / D4;
    let i = row % p.out_heads;
    let n = row / p.out_heads;
    if p.diff != 0u {
        let o1 = merged(n, 2u * i, c);
        let o2 = merged(n, 2u * i + 1u, c);
        out[row * D4 + c] = o1 - sigmoid(lam[row]) * o2;
    } else {
        out[row * D4 + c] = merged(n, i, c);
    }
}
