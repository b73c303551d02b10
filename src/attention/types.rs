//! The attention op's shapes and options, with no GPU code: the parsers (the `attn` input file,
//! the model config) and the float64 reference need them in builds without the `gpu` feature.

use crate::error::{Error, Result};

/// Whether the layer is DIFF V2 (2h query heads paired into h outputs) or standard attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[serde(alias = "diff_v2")]
    Diff,
    Standard,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "diff" | "diff_v2" | "diffv2" => Ok(Mode::Diff),
            "standard" => Ok(Mode::Standard),
            other => Err(Error::config(format!(
                "unknown attention mode `{other}` (expected diff or standard)"
            ))),
        }
    }
}

/// Storage type of K and V on the GPU. f16 is stored as packed pairs in u32 words and widened in
/// the shader, so it works on every adapter, SHADER_F16 or not; arithmetic is f32 either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    F16,
}

impl KvDtype {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            other => Err(Error::config(format!(
                "unknown K/V dtype `{other}` (expected f32 or f16)"
            ))),
        }
    }

    pub fn bytes(self) -> u64 {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

/// Which first-pass kernel to run. `Auto` takes split-KV decoding for up to
/// `DECODE_MAX_QUERIES` query rows and the tiled flash kernel otherwise, each on the fastest path
/// the adapter offers (see `AttentionOp::paths`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Auto,
    /// Tiled online softmax, portable WGSL (`flash_attn.wgsl`).
    Flash,
    /// Split-KV decoding, portable WGSL (`decode_split.wgsl`).
    Decode,
    /// Split-KV decoding without workgroup memory or barriers, one invocation per query head and
    /// chunk (`decode_serial.wgsl`): what CPU adapters run fastest; portable.
    DecodeSerial,
    /// Split-KV decoding on cooperative matrices, f16 K/V (`decode_coop.wgsl`; native adapters
    /// with 16x16 f16 tiles).
    DecodeCoop,
    /// Split-KV decoding on subgroup shuffles, f16 K/V (`decode_subgroup.wgsl`; adapters with
    /// subgroups): every K/V row spread over a group of lanes, coalesced, f32 arithmetic.
    DecodeSubgroup,
    /// Two-pass attention for many query rows on cooperative matrices, f16 K/V
    /// (`flash_coop.wgsl`; native adapters with 16x16 f16 tiles).
    FlashCoop,
}

impl Kernel {
    /// Every kernel choice, in the order the CLI lists them.
    pub const ALL: [Kernel; 7] = [
        Kernel::Auto,
        Kernel::Decode,
        Kernel::DecodeSerial,
        Kernel::DecodeCoop,
        Kernel::DecodeSubgroup,
        Kernel::Flash,
        Kernel::FlashCoop,
    ];

    /// The kernel with this [`Kernel::name`].
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                Error::config(format!(
                    "unknown kernel `{s}` (expected {})",
                    names.join(", ")
                ))
            })
    }

    /// The name `diffattn verify` and the benchmarks print.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Auto => "auto",
            Kernel::Flash => "flash",
            Kernel::Decode => "decode",
            Kernel::DecodeSerial => "decode-serial",
            Kernel::DecodeCoop => "decode-coop",
            Kernel::DecodeSubgroup => "decode-subgroup",
            Kernel::FlashCoop => "flash-coop",
        }
    }
}

/// The most output (and KV) heads [`AttentionConfig::validate`] accepts.
pub const MAX_HEADS: u32 = 1 << 16;

/// The layer's fixed shape: what a pipeline is specialised for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionConfig {
    /// Output heads h (DIFF V2 has 2h query heads).
    pub heads: u32,
    /// KV heads h_kv; h must be a multiple of h_kv.
    pub kv_heads: u32,
    pub head_dim: u32,
    pub mode: Mode,
    pub kv_dtype: KvDtype,
    /// Softmax scale; `None` means 1/sqrt(head_dim).
    pub scale: Option<f32>,
}

impl AttentionConfig {
    pub fn new(mode: Mode, heads: u32, kv_heads: u32, head_dim: u32) -> Self {
        Self {
            heads,
            kv_heads,
            head_dim,
            mode,
            kv_dtype: KvDtype::F32,
            scale: None,
        }
    }

    /// Query heads: 2h in DIFF V2, h in standard mode.
    pub fn q_heads(&self) -> u32 {
        match self.mode {
            // Saturating: a config not yet validated must not overflow here.
            Mode::Diff => self.heads.saturating_mul(2),
            Mode::Standard => self.heads,
        }
    }

    pub fn scale(&self) -> f32 {
        self.scale.unwrap_or(1.0 / (self.head_dim as f32).sqrt())
    }

    /// Query heads per KV head.
    pub fn group(&self) -> u32 {
        self.q_heads() / self.kv_heads
    }

    pub fn validate(&self) -> Result<()> {
        if self.heads == 0 || self.kv_heads == 0 {
            return Err(Error::config("heads and kv_heads must be at least 1"));
        }
        // 2h query heads and every head index the kernels form must fit u32 with room to spare;
        // no real layer comes near this.
        if self.heads > MAX_HEADS || self.kv_heads > MAX_HEADS {
            return Err(Error::config(format!(
                "heads ({}) and kv_heads ({}) must be at most {MAX_HEADS}",
                self.heads, self.kv_heads
            )));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::config(format!(
                "heads ({}) must be a multiple of kv_heads ({})",
                self.heads, self.kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(8) || !(8..=256).contains(&self.head_dim) {
            return Err(Error::Unsupported(format!(
                "head_dim {} (supported: multiples of 8 from 8 to 256)",
                self.head_dim
            )));
        }
        if let Some(s) = self.scale
            && !s.is_finite()
        {
            return Err(Error::config(format!("scale {s} is not finite")));
        }
        Ok(())
    }
}

/// The per-call sizes: N query rows against S cached keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionCall {
    pub n_queries: u32,
    pub seq_len: u32,
    /// With a causal mask, query row n sits at position `past_len + n` and sees keys
    /// `0..=past_len + n` (those that exist).
    pub causal: bool,
    pub past_len: u32,
}

impl AttentionCall {
    pub fn validate(&self) -> Result<()> {
        if self.n_queries == 0 {
            return Err(Error::config("at least one query row is needed"));
        }
        if self.seq_len == 0 {
            return Err(Error::config("at least one key is needed"));
        }
        // The kernels compute past_len + n + 1 in u32: past that it would wrap to a query that sees
        // no key, and the output would be NaN.
        if self.causal && (self.past_len as u64) + (self.n_queries as u64) >= u32::MAX as u64 {
            return Err(Error::config(format!(
                "past_len {} with {} query rows puts positions beyond {}",
                self.past_len,
                self.n_queries,
                u32::MAX - 1
            )));
        }
        Ok(())
    }
}

/// Element counts of each tensor, with their shapes for error messages.
pub struct Shapes {
    pub q: (usize, [u32; 3]),
    pub kv: (usize, [u32; 3]),
    pub lam: (usize, [u32; 2]),
    pub out: (usize, [u32; 3]),
}

pub fn shapes(cfg: &AttentionConfig, call: &AttentionCall) -> Shapes {
    let (n, s, d) = (call.n_queries, call.seq_len, cfg.head_dim);
    // In u64 and saturated: on a 32-bit target (wasm) the product of valid u32 sizes can exceed
    // usize, and a saturated count still fails the length check instead of wrapping to a match.
    let count = |dims: &[u32]| {
        let n = dims.iter().fold(1u64, |a, &x| a.saturating_mul(x as u64));
        usize::try_from(n).unwrap_or(usize::MAX)
    };
    let q = [n, cfg.q_heads(), d];
    let kv = [s, cfg.kv_heads, d];
    let lam = [n, cfg.heads];
    let out = [n, cfg.heads, d];
    Shapes {
        q: (count(&q), q),
        kv: (count(&kv), kv),
        lam: (
            if cfg.mode == Mode::Diff {
                count(&lam)
            } else {
                0
            },
            lam,
        ),
        out: (count(&out), out),
    }
}

pub(crate) fn fmt_shape(dims: &[u32]) -> String {
    let inner: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("({})", inner.join(", "))
}

fn check_len(tensor: &str, got: usize, want: usize, dims: &[u32]) -> Result<()> {
    if got != want {
        return Err(Error::shape(
            tensor,
            format!("{} = {want} values", fmt_shape(dims)),
            format!("{got} values"),
        ));
    }
    Ok(())
}

/// Host-side inputs in the public layouts: q (N, 2h, d) (or (N, h, d) in standard mode),
/// k and v (S, h_kv, d), lam (N, h) (empty in standard mode). All f32.
#[derive(Clone, Copy, Debug)]
pub struct HostInputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub lam: &'a [f32],
}

/// Checks host slices against the shapes the config and call imply.
pub fn check_host(cfg: &AttentionConfig, call: &AttentionCall, x: &HostInputs) -> Result<()> {
    cfg.validate()?;
    call.validate()?;
    let sh = shapes(cfg, call);
    check_len("q", x.q.len(), sh.q.0, &sh.q.1)?;
    check_len("k", x.k.len(), sh.kv.0, &sh.kv.1)?;
    check_len("v", x.v.len(), sh.kv.0, &sh.kv.1)?;
    if cfg.mode == Mode::Diff {
        check_len("lam", x.lam.len(), sh.lam.0, &sh.lam.1)?;
    }
    Ok(())
}

/// K/V values as the GPU stores them for `dtype` (f16: packed pairs, low half first; values past
/// the f16 range saturate to the largest finite half, as the KV-append shader does).
pub fn kv_bytes(values: &[f32], dtype: KvDtype) -> Vec<u8> {
    match dtype {
        KvDtype::F32 => bytemuck::cast_slice(values).to_vec(),
        KvDtype::F16 => {
            let max = half::f16::MAX.to_f32();
            let halves: Vec<half::f16> = values
                .iter()
                .map(|&x| half::f16::from_f32(if x.is_nan() { x } else { x.clamp(-max, max) }))
                .collect();
            bytemuck::cast_slice(&halves).to_vec()
        }
    }
}
