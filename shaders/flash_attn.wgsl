// Tiled online-softmax attention for many query rows (prefill and the general case).
//
// One workgroup owns a block of query positions for a set of query heads that read the same KV
// head (a GQA group: both heads of a DIFF V2 pair always fall in one group), so each K/V tile is
// staged in workgroup memory once and serves every head of the group. Each invocation owns one
// (query position, query head) row: it keeps the query, the running max, the running sum and the
// unnormalised output accumulator in registers, and walks the visible keys tile by tile.
//
// Output is a partial in the format the combine pass (diff_combine.wgsl) merges: the unnormalised
// accumulator plus (max, sum) per row; here always a single chunk per row.
//
// Layouts (token-major): q (N, q_heads, d) f32; k, v (S, kv_heads, d) as f32, or as f16 packed two
// per u32 (low half first); part_o (N, q_heads, n_chunks, d); part_ml (N, q_heads, n_chunks).

// Specialisation constants (the host replaces these defaults).
const HEAD_DIM: u32 = 64u;
const BLOCK_K: u32 = 32u;
const KV_F16: bool = false;
const WG: u32 = 64u;

const D4: u32 = HEAD_DIM / 4u;
// A score no real logit reaches; WGSL has no infinity literal.
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
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> part_o: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> part_ml: array<vec2<f32>>;

var<workgroup> k_tile: array<vec4<f32>, BLOCK_K * D4>;
var<workgroup> v_tile: array<vec4<f32>, BLOCK_K * D4>;

// Four consecutive elements (columns 4*c4 .. 4*c4+3) of K/V row `row` (= position * kv_heads + head).
fn unpack_f16x4(w: vec4<u32>, c4: u32) -> vec4<f32> {
    let h = select(w.xy, w.zw, (c4 & 1u) == 1u);
    return vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y));
}

fn load_k(row: u32, c4: u32) -> vec4<f32> {
    if KV_F16 {
        return unpack_f16x4(k[row * (D4 / 2u) + c4 / 2u], c4);
    }
    return bitcast<vec4<f32>>(k[row * D4 + c4]);
}

fn load_v(row: u32, c4: u32) -> vec4<f32> {
    if KV_F16 {
        return unpack_f16x4(v[row * (D4 / 2u) + c4 / 2u], c4);
    }
    return bitcast<vec4<f32>>(v[row * D4 + c4]);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let kv_head = wg.y / p.head_splits;
    let split = wg.y % p.head_splits;
    let local_head = lid % p.heads_per_wg;
    let local_row = lid / p.heads_per_wg;
    let head_in_group = split * p.heads_per_wg + local_head;
    let qh = kv_head * p.group + head_in_group;
    let n = wg.x * p.rows_per_wg + local_row;
    let row_live = local_row < p.rows_per_wg && head_in_group < p.group && n < p.n_queries;

    // Keys past the last visible one for the workgroup's last query row need no tile at all.
    let last_n = min(p.n_queries, (wg.x + 1u) * p.rows_per_wg) - 1u;
    var kv_end = p.seq_len;
    if p.causal != 0u {
        kv_end = min(p.seq_len, p.past_len + last_n + 1u);
    }
    let q_pos = p.past_len + n;

    var qr: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
    if row_live {
        let base = (n * p.q_heads + qh) * D4;
        for (var c = 0u; c < D4; c++) {
            qr[c] = q[base + c] * p.scale;
            acc[c] = vec4<f32>(0.0);
        }
    }
    var m = NEG_BIG;
    var l = 0.0;

    for (var t0 = 0u; t0 < kv_end; t0 += BLOCK_K) {
        for (var e = lid; e < BLOCK_K * D4; e += WG) {
            let j = e / D4;
            let c = e % D4;
            let pos = t0 + j;
            if pos < p.seq_len {
                let row = pos * p.kv_heads + kv_head;
                k_tile[e] = load_k(row, c);
                v_tile[e] = load_v(row, c);
            } else {
                k_tile[e] = vec4<f32>(0.0);
                v_tile[e] = vec4<f32>(0.0);
            }
        }
        workgroupBarrier();

        if row_live {
            // Only the keys that exist; a runtime bound also keeps shader compilers from unrolling
            // tile x head-dim loop nests into huge bodies (Mesa's GL path stalls on those).
            let tile_len = min(BLOCK_K, kv_end - t0);
            var s: array<f32, BLOCK_K>;
            var m_new = m;
            for (var j = 0u; j < tile_len; j++) {
                let pos = t0 + j;
                var score = NEG_BIG;
                if p.causal == 0u || pos <= q_pos {
                    var dot4 = vec4<f32>(0.0);
                    for (var c = 0u; c < D4; c++) {
                        dot4 += qr[c] * k_tile[j * D4 + c];
                    }
                    score = dot4.x + dot4.y + dot4.z + dot4.w;
                }
                s[j] = score;
                m_new = max(m_new, score);
            }
            // Rescale once per tile, not once per key.
            let alpha = exp(m - m_new);
            l *= alpha;
            for (var c = 0u; c < D4; c++) {
                acc[c] *= alpha;
            }
            for (var j = 0u; j < tile_len; j++) {
                if s[j] > NEG_BIG {
                    let pj = exp(s[j] - m_new);
                    l += pj;
                    for (var c = 0u; c < D4; c++) {
                        acc[c] += pj * v_tile[j * D4 + c];
                    }
                }
            }
            m = m_new;
        }
        workgroupBarrier();
    }

    if row_live {
        let row = n * p.q_heads + qh;
        let base = row * D4;
        for (var c = 0u; c < D4; c++) {
            part_o[base + c] = acc[c];
        }
        part_ml[row] = vec2<f32>(m, l);
    }
}
