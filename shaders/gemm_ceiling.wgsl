// The tensor-core ceiling for `diffattn bench gemm`: C = A W^T with f16 A (M x K) and W (N x K),
// f32 C (M x N), every operand loaded straight from storage into cooperative matrices (no staging
// in workgroup memory, no conversions). It measures what this stack's 16x16 f16 matrices sustain,
// the figure the prompt products and the prefill attention kernel are compared with; the engine
// does not run it. M, N and K are multiples of the block (the host checks).
//
// A subgroup computes TM x TN tiles of 16 x 16 (each A tile it loads serves TN products, each W
// tile TM); a workgroup holds SG subgroups side by side along N, so they share A's rows in cache.

enable f16;
enable wgpu_cooperative_matrix;
diagnostic(off, derivative_uniformity);

// Specialisation constants (the host replaces these defaults): tiles per subgroup along M and N
// (1, 2 or 4 each), subgroups per workgroup, and WG = 32 x SG.
const TM: u32 = 2u;
const TN: u32 = 2u;
const SG: u32 = 1u;
const WG: u32 = 32u;
const TILE: u32 = 16u;

struct Dims {
    m: u32,
    n: u32,
    k: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> a: array<f16>;
@group(0) @binding(2) var<storage, read> w: array<f16>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// Rows r .. r + 16 of A, columns kk .. kk + 16 (row-major).
fn load_a(r: u32, kk: u32) -> coop_mat16x16<f16, A> {
    let at = r * dims.k + kk;
    let s = dims.k;
    return coopLoadT<coop_mat16x16<f16, A>>(&a[at], s);
}

// W^T for outputs o .. o + 16, K columns kk .. kk + 16: column j is W row j (column-major).
fn load_w(o: u32, kk: u32) -> coop_mat16x16<f16, B> {
    let at = o * dims.k + kk;
    let s = dims.k;
    return coopLoad<coop_mat16x16<f16, B>>(&w[at], s);
}

fn store_c(m: coop_mat16x16<f32, C>, r: u32, o: u32) {
    let at = r * dims.n + o;
    let s = dims.n;
    coopStoreT(m, &c[at], s);
}

// One row of a subgroup's tiles: the first TN of them.
fn store_row(
    m0: coop_mat16x16<f32, C>,
    m1: coop_mat16x16<f32, C>,
    m2: coop_mat16x16<f32, C>,
    m3: coop_mat16x16<f32, C>,
    r: u32,
    o: u32,
) {
    store_c(m0, r, o);
    if TN > 1u { store_c(m1, r, o + TILE); }
    if TN > 2u {
        store_c(m2, r, o + 2u * TILE);
        store_c(m3, r, o + 3u * TILE);
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_id) sg: u32) {
    let r0 = wid.y * TM * TILE;
    let o0 = (wid.x * SG + sg) * TN * TILE;
    // Accumulators: row i of tiles, column j (named, not an array: see decode_subgroup.wgsl).
    // Every guard below is on constants, so a shape keeps only its own loads and products.
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c02 = coop_mat16x16<f32, C>();
    var c03 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    var c12 = coop_mat16x16<f32, C>();
    var c13 = coop_mat16x16<f32, C>();
    var c20 = coop_mat16x16<f32, C>();
    var c21 = coop_mat16x16<f32, C>();
    var c22 = coop_mat16x16<f32, C>();
    var c23 = coop_mat16x16<f32, C>();
    var c30 = coop_mat16x16<f32, C>();
    var c31 = coop_mat16x16<f32, C>();
    var c32 = coop_mat16x16<f32, C>();
    var c33 = coop_mat16x16<f32, C>();
    for (var kk = 0u; kk < dims.k; kk += TILE) {
        let a0 = load_a(r0, kk);
        var a1 = coop_mat16x16<f16, A>();
        var a2 = coop_mat16x16<f16, A>();
        var a3 = coop_mat16x16<f16, A>();
        if TM > 1u { a1 = load_a(r0 + TILE, kk); }
        if TM > 2u {
            a2 = load_a(r0 + 2u * TILE, kk);
            a3 = load_a(r0 + 3u * TILE, kk);
        }
        let b0 = load_w(o0, kk);
        var b1 = coop_mat16x16<f16, B>();
        var b2 = coop_mat16x16<f16, B>();
        var b3 = coop_mat16x16<f16, B>();
        if TN > 1u { b1 = load_w(o0 + TILE, kk); }
        if TN > 2u {
            b2 = load_w(o0 + 2u * TILE, kk);
            b3 = load_w(o0 + 3u * TILE, kk);
        }
        c00 = coopMultiplyAdd(a0, b0, c00);
        if TN > 1u { c01 = coopMultiplyAdd(a0, b1, c01); }
        if TN > 2u {
            c02 = coopMultiplyAdd(a0, b2, c02);
            c03 = coopMultiplyAdd(a0, b3, c03);
        }
        if TM > 1u {
            c10 = coopMultiplyAdd(a1, b0, c10);
            if TN > 1u { c11 = coopMultiplyAdd(a1, b1, c11); }
            if TN > 2u {
                c12 = coopMultiplyAdd(a1, b2, c12);
                c13 = coopMultiplyAdd(a1, b3, c13);
            }
        }
        if TM > 2u {
            c20 = coopMultiplyAdd(a2, b0, c20);
            c30 = coopMultiplyAdd(a3, b0, c30);
            if TN > 1u {
                c21 = coopMultiplyAdd(a2, b1, c21);
                c31 = coopMultiplyAdd(a3, b1, c31);
            }
            if TN > 2u {
                c22 = coopMultiplyAdd(a2, b2, c22);
                c23 = coopMultiplyAdd(a2, b3, c23);
                c32 = coopMultiplyAdd(a3, b2, c32);
                c33 = coopMultiplyAdd(a3, b3, c33);
            }
        }
    }
    store_row(c00, c01, c02, c03, r0, o0);
    if TM > 1u { store_row(c10, c11, c12, c13, r0 + TILE, o0); }
    if TM > 2u {
        store_row(c20, c21, c22, c23, r0 + 2u * TILE, o0);
        store_row(c30, c31, c32, c33, r0 + 3u * TILE, o0);
    }
}
