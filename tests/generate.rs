//! Streaming generation: UTF-8-safe pieces, stop conditions, cancellation and reuse, and the CLI.

mod common;

use common::greedy;

use diffattn::generate::{GenerateOptions, Generation, StopReason, TextModel, top2_margin};
use diffattn::model::EngineOptions;
use diffattn::model::random::{RandomModel, byte_tokenizer_json};
use diffattn::sample::SamplingParams;
use diffattn::tokenizer::{StreamDecoder, Tokenizer};
use std::sync::Arc;
use std::sync::atomic::Ordering;

fn model(seed: u64, context: u32) -> TextModel {
    let gpu = Arc::new(common::gpu());
    let mut m = RandomModel::tiny("diff_v2", seed);
    m.context = context;
    TextModel::from_source(gpu, m.source(), EngineOptions::default(), &mut |_, _| {}).unwrap()
}

#[test]
fn streamed_pieces_never_split_a_character() {
    let tok = Tokenizer::from_bytes(byte_tokenizer_json().as_bytes()).unwrap();
    let text = "naïve café — 日本語 ✓ 🦀!";
    let ids = tok.encode(text, None).unwrap();
    assert_eq!(ids.len(), text.len(), "one token per byte");
    let prompt = tok.encode("Say: ", None).unwrap();
    let mut d = StreamDecoder::new(&prompt);
    let mut out = String::new();
    let mut empty = 0;
    for &id in &ids {
        let piece = d.push(&tok, id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "broken character in {piece:?}");
        empty += piece.is_empty() as usize;
        out.push_str(&piece);
    }
    out.push_str(&d.flush(&tok).unwrap());
    assert_eq!(out, text);
    assert!(empty > 0, "multi-byte characters must be held back");
}

#[test]
fn generation_streams_ids_and_text_and_matches_the_engine() {
    let mut m = model(1, 96);
    let prompt = "Hi";
    let ids: Vec<(u32, String)> = m
        .generate(prompt, greedy(12))
        .unwrap()
        .map(|p| p.map(|p| (p.id, p.text)).unwrap())
        .collect();
    assert_eq!(ids.len(), 12);
    let text: String = ids.iter().map(|p| p.1.clone()).collect();
    let only_ids: Vec<u32> = ids.iter().map(|p| p.0).collect();
    assert_eq!(text, m.tokenizer.decode(&only_ids).unwrap());
    // An empty prompt starts from EOS (the document separator).
    assert_eq!(m.encode("").unwrap(), vec![0]);
    assert_eq!(m.generate("", greedy(3)).unwrap().count(), 3);
    // Same ids again: generation resets the cache by default.
    let again: Vec<u32> = m
        .generate(prompt, greedy(12))
        .unwrap()
        .map(|p| p.unwrap().id)
        .collect();
    assert_eq!(again, only_ids);
}

#[test]
fn stops_on_max_tokens_eos_stop_string_and_context() {
    let mut m = model(2, 24);
    // Max tokens.
    let mut g = m.generate("ab", greedy(5)).unwrap();
    assert_eq!(g.by_ref().count(), 5);
    assert_eq!(g.stop_reason(), Some(StopReason::MaxTokens));
    drop(g);
    // Context: 24 positions, a 4-token prompt: 21 tokens can be fed, the 21st sampled last.
    let mut g = m.generate("abcd", greedy(100)).unwrap();
    let n = g.by_ref().count();
    assert_eq!(g.stop_reason(), Some(StopReason::ContextFull));
    assert_eq!(n, 21);
    drop(g);
    // A prompt longer than the context is an error (tests/model_errors.rs has the message).
    let long = "x".repeat(30);
    let mut g = m.generate(&long, greedy(5)).unwrap();
    assert!(matches!(g.next(), Some(Err(diffattn::Error::Model(_)))));
    assert_eq!(g.stop_reason(), Some(StopReason::Error));
    drop(g);
    // A stop string taken from what greedy produces: generation ends before it, text cut.
    let full: String = m
        .generate("ab", greedy(8))
        .unwrap()
        .map(|p| p.unwrap().text)
        .collect();
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[3..5].iter().collect();
    let cut = full.find(&stop).unwrap();
    let opts = GenerateOptions {
        stop: vec![stop.clone()],
        ..greedy(8)
    };
    let mut g = m.generate("ab", opts).unwrap();
    let text: String = g.by_ref().map(|p| p.unwrap().text).collect();
    assert_eq!(g.stop_reason(), Some(StopReason::StopString));
    assert_eq!(text, full[..cut]);
    drop(g);
    // EOS: a copy of the model whose eos_token_id is the third token greedy produces.
    let ids: Vec<u32> = m
        .generate("ab", greedy(3))
        .unwrap()
        .map(|p| p.unwrap().id)
        .collect();
    let mut source = RandomModel::tiny("diff_v2", 2).source();
    let mut cfg: serde_json::Value = serde_json::from_str(&source.config_json).unwrap();
    cfg["max_position_embeddings"] = 24.into();
    cfg["eos_token_id"] = ids[2].into();
    source.config_json = cfg.to_string();
    let gpu = Arc::new(common::gpu());
    let mut m =
        TextModel::from_source(gpu, source, EngineOptions::default(), &mut |_, _| {}).unwrap();
    let mut g = m
        .generate(
            "ab",
            GenerateOptions {
                stop_at_eos: true,
                ..greedy(8)
            },
        )
        .unwrap();
    let pieces: Vec<_> = g.by_ref().map(|p| p.unwrap()).collect();
    assert_eq!(g.stop_reason(), Some(StopReason::Eos));
    let first_eos = ids.iter().position(|&i| i == ids[2]).unwrap();
    assert_eq!(
        pieces.iter().map(|p| p.id).collect::<Vec<_>>(),
        ids[..=first_eos]
    );
}

#[test]
fn cancel_stops_cleanly_and_the_engine_can_continue_or_reset() {
    let mut m = model(3, 96);
    let reference: Vec<u32> = m
        .generate("hello", greedy(10))
        .unwrap()
        .map(|p| p.unwrap().id)
        .collect();
    let mut g = m.generate("hello", greedy(10)).unwrap();
    let flag = g.cancel_flag();
    let mut got = Vec::new();
    for p in g.by_ref() {
        got.push(p.unwrap().id);
        if got.len() == 4 {
            flag.store(true, Ordering::Relaxed);
        }
    }
    assert_eq!(g.stop_reason(), Some(StopReason::Cancelled));
    assert_eq!(got, reference[..4]);
    drop(g);
    // The cache holds the prompt and the first 3 generated tokens; continuing with the 4th as the
    // new prompt gives the rest of the uninterrupted run.
    let prompt_len = m.encode("hello").unwrap().len() as u32;
    assert_eq!(m.engine.position(), prompt_len + 3);
    let opts = GenerateOptions {
        keep_cache: true,
        ..greedy(6)
    };
    let tok = &m.tokenizer;
    let rest: Vec<u32> = Generation::new(&mut m.engine, tok, vec![reference[3]], opts)
        .map(|p| p.unwrap().id)
        .collect();
    assert_eq!(rest, reference[4..10]);
    // And after a reset the engine starts over.
    let again: Vec<u32> = m
        .generate("hello", greedy(10))
        .unwrap()
        .map(|p| p.unwrap().id)
        .collect();
    assert_eq!(again, reference);
}

#[test]
fn seeded_sampling_repeats_exactly() {
    let mut m = model(4, 96);
    let opts = |seed| GenerateOptions {
        max_tokens: 16,
        sampling: SamplingParams {
            temperature: 5.0,
            top_k: 50,
            top_p: 0.95,
            seed,
            ..Default::default()
        },
        stop_at_eos: false,
        ..Default::default()
    };
    let run = |m: &mut TextModel, seed| -> Vec<u32> {
        m.generate("seed", opts(seed))
            .unwrap()
            .map(|p| p.unwrap().id)
            .collect()
    };
    let a = run(&mut m, 9);
    assert_eq!(a, run(&mut m, 9));
    assert_ne!(a, run(&mut m, 10));
}

#[test]
fn cli_generate_streams_json_and_reports_speed() {
    let dir = std::env::temp_dir().join(format!("diffattn-cli-{}", std::process::id()));
    RandomModel::tiny("diff_v2", 6).write_dir(&dir).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffattn"))
        .args([
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "Hello",
            "--max-tokens",
            "6",
            "--seed",
            "1",
            "--json",
        ])
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or_default(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7);
    assert!(lines[0]["id"].is_u64() && lines[0]["text"].is_string());
    let s = &lines[6];
    assert_eq!(s["prompt_tokens"], 5);
    assert_eq!(s["generated"], 6);
    assert!(
        s["decode_tok_s"].as_f64().unwrap() > 0.0 && s["prefill_tok_s"].as_f64().unwrap() > 0.0
    );
    assert!(s["adapter"].is_string());
    // Plain text mode: the prompt and continuation on stdout, the speeds on stderr.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffattn"))
        .args([
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "Hello",
            "--max-tokens",
            "4",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Hello"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("decode"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
    // A missing model: one line, non-zero exit, no panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffattn"))
        .args(["generate", "--model", "/nonexistent/model", "--prompt", "x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        err.trim(),
        "error: model directory or GGUF file not found: /nonexistent/model"
    );
}

/// `--temperature 0` is plain argmax: the CLI's ids equal greedy decoding without a repetition
/// penalty, and an explicit `--repeat-penalty` still applies (it changes this repetitive text).
#[test]
fn cli_temperature_zero_is_plain_greedy_unless_a_penalty_is_given() {
    let dir = std::env::temp_dir().join(format!("diffattn-greedy-{}", std::process::id()));
    RandomModel::tiny("diff_v2", 3).write_dir(&dir).unwrap();
    let cli_ids = |extra: &[&str]| -> Vec<u64> {
        let mut args = vec![
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "abababab",
            "--max-tokens",
            "24",
            "--temperature",
            "0",
            "--ignore-eos",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffattn"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|v| v["id"].as_u64())
            .collect()
    };
    let gpu = Arc::new(common::gpu());
    let mut m = TextModel::from_source(
        gpu,
        RandomModel::tiny("diff_v2", 3).source(),
        EngineOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let lib: Vec<u64> = m
        .generate("abababab", greedy(24))
        .unwrap()
        .map(|p| p.unwrap().id as u64)
        .collect();
    assert_eq!(cli_ids(&[]), lib);
    assert_ne!(cli_ids(&["--repeat-penalty", "3"]), lib);
    std::fs::remove_dir_all(&dir).ok();
}

/// `generate --json --margins`: each token's line carries the gap between its step's two largest
/// logits, equal to what the library's last logits give, whose argmax is the token; the ids are
/// those of the GPU's pick without `--margins`.
#[test]
fn cli_margins_are_each_tokens_top2_logit_gap() {
    assert_eq!(top2_margin(&[1.0, 3.0, 2.5]), Some(0.5));
    assert_eq!(top2_margin(&[2.0, -1.0, 2.0]), Some(0.0));
    assert_eq!(top2_margin(&[1.0, f32::NAN]), None);
    assert_eq!(top2_margin(&[1.0]), None);

    let dir = std::env::temp_dir().join(format!("diffattn-margins-{}", std::process::id()));
    RandomModel::tiny("diff_v2", 4).write_dir(&dir).unwrap();
    let cli = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec![
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "margins",
            "--max-tokens",
            "10",
            "--temperature",
            "0",
            "--ignore-eos",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffattn"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["id"].is_u64())
            .collect()
    };
    let with = cli(&["--margins"]);
    let without = cli(&[]);
    let ids = |v: &[serde_json::Value]| -> Vec<u64> {
        v.iter().map(|t| t["id"].as_u64().unwrap()).collect()
    };
    assert_eq!(with.len(), 10);
    assert_eq!(ids(&with), ids(&without));
    assert!(without.iter().all(|t| t.get("margin").is_none()));

    let gpu = Arc::new(common::gpu());
    let mut m = TextModel::from_source(
        gpu,
        RandomModel::tiny("diff_v2", 4).source(),
        EngineOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let opts = GenerateOptions {
        pick_on_gpu: false,
        ..greedy(10)
    };
    let mut generation = m.generate("margins", opts).unwrap();
    for (i, line) in with.iter().enumerate() {
        let piece = generation.next_blocking().unwrap().unwrap();
        let logits = generation.last_logits().expect("CPU-picked logits");
        let best = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap();
        assert_eq!(piece.id as usize, best, "token {i}");
        let want = top2_margin(logits).unwrap();
        let got = line["margin"].as_f64().unwrap();
        assert!(want >= 0.0, "token {i}: margin {want}");
        assert!(
            (got - want as f64).abs() <= 1e-5 * (1.0 + want.abs() as f64),
            "token {i}: CLI margin {got}, library {want}"
        );
    }
    drop(generation);
    // While the GPU picks, no logits come back, and none are claimed.
    let mut generation = m.generate("margins", greedy(2)).unwrap();
    generation.next_blocking().unwrap().unwrap();
    assert!(generation.last_logits().is_none());
    std::fs::remove_dir_all(&dir).ok();
}

/// Greedy generation with tokens picked on the GPU (several steps per submission) hands out the
/// same ids as the CPU sampler reading logits every step, and stops leave the cache where the CPU
/// path leaves it (the prompt and every handed-out token but the last).
#[test]
fn gpu_picked_generation_equals_the_cpu_sampler() {
    let seed = common::fresh_seed("gpu-picked");
    let mut m = model(seed, 256);
    let run = |m: &mut TextModel, on_gpu: bool, max: usize| -> (Vec<u32>, u32, usize) {
        let opts = GenerateOptions {
            pick_on_gpu: on_gpu,
            ..greedy(max)
        };
        let mut g = m.generate("abc", opts).unwrap();
        let ids: Vec<u32> = g.by_ref().map(|p| p.unwrap().id).collect();
        let submits = g.stats().decode_submits;
        drop(g);
        (ids, m.engine.position(), submits)
    };
    for max in [1, 2, 5, 40] {
        let (gpu_ids, gpu_pos, gpu_submits) = run(&mut m, true, max);
        let (cpu_ids, cpu_pos, cpu_submits) = run(&mut m, false, max);
        assert_eq!(gpu_ids, cpu_ids, "max_tokens {max}");
        assert_eq!(gpu_pos, cpu_pos, "cache position after {max} tokens");
        assert_eq!(cpu_submits, max - 1);
        if max == 40 {
            assert!(gpu_submits < 10, "{gpu_submits} submissions for 39 steps");
        }
    }
    // A stop string in the middle of a GPU batch: the overshoot is discarded. (Seed 2 gives text
    // without replacement characters, which could never match.)
    let mut m = model(2, 256);
    let full: String = m
        .generate("abc", greedy(40))
        .unwrap()
        .map(|p| p.unwrap().text)
        .collect();
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 16, "too little text: {full:?}");
    let stop: String = chars[12..14].iter().collect();
    let mut counts = vec![];
    for on_gpu in [true, false] {
        let opts = GenerateOptions {
            pick_on_gpu: on_gpu,
            stop: vec![stop.clone()],
            ..greedy(40)
        };
        let mut g = m.generate("abc", opts).unwrap();
        let n = g.by_ref().count();
        assert_eq!(
            g.stop_reason(),
            Some(StopReason::StopString),
            "on_gpu {on_gpu}, stop {stop:?} in {full:?}"
        );
        drop(g);
        let prompt_len = m.encode("abc").unwrap().len() as u32;
        assert_eq!(
            m.engine.position(),
            prompt_len + n as u32 - 1,
            "on_gpu {on_gpu}"
        );
        counts.push(n);
    }
    assert_eq!(counts[0], counts[1]);
}

/// Greedy decoding with a repetition penalty runs on the GPU (the greedy kernel marks the
/// penalty window) and hands out the CPU sampler's ids, over windows shorter and longer than the
/// text, penalties above and below 1, with a generation before it (marks left behind would show).
#[test]
fn gpu_greedy_with_a_penalty_equals_the_cpu_sampler() {
    let seed = common::fresh_seed("gpu-greedy-penalty");
    let mut m = model(seed, 256);
    let plain: Vec<u32> = m
        .generate("abab", greedy(48))
        .unwrap()
        .map(|p| p.unwrap().id)
        .collect();
    let mut changed = false;
    for (penalty, last_n) in [(1.3, 8), (2.0, 64), (0.7, 3), (1.1, 256)] {
        let sampling = SamplingParams {
            repeat_penalty: penalty,
            repeat_last_n: last_n,
            ..SamplingParams::greedy()
        };
        assert!(sampling.runs_on_gpu());
        let run = |m: &mut TextModel, on_gpu: bool| -> (Vec<u32>, usize) {
            let opts = GenerateOptions {
                pick_on_gpu: on_gpu,
                sampling: sampling.clone(),
                ..greedy(48)
            };
            let mut g = m.generate("abab", opts).unwrap();
            let ids: Vec<u32> = g.by_ref().map(|p| p.unwrap().id).collect();
            let submits = g.stats().decode_submits;
            (ids, submits)
        };
        // A GPU-sampled generation first, whose kernel leaves its scratch full of logits: the
        // greedy kernel's penalty marks must not depend on what ran before it.
        let sampled = GenerateOptions {
            pick_on_gpu: true,
            sampling: SamplingParams {
                seed: 3,
                ..Default::default()
            },
            ..greedy(20)
        };
        for p in m.generate("abab", sampled).unwrap() {
            p.unwrap();
        }
        let (gpu_ids, gpu_submits) = run(&mut m, true);
        let (cpu_ids, _) = run(&mut m, false);
        assert_eq!(gpu_ids, cpu_ids, "penalty {penalty} over {last_n}");
        assert!(
            gpu_submits < 12,
            "{gpu_submits} submissions: not on the GPU"
        );
        changed |= gpu_ids != plain;
    }
    assert!(
        changed,
        "no penalty changed the greedy text: the test shows nothing"
    );
}

/// The CLI keeps compiled pipelines under $XDG_CACHE_HOME/diffattn (Vulkan adapters), reads them
/// back on the next start, and `--no-pipeline-cache` writes nothing.
#[test]
fn cli_persists_the_pipeline_cache_unless_told_not_to() {
    let base = std::env::temp_dir().join(format!("diffattn-pcache-{}", std::process::id()));
    let dir = base.join("model");
    RandomModel::tiny("diff_v2", 4).write_dir(&dir).unwrap();
    let run = |cache: &std::path::Path, extra: &[&str]| -> String {
        let mut args = vec![
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "ab",
        ];
        args.extend_from_slice(&["--max-tokens", "4", "--temperature", "0", "--json"]);
        args.extend_from_slice(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffattn"))
            .args(&args)
            .env("XDG_CACHE_HOME", cache)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ids: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"text\""))
            .map(str::to_string)
            .collect();
        ids.join("\n")
    };
    let files = |cache: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(cache.join("diffattn"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };
    let vulkan = common::gpu().info.backend == wgpu::Backend::Vulkan;
    let kept = base.join("kept");
    let first = run(&kept, &[]);
    if vulkan {
        let written = files(&kept);
        assert_eq!(written.len(), 1, "{written:?}");
        assert!(written[0].extension().is_some_and(|e| e == "bin"));
    }
    assert_eq!(
        run(&kept, &[]),
        first,
        "a start from the cache generates the same"
    );
    let none = base.join("none");
    assert_eq!(run(&none, &["--no-pipeline-cache"]), first);
    assert!(files(&none).is_empty());
}

/// Greedy decoding with a logit bias runs on the GPU (the greedy kernel adds the bias buffer)
/// and hands out the CPU sampler's ids: a banned token never comes, a lifted one takes over,
/// alone and with a penalty; a plain greedy run after it is unbiased again (the buffer cleared).
#[test]
fn gpu_greedy_with_a_logit_bias_equals_the_cpu_sampler() {
    let seed = common::fresh_seed("gpu-greedy-bias");
    let mut m = model(seed, 256);
    let ids = |m: &mut TextModel, on_gpu: bool, sampling: SamplingParams| -> (Vec<u32>, usize) {
        let opts = GenerateOptions {
            pick_on_gpu: on_gpu,
            sampling,
            ..greedy(32)
        };
        let mut g = m.generate("abab", opts).unwrap();
        let ids: Vec<u32> = g.by_ref().map(|p| p.unwrap().id).collect();
        (ids, g.stats().decode_submits)
    };
    let (plain, _) = ids(&mut m, true, SamplingParams::greedy());
    let banned = plain[0];
    let lifted = (banned + 7) % m.engine.config().vocab_size;
    for (bias, penalty) in [
        (vec![(banned, f32::NEG_INFINITY)], 1.0),
        (vec![(banned, f32::NEG_INFINITY), (lifted, 2.5)], 1.0),
        // A finite bias large enough that the first plain token cannot win (the logits of the
        // random model span a few units), with two entries for one id that add up.
        (vec![(banned, -50.0), (lifted, 1.5), (lifted, 1.0)], 1.4),
    ] {
        let sampling = SamplingParams {
            logit_bias: bias.clone(),
            repeat_penalty: penalty,
            repeat_last_n: 16,
            ..SamplingParams::greedy()
        };
        assert!(sampling.runs_on_gpu() && !sampling.is_plain_greedy());
        let (gpu_ids, submits) = ids(&mut m, true, sampling.clone());
        let (cpu_ids, _) = ids(&mut m, false, sampling);
        assert_eq!(gpu_ids, cpu_ids, "bias {bias:?}, penalty {penalty}");
        assert!(submits < 10, "{submits} submissions: not on the GPU");
        assert_ne!(gpu_ids, plain, "bias {bias:?} changed nothing");
        if bias[0].1 == f32::NEG_INFINITY {
            assert!(!gpu_ids.contains(&banned), "banned {banned} in {gpu_ids:?}");
        } else {
            assert_ne!(gpu_ids[0], banned, "bias {bias:?}");
        }
        let (again, _) = ids(&mut m, true, SamplingParams::greedy());
        assert_eq!(again, plain, "a plain greedy run after a biased one");
    }
    // Biases the sampler cannot apply are refused before anything runs.
    let vocab = m.engine.config().vocab_size;
    for bias in [vec![(vocab, 1.0)], vec![(1, f32::NAN)]] {
        let opts = GenerateOptions {
            sampling: SamplingParams {
                logit_bias: bias.clone(),
                ..SamplingParams::greedy()
            },
            ..greedy(4)
        };
        let err = m
            .generate("abab", opts)
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("logit bias"), "{bias:?}: {err}");
    }
}

/// Each piece carries its token's log-probability and, when asked, the step's alternatives: the
/// same from GPU-picked and CPU-picked generation of the same greedy ids, and consistent (the
/// greedy token is the first alternative, with its own log-probability).
#[test]
fn pieces_carry_logprobs_and_alternatives_on_both_paths() {
    let mut m = model(common::fresh_seed("piece-logprobs"), 256);
    let run = |m: &mut TextModel, on_gpu: bool, top: usize| -> Vec<diffattn::generate::Piece> {
        let opts = GenerateOptions {
            pick_on_gpu: on_gpu,
            top_logprobs: top,
            ..greedy(24)
        };
        m.generate("abc", opts)
            .unwrap()
            .map(|p| p.unwrap())
            .collect()
    };
    let gpu = run(&mut m, true, 4);
    let cpu = run(&mut m, false, 4);
    assert_eq!(gpu.len(), 24);
    for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        assert_eq!(g.id, c.id, "piece {i}");
        assert!((g.logprob - c.logprob).abs() <= 1e-4 * c.logprob.abs().max(1.0));
        assert!(
            g.logprob <= 0.0 && g.logprob.is_finite(),
            "piece {i}: {}",
            g.logprob
        );
        let gi: Vec<u32> = g.top.iter().map(|a| a.id).collect();
        let ci: Vec<u32> = c.top.iter().map(|a| a.id).collect();
        assert_eq!(gi, ci, "piece {i}: alternatives");
        assert_eq!(g.top.len(), 4);
        assert_eq!(g.top[0].id, g.id, "piece {i}: greedy picks the most likely");
        assert!((g.top[0].logprob - g.logprob).abs() <= 1e-5 * g.logprob.abs().max(1.0));
        assert!(g.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
    }
    assert!(run(&mut m, true, 0).iter().all(|p| p.top.is_empty()));
    let opts = GenerateOptions {
        top_logprobs: diffattn::sample::MAX_TOP_LOGPROBS + 1,
        ..greedy(4)
    };
    let err = m
        .generate("abc", opts)
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("top_logprobs"), "{err}");
}

/// `--logit-bias ID=BIAS` and `--top-logprobs N` on the command line: a banned token never comes,
/// each JSON line has `logprob` and N alternatives; a bad bias is a one-line error with exit 2.
#[test]
fn cli_logit_bias_and_top_logprobs() {
    let dir = std::env::temp_dir().join(format!("diffattn-bias-{}", std::process::id()));
    RandomModel::tiny("diff_v2", 8).write_dir(&dir).unwrap();
    let run = |extra: &[&str]| -> std::process::Output {
        let mut args = vec![
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "Hello",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
            "--json",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_diffattn"))
            .args(&args)
            .output()
            .unwrap()
    };
    let tokens = |out: &std::process::Output| -> Vec<serde_json::Value> {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        lines[..lines.len() - 1].to_vec()
    };
    let plain = tokens(&run(&["--top-logprobs", "3"]));
    for t in &plain {
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        let top = t["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["id"], t["id"]);
    }
    let banned = plain[0]["id"].as_u64().unwrap().to_string();
    let ban = format!("{banned}=-inf");
    let biased = tokens(&run(&["--logit-bias", &ban, "--logit-bias", "3=0.5"]));
    assert!(
        biased
            .iter()
            .all(|t| t["id"].as_u64().unwrap().to_string() != banned)
    );
    assert!(biased.iter().all(|t| t.get("top").is_none()));
    for bad in ["99999=1", "3=nan", "3", "x=1"] {
        let out = run(&["--logit-bias", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(!err.contains("panicked"), "{bad}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
