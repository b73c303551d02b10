//! A GGUF file from strangers: the container, every tensor's dequantization, the llama summary,
//! the tokenizer conversion and the whole model mapping (`model::gguf::load`).
#![no_main]

use diffattn::gguf::{self, Gguf, tokenizer::TokenizerMetadata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else {
        return;
    };
    // A file without tensors may end before its (aligned) data section would start.
    assert!(g.tensors().is_empty() || g.data_offset() <= data.len() as u64);
    for (key, value) in g.metadata() {
        assert_eq!(g.get(key), Some(value));
    }
    let mut total = 0u64;
    for t in g.tensors() {
        // Each tensor's bytes lie inside the file, at its declared size.
        let bytes = g.tensor_bytes(t);
        assert_eq!(bytes.len() as u64, t.n_bytes, "tensor `{}`", t.name);
        let p = bytes.as_ptr() as usize;
        assert!(
            bytes.is_empty()
                || (p >= data.as_ptr() as usize
                    && p + bytes.len() <= data.as_ptr() as usize + data.len())
        );
        assert_eq!(t.dims.iter().product::<u64>(), t.n_elements);
        total += t.n_elements;
        // The dequantized size is bounded by the input (8 elements per byte at most), so this
        // cannot be an allocation the input did not pay for.
        assert!(t.n_elements <= 8 * t.n_bytes.max(1));
        let values =
            gguf::dequantize(t.ty, bytes, t.n_elements).expect("a parsed tensor dequantizes");
        assert_eq!(values.len() as u64, t.n_elements);
    }
    assert!(total <= 8 * data.len() as u64);
    let _ = gguf::tensor_name_map(&g);
    if let Ok(s) = gguf::model_summary(&g) {
        assert_eq!(s.head_dim * s.n_heads, s.d_model);
        for (name, dims) in gguf::expected_tensors(&s) {
            assert_eq!(g.tensor(&name).map(|t| &t.dims), Some(&dims));
        }
    }
    if let Ok(tok) = TokenizerMetadata::from_gguf(&g) {
        let _ = tok.control_token_ids();
        if let Ok(json) = tok.to_tokenizer_json() {
            let bytes = serde_json::to_vec(&json).expect("serialises");
            // The converter's output goes through the tokenizer library as `load` hands it on;
            // an error is allowed (a fuzzed vocabulary need not make a valid BPE), a panic not.
            if let Ok(t) = diffattn::tokenizer::Tokenizer::from_bytes(&bytes)
                && let Ok(ids) = t.encode("Hello, world", None)
            {
                let _ = t.decode(&ids);
            }
        }
    }
    if let Ok((cfg, w, tokenizer)) = diffattn::model::gguf::load("fuzz", data) {
        cfg.validate().expect("a loaded config validates");
        w.check(&cfg).expect("loaded weights match their config");
        assert!(tokenizer.is_some());
    }
});
