// Split-KV attention for one or a few query tokens over a long KV cache (flash decoding).
//
// The KV sequence is cut into chunks of CHUNK positions; one workgroup takes one chunk, one query
// token and up to MAX_GW query heads of one GQA group, so every K/V row it reads serves all those
// heads. It writes a partial per (token, head, chunk): the unnormalised output and (max, sum), which
// diff_combine.wgsl merges across chunks. Decoding is bound by reading the cache, so the kernel
// reads each K and V element of its chunk once, in 16-byte loads.
//
// Layouts as in flash_attn.wgsl.

// Specialisation constants (the host replaces these defaults).
const HEAD_DIM: u32 = 64u;
const KV_F16: bool = false;
const MAX_GW: u32 = 8u;

// One position per invocation in the score phase.
const CHUNK: u32 = 128u;
const WG: u32 = 128u;
const D4: u32 = HEAD_DIM / 4u;
// Invocations that share one output column in the value phase, each over every SPLITS-th position.
const SPLITS: u32 = max(1u, WG / D4);
const STEPS: u32 = (CHUNK + SPLITS - 1u) / SPLITS;
// Lanes per head in the reductions over the chunk.
const LANES: u32 = WG / MAX_GW;
const PER_LANE: u32 = CHUNK / LANES;
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

var<workgroup> w_q: array<vec4<f32>, MAX_GW * D4>;
// Scores, then (in place) unnormalised probabilities, head-major.
var<workgroup> w_p: array<f32, MAX_GW * CHUNK>;
var<workgroup> w_red: array<f32, WG>;
var<workgroup> w_ml: array<vec2<f32>, MAX_GW>;
var<workgroup> w_sum: array<vec4<f32>, WG>;

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

// Tree reduction over the LANES lanes of each head's slice of w_red; op 0 = max, 1 = sum.
fn reduce_lanes(lid: u32, lane: u32, op: u32) {
    for (var off = LANES / 2u; off > 0u; off /= 2u) {
        workgroupBarrier();
        if lane < off {
            let a = w_red[lid];
            let b = w_red[lid + off];
            w_red[lid] = select(a + b, max(a, b), op == 0u);
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = wg.x;
    let kv_head = wg.y / p.head_splits;
    let split = wg.y % p.head_splits;
    let n = wg.z;
    let first_head = kv_head * p.group + split * p.heads_per_wg;
    let n_heads = min(p.heads_per_wg, p.group - split * p.heads_per_wg);
    let start = chunk * CHUNK;
    var visible_end = p.seq_len;
    if p.causal != 0u {
        visible_end = min(p.seq_len, p.past_len + n + 1u);
    }

    // Query vectors of this workgroup's heads, pre-scaled.
    for (var e = lid; e < MAX_GW * D4; e += WG) {
        let g = e / D4;
        if g < n_heads {
            w_q[e] = q[(n * p.q_heads + first_head + g) * D4 + e % D4] * p.scale;
        }
    }
    workgroupBarrier();

    // Scores: one position per invocation, its K row read once for all heads.
    let pos = start + lid;
    var dots: array<f32, MAX_GW>;
    for (var g = 0u; g < MAX_GW; g++) {
        dots[g] = NEG_BIG;
    }
    if pos < visible_end {
        var acc: array<vec4<f32>, MAX_GW>;
        let row = pos * p.kv_heads + kv_head;
        for (var c = 0u; c < D4; c++) {
            let kc = load_k(row, c);
            for (var g = 0u; g < MAX_GW; g++) {
                if g < n_heads {
                    acc[g] += w_q[g * D4 + c] * kc;
                }
            }
        }
        for (var g = 0u; g < MAX_GW; g++) {
            if g < n_heads {
                dots[g] = acc[g].x + acc[g].y + acc[g].z + acc[g].w;
            }
        }
    }
    for (var g = 0u; g < MAX_GW; g++) {
        w_p[g * CHUNK + lid] = dots[g];
    }
    workgroupBarrier();

    // Per-head max and sum of exponentials over the chunk: LANES invocations per head.
    let head = lid / LANES;
    let lane = lid % LANES;
    let first = head * CHUNK + lane * PER_LANE;
    var local_max = NEG_BIG;
    for (var i = 0u; i < PER_LANE; i++) {
        local_max = max(local_max, w_p[first + i]);
    }
    w_red[lid] = local_max;
    reduce_lanes(lid, lane, 0u);
    let m = w_red[head * LANES];
    workgroupBarrier();
    var local_sum = 0.0;
    for (var i = 0u; i < PER_LANE; i++) {
        let s = w_p[first + i];
        var e = 0.0;
        if s > NEG_BIG {
            e = exp(s - m);
        }
        w_p[first + i] = e;
        local_sum += e;
    }
    w_red[lid] = local_sum;
    reduce_lanes(lid, lane, 1u);
    if lane == 0u {
        w_ml[head] = vec2<f32>(m, w_red[lid]);
    }
    workgroupBarrier();

    // Values: SPLITS invocations per output column, each over every SPLITS-th position.
    let col = lid % D4;
    let part = lid / D4;
    let working = part < SPLITS;
    var out: array<vec4<f32>, MAX_GW>;
    if working {
        // A constant trip count lets the compiler unroll and keep several V loads in flight.
        for (var t = 0u; t < STEPS; t++) {
            let j = part + t * SPLITS;
            let pj = start + j;
            if j < CHUNK && pj < visible_end {
                let vv = load_v(pj * p.kv_heads + kv_head, col);
                for (var g = 0u; g < MAX_GW; g++) {
                    out[g] += w_p[g * CHUNK + j] * vv;
                }
            }
        }
    }
    for (var g = 0u; g < MAX_GW; g++) {
        if g < n_heads {
            w_sum[lid] = select(vec4<f32>(0.0), out[g], working);
            workgroupBarrier();
            if part == 0u {
                var total = w_sum[lid];
                for (var s = 1u; s < SPLITS; s++) {
                    total += w_sum[s * D4 + col];
                }
                let row = (n * p.q_heads + first_head + g) * p.n_chunks + chunk;
                part_o[row * D4 + col] = total;
                if col == 0u {
                    part_ml[row] = w_ml[g];
                }
            }
            workgroupBarrier();
        }
    }
}
