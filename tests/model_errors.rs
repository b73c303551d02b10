//! Every class of bad model input gives one typed, one-line error naming the problem.

mod common;

use diffattn::generate::TextModel;
use diffattn::model::random::RandomModel;
use diffattn::model::{Engine, EngineOptions, ModelSource, Shard};
use diffattn::{Error, Gpu};
use std::path::PathBuf;
use std::sync::Arc;

fn temp_model(name: &str, m: &RandomModel) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("diffattn-err-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    m.write_dir(&dir).unwrap();
    dir
}

fn read(dir: &std::path::Path) -> Result<ModelSource, Error> {
    ModelSource::read_dir(dir, &mut |_, _| {})
}

/// The error of loading `dir` (reading and parsing), as its one-line message.
fn load_err(dir: &std::path::Path) -> String {
    let e = match read(dir).and_then(|s| s.parse()) {
        Ok(_) => panic!("{} loaded without error", dir.display()),
        Err(e) => e.to_string(),
    };
    std::fs::remove_dir_all(dir).ok();
    assert!(!e.contains('\n'), "multi-line message: {e}");
    e
}

fn tiny() -> RandomModel {
    RandomModel::tiny("diff_v2", 1)
}

/// A source whose single shard holds `tensors` (name, dtype, shape, bytes).
fn source_with(tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>) -> ModelSource {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, dt, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    let mut src = tiny().source();
    src.shards = vec![Shard {
        name: "model.safetensors".into(),
        bytes,
    }];
    src
}

fn f32_tensors() -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    tiny()
        .tensors()
        .into_iter()
        .map(|(n, s, v)| {
            (
                n,
                safetensors::Dtype::F32,
                s,
                bytemuck::cast_slice::<f32, u8>(&v).to_vec(),
            )
        })
        .collect()
}

/// The parse error of the tiny model with one config.json field set to `value`.
fn edit(key: &str, value: serde_json::Value) -> String {
    let mut src = tiny().source();
    let mut cfg: serde_json::Value = serde_json::from_str(&src.config_json).unwrap();
    cfg[key] = value;
    src.config_json = cfg.to_string();
    parse_err(src)
}

fn parse_err(src: ModelSource) -> String {
    match src.parse() {
        Ok(_) => panic!("parsed without error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_directory_and_files() {
    let e = read("/nonexistent/diffattn-model".as_ref())
        .err()
        .unwrap()
        .to_string();
    assert_eq!(e, "model directory not found: /nonexistent/diffattn-model");

    let dir = temp_model("noconfig", &tiny());
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    assert!(
        e.starts_with("config.json not found: ") && e.ends_with("/config.json"),
        "{e}"
    );

    let dir = temp_model("noweights", &tiny());
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(
        e.starts_with("weights (model.safetensors or model.safetensors.index.json) not found: "),
        "{e}"
    );

    let mut m = tiny();
    m.shards = 2;
    let dir = temp_model("noshard", &m);
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(
        e.starts_with("weight shard not found: ")
            && e.ends_with("model-00002-of-00002.safetensors"),
        "{e}"
    );

    // No tokenizer.json: the engine alone loads, a text model does not.
    let dir = temp_model("notok", &tiny());
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let src = read(&dir).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let gpu = Arc::new(common::gpu());
    let e = TextModel::from_source(gpu, src, EngineOptions::default(), &mut |_, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("tokenizer.json not found: ") && e.ends_with("/tokenizer.json"),
        "{e}"
    );
}

#[test]
fn malformed_config_json() {
    let dir = temp_model("badjson", &tiny());
    std::fs::write(dir.join("config.json"), "{ \"vocab_size\": 264, ").unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("config.json: malformed config.json: EOF while parsing"),
        "{e}"
    );

    let mut src = tiny().source();
    src.config_json = src
        .config_json
        .replace("\"hidden_size\"", "\"hidden_sise\"");
    let e = parse_err(src);
    assert!(
        e.contains("malformed config.json: missing field `hidden_size`"),
        "{e}"
    );

    let mut src = tiny().source();
    src.config_json = src.config_json.replace("\"diff_v2\"", "\"diff_v3\"");
    let e = parse_err(src);
    assert!(
        e.ends_with(
            "invalid config.json: attention = \"diff_v3\" (expected \"diff_v2\" or \"standard\")"
        ),
        "{e}"
    );

    let mut src = tiny().source();
    let mut cfg: serde_json::Value = serde_json::from_str(&src.config_json).unwrap();
    cfg["num_key_value_heads"] = 3.into();
    src.config_json = cfg.to_string();
    let e = parse_err(src);
    assert!(
        e.ends_with("num_attention_heads (2) must be a multiple of num_key_value_heads (3)"),
        "{e}"
    );
}

/// Values that would give NaN (eps = 0) or wrap u32 index arithmetic in the kernels (absurd head
/// counts) are refused with the field named.
#[test]
fn config_values_that_would_break_the_arithmetic() {
    for eps in [
        serde_json::json!(0.0),
        serde_json::json!(-1e-5),
        serde_json::json!(2.0),
    ] {
        let e = edit("rms_norm_eps", eps);
        assert!(
            e.contains("rms_norm_eps = ") && e.contains("must be a positive number below 1"),
            "{e}"
        );
    }
    let e = edit("num_attention_heads", (1u64 << 31).into());
    assert!(
        e.contains("num_attention_heads = 2147483648 is beyond what the engine supports"),
        "{e}"
    );
    let e = edit("max_position_embeddings", 4_000_000_000u64.into());
    assert!(
        e.contains("max_position_embeddings = 4000000000 is beyond"),
        "{e}"
    );
}

/// A NaN or infinite weight is refused at load with the tensor named, in every dtype.
#[test]
fn non_finite_weights_are_refused_by_name() {
    for (bad, dtype) in [
        (f32::NAN, safetensors::Dtype::F32),
        (f32::INFINITY, safetensors::Dtype::F16),
        (f32::NEG_INFINITY, safetensors::Dtype::BF16),
    ] {
        let tensors = f32_tensors()
            .into_iter()
            .map(|(n, _, shape, bytes)| {
                let mut v: Vec<f32> = bytemuck::cast_slice(&bytes).to_vec();
                if n == "model.layers.0.mlp.up_proj.weight" {
                    v[7] = bad;
                }
                let bytes = match dtype {
                    safetensors::Dtype::F16 => v
                        .iter()
                        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                        .collect(),
                    safetensors::Dtype::BF16 => v
                        .iter()
                        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                        .collect(),
                    _ => bytemuck::cast_slice::<f32, u8>(&v).to_vec(),
                };
                (n, dtype, shape, bytes)
            })
            .collect();
        let e = parse_err(source_with(tensors));
        assert!(
            e.contains(
                "tensor `model.layers.0.mlp.up_proj.weight` holds a non-finite value (NaN or infinity) at element 7"
            ),
            "{dtype:?}: {e}"
        );
    }
}

#[test]
fn config_values_that_contradict_the_weights() {
    assert_eq!(
        edit("num_hidden_layers", 1.into()),
        "config.json contradicts the weights: num_hidden_layers = 1 but the weights have layer 1 \
         (`model.layers.1.input_layernorm.weight`)"
    );
    assert_eq!(
        edit("vocab_size", 300.into()),
        "config.json contradicts the weights: vocab_size = 300 and hidden_size = 32 imply \
         model.embed_tokens.weight of shape [300, 32], but it is [264, 32]"
    );
    assert_eq!(
        edit("attention", "standard".into()),
        "tensor `model.layers.0.self_attn.q_proj.weight` has the wrong shape: expected [32, 32], got [64, 32]"
    );
    let mut m = tiny();
    m.tied = false;
    let mut src = m.source();
    src.config_json = src.config_json.replace(
        "\"tie_word_embeddings\": false",
        "\"tie_word_embeddings\": true",
    );
    assert_eq!(
        parse_err(src),
        "config.json contradicts the weights: tie_word_embeddings = true but the weights have `lm_head.weight`"
    );
}

#[test]
fn damaged_or_truncated_safetensors() {
    let dir = temp_model("trunc", &tiny());
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(
        e.ends_with(
            "model.safetensors: safetensors file is truncated (Metadata incomplete buffer)"
        ) || e.contains("model.safetensors: safetensors file is truncated"),
        "{e}"
    );

    let dir = temp_model("trunc8", &tiny());
    std::fs::write(dir.join("model.safetensors"), [1u8, 2, 3]).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors: safetensors file is truncated"),
        "{e}"
    );

    let dir = temp_model("damaged", &tiny());
    let p = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[8..16].copy_from_slice(b"#garbage");
    std::fs::write(&p, &bytes).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors: safetensors header is damaged ("),
        "{e}"
    );
}

#[test]
fn missing_tensor() {
    let t: Vec<_> = f32_tensors()
        .into_iter()
        .filter(|t| t.0 != "model.layers.1.mlp.up_proj.weight")
        .collect();
    assert_eq!(
        parse_err(source_with(t)),
        "missing tensor `model.layers.1.mlp.up_proj.weight` (looked in model.safetensors)"
    );
}

#[test]
fn wrong_shape_and_dtype() {
    let mut t = f32_tensors();
    let i = t
        .iter()
        .position(|t| t.0 == "model.layers.0.mlp.gate_proj.weight")
        .unwrap();
    t[i].2 = vec![32, 48];
    assert_eq!(
        parse_err(source_with(t)),
        "tensor `model.layers.0.mlp.gate_proj.weight` has the wrong shape: expected [48, 32], got [32, 48]"
    );
    let mut t = f32_tensors();
    let i = t.iter().position(|t| t.0 == "model.norm.weight").unwrap();
    t[i].1 = safetensors::Dtype::I32;
    assert_eq!(
        parse_err(source_with(t)),
        "model.safetensors: tensor `model.norm.weight` has dtype I32; expected F32, F16 or BF16"
    );
}

#[test]
fn tokenizer_vocab_larger_than_the_model() {
    let mut m = tiny();
    m.vocab_size = 200;
    let gpu = Arc::new(common::gpu());
    let e = TextModel::from_source(gpu, m.source(), EngineOptions::default(), &mut |_, _| {})
        .err()
        .unwrap();
    assert!(matches!(e, Error::Tokenizer(_)));
    assert_eq!(
        e.to_string(),
        "tokenizer: tokenizer.json has 257 tokens but the model's vocab_size is 200"
    );
}

#[test]
fn model_that_exceeds_the_adapter_limits() {
    let mut gpu: Gpu = common::gpu();
    // As if the adapter's bindings could not hold one row of the f32 embedding (264 x 32 x 4
    // bytes, rows of 128): refused, not split (a larger table is split by rows).
    let limit = 124;
    gpu.limits.max_storage_buffer_binding_size = limit;
    let (cfg, weights, _) = tiny().source().parse().unwrap();
    let e = Engine::new(
        Arc::new(gpu),
        &cfg,
        &weights,
        EngineOptions::default(),
        &mut |_, _| {},
    )
    .err()
    .unwrap();
    assert!(matches!(e, Error::Limit { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "model.embed_tokens.weight needs 33792 bytes but the adapter's \
             max_storage_buffer_binding_size is {limit} bytes ({} bytes over)",
            33792 - limit
        )
    );
    // A context whose KV cache does not fit says so too.
    let mut gpu: Gpu = common::gpu();
    gpu.limits.max_storage_buffer_binding_size = 40_000;
    let mut m = tiny();
    m.context = 4096;
    let (cfg, weights, _) = m.source().parse().unwrap();
    let opts = EngineOptions {
        prefill_chunk: 8,
        ..Default::default()
    };
    let e = Engine::new(Arc::new(gpu), &cfg, &weights, opts, &mut |_, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("the KV cache of one layer needs 262144 bytes but the adapter's max_storage_buffer_binding_size is 40000 bytes (222144 bytes over)"), "{e}");
}

/// A safetensors file from a hand-written header (whatever offsets it claims) and `data_len`
/// data bytes.
fn raw_safetensors(header: &str, data_len: usize) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, data_len));
    bytes
}

/// The error of parsing the tiny model with its weights replaced by `bytes`.
fn shard_err(bytes: Vec<u8>) -> Error {
    let mut src = tiny().source();
    src.shards = vec![Shard {
        name: "model.safetensors".into(),
        bytes,
    }];
    src.parse().err().expect("parsed without error")
}

/// Tensor byte ranges that overlap, leave a gap, run past the end of the file or claim more
/// elements than usize holds are refused before any tensor is read.
#[test]
fn tensor_byte_ranges_that_overlap_or_run_past_the_file() {
    let cases = [
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
            "model.safetensors: safetensors header is damaged (invalid offset for tensor `b`)",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#,
            20,
            "model.safetensors: safetensors header is damaged (invalid offset for tensor `b`)",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
            "model.safetensors: safetensors file is truncated (incomplete metadata, file not fully covered)",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}"#,
            16,
            "model.safetensors: safetensors header is damaged (invalid shape, data type, or offset for tensor)",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#,
            16,
            "model.safetensors: safetensors header is damaged (overflow computing buffer size from shape and/or element type)",
        ),
    ];
    for (header, data_len, want) in cases {
        let e = shard_err(raw_safetensors(header, data_len));
        assert!(matches!(e, Error::Format { .. }), "{e:?}");
        assert_eq!(e.to_string(), want, "{header}");
    }
}

/// A header length beyond the file (or beyond any sane header) is refused without reading past
/// the end or allocating for it.
#[test]
fn header_length_beyond_the_file() {
    let mut bytes = raw_safetensors(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        4,
    );
    bytes[..8].copy_from_slice(&1_000_000u64.to_le_bytes());
    assert_eq!(
        shard_err(bytes.clone()).to_string(),
        "model.safetensors: safetensors file is truncated (invalid header length)"
    );
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(
        shard_err(bytes).to_string(),
        "model.safetensors: safetensors header is damaged (header too large)"
    );
}

/// config.json, the shard index and tokenizer.json that are not UTF-8 are refused naming the file.
#[test]
fn non_utf8_json_files() {
    let not_utf8 = b"{\"vocab_size\": \xff\xfe 264}";
    let dir = temp_model("utf8cfg", &tiny());
    std::fs::write(dir.join("config.json"), not_utf8).unwrap();
    let e = load_err(&dir);
    assert!(
        e.ends_with("/config.json: stream did not contain valid UTF-8"),
        "{e}"
    );

    let mut m = tiny();
    m.shards = 2;
    let dir = temp_model("utf8index", &m);
    std::fs::write(dir.join("model.safetensors.index.json"), not_utf8).unwrap();
    let e = load_err(&dir);
    assert!(
        e.ends_with("/model.safetensors.index.json: stream did not contain valid UTF-8"),
        "{e}"
    );

    // Inside a string, where a lenient parser would skip it.
    let mut src = tiny().source();
    let mut tok = src.tokenizer_json.take().unwrap();
    let at = tok.windows(3).position(|w| w == b"\"0\"").unwrap_or(10);
    tok.insert(at + 1, 0xff);
    let gpu = Arc::new(common::gpu());
    src.tokenizer_json = Some(tok);
    let e = TextModel::from_source(gpu, src, EngineOptions::default(), &mut |_, _| {})
        .err()
        .unwrap();
    assert!(matches!(e, Error::Tokenizer(_)), "{e:?}");
    assert!(
        e.to_string().starts_with(
            "tokenizer: malformed tokenizer.json: invalid unicode code point at line 1"
        ),
        "{e}"
    );
}

/// Zero, absurd and overflowing dimensions: each is refused with the field named, before any
/// size is computed from it.
#[test]
fn config_dimensions_that_are_zero_absurd_or_overflow() {
    for key in [
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "max_position_embeddings",
    ] {
        // head_dim 0 (or absent) means hidden_size / num_attention_heads, as in Hugging Face
        // configs; every other zero is refused.
        if key != "head_dim" {
            let e = edit(key, 0.into());
            assert!(
                e.ends_with(&format!("invalid config.json: {key} must be at least 1")),
                "{e}"
            );
        }
        // A multiple of 8, so that the size bound is what refuses it.
        let e = edit(key, (u32::MAX - 7).into());
        assert!(
            e.contains(&format!(
                "invalid config.json: {key} = 4294967288 is beyond what the engine supports"
            )),
            "{e}"
        );
        // Beyond u32 altogether: a type error of the JSON, not a wrap.
        let e = edit(key, (1u64 << 40).into());
        assert!(
            e.contains(
                "malformed config.json: invalid value: integer `1099511627776`, expected u32"
            ),
            "{e}"
        );
        let e = edit(key, (-1).into());
        assert!(
            e.contains("malformed config.json: invalid value: integer `-1`, expected u32"),
            "{e}"
        );
    }
    // Each dimension within its bound, but vocab x hidden = 2^39 elements: the sizes are computed
    // without wrapping and the shape compared as it is.
    let mut src = tiny().source();
    let mut cfg: serde_json::Value = serde_json::from_str(&src.config_json).unwrap();
    cfg["vocab_size"] = (1u64 << 22).into();
    cfg["hidden_size"] = (1u64 << 17).into();
    cfg["intermediate_size"] = (1u64 << 19).into();
    src.config_json = cfg.to_string();
    assert_eq!(
        parse_err(src),
        "config.json contradicts the weights: vocab_size = 4194304 and hidden_size = 131072 imply \
         model.embed_tokens.weight of shape [4194304, 131072], but it is [264, 32]"
    );
}

/// A head_dim the attention kernels do not run: refused by the config where it cannot work for
/// the matrix kernels, and by the engine where the attention kernels lack it, naming it.
#[test]
fn unsupported_head_dim() {
    let e = edit("head_dim", 12.into());
    assert!(
        e.ends_with("invalid config.json: head_dim = 12 must be a multiple of 8"),
        "{e}"
    );
    let mut m = tiny();
    m.head_dim = 264;
    let (cfg, weights, _) = m.source().parse().unwrap();
    let e = Engine::new(
        Arc::new(common::gpu()),
        &cfg,
        &weights,
        EngineOptions::default(),
        &mut |_, _| {},
    )
    .err()
    .unwrap();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "unsupported: head_dim 264 (supported: multiples of 8 from 8 to 256)"
    );
}

/// Prompts the context cannot hold, and an empty prompt where the model has neither BOS nor EOS
/// to start from: a typed error on the first piece, and the model generates again afterwards.
#[test]
fn empty_and_over_long_prompts() {
    use diffattn::generate::GenerateOptions;
    let gpu = Arc::new(common::gpu());
    let mut m = tiny();
    m.context = 32;
    let mut src = m.source();
    src.config_json = src
        .config_json
        .replace("\"eos_token_id\": 0", "\"eos_token_id\": null");
    let mut tm =
        TextModel::from_source(gpu, src, EngineOptions::default(), &mut |_, _| {}).unwrap();
    let first = |tm: &mut TextModel, prompt: &str| -> Result<u32, Error> {
        let mut g = tm.generate(
            prompt,
            GenerateOptions {
                max_tokens: 2,
                ..Default::default()
            },
        )?;
        g.next_blocking().expect("no piece").map(|p| p.id)
    };
    let e = first(&mut tm, "").unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "invalid configuration: the prompt is empty and the model has no bos_token_id to start from"
    );
    let e = first(&mut tm, &"x".repeat(40)).unwrap_err();
    assert!(matches!(e, Error::Model(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "model: the prompt (40 tokens) does not fit the context: 32 of its 32 positions are free \
         (shorten the prompt or raise the context)"
    );
    // Exactly the context: the prompt fits, its one token comes, and generation ends at the full
    // cache, not with an error.
    let mut g = tm
        .generate(&"x".repeat(32), GenerateOptions::default())
        .unwrap();
    assert!(g.next_blocking().unwrap().is_ok());
    assert!(g.next_blocking().is_none());
    assert_eq!(
        g.stop_reason(),
        Some(diffattn::generate::StopReason::ContextFull)
    );
    drop(g);
    assert!(first(&mut tm, "ok").is_ok());
}

/// Finite weights whose products overflow f32 give infinite logits: an error on both read-back
/// paths (logits to the CPU, tokens picked on the GPU) and through generation, never a token.
#[test]
fn non_finite_logits_are_an_error() {
    // A final norm weight of 3e38: every normalised row overflows to infinity.
    let overflowing = || {
        let tensors = f32_tensors()
            .into_iter()
            .map(|(n, dt, shape, bytes)| {
                if n == "model.norm.weight" {
                    let v = vec![3e38f32; shape[0]];
                    (n, dt, shape, bytemuck::cast_slice::<f32, u8>(&v).to_vec())
                } else {
                    (n, dt, shape, bytes)
                }
            })
            .collect();
        source_with(tensors)
    };
    let (cfg, weights, _) = overflowing().parse().unwrap();
    let gpu = Arc::new(common::gpu());
    let opts = EngineOptions::default();
    let mut e = Engine::new(gpu.clone(), &cfg, &weights, opts.clone(), &mut |_, _| {}).unwrap();
    let err = e.prefill_blocking(&[1, 2, 3]).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("the logits holds a non-finite value"),
        "{err}"
    );
    e.reset();
    let err = e.prefill_pick_blocking(&[1, 2, 3]).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err:?}");
    assert!(err.to_string().starts_with("the logits of step"), "{err}");

    let mut tm = TextModel::from_source(gpu, overflowing(), opts, &mut |_, _| {}).unwrap();
    for pick_on_gpu in [false, true] {
        let o = diffattn::generate::GenerateOptions {
            max_tokens: 4,
            pick_on_gpu,
            ..Default::default()
        };
        let first = tm.generate("abc", o).unwrap().next_blocking().unwrap();
        assert!(
            matches!(first, Err(Error::NonFinite { .. })),
            "pick_on_gpu {pick_on_gpu}: {first:?}"
        );
    }
}

/// Ids beyond the model's vocabulary (from a caller, or a tokenizer that slipped through) are
/// refused by the engine before they index the embedding, and the engine stays usable.
#[test]
fn token_ids_beyond_the_vocabulary_are_refused_by_the_engine() {
    let (cfg, weights, _) = tiny().source().parse().unwrap();
    let gpu = Arc::new(common::gpu());
    let mut e = Engine::new(
        gpu,
        &cfg,
        &weights,
        EngineOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    for ids in [vec![264u32], vec![1, 2, u32::MAX]] {
        let err = e.prefill_blocking(&ids).unwrap_err();
        assert!(matches!(err, Error::Model(_)), "{err:?}");
        let bad = ids.last().unwrap();
        assert_eq!(
            err.to_string(),
            format!("model: token id {bad} is outside the vocabulary (264)")
        );
        assert!(e.prefill_pick_blocking(&ids).is_err());
    }
    assert_eq!(e.position(), 0, "a refused call must not touch the cache");
    e.prefill_blocking(&[1, 2]).unwrap();
    let err = e.step_blocking(300).unwrap_err();
    assert_eq!(
        err.to_string(),
        "model: token id 300 is outside the vocabulary (264)"
    );
    assert_eq!(e.position(), 2);
}
