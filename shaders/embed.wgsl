// Embedding gather: out[t] = table[ids[ids_offset + t]], widened to f32. The table (vocab, D) keeps the file's
// type: f32, f16/bf16 as two halves per u32 (low half first), or a ggml block type as its blocks
// (dequant.wgsl, which the host appends to this file). The host checks ids < vocab.
//
// A table too large for one storage binding comes in parts of whole rows, one dispatch each: a
// part holds rows [first_row, first_row + rows) and writes only the tokens whose ids lie there.

// Specialisation constants (the host replaces these defaults).
// 0 = f32, 1 = f16, 2 = bf16, 3 to 7 = the block types (dequant.wgsl's DQ_ codes).
const WEIGHT_DTYPE: u32 = 0u;

struct Step {
    n_tokens: u32,
    past_len: u32,
    ids_offset: u32,
    sample_slot: u32,
}

struct Params {
    d: u32,
    // The rows of the table this dispatch holds (all of it unless split).
    first_row: u32,
    rows: u32,
    pad0: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// dequant.wgsl's word reader: word i of the table.
fn weight_word(i: u32) -> u32 {
    return table[i];
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = gid.y * groups.x * 64u + gid.x;
    if idx >= step.n_tokens * p.d {
        return;
    }
    let t = idx / p.d;
    let token = ids[step.ids_offset + t];
    if token < p.first_row || token - p.first_row >= p.rows {
        return;
    }
    let id = token - p.first_row;
    let col = idx % p.d;
    let e = id * p.d + col;
    var v: f32;
    if WEIGHT_DTYPE >= DQ_Q8_0 {
        // A whole group of 8 for one value: the gather is a tiny share of a step.
        let v8 = dequant8(WEIGHT_DTYPE, id * dq_row_bytes(WEIGHT_DTYPE, p.d), col / 8u);
        let j = col % 8u;
        v = select(v8.b[j & 3u], v8.a[j & 3u], j < 4u);
    } else if WEIGHT_DTYPE == 0u {
        v = bitcast<f32>(table[e]);
    } else {
        let word = table[e / 2u];
        let odd = (e % 2u) == 1u;
        if WEIGHT_DTYPE == 1u {
            let pair = unpack2x16float(word);
            v = select(pair.x, pair.y, odd);
        } else {
            v = bitcast<f32>(select(word << 16u, word & 0xffff0000u, odd));
        }
    }
    out[idx] = v;
}
