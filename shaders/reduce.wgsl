// Workgroup reductions for the one-workgroup kernels (sample_dist.wgsl, top_logprobs.wgsl): a
// library the shader loader appends to them. The includer defines `WG` (a power of two, its
// workgroup size) and `var<workgroup> red_f: array<f32, WG>`. Every invocation must call these
// together, in uniform control flow; each returns the result to all of them and leaves red_f free
// for the next call.

// The largest of the invocations' values.
fn max_f(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half {
            red_f[lid] = max(red_f[lid], red_f[lid + half]);
        }
        workgroupBarrier();
    }
    let m = red_f[0];
    workgroupBarrier();
    return m;
}

// The sum of the invocations' values.
fn sum_f(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half {
            red_f[lid] += red_f[lid + half];
        }
        workgroupBarrier();
    }
    let total = red_f[0];
    workgroupBarrier();
    return total;
}
