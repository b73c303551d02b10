//! A Hugging Face `LlamaForCausalLM` directory (tests/data/hf-llama-tiny: random weights, saved by
//! transformers' `save_pretrained` through tools/make_hf_llama.py, with transformers' float64
//! logits for fixed ids) loads as it is: standard attention, half-split RoPE reordered into the
//! engine's adjacent pairs at load, and the logits agree with transformers'.

mod common;

use diffattn::model::files::ModelSource;
use diffattn::model::{Engine, EngineOptions};
use diffattn::reference::compare;
use diffattn::reference::model::RefModel;
use std::path::Path;
use std::sync::Arc;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hf-llama-tiny")
}

fn golden() -> (Vec<u32>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(dir().join("logits.json")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = g["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let logits = g["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    (ids, logits)
}

#[test]
fn hugging_face_llama_matches_transformers() {
    let source = ModelSource::read(&dir(), &mut |_, _| {}).unwrap();
    let (cfg, weights, _) = source.parse().unwrap();
    assert_eq!(cfg.attention, "standard");
    assert_eq!(cfg.rope_pairs, "half");
    assert_eq!((cfg.head_dim, cfg.rope_theta), (16, 10000.0));
    let (ids, want) = golden();

    // The float64 reference on the reordered weights: the reordering is exact.
    let reference = RefModel::new(&cfg, &weights).unwrap();
    let exact = reference.forward(&ids);
    for (t, (got, w)) in exact.iter().zip(&want).enumerate() {
        let got: Vec<f32> = got.iter().map(|&x| x as f32).collect();
        let (_, rel) = compare(&got, w);
        assert!(
            rel <= 1e-6,
            "float64 reference position {t}: rel L2 {rel:.2e}"
        );
    }

    // The GPU engine, position by position.
    let gpu = Arc::new(common::gpu());
    let mut engine = Engine::new(
        gpu,
        &cfg,
        &weights,
        EngineOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let logits = common::teacher_forced(&mut engine, &ids[..1], &ids[1..]);
    assert_eq!(logits.len(), want.len());
    for (t, (got, w)) in logits.iter().zip(&want).enumerate() {
        let (_, rel) = compare(got, w);
        assert!(rel <= 1e-4, "GPU position {t}: rel L2 {rel:.2e}");
    }
}

#[test]
fn the_rope_pairing_matters_and_must_be_stated() {
    let config = std::fs::read_to_string(dir().join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&config).unwrap();
    let weights = std::fs::read(dir().join("model.safetensors")).unwrap();
    let load = |cfg: &serde_json::Value| {
        ModelSource {
            origin: "hf".into(),
            config_json: cfg.to_string(),
            shards: vec![diffattn::model::Shard {
                name: "model.safetensors".into(),
                bytes: weights.clone(),
            }],
            tokenizer_json: None,
            gguf: None,
        }
        .parse()
    };
    // Read as adjacent pairs, the same weights compute something else.
    cfg["rope_pairs"] = "adjacent".into();
    let (c, w, _) = load(&cfg).unwrap();
    let (ids, want) = golden();
    let wrong = RefModel::new(&c, &w).unwrap().forward(&ids);
    let last: Vec<f32> = wrong.last().unwrap().iter().map(|&x| x as f32).collect();
    let (_, rel) = compare(&last, want.last().unwrap());
    assert!(
        rel > 1e-2,
        "adjacent pairs matched half-split logits (rel L2 {rel:.2e})"
    );
    // Without the Llama class and without the field, the pairing is ambiguous: refused.
    cfg.as_object_mut().unwrap().remove("rope_pairs");
    cfg["architectures"] = serde_json::json!([]);
    let err = load(&cfg).err().unwrap().to_string();
    assert!(err.contains("rope_pairs"), "{err}");
    // RoPE scaling is refused by name.
    cfg["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    cfg["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0});
    let err = load(&cfg).err().unwrap().to_string();
    assert!(err.contains("rope_scaling"), "{err}");
}
