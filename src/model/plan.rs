//! The execution plan: every buffer, pipeline and bind group of the forward pass, built once at
//! load. A step afterwards only writes its parameter slots and records dispatches
//! ([`Plan::record_forward`]); nothing is created per token.
//!
//! Build order: [`upload_weights`] (weights to GPU buffers), [`Buffers::new`] (activations, KV cache,
//! token ids, the uniform arena, read-back buffers), then [`Plan::new`] (pipelines and the ops
//! that bind weights to buffers).

use super::cache::KvCache;
use super::config::Config;
use super::weights::{HostWeights, WeightDtype};
use crate::attention::{
    AttentionBinding, AttentionBuffers, AttentionCall, AttentionConfig, AttentionOp, DecodeTuning,
    Kernel, KvDtype, Mode, grid_2d,
};
use crate::error::{Error, Result};
use crate::gpu::{Const, Gpu, ShaderSpec, UniformArena};
use crate::sample::MAX_TOP_LOGPROBS;
use std::sync::Arc;

/// Token rows per workgroup of the GPU many-row product (matmul.wgsl's `TB`, specialised).
const GEMM_TOKENS: u32 = 8;

/// Forward chunks (prefill) or decode steps one submission can hold: each takes two arena slots.
pub const MAX_STEPS: u32 = 32;

crate::gpu::shader_struct! {
    /// The per-step block every model shader reads at binding 0 (`Step` in the WGSL files; the
    /// shader tests hold each copy against this definition).
    pub struct Step {
        /// Token rows of this forward chunk.
        n_tokens: u32,
        /// Position of the chunk's first token.
        past_len: u32,
        /// Where the chunk's token ids start in the ids buffer.
        ids_offset: u32,
        /// Where the sampler writes this step's result.
        sample_slot: u32,
    }
}

crate::gpu::shader_struct! {
    /// The sampling kernel's parameters (`Params` in sample_dist.wgsl; checked by the shader tests).
    pub struct SampleParams {
        /// Vocabulary size.
        vocab: u32,
        /// Keep the k most likely tokens; 0 keeps all.
        top_k: u32,
        /// Tokens the repetition penalty looks back over (1 to MAX_PENALTY_WINDOW); 0 turns it off.
        last_n: u32,
        /// Low and high words of the seed.
        seed_lo: u32,
        seed_hi: u32,
        /// Above 0.
        temperature: f32,
        /// In (0, 1]; 1 keeps all.
        top_p: f32,
        /// The CTRL-style repetition penalty; 1 turns it off.
        penalty: f32,
        /// 1: add the logit bias buffer to the logits first.
        biased: u32,
        pad0: u32,
        pad1: u32,
        pad2: u32,
    }
}

crate::gpu::shader_struct! {
    /// The greedy kernel's parameters (`Params` in sample.wgsl; checked by the shader tests).
    pub struct GreedyParams {
        /// Vocabulary size.
        vocab: u32,
        /// Tokens the repetition penalty looks back over; 0 turns it off.
        last_n: u32,
        /// The CTRL-style repetition penalty; 1 turns it off.
        penalty: f32,
        /// 1: add the logit bias buffer to the logits first.
        biased: u32,
    }
}

crate::gpu::shader_struct! {
    /// The alternatives kernel's parameters (`Params` in top_logprobs.wgsl; checked by the shader
    /// tests).
    pub struct TopParams {
        /// Vocabulary size.
        vocab: u32,
        /// Alternatives per step (at most [`crate::sample::MAX_TOP_LOGPROBS`]).
        n: u32,
        pad0: u32,
        pad1: u32,
    }
}

crate::gpu::shader_struct! {
    /// The products' parameters (`Params` in matmul.wgsl and gemm_coop.wgsl; checked by the
    /// shader tests).
    pub struct MatmulParams {
        /// Inputs per row.
        k: u32,
        /// Outputs per row.
        n: u32,
        /// 1: add the product to y (the residual connections).
        accumulate: u32,
        /// 1: only the last token's row.
        last_only: u32,
        /// 1: the one-token kernels fold in the RMSNorm of x (weights at binding 5).
        norm: u32,
        /// The folded norm's epsilon.
        eps: f32,
        /// 1: the one-token kernels write the SwiGLU of the interleaved gate/up rows.
        swiglu: u32,
        /// Output o of token t goes to y[t * y_stride + y_offset + o] (n and 0 for a product
        /// of its own; a product writing some columns of wider rows sets both).
        y_stride: u32,
        y_offset: u32,
        pad0: u32,
        pad1: u32,
    }
}

/// The longest repetition-penalty window the sampling kernel takes (it deduplicates the window
/// pairwise); longer windows sample on the CPU.
pub const MAX_PENALTY_WINDOW: u32 = 256;

/// Which kernel picks the next token on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The most likely token (sample.wgsl).
    Greedy,
    /// A draw from the sampler's distribution (sample_dist.wgsl).
    Sample,
}

/// What a step runs after its head: the picking kernel, then, where asked, the alternatives
/// kernel (top_logprobs.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Picking {
    /// The kernel that picks the token.
    pub pick: Pick,
    /// Also list the most likely tokens with their log-probabilities.
    pub alternatives: bool,
}

/// How the plan's kernels are chosen (from [`super::EngineOptions`] and the adapter).
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Lanes per output row in the decode matrix-vector kernel; with 1, `matvec_serial` runs
    /// instead, `serial_rows` rows per invocation.
    pub lanes: u32,
    /// Output rows per invocation of `matvec_serial`.
    pub serial_rows: u32,
    /// Invocations of the greedy token-picking kernel.
    pub sample_wg: u32,
    /// Prefill with the token-blocked GPU kernel (`gemm`) rather than `gemm_direct`.
    pub tiled: bool,
    /// Prefill products of f16 weights on cooperative matrices (gemm_coop.wgsl); the adapter
    /// must have them (see [`coop_gemm_unavailable`]).
    pub coop_gemm: bool,
    /// Fold each RMSNorm into the one-token product that reads it (decode and the LM head),
    /// which then runs one dispatch fewer per norm.
    pub fold_norm: bool,
    /// Apply SwiGLU in the one-token gate/up product (needs its row pairs in one workgroup:
    /// `lanes` <= 32, or an even `serial_rows`).
    pub fuse_swiglu: bool,
    /// Decode attention on the serial kernel (`None`: the attention op's own choice by adapter).
    pub serial_attention: Option<bool>,
}

impl Tuning {
    /// Whether the one-token gate/up product can write SwiGLU itself.
    fn swiglu_fits(&self) -> bool {
        if self.lanes == 1 {
            self.serial_rows.is_multiple_of(2)
        } else {
            self.lanes <= 32
        }
    }
}

/// Which kernel takes a matmul's many-row (prompt) case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ManyRows {
    /// `gemm_direct`: 4x4 blocks straight from storage (CPU adapters).
    Direct,
    /// `gemm`: matvec's layout, each weight load serving GEMM_TOKENS tokens.
    Tiled,
    /// gemm_coop.wgsl: BM x BN blocks on cooperative matrices.
    Coop,
}

/// Token rows and outputs per workgroup of gemm_coop.wgsl (its BM and BN).
const COOP_GEMM_BLOCK: u32 = 64;

/// Fewest token rows a product runs on gemm_coop.wgsl; fewer take the SIMT `gemm`. On the H200
/// the tensor-core kernel won with 454 rows in one product (3.05 against 3.50 ms for the
/// shipped model's 454-token prompt) and lost with 128 (8.8 against 6.2 ms in 128-row chunks)
/// and with 16 (a 16-token prompt's first token 1.9 against 1.3 ms): its grid is one workgroup
/// per 64 x 64 block, too few to fill the GPU below a few hundred rows.
const COOP_GEMM_MIN_ROWS: u32 = 256;

/// Workgroup memory of gemm_coop.wgsl (keep in step with its arrays): the staged x and W steps
/// (f16, BK + 8 wide) and the result block (f32, BN + 4 wide).
const COOP_GEMM_WORKGROUP_BYTES: u32 =
    2 * COOP_GEMM_BLOCK * (32 + 8) * 2 + COOP_GEMM_BLOCK * (64 + 4) * 4;

/// Why the cooperative-matrix prompt product cannot run on an adapter, or `None` if it can.
pub fn coop_gemm_unavailable(gpu: &Gpu) -> Option<String> {
    if !gpu.coop_f16 {
        return Some("the adapter has no 16x16 f16 cooperative matrices".into());
    }
    // Four subgroups of 32 take a quarter of the block each.
    if gpu.fixed_subgroup_size() != Some(32) {
        return Some("subgroups are not exactly 32 wide".into());
    }
    let limit = gpu.limits.max_compute_workgroup_storage_size;
    (COOP_GEMM_WORKGROUP_BYTES > limit).then(|| {
        format!(
            "needs {COOP_GEMM_WORKGROUP_BYTES} bytes of workgroup memory; the adapter has {limit}"
        )
    })
}

/// How many workgroups a dispatch needs, as a function of the token count.
#[derive(Clone, Copy)]
enum Grid {
    /// One thread per item, `per_token` items per token, 64 threads per workgroup.
    Elements { per_token: u32 },
    /// One workgroup per token row.
    Rows,
    /// One workgroup.
    Single,
    /// A matmul with `n` outputs per row: matvec for one row, a many-row kernel otherwise.
    Matmul {
        n: u32,
        last_only: bool,
        rows_per_group: u32,
        /// Output rows per workgroup of the one-row kernel (matvec or matvec_serial).
        matvec_rows_per_group: u32,
        /// The kernel of the many-row case.
        many: ManyRows,
    },
}

/// One prepared dispatch. `gemm` holds the many-row variant of a matmul (its own pipeline, hence
/// its own bind group).
struct Op {
    label: &'static str,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind: wgpu::BindGroup,
    gemm: Option<(Arc<wgpu::ComputePipeline>, wgpu::BindGroup)>,
    /// With a tensor-core `gemm`: the SIMT kernel for products of fewer than
    /// [`COOP_GEMM_MIN_ROWS`] rows.
    gemm_few: Option<(Arc<wgpu::ComputePipeline>, wgpu::BindGroup)>,
    grid: Grid,
    /// An op whose work a neighbouring product does for the token counts where that product runs
    /// its one-token kernel (a norm before it, SwiGLU after it): it then records nothing.
    folded: Folded,
}

/// When an op's work is done by a neighbouring product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Folded {
    /// Never: the op always runs.
    No,
    /// For a single token (the decode step).
    SingleToken,
    /// Always (the final norm: the LM head reads one row whatever the chunk).
    Always,
}

impl Op {
    fn record(
        &self,
        gpu: &Gpu,
        pass: &mut wgpu::ComputePass,
        n_tokens: u32,
        step_offset: u32,
    ) -> Result<()> {
        match self.folded {
            Folded::Always => return Ok(()),
            Folded::SingleToken if n_tokens == 1 => return Ok(()),
            _ => {}
        }
        let (pipeline, bind, groups) = match self.grid {
            Grid::Elements { per_token } => {
                let g = grid_2d((n_tokens * per_token).div_ceil(64));
                (&self.pipeline, &self.bind, [g[0], g[1], 1])
            }
            Grid::Rows => (&self.pipeline, &self.bind, [n_tokens, 1, 1]),
            Grid::Single => (&self.pipeline, &self.bind, [1, 1, 1]),
            Grid::Matmul {
                n,
                last_only,
                rows_per_group,
                matvec_rows_per_group,
                many,
            } => {
                let rows = if last_only { 1 } else { n_tokens };
                let (gemm, many) = match &self.gemm_few {
                    Some(few) if rows < COOP_GEMM_MIN_ROWS => (Some(few), ManyRows::Tiled),
                    _ => (self.gemm.as_ref(), many),
                };
                match gemm {
                    Some((p, b)) if rows > 1 && many == ManyRows::Coop => (
                        p,
                        b,
                        [
                            n.div_ceil(COOP_GEMM_BLOCK),
                            rows.div_ceil(COOP_GEMM_BLOCK),
                            1,
                        ],
                    ),
                    Some((p, b)) if rows > 1 && many == ManyRows::Direct => {
                        let g = grid_2d((rows.div_ceil(4) * n.div_ceil(4)).div_ceil(64));
                        (p, b, [g[0], g[1], 1])
                    }
                    // The GPU many-row kernel has matvec's grid over output rows, and one
                    // workgroup layer per block of GEMM_TOKENS token rows.
                    Some((p, b)) if rows > 1 => {
                        let g = grid_2d(n.div_ceil(rows_per_group));
                        (p, b, [g[0], g[1], rows.div_ceil(GEMM_TOKENS)])
                    }
                    _ => {
                        let g = grid_2d(n.div_ceil(matvec_rows_per_group));
                        (&self.pipeline, &self.bind, [g[0], g[1], 1])
                    }
                }
            }
        };
        gpu.check_dispatch(self.label, groups)?;
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind, &[step_offset]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        Ok(())
    }
}

/// One layer's weights on the GPU, with their storage types. The products that read the same
/// input are fused: q, k, v and lambda rows stacked in one matrix, gate and up in another.
struct LayerWeights {
    ln_in: wgpu::Buffer,
    ln_post: wgpu::Buffer,
    /// The fused q/k/v/lambda rows as (buffer, type, rows): one entry, or one per run of one
    /// type where the file mixes types (a Q4_K_M file's v is Q6_K), each its own product.
    qkvl: Vec<(wgpu::Buffer, WeightDtype, u32)>,
    o: (wgpu::Buffer, WeightDtype),
    gate_up: (wgpu::Buffer, WeightDtype),
    down: (wgpu::Buffer, WeightDtype),
}

/// All weights on the GPU. Matrices keep the file's type (ggml block types as their block bytes);
/// norm weights are widened to f32.
pub struct GpuWeights {
    embed: RowParts,
    layers: Vec<LayerWeights>,
    norm: wgpu::Buffer,
    /// `None` when the head is tied to the embedding.
    lm_head: Option<RowParts>,
}

impl GpuWeights {
    /// Bytes of every weight buffer on the GPU.
    fn bytes(&self) -> u64 {
        let parts = |r: &RowParts| r.parts.iter().map(|p| p.0.size()).sum::<u64>();
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                let qkvl: u64 = l.qkvl.iter().map(|q| q.0.size()).sum();
                [&l.ln_in, &l.ln_post, &l.o.0, &l.gate_up.0, &l.down.0]
                    .iter()
                    .map(|b| b.size())
                    .sum::<u64>()
                    + qkvl
            })
            .sum();
        parts(&self.embed) + layers + self.norm.size() + self.lm_head.as_ref().map_or(0, parts)
    }
}

/// A matrix in one buffer or, where it exceeds the adapter's storage-binding limit, in several,
/// each a run of whole rows: the embedding and the output head, the tensors that large
/// vocabularies make too big for one binding. Each part gets its own gather or product dispatch.
struct RowParts {
    dtype: WeightDtype,
    /// (buffer, first row, rows), in row order.
    parts: Vec<(wgpu::Buffer, u32, u32)>,
}

/// Rows per part when a matrix of `rows` rows of `row_bytes` bytes exceeds one binding: as many as
/// fit the binding and buffer limits. `None` when the whole matrix fits one binding.
pub(crate) fn rows_per_part(
    gpu: &Gpu,
    what: &str,
    rows: u64,
    row_bytes: u64,
) -> Result<Option<u64>> {
    let limits = &gpu.limits;
    let max = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    if rows * row_bytes <= max {
        return Ok(None);
    }
    let fit = max / row_bytes.max(1);
    if fit == 0 || !row_bytes.is_multiple_of(4) {
        // Not even one row fits (or rows do not start on a word): refused with the whole
        // tensor's size, as any other tensor too large for a binding is.
        gpu.check_binding(what, rows * row_bytes)?;
    }
    Ok(Some(fit))
}

/// Uploads matrix `name`, split into [`RowParts`] where it exceeds one binding.
fn upload_rows(gpu: &Gpu, weights: &HostWeights, name: &str) -> Result<RowParts> {
    let (bytes, dtype) = stacked(weights, &[name])?;
    let rows = weights.info(name)?.shape[0] as u64;
    let row_bytes = bytes.len() as u64 / rows.max(1);
    let per = rows_per_part(gpu, name, rows, row_bytes)?.unwrap_or(rows.max(1));
    let mut parts = Vec::new();
    for first in (0..rows).step_by(per as usize) {
        let n = per.min(rows - first);
        let at = (first * row_bytes) as usize;
        let chunk = &bytes[at..at + (n * row_bytes) as usize];
        parts.push((gpu.storage_init(name, chunk)?, first as u32, n as u32));
    }
    Ok(RowParts { dtype, parts })
}

/// Whether `name` is uploaded as [`RowParts`] (and so may exceed one binding).
pub(crate) fn splits_by_rows(name: &str) -> bool {
    matches!(name, "model.embed_tokens.weight" | "lm_head.weight")
}

/// Uploads every weight. `progress(done, total)` reports bytes uploaded. A tensor too large for one
/// binding is refused (with its name) before anything is allocated, except the embedding and the
/// output head, which are split across bindings by rows (refused only where one row
/// does not fit).
pub fn upload_weights(
    gpu: &Gpu,
    cfg: &Config,
    weights: &HostWeights,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<GpuWeights> {
    for name in weights.names() {
        let (info, raw) = weights.raw(name)?;
        if splits_by_rows(name) {
            let rows = info.shape[0] as u64;
            rows_per_part(gpu, name, rows, raw.len() as u64 / rows.max(1))?;
        } else {
            gpu.check_binding(name, raw.len() as u64)?;
        }
    }
    let mut up = Upload::new(gpu, weights, progress);
    let embed = up.by_rows("model.embed_tokens.weight")?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        Some(up.by_rows("lm_head.weight")?)
    };
    let binding_bytes = gpu.limits.max_storage_buffer_binding_size;
    let mut layers = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let name = |t: &str| format!("{p}.{t}.weight");
        let mut qkvl = vec![
            name("self_attn.q_proj"),
            name("self_attn.k_proj"),
            name("self_attn.v_proj"),
        ];
        if cfg.mode() == Mode::Diff {
            qkvl.push(name("self_attn.lambda_proj"));
        }
        let qkvl: Vec<&str> = qkvl.iter().map(String::as_str).collect();
        let (gate, up_proj) = (name("mlp.gate_proj"), name("mlp.up_proj"));
        layers.push(LayerWeights {
            ln_in: up.widened(&name("input_layernorm"))?,
            ln_post: up.widened(&name("post_attention_layernorm"))?,
            qkvl: same_type_runs(weights, &qkvl, binding_bytes)?
                .iter()
                .map(|(run, rows)| {
                    let (buf, dtype) = up.fused(&format!("layer {l} q/k/v/lambda"), run, false)?;
                    Ok((buf, dtype, *rows))
                })
                .collect::<Result<Vec<_>>>()?,
            o: up.fused(
                &name("self_attn.o_proj"),
                &[&name("self_attn.o_proj")],
                false,
            )?,
            gate_up: up.fused(&format!("layer {l} gate/up"), &[&gate, &up_proj], true)?,
            down: up.fused(&name("mlp.down_proj"), &[&name("mlp.down_proj")], false)?,
        });
    }
    let norm = up.widened("model.norm.weight")?;
    Ok(GpuWeights {
        embed,
        layers,
        norm,
        lm_head,
    })
}

/// The weight upload with its progress: every tensor's file bytes count once it is on the GPU,
/// whatever form it takes there (stacked, interleaved, widened, split by rows).
struct Upload<'a> {
    gpu: &'a Gpu,
    weights: &'a HostWeights,
    done: u64,
    total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

impl<'a> Upload<'a> {
    fn new(gpu: &'a Gpu, weights: &'a HostWeights, progress: &'a mut dyn FnMut(u64, u64)) -> Self {
        let total = weights.total_bytes();
        progress(0, total);
        Self {
            gpu,
            weights,
            done: 0,
            total,
            progress,
        }
    }

    /// Reports `names` as uploaded.
    fn count(&mut self, names: &[&str]) {
        let w = self.weights;
        self.done += names
            .iter()
            .map(|n| w.raw(n).map_or(0, |(_, r)| r.len() as u64))
            .sum::<u64>();
        (self.progress)(self.done.min(self.total), self.total);
    }

    /// `parts` stacked into one matrix ([`stacked`]); with `pairs`, their rows interleaved (row j
    /// of each part in turn) instead.
    fn fused(
        &mut self,
        label: &str,
        parts: &[&str],
        pairs: bool,
    ) -> Result<(wgpu::Buffer, WeightDtype)> {
        let (mut bytes, dtype) = stacked(self.weights, parts)?;
        if pairs {
            let rows = self.weights.info(parts[0])?.shape[0];
            bytes = interleave_rows(&bytes, parts.len(), rows);
        }
        self.gpu.check_binding(label, bytes.len() as u64)?;
        let buf = self.gpu.storage_init(label, &bytes)?;
        self.count(parts);
        Ok((buf, dtype))
    }

    /// A norm's weights, widened to f32.
    fn widened(&mut self, name: &str) -> Result<wgpu::Buffer> {
        let values = self.weights.to_f32(name)?;
        let buf = self.gpu.storage_init(name, bytemuck::cast_slice(&values))?;
        self.count(&[name]);
        Ok(buf)
    }

    /// A table that may be split by rows ([`upload_rows`]).
    fn by_rows(&mut self, name: &str) -> Result<RowParts> {
        let parts = upload_rows(self.gpu, self.weights, name)?;
        self.count(&[name]);
        Ok(parts)
    }
}

/// `names` split into runs of consecutive tensors of one type, each with its row count: stacked,
/// a run keeps its type (where the types differ, one product per run instead of all widened). A
/// run also ends where it would outgrow `max_bytes` (the storage-binding limit), so that fusing
/// never makes a buffer too large to bind out of tensors that each fit.
fn same_type_runs<'n>(
    weights: &HostWeights,
    names: &[&'n str],
    max_bytes: u64,
) -> Result<Vec<(Vec<&'n str>, u32)>> {
    // (names, rows, type, bytes)
    let mut runs: Vec<(Vec<&'n str>, u32, WeightDtype, u64)> = Vec::new();
    for &name in names {
        let (info, raw) = weights.raw(name)?;
        let (rows, bytes) = (info.shape[0] as u32, raw.len() as u64);
        match runs.last_mut() {
            Some((run, n, dtype, size)) if *dtype == info.dtype && *size + bytes <= max_bytes => {
                run.push(name);
                *n += rows;
                *size += bytes;
            }
            _ => runs.push((vec![name], rows, info.dtype, bytes)),
        }
    }
    Ok(runs
        .into_iter()
        .map(|(run, rows, ..)| (run, rows))
        .collect())
}

/// The rows of `parts` matrices of `rows` rows each, stacked in `bytes` (one row width),
/// interleaved: row j of each part in turn (the fused gate/up product's pairs sit side by side).
fn interleave_rows(bytes: &[u8], parts: usize, rows: usize) -> Vec<u8> {
    let width = bytes.len() / (parts * rows);
    let mut out = Vec::with_capacity(bytes.len());
    for j in 0..rows {
        for part in 0..parts {
            out.extend_from_slice(&bytes[(part * rows + j) * width..][..width]);
        }
    }
    out
}

/// The rows of several matrices of one input width, stacked into one matrix in the given order:
/// their bytes as stored when all share a type (rows of a block type are whole blocks, so block
/// bytes stack too), else all widened to f32, which computes exactly what the float64 reference
/// does. Only gate/up takes the widening (its interleaved pairs need one buffer, and a Q4_K_M
/// file gives both one type); q/k/v/lambda are stacked by runs of one type instead
/// ([`same_type_runs`]).
fn stacked(weights: &HostWeights, names: &[&str]) -> Result<(Vec<u8>, WeightDtype)> {
    let mut parts = Vec::with_capacity(names.len());
    for n in names {
        parts.push(weights.raw(n)?);
    }
    let dtype = parts[0].0.dtype;
    if parts.len() == 1 {
        return Ok((parts[0].1.to_vec(), dtype));
    }
    if parts.iter().all(|(info, _)| info.dtype == dtype) {
        return Ok((
            parts
                .iter()
                .flat_map(|(_, raw)| raw.iter().copied())
                .collect(),
            dtype,
        ));
    }
    let mut wide = Vec::new();
    for n in names {
        wide.extend_from_slice(bytemuck::cast_slice(&weights.to_f32(n)?));
    }
    Ok((wide, WeightDtype::F32))
}

/// Activation buffers, sized for one prefill chunk.
struct Activations {
    x: wgpu::Buffer,
    a: wgpu::Buffer,
    /// Token rows of the fused product: [q | k | v | lambda].
    qkvl: wgpu::Buffer,
    q: wgpu::Buffer,
    lam: Option<wgpu::Buffer>,
    att: wgpu::Buffer,
    /// Token rows of the fused product: [gate | up].
    gate_up: wgpu::Buffer,
    /// silu(gate) * up.
    hidden: wgpu::Buffer,
    last: wgpu::Buffer,
    logits: wgpu::Buffer,
}

/// Every buffer the forward pass writes or the host reads, allocated once.
pub struct Buffers {
    act: Activations,
    /// Token ids: the prompt chunks of one submission, or each decode step's input.
    pub ids: wgpu::Buffer,
    pub cache: KvCache,
    rope_table: wgpu::Buffer,
    /// Two slots per step: its [`Step`] block, then its attention parameters.
    pub arena: UniformArena,
    /// The sampler's results, one (id, log-probability bits, flags, 0) per step.
    pub sampled: wgpu::Buffer,
    /// The alternatives kernel's results: [`MAX_TOP_LOGPROBS`] (id, log-probability bits) per step.
    pub alternatives: wgpu::Buffer,
    /// Read-backs of `sampled`, two GPU timestamps, then `alternatives` ([`READBACK_BYTES`]):
    /// two, so that one decode submission can run while the host reads the previous one's tokens.
    pub sampled_readback: [wgpu::Buffer; 2],
    /// The logit bias, one f32 per vocabulary entry (zero where none is set).
    pub logit_bias: wgpu::Buffer,
    /// Token ids by position: what the repetition penalty looks back over on the GPU.
    pub history: wgpu::Buffer,
    /// The sampling kernel's scratch: one f32 per vocabulary entry.
    sample_work: wgpu::Buffer,
    /// The greedy kernel's penalty-window marks: one u32 per vocabulary entry, zero between
    /// calls (its own buffer: the sampling kernel leaves logits in `sample_work`).
    penalty_marks: wgpu::Buffer,
    /// Read-back of the last position's logits (the CPU sampler and tests).
    pub logits_readback: wgpu::Buffer,
    /// Timestamps at the start and end of a submission's compute pass, where the adapter has them.
    pub timestamps: Option<(wgpu::QuerySet, wgpu::Buffer)>,
    /// Prompt tokens per forward chunk.
    pub chunk: u32,
}

/// Bytes of `sampled` for [`MAX_STEPS`] steps.
pub const SAMPLED_BYTES: u64 = MAX_STEPS as u64 * 16;

/// Bytes of `alternatives` for [`MAX_STEPS`] steps.
pub const ALTERNATIVES_BYTES: u64 = MAX_STEPS as u64 * MAX_TOP_LOGPROBS as u64 * 8;

/// Where the alternatives lie in a sampled read-back (after the results and two timestamps).
pub const ALTERNATIVES_AT: u64 = SAMPLED_BYTES + 16;

/// Bytes of a sampled read-back buffer.
pub const READBACK_BYTES: u64 = ALTERNATIVES_AT + ALTERNATIVES_BYTES;

impl Buffers {
    /// Allocates everything for `context` positions and prompt chunks of `chunk` tokens.
    pub fn new(gpu: &Gpu, cfg: &Config, context: u32, chunk: u32, kv: KvDtype) -> Result<Self> {
        let n = chunk as usize;
        let f32s = |label: &str, values: usize| gpu.storage(label, values as u64 * 4);
        let d = cfg.hidden_size as usize;
        let hd = cfg.head_dim as usize;
        let kv_width = cfg.num_key_value_heads as usize * hd;
        let heads = cfg.num_attention_heads as usize;
        let inter = cfg.intermediate_size as usize;
        let lam_width = if cfg.mode() == Mode::Diff { heads } else { 0 };
        let qkvl_width = cfg.q_heads() as usize * hd + 2 * kv_width + lam_width;
        let act = Activations {
            x: f32s("hidden state", n * d)?,
            a: f32s("normed hidden state", n * d)?,
            qkvl: f32s("q/k/v/lambda", n * qkvl_width)?,
            q: f32s("queries", n * cfg.q_heads() as usize * hd)?,
            lam: if cfg.mode() == Mode::Diff {
                Some(f32s("lambda logits", n * heads)?)
            } else {
                None
            },
            att: f32s("attention output", n * heads * hd)?,
            gate_up: f32s("mlp gate/up", n * 2 * inter)?,
            hidden: f32s("mlp hidden", n * inter)?,
            last: f32s("final norm", d)?,
            logits: f32s("logits", cfg.vocab_size as usize)?,
        };
        // A submission's prompt chunks lie side by side; the sampler writes the id after them.
        let id_slots = (chunk * MAX_STEPS).max(MAX_STEPS) + 1;
        let timestamps = gpu.timestamp_queries("step timestamps", 2).map(|q| {
            let resolve = gpu.buffer(
                "timestamp resolve",
                16,
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            );
            (q, resolve)
        });
        Ok(Self {
            act,
            ids: gpu.storage("token ids", id_slots as u64 * 4)?,
            cache: KvCache::new(gpu, cfg, context, kv)?,
            // One more than the context: the token picked after the last position lands there.
            history: gpu.storage("token history", (context as u64 + 1) * 4)?,
            sample_work: gpu.storage("sampling scratch", cfg.vocab_size as u64 * 4)?,
            penalty_marks: gpu.storage("penalty marks", cfg.vocab_size as u64 * 4)?,
            rope_table: rope_table(gpu, cfg, context)?,
            arena: UniformArena::new(gpu, "step parameters", 2 * MAX_STEPS),
            sampled: gpu.storage("sampled tokens", SAMPLED_BYTES)?,
            alternatives: gpu.storage("alternatives", ALTERNATIVES_BYTES)?,
            sampled_readback: [
                gpu.readback_buffer("sampled read-back 0", READBACK_BYTES),
                gpu.readback_buffer("sampled read-back 1", READBACK_BYTES),
            ],
            logit_bias: gpu.storage("logit bias", cfg.vocab_size as u64 * 4)?,
            logits_readback: gpu.readback_buffer("logits read-back", cfg.vocab_size as u64 * 4),
            timestamps,
            chunk,
        })
    }

    /// The logits of the last position (a GPU buffer the head writes).
    pub fn logits(&self) -> &wgpu::Buffer {
        &self.act.logits
    }
}

/// RoPE (cos, sin) per position and pair, in float64, rounded once.
fn rope_table(gpu: &Gpu, cfg: &Config, context: u32) -> Result<wgpu::Buffer> {
    let hd = cfg.head_dim as usize;
    let mut rope = Vec::with_capacity(context as usize * hd);
    for pos in 0..context as usize {
        for i in 0..hd / 2 {
            let inv_freq = cfg.rope_theta.powf(-2.0 * i as f64 / hd as f64);
            let angle = pos as f64 * inv_freq;
            rope.push(angle.cos() as f32);
            rope.push(angle.sin() as f32);
        }
    }
    gpu.storage_init("rope table", bytemuck::cast_slice(&rope))
}

/// Per-layer dispatches around attention, and the layer's attention bind groups.
struct LayerOps {
    pre: Vec<Op>,
    attention: AttentionBinding,
    post: Vec<Op>,
}

/// One entry of the forward pass: a prepared op, or a layer's attention (split and merge).
#[derive(Clone, Copy)]
enum Stage<'a> {
    Op(&'a Op),
    Attention(&'a AttentionBinding),
}

impl Stage<'_> {
    fn label(&self) -> &'static str {
        match self {
            Stage::Op(op) => op.label,
            Stage::Attention(_) => "attention",
        }
    }
}

/// The whole forward pass, prepared: ops for the embedding, each layer, the head and the sampler.
pub struct Plan {
    /// The embedding gather, one op per part of the table.
    embed: Vec<Op>,
    layers: Vec<LayerOps>,
    head: Vec<Op>,
    greedy: Op,
    /// The greedy kernel's [`GreedyParams`], rewritten when the sampling settings change.
    pub greedy_params: wgpu::Buffer,
    sample: Op,
    /// The sampling kernel's [`SampleParams`], rewritten when the sampling settings change.
    pub sample_params: wgpu::Buffer,
    top: Op,
    /// The alternatives kernel's [`TopParams`], rewritten when the number asked for changes.
    pub top_params: wgpu::Buffer,
    pub attention: AttentionOp,
    // Weights and per-op parameter blocks: held so that they outlive the bind groups using them.
    weights: GpuWeights,
    _params: Vec<wgpu::Buffer>,
}

/// Builds ops: pipelines from `gpu`'s cache, per-op parameter blocks kept in `params`.
struct Builder<'a> {
    gpu: &'a Gpu,
    cfg: &'a Config,
    tuning: Tuning,
    step: &'a wgpu::Buffer,
    params: Vec<wgpu::Buffer>,
    /// Bound as the norm weights of products without a folded norm.
    no_norm: wgpu::Buffer,
    /// (row stride, first column) of y for the next product ([`Builder::matmul_cols`]); `None`:
    /// y's rows are the product's own.
    y_cols: Option<(u32, u32)>,
}

impl Builder<'_> {
    fn params(&mut self, label: &str, v: [u32; 4]) -> wgpu::Buffer {
        let buf = self.gpu.uniform(label, &v);
        self.params.push(buf.clone());
        buf
    }

    fn op(
        &mut self,
        label: &'static str,
        spec: ShaderSpec,
        params: [u32; 4],
        bufs: &[&wgpu::Buffer],
        grid: Grid,
    ) -> Result<Op> {
        let params = self.params(label, params);
        self.op_with(label, spec, &params, bufs, grid)
    }

    /// An op whose parameter block (binding 1) is made by the caller.
    fn op_with(
        &mut self,
        label: &'static str,
        spec: ShaderSpec,
        params: &wgpu::Buffer,
        bufs: &[&wgpu::Buffer],
        grid: Grid,
    ) -> Result<Op> {
        let pipeline = self.gpu.pipeline(&spec)?;
        let mut all = vec![self.step, params];
        all.extend_from_slice(bufs);
        let bind = self.gpu.bind(&pipeline, &all);
        Ok(Op {
            label,
            pipeline,
            bind,
            gemm: None,
            gemm_few: None,
            grid,
            folded: Folded::No,
        })
    }

    fn elementwise(
        &mut self,
        name: &'static str,
        consts: Vec<(&'static str, Const)>,
        params: [u32; 4],
        bufs: &[&wgpu::Buffer],
        per_token: u32,
    ) -> Result<Op> {
        let mut spec = ShaderSpec::new(name);
        spec.consts = consts;
        self.op(name, spec, params, bufs, Grid::Elements { per_token })
    }

    /// Whether the one-token gate/up product writes SwiGLU itself (see [`Tuning::fuse_swiglu`]).
    fn fuses_swiglu(&self) -> bool {
        self.tuning.fuse_swiglu && self.tuning.swiglu_fits()
    }

    /// y = x W^T (+ y with `accumulate`), W (n, k). With `swiglu_out`, W's rows are interleaved
    /// gate/up pairs and, where the tuning allows, the one-token kernel writes their SwiGLU there
    /// instead of y. With `norm` = (residual, weights), x is
    /// that RMSNorm's output: the many-row kernels read x, and where [`Tuning::fold_norm`] is set
    /// the one-token kernel reads the residual and applies the norm itself.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &mut self,
        label: &'static str,
        (w, dtype): (&wgpu::Buffer, WeightDtype),
        (k, n): (u32, u32),
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        accumulate: bool,
        last_only: bool,
        norm: Option<(&wgpu::Buffer, &wgpu::Buffer)>,
        swiglu_out: Option<&wgpu::Buffer>,
    ) -> Result<Op> {
        let fold = norm.filter(|_| self.tuning.fold_norm);
        let swiglu_out = swiglu_out.filter(|_| self.fuses_swiglu());
        let (y_stride, y_offset) = self.y_cols.unwrap_or((n, 0));
        let block = MatmulParams {
            k,
            n,
            y_stride,
            y_offset,
            accumulate: accumulate as u32,
            last_only: last_only as u32,
            norm: fold.is_some() as u32,
            eps: self.cfg.rms_norm_eps as f32,
            swiglu: swiglu_out.is_some() as u32,
            ..Default::default()
        };
        let params = self.gpu.uniform(label, &block);
        self.params.push(params.clone());
        let spec = ShaderSpec::new("matmul")
            .with("WEIGHT_DTYPE", Const::U32(dtype.shader_code()))
            .with("LANES", Const::U32(self.tuning.lanes))
            .with("TB", Const::U32(GEMM_TOKENS));
        // One lane per row: the barrier-free kernel, several rows per invocation.
        let (mv_entry, matvec_rows_per_group) = if self.tuning.lanes == 1 {
            ("matvec_serial", 64 * self.tuning.serial_rows)
        } else {
            ("matvec", 64 / self.tuning.lanes)
        };
        let mv = self.gpu.pipeline(
            &spec
                .clone()
                .with("SERIAL_ROWS", Const::U32(self.tuning.serial_rows))
                .entry(mv_entry),
        )?;
        let (mv_x, g) = fold.unwrap_or((x, &self.no_norm));
        let mv_y = swiglu_out.unwrap_or(y);
        let bind = self.gpu.bind(&mv, &[self.step, &params, mv_x, w, mv_y, g]);
        // gemm_coop stages f16 weight tiles for the tensor cores: f16 weights only. Every other
        // type, the ggml block types included, takes the SIMT kernels, which dequantize in
        // `load8` (dequantizing into the staged tiles would also work, but the only adapters
        // with cooperative matrices here are NVIDIA's, where the SIMT gemm won below a few
        // hundred rows anyway; see COOP_GEMM_MIN_ROWS).
        let many = if self.tuning.coop_gemm && dtype == WeightDtype::F16 {
            ManyRows::Coop
        } else if self.tuning.tiled {
            ManyRows::Tiled
        } else {
            ManyRows::Direct
        };
        let gemm_few = if many == ManyRows::Coop && !last_only {
            let p = self.gpu.pipeline(&spec.clone().entry("gemm"))?;
            let b = self
                .gpu
                .bind(&p, &[self.step, &params, x, w, y, &self.no_norm]);
            Some((p, b))
        } else {
            None
        };
        let gemm = if last_only {
            None
        } else {
            let spec = match many {
                ManyRows::Coop => ShaderSpec::new("gemm_coop"),
                ManyRows::Tiled => spec.entry("gemm"),
                ManyRows::Direct => spec.entry("gemm_direct"),
            };
            let p = self.gpu.pipeline(&spec)?;
            // gemm_coop.wgsl has no norm-weights binding; matmul.wgsl's kernels all declare it.
            let b = if many == ManyRows::Coop {
                self.gpu.bind(&p, &[self.step, &params, x, w, y])
            } else {
                self.gpu
                    .bind(&p, &[self.step, &params, x, w, y, &self.no_norm])
            };
            Some((p, b))
        };
        Ok(Op {
            label,
            pipeline: mv,
            bind,
            gemm,
            gemm_few,
            grid: Grid::Matmul {
                n,
                last_only,
                rows_per_group: 64 / self.tuning.lanes,
                matvec_rows_per_group,
                many,
            },
            folded: Folded::No,
        })
    }

    /// [`Builder::matmul`] into columns [first, first + n) of y's rows of `stride` values: one
    /// share of a product that runs in parts (a head split across bindings, a fused product
    /// whose weights differ in type). No SwiGLU: its pairs need the whole gate/up product.
    #[allow(clippy::too_many_arguments)]
    fn matmul_cols(
        &mut self,
        label: &'static str,
        w: (&wgpu::Buffer, WeightDtype),
        (k, n): (u32, u32),
        x: &wgpu::Buffer,
        (y, stride, first): (&wgpu::Buffer, u32, u32),
        last_only: bool,
        norm: Option<(&wgpu::Buffer, &wgpu::Buffer)>,
    ) -> Result<Op> {
        self.y_cols = Some((stride, first));
        let op = self.matmul(label, w, (k, n), x, y, false, last_only, norm, None);
        self.y_cols = None;
        op
    }

    /// SwiGLU of the prompt chunk's gate/up product; a decode step's product applies it itself
    /// where [`Builder::fuses_swiglu`].
    fn swiglu(&mut self, inter: u32, gate_up: &wgpu::Buffer, out: &wgpu::Buffer) -> Result<Op> {
        let mut op =
            self.elementwise("swiglu", vec![], [inter, 0, 0, 0], &[gate_up, out], inter)?;
        if self.fuses_swiglu() {
            op.folded = Folded::SingleToken;
        }
        Ok(op)
    }

    fn rmsnorm(
        &mut self,
        w: &wgpu::Buffer,
        x: &wgpu::Buffer,
        out: &wgpu::Buffer,
        last_only: bool,
    ) -> Result<Op> {
        let eps = (self.cfg.rms_norm_eps as f32).to_bits();
        let params = [self.cfg.hidden_size, eps, last_only as u32, 0];
        let grid = if last_only { Grid::Single } else { Grid::Rows };
        let mut op = self.op(
            "rmsnorm",
            ShaderSpec::new("rmsnorm"),
            params,
            &[x, w, out],
            grid,
        )?;
        op.folded = match (self.tuning.fold_norm, last_only) {
            (false, _) => Folded::No,
            (true, false) => Folded::SingleToken,
            (true, true) => Folded::Always,
        };
        Ok(op)
    }
}

impl Plan {
    /// Prepares every dispatch of the forward pass over `bufs` and `weights`.
    pub fn new(
        gpu: &Gpu,
        cfg: &Config,
        tuning: Tuning,
        weights: GpuWeights,
        bufs: &Buffers,
    ) -> Result<Self> {
        let act = &bufs.act;
        let d = cfg.hidden_size;
        let hd = cfg.head_dim;
        let half = hd / 2;
        let q_width = cfg.q_heads() * hd;
        let kv_width = cfg.num_key_value_heads * hd;
        let heads = cfg.num_attention_heads;
        let inter = cfg.intermediate_size;
        let kv_dtype = bufs.cache.dtype();
        let mut b = Builder {
            gpu,
            cfg,
            tuning,
            step: bufs.arena.buffer(),
            params: Vec::new(),
            no_norm: gpu.storage("norm weights (unused)", 16)?,
            y_cols: None,
        };

        // One gather per part of the table: each writes the rows of the tokens it holds.
        let embed_t = weights.embed.dtype;
        let embed = weights
            .embed
            .parts
            .iter()
            .map(|(w, first, rows)| {
                b.elementwise(
                    "embed",
                    vec![("WEIGHT_DTYPE", Const::U32(embed_t.shader_code()))],
                    [d, *first, *rows, 0],
                    &[&bufs.ids, w, &act.x],
                    d,
                )
            })
            .collect::<Result<Vec<Op>>>()?;

        let mut att_cfg = AttentionConfig::new(cfg.mode(), heads, cfg.num_key_value_heads, hd);
        att_cfg.kv_dtype = kv_dtype;
        let mut attention = AttentionOp::new(gpu, att_cfg)?;
        if let Some(serial) = tuning.serial_attention {
            let default = DecodeTuning::for_layer(&gpu.info, hd);
            attention.set_decode_tuning(gpu, DecodeTuning { serial, ..default })?;
        }
        attention.reserve(gpu, bufs.chunk, bufs.cache.context())?;

        let kv_f16 = vec![("KV_F16", Const::Bool(kv_dtype == KvDtype::F16))];
        let kv_heads = cfg.num_key_value_heads;
        let lam_heads = if cfg.mode() == Mode::Diff { heads } else { 0 };
        let qkvl_width = q_width + 2 * kv_width + lam_heads;
        // Standard attention has no lambda: the split writes none into this stand-in.
        let no_lam = gpu.storage("lambda (unused)", 16)?;
        let lam = act.lam.as_ref().unwrap_or(&no_lam);
        let split_items = cfg.q_heads() * half + 2 * kv_heads * half + lam_heads;
        let mut layers = Vec::new();
        for (l, w) in weights.layers.iter().enumerate() {
            let (kc, vc) = bufs.cache.layer(l);
            let (qkvl, gate_up) = (&act.qkvl, &act.gate_up);
            let mut pre = vec![b.rmsnorm(&w.ln_in, &act.x, &act.a, false)?];
            let mut first = 0;
            for (wq, dtype, rows) in &w.qkvl {
                pre.push(b.matmul_cols(
                    "q/k/v/lambda",
                    (wq, *dtype),
                    (d, *rows),
                    &act.a,
                    (qkvl, qkvl_width, first),
                    false,
                    Some((&act.x, &w.ln_in)),
                )?);
                first += rows;
            }
            pre.push(b.elementwise(
                "rope_append",
                kv_f16.clone(),
                [cfg.q_heads(), kv_heads, half, lam_heads],
                &[&bufs.rope_table, qkvl, &act.q, kc, vc, lam],
                split_items,
            )?);
            let binding = attention.bind(
                gpu,
                bufs.arena.buffer(),
                &AttentionBuffers {
                    q: &act.q,
                    k: kc,
                    v: vc,
                    lam: act.lam.as_ref(),
                    out: &act.att,
                },
            )?;
            let post = vec![
                b.matmul(
                    "o_proj",
                    (&w.o.0, w.o.1),
                    (heads * hd, d),
                    &act.att,
                    &act.x,
                    true,
                    false,
                    None,
                    None,
                )?,
                b.rmsnorm(&w.ln_post, &act.x, &act.a, false)?,
                b.matmul(
                    "gate/up",
                    (&w.gate_up.0, w.gate_up.1),
                    (d, 2 * inter),
                    &act.a,
                    gate_up,
                    false,
                    false,
                    Some((&act.x, &w.ln_post)),
                    Some(&act.hidden),
                )?,
                b.swiglu(inter, gate_up, &act.hidden)?,
                b.matmul(
                    "down_proj",
                    (&w.down.0, w.down.1),
                    (inter, d),
                    &act.hidden,
                    &act.x,
                    true,
                    false,
                    None,
                    None,
                )?,
            ];
            layers.push(LayerOps {
                pre,
                attention: binding,
                post,
            });
        }
        b.params.push(no_lam);
        b.params.push(b.no_norm.clone());

        let head_w = weights.lm_head.as_ref().unwrap_or(&weights.embed);
        let mut head = vec![b.rmsnorm(&weights.norm, &act.x, &act.last, true)?];
        // One product per part of the head, each writing its rows' slice of the logits.
        for (w, first, rows) in &head_w.parts {
            head.push(b.matmul_cols(
                "lm_head",
                (w, head_w.dtype),
                (d, *rows),
                &act.last,
                (&act.logits, cfg.vocab_size, *first),
                true,
                Some((&act.x, &weights.norm)),
            )?);
        }
        let greedy_params = gpu.uniform(
            "greedy parameters",
            &GreedyParams {
                vocab: cfg.vocab_size,
                penalty: 1.0,
                ..Default::default()
            },
        );
        let greedy = b.op_with(
            "greedy sample",
            ShaderSpec::new("sample")
                .entry("greedy")
                .with("WG", Const::U32(tuning.sample_wg)),
            &greedy_params,
            &[
                &act.logits,
                &bufs.ids,
                &bufs.sampled,
                &bufs.history,
                &bufs.penalty_marks,
                &bufs.logit_bias,
            ],
            Grid::Single,
        )?;
        let sample_params = gpu.uniform(
            "sampling parameters",
            &SampleParams {
                vocab: cfg.vocab_size,
                temperature: 1.0,
                top_p: 1.0,
                penalty: 1.0,
                ..Default::default()
            },
        );
        let sample = b.op_with(
            "sample",
            ShaderSpec::new("sample_dist"),
            &sample_params,
            &[
                &act.logits,
                &bufs.ids,
                &bufs.sampled,
                &bufs.history,
                &bufs.sample_work,
                &bufs.logit_bias,
            ],
            Grid::Single,
        )?;
        let top_params = gpu.uniform(
            "alternatives parameters",
            &TopParams {
                vocab: cfg.vocab_size,
                ..Default::default()
            },
        );
        let top = b.op_with(
            "alternatives",
            ShaderSpec::new("top_logprobs")
                .with("WG", Const::U32(tuning.sample_wg))
                .with("MAX_N", Const::U32(MAX_TOP_LOGPROBS as u32)),
            &top_params,
            &[&act.logits, &bufs.alternatives],
            Grid::Single,
        )?;
        Ok(Self {
            embed,
            layers,
            head,
            greedy,
            greedy_params,
            sample,
            sample_params,
            top,
            top_params,
            attention,
            weights,
            _params: b.params,
        })
    }

    /// Records one forward chunk of `n` tokens at position `past` into an open pass: slot `slot`'s
    /// step block and attention parameters must already be set in the arena (see
    /// [`Plan::set_slot`]). With `logits`, the head runs for the last position; with `pick`, the
    /// head and that token-picking kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn record_forward(
        &self,
        gpu: &Gpu,
        pass: &mut wgpu::ComputePass,
        arena: &UniformArena,
        slot: u32,
        call: &AttentionCall,
        logits: bool,
        pick: Option<Picking>,
    ) -> Result<()> {
        let step = arena.offset(2 * slot);
        let att = arena.offset(2 * slot + 1);
        let plan = self.attention.plan(call, Kernel::Auto)?;
        for stage in self.stages(logits, pick) {
            self.record_stage(gpu, pass, stage, call, &plan, (step, att))?;
        }
        Ok(())
    }

    /// The forward pass in order: embedding, each layer's ops around its attention, then (with
    /// `logits` or `pick`) the head and the picking kernel. Recording and profiling both walk it.
    fn stages(&self, logits: bool, pick: Option<Picking>) -> Vec<Stage<'_>> {
        let mut out: Vec<Stage<'_>> = self.embed.iter().map(Stage::Op).collect();
        for layer in &self.layers {
            out.extend(layer.pre.iter().map(Stage::Op));
            out.push(Stage::Attention(&layer.attention));
            out.extend(layer.post.iter().map(Stage::Op));
        }
        if logits || pick.is_some() {
            out.extend(self.head.iter().map(Stage::Op));
        }
        if let Some(p) = pick {
            out.push(Stage::Op(match p.pick {
                Pick::Greedy => &self.greedy,
                Pick::Sample => &self.sample,
            }));
            if p.alternatives {
                out.push(Stage::Op(&self.top));
            }
        }
        out
    }

    fn record_stage(
        &self,
        gpu: &Gpu,
        pass: &mut wgpu::ComputePass,
        stage: Stage<'_>,
        call: &AttentionCall,
        plan: &crate::attention::Plan,
        (step, att): (u32, u32),
    ) -> Result<()> {
        match stage {
            Stage::Op(op) => op.record(gpu, pass, call.n_queries, step),
            Stage::Attention(binding) => self.attention.record(gpu, pass, binding, call, plan, att),
        }
    }

    /// Bytes of the weight buffers on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.weights.bytes()
    }

    /// How many bindings the embedding table and the output head span (1 each unless a tensor
    /// exceeds the adapter's storage-binding limit and is split by rows).
    pub fn row_parts(&self) -> (usize, usize) {
        let w = &self.weights;
        let head = w.lm_head.as_ref().unwrap_or(&w.embed);
        (w.embed.parts.len(), head.parts.len())
    }

    /// How many stages [`Plan::record_profiled`] records (two timestamps each).
    pub fn profiled_stages(&self, pick: Option<Picking>) -> usize {
        self.decode_stages(pick).len()
    }

    /// The stages a one-token step dispatches (folded ops record nothing).
    fn decode_stages(&self, pick: Option<Picking>) -> Vec<Stage<'_>> {
        let mut stages = self.stages(true, pick);
        stages.retain(|s| !matches!(s, Stage::Op(op) if op.folded != Folded::No));
        stages
    }

    /// Records slot `slot`'s one-token step with one compute pass per stage, each between two
    /// timestamps of `queries` (2 per stage, from 0); returns the stages' labels in order. For
    /// profiling: the passes cost more than one pass does, but each stage's time is its own.
    #[allow(clippy::too_many_arguments)]
    pub fn record_profiled(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        queries: &wgpu::QuerySet,
        arena: &UniformArena,
        slot: u32,
        call: &AttentionCall,
        pick: Option<Picking>,
    ) -> Result<Vec<&'static str>> {
        let offsets = (arena.offset(2 * slot), arena.offset(2 * slot + 1));
        let plan = self.attention.plan(call, Kernel::Auto)?;
        let stages = self.decode_stages(pick);
        let mut labels = Vec::with_capacity(stages.len());
        for (i, stage) in stages.into_iter().enumerate() {
            labels.push(stage.label());
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(stage.label()),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: queries,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            self.record_stage(gpu, &mut pass, stage, call, &plan, offsets)?;
        }
        Ok(labels)
    }

    /// Sets slot `slot` of the arena for a forward chunk: its step block and attention parameters.
    pub fn set_slot(
        &self,
        arena: &mut UniformArena,
        slot: u32,
        call: &AttentionCall,
        ids_offset: u32,
    ) -> Result<()> {
        if slot >= MAX_STEPS {
            return Err(Error::config(format!(
                "step slot {slot}: a submission holds at most {MAX_STEPS} steps"
            )));
        }
        let plan = self.attention.plan(call, Kernel::Auto)?;
        arena.set(
            2 * slot,
            &Step {
                n_tokens: call.n_queries,
                past_len: call.past_len,
                ids_offset,
                sample_slot: slot,
            },
        );
        arena.set(2 * slot + 1, &self.attention.params(call, &plan));
        Ok(())
    }
}
