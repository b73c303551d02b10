// Split-KV attention for one query token over a long f16 KV cache, on cooperative matrices (tensor
// cores). The native fast path of decode_split.wgsl: same inputs, same partials, same merge pass.
//
// A workgroup takes one query token, the query heads of one GQA group (up to 16: the rows of a
// 16x16 matrix tile; unused rows are zero) and every n_chunks-th sub-chunk of NSG x 16 keys, so
// that the workgroups in flight together sweep neighbouring memory (KV heads vary fastest across
// workgroups for the same reason). Within a sub-chunk each subgroup takes one block of BLOCKS x 16
// keys and runs its own online softmax over the blocks it gets, with no workgroup barrier until the
// end (two 16-key tiles per block give each memory round trip and each softmax twice the work, and
// the tensor cores two independent score products):
//   1. its K and V tiles for the block are loaded straight from the cache into matrices, together,
//      so one memory round trip serves the block;
//   2. scores S = Q K^T (16 heads x 16 keys) on the tensor cores, in f32, through this subgroup's
//      corner of workgroup memory to the lanes (two lanes per row);
//   3. P = exp(S - m) as f16, where m is the row's running maximum; m only moves when a block's
//      maximum exceeds it by more than THRESHOLD, so P stays below e^THRESHOLD (well inside f16)
//      and the running output, which lives in matrices, is rescaled only on those rare blocks;
//   4. O += P V on the tensor cores.
// At the end the subgroups' (max, sum, output) are merged in workgroup memory, tile by tile, and
// written as the chunk's partial; with a single chunk (`direct`) the normalised result, with the
// DIFF V2 differential, goes straight to the output and no merge pass runs.
// Every K and V element is read from memory once, by whole 16x16 tiles, for all heads of the group,
// so DIFF V2 (twice the query heads per KV head) costs the same memory traffic as standard attention.
//
// A partial last block is staged through workgroup memory with zeros past the visible keys, so
// nothing past the end is ever read and no garbage reaches a product.
//
// Cooperative operations and subgroup barriers run per subgroup; naga's uniformity analysis treats
// subgroup_id as divergent, hence the diagnostic filter below: every branch around them depends only
// on the workgroup, the uniforms and the subgroup id, so each subgroup stays converged. The softmax
// pairs lanes by shuffles, so the host takes this path only with fixed 32-wide subgroups (NVIDIA).
//
// Layouts as decode_split.wgsl: q (N, q_heads, d) f32; k, v (S, kv_heads, d) f16;
// part_o (N, q_heads, n_chunks, d) f32; part_ml (N, q_heads, n_chunks) as (max, sum);
// lam (N, out_heads) raw logits; out (N, out_heads, d) f32.

enable f16;
enable wgpu_cooperative_matrix;
diagnostic(off, derivative_uniformity);

// Specialisation constants (the host replaces these defaults).
const HEAD_DIM: u32 = 64u;
const WG: u32 = 128u;
// 16-key tiles per subgroup block: 1 or 2.
const BLOCKS: u32 = 1u;
// Measurement only (always 0 in use): bits that leave stages out, to time what each costs.
// 1: K/V loads, 2: softmax, 4: products, 8: the loop's subgroup barriers, 16: the rescale check;
// 32 reloads the query tiles from workgroup memory for every block instead of holding them.
const PROFILE: u32 = 0u;

const LANES: u32 = 32u;
const NSG: u32 = WG / LANES;
const TILE: u32 = 16u;
const ROWS: u32 = 16u;
const DC: u32 = HEAD_DIM / TILE;
// Keys per subgroup block.
const KB: u32 = TILE * BLOCKS;
// How far a block's maximum may exceed the running maximum before the output is rescaled.
const THRESHOLD: f32 = 8.0;
// Row strides in workgroup memory, padded so that the rows one matrix access touches fall in
// different banks; every row starts on 16 bytes.
const Q_STRIDE: u32 = HEAD_DIM + 8u;
const S_STRIDE: u32 = KB + 4u;
const P_STRIDE: u32 = KB + 8u;
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
@group(0) @binding(2) var<storage, read> k: array<f16>;
@group(0) @binding(3) var<storage, read> v: array<f16>;
@group(0) @binding(4) var<storage, read_write> part_o: array<f32>;
@group(0) @binding(5) var<storage, read_write> part_ml: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read> lam: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

// Pre-scaled queries, row-major (ROWS x HEAD_DIM).
var<workgroup> w_q: array<f16, ROWS * Q_STRIDE>;
// Per subgroup: a block's scores (ROWS x KB); also where an output tile is rescaled or merged.
var<workgroup> w_s: array<f32, NSG * ROWS * S_STRIDE>;
// Per subgroup: a block's probabilities (ROWS x KB).
var<workgroup> w_p: array<f16, NSG * ROWS * P_STRIDE>;
// The partial last block: its K rows, then its V rows, zero past the visible keys. Only the one
// subgroup that owns that block uses it.
var<workgroup> w_tail: array<f16, 2u * KB * HEAD_DIM>;
// Per subgroup and row: the running (max, sum) at the end.
var<workgroup> w_ml: array<vec2<f32>, NSG * ROWS>;

// Copies keys key0 .. key0 + count (count < KB) of one KV head into w_tail, zero-padded.
fn stage_tail(key0: u32, count: u32, kv_head: u32, lane: u32) {
    for (var e = lane; e < KB * HEAD_DIM; e += LANES) {
        let j = e / HEAD_DIM;
        var kx = f16(0.0);
        var vx = f16(0.0);
        if j < count {
            let i = ((key0 + j) * p.kv_heads + kv_head) * HEAD_DIM + e % HEAD_DIM;
            kx = k[i];
            vx = v[i];
        }
        w_tail[e] = kx;
        w_tail[KB * HEAD_DIM + e] = vx;
    }
}

// Column block `dc` of K^T for tile `t` of a block as the (HEAD_DIM x keys) operand: column j is
// key j's row. `base` is the tile's first element in the cache.
fn load_k(base: u32, t: u32, dc: u32, stride: u32, tail: bool) -> coop_mat16x16<f16, B> {
    if (PROFILE & 1u) != 0u {
        return coop_mat16x16<f16, B>();
    }
    if tail {
        let at = t * TILE * HEAD_DIM + dc * TILE;
        let ts = HEAD_DIM;
        return coopLoad<coop_mat16x16<f16, B>>(&w_tail[at], ts);
    }
    let at = base + dc * TILE;
    return coopLoad<coop_mat16x16<f16, B>>(&k[at], stride);
}

// Column block `dc` of V for tile `t` of a block as the (keys x 16) operand: row i is key i's row.
fn load_v(base: u32, t: u32, dc: u32, stride: u32, tail: bool) -> coop_mat16x16<f16, B> {
    if (PROFILE & 1u) != 0u {
        return coop_mat16x16<f16, B>();
    }
    if tail {
        let at = (KB + t * TILE) * HEAD_DIM + dc * TILE;
        let ts = HEAD_DIM;
        return coopLoadT<coop_mat16x16<f16, B>>(&w_tail[at], ts);
    }
    let at = base + dc * TILE;
    return coopLoadT<coop_mat16x16<f16, B>>(&v[at], stride);
}

// Column block `dc` of the pre-scaled queries as the (heads x HEAD_DIM) operand.
fn load_q(dc: u32) -> coop_mat16x16<f16, A> {
    let at = dc * TILE;
    let qs = Q_STRIDE;
    return coopLoadT<coop_mat16x16<f16, A>>(&w_q[at], qs);
}

// A query tile: the one held in registers, or (measurement) reloaded from workgroup memory.
fn q_tile(dc: u32, held: coop_mat16x16<f16, A>) -> coop_mat16x16<f16, A> {
    if (PROFILE & 32u) != 0u {
        return load_q(dc);
    }
    return held;
}

// Multiplies row r of an output tile by its lane's factor, through the subgroup's score corner
// (lanes 2r and 2r + 1 hold row r's factor; each scales half the row).
fn rescale(o: coop_mat16x16<f32, C>, alpha: f32, corner: u32, lane: u32) -> coop_mat16x16<f32, C> {
    let ss = S_STRIDE;
    coopStoreT(o, &w_s[corner], ss);
    subgroupBarrier();
    let at = corner + (lane / 2u) * S_STRIDE + (lane % 2u) * 8u;
    for (var j = 0u; j < 8u; j++) {
        w_s[at + j] *= alpha;
    }
    subgroupBarrier();
    let scaled = coopLoadT<coop_mat16x16<f32, C>>(&w_s[corner], ss);
    subgroupBarrier();
    return scaled;
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// Merges the subgroups' output tile `dc` (already in their score corners, their (max, sum) in
// w_ml) and writes it: the chunk's partial, or with `direct` the final output.
fn merge_tile(dc: u32, lid: u32, n: u32, first_head: u32, n_heads: u32, chunk: u32) {
    let col = dc * TILE;
    if p.direct != 0u && p.diff != 0u {
        // Output head i pairs query heads 2i and 2i + 1, both rows of this tile.
        for (var e = lid; e < ROWS / 2u * TILE; e += WG) {
            let i = e / TILE;
            let c = e % TILE;
            if 2u * i < n_heads {
                let a = merged_value(2u * i, c);
                let b = merged_value(2u * i + 1u, c);
                let oh = first_head / 2u + i;
                let row = n * p.out_heads + oh;
                out[row * HEAD_DIM + col + c] = a.x / a.y - sigmoid(lam[row]) * (b.x / b.y);
            }
        }
        return;
    }
    for (var e = lid; e < ROWS * TILE; e += WG) {
        let r = e / TILE;
        let c = e % TILE;
        if r < n_heads {
            let m = merged_value(r, c);
            let qh = n * p.q_heads + first_head + r;
            if p.direct != 0u {
                out[qh * HEAD_DIM + col + c] = m.x / m.y;
            } else {
                part_o[(qh * p.n_chunks + chunk) * HEAD_DIM + col + c] = m.x;
            }
        }
    }
}

// Row r, column c of the merged output tile: (output relative to the row's merged max, sum).
fn merged_value(r: u32, c: u32) -> vec2<f32> {
    var m = NEG_BIG;
    for (var s = 0u; s < NSG; s++) {
        m = max(m, w_ml[s * ROWS + r].x);
    }
    var o = 0.0;
    var l = 0.0;
    for (var s = 0u; s < NSG; s++) {
        let ml = w_ml[s * ROWS + r];
        let w = exp(ml.x - m);
        o += w * w_s[s * ROWS * S_STRIDE + r * S_STRIDE + c];
        l += w * ml.y;
    }
    return vec2<f32>(o, l);
}

// The merged (max, sum) of row r.
fn merged_ml(r: u32) -> vec2<f32> {
    var m = NEG_BIG;
    for (var s = 0u; s < NSG; s++) {
        m = max(m, w_ml[s * ROWS + r].x);
    }
    var l = 0.0;
    for (var s = 0u; s < NSG; s++) {
        let ml = w_ml[s * ROWS + r];
        l += exp(ml.x - m) * ml.y;
    }
    return vec2<f32>(m, l);
}

// Stores output tile `dc` to the subgroup's corner, then merges and writes it (all subgroups).
fn finish_tile(
    o: coop_mat16x16<f32, C>,
    dc: u32,
    corner: u32,
    lid: u32,
    n: u32,
    first_head: u32,
    n_heads: u32,
    chunk: u32,
) {
    let ss = S_STRIDE;
    coopStoreT(o, &w_s[corner], ss);
    workgroupBarrier();
    merge_tile(dc, lid, n, first_head, n_heads, chunk);
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
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
    let n_blocks = (visible_end + KB - 1u) / KB;

    for (var e = lid; e < ROWS * HEAD_DIM; e += WG) {
        let r = e / HEAD_DIM;
        var x = 0.0;
        if r < n_heads {
            x = q[(n * p.q_heads + first_head + r) * HEAD_DIM + e % HEAD_DIM] * p.scale;
        }
        w_q[r * Q_STRIDE + e % HEAD_DIM] = f16(x);
    }
    workgroupBarrier();
    var q0 = coop_mat16x16<f16, A>();
    var q1 = coop_mat16x16<f16, A>();
    var q2 = coop_mat16x16<f16, A>();
    var q3 = coop_mat16x16<f16, A>();
    var q4 = coop_mat16x16<f16, A>();
    var q5 = coop_mat16x16<f16, A>();
    var q6 = coop_mat16x16<f16, A>();
    var q7 = coop_mat16x16<f16, A>();
    let held = (PROFILE & 32u) == 0u;
    if held { q0 = load_q(0u); }
    if DC > 1u && held { q1 = load_q(1u); }
    if DC > 2u && held { q2 = load_q(2u); }
    if DC > 3u && held { q3 = load_q(3u); }
    if DC > 4u && held { q4 = load_q(4u); }
    if DC > 5u && held { q5 = load_q(5u); }
    if DC > 6u && held { q6 = load_q(6u); }
    if DC > 7u && held { q7 = load_q(7u); }

    // The running output, one 16x16 tile per 16 columns.
    var o0 = coop_mat16x16<f32, C>();
    var o1 = coop_mat16x16<f32, C>();
    var o2 = coop_mat16x16<f32, C>();
    var o3 = coop_mat16x16<f32, C>();
    var o4 = coop_mat16x16<f32, C>();
    var o5 = coop_mat16x16<f32, C>();
    var o6 = coop_mat16x16<f32, C>();
    var o7 = coop_mat16x16<f32, C>();
    // This lane's softmax row and half of it; both lanes of a row hold the row's statistics.
    let r = lane / 2u;
    let half = lane % 2u;
    var m_run = NEG_BIG;
    var l_run = 0.0;
    let corner = sg * ROWS * S_STRIDE;
    let p_corner = sg * ROWS * P_STRIDE;
    let ks = p.kv_heads * HEAD_DIM;
    let stride = p.n_chunks * NSG;

    for (var b = chunk * NSG + sg; b < n_blocks; b += stride) {
        let key0 = b * KB;
        let tail = key0 + KB > visible_end;
        if tail {
            stage_tail(key0, visible_end - key0, kv_head, lane);
        }
        subgroupBarrier();
        let base = (key0 * p.kv_heads + kv_head) * HEAD_DIM;
        let base1 = base + TILE * ks;
        var k00 = coop_mat16x16<f16, B>();
        var k01 = coop_mat16x16<f16, B>();
        var k02 = coop_mat16x16<f16, B>();
        var k03 = coop_mat16x16<f16, B>();
        var k04 = coop_mat16x16<f16, B>();
        var k05 = coop_mat16x16<f16, B>();
        var k06 = coop_mat16x16<f16, B>();
        var k07 = coop_mat16x16<f16, B>();
        var k10 = coop_mat16x16<f16, B>();
        var k11 = coop_mat16x16<f16, B>();
        var k12 = coop_mat16x16<f16, B>();
        var k13 = coop_mat16x16<f16, B>();
        var k14 = coop_mat16x16<f16, B>();
        var k15 = coop_mat16x16<f16, B>();
        var k16 = coop_mat16x16<f16, B>();
        var k17 = coop_mat16x16<f16, B>();
        var v00 = coop_mat16x16<f16, B>();
        var v01 = coop_mat16x16<f16, B>();
        var v02 = coop_mat16x16<f16, B>();
        var v03 = coop_mat16x16<f16, B>();
        var v04 = coop_mat16x16<f16, B>();
        var v05 = coop_mat16x16<f16, B>();
        var v06 = coop_mat16x16<f16, B>();
        var v07 = coop_mat16x16<f16, B>();
        var v10 = coop_mat16x16<f16, B>();
        var v11 = coop_mat16x16<f16, B>();
        var v12 = coop_mat16x16<f16, B>();
        var v13 = coop_mat16x16<f16, B>();
        var v14 = coop_mat16x16<f16, B>();
        var v15 = coop_mat16x16<f16, B>();
        var v16 = coop_mat16x16<f16, B>();
        var v17 = coop_mat16x16<f16, B>();
        // All of a block's loads are issued before the first product needs one. The two branches
        // differ only in where the tiles come from, and stay spelled out: a single list of loads
        // choosing its source per load (a branch inside each) ran twice as slow on the H200.
        if tail {
            k00 = load_k(base, 0u, 0u, ks, true);
            if DC > 1u { k01 = load_k(base, 0u, 1u, ks, true); }
            if DC > 2u { k02 = load_k(base, 0u, 2u, ks, true); }
            if DC > 3u { k03 = load_k(base, 0u, 3u, ks, true); }
            if DC > 4u { k04 = load_k(base, 0u, 4u, ks, true); }
            if DC > 5u { k05 = load_k(base, 0u, 5u, ks, true); }
            if DC > 6u { k06 = load_k(base, 0u, 6u, ks, true); }
            if DC > 7u { k07 = load_k(base, 0u, 7u, ks, true); }
            if BLOCKS > 1u { k10 = load_k(base1, 1u, 0u, ks, true); }
            if DC > 1u && BLOCKS > 1u { k11 = load_k(base1, 1u, 1u, ks, true); }
            if DC > 2u && BLOCKS > 1u { k12 = load_k(base1, 1u, 2u, ks, true); }
            if DC > 3u && BLOCKS > 1u { k13 = load_k(base1, 1u, 3u, ks, true); }
            if DC > 4u && BLOCKS > 1u { k14 = load_k(base1, 1u, 4u, ks, true); }
            if DC > 5u && BLOCKS > 1u { k15 = load_k(base1, 1u, 5u, ks, true); }
            if DC > 6u && BLOCKS > 1u { k16 = load_k(base1, 1u, 6u, ks, true); }
            if DC > 7u && BLOCKS > 1u { k17 = load_k(base1, 1u, 7u, ks, true); }
            v00 = load_v(base, 0u, 0u, ks, true);
            if DC > 1u { v01 = load_v(base, 0u, 1u, ks, true); }
            if DC > 2u { v02 = load_v(base, 0u, 2u, ks, true); }
            if DC > 3u { v03 = load_v(base, 0u, 3u, ks, true); }
            if DC > 4u { v04 = load_v(base, 0u, 4u, ks, true); }
            if DC > 5u { v05 = load_v(base, 0u, 5u, ks, true); }
            if DC > 6u { v06 = load_v(base, 0u, 6u, ks, true); }
            if DC > 7u { v07 = load_v(base, 0u, 7u, ks, true); }
            if BLOCKS > 1u { v10 = load_v(base1, 1u, 0u, ks, true); }
            if DC > 1u && BLOCKS > 1u { v11 = load_v(base1, 1u, 1u, ks, true); }
            if DC > 2u && BLOCKS > 1u { v12 = load_v(base1, 1u, 2u, ks, true); }
            if DC > 3u && BLOCKS > 1u { v13 = load_v(base1, 1u, 3u, ks, true); }
            if DC > 4u && BLOCKS > 1u { v14 = load_v(base1, 1u, 4u, ks, true); }
            if DC > 5u && BLOCKS > 1u { v15 = load_v(base1, 1u, 5u, ks, true); }
            if DC > 6u && BLOCKS > 1u { v16 = load_v(base1, 1u, 6u, ks, true); }
            if DC > 7u && BLOCKS > 1u { v17 = load_v(base1, 1u, 7u, ks, true); }
        } else {
            k00 = load_k(base, 0u, 0u, ks, false);
            if DC > 1u { k01 = load_k(base, 0u, 1u, ks, false); }
            if DC > 2u { k02 = load_k(base, 0u, 2u, ks, false); }
            if DC > 3u { k03 = load_k(base, 0u, 3u, ks, false); }
            if DC > 4u { k04 = load_k(base, 0u, 4u, ks, false); }
            if DC > 5u { k05 = load_k(base, 0u, 5u, ks, false); }
            if DC > 6u { k06 = load_k(base, 0u, 6u, ks, false); }
            if DC > 7u { k07 = load_k(base, 0u, 7u, ks, false); }
            if BLOCKS > 1u { k10 = load_k(base1, 1u, 0u, ks, false); }
            if DC > 1u && BLOCKS > 1u { k11 = load_k(base1, 1u, 1u, ks, false); }
            if DC > 2u && BLOCKS > 1u { k12 = load_k(base1, 1u, 2u, ks, false); }
            if DC > 3u && BLOCKS > 1u { k13 = load_k(base1, 1u, 3u, ks, false); }
            if DC > 4u && BLOCKS > 1u { k14 = load_k(base1, 1u, 4u, ks, false); }
            if DC > 5u && BLOCKS > 1u { k15 = load_k(base1, 1u, 5u, ks, false); }
            if DC > 6u && BLOCKS > 1u { k16 = load_k(base1, 1u, 6u, ks, false); }
            if DC > 7u && BLOCKS > 1u { k17 = load_k(base1, 1u, 7u, ks, false); }
            v00 = load_v(base, 0u, 0u, ks, false);
            if DC > 1u { v01 = load_v(base, 0u, 1u, ks, false); }
            if DC > 2u { v02 = load_v(base, 0u, 2u, ks, false); }
            if DC > 3u { v03 = load_v(base, 0u, 3u, ks, false); }
            if DC > 4u { v04 = load_v(base, 0u, 4u, ks, false); }
            if DC > 5u { v05 = load_v(base, 0u, 5u, ks, false); }
            if DC > 6u { v06 = load_v(base, 0u, 6u, ks, false); }
            if DC > 7u { v07 = load_v(base, 0u, 7u, ks, false); }
            if BLOCKS > 1u { v10 = load_v(base1, 1u, 0u, ks, false); }
            if DC > 1u && BLOCKS > 1u { v11 = load_v(base1, 1u, 1u, ks, false); }
            if DC > 2u && BLOCKS > 1u { v12 = load_v(base1, 1u, 2u, ks, false); }
            if DC > 3u && BLOCKS > 1u { v13 = load_v(base1, 1u, 3u, ks, false); }
            if DC > 4u && BLOCKS > 1u { v14 = load_v(base1, 1u, 4u, ks, false); }
            if DC > 5u && BLOCKS > 1u { v15 = load_v(base1, 1u, 5u, ks, false); }
            if DC > 6u && BLOCKS > 1u { v16 = load_v(base1, 1u, 6u, ks, false); }
            if DC > 7u && BLOCKS > 1u { v17 = load_v(base1, 1u, 7u, ks, false); }
        }

        var s0 = coop_mat16x16<f32, C>();
        if (PROFILE & 4u) == 0u { s0 = coopMultiplyAdd(q_tile(0u, q0), k00, s0); }
        if DC > 1u && (PROFILE & 4u) == 0u { s0 = coopMultiplyAdd(q_tile(1u, q1), k01, s0); }
        if DC > 2u && (PROFILE & 4u) == 0u { s0 = coopMultiplyAdd(q_tile(2u, q2), k02, s0); }
        if DC > 3u && (PROFILE & 4u) == 0u { s0 = coopMultiplyAdd(q_tile(3u, q3), k03, s0); }
        if DC > 4u && (PROFILE & 4u) == 0u { s0 = coopMultiplyAdd(q_tile(4u, q4), k04, s0); }
        if DC > 5u && (PROFILE & 4u) == 0u { s0 = coopMultiplyAdd(q_tile(5u, q5), k05, s0); }
        if DC > 6u && (PROFILE & 4u) == 0u { s0 = coopMultiplyAdd(q_tile(6u, q6), k06, s0); }
        if DC > 7u && (PROFILE & 4u) == 0u { s0 = coopMultiplyAdd(q_tile(7u, q7), k07, s0); }
        var s1 = coop_mat16x16<f32, C>();
        if BLOCKS > 1u && (PROFILE & 4u) == 0u { s1 = coopMultiplyAdd(q_tile(0u, q0), k10, s1); }
        if BLOCKS > 1u && DC > 1u && (PROFILE & 4u) == 0u { s1 = coopMultiplyAdd(q_tile(1u, q1), k11, s1); }
        if BLOCKS > 1u && DC > 2u && (PROFILE & 4u) == 0u { s1 = coopMultiplyAdd(q_tile(2u, q2), k12, s1); }
        if BLOCKS > 1u && DC > 3u && (PROFILE & 4u) == 0u { s1 = coopMultiplyAdd(q_tile(3u, q3), k13, s1); }
        if BLOCKS > 1u && DC > 4u && (PROFILE & 4u) == 0u { s1 = coopMultiplyAdd(q_tile(4u, q4), k14, s1); }
        if BLOCKS > 1u && DC > 5u && (PROFILE & 4u) == 0u { s1 = coopMultiplyAdd(q_tile(5u, q5), k15, s1); }
        if BLOCKS > 1u && DC > 6u && (PROFILE & 4u) == 0u { s1 = coopMultiplyAdd(q_tile(6u, q6), k16, s1); }
        if BLOCKS > 1u && DC > 7u && (PROFILE & 4u) == 0u { s1 = coopMultiplyAdd(q_tile(7u, q7), k17, s1); }
        let ss = S_STRIDE;
        if (PROFILE & 2u) == 0u {
            coopStoreT(s0, &w_s[corner], ss);
            if BLOCKS > 1u {
                let at1 = corner + TILE;
                coopStoreT(s1, &w_s[at1], ss);
            }
        }
        if (PROFILE & 8u) == 0u {
            subgroupBarrier();
        }

        // Lane 2r + half takes columns t * 16 + half * 8 .. + 8 of row r, for each tile t.
        var x: array<f32, 16>;
        var bm = NEG_BIG;
        // Selects, not branches, below: lanes that branched apart might run the matrix
        // operations after them unconverged (and measurably slower).
        for (var j = 0u; j < 8u * BLOCKS * u32((PROFILE & 2u) == 0u); j++) {
            let col = (j / 8u) * TILE + half * 8u + j % 8u;
            let visible = key0 + col < visible_end;
            let sj = select(NEG_BIG, w_s[corner + r * S_STRIDE + col], visible);
            x[j] = sj;
            bm = max(bm, sj);
        }
        bm = max(bm, subgroupShuffleXor(bm, 1u));
        let grows = bm > m_run + THRESHOLD;
        let m_new = select(m_run, bm, grows);
        let alpha = exp(m_run - m_new);
        // The first block of a subgroup finds every row growing and an output still zero.
        if (PROFILE & 16u) == 0u && subgroupAny(grows) && m_run > NEG_BIG {
            subgroupBarrier();
            o0 = rescale(o0, alpha, corner, lane);
            if DC > 1u { o1 = rescale(o1, alpha, corner, lane); }
            if DC > 2u { o2 = rescale(o2, alpha, corner, lane); }
            if DC > 3u { o3 = rescale(o3, alpha, corner, lane); }
            if DC > 4u { o4 = rescale(o4, alpha, corner, lane); }
            if DC > 5u { o5 = rescale(o5, alpha, corner, lane); }
            if DC > 6u { o6 = rescale(o6, alpha, corner, lane); }
            if DC > 7u { o7 = rescale(o7, alpha, corner, lane); }
        }
        var tsum = 0.0;
        for (var j = 0u; j < 8u * BLOCKS * u32((PROFILE & 2u) == 0u); j++) {
            let col = (j / 8u) * TILE + half * 8u + j % 8u;
            let e = f16(exp(x[j] - m_new));
            w_p[p_corner + r * P_STRIDE + col] = e;
            // The sum takes the rounded weights, so that it normalises exactly what P V sums.
            tsum += f32(e);
        }
        l_run = l_run * alpha + tsum + subgroupShuffleXor(tsum, 1u);
        m_run = m_new;
        if (PROFILE & 8u) == 0u {
            subgroupBarrier();
        }

        let ps = P_STRIDE;
        var pa0 = coop_mat16x16<f16, A>();
        var pa1 = coop_mat16x16<f16, A>();
        if (PROFILE & 2u) == 0u {
            pa0 = coopLoadT<coop_mat16x16<f16, A>>(&w_p[p_corner], ps);
            if BLOCKS > 1u {
                let at1 = p_corner + TILE;
                pa1 = coopLoadT<coop_mat16x16<f16, A>>(&w_p[at1], ps);
            }
        }
        if (PROFILE & 4u) == 0u { o0 = coopMultiplyAdd(pa0, v00, o0); }
        if DC > 1u && (PROFILE & 4u) == 0u { o1 = coopMultiplyAdd(pa0, v01, o1); }
        if DC > 2u && (PROFILE & 4u) == 0u { o2 = coopMultiplyAdd(pa0, v02, o2); }
        if DC > 3u && (PROFILE & 4u) == 0u { o3 = coopMultiplyAdd(pa0, v03, o3); }
        if DC > 4u && (PROFILE & 4u) == 0u { o4 = coopMultiplyAdd(pa0, v04, o4); }
        if DC > 5u && (PROFILE & 4u) == 0u { o5 = coopMultiplyAdd(pa0, v05, o5); }
        if DC > 6u && (PROFILE & 4u) == 0u { o6 = coopMultiplyAdd(pa0, v06, o6); }
        if DC > 7u && (PROFILE & 4u) == 0u { o7 = coopMultiplyAdd(pa0, v07, o7); }
        if BLOCKS > 1u && (PROFILE & 4u) == 0u { o0 = coopMultiplyAdd(pa1, v10, o0); }
        if BLOCKS > 1u && DC > 1u && (PROFILE & 4u) == 0u { o1 = coopMultiplyAdd(pa1, v11, o1); }
        if BLOCKS > 1u && DC > 2u && (PROFILE & 4u) == 0u { o2 = coopMultiplyAdd(pa1, v12, o2); }
        if BLOCKS > 1u && DC > 3u && (PROFILE & 4u) == 0u { o3 = coopMultiplyAdd(pa1, v13, o3); }
        if BLOCKS > 1u && DC > 4u && (PROFILE & 4u) == 0u { o4 = coopMultiplyAdd(pa1, v14, o4); }
        if BLOCKS > 1u && DC > 5u && (PROFILE & 4u) == 0u { o5 = coopMultiplyAdd(pa1, v15, o5); }
        if BLOCKS > 1u && DC > 6u && (PROFILE & 4u) == 0u { o6 = coopMultiplyAdd(pa1, v16, o6); }
        if BLOCKS > 1u && DC > 7u && (PROFILE & 4u) == 0u { o7 = coopMultiplyAdd(pa1, v17, o7); }
        // The next block overwrites this subgroup's corners and possibly the tail.
        if (PROFILE & 8u) == 0u {
            subgroupBarrier();
        }
    }

    if half == 0u {
        w_ml[sg * ROWS + r] = vec2<f32>(m_run, l_run);
    }
    finish_tile(o0, 0u, corner, lid, n, first_head, n_heads, chunk);
    if DC > 1u { finish_tile(o1, 1u, corner, lid, n, first_head, n_heads, chunk); }
    if DC > 2u { finish_tile(o2, 2u, corner, lid, n, first_head, n_heads, chunk); }
    if DC > 3u { finish_tile(o3, 3u, corner, lid, n, first_head, n_heads, chunk); }
    if DC > 4u { finish_tile(o4, 4u, corner, lid, n, first_head, n_heads, chunk); }
    if DC > 5u { finish_tile(o5, 5u, corner, lid, n, first_head, n_heads, chunk); }
    if DC > 6u { finish_tile(o6, 6u, corner, lid, n, first_head, n_heads, chunk); }
    if DC > 7u { finish_tile(o7, 7u, corner, lid, n, first_head, n_heads, chunk); }
    if p.direct == 0u && lid < n_heads {
        part_ml[(n * p.q_heads + first_head + lid) * p.n_chunks + chunk] = merged_ml(lid);
    }
}
