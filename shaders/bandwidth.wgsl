// Memory-bandwidth probes for `diffattn bench bandwidth`: the ceilings the attention benchmarks are
// measured against. Both walk the buffer grid-stride in 16-byte loads, the access pattern a
// bandwidth-bound kernel wants.
//
// read_sum reads every element once and writes one sum per invocation (so the loads cannot be
// dropped); copy reads and writes every element once; touch moves one element per invocation, for
// the fixed cost of a dispatch (what a short attention call cannot go below).

const WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn read_sum(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * WG;
    let n = arrayLength(&src);
    var acc = vec4<f32>(0.0);
    for (var i = g.x; i < n; i += stride) {
        acc += src[i];
    }
    dst[g.x] = acc;
}

@compute @workgroup_size(WG)
fn copy(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * WG;
    let n = min(arrayLength(&src), arrayLength(&dst));
    for (var i = g.x; i < n; i += stride) {
        dst[i] = src[i];
    }
}

@compute @workgroup_size(WG)
fn touch(@builtin(global_invocation_id) g: vec3<u32>) {
    dst[g.x] = src[g.x] + vec4<f32>(1.0);
}
