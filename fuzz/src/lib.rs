//! What the fuzz targets share: how one fuzz input splits into the files of a model directory.

/// Splits `data` into `n` parts: each but the last is a little-endian u32 length followed by that
/// many bytes (clamped to what is left), the last part is the rest. Every byte string splits, so
/// libFuzzer's mutations never fall outside the format.
pub fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    let mut rest = data;
    for _ in 1..n {
        let (len, tail) = match rest.split_first_chunk::<4>() {
            Some((len, tail)) => (u32::from_le_bytes(*len) as usize, tail),
            None => (0, &[][..]),
        };
        let len = len.min(tail.len());
        parts.push(&tail[..len]);
        rest = &tail[len..];
    }
    parts.push(rest);
    parts
}

/// The inverse of [`split`] (for writing seed inputs).
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 < parts.len() {
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(p);
    }
    out
}

/// The model-directory target's parts, in input order.
pub const MODEL_PARTS: [&str; 6] = [
    "flags",
    "config.json",
    "model.safetensors.index.json",
    "tokenizer.json",
    "shard 1",
    "shard 2",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_inverts_split() {
        let parts: [&[u8]; 3] = [b"ab", b"", b"xyz"];
        assert_eq!(split(&join(&parts), 3), parts);
        // A length beyond the input is clamped, not an error.
        assert_eq!(split(&[9, 0, 0, 0, 1, 2], 2), [&[1u8, 2][..], &[][..]]);
    }
}
