//! `diffattn generate`: stream text from a model directory.

use super::ExitCode;
use anyhow::{Context, Result, bail};
use clap::Args;
use diffattn::chat::Conversation;
use diffattn::generate::{GenerateOptions, Generation, Stats, StopReason, TextModel, top2_margin};
use diffattn::gpu::GpuOptions;
use diffattn::model::{EngineOptions, ModelSource};
use diffattn::sample::SamplingParams;
use diffattn::{Gpu, KvDtype};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model directory (config.json, safetensors weights, tokenizer.json); default: the shipped
    /// models/diffv2-small.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Prompt text.
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample from the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling: the smallest set of tokens with this much probability.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Penalty for tokens among the last 64 (1: none). Default 1.1 when sampling and 1 with
    /// --temperature 0, so that greedy decoding is plain argmax unless a penalty is given.
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    /// Seed for sampling (default: from the clock; printed with --json).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Add BIAS to the logit of token ID before sampling (ID=BIAS, repeatable; BIAS -inf bans
    /// the token). Applies to greedy decoding too.
    #[arg(long, value_name = "ID=BIAS", value_parser = parse_bias, allow_hyphen_values = true)]
    pub logit_bias: Vec<(u32, f32)>,
    /// With --json, each token's object gains `top`: the N most likely tokens of its step with
    /// their log-probabilities under the model's own distribution (at most 20).
    #[arg(long, default_value_t = 0, requires = "json")]
    pub top_logprobs: usize,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// KV cache storage: f32, f16, or auto (f16 where the adapter runs the subgroup or tensor-core
    /// decode kernels, which read f16 only; f32 elsewhere).
    #[arg(long, default_value = "auto")]
    pub kv: String,
    /// Context length to allocate (default: the model's max_position_embeddings).
    #[arg(long)]
    pub context: Option<u32>,
    /// Lanes per row in the decode matrix-vector kernel (tuning; default by adapter type).
    #[arg(long, hide = true)]
    pub matvec_lanes: Option<u32>,
    /// One JSON object per token, then a summary object.
    #[arg(long)]
    pub json: bool,
    /// With --json, each token's object gains `margin`: the gap between the two largest logits
    /// of the step that produced it (raw logits, before any penalty), which says how near a tie
    /// the pick was. Tokens are then picked on the CPU from logits read back every step (for
    /// greedy decoding the same ids as the GPU's pick, and slower).
    #[arg(long, requires = "json")]
    pub margins: bool,
    /// Wrap the prompt as a user message in the model's chat template (GGUF chat models).
    #[arg(long)]
    pub chat: bool,
    /// System prompt for --chat and `diffattn chat`.
    #[arg(long)]
    pub system: Option<String>,
}

/// `ID=BIAS` of --logit-bias (BIAS a number, or -inf).
fn parse_bias(s: &str) -> std::result::Result<(u32, f32), String> {
    let (id, bias) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=BIAS"))?;
    let id = id
        .trim()
        .parse::<u32>()
        .map_err(|e| format!("{s:?}: token id: {e}"))?;
    let bias = bias
        .trim()
        .parse::<f32>()
        .map_err(|e| format!("{s:?}: bias: {e}"))?;
    Ok((id, bias))
}

/// Bad model files exit with code 2 (as bad inputs of the other subcommands do); GPU failures,
/// such as a model over the adapter's limits, with 1.
fn input_error(e: diffattn::Error) -> anyhow::Error {
    use diffattn::Error as E;
    match e {
        E::NotFound { .. }
        | E::Format { .. }
        | E::MissingTensor { .. }
        | E::ConfigMismatch(_)
        | E::Shape { .. }
        | E::Tokenizer(_)
        | E::Io { .. }
        | E::Config(_) => ExitCode(2, e.into()).into(),
        e => e.into(),
    }
}

/// The shipped model: next to the crate sources, else under the working directory.
fn default_model() -> Result<PathBuf> {
    let candidates = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/diffv2-small"),
        PathBuf::from("models/diffv2-small"),
    ];
    for c in &candidates {
        if c.join("config.json").is_file() {
            return Ok(c.clone());
        }
    }
    bail!(
        "no --model given and the shipped model is not there ({} or ./models/diffv2-small): \
         pass --model DIR",
        candidates[0].display()
    )
}

/// Reads and uploads the model; returns it with the adapter's description.
fn load(args: &GenerateArgs, gpu_opts: &GpuOptions) -> Result<(TextModel, String)> {
    let dir = match &args.model {
        Some(d) => d.clone(),
        None => default_model()?,
    };
    let gpu = Arc::new(Gpu::new_blocking(gpu_opts)?);
    let adapter = gpu.describe();

    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>9} [{bar:30}] {bytes}/{total_bytes}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    bar.set_message("reading");
    let source = ModelSource::read(&dir, &mut progress);
    let opts = EngineOptions {
        kv_dtype: match args.kv.as_str() {
            "auto" => diffattn::attention::fastest_kv_dtype(&gpu),
            other => KvDtype::parse(other)?,
        },
        context: args.context,
        matvec_lanes: args.matvec_lanes,
        ..Default::default()
    };
    let loaded = source.and_then(|source| {
        bar.set_message("uploading");
        TextModel::from_source(gpu.clone(), source, opts, &mut progress)
    });
    bar.finish_and_clear();
    let model = loaded.map_err(input_error)?;
    crate::save_pipelines(&gpu);
    Ok((model, adapter))
}

/// The generation options the flags ask for, and the seed they use.
fn options(args: &GenerateArgs) -> (GenerateOptions, u64) {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let gen_opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repeat_penalty: args
                .repeat_penalty
                .unwrap_or_else(|| SamplingParams::default_repeat_penalty(args.temperature)),
            seed,
            logit_bias: args.logit_bias.clone(),
            ..Default::default()
        },
        stop: args.stop.clone(),
        stop_at_eos: !args.ignore_eos,
        keep_cache: false,
        // Margins need every step's logits on the host.
        pick_on_gpu: !args.margins,
        top_logprobs: args.top_logprobs,
    };
    (gen_opts, seed)
}

pub fn run(args: &GenerateArgs, gpu_opts: &GpuOptions) -> Result<()> {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => String::new(),
    };
    let (mut model, adapter) = load(args, gpu_opts)?;
    let (gen_opts, seed) = options(args);
    if args.chat {
        let mut conv = Conversation::new(&model, args.system.as_deref())?;
        let generation = conv.reply(&mut model, &prompt, gen_opts)?;
        return finish(generation, args, &adapter, seed);
    }
    let generation = model.generate(&prompt, gen_opts)?;
    if !args.json {
        let mut out = std::io::stdout().lock();
        write!(out, "{prompt}")?;
        out.flush()?;
    }
    finish(generation, args, &adapter, seed)
}

/// `diffattn chat`: an interactive conversation on stdin/stdout; the KV cache keeps the history,
/// so each turn prefills only its new tokens.
pub fn chat(args: &GenerateArgs, gpu_opts: &GpuOptions) -> Result<()> {
    let (mut model, adapter) = load(args, gpu_opts)?;
    let (gen_opts, _) = options(args);
    let mut conv = Conversation::new(&model, args.system.as_deref())?;
    eprintln!("chat on {adapter}; an empty line or end of input quits");
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        let mut generation = conv.reply(&mut model, line.trim_end(), gen_opts.clone())?;
        let (text, stats, reason) = stream(&mut generation, args)?;
        let generated = generation.ids()[stats.prompt_tokens..].to_vec();
        drop(generation);
        println!();
        conv.record_reply(&text, &generated, model.engine.position());
        eprintln!(
            "[{} new prompt tokens, {} generated, stop: {reason:?}, {:.1} tok/s]",
            stats.prompt_tokens,
            stats.generated,
            stats.decode_tok_s()
        );
    }
}

/// Streams `generation` to stdout, then its summary (stderr, or a JSON line with `json`).
fn finish(
    mut generation: Generation<'_>,
    args: &GenerateArgs,
    adapter: &str,
    seed: u64,
) -> Result<()> {
    let (_, stats, reason) = stream(&mut generation, args)?;
    drop(generation);
    summary(&stats, reason, args.json, adapter, seed)
}

/// Writes each piece to stdout as it comes (a JSON object each with `--json`, with its top-2
/// logit margin with `--margins`); returns the text, the stats and the stop reason.
fn stream(
    generation: &mut Generation<'_>,
    args: &GenerateArgs,
) -> Result<(String, Stats, StopReason)> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut text = String::new();
    while let Some(piece) = generation.next_blocking() {
        // Settings the model cannot take (a logit bias beyond its vocabulary) are bad input.
        let piece = piece.map_err(input_error)?;
        if args.json {
            let mut line =
                serde_json::json!({"id": piece.id, "text": piece.text, "logprob": piece.logprob});
            if args.top_logprobs > 0 {
                line["top"] = serde_json::json!(piece.top);
            }
            if args.margins {
                // A NaN logit has no margin: null, never a number that is not one.
                let margin = generation.last_logits().and_then(top2_margin);
                line["margin"] = margin.into();
            }
            writeln!(out, "{line}")?;
        } else {
            write!(out, "{}", piece.text)?;
        }
        text.push_str(&piece.text);
        out.flush()?;
    }
    let reason = generation.stop_reason().unwrap_or(StopReason::MaxTokens);
    Ok((text, generation.stats().clone(), reason))
}

fn summary(stats: &Stats, reason: StopReason, json: bool, adapter: &str, seed: u64) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let summary = serde_json::json!({
            "prompt_tokens": stats.prompt_tokens,
            "generated": stats.generated,
            "prefill_tok_s": stats.prefill_tok_s(),
            "decode_tok_s": stats.decode_tok_s(),
            "gpu_ms_per_token": stats.gpu_ms_per_token(),
            "decode_submits": stats.decode_submits,
            "adapter": adapter,
            "stop_reason": reason,
            "seed": seed,
        });
        writeln!(out, "{summary}")?;
    } else {
        writeln!(out)?;
        out.flush()?;
        eprintln!(
            "[{} prompt tokens, {} generated, stop: {:?}] prefill {:.1} tok/s, decode {:.1} tok/s on {}",
            stats.prompt_tokens,
            stats.generated,
            reason,
            stats.prefill_tok_s(),
            stats.decode_tok_s(),
            adapter
        );
    }
    Ok(())
}
