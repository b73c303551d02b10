//! Soak: one process generating 2,000 times with random prompts and sampling settings on a tiny
//! random model, and two engines on two threads. Nothing fails, memory stays flat after warm-up,
//! and a fixed-seed run gives the same tokens at the start and at the end.
//! (`DIFFATTN_SOAK_RUNS` changes the count, e.g. for a longer run by hand;
//! `DIFFATTN_SOAK_MODEL=DIR` soaks the model in DIR instead of the tiny random one.)

mod common;

use diffattn::generate::{GenerateOptions, TextModel};
use diffattn::model::EngineOptions;
use diffattn::model::random::RandomModel;
use diffattn::sample::SamplingParams;
use diffattn::util::Rng;
use std::sync::Arc;

fn load(gpu: Arc<diffattn::Gpu>, seed: u64) -> TextModel {
    if let Some(dir) = std::env::var_os("DIFFATTN_SOAK_MODEL") {
        let dir = std::path::PathBuf::from(dir);
        return TextModel::from_dir(gpu, &dir, EngineOptions::default(), &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    let mut m = RandomModel::tiny("diff_v2", seed);
    m.context = 96;
    TextModel::from_source(gpu, m.source(), EngineOptions::default(), &mut |_, _| {}).unwrap()
}

fn ids(model: &mut TextModel, prompt: &str, opts: GenerateOptions) -> Vec<u32> {
    model
        .generate(prompt, opts)
        .unwrap_or_else(|e| panic!("generate({prompt:?}): {e}"))
        .map(|p| {
            p.unwrap_or_else(|e| panic!("generating after {prompt:?}: {e}"))
                .id
        })
        .collect()
}

/// The fixed run compared at the start and at the end: sampled, seeded.
fn fixed() -> GenerateOptions {
    GenerateOptions {
        max_tokens: 24,
        sampling: SamplingParams {
            temperature: 0.9,
            top_k: 20,
            top_p: 0.9,
            seed: 42,
            ..Default::default()
        },
        stop_at_eos: false,
        ..Default::default()
    }
}

/// Random settings: greedy or sampled (temperature, top-k, top-p, a repetition penalty, sometimes a
/// logit bias, with GPU or CPU picking), 1 to 32 tokens, sometimes alternatives, a stop string or
/// continuing the cache.
fn random_options(rng: &mut Rng) -> GenerateOptions {
    let greedy = below(rng, 4) == 0;
    let sampling = if greedy {
        SamplingParams::greedy()
    } else {
        SamplingParams {
            temperature: 0.2 + 1.3 * rng.uniform() as f32,
            top_k: [0, 1, 5, 40, 1000][below(rng, 5) as usize],
            top_p: [1.0, 0.95, 0.5, 0.05][below(rng, 4) as usize],
            repeat_penalty: [1.0, 1.1, 1.5][below(rng, 3) as usize],
            repeat_last_n: [0, 8, 64][below(rng, 3) as usize],
            seed: rng.next_u64(),
            logit_bias: Vec::new(),
        }
    };
    // Sometimes a logit bias (a ban among them) on low ids, which every test vocabulary holds.
    let logit_bias = (0..[0, 0, 1, 3][below(rng, 4) as usize])
        .map(|_| {
            let b = [f32::NEG_INFINITY, -2.0, 1.5][below(rng, 3) as usize];
            (below(rng, 64) as u32, b)
        })
        .collect();
    let sampling = SamplingParams {
        logit_bias,
        ..sampling
    };
    GenerateOptions {
        max_tokens: 1 + below(rng, 32) as usize,
        sampling,
        stop: if below(rng, 8) == 0 {
            vec!["e".into()]
        } else {
            vec![]
        },
        stop_at_eos: below(rng, 2) == 0,
        keep_cache: below(rng, 8) == 0,
        pick_on_gpu: below(rng, 4) != 0,
        top_logprobs: [0, 0, 0, 3, 20][below(rng, 5) as usize],
    }
}

fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

fn random_prompt(rng: &mut Rng) -> String {
    let len = 1 + below(rng, 40) as usize;
    (0..len)
        .map(|_| char::from(b' ' + below(rng, 95) as u8))
        .collect()
}

/// Resident memory of this process in KiB (Linux), or None where /proc is not there.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn two_thousand_generations_in_one_process() {
    let runs: usize = std::env::var("DIFFATTN_SOAK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let warm_up = (runs / 10).max(1);
    let gpu = Arc::new(common::gpu());
    let mut model = load(gpu.clone(), 5);
    let first = ids(&mut model, "The soak starts", fixed());
    assert_eq!(first.len(), 24);
    let mut rng = Rng::new(common::fresh_seed("soak"));
    let mut at_warm = None;
    let mut tokens = 0;
    let start = std::time::Instant::now();
    for run in 0..runs {
        if run == warm_up {
            at_warm = Some((rss_kib(), gpu.resources_created(), gpu.bytes_allocated()));
        }
        let prompt = random_prompt(&mut rng);
        let opts = random_options(&mut rng);
        let max = opts.max_tokens;
        // With keep_cache, a prompt that no longer fits what is left of the context is refused
        // (a typed error on the first piece): start afresh then. Any other error fails the soak.
        let outcome = model.generate(&prompt, opts.clone()).and_then(|g| {
            let mut n = 0;
            for piece in g {
                piece?;
                n += 1;
            }
            Ok(n)
        });
        let got = match outcome {
            Ok(n) => n,
            Err(e @ diffattn::Error::Model(_))
                if opts.keep_cache && e.to_string().contains("does not fit the context") =>
            {
                eprintln!("run {run}: keep_cache refused ({e}); starting afresh");
                let mut fresh = opts.clone();
                fresh.keep_cache = false;
                ids(&mut model, &prompt, fresh).len()
            }
            Err(e) => panic!("run {run} ({prompt:?}, {opts:?}): {e}"),
        };
        assert!(got <= max, "run {run}: {got} tokens for max_tokens {max}");
        tokens += got;
    }
    let secs = start.elapsed().as_secs_f64();
    let (rss0, created0, bytes0) = at_warm.unwrap();
    let (rss1, created1, bytes1) = (rss_kib(), gpu.resources_created(), gpu.bytes_allocated());
    eprintln!(
        "soak: {runs} generations, {tokens} tokens in {secs:.1} s; after warm-up: resident \
         {rss0:?} -> {rss1:?} KiB, GPU objects created {created0} -> {created1}, buffer bytes \
         created {bytes0} -> {bytes1}"
    );
    if let (Some(a), Some(b)) = (rss0, rss1) {
        assert!(
            b <= a + 64 * 1024,
            "resident memory grew from {a} to {b} KiB"
        );
    }
    // Buffers are created at load and reused: a generation may create small per-call objects
    // (read-back or parameter buffers), but nothing that grows with the number of runs beyond a
    // generous bound.
    let per_run = (bytes1 - bytes0) as f64 / (runs - warm_up).max(1) as f64;
    assert!(
        per_run <= 64.0 * 1024.0,
        "{per_run:.0} bytes of GPU buffers created per generation after warm-up"
    );
    let last = ids(&mut model, "The soak starts", fixed());
    assert_eq!(first, last, "the fixed-seed run changed over the soak");
}

/// One engine: every prompt of the thread test in turn.
fn run_all(gpu: Arc<diffattn::Gpu>, seed: u64) -> Vec<Vec<u32>> {
    let mut model = load(gpu, seed);
    ["Once upon", "A DIFF V2 test", "zzz"]
        .iter()
        .map(|p| ids(&mut model, p, fixed()))
        .collect()
}

#[test]
fn two_engines_on_two_threads_match_one_after_the_other() {
    let gpu = Arc::new(common::gpu());
    let sequential = (run_all(gpu.clone(), 11), run_all(gpu.clone(), 12));
    let (ga, gb) = (gpu.clone(), gpu.clone());
    let ta = std::thread::spawn(move || run_all(ga, 11));
    let tb = std::thread::spawn(move || run_all(gb, 12));
    let (a, b) = (ta.join().unwrap(), tb.join().unwrap());
    assert_eq!(a, sequential.0, "engine 1 on its thread");
    assert_eq!(b, sequential.1, "engine 2 on its thread");
    assert_ne!(a, b, "two different models gave the same tokens");
}
