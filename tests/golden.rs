//! The shipped model against golden data from the PyTorch reference (float32 on the f16
//! weights, upcast): tests/data/golden-*.json. Missing files or a missing model fail the test: a
//! check that cannot run must not pass.

mod common;

use diffattn::generate::TextModel;
use diffattn::model::EngineOptions;
use diffattn::sample::argmax;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(serde::Deserialize)]
struct Top {
    id: u32,
    logit: f64,
}

#[derive(serde::Deserialize)]
struct Golden {
    model: String,
    prompt: String,
    prompt_ids: Vec<u32>,
    top20: Vec<Top>,
    logits_l2: f64,
    greedy_ids: Vec<u32>,
    greedy_text: String,
}

fn golden_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        name.starts_with("golden-") && name.ends_with(".json")
    });
    files.sort();
    files
}

#[test]
fn shipped_model_matches_the_pytorch_golden_data() {
    let files = golden_files();
    assert!(
        files.len() >= 3,
        "expected tests/data/golden-{{1,2,3}}.json, found {}",
        files.len()
    );
    let gpu = Arc::new(common::gpu());
    let mut loaded: Option<(String, TextModel)> = None;
    for file in &files {
        let g: Golden = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(&g.model);
        assert!(
            dir.join("config.json").is_file(),
            "{} names the model {}, which is absent",
            file.display(),
            g.model
        );
        if loaded.as_ref().is_none_or(|(m, _)| m != &g.model) {
            let m =
                TextModel::from_dir(gpu.clone(), &dir, EngineOptions::default(), &mut |_, _| {})
                    .unwrap();
            loaded = Some((g.model.clone(), m));
        }
        let model = &mut loaded.as_mut().unwrap().1;
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            model.encode(&g.prompt).unwrap(),
            g.prompt_ids,
            "{name}: tokenisation differs"
        );

        let engine = &mut model.engine;
        engine.reset();
        let mut logits = engine.prefill_blocking(&g.prompt_ids).unwrap();
        let l2 = logits
            .iter()
            .map(|&x| (x as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let mut worst = 0.0f64;
        for t in &g.top20 {
            let got = logits[t.id as usize] as f64;
            let rel = (got - t.logit).abs() / t.logit.abs().max(1.0);
            worst = worst.max(rel);
            assert!(
                rel <= 1e-3,
                "{name}: logit of token {}: {got} vs {} (rel {rel:.2e})",
                t.id,
                t.logit
            );
        }
        assert!(
            (l2 - g.logits_l2).abs() <= 1e-3 * g.logits_l2,
            "{name}: logits L2 {l2} vs {}",
            g.logits_l2
        );

        let mut ids = Vec::new();
        for _ in 0..g.greedy_ids.len() {
            let next = argmax(&logits);
            ids.push(next);
            logits = engine.step_blocking(next).unwrap();
        }
        assert_eq!(ids, g.greedy_ids, "{name}: greedy continuation differs");
        assert_eq!(
            model.tokenizer.decode_with_special(&ids).unwrap(),
            g.greedy_text,
            "{name}: text"
        );
        eprintln!(
            "{name}: top-20 logits within {worst:.1e} relative, {} greedy ids identical",
            ids.len()
        );
    }
}
