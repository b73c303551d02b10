// y = x W^T (+ y) for many token rows on cooperative matrices (tensor cores): the prompt products
// of matmul.wgsl on adapters with 16x16 f16 matrices, for f16 weights. Same bindings, same
// parameters, same layouts: x (rows, K) f32, W (N, K) f16 as packed u32 pairs (row-major, as stored
// in the file), y (rows, N) f32; with `accumulate` the product is added to y.
//
// A workgroup computes a BM x BN block of y (token rows x outputs), four subgroups a 32 x 32
// quarter each (2 x 2 matrix tiles, so every tile loaded serves two products). The K dimension is
// walked in steps of BK: the step's x rows (rounded to f16) and W rows are staged in workgroup
// memory with zeros past the ends of x, W and K, so partial blocks need no special case and nothing
// past a buffer is read; y leaves through workgroup memory so that the edges can be masked.
// Activations are rounded to f16 for the products (and held within the f16 range); the sums
// accumulate in f32.
//
// Cooperative operations run per subgroup with no branch around them (the subgroup id only picks
// addresses), and the host takes this path only where subgroups are exactly 32 wide.
// K must be a multiple of 8 (the host checks it, as for matmul.wgsl).

enable f16;
enable wgpu_cooperative_matrix;
diagnostic(off, derivative_uniformity);

const WG: u32 = 128u;
const TILE: u32 = 16u;
// Token rows and outputs per workgroup, and the K step staged at a time.
const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 32u;
// Row strides in workgroup memory, padded so that the rows one matrix access touches fall in
// different banks; every row starts on 16 bytes.
const AB_STRIDE: u32 = BK + 8u;
const Y_STRIDE: u32 = BN + 4u;
const F16_MAX: f32 = 65504.0;

struct Step {
    n_tokens: u32,
    past_len: u32,
    ids_offset: u32,
    sample_slot: u32,
}

// matmul.wgsl's block; the folded norm (norm, eps) and SwiGLU are for its one-token kernels.
struct Params {
    k: u32,
    n: u32,
    accumulate: u32,
    last_only: u32,
    norm: u32,
    eps: f32,
    swiglu: u32,
    // Where outputs go: y[t * y_stride + y_offset + o] (see matmul.wgsl).
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

// The K step of the block's x rows (BM x BK) and W rows (BN x BK), both row-major.
var<workgroup> w_x: array<f16, BM * AB_STRIDE>;
var<workgroup> w_w: array<f16, BN * AB_STRIDE>;
// The block's result on its way out.
var<workgroup> w_y: array<f32, BM * Y_STRIDE>;

fn rows() -> u32 {
    if p.last_only != 0u {
        return 1u;
    }
    return step.n_tokens;
}

fn to_f16(v: f32) -> f16 {
    return f16(clamp(v, -F16_MAX, F16_MAX));
}

// Stages columns k0 .. k0 + BK of x rows t0 .. t0 + BM and of W rows o0 .. o0 + BN.
fn stage(t0: u32, o0: u32, k0: u32, n_rows: u32, lid: u32) {
    // K is a multiple of 8, so every 4- or 8-wide group lies wholly inside K or wholly past it.
    for (var e = lid; e < BM * BK / 4u; e += WG) {
        let r = e / (BK / 4u);
        let c = (e % (BK / 4u)) * 4u;
        var v = vec4<f32>(0.0);
        if t0 + r < n_rows && k0 + c < p.k {
            v = x[((t0 + r) * p.k + k0 + c) / 4u];
        }
        let at = r * AB_STRIDE + c;
        w_x[at] = to_f16(v.x);
        w_x[at + 1u] = to_f16(v.y);
        w_x[at + 2u] = to_f16(v.z);
        w_x[at + 3u] = to_f16(v.w);
    }
    for (var e = lid; e < BN * BK / 8u; e += WG) {
        let r = e / (BK / 8u);
        let c = (e % (BK / 8u)) * 8u;
        var u = vec4<u32>(0u);
        if o0 + r < p.n && k0 + c < p.k {
            u = w[((o0 + r) * p.k + k0 + c) / 8u];
        }
        let at = r * AB_STRIDE + c;
        for (var h = 0u; h < 4u; h++) {
            // Widening to f32 and back is exact for every f16 value.
            let pair = unpack2x16float(u[h]);
            w_w[at + 2u * h] = f16(pair.x);
            w_w[at + 2u * h + 1u] = f16(pair.y);
        }
    }
}

// Rows r0 .. r0 + 16 of the staged x, columns kk .. kk + 16, as the (tokens x K) operand.
fn load_x(r0: u32, kk: u32) -> coop_mat16x16<f16, A> {
    let at = r0 * AB_STRIDE + kk;
    let s = AB_STRIDE;
    return coopLoadT<coop_mat16x16<f16, A>>(&w_x[at], s);
}

// W^T for outputs o .. o + 16, K columns kk .. kk + 16, as the (K x outputs) operand: column j is
// W row j, so column-major.
fn load_w(o: u32, kk: u32) -> coop_mat16x16<f16, B> {
    let at = o * AB_STRIDE + kk;
    let s = AB_STRIDE;
    return coopLoad<coop_mat16x16<f16, B>>(&w_w[at], s);
}

fn store_y(c: coop_mat16x16<f32, C>, r0: u32, c0: u32) {
    let at = r0 * Y_STRIDE + c0;
    let s = Y_STRIDE;
    coopStoreT(c, &w_y[at], s);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
) {
    let n_rows = rows();
    let o0 = wid.x * BN;
    let t0 = wid.y * BM;
    // This subgroup's quarter of the block.
    let r0 = (sg / 2u) * 32u;
    let c0 = (sg % 2u) * 32u;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        stage(t0, o0, k0, n_rows, lid);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += TILE) {
            let a0 = load_x(r0, kk);
            let a1 = load_x(r0 + TILE, kk);
            let b0 = load_w(c0, kk);
            let b1 = load_w(c0 + TILE, kk);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
        }
        // The next step overwrites the staged tiles.
        workgroupBarrier();
    }
    store_y(c00, r0, c0);
    store_y(c01, r0, c0 + TILE);
    store_y(c10, r0 + TILE, c0);
    store_y(c11, r0 + TILE, c0 + TILE);
    workgroupBarrier();
    for (var e = lid; e < BM * BN; e += WG) {
        let r = e / BN;
        let c = e % BN;
        if t0 + r < n_rows && o0 + c < p.n {
            let i = (t0 + r) * p.y_stride + p.y_offset + o0 + c;
            let v = w_y[r * Y_STRIDE + c];
            if p.accumulate != 0u {
                y[i] = y[i] + v;
            } else {
                y[i] = v;
            }
        }
    }
}
