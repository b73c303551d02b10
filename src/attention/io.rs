//! The `diffattn attn` input file: f32 tensors `q`, `k`, `v` and (DIFF V2) `lam` in one safetensors
//! file, parsed and shape-checked on the CPU. Pure: it builds without the `gpu` feature, so the fuzz
//! target runs exactly the code the CLI runs.

use super::{AttentionCall, AttentionConfig, HostInputs, KvDtype, Mode};
use safetensors::{Dtype, SafeTensors};
use thiserror::Error;

/// Why an input file was refused. Each renders as the one line the CLI prints after the path.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InputError {
    /// The safetensors container itself is damaged.
    #[error("not a valid safetensors file ({0})")]
    Container(String),
    /// A required tensor is absent.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    /// A tensor is not f32.
    #[error("tensor `{name}` is {dtype}; expected F32")]
    Dtype {
        /// The tensor.
        name: String,
        /// Its dtype as safetensors names it (`F16`, `BF16`, ...).
        dtype: String,
    },
    /// `q` or `k` does not have three dimensions.
    #[error("tensor `{name}` has shape {shape:?}; expected 3 dimensions")]
    Rank {
        /// The tensor.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// `v` and `k` differ in shape.
    #[error("`v` has shape {v:?} but `k` has {k:?}")]
    VShape {
        /// The shape of `v`.
        v: Vec<usize>,
        /// The shape of `k`.
        k: Vec<usize>,
    },
    /// `q` and `k` differ in head dimension.
    #[error("`q` has head dim {q} but `k` has {k}")]
    HeadDim {
        /// The last dimension of `q`.
        q: usize,
        /// The last dimension of `k`.
        k: usize,
    },
    /// DIFF V2 pairs query heads, so `q` needs an even count.
    #[error("`q` has {0} heads; DIFF V2 needs an even number (2h)")]
    OddHeads(usize),
    /// `lam` is not (N, h) (or (N, h, 1)).
    #[error("`lam` has shape {shape:?}; expected [{n}, {heads}]")]
    LamShape {
        /// Its shape.
        shape: Vec<usize>,
        /// Query rows N from `q`.
        n: usize,
        /// Output heads h.
        heads: usize,
    },
    /// A dimension does not fit the kernels' u32 sizes.
    #[error("{what} {value} is too large")]
    TooLarge {
        /// Which size (`N`, `S`, `heads`, ...).
        what: &'static str,
        /// The value.
        value: usize,
    },
}

/// The tensors of an input file with the sizes they imply. The shapes are consistent with each
/// other and with the data lengths, but not yet checked against the kernels' limits (head dim,
/// heads a multiple of kv heads): [`super::check_host`] on [`AttnInputs::config`] does that.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnInputs {
    /// DIFF V2 or standard, as requested.
    pub mode: Mode,
    /// Query rows N.
    pub n_queries: u32,
    /// Keys S.
    pub seq_len: u32,
    /// Output heads h.
    pub heads: u32,
    /// KV heads h_kv.
    pub kv_heads: u32,
    /// Head dimension d.
    pub head_dim: u32,
    /// (N, 2h, d) in DIFF V2, (N, h, d) in standard mode.
    pub q: Vec<f32>,
    /// (S, h_kv, d).
    pub k: Vec<f32>,
    /// (S, h_kv, d).
    pub v: Vec<f32>,
    /// (N, h) in DIFF V2, empty in standard mode.
    pub lam: Vec<f32>,
}

impl AttnInputs {
    /// The layer these tensors describe, with the caller's storage and scale choices.
    pub fn config(&self, kv_dtype: KvDtype, scale: Option<f32>) -> AttentionConfig {
        AttentionConfig {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            mode: self.mode,
            kv_dtype,
            scale,
        }
    }

    /// The call these tensors describe, with the caller's mask.
    pub fn call(&self, causal: bool, past_len: u32) -> AttentionCall {
        AttentionCall {
            n_queries: self.n_queries,
            seq_len: self.seq_len,
            causal,
            past_len,
        }
    }

    /// Borrowed views in the layout [`super::attention`] takes.
    pub fn host(&self) -> HostInputs<'_> {
        HostInputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            lam: &self.lam,
        }
    }
}

struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn tensor(st: &SafeTensors, name: &str) -> Result<Tensor, InputError> {
    let view = st
        .tensor(name)
        .map_err(|_| InputError::MissingTensor(name.to_string()))?;
    if view.dtype() != Dtype::F32 {
        return Err(InputError::Dtype {
            name: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        });
    }
    // safetensors has checked that the byte length is the shape's element count times 4.
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

fn rank3(t: &Tensor, name: &str) -> Result<[usize; 3], InputError> {
    match t.shape[..] {
        [a, b, c] => Ok([a, b, c]),
        _ => Err(InputError::Rank {
            name: name.to_string(),
            shape: t.shape.clone(),
        }),
    }
}

fn to_u32(value: usize, what: &'static str) -> Result<u32, InputError> {
    u32::try_from(value).map_err(|_| InputError::TooLarge { what, value })
}

/// Parses an input file's bytes for `mode`: `q`, `k`, `v` (and `lam` in DIFF V2) must be f32,
/// `q` (N, 2h or h, d), `k` and `v` (S, h_kv, d), `lam` (N, h) or (N, h, 1). Other tensors are
/// ignored.
pub fn read_inputs(bytes: &[u8], mode: Mode) -> Result<AttnInputs, InputError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| InputError::Container(e.to_string()))?;
    let q = tensor(&st, "q")?;
    let k = tensor(&st, "k")?;
    let v = tensor(&st, "v")?;
    let [n, q_heads, d] = rank3(&q, "q")?;
    let [s, kv_heads, dk] = rank3(&k, "k")?;
    if v.shape != k.shape {
        return Err(InputError::VShape {
            v: v.shape,
            k: k.shape,
        });
    }
    if dk != d {
        return Err(InputError::HeadDim { q: d, k: dk });
    }
    let heads = match mode {
        Mode::Diff if q_heads % 2 != 0 => return Err(InputError::OddHeads(q_heads)),
        Mode::Diff => q_heads / 2,
        Mode::Standard => q_heads,
    };
    let lam = match mode {
        Mode::Diff => {
            let lam = tensor(&st, "lam")?;
            if lam.shape != [n, heads] && lam.shape != [n, heads, 1] {
                return Err(InputError::LamShape {
                    shape: lam.shape,
                    n,
                    heads,
                });
            }
            lam.data
        }
        Mode::Standard => Vec::new(),
    };
    Ok(AttnInputs {
        mode,
        n_queries: to_u32(n, "N")?,
        seq_len: to_u32(s, "S")?,
        heads: to_u32(heads, "heads")?,
        kv_heads: to_u32(kv_heads, "kv heads")?,
        head_dim: to_u32(d, "head dim")?,
        q: q.data,
        k: k.data,
        v: v.data,
        lam,
    })
}
