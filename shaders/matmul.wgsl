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
// Four entry points: `matvec` for one token on GPUs (decode: memory-bound, 16 lanes per output
// row), `matvec_serial` for one token on CPU adapters, `gemm` for many on GPUs (blocks of TB
// tokens per weight load) and `gemm_direct` for many on CPU adapters.
//
// The one-token kernels can fold in the RMSNorm before them (`norm`): x is then the raw residual
// row and `g` the norm's weights, and y = (x * g) W^T / sqrt(mean(x^2) + eps). The sum of squares
// is gathered in the same loop as the products (each row's lanes read all of x), so the norm costs
// no dispatch and no pass over memory of its own.
//
// They can also apply SwiGLU to the gate/up product (`swiglu`): its rows come interleaved (gate j
// at row 2j, up j at 2j + 1), a pair lands in one workgroup (matvec: LANES <= 32) or one
// invocation (matvec_serial: SERIAL_ROWS even), and y gets silu(gate j) * up j at column j of
// rows n / 2 wide.
//
// Output o of token t goes to y[t * y_stride + y_offset + o]: y_stride = n and y_offset = 0 for
// a product of its own; a fused product whose weights differ in type (q/k/v of a Q4_K_M file)
// runs as one product per run of one type, each writing its columns of the shared rows.

// Specialisation constants (the host replaces these defaults).
// 0 = f32, 1 = f16, 2 = bf16, 3 to 7 = the block types (dequant.wgsl's DQ_ codes).
const WEIGHT_DTYPE: u32 = 0u;
// Lanes that share one output row in `matvec` (a power of two up to 64). Many lanes suit GPUs
// (neighbouring lanes read neighbouring 16-byte words); CPU adapters prefer few lanes and long
// loops, since each barrier of the reduction costs them a context switch.
const LANES: u32 = 16u;

const MV_ROWS: u32 = 64u / LANES;

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
    // Only one row: the last token's (already selected by the final norm unless `norm`).
    last_only: u32,
    // 1: fold the RMSNorm of x with weights `g` and this epsilon into the product.
    norm: u32,
    eps: f32,
    // 1: y = SwiGLU of the interleaved gate/up rows (one-token kernels only).
    swiglu: u32,
    // Where outputs go: y[t * y_stride + y_offset + o].
    y_stride: u32,
    y_offset: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
// The folded norm's weights (K values; a stand-in where `norm` is 0). Only the one-token kernels
// read it.
@group(0) @binding(5) var<storage, read> g: array<vec4<f32>>;

// dequant.wgsl's word reader: word i of the weights.
fn weight_word(i: u32) -> u32 {
    return w[i >> 2u][i & 3u];
}

fn bf16_pair(u: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(u << 16u), bitcast<f32>(u & 0xffff0000u));
}

// Weights (row, 8*k8 .. 8*k8 + 8).
fn load8(row: u32, k8: u32) -> W8 {
    if WEIGHT_DTYPE >= DQ_Q8_0 {
        return dequant8(WEIGHT_DTYPE, row * dq_row_bytes(WEIGHT_DTYPE, p.k), k8);
    }
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

// The first vec4 of x's row for output row t of a one-token kernel: with a folded norm and
// `last_only`, x is the whole residual and the row is the last token's.
fn x_row(t: u32) -> u32 {
    var src = t;
    if p.norm != 0u && p.last_only != 0u {
        src = step.n_tokens - 1u;
    }
    return src * p.k / 4u;
}

// x's 8 values a, b at k8, times the norm's weights when it is folded.
fn x8(a: vec4<f32>, b: vec4<f32>, k8: u32) -> W8 {
    if p.norm != 0u {
        return W8(a * g[2u * k8], b * g[2u * k8 + 1u]);
    }
    return W8(a, b);
}

// The sum of squares of a and b where the norm is folded (else nothing to gather).
fn squares(a: vec4<f32>, b: vec4<f32>) -> f32 {
    if p.norm != 0u {
        return dot(a, a) + dot(b, b);
    }
    return 0.0;
}

// The folded norm's scale from the row's sum of squares (1 without a norm).
fn norm_scale(ss: f32) -> f32 {
    if p.norm != 0u {
        return inverseSqrt(ss / f32(p.k) + p.eps);
    }
    return 1.0;
}

// silu(g) * u; g / (1 + exp(-g)) tends to -0 for very negative g (exp overflows to +inf): no NaN.
fn swiglu(g: f32, u: f32) -> f32 {
    return g / (1.0 + exp(-g)) * u;
}

// The SwiGLU of output rows o (gate, even) and o + 1 (up) of token t.
fn store_pair(t: u32, o: u32, g: f32, u: f32) {
    y[t * (p.n / 2u) + o / 2u] = swiglu(g, u);
}

fn store(t: u32, o: u32, v: f32) {
    let i = t * p.y_stride + p.y_offset + o;
    if p.accumulate != 0u {
        y[i] = y[i] + v;
    } else {
        y[i] = v;
    }
}

var<workgroup> red: array<f32, 64>;
var<workgroup> red_ss: array<f32, 64>;

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
        var ss = 0.0;
        if valid {
            let xrow = x_row(t);
            for (var k8 = lane; k8 < k8s; k8 += LANES) {
                let wv = load8(o, k8);
                let xa = x[xrow + 2u * k8];
                let xb = x[xrow + 2u * k8 + 1u];
                ss += squares(xa, xb);
                let xv = x8(xa, xb, k8);
                acc += dot(wv.a, xv.a) + dot(wv.b, xv.b);
            }
        }
        if LANES == 1u {
            if valid {
                store(t, o, acc * norm_scale(ss));
            }
        } else {
            red[lid] = acc;
            red_ss[lid] = ss;
            workgroupBarrier();
            for (var s = LANES / 2u; s > 0u; s >>= 1u) {
                if lane < s {
                    red[lid] += red[lid + s];
                    red_ss[lid] += red_ss[lid + s];
                }
                workgroupBarrier();
            }
            if valid && lane == 0u {
                let scale = norm_scale(red_ss[lid]);
                if p.swiglu == 0u {
                    store(t, o, red[lid] * scale);
                } else if (o & 1u) == 0u {
                    // The up row is the next row of this workgroup, LANES invocations on.
                    store_pair(t, o, red[lid] * scale, red[lid + LANES] * scale);
                }
            }
            workgroupBarrier();
        }
    }
}

// One token on CPU adapters: each invocation computes SERIAL_ROWS neighbouring output rows, so that
// every load of x serves all of them (a CPU adapter gathers each lane's loads one by one, and x is
// a third of matvec's loads), with no workgroup memory and no barriers.
// Specialised by the host.
const SERIAL_ROWS: u32 = 4u;

@compute @workgroup_size(64)
fn matvec_serial(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let o0 = ((wid.y * groups.x + wid.x) * 64u + lid) * SERIAL_ROWS;
    if o0 >= p.n {
        return;
    }
    let k8s = p.k / 8u;
    let n_rows = rows();
    for (var t = 0u; t < n_rows; t++) {
        var acc: array<f32, SERIAL_ROWS>;
        for (var j = 0u; j < SERIAL_ROWS; j++) {
            acc[j] = 0.0;
        }
        var ss = 0.0;
        let xrow = x_row(t);
        for (var k8 = 0u; k8 < k8s; k8++) {
            let xa = x[xrow + 2u * k8];
            let xb = x[xrow + 2u * k8 + 1u];
            ss += squares(xa, xb);
            let xv = x8(xa, xb, k8);
            for (var j = 0u; j < SERIAL_ROWS; j++) {
                // Rows past the end repeat the last row; their results are not stored.
                let wv = load8(min(o0 + j, p.n - 1u), k8);
                acc[j] += dot(wv.a, xv.a) + dot(wv.b, xv.b);
            }
        }
        let scale = norm_scale(ss);
        if p.swiglu != 0u {
            for (var j = 0u; j + 1u < SERIAL_ROWS; j += 2u) {
                if o0 + j + 1u < p.n {
                    store_pair(t, o0 + j, acc[j] * scale, acc[j + 1u] * scale);
                }
            }
        } else {
            for (var j = 0u; j < SERIAL_ROWS; j++) {
                if o0 + j < p.n {
                    store(t, o0 + j, acc[j] * scale);
                }
            }
        }
    }
}

// Many rows on a GPU: `matvec`'s layout (LANES lanes per output row, neighbouring lanes reading
// neighbouring 16-byte words of the weight row), with every weight load serving a block of TB
// tokens; the grid's z dimension takes the token blocks, so a prompt chunk runs as many
// workgroups as its blocks times the output rows' and the activations come from cache. Partial
// sums of a block are reduced through workgroup memory with one barrier.
// Specialised by the host (GEMM_TOKENS).
const TB: u32 = 8u;

var<workgroup> red_rows: array<f32, 64u * TB>;

@compute @workgroup_size(64)
fn gemm(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let lane = lid % LANES;
    let o = (wid.y * groups.x + wid.x) * MV_ROWS + lid / LANES;
    let valid = o < p.n;
    let k8s = p.k / 8u;
    let n_rows = rows();
    let t0 = wid.z * TB;
    var acc: array<f32, TB>;
    if valid {
        for (var k8 = lane; k8 < k8s; k8 += LANES) {
            let wv = load8(o, k8);
            for (var i = 0u; i < TB; i++) {
                // Rows past the end repeat the last row; their sums are not stored.
                let xrow = min(t0 + i, n_rows - 1u) * p.k / 4u + 2u * k8;
                acc[i] += dot(wv.a, x[xrow]) + dot(wv.b, x[xrow + 1u]);
            }
        }
    }
    for (var i = 0u; i < TB; i++) {
        red_rows[lid * TB + i] = acc[i];
    }
    workgroupBarrier();
    let row0 = lid - lane;
    for (var i = lane; i < TB; i += LANES) {
        var sum = 0.0;
        for (var l = 0u; l < LANES; l++) {
            sum += red_rows[(row0 + l) * TB + i];
        }
        if valid && t0 + i < n_rows {
            store(t0 + i, o, sum);
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
