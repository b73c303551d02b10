//! The GPU forward pass against the float64 whole-model reference, on random tiny models written
//! in the real file format.

mod common;

use diffattn::attention::{self, AttentionConfig, DecodeTuning, Kernel, KvDtype, Mode};
use diffattn::model::files::ModelSource;
use diffattn::model::random::RandomModel;
use diffattn::model::{Engine, EngineOptions, WeightDtype};
use diffattn::reference::compare;
use diffattn::reference::model::RefModel;
use std::sync::Arc;

fn engine(gpu: &Arc<diffattn::Gpu>, m: &RandomModel, opts: EngineOptions) -> (Engine, RefModel) {
    let (cfg, weights, _) = m.source().parse().unwrap();
    let reference = RefModel::new(&cfg, &weights).unwrap();
    (new_engine(gpu, &cfg, &weights, opts), reference)
}

fn new_engine(
    gpu: &Arc<diffattn::Gpu>,
    cfg: &diffattn::model::Config,
    weights: &diffattn::model::HostWeights,
    opts: EngineOptions,
) -> Engine {
    Engine::new(gpu.clone(), cfg, weights, opts, &mut |_, _| {}).unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Prefill (in several chunks) and 20 decode steps match the reference; greedy ids agree.
fn prefill_and_decode(attention: &str, kv_dtype: KvDtype, tol: f64) {
    // Both kernel families: the adapter's default and the other one; the decode products with
    // their norms folded in and SwiGLU applied by the gate/up product, and both as dispatches of
    // their own.
    for (gpu_kernels, fold_norm) in [
        (None, None),
        (Some(true), Some(true)),
        (Some(false), Some(true)),
        (Some(true), Some(false)),
        (Some(false), Some(false)),
    ] {
        prefill_and_decode_with(attention, kv_dtype, tol, gpu_kernels, fold_norm);
    }
}

fn prefill_and_decode_with(
    attention: &str,
    kv_dtype: KvDtype,
    tol: f64,
    gpu_kernels: Option<bool>,
    fold_norm: Option<bool>,
) {
    let gpu = Arc::new(common::gpu());
    let seed = common::fresh_seed(attention);
    let m = RandomModel::tiny(attention, seed);
    let opts = EngineOptions {
        kv_dtype,
        // 11 rows: a full block of 8 and a partial one in the token-blocked kernel.
        prefill_chunk: 11,
        matvec_lanes: gpu_kernels.map(|g| if g { 16 } else { 1 }),
        tiled_gemm: gpu_kernels,
        context: None,
        coop_gemm: None,
        matvec_rows: None,
        fold_norm,
        fuse_swiglu: fold_norm,
        // The GPU kernel family decodes attention as a GPU does: with f16 K/V on lavapipe that is
        // the subgroup kernel (asserted below).
        serial_attention: gpu_kernels.map(|g| !g),
    };
    let (mut engine, reference) = engine(&gpu, &m, opts);
    if gpu_kernels == Some(true) && kv_dtype == KvDtype::F16 {
        let probe = AttentionConfig {
            kv_dtype,
            ..AttentionConfig::new(
                if attention == "diff_v2" {
                    Mode::Diff
                } else {
                    Mode::Standard
                },
                m.config().num_attention_heads,
                m.config().num_key_value_heads,
                m.config().head_dim,
            )
        };
        let tuning = DecodeTuning {
            serial: false,
            ..DecodeTuning::for_layer(&gpu.info, probe.head_dim)
        };
        if attention::subgroup_decode_shape(&gpu, &probe, &tuning).is_ok() {
            assert!(
                engine.attention_paths().contains(&Kernel::DecodeSubgroup),
                "{:?}",
                engine.attention_paths()
            );
        }
    }
    let prompt: Vec<u32> = (0..17)
        .map(|i| (i * 37 + seed as u32 % 100) % m.vocab_size)
        .collect();
    let mut seq = prompt.clone();
    let mut logits = engine.prefill_blocking(&prompt).unwrap();
    let want = reference.forward(&seq);
    let (_, rel) = compare(&logits, want.last().unwrap());
    eprintln!(
        "{attention} {kv_dtype:?} gpu kernels {gpu_kernels:?} fold {fold_norm:?}: prefill rel L2 {rel:.3e}"
    );
    assert!(rel <= tol, "{attention} prefill: rel L2 {rel:.3e}");
    let mut gpu_ids = Vec::new();
    for step in 0..20 {
        let next = argmax(&logits);
        gpu_ids.push(next);
        seq.push(next);
        logits = engine.step_blocking(next).unwrap();
        let want = reference.last_logits(&seq);
        let (_, rel) = compare(&logits, &want);
        assert!(
            rel <= tol,
            "{attention} decode step {step}: rel L2 {rel:.3e}"
        );
    }
    if kv_dtype == KvDtype::F32 {
        let cpu_ids = reference.greedy(&prompt, 20);
        assert_eq!(gpu_ids, cpu_ids, "{attention}: greedy ids differ");
    }
}

#[test]
fn diff_v2_model_matches_reference() {
    prefill_and_decode("diff_v2", KvDtype::F32, 1e-4);
}

#[test]
fn standard_model_matches_reference() {
    prefill_and_decode("standard", KvDtype::F32, 1e-4);
}

#[test]
fn f16_kv_cache_stays_close() {
    prefill_and_decode("diff_v2", KvDtype::F16, 3e-3);
}

fn last_logits(gpu: &Arc<diffattn::Gpu>, source: ModelSource, prompt: &[u32]) -> Vec<f32> {
    let (cfg, weights, _) = source.parse().unwrap();
    let mut e = new_engine(gpu, &cfg, &weights, EngineOptions::default());
    e.prefill_blocking(prompt).unwrap()
}

#[test]
fn sharded_and_single_file_weights_give_identical_logits() {
    let gpu = Arc::new(common::gpu());
    let mut m = RandomModel::tiny("diff_v2", 5);
    let prompt = [3, 1, 4, 1, 5, 9, 2, 6];
    let single = last_logits(&gpu, m.source(), &prompt);
    m.shards = 3;
    assert!(
        m.files()
            .iter()
            .any(|(n, _)| n == "model.safetensors.index.json")
    );
    let sharded = last_logits(&gpu, m.source(), &prompt);
    assert_eq!(single, sharded);
    // Through the file system as well, index and all.
    let dir = std::env::temp_dir().join(format!("diffattn-sharded-{}", std::process::id()));
    m.write_dir(&dir).unwrap();
    let from_dir = last_logits(
        &gpu,
        ModelSource::read_dir(&dir, &mut |_, _| {}).unwrap(),
        &prompt,
    );
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(single, from_dir);
}

/// 16-bit files stay 16-bit on the GPU; the reference widens the same stored values.
#[test]
fn f16_and_bf16_weights_and_an_untied_head_load_and_match() {
    let gpu = Arc::new(common::gpu());
    for (dtype, tied) in [
        (WeightDtype::F16, true),
        (WeightDtype::BF16, false),
        (WeightDtype::F32, false),
    ] {
        let mut m = RandomModel::tiny("diff_v2", 11);
        m.dtype = dtype;
        m.tied = tied;
        let (mut e, r) = engine(&gpu, &m, EngineOptions::default());
        let prompt = [7, 70, 100, 33, 2, 250];
        let got = e.prefill_blocking(&prompt).unwrap();
        let (_, rel) = compare(&got, &r.last_logits(&prompt));
        assert!(rel < 1e-4, "{dtype:?} tied={tied}: rel L2 {rel:.3e}");
        let got = e.step_blocking(42).unwrap();
        let (_, rel) = compare(&got, &r.last_logits(&[7, 70, 100, 33, 2, 250, 42]));
        assert!(rel < 1e-4, "{dtype:?} tied={tied} decode: rel L2 {rel:.3e}");
    }
}

/// Tokens picked on the GPU (a prompt, then decode steps several per submission) are the CPU
/// argmax of the logits the logits path returns, with the log-probability of the float64 softmax.
#[test]
fn greedy_on_the_gpu_matches_the_logits_path() {
    let gpu = Arc::new(common::gpu());
    for attention in ["diff_v2", "standard"] {
        let seed = common::fresh_seed(attention);
        let m = RandomModel::tiny(attention, seed);
        let opts = EngineOptions {
            prefill_chunk: 5,
            ..Default::default()
        };
        let (mut on_gpu, _) = engine(&gpu, &m, opts.clone());
        let (mut by_logits, _) = engine(&gpu, &m, opts);
        let prompt: Vec<u32> = (0..13)
            .map(|i| (i * 29 + seed as u32) % m.vocab_size)
            .collect();

        let first = on_gpu.prefill_pick_blocking(&prompt).unwrap();
        let logits = by_logits.prefill_blocking(&prompt).unwrap();
        assert_eq!(first.id, argmax(&logits), "{attention}: first token");
        assert_close_logprob(&logits, first.clone());
        let mut want = vec![first.id];
        let mut next = first.id;
        for _ in 0..11 {
            let l = by_logits.step_blocking(next).unwrap();
            next = argmax(&l);
            want.push(next);
        }
        // 1 + 3 + 7 steps in three submissions: the token stays on the GPU between steps.
        let mut got = vec![first.id];
        let mut feed = first.id;
        for steps in [1, 3, 7] {
            let picked = on_gpu.decode_pick_blocking(feed, steps).unwrap();
            assert_eq!(picked.len(), steps as usize);
            got.extend(picked.iter().map(|p| p.id));
            feed = picked.last().unwrap().id;
        }
        assert_eq!(got, want, "{attention}: greedy ids");
        assert_eq!(on_gpu.position(), by_logits.position());

        // Pipelined: the second submission takes its first token from the first on the GPU.
        on_gpu.reset();
        let first = on_gpu.prefill_pick_blocking(&prompt).unwrap();
        on_gpu.decode_pick_start(Some(first.id), 3).unwrap();
        on_gpu.decode_pick_start(None, 4).unwrap();
        assert!(
            on_gpu.decode_pick_start(None, 1).is_err(),
            "a third in flight"
        );
        assert!(
            on_gpu.prefill_blocking(&prompt).is_err(),
            "prefill while decoding"
        );
        assert_eq!(on_gpu.started_steps(), 7);
        let mut piped = vec![first.id];
        piped.extend(
            on_gpu
                .decode_pick_finish_blocking()
                .unwrap()
                .iter()
                .map(|p| p.id),
        );
        piped.extend(
            on_gpu
                .decode_pick_finish_blocking()
                .unwrap()
                .iter()
                .map(|p| p.id),
        );
        assert_eq!(piped, want[..8], "{attention}: pipelined greedy ids");
        assert!(on_gpu.decode_pick_finish_blocking().is_err());
        assert!(
            on_gpu.decode_pick_start(None, 1).is_err(),
            "nothing to take a token from"
        );
    }
}

fn assert_close_logprob(logits: &[f32], s: diffattn::model::Sampled) {
    let max = logits.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let want = logits[s.id as usize] as f64 - lse;
    assert!(
        (s.logprob as f64 - want).abs() <= 1e-4 * want.abs().max(1.0),
        "log-probability {} against {want}",
        s.logprob
    );
}

/// After warm-up, neither a prompt nor decode steps (logits path or GPU-picked) create a GPU
/// object: the plan made everything at load.
#[test]
fn steps_create_no_gpu_resources() {
    let gpu = Arc::new(common::gpu());
    let m = RandomModel::tiny("diff_v2", common::fresh_seed("resources"));
    let (mut e, _) = engine(
        &gpu,
        &m,
        EngineOptions {
            prefill_chunk: 4,
            ..Default::default()
        },
    );
    let prompt: Vec<u32> = (0..9).collect();
    e.prefill_blocking(&prompt).unwrap();
    let before = gpu.resources_created();
    for round in 0..3 {
        e.reset();
        e.prefill_blocking(&prompt).unwrap();
        e.step_blocking(3).unwrap();
        let t = e.prefill_pick_blocking(&[5, 6]).unwrap();
        e.decode_pick_blocking(t.id, 8).unwrap();
        e.decode_pick_start(Some(t.id), 2).unwrap();
        e.decode_pick_start(None, 3).unwrap();
        e.decode_pick_finish_blocking().unwrap();
        e.decode_pick_finish_blocking().unwrap();
        assert_eq!(
            gpu.resources_created(),
            before,
            "round {round}: a step created GPU objects"
        );
    }
}

/// A decode submission that would run past the context is refused before anything runs.
#[test]
fn gpu_decode_past_the_context_is_refused() {
    let gpu = Arc::new(common::gpu());
    let mut m = RandomModel::tiny("diff_v2", 5);
    m.context = 16;
    let (mut e, _) = engine(&gpu, &m, EngineOptions::default());
    let t = e
        .prefill_pick_blocking(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        .unwrap();
    let err = e.decode_pick_blocking(t.id, 7).unwrap_err();
    assert!(err.to_string().contains("exceed the context"), "{err}");
    assert_eq!(e.position(), 10);
    assert!(e.decode_pick_blocking(t.id, 0).is_err());
    assert_eq!(e.decode_pick_blocking(t.id, 6).unwrap().len(), 6);
    assert_eq!(e.position(), 16);
}

/// The GPU sampler draws from the CPU sampler's distribution (penalty, temperature, top-k, top-p):
/// every drawn id is one the CPU would keep, and frequencies over seeds match its probabilities.
#[test]
fn gpu_sampling_draws_from_the_cpu_distribution() {
    use diffattn::sample::{Sampler, SamplingParams};
    let gpu = Arc::new(common::gpu());
    let m = RandomModel::tiny("diff_v2", 41);
    let (mut e, _) = engine(&gpu, &m, EngineOptions::default());
    let prompt: Vec<u32> = vec![3, 9, 27, 81, 243, 3, 9];
    let logits = e.prefill_blocking(&prompt).unwrap();
    // A logit bias that bans the most likely token, lifts a middling one (two entries that add
    // up) and lowers another: it must change what is drawn.
    let order = diffattn::sample::top_logprobs(&logits, 8);
    let bias = vec![
        (order[0].id, f32::NEG_INFINITY),
        (order[5].id, 1.0),
        (order[5].id, 0.8),
        (order[1].id, -0.7),
    ];
    let cases = [
        (1.0, 0, 1.0, 1.0, 0, vec![]),
        (0.7, 20, 0.9, 1.0, 0, vec![]),
        // The window holds 3 and 9 twice: each is penalised once.
        (1.3, 0, 0.95, 1.5, 7, vec![]),
        // top-k up to 256 takes the radix-select kernel path, larger k the bisection path.
        (0.9, 40, 0.6, 1.2, 5, vec![]),
        (1.1, 256, 0.9, 1.0, 0, vec![]),
        (1.0, 257, 0.8, 1.0, 0, vec![]),
        // The bias, on both paths, with and without a penalty.
        (1.0, 30, 0.9, 1.0, 0, bias.clone()),
        (0.8, 0, 0.95, 1.3, 7, bias.clone()),
    ];
    for (temperature, top_k, top_p, repeat_penalty, repeat_last_n, logit_bias) in cases {
        let base = SamplingParams {
            temperature,
            top_k,
            top_p,
            repeat_penalty,
            repeat_last_n,
            seed: 0,
            logit_bias,
        };
        let want = Sampler::new(base.clone()).distribution(&logits, &prompt);
        if !base.logit_bias.is_empty() {
            let unbiased = SamplingParams {
                logit_bias: vec![],
                ..base.clone()
            };
            let before = Sampler::new(unbiased).distribution(&logits, &prompt);
            assert!(before.iter().any(|c| c.0 == order[0].id), "{before:?}");
            assert!(want.iter().all(|c| c.0 != order[0].id), "{want:?}");
        }
        let draws = 1200;
        let mut counts = std::collections::HashMap::new();
        for seed in 0..draws {
            e.reset();
            e.set_gpu_sampling(Some(&SamplingParams {
                seed,
                ..base.clone()
            }))
            .unwrap();
            let id = e.prefill_pick_blocking(&prompt).unwrap().id;
            *counts.entry(id).or_insert(0usize) += 1;
        }
        for (&id, &c) in &counts {
            assert!(
                want.iter().any(|w| w.0 == id),
                "{base:?}: drew {id} ({c} times), which the CPU sampler never keeps"
            );
        }
        for &(id, p) in &want {
            let f = *counts.get(&id).unwrap_or(&0) as f64 / draws as f64;
            let sd = (p * (1.0 - p) / draws as f64).sqrt();
            assert!(
                (f - p).abs() <= 5.0 * sd + 2e-3,
                "{base:?}: token {id} frequency {f:.4}, CPU probability {p:.4}"
            );
        }
    }
    // Settings the GPU sampler does not take are refused by name.
    let all_history = SamplingParams {
        repeat_last_n: 0,
        ..Default::default()
    };
    assert!(e.set_gpu_sampling(Some(&all_history)).is_err());
}

/// A seeded GPU-sampled run gives the same tokens however its steps are grouped into submissions.
#[test]
fn gpu_sampling_does_not_depend_on_the_submission_grouping() {
    use diffattn::sample::SamplingParams;
    let gpu = Arc::new(common::gpu());
    let m = RandomModel::tiny("standard", 43);
    let (mut e, _) = engine(&gpu, &m, EngineOptions::default());
    let params = SamplingParams {
        seed: 99,
        ..Default::default()
    };
    e.set_gpu_sampling(Some(&params)).unwrap();
    let prompt = [5u32, 6, 7];
    let run = |e: &mut Engine, groups: &[u32]| -> Vec<u32> {
        e.reset();
        let first = e.prefill_pick_blocking(&prompt).unwrap().id;
        let mut ids = vec![first];
        for &g in groups {
            let picked = e.decode_pick_blocking(*ids.last().unwrap(), g).unwrap();
            ids.extend(picked.iter().map(|p| p.id));
        }
        ids
    };
    let one = run(&mut e, &[12]);
    let many = run(&mut e, &[1, 2, 4, 5]);
    assert_eq!(one, many);
    let other = {
        e.set_gpu_sampling(Some(&SamplingParams {
            seed: 100,
            ..params
        }))
        .unwrap();
        run(&mut e, &[12])
    };
    assert_ne!(one, other, "another seed, the same 13 tokens");
}

/// The alternatives the GPU lists after each pick are the CPU's `top_logprobs` of the same
/// logits (the same ids in the same order, log-probabilities within f32 rounding), whichever
/// kernel picks, for a prompt and for each step of a multi-step submission; none unless asked.
#[test]
fn gpu_alternatives_are_the_cpu_top_logprobs() {
    use diffattn::sample::{MAX_TOP_LOGPROBS, SamplingParams, top_logprobs};
    let gpu = Arc::new(common::gpu());
    let m = RandomModel::tiny("diff_v2", common::fresh_seed("alternatives"));
    let (mut e, _) = engine(&gpu, &m, EngineOptions::default());
    let prompt: Vec<u32> = vec![4, 8, 15, 16, 23, 42];
    let check = |got: &[diffattn::sample::Alternative], logits: &[f32], n: usize, what: &str| {
        let want = top_logprobs(logits, n);
        let ids: Vec<u32> = got.iter().map(|a| a.id).collect();
        let want_ids: Vec<u32> = want.iter().map(|a| a.id).collect();
        assert_eq!(ids, want_ids, "{what}: alternatives");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g.logprob - w.logprob).abs() <= 1e-4 * w.logprob.abs().max(1.0),
                "{what}: token {} log-probability {} against {}",
                g.id,
                g.logprob,
                w.logprob
            );
        }
    };
    let sampled = SamplingParams {
        seed: 5,
        ..Default::default()
    };
    for (n, sampling) in [(1, None), (5, Some(&sampled)), (MAX_TOP_LOGPROBS, None)] {
        let what = format!(
            "n {n}, {}",
            if sampling.is_some() {
                "sampled"
            } else {
                "greedy"
            }
        );
        // The CPU's view: the same prompt and the same tokens fed one step at a time.
        e.reset();
        e.set_top_logprobs(0).unwrap();
        let mut logits = vec![e.prefill_blocking(&prompt).unwrap()];
        e.reset();
        e.set_gpu_sampling(sampling).unwrap();
        e.set_top_logprobs(n).unwrap();
        let first = e.prefill_pick_blocking(&prompt).unwrap();
        check(&first.top, &logits[0], n, &format!("{what}, prompt"));
        let steps = e.decode_pick_blocking(first.id, 4).unwrap();
        e.reset();
        e.prefill_blocking(&prompt).unwrap();
        let mut fed = first.id;
        for s in &steps {
            logits.push(e.step_blocking(fed).unwrap());
            fed = s.id;
        }
        for (i, s) in steps.iter().enumerate() {
            check(&s.top, &logits[i + 1], n, &format!("{what}, step {i}"));
        }
    }
    e.reset();
    e.set_gpu_sampling(None).unwrap();
    e.set_top_logprobs(0).unwrap();
    assert!(e.prefill_pick_blocking(&prompt).unwrap().top.is_empty());
    let err = e.set_top_logprobs(MAX_TOP_LOGPROBS + 1).unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
}

/// Random models written as GGUF files by the project's own writer, one per matrix block type:
/// they load through the GGUF path (blocks kept on the GPU) and the GPU forward pass matches the
/// float64 reference on the dequantized weights, in prefill and decode.
#[test]
fn random_gguf_models_match_the_reference() {
    let gpu = Arc::new(common::gpu());
    let seed = common::fresh_seed("random gguf");
    let m = RandomModel {
        // Rows of whole 32-value blocks everywhere.
        intermediate_size: 64,
        ..RandomModel::tiny("standard", seed)
    };
    for ty in [
        diffattn::gguf::GgmlType::Q4_1,
        diffattn::gguf::GgmlType::Q8_0,
        diffattn::gguf::GgmlType::Q4_0,
        diffattn::gguf::GgmlType::F16,
    ] {
        let (cfg, weights, tokenizer) = m.gguf_source(ty).unwrap().parse().unwrap();
        assert!(
            tokenizer.is_some(),
            "{ty:?}: the file carries its tokenizer"
        );
        let (info, _) = weights.raw("model.layers.0.mlp.down_proj.weight").unwrap();
        assert_eq!(
            info.dtype.ggml(),
            ty,
            "{ty:?}: matrices keep the file's type"
        );
        let mut engine = new_engine(&gpu, &cfg, &weights, EngineOptions::default());
        let reference = RefModel::new(&cfg, &weights).unwrap();
        let prompt: Vec<u32> = (0..9).map(|i| (i * 41 + 3) % m.vocab_size).collect();
        let rows = common::teacher_forced(&mut engine, &prompt, &[5, 77, 200]);
        let mut seq = prompt.clone();
        for (i, got) in rows.iter().enumerate() {
            let want = reference.last_logits(&seq);
            let (_, rel) = compare(got, &want);
            assert!(rel <= 1e-4, "{ty:?} position {i}: rel L2 {rel:.3e}");
            if let Some(&next) = [5u32, 77, 200].get(i) {
                seq.push(next);
            }
        }
    }
}

/// The writer refuses what a GGUF random model cannot be.
#[test]
fn random_gguf_refuses_diff_v2_and_partial_blocks() {
    let diff = RandomModel::tiny("diff_v2", 1);
    assert!(diff.gguf_bytes(diffattn::gguf::GgmlType::Q4_1).is_err());
    // FFN rows of 48 are not whole 32-value blocks.
    let std = RandomModel::tiny("standard", 1);
    let err = std.gguf_bytes(diffattn::gguf::GgmlType::Q4_1).unwrap_err();
    assert!(err.to_string().contains("blocks"), "{err}");
}

/// The CPU model in f32 (what the demo's attention maps run) against the float64 oracle: the
/// whole forward pass, and one layer's attention probabilities fed with the float64 activations of
/// the layers before it. The probabilities are causal rows that sum to one.
#[test]
fn the_f32_cpu_model_and_its_attention_maps_match_float64() {
    use diffattn::reference::model::{Layer, Model, embed};
    let seed = common::fresh_seed("f32 reference");
    let m = RandomModel::tiny("diff_v2", seed);
    let (cfg, weights, _) = m.source().parse().unwrap();
    let ids: Vec<u32> = (0..9)
        .map(|i| (i * 31 + seed as u32) % m.vocab_size)
        .collect();
    let want = RefModel::new(&cfg, &weights).unwrap().forward(&ids);
    let got = Model::<f32>::new(&cfg, &weights).unwrap().forward(&ids);
    for (g, w) in got.iter().zip(&want) {
        let (_, rel) = compare(g, w);
        assert!(rel <= 1e-4, "f32 logits: rel L2 {rel:.3e}");
    }

    let layer = cfg.num_hidden_layers - 1;
    let mut x64 = embed::<f64>(&cfg, &weights, &ids).unwrap();
    for l in 0..layer {
        Layer::<f64>::load(&cfg, &weights, l)
            .unwrap()
            .forward(&cfg, &mut x64);
    }
    let x32: Vec<Vec<f32>> = x64
        .iter()
        .map(|r| r.iter().map(|&v| v as f32).collect())
        .collect();
    let p64 = Layer::<f64>::load(&cfg, &weights, layer)
        .unwrap()
        .attention_probs(&cfg, &x64);
    let p32 = Layer::<f32>::load(&cfg, &weights, layer)
        .unwrap()
        .attention_probs(&cfg, &x32);
    let t = ids.len();
    assert_eq!(p64.probs.len(), cfg.q_heads() as usize * t * t);
    for (row, probs) in p64.probs.chunks(t).enumerate() {
        let q = row % t;
        let sum: f64 = probs.iter().sum();
        assert!((sum - 1.0).abs() <= 1e-12, "row {row} sums to {sum}");
        assert!(
            probs[q + 1..].iter().all(|&p| p == 0.0),
            "row {row} sees the future"
        );
    }
    let worst = p32
        .probs
        .iter()
        .zip(&p64.probs)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= 1e-5,
        "f32 probabilities differ by up to {worst:.3e}"
    );
    let (l32, l64) = (p32.lambda.unwrap(), p64.lambda.unwrap());
    assert_eq!(l64.len(), t * cfg.num_attention_heads as usize);
    let (_, rel) = compare(&l32, &l64);
    assert!(rel <= 1e-5, "lambda: rel L2 {rel:.3e}");
}

/// A profiled decode step times each stage it dispatches: with the norms folded and SwiGLU fused
/// there is no rmsnorm or swiglu stage, without them one per norm (two per layer and the final
/// one) and one swiglu per layer; every other stage appears once per layer, and every time is
/// finite and non-negative.
#[test]
fn a_profiled_step_lists_the_stages_it_dispatches() {
    let gpu = Arc::new(common::gpu());
    if !gpu.has_timestamps() {
        assert!(
            std::env::var("CI").is_err(),
            "the CI adapter (lavapipe) has timestamp queries"
        );
        eprintln!("skipped: no timestamp queries on this adapter");
        return;
    }
    let m = RandomModel::tiny("diff_v2", 47);
    let layers = m.config().num_hidden_layers as usize;
    for fold_norm in [true, false] {
        let opts = EngineOptions {
            fold_norm: Some(fold_norm),
            fuse_swiglu: Some(fold_norm),
            ..Default::default()
        };
        let (mut e, _) = engine(&gpu, &m, opts);
        let t = e.prefill_pick_blocking(&[1, 2, 3]).unwrap();
        let stages = e.profile_step_blocking(t.id).unwrap();
        let count = |label: &str| stages.iter().filter(|s| s.0 == label).count();
        let norms = if fold_norm { 0 } else { 2 * layers + 1 };
        assert_eq!(count("rmsnorm"), norms, "fold {fold_norm}: {stages:?}");
        let swiglus = if fold_norm { 0 } else { layers };
        assert_eq!(count("swiglu"), swiglus, "fold {fold_norm}: {stages:?}");
        for label in [
            "attention",
            "q/k/v/lambda",
            "gate/up",
            "down_proj",
            "o_proj",
        ] {
            assert_eq!(count(label), layers, "{label}: {stages:?}");
        }
        assert_eq!(count("lm_head"), 1);
        assert!(
            stages.iter().all(|s| s.1.is_finite() && s.1 >= 0.0),
            "{stages:?}"
        );
    }
}

/// On an adapter whose storage bindings are smaller than the embedding (and an untied head), the
/// tables are split by rows across bindings, a gather and a product per part, and the engine
/// computes what one on the full limits does (f32 and f16 tables, tied and untied), also through
/// the GPU's picking; a limit that cannot hold one aligned run of rows is refused by name.
#[test]
fn an_embedding_over_the_binding_limit_is_split_by_rows() {
    use diffattn::model::WeightDtype;
    let seed = common::fresh_seed("split embedding");
    let full = Arc::new(common::gpu());
    // 16 KiB: the 264 x 32 f32 table (33,792 bytes) needs three parts; with 4-token prompt
    // chunks every other buffer fits.
    let small = Arc::new(
        diffattn::Gpu::new_blocking(&diffattn::GpuOptions {
            max_storage_binding: Some(16 << 10),
            ..Default::default()
        })
        .unwrap(),
    );
    let opts = EngineOptions {
        prefill_chunk: 4,
        ..Default::default()
    };
    for (dtype, tied) in [(WeightDtype::F32, true), (WeightDtype::F16, false)] {
        let m = RandomModel {
            dtype,
            tied,
            ..RandomModel::tiny("diff_v2", seed)
        };
        let what = format!("{dtype:?}, tied {tied}");
        let (mut split, reference) = engine(&small, &m, opts.clone());
        let (mut whole, _) = engine(&full, &m, opts.clone());
        // The upload's progress reaches the weights' total, the split tables counted too.
        let (cfg, weights, _) = m.source().parse().unwrap();
        let mut last = (0, 1);
        Engine::new(small.clone(), &cfg, &weights, opts.clone(), &mut |d, t| {
            last = (d, t)
        })
        .unwrap();
        assert_eq!(
            last,
            (weights.total_bytes(), weights.total_bytes()),
            "{what}: progress"
        );
        let parts = split.row_parts();
        eprintln!("{what}: embedding and head in {parts:?} parts");
        assert!(
            parts.0 >= 2,
            "{what}: the embedding was not split: {parts:?}"
        );
        if !tied {
            assert!(parts.1 >= 2, "{what}: the head was not split: {parts:?}");
        }
        assert_eq!(whole.row_parts(), (1, 1));
        // Ids from every part of the table, in one prompt chunk and across chunks.
        let prompt: Vec<u32> = (0..11).map(|i| (i * 97 + 5) % m.vocab_size).collect();
        let then = [3, 260, 131, 200];
        let got = common::teacher_forced(&mut split, &prompt, &then);
        let want = common::teacher_forced(&mut whole, &prompt, &then);
        let mut seq = prompt.clone();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let w: Vec<f64> = w.iter().map(|&x| x as f64).collect();
            let (_, rel) = compare(g, &w);
            assert!(
                rel <= 1e-6,
                "{what}, row {i}: against the unsplit engine, rel L2 {rel:.3e}"
            );
            let (_, rel) = compare(g, &reference.last_logits(&seq));
            assert!(
                rel <= 1e-4,
                "{what}, row {i}: against float64, rel L2 {rel:.3e}"
            );
            if i < then.len() {
                seq.push(then[i]);
            }
        }
        split.reset();
        whole.reset();
        let a = split.prefill_pick_blocking(&prompt).unwrap();
        let b = whole.prefill_pick_blocking(&prompt).unwrap();
        assert_eq!(a.id, b.id, "{what}: GPU pick");
        let a: Vec<u32> = split
            .decode_pick_blocking(a.id, 6)
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect();
        let b: Vec<u32> = whole
            .decode_pick_blocking(b.id, 6)
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(a, b, "{what}: GPU-picked steps");
    }
    // 10,000 bytes: the fused q/k/v/lambda rows (12,544 bytes) no longer fit one binding though
    // each matrix does: they run as two products (q; k, v and lambda), each into its columns.
    let smaller = Arc::new(
        diffattn::Gpu::new_blocking(&diffattn::GpuOptions {
            max_storage_binding: Some(10_000),
            ..Default::default()
        })
        .unwrap(),
    );
    let m = RandomModel {
        intermediate_size: 32,
        ..RandomModel::tiny("diff_v2", seed)
    };
    let (mut split, reference) = engine(&smaller, &m, opts.clone());
    let prompt: Vec<u32> = (0..11).map(|i| (i * 97 + 5) % m.vocab_size).collect();
    let got = common::teacher_forced(&mut split, &prompt, &[3, 260]);
    let mut seq = prompt.clone();
    for (i, g) in got.iter().enumerate() {
        let (_, rel) = compare(g, &reference.last_logits(&seq));
        assert!(
            rel <= 1e-4,
            "q/k/v in two products, row {i}: rel L2 {rel:.3e}"
        );
        seq.extend([3u32, 260].get(i));
    }
    if smaller.has_timestamps() {
        let stages = split.profile_step_blocking(5).unwrap();
        let qkv = stages.iter().filter(|(l, _)| *l == "q/k/v/lambda").count();
        assert_eq!(
            qkv,
            2 * m.layers as usize,
            "q/k/v products per step: {stages:?}"
        );
    }
    let tiny = diffattn::Gpu::new_blocking(&diffattn::GpuOptions {
        max_storage_binding: Some(2048),
        ..Default::default()
    })
    .unwrap();
    let m = RandomModel::tiny("diff_v2", seed);
    let (cfg, weights, _) = m.source().parse().unwrap();
    let err = Engine::new(Arc::new(tiny), &cfg, &weights, opts, &mut |_, _| {})
        .err()
        .expect("a 2 KiB binding limit was accepted");
    let msg = err.to_string();
    assert!(msg.contains("max_storage_buffer_binding_size"), "{msg}");
}

/// A GGUF file that mixes block types within q/k/v (as Q4_K_M files do: v in a wider type) keeps
/// every matrix in its own type on the GPU (the weight buffers hold the file's tensor bytes, no
/// f32 copy) and computes what float64 does: the fused product runs as one product per run of
/// one type, each writing its columns, in prompt chunks and decode steps, with the norm folded
/// and without. A gate/up pair of two types still loads (widened, documented) and agrees too.
#[test]
fn mixed_type_qkv_products_stay_quantized_and_match_the_reference() {
    use diffattn::gguf::GgmlType;
    let gpu = Arc::new(common::gpu());
    let seed = common::fresh_seed("mixed gguf");
    let m = RandomModel {
        intermediate_size: 64,
        ..RandomModel::tiny("standard", seed)
    };
    let q4k_m_like = |name: &str| {
        if name.contains("v_proj") || name.contains("down_proj") {
            GgmlType::Q8_0
        } else if name.contains("k_proj") {
            GgmlType::Q4_1
        } else {
            GgmlType::Q4_0
        }
    };
    let gate_up_mixed = |name: &str| {
        if name.contains("up_proj") {
            GgmlType::Q8_0
        } else {
            GgmlType::Q4_0
        }
    };
    let load = |ty: &dyn Fn(&str) -> GgmlType| {
        let source = diffattn::model::ModelSource {
            origin: "mixed random GGUF".into(),
            config_json: String::new(),
            shards: Vec::new(),
            tokenizer_json: None,
            gguf: Some(m.gguf_bytes_typed(ty).unwrap()),
        };
        let (cfg, weights, _) = source.parse().unwrap();
        (cfg, weights)
    };
    for (what, ty) in [
        ("q/k/v mixed", &q4k_m_like as &dyn Fn(&str) -> GgmlType),
        ("gate/up mixed", &gate_up_mixed),
    ] {
        let (cfg, weights) = load(ty);
        let reference = RefModel::new(&cfg, &weights).unwrap();
        for fold_norm in [true, false] {
            let opts = EngineOptions {
                prefill_chunk: 5,
                fold_norm: Some(fold_norm),
                ..Default::default()
            };
            let mut engine = new_engine(&gpu, &cfg, &weights, opts);
            if what == "q/k/v mixed" {
                // Nothing widened: the GPU holds the file's bytes (norms are f32 in the file).
                let file: u64 = weights.total_bytes();
                let held = engine.weight_bytes();
                assert!(
                    held <= file + 16 * 64,
                    "{what}: {held} bytes of weights on the GPU for {file} in the file"
                );
            }
            let prompt: Vec<u32> = (0..9).map(|i| (i * 41 + 3) % m.vocab_size).collect();
            let then = [5u32, 77, 200];
            let rows = common::teacher_forced(&mut engine, &prompt, &then);
            let mut seq = prompt.clone();
            for (i, got) in rows.iter().enumerate() {
                let (_, rel) = compare(got, &reference.last_logits(&seq));
                assert!(
                    rel <= 1e-4,
                    "{what}, fold {fold_norm}, position {i}: rel L2 {rel:.3e}"
                );
                if let Some(&next) = then.get(i) {
                    seq.push(next);
                }
            }
        }
    }
}
