// Attention for many query rows (prefill) over an f16 KV cache, on cooperative matrices (tensor
// cores). The native fast path of flash_attn.wgsl: same inputs, same partials (one chunk per row),
// same merge pass (diff_combine.wgsl).
//
// A workgroup takes 16 consecutive query rows of one query head and walks the keys they can see in
// tiles of BC keys, twice:
//   pass 1: scores S = Q K^T (16 x BC) on the tensor cores, each subgroup one 16-key slice; the
//           exact row max and sum of exponentials (online, in f32);
//   pass 2: the same scores again, P = exp(S - max) / sum as f16, and O += P V on the tensor cores,
//           each subgroup a share of the 16-column blocks of the head.
// Knowing each row's final max before the second pass means the output accumulates in cooperative
// matrices without rescaling (matrices cannot be scaled row by row), for 1.5x the score products of
// a one-pass kernel. K and V tiles are staged in workgroup memory, zero past the cache's end.
//
// Cooperative operations run per subgroup; naga's uniformity analysis treats subgroup_id as
// divergent, hence the diagnostic filter below: every branch around a cooperative operation depends
// only on the workgroup, the uniforms and the subgroup id, so each subgroup stays converged.
//
// Layouts as flash_attn.wgsl: q (N, q_heads, d) f32; k, v (S, kv_heads, d) f16 as packed u32 pairs;
// part_o (N, q_heads, 1, d) f32; part_ml (N, q_heads, 1) as (max, sum): the output is already
// normalised, so the sum is written as 1.

enable f16;
enable wgpu_cooperative_matrix;
diagnostic(off, derivative_uniformity);

// Specialisation constants (the host replaces these defaults).
const HEAD_DIM: u32 = 64u;
const BC: u32 = 64u;

const WG: u32 = 128u;
const TILE: u32 = 16u;
const ROWS: u32 = 16u;
const DC: u32 = HEAD_DIM / TILE;
const KT: u32 = BC / TILE;
const D8: u32 = HEAD_DIM / 8u;
const WORDS: u32 = BC * D8;
const LANES_PER_ROW: u32 = WG / ROWS;
const KEYS_PER_LANE: u32 = BC / LANES_PER_ROW;
const Q_STRIDE: u32 = HEAD_DIM + 8u;
const KV_STRIDE: u32 = HEAD_DIM + 8u;
const S_STRIDE: u32 = BC + 8u;
const O_STRIDE: u32 = HEAD_DIM + 8u;
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
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> part_o: array<f32>;
@group(0) @binding(5) var<storage, read_write> part_ml: array<vec2<f32>>;

var<workgroup> w_q: array<f16, ROWS * Q_STRIDE>;
var<workgroup> w_kv: array<f16, BC * KV_STRIDE>;
var<workgroup> w_s: array<f32, ROWS * S_STRIDE>;
var<workgroup> w_p: array<f16, ROWS * S_STRIDE>;
var<workgroup> w_o: array<f32, ROWS * O_STRIDE>;

// Copies keys key0 .. key0 + BC of one KV head from K or V into w_kv (zeros from key `end` on).
fn stage(from_v: bool, key0: u32, end: u32, kv_head: u32, lid: u32) {
    for (var e = lid; e < WORDS; e += WG) {
        let j = e / D8;
        var x = vec4<u32>(0u);
        if key0 + j < end {
            let at = ((key0 + j) * p.kv_heads + kv_head) * D8 + e % D8;
            if from_v {
                x = v[at];
            } else {
                x = k[at];
            }
        }
        let base = j * KV_STRIDE + (e % D8) * 8u;
        for (var h = 0u; h < 4u; h++) {
            // Widening to f32 and back is exact for every f16 value.
            let pair = unpack2x16float(x[h]);
            w_kv[base + 2u * h] = f16(pair.x);
            w_kv[base + 2u * h + 1u] = f16(pair.y);
        }
    }
}

// Scores of the staged K tile's 16-key slice `kt` against the 16 query rows, into w_s.
fn score_slice(kt: u32) {
    var s = coop_mat16x16<f32, C>();
    let qs = Q_STRIDE;
    let ks = KV_STRIDE;
    for (var dc = 0u; dc < DC; dc++) {
        let qi = dc * TILE;
        let a = coopLoadT<coop_mat16x16<f16, A>>(&w_q[qi], qs);
        // K^T as a (HEAD_DIM x keys) operand: column j is key j's row, so column-major.
        let ki = kt * TILE * KV_STRIDE + dc * TILE;
        let b = coopLoad<coop_mat16x16<f16, B>>(&w_kv[ki], ks);
        s = coopMultiplyAdd(a, b, s);
    }
    let si = kt * TILE;
    let ss = S_STRIDE;
    coopStoreT(s, &w_s[si], ss);
}

// Whether query row `r` of the block (position pos0 + r) may see key `key`.
fn visible(key: u32, pos0: u32, r: u32) -> bool {
    return key < p.seq_len && (p.causal == 0u || key <= pos0 + r);
}

// Scores of one key tile for the whole block: stage K, then each subgroup a 16-key slice.
fn scores(key0: u32, end: u32, kv_head: u32, lid: u32, sg: u32, n_sg: u32) {
    stage(false, key0, end, kv_head, lid);
    workgroupBarrier();
    for (var kt = sg; kt < KT; kt += n_sg) {
        score_slice(kt);
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) n_sg: u32,
) {
    let n0 = wg.x * ROWS;
    let qh = wg.y;
    let kv_head = qh / p.group;
    let pos0 = p.past_len + n0;
    let rows = min(ROWS, p.n_queries - n0);
    // Keys the block's last row can see: the walk stops there.
    var end = p.seq_len;
    if p.causal != 0u {
        end = min(p.seq_len, pos0 + rows);
    }

    for (var e = lid; e < ROWS * HEAD_DIM; e += WG) {
        let r = e / HEAD_DIM;
        var x = 0.0;
        if r < rows {
            x = q[((n0 + r) * p.q_heads + qh) * HEAD_DIM + e % HEAD_DIM] * p.scale;
        }
        w_q[r * Q_STRIDE + e % HEAD_DIM] = f16(x);
    }

    let r = lid / LANES_PER_ROW;
    let lr = lid % LANES_PER_ROW;

    // Pass 1: each row's max and sum of exponentials over every key it sees.
    var m = NEG_BIG;
    var l = 0.0;
    for (var key0 = 0u; key0 < end; key0 += BC) {
        scores(key0, end, kv_head, lid, sg, n_sg);
        var tmax = NEG_BIG;
        for (var t = 0u; t < KEYS_PER_LANE; t++) {
            let j = lr + t * LANES_PER_ROW;
            if visible(key0 + j, pos0, r) {
                tmax = max(tmax, w_s[r * S_STRIDE + j]);
            }
        }
        let m_new = max(m, row_max(tmax));
        var tsum = 0.0;
        for (var t = 0u; t < KEYS_PER_LANE; t++) {
            let j = lr + t * LANES_PER_ROW;
            if visible(key0 + j, pos0, r) {
                tsum += exp(w_s[r * S_STRIDE + j] - m_new);
            }
        }
        l = l * exp(m - m_new) + row_sum(tsum);
        m = m_new;
    }
    let inv_l = 1.0 / max(l, 1e-30);

    // Pass 2: normalised probabilities, and O = P V accumulated in matrices.
    var o0 = coop_mat16x16<f32, C>();
    var o1 = coop_mat16x16<f32, C>();
    for (var key0 = 0u; key0 < end; key0 += BC) {
        scores(key0, end, kv_head, lid, sg, n_sg);
        for (var t = 0u; t < KEYS_PER_LANE; t++) {
            let j = lr + t * LANES_PER_ROW;
            var e = 0.0;
            if visible(key0 + j, pos0, r) {
                e = exp(w_s[r * S_STRIDE + j] - m) * inv_l;
            }
            w_p[r * S_STRIDE + j] = f16(e);
        }
        workgroupBarrier();
        stage(true, key0, end, kv_head, lid);
        workgroupBarrier();
        let dc0 = sg;
        let dc1 = sg + n_sg;
        let ps = S_STRIDE;
        let vs = KV_STRIDE;
        for (var kt = 0u; kt < KT; kt++) {
            let pi = kt * TILE;
            let a = coopLoadT<coop_mat16x16<f16, A>>(&w_p[pi], ps);
            if dc0 < DC {
                let vi = kt * TILE * KV_STRIDE + dc0 * TILE;
                let b = coopLoadT<coop_mat16x16<f16, B>>(&w_kv[vi], vs);
                o0 = coopMultiplyAdd(a, b, o0);
            }
            if dc1 < DC {
                let vi = kt * TILE * KV_STRIDE + dc1 * TILE;
                let b = coopLoadT<coop_mat16x16<f16, B>>(&w_kv[vi], vs);
                o1 = coopMultiplyAdd(a, b, o1);
            }
        }
        // The next tile restages w_kv.
        workgroupBarrier();
    }

    let os = O_STRIDE;
    if sg < DC {
        let oi = sg * TILE;
        coopStoreT(o0, &w_o[oi], os);
    }
    if sg + n_sg < DC {
        let oi = (sg + n_sg) * TILE;
        coopStoreT(o1, &w_o[oi], os);
    }
    workgroupBarrier();
    for (var e = lid; e < ROWS * HEAD_DIM; e += WG) {
        let row = e / HEAD_DIM;
        if row < rows {
            part_o[((n0 + row) * p.q_heads + qh) * HEAD_DIM + e % HEAD_DIM] =
                w_o[row * O_STRIDE + e % HEAD_DIM];
        }
    }
    if lr == 0u && r < rows {
        part_ml[(n0 + r) * p.q_heads + qh] = vec2<f32>(m, 1.0);
    }
}

// Reductions over the LANES_PER_ROW consecutive invocations that share a row.
fn row_max(x: f32) -> f32 {
    var y = x;
    for (var o = 1u; o < LANES_PER_ROW; o *= 2u) {
        y = max(y, subgroupShuffleXor(y, o));
    }
    return y;
}

fn row_sum(x: f32) -> f32 {
    var y = x;
    for (var o = 1u; o < LANES_PER_ROW; o *= 2u) {
        y += subgroupShuffleXor(y, o);
    }
    return y;
}
