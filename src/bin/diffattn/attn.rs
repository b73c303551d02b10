//! `diffattn attn`: the attention kernels on tensors from a safetensors file.

use super::ExitCode;
use anyhow::{Context, Result, anyhow};
use diffattn::GpuOptions;
use diffattn::attention::io::read_inputs;
use diffattn::attention::{self, Kernel, KvDtype, Mode};
use safetensors::Dtype;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct AttnArgs {
    /// Input file with f32 tensors q (N,2h,d) (or (N,h,d) in standard mode), k, v (S,h_kv,d), lam (N,h).
    #[arg(long = "in")]
    input: PathBuf,
    /// Output file; gets one f32 tensor `out` (N,h,d).
    #[arg(long)]
    out: PathBuf,
    /// Causal mask: query row n sits at position past_len + n and sees keys 0..=past_len+n.
    #[arg(long)]
    causal: bool,
    #[arg(long, default_value_t = 0)]
    past_len: u32,
    /// diff (DIFF V2) or standard.
    #[arg(long, default_value = "diff")]
    mode: String,
    /// Storage type of K and V on the GPU: f32 or f16.
    #[arg(long, default_value = "f32")]
    kv_dtype: String,
    /// Softmax scale (default 1/sqrt(d)).
    #[arg(long)]
    scale: Option<f32>,
    /// Write the float64 CPU reference instead of running the GPU kernels: `out` (N,h,d) as F64,
    /// what tests compare another kernel's output with (no adapter is opened).
    #[arg(long)]
    reference: bool,
}

/// Bad input: exit code 2 with a one-line message.
fn bad_input(path: &std::path::Path, msg: impl std::fmt::Display) -> anyhow::Error {
    ExitCode(2, anyhow!("{}: {msg}", path.display())).into()
}

pub fn run(args: &AttnArgs, opts: &GpuOptions) -> Result<()> {
    let path = &args.input;
    let bytes = std::fs::read(path).map_err(|e| bad_input(path, e))?;
    let mode = Mode::parse(&args.mode).map_err(|e| ExitCode(2, e.into()))?;
    let kv_dtype = KvDtype::parse(&args.kv_dtype).map_err(|e| ExitCode(2, e.into()))?;
    let inputs = read_inputs(&bytes, mode).map_err(|e| bad_input(path, e))?;
    let cfg = inputs.config(kv_dtype, args.scale);
    let call = inputs.call(args.causal, args.past_len);
    let x = inputs.host();
    attention::check_host(&cfg, &call, &x).map_err(|e| bad_input(path, e))?;

    let (n, heads, d) = (inputs.n_queries, inputs.heads, inputs.head_dim);
    let shape = vec![n as usize, heads as usize, d as usize];
    if args.reference {
        let want =
            diffattn::reference::attention(&cfg, &call, &x).map_err(|e| bad_input(path, e))?;
        if let Some(i) = want.iter().position(|v| !v.is_finite()) {
            return Err(bad_input(
                path,
                format!(
                    "the reference output holds a non-finite value ({} at index {i})",
                    want[i]
                ),
            ));
        }
        let view =
            safetensors::tensor::TensorView::new(Dtype::F64, shape, bytemuck::cast_slice(&want))?;
        safetensors::serialize_to_file([("out", view)], None, &args.out)
            .with_context(|| format!("writing {}", args.out.display()))?;
        eprintln!(
            "wrote the float64 reference out ({n}, {heads}, {d}) to {}",
            args.out.display()
        );
        return Ok(());
    }

    let gpu = super::open_gpu(opts)?;
    // Non-finite inputs (or values whose products overflow) give a non-finite output, which the
    // library refuses: that is the input's fault (exit code 2), and no file of NaN is written.
    let out = match attention::attention_blocking(&gpu, &cfg, &call, &x, Kernel::Auto) {
        Err(e @ diffattn::Error::NonFinite { .. }) => return Err(bad_input(path, e)),
        r => r?,
    };
    let out_bytes: &[u8] = bytemuck::cast_slice(&out);
    let view = safetensors::tensor::TensorView::new(Dtype::F32, shape, out_bytes)?;
    safetensors::serialize_to_file([("out", view)], None, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote out ({n}, {heads}, {d}) to {} on {}",
        args.out.display(),
        gpu.describe()
    );
    Ok(())
}
