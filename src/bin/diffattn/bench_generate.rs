//! `diffattn bench generate`: a model's prefill, first-token and decode speed, batch 1, greedy or
//! sampled, as `diffattn generate` runs it (tokens picked on the GPU, adaptive steps per
//! submission).

use anyhow::{Context, Result, bail};
use diffattn::attention::KvDtype;
use diffattn::gguf::GgmlType;
use diffattn::model::plan::MAX_STEPS;
use diffattn::model::random::RandomModel;
use diffattn::model::{Engine, EngineOptions, ModelSource, WeightDtype};
use diffattn::sample::SamplingParams;
use diffattn::util::Rng;
use diffattn::{Gpu, GpuOptions};
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Clone)]
pub struct GenerateBench {
    /// A model directory (default: the shipped model, unless --random-config is given).
    #[arg(long, conflicts_with = "random_config")]
    model: Option<std::path::PathBuf>,
    /// A named shape with random weights instead of a model: diffv2-small or smollm2-135m.
    #[arg(long)]
    random_config: Option<String>,
    /// Weight type of a random model: f32, f16 or bf16 (a model directory), or q4_0, q4_1 or
    /// q8_0 (a GGUF file written by the project's GGUF writer, token embedding Q8_0, loaded as a
    /// downloaded GGUF is; standard-attention shapes only).
    #[arg(long, default_value = "f32")]
    weights: String,
    /// Prompt length (random token ids, seeded).
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    /// Tokens to generate after the prompt (the first comes from the prefill).
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    /// KV cache type: f32, f16 or auto (as `diffattn generate`).
    #[arg(long, default_value = "auto")]
    kv: String,
    /// Sample on the GPU at this temperature (with the sampler's defaults: top-k 40, top-p 0.95,
    /// repetition penalty 1.1 over 64 tokens) instead of decoding greedily; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// List this many alternatives per picked token (0 to 20, as `generate --top-logprobs`), to
    /// measure what the alternatives kernel and its read-back cost.
    #[arg(long, default_value_t = 0)]
    top_logprobs: usize,
    /// Timed runs after one warm-up run; the median run is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Prompt tokens per forward chunk (engine option).
    #[arg(long, default_value_t = 512)]
    prefill_chunk: u32,
    /// Many-row products: token-blocked (true) or direct (false); default by adapter (engine option).
    #[arg(long)]
    tiled_gemm: Option<bool>,
    /// Output rows per invocation of the CPU adapters' decode product, 1 to 8 (engine option).
    #[arg(long)]
    matvec_rows: Option<u32>,
    /// Prompt products of f16 weights on cooperative matrices (default: on where the adapter has
    /// them; engine option).
    #[arg(long)]
    coop_gemm: Option<bool>,
    /// Fold each RMSNorm into the one-token product after it (default: on GPUs, off on CPU
    /// adapters; engine option).
    #[arg(long)]
    fold_norm: Option<bool>,
    /// SwiGLU inside the one-token gate/up product (default on; engine option).
    #[arg(long)]
    fuse_swiglu: Option<bool>,
    /// After the timed runs, time each stage of a decode step at the end of the context reached
    /// (one compute pass per stage between GPU timestamps, this many steps, medians) and print
    /// the time per kind of stage: what a token's GPU time is spent on. Needs timestamps.
    #[arg(long, default_value_t = 0)]
    profile: usize,
    #[arg(long)]
    json: bool,
}

/// One timed run: prompt, then decode to the token count.
struct Run {
    first_token_s: f64,
    /// GPU time of the prompt's last submission.
    prefill_gpu_s: Option<f64>,
    decode_s: f64,
    decode_steps: usize,
    submits: usize,
    gpu_s: Option<f64>,
}

fn load_source(b: &GenerateBench) -> Result<(String, String, ModelSource)> {
    if let Some(name) = &b.random_config {
        let (dtype, block) = match b.weights.as_str() {
            "f32" => (WeightDtype::F32, None),
            "f16" => (WeightDtype::F16, None),
            "bf16" => (WeightDtype::BF16, None),
            "q4_0" => (WeightDtype::F32, Some(GgmlType::Q4_0)),
            "q4_1" => (WeightDtype::F32, Some(GgmlType::Q4_1)),
            "q8_0" => (WeightDtype::F32, Some(GgmlType::Q8_0)),
            other => bail!("--weights {other} (expected f32, f16, bf16, q4_0, q4_1 or q8_0)"),
        };
        let m = RandomModel::preset(name, dtype, 7).with_context(|| {
            format!(
                "unknown --random-config {name} (known: {})",
                RandomModel::PRESETS.join(", ")
            )
        })?;
        let source = match block {
            Some(ty) => m.gguf_source(ty)?,
            None => m.source(),
        };
        let label = match block {
            Some(_) => format!("{} gguf", b.weights),
            None => b.weights.clone(),
        };
        return Ok((name.clone(), label, source));
    }
    let dir = b
        .model
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("models/diffv2-small"));
    let source = ModelSource::read(&dir, &mut |_, _| {})?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    Ok((name, "file".into(), source))
}

/// Prompt, then greedy decoding in submissions of 1, 2, 4, ... MAX_STEPS steps, two in flight, as
/// `Generation` does.
fn run_once(engine: &mut Engine, prompt: &[u32], tokens: usize) -> Result<Run> {
    engine.reset();
    let t = Instant::now();
    let first = engine.prefill_pick_blocking(prompt)?;
    let first_token_s = t.elapsed().as_secs_f64();
    let prefill_gpu_s = engine.last_gpu_seconds();
    let room = (engine.context() - engine.position()) as usize;
    let target = tokens.saturating_sub(1).min(room);
    let (mut started, mut batch) = (0usize, 1u32);
    let mut next = |started: usize| {
        let n = batch.min((target - started) as u32);
        batch = (batch * 2).min(MAX_STEPS);
        n
    };
    let (mut steps, mut submits, mut gpu_s) = (0, 0, None);
    let t = Instant::now();
    if target > 0 {
        let n = next(0);
        engine.decode_pick_start(Some(first.id), n)?;
        started += n as usize;
        submits += 1;
    }
    // As `Generation` does: one submission runs while the host reads the previous one.
    while engine.started_steps() > 0 {
        if started < target {
            let n = next(started);
            engine.decode_pick_start(None, n)?;
            started += n as usize;
            submits += 1;
        }
        steps += engine.decode_pick_finish_blocking()?.len();
        if let Some(g) = engine.last_gpu_seconds() {
            *gpu_s.get_or_insert(0.0) += g;
        }
    }
    Ok(Run {
        first_token_s,
        prefill_gpu_s,
        decode_s: t.elapsed().as_secs_f64(),
        decode_steps: steps,
        submits,
        gpu_s,
    })
}

pub fn run(b: &GenerateBench, opts: &GpuOptions, process_start: Instant) -> Result<()> {
    if b.prompt_tokens == 0 || b.tokens == 0 || b.repeats == 0 {
        bail!("--prompt-tokens, --tokens and --repeats must be at least 1");
    }
    let gpu = Arc::new(Gpu::new_blocking(opts)?);
    let kv_dtype = match b.kv.as_str() {
        "auto" => diffattn::attention::fastest_kv_dtype(&gpu),
        other => KvDtype::parse(other)?,
    };
    let (model, weights, source) = load_source(b)?;
    let (cfg, host_weights, _) = source.parse()?;
    let t_load = Instant::now();
    let mut engine = Engine::new(
        gpu.clone(),
        &cfg,
        &host_weights,
        EngineOptions {
            kv_dtype,
            prefill_chunk: b.prefill_chunk,
            tiled_gemm: b.tiled_gemm,
            coop_gemm: b.coop_gemm,
            matvec_rows: b.matvec_rows,
            fold_norm: b.fold_norm,
            fuse_swiglu: b.fuse_swiglu,
            ..Default::default()
        },
        &mut |_, _| {},
    )?;
    let load_s = t_load.elapsed().as_secs_f64();
    crate::save_pipelines(&gpu);
    let sampling = (b.temperature > 0.0).then(|| SamplingParams {
        temperature: b.temperature,
        seed: 5,
        ..Default::default()
    });
    engine.set_gpu_sampling(sampling.as_ref())?;
    engine.set_top_logprobs(b.top_logprobs)?;
    if b.prompt_tokens >= engine.context() as usize {
        bail!(
            "--prompt-tokens {} leaves no room in the context of {}",
            b.prompt_tokens,
            engine.context()
        );
    }
    let mut rng = Rng::new(11);
    let prompt: Vec<u32> = (0..b.prompt_tokens)
        .map(|_| (rng.uniform() * cfg.vocab_size as f64) as u32 % cfg.vocab_size)
        .collect();
    // The cold start: from process start to the first token of the first run.
    let warm = run_once(&mut engine, &prompt, b.tokens)?;
    let cold_start_s = process_start.elapsed().as_secs_f64() - warm.decode_s;
    // Then at least a second of the same work, so that the GPU has reached its working clock
    // (an idle GPU takes a few hundred milliseconds to ramp up).
    let t_warm = Instant::now();
    while t_warm.elapsed().as_secs_f64() < 1.0 {
        run_once(&mut engine, &prompt, b.tokens)?;
    }
    let mut runs = Vec::with_capacity(b.repeats);
    for _ in 0..b.repeats {
        runs.push(run_once(&mut engine, &prompt, b.tokens)?);
    }
    runs.sort_by(|x, y| x.decode_s.total_cmp(&y.decode_s));
    let r = &runs[runs.len() / 2];
    let mut firsts: Vec<f64> = runs.iter().map(|r| r.first_token_s).collect();
    firsts.sort_by(f64::total_cmp);
    let first_token_s = firsts[firsts.len() / 2];
    let decode_tok_s = r.decode_steps as f64 / r.decode_s;
    let per_token = |s: f64| s * 1e3 / r.decode_steps.max(1) as f64;
    let gpu_ms = r.gpu_s.map(per_token);
    let host_ms = r.gpu_s.map(|g| per_token(r.decode_s - g));
    let adapter = gpu.describe();
    let kv = match kv_dtype {
        KvDtype::F32 => "f32",
        KvDtype::F16 => "f16",
    };
    let row = serde_json::json!({
        "bench": "generate",
        "impl": "diffattn",
        "model": model,
        "weights": weights,
        "kv": kv,
        "temperature": b.temperature,
        "top_logprobs": b.top_logprobs,
        "prompt_tokens": b.prompt_tokens,
        "tokens": b.tokens,
        "prefill_tok_s": b.prompt_tokens as f64 / first_token_s,
        "prefill_ms": first_token_s * 1e3,
        "first_token_ms": first_token_s * 1e3,
        "prefill_gpu_ms": r.prefill_gpu_s.map(|s| s * 1e3),
        "decode_tok_s": decode_tok_s,
        "gpu_ms_per_token": gpu_ms,
        "host_ms_per_token": host_ms,
        "gpu_memory_mib": gpu.bytes_allocated() as f64 / (1 << 20) as f64,
        "tokens_per_submit": r.decode_steps as f64 / r.submits.max(1) as f64,
        "cold_start_ms": cold_start_s * 1e3,
        "load_ms": load_s * 1e3,
        "repeats": b.repeats,
        "adapter": adapter,
    });
    let profile = if b.profile > 0 {
        Some(profile_stages(&mut engine, &prompt, b.tokens, b.profile)?)
    } else {
        None
    };
    let mut row = row;
    if let Some(p) = &profile {
        row["profile_us"] = serde_json::json!(
            p.iter()
                .map(|(l, n, us)| serde_json::json!({"stage": l, "count": n, "us": us}))
                .collect::<Vec<_>>()
        );
    }
    if b.json {
        println!("{row}");
    } else {
        if let Some(p) = &profile {
            print_profile(p);
        }
        println!(
            "{model} ({weights} weights, {} KV, {}) on {adapter}\n  prompt {} tokens: first token {:.2} ms ({:.0} tok/s prefill; GPU {})\n  decode {} tokens: {:.1} tok/s, {:.1} steps per submission{}\n  cold start {:.0} ms (load {:.0} ms), GPU memory {:.1} MiB",
            kv,
            match (b.temperature > 0.0, b.top_logprobs) {
                (true, 0) => format!("sampled at temperature {}", b.temperature),
                (true, n) => format!("sampled at temperature {}, {n} alternatives", b.temperature),
                (false, 0) => "greedy".to_string(),
                (false, n) => format!("greedy, {n} alternatives"),
            },
            b.prompt_tokens,
            first_token_s * 1e3,
            b.prompt_tokens as f64 / first_token_s,
            r.prefill_gpu_s
                .map_or("-".to_string(), |s| format!("{:.2} ms", s * 1e3)),
            r.decode_steps,
            decode_tok_s,
            r.decode_steps as f64 / r.submits.max(1) as f64,
            match (gpu_ms, host_ms) {
                (Some(g), Some(h)) => format!(", GPU {g:.3} ms + host {h:.3} ms per token"),
                _ => String::new(),
            },
            cold_start_s * 1e3,
            load_s * 1e3,
            gpu.bytes_allocated() as f64 / (1 << 20) as f64,
        );
    }
    Ok(())
}

/// Per kind of stage (label): how many a step has and their summed GPU time in microseconds, the
/// median over `n` profiled steps, largest first. The steps run at the position a run of
/// `tokens` reaches.
fn profile_stages(
    engine: &mut Engine,
    prompt: &[u32],
    tokens: usize,
    n: usize,
) -> Result<Vec<(&'static str, usize, f64)>> {
    run_once(engine, prompt, tokens)?;
    let mut samples: Vec<Vec<(&'static str, f64)>> = Vec::with_capacity(n);
    for _ in 0..n {
        samples.push(engine.profile_step_blocking(prompt[0])?);
    }
    let mut labels: Vec<&'static str> = Vec::new();
    for (l, _) in &samples[0] {
        if !labels.contains(l) {
            labels.push(l);
        }
    }
    let mut out: Vec<(&'static str, usize, f64)> = labels
        .into_iter()
        .map(|label| {
            let count = samples[0].iter().filter(|(l, _)| *l == label).count();
            let mut sums: Vec<f64> = samples
                .iter()
                .map(|s| s.iter().filter(|(l, _)| *l == label).map(|(_, t)| t).sum())
                .collect();
            sums.sort_by(f64::total_cmp);
            (label, count, sums[sums.len() / 2] * 1e6)
        })
        .collect();
    out.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(out)
}

fn print_profile(p: &[(&'static str, usize, f64)]) {
    let total: f64 = p.iter().map(|(_, _, us)| us).sum();
    println!("  decode step by stage (one pass each, GPU timestamps; sum {total:.1} us):");
    for (label, count, us) in p {
        println!(
            "    {label:<24} x{count:<3} {us:>10.1} us  {:>5.1}%",
            100.0 * us / total.max(f64::MIN_POSITIVE)
        );
    }
}
