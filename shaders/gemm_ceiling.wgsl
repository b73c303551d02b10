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

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_id) sg: u32) {
    let r0 = wid.y * TM * TILE;
    let o0 = (wid.x * SG + sg) * TN * TILE;
    // Accumulators: row i of tiles, column j (named, not an array: see decode_subgroup.wgsl).
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
        let b0 = load_w(o0, kk);
        c00 = coopMultiplyAdd(a0, b0, c00);
        if TN > 1u {
            let b1 = load_w(o0 + TILE, kk);
            c01 = coopMultiplyAdd(a0, b1, c01);
            if TM > 1u {
                let a1 = load_a(r0 + TILE, kk);
                c10 = coopMultiplyAdd(a1, b0, c10);
                c11 = coopMultiplyAdd(a1, b1, c11);
                if TN > 2u {
                    let b2 = load_w(o0 + 2u * TILE, kk);
                    let b3 = load_w(o0 + 3u * TILE, kk);
                    c02 = coopMultiplyAdd(a0, b2, c02);
                    c03 = coopMultiplyAdd(a0, b3, c03);
                    c12 = coopMultiplyAdd(a1, b2, c12);
                    c13 = coopMultiplyAdd(a1, b3, c13);
                    if TM > 2u {
                        let a2 = load_a(r0 + 2u * TILE, kk);
                        let a3 = load_a(r0 + 3u * TILE, kk);
                        c20 = coopMultiplyAdd(a2, b0, c20);
                        c21 = coopMultiplyAdd(a2, b1, c21);
                        c22 = coopMultiplyAdd(a2, b2, c22);
                        c23 = coopMultiplyAdd(a2, b3, c23);
                        c30 = coopMultiplyAdd(a3, b0, c30);
                        c31 = coopMultiplyAdd(a3, b1, c31);
                        c32 = coopMultiplyAdd(a3, b2, c32);
                        c33 = coopMultiplyAdd(a3, b3, c33);
                    }
                } else if TM > 2u {
                    let a2 = load_a(r0 + 2u * TILE, kk);
                    let a3 = load_a(r0 + 3u * TILE, kk);
                    c20 = coopMultiplyAdd(a2, b0, c20);
                    c21 = coopMultiplyAdd(a2, b1, c21);
                    c30 = coopMultiplyAdd(a3, b0, c30);
                    c31 = coopMultiplyAdd(a3, b1, c31);
                }
            }
        }
    }
    store_c(c00, r0, o0);
    if TN > 1u {
        store_c(c01, r0, o0 + TILE);
        if TM > 1u {
            store_c(c10, r0 + TILE, o0);
            store_c(c11, r0 + TILE, o0 + TILE);
            if TN > 2u {
                store_c(c02, r0, o0 + 2u * TILE);
                store_c(c03, r0, o0 + 3u * TILE);
                store_c(c12, r0 + TILE, o0 + 2u * TILE);
                store_c(c13, r0 + TILE, o0 + 3u * TILE);
                if TM > 2u {
                    store_c(c20, r0 + 2u * TILE, o0);
                    store_c(c21, r0 + 2u * TILE, o0 + TILE);
                    store_c(c22, r0 + 2u * TILE, o0 + 2u * TILE);
                    store_c(c23, r0 + 2u * TILE, o0 + 3u * TILE);
                    store_c(c30, r0 + 3u * TILE, o0);
                    store_c(c31, r0 + 3u * TILE, o0 + TILE);
                    store_c(c32, r0 + 3u * TILE, o0 + 2u * TILE);
                    store_c(c33, r0 + 3u * TILE, o0 + 3u * TILE);
                }
            } else if TM > 2u {
                store_c(c20, r0 + 2u * TILE, o0);
                store_c(c21, r0 + 2u * TILE, o0 + TILE);
                store_c(c30, r0 + 3u * TILE, o0);
                store_c(c31, r0 + 3u * TILE, o0 + TILE);
            }
        }
    }
}
