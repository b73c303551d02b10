// Dequantization of ggml block types where the weights are read: a library that the host appends
// to matmul.wgsl and embed.wgsl (src/gpu/shader.rs, INCLUDES). It declares no bindings; the
// including shader defines `fn weight_word(i: u32) -> u32`, word i of its weight buffer.
//
// A quantized matrix lies in its buffer as in the GGUF file: rows of whole blocks, blocks back to
// back, so that GPU memory is the file's size. Q8_0 (34 bytes), Q4_0 (18) and Q6_K (210) blocks
// therefore start at any even byte, not at a word: every field of every block is 2-byte aligned,
// so four bytes are at most two words apart (`dq_word`). The host pads buffers to 16 bytes, so the
// word after the last byte exists. f16 scales are widened with unpack2x16float, which is core
// WGSL: nothing here needs SHADER_F16, so the browser build runs it too.
//
// The unit is 8 consecutive values of a row (`dequant8`): every block holds a multiple of 8 and
// 8 values of a block share one scale, which is what the product kernels load at a time.

// WeightDtype::shader_code of the block types (0 to 2 are f32, f16 and bf16).
const DQ_Q8_0: u32 = 3u;
const DQ_Q4_0: u32 = 4u;
const DQ_Q4_1: u32 = 5u;
const DQ_Q4_K: u32 = 6u;
const DQ_Q6_K: u32 = 7u;

// Eight weights: a then b.
struct W8 {
    a: vec4<f32>,
    b: vec4<f32>,
}

// Four bytes from an even byte offset.
fn dq_word(o: u32) -> u32 {
    let i = o >> 2u;
    let lo = weight_word(i);
    if (o & 2u) == 0u {
        return lo;
    }
    return (lo >> 16u) | (weight_word(i + 1u) << 16u);
}

// The f16 at an even byte offset, widened.
fn dq_f16(o: u32) -> f32 {
    let pair = unpack2x16float(weight_word(o >> 2u));
    return select(pair.x, pair.y, (o & 2u) != 0u);
}

fn dq_byte(o: u32) -> u32 {
    return (weight_word(o >> 2u) >> ((o & 3u) * 8u)) & 0xffu;
}

// Four 4-bit fields of a word, one per byte, from bit `shift` of each byte.
fn dq_nibbles(word: u32, shift: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(word) >> (vec4<u32>(0u, 8u, 16u, 24u) + shift)) & vec4<u32>(15u));
}

// The four bytes of a word as signed integers.
fn dq_signed(word: u32) -> vec4<f32> {
    let spread = bitcast<vec4<i32>>(vec4<u32>(word) << vec4<u32>(24u, 16u, 8u, 0u));
    return vec4<f32>(spread >> vec4<u32>(24u));
}

// Bytes of a row of k values (k a multiple of the block size; the host checks it).
fn dq_row_bytes(ty: u32, k: u32) -> u32 {
    switch ty {
        case 3u: {
            return k / 32u * 34u;
        }
        case 4u: {
            return k / 32u * 18u;
        }
        case 5u: {
            return k / 32u * 20u;
        }
        case 6u: {
            return k / 256u * 144u;
        }
        default: {
            return k / 256u * 210u;
        }
    }
}

// Values 8 * k8 .. 8 * k8 + 8 of the row that starts at byte `row`.
fn dequant8(ty: u32, row: u32, k8: u32) -> W8 {
    if ty == DQ_Q8_0 {
        // f16 d, 32 x i8: x = q * d.
        let b = row + (k8 >> 2u) * 34u;
        let d = dq_f16(b);
        let o = b + 2u + (k8 & 3u) * 8u;
        return W8(dq_signed(dq_word(o)) * d, dq_signed(dq_word(o + 4u)) * d);
    }
    if ty == DQ_Q4_0 || ty == DQ_Q4_1 {
        // f16 d (Q4_1: then f16 m), 16 bytes: byte j holds value j in its low nibble and value
        // j + 16 in its high one. Q4_0: x = (q - 8) * d; Q4_1: x = q * d + m.
        let b = row + (k8 >> 2u) * select(18u, 20u, ty == DQ_Q4_1);
        let sub = k8 & 3u;
        let d = dq_f16(b);
        let o = b + select(2u, 4u, ty == DQ_Q4_1) + (sub & 1u) * 8u;
        let shift = (sub >> 1u) * 4u;
        let qa = dq_nibbles(dq_word(o), shift);
        let qb = dq_nibbles(dq_word(o + 4u), shift);
        if ty == DQ_Q4_0 {
            return W8((qa - 8.0) * d, (qb - 8.0) * d);
        }
        let m = dq_f16(b + 2u);
        return W8(qa * d + m, qb * d + m);
    }
    if ty == DQ_Q4_K {
        // f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) pairs for the 8 sub-blocks of 32, then
        // 128 bytes of nibbles in four 32-byte groups: group g holds sub-block 2g in its low
        // nibbles and 2g + 1 in its high ones. x = d * scale * q - dmin * min.
        let b = row + (k8 >> 5u) * 144u;
        let g8 = k8 & 31u;
        let j = g8 >> 2u;
        var sc: u32;
        var mn: u32;
        if j < 4u {
            sc = dq_byte(b + 4u + j) & 63u;
            mn = dq_byte(b + 8u + j) & 63u;
        } else {
            // The low 4 bits from byte j + 4 of the scales, the top 2 from bits 6-7 of bytes
            // j - 4 (scale) and j (min).
            let lo = dq_byte(b + 8u + j);
            sc = (lo & 15u) | ((dq_byte(b + j) >> 6u) << 4u);
            mn = (lo >> 4u) | ((dq_byte(b + 4u + j) >> 6u) << 4u);
        }
        let scale = dq_f16(b) * f32(sc);
        let min = dq_f16(b + 2u) * f32(mn);
        let o = b + 16u + (j >> 1u) * 32u + (g8 & 3u) * 8u;
        let shift = (j & 1u) * 4u;
        return W8(
            dq_nibbles(dq_word(o), shift) * scale - min,
            dq_nibbles(dq_word(o + 4u), shift) * scale - min,
        );
    }
    // Q6_K: 128 bytes ql (low 4 bits), 64 bytes qh (high 2 bits), 16 x i8 scales (one per 16
    // values), f16 d; x = d * scale * (q - 32). Value e lies in half h = e / 128, quarter
    // g = e % 128 / 32 and lane l = e % 32: its low bits in byte 64h + 32(g % 2) + l of ql (the
    // high nibble for g >= 2), its high bits at bit 2g of byte 32h + l of qh.
    let b = row + (k8 >> 5u) * 210u;
    let e = (k8 & 31u) * 8u;
    let h = e >> 7u;
    let g = (e & 127u) >> 5u;
    let l = e & 31u;
    let lo_at = b + 64u * h + 32u * (g & 1u) + l;
    let hi_at = b + 128u + 32u * h + l;
    let lo_shift = 4u * (g >> 1u);
    let sc = f32(bitcast<i32>(dq_byte(b + 192u + (e >> 4u)) << 24u) >> 24u);
    let scale = dq_f16(b + 208u) * sc;
    let hi_a = (vec4<u32>(dq_word(hi_at)) >> (vec4<u32>(0u, 8u, 16u, 24u) + 2u * g)) & vec4<u32>(3u);
    let hi_b = (vec4<u32>(dq_word(hi_at + 4u)) >> (vec4<u32>(0u, 8u, 16u, 24u) + 2u * g)) & vec4<u32>(3u);
    let qa = dq_nibbles(dq_word(lo_at), lo_shift) + vec4<f32>(hi_a * 16u) - 32.0;
    let qb = dq_nibbles(dq_word(lo_at + 4u), lo_shift) + vec4<f32>(hi_b * 16u) - 32.0;
    return W8(qa * scale, qb * scale);
}
