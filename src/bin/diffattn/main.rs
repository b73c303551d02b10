//! `diffattn`: the command-line front end of the diffattn library.

mod attn;
mod bench;
mod bench_generate;
mod generate;
mod manifest;
mod maps;
mod verify;

use anyhow::Result;
use clap::{Parser, Subcommand};
use diffattn::gpu::{self, GpuOptions};

#[derive(Parser)]
#[command(
    name = "diffattn",
    version,
    about = "DIFF V2 attention and language models on any GPU through WebGPU"
)]
struct Cli {
    /// Use the adapter with this index in `diffattn adapters`.
    #[arg(long, global = true)]
    adapter: Option<usize>,
    /// Restrict to one backend: vulkan, gl, metal or dx12 (default: WGPU_BACKEND, else all).
    #[arg(long, global = true)]
    backend: Option<String>,
    /// Do not use cooperative matrices (tensor cores) even where the adapter has them.
    #[arg(long, global = true)]
    no_coop: bool,
    /// Lower the adapter's storage-binding limit to this many bytes, to run what an adapter with
    /// smaller bindings (a browser's 134217728) would: the embedding and the output head are then
    /// split across bindings, other tensors over the limit are refused.
    #[arg(long, global = true, value_name = "BYTES")]
    max_storage_binding: Option<u64>,
    /// Keep no compiled pipelines on disk (by default Vulkan pipelines are cached under
    /// $XDG_CACHE_HOME/diffattn, else ~/.cache/diffattn, so a second start compiles nothing).
    #[arg(long, global = true)]
    no_pipeline_cache: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter with its backend, features and main limits.
    Adapters {
        /// One JSON object per adapter.
        #[arg(long)]
        json: bool,
    },
    /// Run the conformance suite against the float64 reference; exit code 1 if any case fails.
    Verify(verify::VerifyArgs),
    /// Run the attention kernels on tensors from a safetensors file.
    Attn(attn::AttnArgs),
    /// Generate text with a model, streaming it to stdout.
    Generate(generate::GenerateArgs),
    /// Chat with a model that has a chat template (a GGUF chat model), interactively: one message
    /// per line on stdin, the reply streamed to stdout; the KV cache keeps the conversation.
    Chat(generate::GenerateArgs),
    /// Print the float64 reference's attention maps of one DIFF V2 layer and head as JSON.
    Maps(maps::MapsArgs),
    /// Write a model's manifest.json (each file's size and SHA-256), which the browser package
    /// checks its cached copies against; --check compares instead.
    Manifest(manifest::ManifestArgs),
    /// Time the kernels.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

/// An error whose exit code is not the default 1 (bad input files exit with 2).
#[derive(Debug)]
pub struct ExitCode(pub i32, pub anyhow::Error);

impl std::fmt::Display for ExitCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.1)
    }
}

impl std::error::Error for ExitCode {}

fn gpu_options(cli: &Cli) -> Result<GpuOptions> {
    Ok(GpuOptions {
        backends: cli.backend.as_deref().map(gpu::parse_backend).transpose()?,
        adapter_index: cli.adapter,
        disable_coop: cli.no_coop,
        max_storage_binding: cli.max_storage_binding,
        pipeline_cache_dir: if cli.no_pipeline_cache {
            None
        } else {
            user_cache_dir()
        },
        ..Default::default()
    })
}

/// Where compiled pipelines are kept: $XDG_CACHE_HOME/diffattn, else $HOME/.cache/diffattn.
fn user_cache_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
    Some(base.join("diffattn"))
}

/// Persists the compiled pipelines after a model is built; a failure to write only warns.
pub fn save_pipelines(gpu: &diffattn::Gpu) {
    if let Err(e) = gpu.save_pipeline_cache() {
        eprintln!("warning: could not save the pipeline cache: {e}");
    }
}

fn open_gpu(opts: &GpuOptions) -> Result<diffattn::Gpu> {
    Ok(diffattn::Gpu::new_blocking(opts)?)
}

fn adapters(opts: &GpuOptions, json: bool) -> Result<()> {
    let list = pollster::block_on(gpu::list_adapters(opts));
    if list.is_empty() {
        return Err(diffattn::Error::NoAdapter(String::new()).into());
    }
    for a in &list {
        if json {
            println!("{}", serde_json::to_string(a)?);
            continue;
        }
        println!(
            "[{}] {} ({}, {})",
            a.index, a.name, a.backend, a.device_type
        );
        println!("    driver: {} {}", a.driver, a.driver_info);
        println!(
            "    shader-f16: {}  subgroups: {}{}  timestamps: {}  cooperative-matrix: {}",
            yes(a.shader_f16),
            yes(a.subgroups),
            if a.subgroups {
                format!(" (size {}..{})", a.subgroup_sizes.0, a.subgroup_sizes.1)
            } else {
                String::new()
            },
            yes(a.timestamps),
            yes(a.cooperative_matrix)
        );
        println!(
            "    workgroup storage: {} B  invocations/workgroup: {}  storage binding: {} MiB  buffer: {} MiB",
            a.max_workgroup_storage,
            a.max_invocations_per_workgroup,
            a.max_storage_binding >> 20,
            a.max_buffer_size >> 20
        );
        println!(
            "    attention paths: {}",
            diffattn::attention::adapter_paths(a).join(", ")
        );
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn run(cli: Cli, start: std::time::Instant) -> Result<()> {
    let opts = gpu_options(&cli)?;
    match cli.command {
        Command::Adapters { json } => adapters(&opts, json),
        Command::Verify(args) => verify::run(&args, &opts),
        Command::Attn(args) => attn::run(&args, &opts),
        Command::Bench { what } => bench::run(&what, &opts, start),
        Command::Generate(args) => generate::run(&args, &opts),
        Command::Chat(args) => generate::chat(&args, &opts),
        Command::Manifest(args) => manifest::run(&args),
        Command::Maps(args) => maps::run(&args),
    }
}

/// Mesa's drivers print "XDG_RUNTIME_DIR is invalid or not set" on every start where that variable
/// is missing, which users read as a failure. Give the process a private directory instead: one per
/// user under the temporary directory, created 0700, used only if it is ours and private.
#[cfg(unix)]
fn ensure_runtime_dir() {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir()) {
        return;
    }
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("diffattn-runtime-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let private = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o077 == 0);
    if private {
        // SAFETY: called first thing in `main`, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    }
}

#[cfg(not(unix))]
fn ensure_runtime_dir() {}

fn main() {
    let start = std::time::Instant::now();
    ensure_runtime_dir();
    let cli = Cli::parse();
    if let Err(e) = run(cli, start) {
        let code = e.downcast_ref::<ExitCode>().map(|c| c.0).unwrap_or(1);
        eprintln!("error: {e:#}");
        std::process::exit(code);
    }
}
