// Attention for many query rows (prefill) over an f16 KV cache, on cooperative matrices (tensor
// cores). The native fast path of flash_attn.wgsl: same inputs, same partials (one chunk per row),
// same merge pass (diff_combine.wgsl).
//
// A workgroup takes BR = 64 consecutive query rows of one query head (16 per subgroup) and walks the
// keys they can see in tiles of BC keys, staged once in workgroup memory for all 64 rows, twice:
//   pass 1: scores S = Q K^T (16 x BC per subgroup) on the tensor cores; each row's exact max and
//           sum of exponentials (online, in f32);
//   pass 2: the same scores again, P = exp(S - max) / sum as f16, and O += P V on the tensor cores.
// Knowing each row's final max before the second pass lets the output accumulate in cooperative
// matrices without rescaling (matrices cannot be scaled row by row), for 1.5x the score products of
// a one-pass kernel. K and V tiles are zero past the cache's end.
//
// Cooperative operations run per subgroup; naga's uniformity analysis treats subgroup_id as
// divergent, hence the diagnostic filter below: every branch around a cooperative operation depends
// only on the workgroup, the uniforms, constants and the subgroup id, so each subgroup stays
// converged. The host takes this path where subgroups are exactly 32 wide (4 per workgroup).
//
// Layouts as flash_attn.wgsl: q (N, q_heads, d) f32; k, v (S, kv_heads, d) f16 as packed u32 pairs;
// part_o (N, q_heads, 1, d) f32; part_ml (N, q_heads, 1) as (max, sum): the output is already
// normalised, so the sum is written as 1.

enable f16;
enable wgpu_cooperative_matrix;
diagnostic(off, derivative_uniformity);

// Specialisation constants (the host replaces these defaults).
const HEAD_DIM: u32 = 64u;
const BC: u32 = 32u;

const WG: u32 = 128u;
const SUBGROUP: u32 = 32u;
const TILE: u32 = 16u;
// Query rows per workgroup: one 16-row tile per subgroup.
const BR: u32 = TILE * (WG / SUBGROUP);
const DC: u32 = HEAD_DIM / TILE;
const KT: u32 = BC / TILE;
const D8: u32 = HEAD_DIM / 8u;
const WORDS: u32 = BC * D8;
// Each row's softmax is shared by two lanes of its subgroup.
const KEYS_PER_LANE: u32 = BC / 2u;
const Q_STRIDE: u32 = HEAD_DIM + 8u;
const KV_STRIDE: u32 = HEAD_DIM + 8u;
const S_STRIDE: u32 = BC + 8u;
const O_STRIDE: u32 = TILE + 4u;
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
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> part_o: array<f32>;
@group(0) @binding(5) var<storage, read_write> part_ml: array<vec2<f32>>;

// Pre-scaled queries (BR x HEAD_DIM), the current K or V tile (BC x HEAD_DIM), scores and
// probabilities (BR x BC), and one 16x16 output block per subgroup on its way out.
var<workgroup> w_q: array<f16, BR * Q_STRIDE>;
var<workgroup> w_kv: array<f16, BC * KV_STRIDE>;
var<workgroup> w_s: array<f32, BR * S_STRIDE>;
var<workgroup> w_p: array<f16, BR * S_STRIDE>;
var<workgroup> w_o: array<f32, BR * O_STRIDE>;

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

// Scores of this subgroup's 16 rows against the staged tile's 16-key slice `kt`, into w_s.
fn score_slice(sg: u32, kt: u32) {
    var s = coop_mat16x16<f32, C>();
    let qs = Q_STRIDE;
    let ks = KV_STRIDE;
    for (var dc = 0u; dc < DC; dc++) {
        let qi = sg * TILE * Q_STRIDE + dc * TILE;
        let a = coopLoadT<coop_mat16x16<f16, A>>(&w_q[qi], qs);
        // K^T as a (HEAD_DIM x keys) operand: column j is key j's row, so column-major.
        let ki = kt * TILE * KV_STRIDE + dc * TILE;
        let b = coopLoad<coop_mat16x16<f16, B>>(&w_kv[ki], ks);
        s = coopMultiplyAdd(a, b, s);
    }
    let si = sg * TILE * S_STRIDE + kt * TILE;
    let ss = S_STRIDE;
    coopStoreT(s, &w_s[si], ss);
}

// Scores of one key tile for the whole block: stage K, then each subgroup its rows.
fn scores(key0: u32, end: u32, kv_head: u32, lid: u32, sg: u32) {
    stage(false, key0, end, kv_head, lid);
    workgroupBarrier();
    for (var kt = 0u; kt < KT; kt++) {
        score_slice(sg, kt);
    }
    workgroupBarrier();
}

// o + P[:, kt] * V[kt, dc] for this subgroup's rows.
fn pv(a: coop_mat16x16<f16, A>, dc: u32, kt: u32, o: coop_mat16x16<f32, C>) -> coop_mat16x16<f32, C> {
    let vi = kt * TILE * KV_STRIDE + dc * TILE;
    let vs = KV_STRIDE;
    let b = coopLoadT<coop_mat16x16<f16, B>>(&w_kv[vi], vs);
    return coopMultiplyAdd(a, b, o);
}

// Writes output block `dc` of this subgroup's rows (those below `rows`) to part_o.
fn write_block(o: coop_mat16x16<f32, C>, dc: u32, sg: u32, lane: u32, n0: u32, qh: u32, rows: u32) {
    let oi = sg * TILE * O_STRIDE;
    let os = O_STRIDE;
    coopStoreT(o, &w_o[oi], os);
    workgroupBarrier();
    for (var e = lane; e < TILE * TILE; e += SUBGROUP) {
        let row = sg * TILE + e / TILE;
        if row < rows {
            let col = dc * TILE + e % TILE;
            part_o[((n0 + row) * p.q_heads + qh) * HEAD_DIM + col] = w_o[row * O_STRIDE + e % TILE];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let n0 = wg.x * BR;
    let qh = wg.y;
    let kv_head = qh / p.group;
    let pos0 = p.past_len + n0;
    let rows = min(BR, p.n_queries - n0);
    // Keys the block's last row can see: the walk stops there.
    var end = p.seq_len;
    if p.causal != 0u {
        end = min(p.seq_len, pos0 + rows);
    }

    for (var e = lid; e < BR * HEAD_DIM; e += WG) {
        let r = e / HEAD_DIM;
        var x = 0.0;
        if r < rows {
            x = q[((n0 + r) * p.q_heads + qh) * HEAD_DIM + e % HEAD_DIM] * p.scale;
        }
        w_q[r * Q_STRIDE + e % HEAD_DIM] = f16(x);
    }

    // This lane's row of the block, and its half of the row's keys.
    let r = sg * TILE + lane / 2u;
    let lr = lane % 2u;
    let row_pos = pos0 + r;

    // Pass 1: each row's max and sum of exponentials over every key it sees.
    var m = NEG_BIG;
    var l = 0.0;
    for (var key0 = 0u; key0 < end; key0 += BC) {
        scores(key0, end, kv_head, lid, sg);
        var tmax = NEG_BIG;
        for (var t = 0u; t < KEYS_PER_LANE; t++) {
            let j = lr + 2u * t;
            if visible(key0 + j, row_pos) {
                tmax = max(tmax, w_s[r * S_STRIDE + j]);
            }
        }
        let m_new = max(m, max(tmax, subgroupShuffleXor(tmax, 1u)));
        var tsum = 0.0;
        for (var t = 0u; t < KEYS_PER_LANE; t++) {
            let j = lr + 2u * t;
            if visible(key0 + j, row_pos) {
                tsum += exp(w_s[r * S_STRIDE + j] - m_new);
            }
        }
        l = l * exp(m - m_new) + tsum + subgroupShuffleXor(tsum, 1u);
        m = m_new;
    }
    let inv_l = 1.0 / max(l, 1e-30);

    // Pass 2: normalised probabilities, and O = P V accumulated in matrices, one per 16 columns.
    var o0 = coop_mat16x16<f32, C>();
    var o1 = coop_mat16x16<f32, C>();
    var o2 = coop_mat16x16<f32, C>();
    var o3 = coop_mat16x16<f32, C>();
    var o4 = coop_mat16x16<f32, C>();
    var o5 = coop_mat16x16<f32, C>();
    var o6 = coop_mat16x16<f32, C>();
    var o7 = coop_mat16x16<f32, C>();
    for (var key0 = 0u; key0 < end; key0 += BC) {
        scores(key0, end, kv_head, lid, sg);
        for (var t = 0u; t < KEYS_PER_LANE; t++) {
            let j = lr + 2u * t;
            var e = 0.0;
            if visible(key0 + j, row_pos) {
                e = exp(w_s[r * S_STRIDE + j] - m) * inv_l;
            }
            w_p[r * S_STRIDE + j] = f16(e);
        }
        workgroupBarrier();
        stage(true, key0, end, kv_head, lid);
        workgroupBarrier();
        let ps = S_STRIDE;
        for (var kt = 0u; kt < KT; kt++) {
            let pi = sg * TILE * S_STRIDE + kt * TILE;
            let a = coopLoadT<coop_mat16x16<f16, A>>(&w_p[pi], ps);
            o0 = pv(a, 0u, kt, o0);
            if DC > 1u {
                o1 = pv(a, 1u, kt, o1);
            }
            if DC > 2u {
                o2 = pv(a, 2u, kt, o2);
            }
            if DC > 3u {
                o3 = pv(a, 3u, kt, o3);
            }
            if DC > 4u {
                o4 = pv(a, 4u, kt, o4);
            }
            if DC > 5u {
                o5 = pv(a, 5u, kt, o5);
            }
            if DC > 6u {
                o6 = pv(a, 6u, kt, o6);
            }
            if DC > 7u {
                o7 = pv(a, 7u, kt, o7);
            }
        }
        // The next tile restages w_kv.
        workgroupBarrier();
    }

    write_block(o0, 0u, sg, lane, n0, qh, rows);
    if DC > 1u {
        write_block(o1, 1u, sg, lane, n0, qh, rows);
    }
    if DC > 2u {
        write_block(o2, 2u, sg, lane, n0, qh, rows);
    }
    if DC > 3u {
        write_block(o3, 3u, sg, lane, n0, qh, rows);
    }
    if DC > 4u {
        write_block(o4, 4u, sg, lane, n0, qh, rows);
    }
    if DC > 5u {
        write_block(o5, 5u, sg, lane, n0, qh, rows);
    }
    if DC > 6u {
        write_block(o6, 6u, sg, lane, n0, qh, rows);
    }
    if DC > 7u {
        write_block(o7, 7u, sg, lane, n0, qh, rows);
    }
    if lr == 0u && r < rows {
        part_ml[(n0 + r) * p.q_heads + qh] = vec2<f32>(m, 1.0);
    }
}

// Whether the query row at position `row_pos` may see key `key`.
fn visible(key: u32, row_pos: u32) -> bool {
    return key < p.seq_len && (p.causal == 0u || key <= row_pos);
}
