// The second pass: merges the attention partials of each query head across KV chunks (online-softmax
// rescaling), then applies the DIFF V2 differential per output head i:
//
//     c_i = o_{2i} - sigmoid(lam_i) * o_{2i+1}
//
// Output head i pairs query heads 2i and 2i+1 (interleaved pairing), never i and i + h. In standard
// mode (diff = 0) output head i is query head i, passed through.
//
// One workgroup per (token, output head). A long cache leaves hundreds of chunks per row, so the
// workgroup spreads them over its invocations: PARTS invocations per output column, each over every
// PARTS-th chunk, then a reduction in workgroup memory.
//
// Layouts: part_o (N, q_heads, n_chunks, d), part_ml (N, q_heads, n_chunks) as (max, sum),
// lam (N, out_heads) as raw logits, out (N, out_heads, d).

// Specialisation constants (the host replaces these defaults).
const HEAD_DIM: u32 = 64u;

const WG: u32 = 128u;
const D4: u32 = HEAD_DIM / 4u;
const PARTS: u32 = max(1u, WG / D4);
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

var<workgroup> w_max: array<f32, WG>;
var<workgroup> w_o: array<vec4<f32>, WG>;
var<workgroup> w_l: array<f32, WG>;

// Softmax-weighted average of query head `qh` of token `n`; the result is valid in invocations with
// part 0 (lid < D4), for column block `lid`.
fn merged(n: u32, qh: u32, lid: u32) -> vec4<f32> {
    let first = (n * p.q_heads + qh) * p.n_chunks;

    // The largest running max over all chunks.
    var m = NEG_BIG;
    for (var ch = lid; ch < p.n_chunks; ch += WG) {
        m = max(m, part_ml[first + ch].x);
    }
    w_max[lid] = m;
    for (var off = WG / 2u; off > 0u; off /= 2u) {
        workgroupBarrier();
        if lid < off {
            w_max[lid] = max(w_max[lid], w_max[lid + off]);
        }
    }
    workgroupBarrier();
    m = w_max[0];

    // Rescaled sums of outputs and of exponentials, PARTS invocations per column.
    let c = lid % D4;
    let part = lid / D4;
    var acc = vec4<f32>(0.0);
    var sum = 0.0;
    if part < PARTS {
        // Four chunks per iteration: independent loads in flight instead of one at a time.
        var ch = part;
        for (; ch + 3u * PARTS < p.n_chunks; ch += 4u * PARTS) {
            let ml0 = part_ml[first + ch];
            let ml1 = part_ml[first + ch + PARTS];
            let ml2 = part_ml[first + ch + 2u * PARTS];
            let ml3 = part_ml[first + ch + 3u * PARTS];
            let o0 = part_o[(first + ch) * D4 + c];
            let o1 = part_o[(first + ch + PARTS) * D4 + c];
            let o2 = part_o[(first + ch + 2u * PARTS) * D4 + c];
            let o3 = part_o[(first + ch + 3u * PARTS) * D4 + c];
            let w = exp(vec4<f32>(ml0.x, ml1.x, ml2.x, ml3.x) - m);
            sum += dot(vec4<f32>(ml0.y, ml1.y, ml2.y, ml3.y), w);
            acc += o0 * w.x + o1 * w.y + o2 * w.z + o3 * w.w;
        }
        for (; ch < p.n_chunks; ch += PARTS) {
            let ml = part_ml[first + ch];
            let w = exp(ml.x - m);
            sum += ml.y * w;
            acc += part_o[(first + ch) * D4 + c] * w;
        }
    }
    w_o[lid] = acc;
    w_l[lid] = sum;
    workgroupBarrier();
    var total = vec4<f32>(0.0);
    var total_sum = 0.0;
    if lid < D4 {
        for (var s = 0u; s < PARTS; s++) {
            total += w_o[s * D4 + lid];
            total_sum += w_l[s * D4 + lid];
        }
    }
    // The next call reuses the workgroup arrays.
    workgroupBarrier();
    return total / total_sum;
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
    // Rows spread over a 2D grid when there are more than fit in one dimension.
    let row = wg.y * groups.x + wg.x;
    if row >= p.n_queries * p.out_heads {
        return;
    }
    let i = row % p.out_heads;
    let n = row / p.out_heads;
    if p.diff != 0u {
        let o1 = merged(n, 2u * i, lid);
        let o2 = merged(n, 2u * i + 1u, lid);
        if lid < D4 {
            out[row * D4 + lid] = o1 - sigmoid(lam[row]) * o2;
        }
    } else {
        let o = merged(n, i, lid);
        if lid < D4 {
            out[row * D4 + lid] = o;
        }
    }
}
