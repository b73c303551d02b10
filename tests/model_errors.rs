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
    // As if the adapter allowed 20000-byte bindings: the f32 embedding (264 x 32 x 4) is over.
    gpu.limits.max_storage_buffer_binding_size = 20_000;
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
        "model.embed_tokens.weight needs 33792 bytes but the adapter's max_storage_buffer_binding_size \
         is 20000 bytes (13792 bytes over)"
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
