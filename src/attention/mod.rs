//! Host side of the DIFF V2 attention kernels: the op description, shape checks, dispatch plans and
//! the public entry points (on GPU buffers, and a host convenience on `&[f32]`).
//!
//! Two passes per call. The first runs plain softmax attention over all query heads (2h in DIFF V2,
//! h in standard mode) and writes per-row partials: `flash_attn.wgsl` for many query rows (prefill),
//! `decode_split.wgsl` for one or a few query rows over a long cache. The second,
//! `diff_combine.wgsl`, merges the partials and applies `c_i = o_2i - sigmoid(lam_i) * o_2i+1`.

use crate::error::{Error, Result};
use crate::gpu::{Const, Gpu, ShaderSpec};
use std::sync::Arc;

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
/// [`DECODE_MAX_QUERIES`] query rows and the tiled flash kernel otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Auto,
    Flash,
    Decode,
}

/// Up to this many query rows, `Kernel::Auto` decodes with split-KV partials.
pub const DECODE_MAX_QUERIES: u32 = 4;
/// KV positions per workgroup in the decode kernel (fixed by `decode_split.wgsl`).
pub const DECODE_CHUNK: u32 = 128;
const DECODE_MAX_HEADS_PER_WG: u32 = 8;
const FLASH_WG: u32 = 64;
/// Workgroup memory the flash kernel plans for: the WebGPU default, portable everywhere.
const FLASH_WORKGROUP_BYTES: u32 = 16 * 1024;

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
            Mode::Diff => 2 * self.heads,
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
    let count = |dims: &[u32]| dims.iter().map(|&x| x as usize).product::<usize>();
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

fn fmt_shape(dims: &[u32]) -> String {
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

/// The uniform block every attention shader reads (same field order as the WGSL `Params`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_queries: u32,
    seq_len: u32,
    q_heads: u32,
    kv_heads: u32,
    group: u32,
    heads_per_wg: u32,
    head_splits: u32,
    rows_per_wg: u32,
    past_len: u32,
    causal: u32,
    n_chunks: u32,
    out_heads: u32,
    scale: f32,
    diff: u32,
    chunk_len: u32,
    pad0: u32,
}

/// How one call is dispatched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub kernel: Kernel,
    pub n_chunks: u32,
    pub heads_per_wg: u32,
    pub head_splits: u32,
    pub rows_per_wg: u32,
    pub groups: [u32; 3],
}

/// Builds the dispatch plan for a call (`kernel` is resolved: never `Auto` in the result).
pub fn plan(cfg: &AttentionConfig, call: &AttentionCall, kernel: Kernel) -> Plan {
    let group = cfg.group();
    let kernel = match kernel {
        Kernel::Auto if call.n_queries <= DECODE_MAX_QUERIES => Kernel::Decode,
        Kernel::Auto => Kernel::Flash,
        k => k,
    };
    match kernel {
        Kernel::Decode => {
            let heads_per_wg = group.min(DECODE_MAX_HEADS_PER_WG);
            let head_splits = group.div_ceil(heads_per_wg);
            let n_chunks = call.seq_len.div_ceil(DECODE_CHUNK);
            Plan {
                kernel,
                n_chunks,
                heads_per_wg,
                head_splits,
                rows_per_wg: 1,
                groups: [n_chunks, cfg.kv_heads * head_splits, call.n_queries],
            }
        }
        _ => {
            let heads_per_wg = group.min(FLASH_WG);
            let head_splits = group.div_ceil(heads_per_wg);
            let rows_per_wg = FLASH_WG / heads_per_wg;
            Plan {
                kernel: Kernel::Flash,
                n_chunks: 1,
                heads_per_wg,
                head_splits,
                rows_per_wg,
                groups: [
                    call.n_queries.div_ceil(rows_per_wg),
                    cfg.kv_heads * head_splits,
                    1,
                ],
            }
        }
    }
}

/// Keys per flash tile: two f32 tiles of BLOCK_K x head_dim fill the workgroup memory we plan for.
fn flash_block_k(head_dim: u32) -> u32 {
    (FLASH_WORKGROUP_BYTES / (2 * 4 * head_dim)).clamp(4, 64)
}

/// GPU buffers for one call. `lam` is required in DIFF V2 mode and ignored in standard mode.
pub struct AttentionBuffers<'a> {
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub lam: Option<&'a wgpu::Buffer>,
    pub out: &'a wgpu::Buffer,
}

/// A compiled attention layer: pipelines for one [`AttentionConfig`] plus the partials scratch.
pub struct AttentionOp {
    cfg: AttentionConfig,
    flash: Arc<wgpu::ComputePipeline>,
    decode: Arc<wgpu::ComputePipeline>,
    combine: Arc<wgpu::ComputePipeline>,
    scratch: Option<(wgpu::Buffer, wgpu::Buffer)>,
    no_lam: wgpu::Buffer,
}

impl AttentionOp {
    pub fn new(gpu: &Gpu, cfg: AttentionConfig) -> Result<Self> {
        cfg.validate()?;
        let d = Const::U32(cfg.head_dim);
        let f16 = Const::Bool(cfg.kv_dtype == KvDtype::F16);
        let flash = gpu.pipeline(
            &ShaderSpec::new("flash_attn")
                .with("HEAD_DIM", d)
                .with("BLOCK_K", Const::U32(flash_block_k(cfg.head_dim)))
                .with("KV_F16", f16),
        )?;
        let decode = gpu.pipeline(
            &ShaderSpec::new("decode_split")
                .with("HEAD_DIM", d)
                .with("KV_F16", f16),
        )?;
        let combine = gpu.pipeline(&ShaderSpec::new("diff_combine").with("HEAD_DIM", d))?;
        let no_lam = gpu.storage("lam (unused)", 16)?;
        Ok(Self {
            cfg,
            flash,
            decode,
            combine,
            scratch: None,
            no_lam,
        })
    }

    pub fn config(&self) -> &AttentionConfig {
        &self.cfg
    }

    /// Checks buffer sizes against the call, and dispatch sizes against the adapter.
    fn check(
        &self,
        gpu: &Gpu,
        call: &AttentionCall,
        plan: &Plan,
        bufs: &AttentionBuffers,
    ) -> Result<()> {
        call.validate()?;
        let sh = shapes(&self.cfg, call);
        let kv_bytes = sh.kv.0 as u64 * self.cfg.kv_dtype.bytes();
        let need = |name: &str, buf: &wgpu::Buffer, bytes: u64, dims: &[u32]| -> Result<()> {
            if buf.size() < bytes {
                return Err(Error::shape(
                    name,
                    format!("{} = {bytes} bytes", fmt_shape(dims)),
                    format!("a buffer of {} bytes", buf.size()),
                ));
            }
            Ok(())
        };
        need("q", bufs.q, sh.q.0 as u64 * 4, &sh.q.1)?;
        need("k", bufs.k, kv_bytes, &sh.kv.1)?;
        need("v", bufs.v, kv_bytes, &sh.kv.1)?;
        need("out", bufs.out, sh.out.0 as u64 * 4, &sh.out.1)?;
        if self.cfg.mode == Mode::Diff {
            let lam = bufs
                .lam
                .ok_or_else(|| Error::shape("lam", fmt_shape(&sh.lam.1), "no buffer"))?;
            need("lam", lam, sh.lam.0 as u64 * 4, &sh.lam.1)?;
        }
        gpu.check_dispatch("attention", plan.groups)
    }

    fn ensure_scratch(&mut self, gpu: &Gpu, call: &AttentionCall, plan: &Plan) -> Result<()> {
        let rows = call.n_queries as u64 * self.cfg.q_heads() as u64 * plan.n_chunks as u64;
        let o_bytes = rows * self.cfg.head_dim as u64 * 4;
        let ml_bytes = rows * 8;
        let fits =
            matches!(&self.scratch, Some((o, ml)) if o.size() >= o_bytes && ml.size() >= ml_bytes);
        if !fits {
            self.scratch = Some((
                gpu.storage("attention partials (o)", o_bytes)?,
                gpu.storage("attention partials (max, sum)", ml_bytes)?,
            ));
        }
        Ok(())
    }

    /// Records both passes of one attention call into `encoder`, in one compute pass (with the
    /// given timestamp writes, for benchmarks).
    pub fn encode(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        call: &AttentionCall,
        kernel: Kernel,
        bufs: &AttentionBuffers,
        timestamps: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<Plan> {
        let plan = plan(&self.cfg, call, kernel);
        self.check(gpu, call, &plan, bufs)?;
        self.ensure_scratch(gpu, call, &plan)?;
        let (part_o, part_ml) = self.scratch.as_ref().expect("scratch allocated above");
        let cfg = &self.cfg;
        let params = Params {
            n_queries: call.n_queries,
            seq_len: call.seq_len,
            q_heads: cfg.q_heads(),
            kv_heads: cfg.kv_heads,
            group: cfg.group(),
            heads_per_wg: plan.heads_per_wg,
            head_splits: plan.head_splits,
            rows_per_wg: plan.rows_per_wg,
            past_len: call.past_len,
            causal: call.causal as u32,
            n_chunks: plan.n_chunks,
            out_heads: cfg.heads,
            scale: cfg.scale(),
            diff: (cfg.mode == Mode::Diff) as u32,
            chunk_len: DECODE_CHUNK,
            pad0: 0,
        };
        let uniform = gpu.uniform("attention params", &params);
        let first = match plan.kernel {
            Kernel::Decode => &self.decode,
            _ => &self.flash,
        };
        let first_bg = gpu.bind(first, &[&uniform, bufs.q, bufs.k, bufs.v, part_o, part_ml]);
        let lam = bufs.lam.unwrap_or(&self.no_lam);
        let combine_bg = gpu.bind(&self.combine, &[&uniform, part_o, part_ml, lam, bufs.out]);
        let combine_groups = grid_2d(call.n_queries * cfg.heads);

        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("diff attention"),
            timestamp_writes: timestamps,
        });
        pass.set_pipeline(first);
        pass.set_bind_group(0, &first_bg, &[]);
        pass.dispatch_workgroups(plan.groups[0], plan.groups[1], plan.groups[2]);
        pass.set_pipeline(&self.combine);
        pass.set_bind_group(0, &combine_bg, &[]);
        pass.dispatch_workgroups(combine_groups[0], combine_groups[1], 1);
        Ok(plan)
    }
}

/// Spreads `groups` workgroups over x and y so that neither exceeds the portable 65535.
pub(crate) fn grid_2d(groups: u32) -> [u32; 2] {
    let x = groups.clamp(1, 32768);
    [x, groups.div_ceil(x).max(1)]
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

/// K/V values as the GPU stores them for `dtype` (f16: packed pairs, low half first).
pub fn kv_bytes(values: &[f32], dtype: KvDtype) -> Vec<u8> {
    match dtype {
        KvDtype::F32 => bytemuck::cast_slice(values).to_vec(),
        KvDtype::F16 => {
            let halves: Vec<half::f16> = values.iter().map(|&x| half::f16::from_f32(x)).collect();
            bytemuck::cast_slice(&halves).to_vec()
        }
    }
}

/// Runs one attention call on host data: uploads, runs both passes (output poisoned with NaN first,
/// so an unwritten element cannot pass a check), reads back `out` (N, h, d).
pub async fn attention(
    gpu: &Gpu,
    cfg: &AttentionConfig,
    call: &AttentionCall,
    x: &HostInputs<'_>,
    kernel: Kernel,
) -> Result<Vec<f32>> {
    check_host(cfg, call, x)?;
    let mut op = AttentionOp::new(gpu, *cfg)?;
    let q = gpu.storage_init("q", bytemuck::cast_slice(x.q))?;
    let k = gpu.storage_init("k", &kv_bytes(x.k, cfg.kv_dtype))?;
    let v = gpu.storage_init("v", &kv_bytes(x.v, cfg.kv_dtype))?;
    let lam = match cfg.mode {
        Mode::Diff => Some(gpu.storage_init("lam", bytemuck::cast_slice(x.lam))?),
        Mode::Standard => None,
    };
    let out_len = shapes(cfg, call).out.0;
    let out = gpu.storage("out", out_len as u64 * 4)?;
    gpu.poison(&out);
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    op.encode(
        gpu,
        &mut enc,
        call,
        kernel,
        &AttentionBuffers {
            q: &q,
            k: &k,
            v: &v,
            lam: lam.as_ref(),
            out: &out,
        },
        None,
    )?;
    // The partials are poisoned too: a chunk the first pass skips must not read as valid data.
    if let Some((o, ml)) = &op.scratch {
        gpu.poison(o);
        gpu.poison(ml);
    }
    gpu.queue.submit([enc.finish()]);
    gpu.take_error("attention")?;
    gpu.read_f32(&out, out_len).await
}

/// Blocking form of [`attention`] for native programs.
#[cfg(not(target_arch = "wasm32"))]
pub fn attention_blocking(
    gpu: &Gpu,
    cfg: &AttentionConfig,
    call: &AttentionCall,
    x: &HostInputs<'_>,
    kernel: Kernel,
) -> Result<Vec<f32>> {
    pollster::block_on(attention(gpu, cfg, call, x, kernel))
}
