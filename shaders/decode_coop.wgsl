// Split-KV attention for one query token over a long f16 KV cache, on cooperative matrices (tensor
// cores). The native fast path of decode_split.wgsl: same inputs, same partials, same merge pass.
//
// A workgroup takes one query token, the query heads of one GQA group (up to 16: the rows of a
// 16x16 matrix tile; unused rows are zero) and every n_chunks-th sub-chunk of SUB keys, so that the
// workgroups in flight together sweep neighbouring memory, as a grid-stride loop does (KV heads vary
// fastest across workgroups for the same reason). Per sub-chunk:
//   1. scores S = Q K^T (16 x SUB), each subgroup a share of the 16-key tiles, K tiles loaded
//      straight from the cache, accumulated in f32, stored to workgroup memory;
//   2. online softmax on S: each row's running max and sum in f32, P = exp(S - max) as f16;
//   3. O_sub = P V (16 x HEAD_DIM), each subgroup a share of the 16-column blocks, V tiles loaded
//      straight from the cache; the running output is rescaled and summed in registers.
// Every K and V element is read from memory once, by whole 16x16 tiles, for all heads of the group,
// so DIFF V2 (twice the query heads per KV head) costs the same memory traffic as standard attention,
// and the tensor cores keep the arithmetic off the critical path.
//
// The cache's last tile of a chunk may be partial: it is staged through workgroup memory with zeros
// past the visible keys, so nothing past the end is ever read and no garbage reaches a product.
//
// Cooperative operations run per subgroup; naga's uniformity analysis treats subgroup_id as
// divergent, hence the diagnostic filter below: every branch around a cooperative operation here
// depends only on the workgroup, the uniforms and the subgroup id, so each subgroup stays converged.
// The row reductions use subgroup shuffles across 8 consecutive invocations, so the host takes this
// path only where subgroups are at least 8 wide and laid out linearly (NVIDIA: 32).
//
// Layouts as decode_split.wgsl: q (N, q_heads, d) f32; k, v (S, kv_heads, d) f16;
// part_o (N, q_heads, n_chunks, d) f32; part_ml (N, q_heads, n_chunks) as (max, sum).

enable f16;
enable wgpu_cooperative_matrix;
diagnostic(off, derivative_uniformity);

// Specialisation constants (the host replaces these defaults).
const HEAD_DIM: u32 = 64u;
const SUB: u32 = 128u;
const WG: u32 = 128u;
// Measurement only (always 0 in use): bits that leave stages out, to time what each costs.
// 1: score products, 2: value products, 16: softmax (32, the merge pass, is the host's).
const PROFILE: u32 = 0u;

const TILE: u32 = 16u;
// Query heads per workgroup: the rows of one matrix tile.
const ROWS: u32 = 16u;
const DC: u32 = HEAD_DIM / TILE;
const KT: u32 = SUB / TILE;
const LANES_PER_ROW: u32 = WG / ROWS;
const KEYS_PER_LANE: u32 = SUB / LANES_PER_ROW;
// Output elements of the 16 x HEAD_DIM accumulator each invocation keeps.
const ACC: u32 = ROWS * HEAD_DIM / WG;
// Row strides in workgroup memory, padded by 16 bytes so that the rows one matrix load or one
// softmax step touches fall in different banks.
const Q_STRIDE: u32 = HEAD_DIM + 8u;
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
@group(0) @binding(2) var<storage, read> k: array<f16>;
@group(0) @binding(3) var<storage, read> v: array<f16>;
@group(0) @binding(4) var<storage, read_write> part_o: array<f32>;
@group(0) @binding(5) var<storage, read_write> part_ml: array<vec2<f32>>;

// Pre-scaled queries, row-major (ROWS x HEAD_DIM).
var<workgroup> w_q: array<f16, ROWS * Q_STRIDE>;
// Scores of the sub-chunk (ROWS x SUB); after the softmax, the sub-chunk's P V (ROWS x HEAD_DIM).
var<workgroup> w_s: array<f32, ROWS * S_STRIDE>;
var<workgroup> w_p: array<f16, ROWS * P_STRIDE>;
// A partial 16-key tile of K, then of V, key-major, zero past the visible keys.
var<workgroup> w_tail: array<f16, TILE * HEAD_DIM>;
// Per row: exp(old max - new max), the factor that rescales the running output.
var<workgroup> w_alpha: array<f32, ROWS>;

// Copies keys key0 .. key0 + count (count < TILE) of one KV head into w_tail, zero-padded.
fn stage_tail(from_v: bool, key0: u32, count: u32, kv_head: u32, lid: u32) {
    for (var e = lid; e < TILE * HEAD_DIM; e += WG) {
        let j = e / HEAD_DIM;
        var x = f16(0.0);
        if j < count {
            let i = ((key0 + j) * p.kv_heads + kv_head) * HEAD_DIM + e % HEAD_DIM;
            if from_v {
                x = v[i];
            } else {
                x = k[i];
            }
        }
        w_tail[e] = x;
    }
}

// Scores of key tile `kt` (keys key0 .. key0 + 16) against all ROWS queries, into w_s.
fn score_tile(kt: u32, key0: u32, kv_head: u32, from_tail: bool) {
    var s = coop_mat16x16<f32, C>();
    let ks = p.kv_heads * HEAD_DIM;
    let ts = HEAD_DIM;
    let qs = Q_STRIDE;
    let base = (key0 * p.kv_heads + kv_head) * HEAD_DIM;
    var dc = 0u;
    if !from_tail {
        // Eight K tiles in flight before their products: the loads, not the tensor cores, are the
        // latency to hide (measured: one load at a time ran at a third of this speed).
        for (; dc + 7u < DC; dc += 8u) {
            let k0 = base + dc * TILE;
            let k1 = k0 + TILE;
            let k2 = k0 + 2u * TILE;
            let k3 = k0 + 3u * TILE;
            let k4 = k0 + 4u * TILE;
            let k5 = k0 + 5u * TILE;
            let k6 = k0 + 6u * TILE;
            let k7 = k0 + 7u * TILE;
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&k[k0], ks);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&k[k1], ks);
            let b2 = coopLoad<coop_mat16x16<f16, B>>(&k[k2], ks);
            let b3 = coopLoad<coop_mat16x16<f16, B>>(&k[k3], ks);
            let b4 = coopLoad<coop_mat16x16<f16, B>>(&k[k4], ks);
            let b5 = coopLoad<coop_mat16x16<f16, B>>(&k[k5], ks);
            let b6 = coopLoad<coop_mat16x16<f16, B>>(&k[k6], ks);
            let b7 = coopLoad<coop_mat16x16<f16, B>>(&k[k7], ks);
            s = score_step(dc, b0, s);
            s = score_step(dc + 1u, b1, s);
            s = score_step(dc + 2u, b2, s);
            s = score_step(dc + 3u, b3, s);
            s = score_step(dc + 4u, b4, s);
            s = score_step(dc + 5u, b5, s);
            s = score_step(dc + 6u, b6, s);
            s = score_step(dc + 7u, b7, s);
        }
        for (; dc + 3u < DC; dc += 4u) {
            let k0 = base + dc * TILE;
            let k1 = k0 + TILE;
            let k2 = k0 + 2u * TILE;
            let k3 = k0 + 3u * TILE;
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&k[k0], ks);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&k[k1], ks);
            let b2 = coopLoad<coop_mat16x16<f16, B>>(&k[k2], ks);
            let b3 = coopLoad<coop_mat16x16<f16, B>>(&k[k3], ks);
            s = score_step(dc, b0, s);
            s = score_step(dc + 1u, b1, s);
            s = score_step(dc + 2u, b2, s);
            s = score_step(dc + 3u, b3, s);
        }
    }
    for (; dc < DC; dc++) {
        // K^T as a (HEAD_DIM x keys) operand: column j is key j's row, so column-major.
        if from_tail {
            let ti = dc * TILE;
            let b = coopLoad<coop_mat16x16<f16, B>>(&w_tail[ti], ts);
            s = score_step(dc, b, s);
        } else {
            let ki = base + dc * TILE;
            let b = coopLoad<coop_mat16x16<f16, B>>(&k[ki], ks);
            s = score_step(dc, b, s);
        }
    }
    let si = kt * TILE;
    let ss = S_STRIDE;
    coopStoreT(s, &w_s[si], ss);
}

// Column block `i` of a K tile (rows base.. of the cache) as the (HEAD_DIM x keys) operand.
fn load_k(base: u32, i: u32, stride: u32) -> coop_mat16x16<f16, B> {
    let at = base + i * TILE;
    return coopLoad<coop_mat16x16<f16, B>>(&k[at], stride);
}

// Key tile `i` of a V column block starting at `base`, as the (keys x 16) operand.
fn load_v(base: u32, i: u32, stride: u32) -> coop_mat16x16<f16, B> {
    let at = base + i * TILE * stride;
    return coopLoadT<coop_mat16x16<f16, B>>(&v[at], stride);
}

// One 16-column block of the scores' inner product: s + Q[:, dc] * b.
fn score_step(
    dc: u32,
    b: coop_mat16x16<f16, B>,
    s: coop_mat16x16<f32, C>,
) -> coop_mat16x16<f32, C> {
    let qi = dc * TILE;
    let qs = Q_STRIDE;
    let a = coopLoadT<coop_mat16x16<f16, A>>(&w_q[qi], qs);
    return coopMultiplyAdd(a, b, s);
}

// One 16-key block of P V: o + P[:, kt] * b.
fn value_step(
    kt: u32,
    b: coop_mat16x16<f16, B>,
    o: coop_mat16x16<f32, C>,
) -> coop_mat16x16<f32, C> {
    let pi = kt * TILE;
    let ps = P_STRIDE;
    let a = coopLoadT<coop_mat16x16<f16, A>>(&w_p[pi], ps);
    return coopMultiplyAdd(a, b, o);
}

// Column block `dc` of P V over the sub-chunk starting at key `sub`, into w_s (ROWS x HEAD_DIM).
fn value_block(dc: u32, sub: u32, full: u32, partial: bool, kv_head: u32) {
    var o = coop_mat16x16<f32, C>();
    let vs = p.kv_heads * HEAD_DIM;
    let ts = HEAD_DIM;
    let step = TILE * vs;
    let base = (sub * p.kv_heads + kv_head) * HEAD_DIM + dc * TILE;
    var kt = 0u;
    // Eight V tiles in flight before their products, as in score_tile.
    for (; kt + 7u < full; kt += 8u) {
        let v0 = base + kt * step;
        let v1 = v0 + step;
        let v2 = v0 + 2u * step;
        let v3 = v0 + 3u * step;
        let v4 = v0 + 4u * step;
        let v5 = v0 + 5u * step;
        let v6 = v0 + 6u * step;
        let v7 = v0 + 7u * step;
        let b0 = coopLoadT<coop_mat16x16<f16, B>>(&v[v0], vs);
        let b1 = coopLoadT<coop_mat16x16<f16, B>>(&v[v1], vs);
        let b2 = coopLoadT<coop_mat16x16<f16, B>>(&v[v2], vs);
        let b3 = coopLoadT<coop_mat16x16<f16, B>>(&v[v3], vs);
        let b4 = coopLoadT<coop_mat16x16<f16, B>>(&v[v4], vs);
        let b5 = coopLoadT<coop_mat16x16<f16, B>>(&v[v5], vs);
        let b6 = coopLoadT<coop_mat16x16<f16, B>>(&v[v6], vs);
        let b7 = coopLoadT<coop_mat16x16<f16, B>>(&v[v7], vs);
        o = value_step(kt, b0, o);
        o = value_step(kt + 1u, b1, o);
        o = value_step(kt + 2u, b2, o);
        o = value_step(kt + 3u, b3, o);
        o = value_step(kt + 4u, b4, o);
        o = value_step(kt + 5u, b5, o);
        o = value_step(kt + 6u, b6, o);
        o = value_step(kt + 7u, b7, o);
    }
    for (; kt + 3u < full; kt += 4u) {
        let v0 = base + kt * step;
        let v1 = v0 + step;
        let v2 = v0 + 2u * step;
        let v3 = v0 + 3u * step;
        let b0 = coopLoadT<coop_mat16x16<f16, B>>(&v[v0], vs);
        let b1 = coopLoadT<coop_mat16x16<f16, B>>(&v[v1], vs);
        let b2 = coopLoadT<coop_mat16x16<f16, B>>(&v[v2], vs);
        let b3 = coopLoadT<coop_mat16x16<f16, B>>(&v[v3], vs);
        o = value_step(kt, b0, o);
        o = value_step(kt + 1u, b1, o);
        o = value_step(kt + 2u, b2, o);
        o = value_step(kt + 3u, b3, o);
    }
    for (; kt < full; kt++) {
        let vi = base + kt * step;
        let b = coopLoadT<coop_mat16x16<f16, B>>(&v[vi], vs);
        o = value_step(kt, b, o);
    }
    if partial {
        let ti = dc * TILE;
        let b = coopLoadT<coop_mat16x16<f16, B>>(&w_tail[ti], ts);
        o = value_step(full, b, o);
    }
    let oi = dc * TILE;
    let os = O_STRIDE;
    coopStoreT(o, &w_s[oi], os);
}

// Reductions over the LANES_PER_ROW consecutive invocations that share a softmax row.
fn row_max(x: f32) -> f32 {
    var m = x;
    for (var o = 1u; o < LANES_PER_ROW; o *= 2u) {
        m = max(m, subgroupShuffleXor(m, o));
    }
    return m;
}

fn row_sum(x: f32) -> f32 {
    var s = x;
    for (var o = 1u; o < LANES_PER_ROW; o *= 2u) {
        s += subgroupShuffleXor(s, o);
    }
    return s;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) n_sg: u32,
) {
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

    // This invocation's row in the softmax, and its running statistics (the invocations of a row
    // hold identical copies).
    let r = lid / LANES_PER_ROW;
    let lr = lid % LANES_PER_ROW;
    var m_run = NEG_BIG;
    var l_run = 0.0;
    var acc: array<f32, ACC>;

    for (var s = chunk; s < n_subs; s += p.n_chunks) {
        let sub = s * SUB;
        let keys = min(SUB, visible_end - sub);
        let full = keys / TILE;
        let partial = full * TILE < keys;
        if partial {
            stage_tail(false, sub + full * TILE, keys - full * TILE, kv_head, lid);
        }
        workgroupBarrier();

        // The common case, a full sub-chunk with one score tile and at most one value block per
        // subgroup: the subgroup issues its K and its V loads together, so that one memory round
        // trip, not two, serves the sub-chunk (V waits in registers through the softmax).
        let fast = full == KT && KT == n_sg && DC <= n_sg && PROFILE == 0u;
        var kb0 = coop_mat16x16<f16, B>();
        var kb1 = coop_mat16x16<f16, B>();
        var kb2 = coop_mat16x16<f16, B>();
        var kb3 = coop_mat16x16<f16, B>();
        var kb4 = coop_mat16x16<f16, B>();
        var kb5 = coop_mat16x16<f16, B>();
        var kb6 = coop_mat16x16<f16, B>();
        var kb7 = coop_mat16x16<f16, B>();
        var vb0 = coop_mat16x16<f16, B>();
        var vb1 = coop_mat16x16<f16, B>();
        var vb2 = coop_mat16x16<f16, B>();
        var vb3 = coop_mat16x16<f16, B>();
        var vb4 = coop_mat16x16<f16, B>();
        var vb5 = coop_mat16x16<f16, B>();
        var vb6 = coop_mat16x16<f16, B>();
        var vb7 = coop_mat16x16<f16, B>();
        if fast {
            let ks = p.kv_heads * HEAD_DIM;
            let kbase = ((sub + sg * TILE) * p.kv_heads + kv_head) * HEAD_DIM;
            kb0 = load_k(kbase, 0u, ks);
            if DC > 1u { kb1 = load_k(kbase, 1u, ks); }
            if DC > 2u { kb2 = load_k(kbase, 2u, ks); }
            if DC > 3u { kb3 = load_k(kbase, 3u, ks); }
            if DC > 4u { kb4 = load_k(kbase, 4u, ks); }
            if DC > 5u { kb5 = load_k(kbase, 5u, ks); }
            if DC > 6u { kb6 = load_k(kbase, 6u, ks); }
            if DC > 7u { kb7 = load_k(kbase, 7u, ks); }
            if sg < DC {
                let vbase = (sub * p.kv_heads + kv_head) * HEAD_DIM + sg * TILE;
                vb0 = load_v(vbase, 0u, ks);
                if KT > 1u { vb1 = load_v(vbase, 1u, ks); }
                if KT > 2u { vb2 = load_v(vbase, 2u, ks); }
                if KT > 3u { vb3 = load_v(vbase, 3u, ks); }
                if KT > 4u { vb4 = load_v(vbase, 4u, ks); }
                if KT > 5u { vb5 = load_v(vbase, 5u, ks); }
                if KT > 6u { vb6 = load_v(vbase, 6u, ks); }
                if KT > 7u { vb7 = load_v(vbase, 7u, ks); }
            }
            var sc = coop_mat16x16<f32, C>();
            sc = score_step(0u, kb0, sc);
            if DC > 1u { sc = score_step(1u, kb1, sc); }
            if DC > 2u { sc = score_step(2u, kb2, sc); }
            if DC > 3u { sc = score_step(3u, kb3, sc); }
            if DC > 4u { sc = score_step(4u, kb4, sc); }
            if DC > 5u { sc = score_step(5u, kb5, sc); }
            if DC > 6u { sc = score_step(6u, kb6, sc); }
            if DC > 7u { sc = score_step(7u, kb7, sc); }
            let si = sg * TILE;
            let ss = S_STRIDE;
            coopStoreT(sc, &w_s[si], ss);
        } else if (PROFILE & 1u) == 0u {
            for (var kt = sg; kt < full; kt += n_sg) {
                score_tile(kt, sub + kt * TILE, kv_head, false);
            }
            if partial && sg == full % n_sg {
                score_tile(full, 0u, kv_head, true);
            }
        }
        workgroupBarrier();

        if partial {
            stage_tail(true, sub + full * TILE, keys - full * TILE, kv_head, lid);
        }
        var tmax = NEG_BIG;
        for (var t = 0u; t < KEYS_PER_LANE * u32((PROFILE & 16u) == 0u); t++) {
            let j = lr + t * LANES_PER_ROW;
            if j < keys {
                tmax = max(tmax, w_s[r * S_STRIDE + j]);
            }
        }
        let m_new = max(m_run, row_max(tmax));
        var tsum = 0.0;
        for (var t = 0u; t < KEYS_PER_LANE * u32((PROFILE & 16u) == 0u); t++) {
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
        l_run = l_run * alpha + row_sum(tsum);
        m_run = m_new;
        if lr == 0u {
            w_alpha[r] = alpha;
        }
        workgroupBarrier();

        if fast {
            if sg < DC {
                var o = coop_mat16x16<f32, C>();
                o = value_step(0u, vb0, o);
                if KT > 1u { o = value_step(1u, vb1, o); }
                if KT > 2u { o = value_step(2u, vb2, o); }
                if KT > 3u { o = value_step(3u, vb3, o); }
                if KT > 4u { o = value_step(4u, vb4, o); }
                if KT > 5u { o = value_step(5u, vb5, o); }
                if KT > 6u { o = value_step(6u, vb6, o); }
                if KT > 7u { o = value_step(7u, vb7, o); }
                let oi = sg * TILE;
                let os = O_STRIDE;
                coopStoreT(o, &w_s[oi], os);
            }
        } else if (PROFILE & 2u) == 0u {
            for (var dc = sg; dc < DC; dc += n_sg) {
                value_block(dc, sub, full, partial, kv_head);
            }
        }
        workgroupBarrier();

        for (var i = 0u; i < ACC; i++) {
            let e = lid + i * WG;
            let row = e / HEAD_DIM;
            acc[i] = acc[i] * w_alpha[row] + w_s[row * O_STRIDE + e % HEAD_DIM];
        }
        // The next sub-chunk overwrites w_s, w_tail and w_alpha.
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
