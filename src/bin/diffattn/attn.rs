//! `diffattn attn`: the attention kernels on tensors from a safetensors file.

use super::ExitCode;
use anyhow::{Context, Result, anyhow};
use diffattn::GpuOptions;
use diffattn::attention::{
    self, AttentionCall, AttentionConfig, HostInputs, Kernel, KvDtype, Mode,
};
use safetensors::{Dtype, SafeTensors};
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
}

/// Bad input: exit code 2 with a one-line message.
fn bad_input(path: &std::path::Path, msg: impl std::fmt::Display) -> anyhow::Error {
    ExitCode(2, anyhow!("{}: {msg}", path.display())).into()
}

struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn tensor(st: &SafeTensors, name: &str, path: &std::path::Path) -> Result<Tensor> {
    let view = st
        .tensor(name)
        .map_err(|_| bad_input(path, format!("missing tensor `{name}`")))?;
    if view.dtype() != Dtype::F32 {
        return Err(bad_input(
            path,
            format!("tensor `{name}` is {:?}; expected F32", view.dtype()),
        ));
    }
    let data = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Tensor {
        shape: view.shape().to_vec(),
        data,
    })
}

fn rank3(t: &Tensor, name: &str, path: &std::path::Path) -> Result<[usize; 3]> {
    match t.shape[..] {
        [a, b, c] => Ok([a, b, c]),
        _ => Err(bad_input(
            path,
            format!(
                "tensor `{name}` has shape {:?}; expected 3 dimensions",
                t.shape
            ),
        )),
    }
}

pub fn run(args: &AttnArgs, opts: &GpuOptions) -> Result<()> {
    let path = &args.input;
    let bytes = std::fs::read(path).map_err(|e| bad_input(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad_input(path, format!("not a valid safetensors file ({e})")))?;
    let mode = Mode::parse(&args.mode).map_err(|e| ExitCode(2, e.into()))?;
    let kv_dtype = KvDtype::parse(&args.kv_dtype).map_err(|e| ExitCode(2, e.into()))?;

    let q = tensor(&st, "q", path)?;
    let k = tensor(&st, "k", path)?;
    let v = tensor(&st, "v", path)?;
    let [n, q_heads, d] = rank3(&q, "q", path)?;
    let [s, kv_heads, dk] = rank3(&k, "k", path)?;
    if v.shape != k.shape {
        return Err(bad_input(
            path,
            format!("`v` has shape {:?} but `k` has {:?}", v.shape, k.shape),
        ));
    }
    if dk != d {
        return Err(bad_input(
            path,
            format!("`q` has head dim {d} but `k` has {dk}"),
        ));
    }
    let heads = match mode {
        Mode::Diff if q_heads % 2 != 0 => {
            return Err(bad_input(
                path,
                format!("`q` has {q_heads} heads; DIFF V2 needs an even number (2h)"),
            ));
        }
        Mode::Diff => q_heads / 2,
        Mode::Standard => q_heads,
    };
    let lam = match mode {
        Mode::Diff => {
            let lam = tensor(&st, "lam", path)?;
            let ok = lam.shape == [n, heads] || lam.shape == [n, heads, 1];
            if !ok {
                return Err(bad_input(
                    path,
                    format!("`lam` has shape {:?}; expected [{n}, {heads}]", lam.shape),
                ));
            }
            lam.data
        }
        Mode::Standard => Vec::new(),
    };
    let to_u32 = |x: usize, what: &str| {
        u32::try_from(x).map_err(|_| bad_input(path, format!("{what} {x} is too large")))
    };
    let cfg = AttentionConfig {
        heads: to_u32(heads, "heads")?,
        kv_heads: to_u32(kv_heads, "kv heads")?,
        head_dim: to_u32(d, "head dim")?,
        mode,
        kv_dtype,
        scale: args.scale,
    };
    let call = AttentionCall {
        n_queries: to_u32(n, "N")?,
        seq_len: to_u32(s, "S")?,
        causal: args.causal,
        past_len: args.past_len,
    };
    let x = HostInputs {
        q: &q.data,
        k: &k.data,
        v: &v.data,
        lam: &lam,
    };
    attention::check_host(&cfg, &call, &x).map_err(|e| bad_input(path, e))?;

    let gpu = super::open_gpu(opts)?;
    let out = attention::attention_blocking(&gpu, &cfg, &call, &x, Kernel::Auto)?;
    // Non-finite inputs (or values whose products overflow) give a non-finite output: an error,
    // not a file of NaN.
    diffattn::Error::check_finite("the attention output", &out).map_err(|e| bad_input(path, e))?;
    let out_bytes: &[u8] = bytemuck::cast_slice(&out);
    let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![n, heads, d], out_bytes)?;
    safetensors::serialize_to_file([("out", view)], None, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote out ({n}, {heads}, {d}) to {} on {}",
        args.out.display(),
        gpu.describe()
    );
    Ok(())
}
