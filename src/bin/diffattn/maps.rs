//! `diffattn maps`: the float64 reference's attention maps of one DIFF V2 head, as JSON.

use anyhow::{Context, Result, anyhow};
use diffattn::model::ModelSource;
use diffattn::reference::model::RefModel;
use diffattn::tokenizer::Tokenizer;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct MapsArgs {
    /// Model directory (or GGUF file) with a diff_v2 config.
    #[arg(long)]
    model: PathBuf,
    /// The prompt, tokenized as generation does (after the model's BOS, if it has one).
    #[arg(long, conflicts_with = "ids")]
    prompt: Option<String>,
    /// The token ids instead, comma-separated.
    #[arg(long, value_delimiter = ',')]
    ids: Vec<u32>,
    #[arg(long, default_value_t = 0)]
    layer: u32,
    /// Output head i: query heads 2i and 2i + 1.
    #[arg(long, default_value_t = 0)]
    head: u32,
}

/// Prints one JSON object: `ids`, and `p1`, `p2` (T x T, row-major), `lambda` (T) and `diff`
/// (p1 - lambda p2) in float64, which the browser's `attentionMaps` is checked against.
pub fn run(args: &MapsArgs) -> Result<()> {
    let source = ModelSource::read(&args.model, &mut |_, _| {})?;
    let (cfg, weights, tokenizer_json) = source.parse()?;
    let ids = match &args.prompt {
        Some(prompt) => {
            let json = tokenizer_json
                .ok_or_else(|| anyhow!("{}: no tokenizer.json", args.model.display()))?;
            Tokenizer::from_bytes(&json)?.encode(prompt, cfg.bos_token_id)?
        }
        None => args.ids.clone(),
    };
    let maps = RefModel::new(&cfg, &weights)?
        .attention_maps(&ids, args.layer, args.head)
        .context("attention maps")?;
    let out = serde_json::json!({
        "ids": ids,
        "p1": maps.p1,
        "p2": maps.p2,
        "lambda": maps.lambda,
        "diff": maps.diff,
    });
    println!("{out}");
    Ok(())
}
