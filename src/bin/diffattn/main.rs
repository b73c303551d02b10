//! `diffattn`: the command-line front end of the diffattn library.

mod generate;

use anyhow::Result;
use clap::{Parser, Subcommand};
use diffattn::gpu::{self, GpuOptions};

#[derive(Parser)]
#[command(name = "diffattn", version, about = "DIFF V2 attention and language models on any GPU through WebGPU")]
struct Cli {
    /// Use the adapter with this index in `diffattn adapters`.
    #[arg(long, global = true)]
    adapter: Option<usize>,
    /// Restrict to one backend: vulkan, gl, metal or dx12 (default: WGPU_BACKEND, else all).
    #[arg(long, global = true)]
    backend: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text with a model, streaming it to stdout.
    Generate(generate::GenerateArgs),
}

fn gpu_options(cli: &Cli) -> Result<GpuOptions> {
    Ok(GpuOptions {
        backends: cli.backend.as_deref().map(gpu::parse_backend).transpose()?,
        adapter_index: cli.adapter,
        ..Default::default()
    })
}

fn run(cli: Cli) -> Result<()> {
    let opts = gpu_options(&cli)?;
    match cli.command {
        Command::Generate(args) => generate::run(&args, &opts),
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
