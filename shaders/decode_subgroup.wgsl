// Split-KV attention for one query token over a long f16 KV cache, on subgroup shuffles: the
// native SIMT fast path of decode_split.wgsl (same inputs, same partials, same merge pass).
//
// Lanes work in groups of L = HEAD_DIM / 8 (4, 8, 16 or 32; at most the subgroup size). A K or V
// row of one key is spread over the L lanes of a group, 8 dims (one 16-byte word) each: the
// lanes of a subgroup read whole rows of neighbouring keys, so every load is coalesced. Each lane
// holds its 8 dims of all R query rows of the workgroup (heads of one GQA group, pre-scaled) and
// of their running outputs, so each K/V element is read from memory once for all heads of the
// group: DIFF V2 (twice the query heads per KV head) reads what standard attention reads.
//
// One step of a group takes KPG = L / R keys (1, 2 or 4), which makes L items (key, row):
//   1. every lane computes its 8-dim share of all L scores;
//   2. a reduce-scatter over the group (log2 L shuffle rounds, halving the values each round)
//      leaves lane r with the whole score of item r: key r / R, row r % R;
//   3. online softmax in base 2 (the queries carry log2 e): the row's maximum over the step's
//      keys by shuffles; the running maximum moves only when that exceeds it by more than
//      THRESHOLD (so weights stay below 2^THRESHOLD in f32 and the outputs are rescaled rarely);
//   4. each lane takes the L weights by shuffles and adds p * v over its dims of each row.
// The workgroup's lane groups take neighbouring keys; workgroup `chunk` of a head group takes
// blocks chunk, chunk + n_chunks, ... of KPW keys, so the workgroups in flight sweep neighbouring
// memory. At the end the groups' (max, sum, output) are merged in workgroup memory, a few rows at a
// time, and written as the chunk's partial; with a single chunk (`direct`) the normalised result,
// with the DIFF V2 differential, goes straight to the output and no merge pass runs.
//
// Registers, not arrays: a lane's queries, outputs and K/V words are named private vectors,
// reached through accessors that switch on an index. Every index in the key loop is a constant
// (the steps are written out, guarded by constant conditions), so once the driver inlines the
// accessors nothing is indexed at run time; per-lane arrays indexed in loops were left in local
// memory by the NVIDIA driver (7x slower).
//
// Keys past the visible end read the last visible key (never memory past it) and weigh zero.
//
// Layouts as decode_split.wgsl: q (N, q_heads, d) f32; k, v (S, kv_heads, d) f16;
// part_o (N, q_heads, n_chunks, d) f32; part_ml (N, q_heads, n_chunks) as (max, sum), the max in
// natural-log units like every other first pass; lam (N, out_heads) raw logits; out
// (N, out_heads, d) f32.

// Specialisation constants (the host replaces these defaults).
const HEAD_DIM: u32 = 64u;
const WG: u32 = 128u;
// Query rows per workgroup: a power of two from L / 4 to min(8, L).
const R: u32 = 8u;
// Rows merged per round at the end (a power of two dividing R; the host sizes it to 16 KiB).
const MERGE_ROWS: u32 = 2u;
// Steps ahead that each step's K/V are loaded (0, 1 or 2): the words in flight while the current
// step computes. Two hide more latency where a workgroup walks many steps with few workgroups
// beside it (short caches in few chunks), for another set of K/V registers.
const AHEAD: u32 = 0u;

const L: u32 = HEAD_DIM / 8u;
const D4: u32 = HEAD_DIM / 4u;
const KPG: u32 = L / R;
// Lane groups per workgroup, and keys per workgroup block.
const SLOTS: u32 = WG / L;
const KPW: u32 = SLOTS * KPG;
const THRESHOLD: f32 = 11.0;
const LOG2E: f32 = 1.4426950408889634;
const LN2: f32 = 0.6931471805599453;
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
@group(0) @binding(6) var<storage, read> lam: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<vec4<f32>>;

// Per lane group and row: the running (max in base 2, sum) at the end.
var<workgroup> w_ml: array<vec2<f32>, SLOTS * R>;
// Per lane group: its outputs of the rows being merged.
var<workgroup> w_o: array<vec4<f32>, SLOTS * MERGE_ROWS * D4>;

// This lane's 8 dims of query row g: qg0 (dims 0-3), qg1 (dims 4-7); the same for the outputs.
var<private> q00: vec4<f32>;
var<private> q01: vec4<f32>;
var<private> q10: vec4<f32>;
var<private> q11: vec4<f32>;
var<private> q20: vec4<f32>;
var<private> q21: vec4<f32>;
var<private> q30: vec4<f32>;
var<private> q31: vec4<f32>;
var<private> q40: vec4<f32>;
var<private> q41: vec4<f32>;
var<private> q50: vec4<f32>;
var<private> q51: vec4<f32>;
var<private> q60: vec4<f32>;
var<private> q61: vec4<f32>;
var<private> q70: vec4<f32>;
var<private> q71: vec4<f32>;
var<private> o00: vec4<f32>;
var<private> o01: vec4<f32>;
var<private> o10: vec4<f32>;
var<private> o11: vec4<f32>;
var<private> o20: vec4<f32>;
var<private> o21: vec4<f32>;
var<private> o30: vec4<f32>;
var<private> o31: vec4<f32>;
var<private> o40: vec4<f32>;
var<private> o41: vec4<f32>;
var<private> o50: vec4<f32>;
var<private> o51: vec4<f32>;
var<private> o60: vec4<f32>;
var<private> o61: vec4<f32>;
var<private> o70: vec4<f32>;
var<private> o71: vec4<f32>;
// This lane's K and V words of the step's keys.
var<private> k0: vec4<u32>;
var<private> k1: vec4<u32>;
var<private> k2: vec4<u32>;
var<private> k3: vec4<u32>;
var<private> v0: vec4<u32>;
var<private> v1: vec4<u32>;
var<private> v2: vec4<u32>;
var<private> v3: vec4<u32>;
// The next step's words (loaded into these, then taken); with AHEAD = 2, the step after's in the
// far words (loaded into those, moved to the next-step words, then taken).
var<private> kn0: vec4<u32>;
var<private> kn1: vec4<u32>;
var<private> kn2: vec4<u32>;
var<private> kn3: vec4<u32>;
var<private> vn0: vec4<u32>;
var<private> vn1: vec4<u32>;
var<private> vn2: vec4<u32>;
var<private> vn3: vec4<u32>;
var<private> kf0: vec4<u32>;
var<private> kf1: vec4<u32>;
var<private> kf2: vec4<u32>;
var<private> kf3: vec4<u32>;
var<private> vf0: vec4<u32>;
var<private> vf1: vec4<u32>;
var<private> vf2: vec4<u32>;
var<private> vf3: vec4<u32>;

// Query row g's dims 0-3 (h = 0) or 4-7 (h = 1).
fn q_of(g: u32, h: u32) -> vec4<f32> {
    switch g * 2u + h {
        case 0u: { return q00; }
        case 1u: { return q01; }
        case 2u: { return q10; }
        case 3u: { return q11; }
        case 4u: { return q20; }
        case 5u: { return q21; }
        case 6u: { return q30; }
        case 7u: { return q31; }
        case 8u: { return q40; }
        case 9u: { return q41; }
        case 10u: { return q50; }
        case 11u: { return q51; }
        case 12u: { return q60; }
        case 13u: { return q61; }
        case 14u: { return q70; }
        default: { return q71; }
    }
}

fn set_q(g: u32, a: vec4<f32>, b: vec4<f32>) {
    switch g {
        case 0u: { q00 = a; q01 = b; }
        case 1u: { q10 = a; q11 = b; }
        case 2u: { q20 = a; q21 = b; }
        case 3u: { q30 = a; q31 = b; }
        case 4u: { q40 = a; q41 = b; }
        case 5u: { q50 = a; q51 = b; }
        case 6u: { q60 = a; q61 = b; }
        default: { q70 = a; q71 = b; }
    }
}

fn o_of(g: u32, h: u32) -> vec4<f32> {
    switch g * 2u + h {
        case 0u: { return o00; }
        case 1u: { return o01; }
        case 2u: { return o10; }
        case 3u: { return o11; }
        case 4u: { return o20; }
        case 5u: { return o21; }
        case 6u: { return o30; }
        case 7u: { return o31; }
        case 8u: { return o40; }
        case 9u: { return o41; }
        case 10u: { return o50; }
        case 11u: { return o51; }
        case 12u: { return o60; }
        case 13u: { return o61; }
        case 14u: { return o70; }
        default: { return o71; }
    }
}

// Output row g = a * (row g) + (b, c): the running update and the rare rescale in one.
fn update_o(g: u32, a: f32, b: vec4<f32>, c: vec4<f32>) {
    switch g {
        case 0u: { o00 = a * o00 + b; o01 = a * o01 + c; }
        case 1u: { o10 = a * o10 + b; o11 = a * o11 + c; }
        case 2u: { o20 = a * o20 + b; o21 = a * o21 + c; }
        case 3u: { o30 = a * o30 + b; o31 = a * o31 + c; }
        case 4u: { o40 = a * o40 + b; o41 = a * o41 + c; }
        case 5u: { o50 = a * o50 + b; o51 = a * o51 + c; }
        case 6u: { o60 = a * o60 + b; o61 = a * o61 + c; }
        default: { o70 = a * o70 + b; o71 = a * o71 + c; }
    }
}

fn k_of(kk: u32) -> vec4<u32> {
    switch kk {
        case 0u: { return k0; }
        case 1u: { return k1; }
        case 2u: { return k2; }
        default: { return k3; }
    }
}

fn v_of(kk: u32) -> vec4<u32> {
    switch kk {
        case 0u: { return v0; }
        case 1u: { return v1; }
        case 2u: { return v2; }
        default: { return v3; }
    }
}

// Loads key slot kk of a step into the words loads land in: the far words with AHEAD = 2, else
// the next-step words (clamped to the last visible key).
fn load_next(kk: u32, key: u32, last: u32, row_words: u32, head_word: u32) {
    let at = min(key, last) * row_words + head_word;
    let kw = k[at];
    let vw = v[at];
    if AHEAD > 1u {
        switch kk {
            case 0u: { kf0 = kw; vf0 = vw; }
            case 1u: { kf1 = kw; vf1 = vw; }
            case 2u: { kf2 = kw; vf2 = vw; }
            default: { kf3 = kw; vf3 = vw; }
        }
    } else {
        switch kk {
            case 0u: { kn0 = kw; vn0 = vw; }
            case 1u: { kn1 = kw; vn1 = vw; }
            case 2u: { kn2 = kw; vn2 = vw; }
            default: { kn3 = kw; vn3 = vw; }
        }
    }
}

// Loads this lane's words of the step whose first key (of this lane group) is key0; each
// `take_next` moves the loaded words one place on, so they are the current ones after AHEAD of
// them (one with AHEAD = 0).
fn load_step(key0: u32, last: u32, row_words: u32, head_word: u32) {
    load_next(0u, key0, last, row_words, head_word);
    if KPG > 1u { load_next(1u, key0 + 1u, last, row_words, head_word); }
    if KPG > 2u {
        load_next(2u, key0 + 2u, last, row_words, head_word);
        load_next(3u, key0 + 3u, last, row_words, head_word);
    }
}

fn take_next() {
    k0 = kn0;
    k1 = kn1;
    k2 = kn2;
    k3 = kn3;
    v0 = vn0;
    v1 = vn1;
    v2 = vn2;
    v3 = vn3;
    if AHEAD > 1u {
        kn0 = kf0;
        kn1 = kf1;
        kn2 = kf2;
        kn3 = kf3;
        vn0 = vf0;
        vn1 = vf1;
        vn2 = vf2;
        vn3 = vf3;
    }
}

// Eight f16 of a 16-byte word as two vec4s (h = 0: the first four).
fn half4(w: vec4<u32>, h: u32) -> vec4<f32> {
    if h == 0u {
        return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    }
    return vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w));
}

// This lane's share of the score of item i: key slot i / R, row i % R.
fn share(i: u32) -> f32 {
    let w = k_of(i / R);
    let g = i % R;
    return dot(q_of(g, 0u), half4(w, 0u)) + dot(q_of(g, 1u), half4(w, 1u));
}

fn shares(i: u32) -> vec4<f32> {
    return vec4<f32>(share(i), share(i + 1u), share(i + 2u), share(i + 3u));
}

// One reduce-scatter round: the lane keeps one half (the upper where `upper`) and adds its
// partner's copy of that half, handing over the other.
fn keep4(a: vec4<f32>, b: vec4<f32>, upper: bool, mask: u32) -> vec4<f32> {
    return select(a, b, upper) + subgroupShuffleXor(select(b, a, upper), mask);
}

fn keep2(a: vec2<f32>, b: vec2<f32>, upper: bool, mask: u32) -> vec2<f32> {
    return select(a, b, upper) + subgroupShuffleXor(select(b, a, upper), mask);
}

fn keep1(a: f32, b: f32, upper: bool, mask: u32) -> f32 {
    return select(a, b, upper) + subgroupShuffleXor(select(b, a, upper), mask);
}

// The whole score of item r (this lane's rank) from the group's shares.
fn reduce_scatter(r: u32) -> f32 {
    var s0 = shares(0u);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    var s4 = vec4<f32>(0.0);
    var s5 = vec4<f32>(0.0);
    var s6 = vec4<f32>(0.0);
    var s7 = vec4<f32>(0.0);
    if L > 4u { s1 = shares(4u); }
    if L > 8u { s2 = shares(8u); s3 = shares(12u); }
    if L > 16u { s4 = shares(16u); s5 = shares(20u); s6 = shares(24u); s7 = shares(28u); }
    if L > 16u {
        let u = (r & 16u) != 0u;
        s0 = keep4(s0, s4, u, 16u);
        s1 = keep4(s1, s5, u, 16u);
        s2 = keep4(s2, s6, u, 16u);
        s3 = keep4(s3, s7, u, 16u);
    }
    if L > 8u {
        let u = (r & 8u) != 0u;
        s0 = keep4(s0, s2, u, 8u);
        s1 = keep4(s1, s3, u, 8u);
    }
    if L > 4u {
        s0 = keep4(s0, s1, (r & 4u) != 0u, 4u);
    }
    let h = keep2(s0.xy, s0.zw, (r & 2u) != 0u, 2u);
    return keep1(h.x, h.y, (r & 1u) != 0u, 1u);
}

// Adds the weights of key slot kk (from the lanes that hold them) times its V row to every
// output row.
fn accumulate(kk: u32, weight: f32, base_lane: u32) {
    let w = v_of(kk);
    let a = half4(w, 0u);
    let b = half4(w, 1u);
    let at = base_lane + kk * R;
    add_row(0u, subgroupShuffle(weight, at), a, b);
    if R > 1u { add_row(1u, subgroupShuffle(weight, at + 1u), a, b); }
    if R > 2u {
        add_row(2u, subgroupShuffle(weight, at + 2u), a, b);
        add_row(3u, subgroupShuffle(weight, at + 3u), a, b);
    }
    if R > 4u {
        add_row(4u, subgroupShuffle(weight, at + 4u), a, b);
        add_row(5u, subgroupShuffle(weight, at + 5u), a, b);
        add_row(6u, subgroupShuffle(weight, at + 6u), a, b);
        add_row(7u, subgroupShuffle(weight, at + 7u), a, b);
    }
}

fn add_row(g: u32, pg: f32, a: vec4<f32>, b: vec4<f32>) {
    update_o(g, 1.0, pg * a, pg * b);
}

// Scales every output row by its row's factor (held by the lane of rank g).
fn rescale(alpha: f32, base_lane: u32) {
    let zero = vec4<f32>(0.0);
    update_o(0u, subgroupShuffle(alpha, base_lane), zero, zero);
    if R > 1u { update_o(1u, subgroupShuffle(alpha, base_lane + 1u), zero, zero); }
    if R > 2u {
        update_o(2u, subgroupShuffle(alpha, base_lane + 2u), zero, zero);
        update_o(3u, subgroupShuffle(alpha, base_lane + 3u), zero, zero);
    }
    if R > 4u {
        update_o(4u, subgroupShuffle(alpha, base_lane + 4u), zero, zero);
        update_o(5u, subgroupShuffle(alpha, base_lane + 5u), zero, zero);
        update_o(6u, subgroupShuffle(alpha, base_lane + 6u), zero, zero);
        update_o(7u, subgroupShuffle(alpha, base_lane + 7u), zero, zero);
    }
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// Row r's merged (max in base 2, sum) over the lane groups.
fn merged_ml(r: u32) -> vec2<f32> {
    var m = NEG_BIG;
    for (var s = 0u; s < SLOTS; s++) {
        m = max(m, w_ml[s * R + r].x);
    }
    var l = 0.0;
    for (var s = 0u; s < SLOTS; s++) {
        let ml = w_ml[s * R + r];
        l += exp2(ml.x - m) * ml.y;
    }
    return vec2<f32>(m, l);
}

// Column block c4 of row r (within the round starting at row r0) merged over the lane groups,
// relative to the row's merged max m.
fn merged_o(r: u32, r0: u32, c4: u32, m: f32) -> vec4<f32> {
    var o = vec4<f32>(0.0);
    for (var s = 0u; s < SLOTS; s++) {
        let w = exp2(w_ml[s * R + r].x - m);
        o += w * w_o[(s * MERGE_ROWS + r - r0) * D4 + c4];
    }
    return o;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let kv_head = wg.x / p.head_splits;
    let split = wg.x % p.head_splits;
    let chunk = wg.y;
    let n = wg.z;
    let first_head = kv_head * p.group + split * R;
    let n_heads = min(R, p.group - split * R);
    var visible_end = p.seq_len;
    if p.causal != 0u {
        visible_end = min(p.seq_len, p.past_len + n + 1u);
    }
    let last = visible_end - 1u;
    let n_blocks = (visible_end + KPW - 1u) / KPW;

    // This lane's place: its group (slot) in the workgroup, its rank r in the group, and the
    // subgroup lane of the group's rank 0.
    let r = lane % L;
    let base_lane = lane - r;
    let slot = sg * (sg_size / L) + lane / L;
    // The item this lane ends a step with.
    let my_key = r / R;
    let my_row = r % R;

    for (var g = 0u; g < R; g++) {
        var a = vec4<f32>(0.0);
        var b = vec4<f32>(0.0);
        if g < n_heads {
            let at = (n * p.q_heads + first_head + g) * D4 + 2u * r;
            a = q[at] * (p.scale * LOG2E);
            b = q[at + 1u] * (p.scale * LOG2E);
        }
        set_q(g, a, b);
        update_o(g, 0.0, vec4<f32>(0.0), vec4<f32>(0.0));
    }
    var m_run = NEG_BIG;
    var l_run = 0.0;
    let row_words = p.kv_heads * L;
    let head_word = kv_head * L + r;

    // The first AHEAD steps' loads (a step is p.n_chunks blocks on from the one before).
    let stride = p.n_chunks * KPW;
    let first = chunk * KPW + slot * KPG;
    if AHEAD > 0u {
        load_step(first, last, row_words, head_word);
    }
    if AHEAD > 1u {
        take_next();
        load_step(first + stride, last, row_words, head_word);
    }
    for (var b = chunk; b < n_blocks; b += p.n_chunks) {
        let key0 = b * KPW + slot * KPG;
        // 1. Every load of the step before any arithmetic (and those AHEAD steps on: past the
        // end they read the last visible key again).
        if AHEAD > 0u {
            take_next();
            load_step(key0 + AHEAD * stride, last, row_words, head_word);
        } else {
            load_step(key0, last, row_words, head_word);
            take_next();
        }
        // 2. The whole score of this lane's item.
        let valid = key0 + my_key < visible_end;
        let score = select(NEG_BIG, reduce_scatter(r), valid);
        // 3. Online softmax.
        var bm = score;
        if KPG > 1u { bm = max(bm, subgroupShuffleXor(bm, R)); }
        if KPG > 2u { bm = max(bm, subgroupShuffleXor(bm, 2u * R)); }
        let grows = bm > m_run + THRESHOLD;
        let m_new = select(m_run, bm, grows);
        // Rare after the first steps; the branch is uniform over the subgroup.
        if subgroupAny(grows) {
            let alpha = exp2(m_run - m_new);
            l_run *= alpha;
            rescale(alpha, base_lane);
        }
        m_run = m_new;
        let weight = select(0.0, exp2(score - m_new), valid);
        l_run += weight;
        // 4. O += P V.
        accumulate(0u, weight, base_lane);
        if KPG > 1u { accumulate(1u, weight, base_lane); }
        if KPG > 2u {
            accumulate(2u, weight, base_lane);
            accumulate(3u, weight, base_lane);
        }
    }

    // The group's sum of each row over its key slots; every lane of the group holds its row's max.
    var l_row = l_run;
    if KPG > 1u { l_row += subgroupShuffleXor(l_row, R); }
    if KPG > 2u { l_row += subgroupShuffleXor(l_row, 2u * R); }
    if r < R {
        w_ml[slot * R + my_row] = vec2<f32>(m_run, l_row);
    }
    for (var r0 = 0u; r0 < R; r0 += MERGE_ROWS) {
        workgroupBarrier();
        for (var g = r0; g < r0 + MERGE_ROWS; g++) {
            let at = (slot * MERGE_ROWS + g - r0) * D4 + 2u * r;
            w_o[at] = o_of(g, 0u);
            w_o[at + 1u] = o_of(g, 1u);
        }
        workgroupBarrier();
        if p.direct != 0u && p.diff != 0u {
            // Output head i pairs query heads 2i and 2i + 1, both in this round (the host takes
            // the direct path in DIFF V2 mode only with MERGE_ROWS even).
            for (var e = lid; e < MERGE_ROWS / 2u * D4; e += WG) {
                let g = r0 + 2u * (e / D4);
                let c4 = e % D4;
                if g < n_heads {
                    let a = merged_ml(g);
                    let b = merged_ml(g + 1u);
                    let oa = merged_o(g, r0, c4, a.x) / a.y;
                    let ob = merged_o(g + 1u, r0, c4, b.x) / b.y;
                    let row = n * p.out_heads + (first_head + g) / 2u;
                    out[row * D4 + c4] = oa - sigmoid(lam[row]) * ob;
                }
            }
        } else {
            for (var e = lid; e < MERGE_ROWS * D4; e += WG) {
                let g = r0 + e / D4;
                let c4 = e % D4;
                if g < n_heads {
                    let ml = merged_ml(g);
                    let o = merged_o(g, r0, c4, ml.x);
                    let qh = n * p.q_heads + first_head + g;
                    if p.direct != 0u {
                        out[qh * D4 + c4] = o / ml.y;
                    } else {
                        part_o[(qh * p.n_chunks + chunk) * D4 + c4] = o;
                    }
                }
            }
        }
    }
    if p.direct == 0u && lid < n_heads {
        let ml = merged_ml(lid);
        part_ml[(n * p.q_heads + first_head + lid) * p.n_chunks + chunk] = vec2<f32>(ml.x * LN2, ml.y);
    }
}
