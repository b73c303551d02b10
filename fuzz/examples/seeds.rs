//! Writes the seed corpus: a valid random model directory (single file and two shards, DIFF V2
//! and standard), valid `attn` inputs, and a small valid llama GGUF with quantized tensors. Valid
//! seeds let the fuzzer start deep inside each loader instead of at its first magic check.
//!
//! `cd fuzz && cargo run --example seeds` writes corpus/<target>/seed-* (relative to the
//! working directory, so run it from fuzz/).

use diffattn::model::random::RandomModel;
use diffattn::model::weights::WeightDtype;
use diffattn_fuzz::join;
use safetensors::{Dtype, tensor::TensorView};
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn model_dir_seeds() {
    for (i, (attention, shards, dtype)) in [
        ("diff_v2", 1, WeightDtype::F16),
        ("standard", 2, WeightDtype::BF16),
    ]
    .into_iter()
    .enumerate()
    {
        let m = RandomModel {
            vocab_size: 264,
            hidden_size: 16,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            head_dim: 8,
            intermediate_size: 16,
            shards,
            dtype,
            ..RandomModel::tiny(attention, i as u64)
        };
        let files = m.files();
        let get = |n: &str| -> Vec<u8> {
            files
                .iter()
                .find(|(f, _)| f == n)
                .map(|(_, b)| b.clone())
                .unwrap_or_default()
        };
        let weights: Vec<&Vec<u8>> = files
            .iter()
            .filter(|(f, _)| f.ends_with(".safetensors"))
            .map(|(_, b)| b)
            .collect();
        let flags = [(shards - 1) as u8];
        let config = get("config.json");
        let index = get("model.safetensors.index.json");
        let tokenizer = get("tokenizer.json");
        let empty = Vec::new();
        let parts: [&[u8]; 6] = [
            &flags,
            &config,
            &index,
            &tokenizer,
            weights[0],
            weights.get(1).copied().unwrap_or(&empty),
        ];
        write("model_dir", &format!("seed-{attention}"), &join(&parts));
    }
}

fn attn_seeds() {
    let f32s = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| (i as f32 * 0.1).to_le_bytes())
            .collect()
    };
    for (i, (flags, q_heads)) in [(2u8, 4usize), (1, 2)].into_iter().enumerate() {
        let (n, s, hkv, d) = (2, 3, 1, 8);
        let q = f32s(n * q_heads * d);
        let kv = f32s(s * hkv * d);
        let lam = f32s(n * q_heads / 2);
        let mut views = vec![
            (
                "q",
                TensorView::new(Dtype::F32, vec![n, q_heads, d], &q).unwrap(),
            ),
            (
                "k",
                TensorView::new(Dtype::F32, vec![s, hkv, d], &kv).unwrap(),
            ),
            (
                "v",
                TensorView::new(Dtype::F32, vec![s, hkv, d], &kv).unwrap(),
            ),
        ];
        if flags & 1 == 0 {
            views.push((
                "lam",
                TensorView::new(Dtype::F32, vec![n, q_heads / 2], &lam).unwrap(),
            ));
        }
        let file = safetensors::serialize(views, None).unwrap();
        let mut input = vec![flags, 1, 0, 0, 0];
        input.extend(file);
        write("attn_input", &format!("seed-{i}"), &input);
    }
}

/// Little-endian GGUF writer for the seed.
#[derive(Default)]
struct B(Vec<u8>);

impl B {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend(s.as_bytes());
        self
    }
}

fn gguf_seed() {
    let (d, ff, heads, kv_heads) = (32u64, 64u64, 2u32, 1u32);
    // Byte-level GPT-2 vocabulary: the 256 byte characters and one merge.
    let byte_chars: Vec<String> = {
        let printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
        let mut extra = 0;
        (0..256u32)
            .map(|b| {
                let c = if printable.contains(&b) {
                    b
                } else {
                    extra += 1;
                    255 + extra
                };
                char::from_u32(c).unwrap().to_string()
            })
            .collect()
    };
    let mut tokens = byte_chars.clone();
    tokens.push("He".into());
    tokens.push("<|endoftext|>".into());
    let vocab = tokens.len() as u64;
    let mut types = vec![1i32; tokens.len()];
    *types.last_mut().unwrap() = 3;

    let mut kv = B::default();
    let mut n_kv = 0u64;
    let kv_u32 = |b: &mut B, k: &str, v: u32| {
        b.str(k).u32(4).u32(v);
    };
    let count = |n: &mut u64| *n += 1;
    kv.str("general.architecture").u32(8).str("llama");
    count(&mut n_kv);
    for (k, v) in [
        ("llama.block_count", 1),
        ("llama.embedding_length", d as u32),
        ("llama.feed_forward_length", ff as u32),
        ("llama.attention.head_count", heads),
        ("llama.attention.head_count_kv", kv_heads),
        ("llama.context_length", 64),
        ("tokenizer.ggml.eos_token_id", vocab as u32 - 1),
    ] {
        kv_u32(&mut kv, k, v);
        count(&mut n_kv);
    }
    kv.str("llama.attention.layer_norm_rms_epsilon")
        .u32(6)
        .0
        .extend(1e-5f32.to_le_bytes());
    count(&mut n_kv);
    kv.str("tokenizer.ggml.model").u32(8).str("gpt2");
    count(&mut n_kv);
    kv.str("tokenizer.ggml.pre").u32(8).str("smollm");
    count(&mut n_kv);
    kv.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(vocab);
    for t in &tokens {
        kv.str(t);
    }
    count(&mut n_kv);
    kv.str("tokenizer.ggml.merges")
        .u32(9)
        .u32(8)
        .u64(1)
        .str("H e");
    count(&mut n_kv);
    kv.str("tokenizer.ggml.token_type").u32(9).u32(5).u64(vocab);
    for t in &types {
        kv.0.extend(t.to_le_bytes());
    }
    count(&mut n_kv);

    // Tensors: (name, ggml dims, type id); one of each supported block-32 type and the floats.
    let kvd = (kv_heads as u64) * d / heads as u64;
    let tensors: Vec<(&str, Vec<u64>, u32)> = vec![
        ("token_embd.weight", vec![d, vocab], 1),
        ("output_norm.weight", vec![d], 0),
        ("blk.0.attn_norm.weight", vec![d], 0),
        ("blk.0.attn_q.weight", vec![d, d], 8),
        ("blk.0.attn_k.weight", vec![d, kvd], 2),
        ("blk.0.attn_v.weight", vec![d, kvd], 3),
        ("blk.0.attn_output.weight", vec![d, d], 30),
        ("blk.0.ffn_norm.weight", vec![d], 0),
        ("blk.0.ffn_gate.weight", vec![d, ff], 8),
        ("blk.0.ffn_up.weight", vec![d, ff], 1),
        ("blk.0.ffn_down.weight", vec![ff, d], 8),
    ];
    let bytes_of = |dims: &[u64], ty: u32| -> usize {
        let n: u64 = dims.iter().product();
        (match ty {
            0 => n * 4,
            1 | 30 => n * 2,
            2 => n / 32 * 18,
            3 => n / 32 * 20,
            8 => n / 32 * 34,
            _ => unreachable!(),
        }) as usize
    };
    let mut head = B::default();
    head.0.extend(b"GGUF");
    head.u32(3).u64(tensors.len() as u64).u64(n_kv);
    head.0.extend(&kv.0);
    let mut data: Vec<u8> = Vec::new();
    for (name, dims, ty) in &tensors {
        while !data.len().is_multiple_of(32) {
            data.push(0);
        }
        head.str(name).u32(dims.len() as u32);
        for &x in dims {
            head.u64(x);
        }
        head.u32(*ty).u64(data.len() as u64);
        let n = bytes_of(dims, *ty);
        // Small finite values in every encoding: f16 and bf16 0x3c00/0x3c00-ish patterns, block
        // scales of 0x2000 (a small f16), quants anything.
        let start = data.len();
        data.extend((0..n).map(|i| if i % 2 == 1 { 0x20 } else { (i % 7) as u8 }));
        if *ty == 0 {
            for c in data[start..].chunks_exact_mut(4) {
                c.copy_from_slice(&1.0f32.to_le_bytes());
            }
        }
    }
    while !head.0.len().is_multiple_of(32) {
        head.0.push(0);
    }
    head.0.extend(data);
    diffattn::model::gguf::load("seed", &head.0).expect("the GGUF seed loads");
    write("gguf", "seed-llama", &head.0);
}

fn main() {
    model_dir_seeds();
    attn_seeds();
    gguf_seed();
    // The model-directory seeds must load too, or the fuzzer starts from a refused input.
    for f in std::fs::read_dir("corpus/model_dir").unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        let p = diffattn_fuzz::split(&bytes, diffattn_fuzz::MODEL_PARTS.len());
        let n = if p[0][0] & 1 == 0 { 1 } else { 2 };
        let source = diffattn::model::ModelSource {
            origin: "seed".into(),
            config_json: String::from_utf8(p[1].to_vec()).unwrap(),
            shards: p[4..4 + n]
                .iter()
                .map(|b| diffattn::model::Shard {
                    name: "s".into(),
                    bytes: b.to_vec(),
                })
                .collect(),
            tokenizer_json: Some(p[3].to_vec()),
            gguf: None,
        };
        source.parse().expect("the model-directory seed loads");
    }
    println!("seeds written under corpus/");
}
