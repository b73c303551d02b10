// Split-KV attention for a few query tokens over a long f16 KV cache, on cooperative matrices
// (tensor cores). The native fast path of decode_split.wgsl: same inputs, same partials, same merge
// pass (diff_combine.wgsl).
//
// A workgroup takes one query token, the query heads of one GQA group (up to 16: the rows of a
// 16x16 matrix tile; unused rows are zero) and every n_chunks-th sub-chunk of SUB keys of the cache,
// so that the workgroups in flight together sweep neighbouring memory. Per sub-chunk:
//   1. the K sub-chunk is copied to workgroup memory in 16-byte loads (zeros past the visible keys);
//   2. scores S = Q K^T (16 x SUB) on the tensor cores, f32 accumulation;
//   3. online softmax on S: each row's running max and sum in f32, P = exp(S - max) as f16;
//   4. the V sub-chunk replaces K in workgroup memory; O_sub = P V (16 x HEAD_DIM) on the tensor
//      cores; the running output is rescaled and summed in registers.
// Loads are issued one phase ahead (V while the scores are computed, the next K while P V is), so
// memory latency overlaps the arithmetic. Every K and V element is read from memory once, for all
// heads of its group: DIFF V2, with twice the query heads per KV head, moves the same bytes as
// standard attention.
//
// Cooperative operations run per subgroup; naga's uniformity analysis treats subgroup_id as
// divergent, hence the diagnostic filter below: every branch around a cooperative operation here
// depends only on the workgroup, the uniforms and the subgroup id, so each subgroup stays converged.
// The row reductions use subgroup shuffles across 8 consecutive invocations, so the host takes this
// path only where subgroups have one fixed size of at least 8 (NVIDIA: 32).
//
// Layouts as decode_split.wgsl: q (N, q_heads, d) f32; k, v (S, kv_heads, d) f16 as packed u32
// pairs; part_o (N, q_heads, n_chunks, d) f32; part_ml (N, q_heads, n_chunks) as (max, sum).

enable f16;
enable wgpu_cooperative_matrix;
diagnostic(off, derivative_uniformity);

// Specialisation constants (the host replaces these defaults).
const HEAD_DIM: u32 = 64u;
const SUB: u32 = 128u;

const WG: u32 = 128u;
const TILE: u32 = 16u;
// Query heads per workgroup: the rows of one matrix tile.
const ROWS: u32 = 16u;
const DC: u32 = HEAD_DIM / TILE;
const KT: u32 = SUB / TILE;
// 16-byte words (8 halves) per K/V row, and per sub-chunk, and per invocation when copying one.
const D8: u32 = HEAD_DIM / 8u;
const WORDS: u32 = SUB * D8;
const LOADS: u32 = (WORDS + WG - 1u) / WG;
const LANES_PER_ROW: u32 = WG / ROWS;
const KEYS_PER_LANE: u32 = SUB / LANES_PER_ROW;
// Output elements of the 16 x HEAD_DIM accumulator each invocation keeps.
const ACC: u32 = ROWS * HEAD_DIM / WG;
// Row strides in workgroup memory, padded by 16 bytes so that the rows a matrix load reads at once
// fall in different banks.
const Q_STRIDE: u32 = HEAD_DIM + 8u;
const KV_STRIDE: u32 = HEAD_DIM + 8u;
const S_STRIDE: u32 = SUB + 8u;
const P_STRIDE: u32 = SUB + 8u;
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

// Pre-scaled queries (ROWS x HEAD_DIM).
var<workgroup> w_q: array<f16, ROWS * Q_STRIDE>;
// The current K, then V, sub-chunk (SUB x HEAD_DIM), key-major.
var<workgroup> w_kv: array<f16, SUB * KV_STRIDE>;
// Scores (ROWS x SUB), probabilities (ROWS x SUB), the sub-chunk's P V (ROWS x HEAD_DIM).
var<workgroup> w_s: array<f32, ROWS * S_STRIDE>;
var<workgroup> w_p: array<f16, ROWS * P_STRIDE>;
var<workgroup> w_o: array<f32, ROWS * O_STRIDE>;
// Per row: exp(old max - new max), the factor that rescales the running output.
var<workgroup> w_alpha: array<f32, ROWS>;

// One sub-chunk of K or V in registers, on its way to workgroup memory.
struct Words {
    w: array<vec4<u32>, LOADS>,
}

// Reads keys key0 .. key0 + count of one KV head (zeros past count), 16 bytes per load, all loads
// issued before any is used.
fn load_sub(from_v: bool, key0: u32, count: u32, kv_head: u32, lid: u32) -> Words {
    var r: Words;
    for (var i = 0u; i < LOADS; i++) {
        let e = lid + i * WG;
        let j = e / D8;
        var x = vec4<u32>(0u);
        if e < WORDS && j < count {
            let at = ((key0 + j) * p.kv_heads + kv_head) * D8 + e % D8;
            if from_v {
                x = v[at];
            } else {
                x = k[at];
            }
        }
        r.w[i] = x;
    }
    return r;
}

fn store_sub(r: Words, lid: u32) {
    for (var i = 0u; i < LOADS; i++) {
        let e = lid + i * WG;
        if e < WORDS {
            let base = (e / D8) * KV_STRIDE + (e % D8) * 8u;
            let words = r.w[i];
            for (var h = 0u; h < 4u; h++) {
                // Widening to f32 and back is exact for every f16 value.
                let pair = unpack2x16float(words[h]);
                w_kv[base + 2u * h] = f16(pair.x);
                w_kv[base + 2u * h + 1u] = f16(pair.y);
            }
        }
    }
}

// Scores of key tile `kt` against all ROWS queries, into w_s.
fn score_tile(kt: u32) {
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

// Column block `dc` of P V over the sub-chunk in w_kv, into w_o.
fn value_block(dc: u32) {
    var o = coop_mat16x16<f32, C>();
    let ps = P_STRIDE;
    let vs = KV_STRIDE;
    for (var kt = 0u; kt < KT; kt++) {
        let pi = kt * TILE;
        let a = coopLoadT<coop_mat16x16<f16, A>>(&w_p[pi], ps);
        let vi = kt * TILE * KV_STRIDE + dc * TILE;
        let b = coopLoadT<coop_mat16x16<f16, B>>(&w_kv[vi], vs);
        o = coopMultiplyAdd(a, b, o);
    }
    let oi = dc * TILE;
    let os = O_STRIDE;
    coopStoreT(o, &w_o[oi], os);
}

fn row_max8(x: f32) -> f32 {
    var m = max(x, subgroupShuffleXor(x, 1u));
    m = max(m, subgroupShuffleXor(m, 2u));
    return max(m, subgroupShuffleXor(m, 4u));
}

fn row_sum8(x: f32) -> f32 {
    var s = x + subgroupShuffleXor(x, 1u);
    s += subgroupShuffleXor(s, 2u);
    return s + subgroupShuffleXor(s, 4u);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) n_sg: u32,
) {
    // KV heads vary fastest across workgroups, so that those in flight share key rows.
    let kv_head = wg.x / p.head_splits;
    let split = wg.x % p.head_splits;
    let chunk = wg.y;
    let n = wg.z;
    let first_head = kv_head * p.group + split * p.heads_per_wg;
    let n_heads = min(p.heads_per_wg, p.group - split * p.heads_per_wg);
    var visible_end = p.seq_len;
    if p.causal != 0u {
        visible_end = min(p.seq_len, p.past_len + n + 1u);
    }
    let n_subs = (visible_end + SUB - 1u) / SUB;

    for (var e = lid; e < ROWS * HEAD_DIM; e += WG) {
        let r = e / HEAD_DIM;
        var x = 0.0;
        if r < n_heads {
            x = q[(n * p.q_heads + first_head + r) * HEAD_DIM + e % HEAD_DIM] * p.scale;
        }
        w_q[r * Q_STRIDE + e % HEAD_DIM] = f16(x);
    }

    // This invocation's row in the softmax, and its running statistics (the 8 invocations of a row
    // hold identical copies).
    let r = lid / LANES_PER_ROW;
    let lr = lid % LANES_PER_ROW;
    var m_run = NEG_BIG;
    var l_run = 0.0;
    var acc: array<f32, ACC>;

    var next_k = load_sub(false, chunk * SUB, visible_end - min(visible_end, chunk * SUB), kv_head, lid);
    for (var s = chunk; s < n_subs; s += p.n_chunks) {
        let key0 = s * SUB;
        let keys = min(SUB, visible_end - key0);
        store_sub(next_k, lid);
        workgroupBarrier();
        let vals = load_sub(true, key0, keys, kv_head, lid);

        for (var kt = sg; kt < KT; kt += n_sg) {
            score_tile(kt);
        }
        workgroupBarrier();

        var tmax = NEG_BIG;
        for (var t = 0u; t < KEYS_PER_LANE; t++) {
            let j = lr + t * LANES_PER_ROW;
            if j < keys {
                tmax = max(tmax, w_s[r * S_STRIDE + j]);
            }
        }
        let m_new = max(m_run, row_max8(tmax));
        var tsum = 0.0;
        for (var t = 0u; t < KEYS_PER_LANE; t++) {
            let j = lr + t * LANES_PER_ROW;
            var e = f16(0.0);
            if j < keys {
                e = f16(exp(w_s[r * S_STRIDE + j] - m_new));
            }
            w_p[r * P_STRIDE + j] = e;
            // The sum takes the rounded weights, so that it normalises exactly what P V sums.
            tsum += f32(e);
        }
        let alpha = exp(m_run - m_new);
        l_run = l_run * alpha + row_sum8(tsum);
        m_run = m_new;
        if lr == 0u {
            w_alpha[r] = alpha;
        }
        // Every subgroup is done with K before V overwrites it.
        workgroupBarrier();
        store_sub(vals, lid);
        workgroupBarrier();
        let next = s + p.n_chunks;
        next_k = load_sub(false, next * SUB, visible_end - min(visible_end, next * SUB), kv_head, lid);

        for (var dc = sg; dc < DC; dc += n_sg) {
            value_block(dc);
        }
        workgroupBarrier();

        for (var i = 0u; i < ACC; i++) {
            let e = lid + i * WG;
            let row = e / HEAD_DIM;
            acc[i] = acc[i] * w_alpha[row] + w_o[row * O_STRIDE + e % HEAD_DIM];
        }
        // The next sub-chunk overwrites w_kv, w_s, w_p, w_o and w_alpha only after this barrier.
        workgroupBarrier();
    }

    for (var i = 0u; i < ACC; i++) {
        let e = lid + i * WG;
        let row = e / HEAD_DIM;
        if row < n_heads {
            let out_row = (n * p.q_heads + first_head + row) * p.n_chunks + chunk;
            part_o[out_row * HEAD_DIM + e % HEAD_DIM] = acc[i];
        }
    }
    if lr == 0u && r < n_heads {
        part_ml[(n * p.q_heads + first_head + r) * p.n_chunks + chunk] = vec2<f32>(m_run, l_run);
    }
}
