// Split-KV decoding for CPU adapters (lavapipe, SwiftShader: the browser's fallback adapter).
//
// A CPU adapter runs a workgroup's invocations a few SIMD lanes at a time and pays for every
// workgroup barrier with a context switch per lane group, so decode_split.wgsl's reduction trees
// cost it more than the arithmetic. Here one invocation takes one query head of one query token
// over one chunk of CHUNK keys, with an online softmax in registers: no workgroup memory and no
// barriers. Neighbouring invocations are neighbouring heads of one chunk, so the heads of a GQA
// group read the same K and V rows while they are in cache. The partials (unnormalised output,
// (max, sum)) are decode_split.wgsl's, merged by diff_combine.wgsl.
//
// Layouts as in flash_attn.wgsl.

// Specialisation constants (the host replaces these defaults).
const HEAD_DIM: u32 = 64u;
const KV_F16: bool = false;
const CHUNK: u32 = 64u;
// Invocations per workgroup: a CPU adapter spreads workgroups over its threads, so few per group
// keep every thread busy on short caches.
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
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> part_o: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> part_ml: array<vec2<f32>>;

// Elements 8j .. 8j + 8 of K/V row `row` (f16 rows hold 8 values per 16-byte word).
fn load8(buf: u32, row: u32, j: u32) -> array<vec4<f32>, 2> {
    if KV_F16 {
        var w: vec4<u32>;
        if buf == 0u {
            w = k[row * (D4 / 2u) + j];
        } else {
            w = v[row * (D4 / 2u) + j];
        }
        return array<vec4<f32>, 2>(
            vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)),
            vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)),
        );
    }
    if buf == 0u {
        return array<vec4<f32>, 2>(
            bitcast<vec4<f32>>(k[row * D4 + 2u * j]),
            bitcast<vec4<f32>>(k[row * D4 + 2u * j + 1u]),
        );
    }
    return array<vec4<f32>, 2>(
        bitcast<vec4<f32>>(v[row * D4 + 2u * j]),
        bitcast<vec4<f32>>(v[row * D4 + 2u * j + 1u]),
    );
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = wg.x * WG + lid;
    let n = wg.z;
    if idx >= p.q_heads * p.n_chunks {
        return;
    }
    let head = idx % p.q_heads;
    let chunk = idx / p.q_heads;
    let kv_head = head / p.group;
    var visible_end = p.seq_len;
    if p.causal != 0u {
        visible_end = min(p.seq_len, p.past_len + n + 1u);
    }
    let start = chunk * CHUNK;
    let end = min(start + CHUNK, visible_end);

    var qv: array<vec4<f32>, D4>;
    var o: array<vec4<f32>, D4>;
    for (var c = 0u; c < D4; c++) {
        qv[c] = q[(n * p.q_heads + head) * D4 + c] * p.scale;
        o[c] = vec4<f32>(0.0);
    }
    var m = NEG_BIG;
    var l = 0.0;
    for (var pos = start; pos < end; pos++) {
        let row = pos * p.kv_heads + kv_head;
        var acc = vec4<f32>(0.0);
        for (var j = 0u; j < D4 / 2u; j++) {
            let kk = load8(0u, row, j);
            acc += qv[2u * j] * kk[0] + qv[2u * j + 1u] * kk[1];
        }
        let s = acc.x + acc.y + acc.z + acc.w;
        // Rescale only when the running max grows: most keys leave it alone.
        if s > m {
            let corr = exp(m - s);
            l *= corr;
            for (var c = 0u; c < D4; c++) {
                o[c] *= corr;
            }
            m = s;
        }
        let e = exp(s - m);
        l += e;
        for (var j = 0u; j < D4 / 2u; j++) {
            let vv = load8(1u, row, j);
            o[2u * j] += e * vv[0];
            o[2u * j + 1u] += e * vv[1];
        }
    }

    let out_row = (n * p.q_heads + head) * p.n_chunks + chunk;
    for (var c = 0u; c < D4; c++) {
        part_o[out_row * D4 + c] = o[c];
    }
    part_ml[out_row] = vec2<f32>(m, l);
}
