// y = x W^T (+ y): the linear layers. x (rows, K) f32, W (N, K) row-major as stored in the
// safetensors file, y (rows, N) f32. With `accumulate` the product is added to y, which fuses the
// residual connections of o_proj and down_proj into their matmuls.
//
// Weights are bound as array<vec4<u32>> whatever their type, so every load is 16 bytes:
// f32 weights give 4 values per load, f16 and bf16 weights (two halves per u32, low half first, as
// they lie in the file) give 8. 16-bit weights are widened in the shader: unpack2x16float is core
// WGSL (no SHADER_F16 needed) and bf16 is the top half of an f32, so a shift widens it.
// K must be a multiple of 8 (the host checks it).
//
// Two entry points: `matvec` for one token (decode: memory-bound, 16 lanes per output row),
// `gemm` for many (prefill: 64x64 output tiles staged through workgroup memory).

// Specialisation constants (the host replaces these defaults).
// 0 = f32, 1 = f16, 2 = bf16.
const WEIGHT_DTYPE: u32 = 0u;
// Lanes that share one output row in `matvec` (a power of two up to 64). Many lanes suit GPUs
// (neighbouring lanes read neighbouring 16-byte words); CPU adapters prefer few lanes and long
// loops, since each barrier of the reduction costs them a context switch.
const LANES: u32 = 16u;

const MV_ROWS: u32 = 64u / LANES;
const TILE: u32 = 64u;
const TK: u32 = 16u;

struct Step {
    n_tokens: u32,
    past_len: u32,
    ids_offset: u32,
    sample_slot: u32,
}

struct Params {
    k: u32,
    n: u32,
    accumulate: u32,
    // Only one row (the last token's, already selected by the final norm).
    last_only: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

struct W8 {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn bf16_pair(u: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(u << 16u), bitcast<f32>(u & 0xffff0000u));
}

// Weights (row, 8*k8 .. 8*k8 + 8).
fn load8(row: u32, k8: u32) -> W8 {
    let e = row * p.k + k8 * 8u;
    if WEIGHT_DTYPE == 0u {
        return W8(bitcast<vec4<f32>>(w[e / 4u]), bitcast<vec4<f32>>(w[e / 4u + 1u]));
    }
    let u = w[e / 8u];
    if WEIGHT_DTYPE == 1u {
        return W8(
            vec4<f32>(unpack2x16float(u.x), unpack2x16float(u.y)),
            vec4<f32>(unpack2x16float(u.z), unpack2x16float(u.w)),
        );
    }
    return W8(vec4<f32>(bf16_pair(u.x), bf16_pair(u.y)), vec4<f32>(bf16_pair(u.z), bf16_pair(u.w)));
}

fn rows() -> u32 {
    if p.last_only != 0u {
        return 1u;
    }
    return step.n_tokens;
}

fn store(t: u32, o: u32, v: f32) {
    let i = t * p.n + o;
    if p.accumulate != 0u {
        y[i] = y[i] + v;
    } else {
        y[i] = v;
    }
}

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn matvec(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let lane = lid % LANES;
    let o = (wid.y * groups.x + wid.x) * MV_ROWS + lid / LANES;
    let valid = o < p.n;
    let k8s = p.k / 8u;
    let n_rows = rows();
    for (var t = 0u; t < n_rows; t++) {
        var acc = 0.0;
        if valid {
            let xrow = t * p.k / 4u;
            for (var k8 = lane; k8 < k8s; k8 += LANES) {
                let wv = load8(o, k8);
                acc += dot(wv.a, x[xrow + 2u * k8]) + dot(wv.b, x[xrow + 2u * k8 + 1u]);
            }
        }
        if LANES == 1u {
            if valid {
                store(t, o, acc);
            }
        } else {
            red[lid] = acc;
            workgroupBarrier();
            for (var s = LANES / 2u; s > 0u; s >>= 1u) {
                if lane < s {
                    red[lid] += red[lid + s];
                }
                workgroupBarrier();
            }
            if valid && lane == 0u {
                store(t, o, red[lid]);
            }
            workgroupBarrier();
        }
    }
}

// Tiles are stored k-major: xs[kk * TILE + row], ws[kk * TILE + col].
var<workgroup> xs: array<f32, 1024>;
var<workgroup> ws: array<f32, 1024>;

@compute @workgroup_size(256)
fn gemm(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let n0 = wid.x * TILE;
    let t0 = wid.y * TILE;
    let n_rows = rows();
    let tx = tid % 16u;
    let ty = tid / 16u;
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        // x tile: 64 rows x 16 k = 256 vec4, one per thread.
        {
            let r = tid / 4u;
            let kq = tid % 4u;
            var v = vec4<f32>(0.0);
            if t0 + r < n_rows && k0 + kq * 4u < p.k {
                v = x[((t0 + r) * p.k + k0) / 4u + kq];
            }
            for (var j = 0u; j < 4u; j++) {
                xs[(kq * 4u + j) * TILE + r] = v[j];
            }
        }
        // W tile: 64 rows x 16 k = 128 groups of 8.
        if tid < 128u {
            let r = tid / 2u;
            let hk = tid % 2u;
            var wv = W8(vec4<f32>(0.0), vec4<f32>(0.0));
            if n0 + r < p.n && k0 + hk * 8u < p.k {
                wv = load8(n0 + r, k0 / 8u + hk);
            }
            for (var j = 0u; j < 4u; j++) {
                ws[(hk * 8u + j) * TILE + r] = wv.a[j];
                ws[(hk * 8u + 4u + j) * TILE + r] = wv.b[j];
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var xv: array<f32, 4>;
            var wv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                xv[i] = xs[kk * TILE + ty + 16u * i];
                wv[i] = ws[kk * TILE + tx + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] += xv[i] * wv[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let t = t0 + ty + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let o = n0 + tx + 16u * j;
            if t < n_rows && o < p.n {
                store(t, o, acc[i][j]);
            }
        }
    }
}

// Many rows without workgroup memory: each invocation computes a 4x4 block (4 tokens x 4 output
// rows) straight from storage. CPU adapters run this much faster than `gemm` (their barriers are
// expensive and their caches do the reuse that the tiles do on a GPU).
@compute @workgroup_size(64)
fn gemm_direct(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = gid.y * groups.x * 64u + gid.x;
    let n_rows = rows();
    let n_blocks = (p.n + 3u) / 4u;
    let t0 = (idx / n_blocks) * 4u;
    let o0 = (idx % n_blocks) * 4u;
    if t0 >= n_rows {
        return;
    }
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }
    let k8s = p.k / 8u;
    for (var k8 = 0u; k8 < k8s; k8++) {
        var wv: array<W8, 4>;
        for (var j = 0u; j < 4u; j++) {
            // Rows past the end repeat the last row; their results are not stored.
            wv[j] = load8(min(o0 + j, p.n - 1u), k8);
        }
        for (var i = 0u; i < 4u; i++) {
            let xrow = min(t0 + i, n_rows - 1u) * p.k / 4u + 2u * k8;
            let xa = x[xrow];
            let xb = x[xrow + 1u];
            for (var j = 0u; j < 4u; j++) {
                acc[i][j] += dot(wv[j].a, xa) + dot(wv[j].b, xb);
            }
        }
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            if t0 + i < n_rows && o0 + j < p.n {
                store(t0 + i, o0 + j, acc[i][j]);
            }
        }
    }
}
