//! Host side of the DIFF V2 attention kernels: the op description, shape checks, dispatch plans and
//! the public entry points (on GPU buffers, and a host convenience on `&[f32]`).
//!
//! Two passes per call. The first runs plain softmax attention over all query heads (2h in DIFF V2,
//! h in standard mode) and writes per-row partials: `flash_attn.wgsl` for many query rows (prefill),
//! `decode_split.wgsl` for one or a few query rows over a long cache (`decode_serial.wgsl` on CPU
//! adapters). The second, `diff_combine.wgsl` (or its barrier-free twin `combine_serial.wgsl`),
//! merges the partials and applies `c_i = o_2i - sigmoid(lam_i) * o_2i+1`.

use crate::error::{Error, Result};
use crate::gpu::{Const, Gpu, ShaderSpec};
use std::sync::Arc;

pub mod io;
mod types;

pub use types::*;

/// The K/V storage type that decodes fastest on an adapter: f16 where the subgroup or tensor-core
/// decode kernels run (they read f16 K/V only; on the H200 the shipped model decoded 3,131 against
/// 2,556 tok/s and prefilled a 454-token prompt in 3.1 against 7.4 ms), f32 elsewhere (CPU
/// adapters, the browser without subgroups), where f16 halves the memory but the portable kernels
/// widen every element.
///
/// It is chosen before a model is loaded, so it asks about a layer of head dim 64 (the shipped
/// model's and SmolLM2's); a model whose head dim the subgroup kernel does not take on this adapter
/// may get f16 K/V on the portable kernel (correct, and slower than f32 there).
pub fn fastest_kv_dtype(gpu: &Gpu) -> KvDtype {
    let probe = AttentionConfig {
        kv_dtype: KvDtype::F16,
        ..AttentionConfig::new(Mode::Diff, 4, 2, 64)
    };
    let tuning = DecodeTuning::for_layer(&gpu.info, 64);
    let subgroup_kernel = gpu.info.device_type != wgpu::DeviceType::Cpu
        && subgroup_decode_shape(gpu, &probe, &tuning).is_ok();
    if subgroup_kernel || (gpu.coop_f16 && decode_coop_subgroups(gpu.fixed_subgroup_size())) {
        KvDtype::F16
    } else {
        KvDtype::F32
    }
}

/// Up to this many query rows, `Kernel::Auto` decodes with split-KV partials.
pub const DECODE_MAX_QUERIES: u32 = 4;
/// KV positions per workgroup in the decode kernel (fixed by `decode_split.wgsl`).
pub const DECODE_CHUNK: u32 = 128;
/// Keys per invocation of the serial decode kernel (decode_serial.wgsl's CHUNK).
const SERIAL_CHUNK: u32 = 64;
/// Invocations per workgroup of the serial decode kernel (its WG).
const SERIAL_WG: u32 = 8;
const DECODE_MAX_HEADS_PER_WG: u32 = 8;
/// Query heads per workgroup in the cooperative-matrix decode kernel: the rows of one 16x16 tile.
const COOP_ROWS: u32 = 16;
/// Invocations per workgroup of the cooperative-matrix decode kernel by default, by head dim:
/// measured on the H200 with 256 workgroups per call (bench/results, 2026-12-02), four subgroups
/// beat eight by 8-26% at d=128 for S = 1k-64k, and eight beat four by 3-10% at d=64 for S = 4k-64k.
fn coop_workgroup_size(head_dim: u32) -> u32 {
    if head_dim <= 64 { 256 } else { 128 }
}
/// 16-key tiles per subgroup step of the cooperative-matrix decode kernel by default. Two lost
/// everywhere on the H200 (1.1-1.8x slower at d=128, where its tiles spill registers; 1.0-1.6x at
/// d=64).
const COOP_BLOCKS: u32 = 1;
/// Caches up to this many sub-chunks are decoded by one workgroup per head group, without a merge
/// pass: two blocks per subgroup. On the H200 one workgroup saved 3 us at 64 keys and lost 5 us at
/// 256 (four subgroups), as each further block a subgroup takes in turn costs ~3 us of latency.
const COOP_DIRECT_MAX_SUBS: u32 = 2;
/// Largest head dim of the cooperative-matrix decode kernel (eight 16-column tiles).
const COOP_DECODE_MAX_HEAD_DIM: u32 = 128;
/// Query rows per workgroup of the subgroup decode kernel at most (its named registers).
const SUBGROUP_MAX_ROWS: u32 = 8;
/// Query rows per workgroup of the subgroup decode kernel by default: four. Measured on the H200
/// (2026-12-04, f16 K/V, K/V loaded a step ahead): a DIFF V2 group of 8 in two workgroups of 4
/// rows (each reading the group's K/V, the second mostly from L2) took 119.7 against 166.0 us at
/// h=32 h_kv=8 d=128 S=65536 with 256 invocations (the default there; at 128 invocations eight
/// rows were 5% faster, 142.0 against 149.4) and 59.5 against 114.8 at d=64 with 256: eight rows
/// hold 128 f32 registers of queries and outputs per lane, which halves the warps an SM keeps in
/// flight. Eight rows at d=64 with 128 invocations (its default) were not measured.
const SUBGROUP_ROWS: u32 = 4;
/// Steps ahead that the subgroup decode kernel loads K/V by default: one (measured on the H200,
/// 2026-12-04: DIFF V2 d=128 S=65536 149.4 against 209.9 us with none, at 128 invocations).
const SUBGROUP_AHEAD: u32 = 1;
/// Most steps ahead the subgroup decode kernel loads K/V (its register sets).
const SUBGROUP_MAX_AHEAD: u32 = 2;
/// Invocations per workgroup of the subgroup decode kernel by default, by head dim: measured on the
/// H200 (same runs), 256 beat 128 at d=128 for DIFF V2 at S >= 16384 (119.7 against 149.4 us at
/// S=65536; 50.2 against 53.9 at 16384) and for standard at 65536 (85.6 against 92.8), and lost
/// below (DIFF V2 25.1 against 28.1 us at S=4096); at d=64, 128 beat 256 for S <= 16384 (21.4
/// against 28.4 us at 4096) and lost at 65536 (67.8 against 59.5). The longer caches decide at
/// d=128, the shorter ones (small models) at d=64.
fn subgroup_workgroup_size(head_dim: u32) -> u32 {
    if head_dim > 64 { 256 } else { 128 }
}
/// Invocations per workgroup of the subgroup decode kernel for short caches (up to
/// [`SUBGROUP_SHORT_MAX_KEYS`]): 128 at every head dim (where a head dim's default is already
/// 128 no second pipeline is built; d=256 was not measured). Measured on an H100 (2026-12-08, one
/// call, default split target): at d=128, 128 invocations against 256 took 19.3 / 17.2 against
/// 23.5 / 20.4 us (DIFF V2 / standard, h=32 h_kv=8, S=1024) and 26.3 / 21.3 against 29.0 / 26.2
/// (S=4096); the H200 run of 2026-12-04 agreed at S=4096 (DIFF V2 25.1 against 28.1).
const SUBGROUP_SHORT_WORKGROUP_SIZE: u32 = 128;
/// Longest cache the short-cache workgroup size serves: 4096 keys was measured faster with 128
/// invocations at d=128, 16384 slower (H200: 53.9 against 50.2 us); 8192, between them, was not
/// measured.
const SUBGROUP_SHORT_MAX_KEYS: u32 = 8192;
/// Workgroup memory of the subgroup decode kernel's merge, per round of rows.
const SUBGROUP_MERGE_BYTES: u32 = 16 * 1024;
/// Keys per tile of the cooperative-matrix prefill kernel.
const COOP_PREFILL_KEYS: u32 = 32;
/// Query rows per workgroup of the cooperative-matrix prefill kernel (16 per subgroup of 32).
const COOP_PREFILL_ROWS: u32 = 64;
const FLASH_WG: u32 = 64;
/// Workgroup memory the flash kernel plans for: the WebGPU default, portable everywhere.
const FLASH_WORKGROUP_BYTES: u32 = 16 * 1024;

crate::gpu::shader_struct! {
    /// The uniform block every attention shader reads. This is its one definition: each shader's
    /// WGSL `Params` is checked against [`Params::FIELDS`] by the shader tests (names, types, order).
    pub struct Params {
        /// Query rows N of the call.
        n_queries: u32,
        /// Keys S in the cache.
        seq_len: u32,
        /// Query heads (2h in DIFF V2).
        q_heads: u32,
        /// KV heads.
        kv_heads: u32,
        /// Query heads per KV head.
        group: u32,
        /// Query heads one workgroup serves.
        heads_per_wg: u32,
        /// Workgroups that share one GQA group's heads.
        head_splits: u32,
        /// Query rows per workgroup (flash kernel).
        rows_per_wg: u32,
        /// Position of query row 0 (causal mask).
        past_len: u32,
        /// 1 for a causal mask.
        causal: u32,
        /// KV chunks per query row, i.e. partials to merge.
        n_chunks: u32,
        /// Output heads h.
        out_heads: u32,
        /// Softmax scale.
        scale: f32,
        /// 1 for DIFF V2, 0 for standard attention.
        diff: u32,
        /// Keys per chunk.
        chunk_len: u32,
        /// 1 when a single-chunk decode writes the final output itself (no merge pass).
        direct: u32,
    }
}

/// How one call is dispatched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub kernel: Kernel,
    pub n_chunks: u32,
    pub heads_per_wg: u32,
    pub head_splits: u32,
    pub rows_per_wg: u32,
    /// Keys per chunk (decode kernels).
    pub chunk_len: u32,
    /// The first pass writes the output itself; no merge pass runs.
    pub direct: bool,
    /// The subgroup decode kernel runs its short-cache pipeline (its own workgroup size).
    pub short_cache: bool,
    pub groups: [u32; 3],
}

/// How the split-KV decode kernels (cooperative-matrix and subgroup) cut the cache: how many workgroups a call aims to
/// spread over (the split count follows from it), how wide a workgroup is (each of its 32-wide
/// subgroups takes one 16-key block of a sub-chunk), and up to which cache length one workgroup per
/// head group takes the whole cache and writes the output itself (no merge pass). WebGPU does not
/// report a GPU's core count, so the defaults come from the adapter type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeTuning {
    /// Workgroups per call the split count aims for.
    pub target_workgroups: u32,
    /// Invocations per workgroup of the cooperative decode kernel: 64, 128 or 256.
    pub workgroup_size: u32,
    /// Invocations per workgroup of the subgroup decode kernel: 64, 128 or 256.
    pub subgroup_workgroup_size: u32,
    /// Invocations per workgroup of the subgroup decode kernel for caches of up to
    /// `subgroup_short_max_keys` keys (a second pipeline; 0 or the same size: none).
    pub subgroup_short_workgroup_size: u32,
    /// Longest cache the short-cache workgroup size serves.
    pub subgroup_short_max_keys: u32,
    /// Longest cache decoded by a single chunk with no merge pass (0: never).
    pub direct_max_keys: u32,
    /// 16-key tiles a subgroup takes per step of its online softmax: 1 or 2.
    pub blocks: u32,
    /// Whether `Auto` decodes with the serial kernel (decode_serial.wgsl) in place of the
    /// subgroup and portable ones where there is no cooperative one: on CPU adapters, which pay a
    /// context switch per barrier.
    pub serial: bool,
    /// Query rows per workgroup of the subgroup decode kernel at most: 1, 2, 4 or 8 (a GQA group
    /// of more takes several workgroups, each reading the group's K/V); 0 means 8. The kernel
    /// takes at least head_dim / 32 rows (at most four keys per lane group and step), so a smaller
    /// value is raised to that.
    pub rows: u32,
    /// Steps ahead that the subgroup decode kernel loads each step's K/V: 0, 1 or 2.
    pub ahead: u32,
    /// Measurement only: stages the cooperative kernel leaves out (its `PROFILE` bits); 0 in use.
    #[doc(hidden)]
    pub profile: u32,
}

impl DecodeTuning {
    /// Defaults for a layer on an adapter: about two workgroups per core on a large discrete GPU,
    /// and a single chunk for caches of up to two sub-chunks.
    pub fn for_layer(info: &wgpu::AdapterInfo, head_dim: u32) -> Self {
        // Measured on the H200 (d=64 and 128, S=16k and 64k): 256 workgroups beat 512 and 1024.
        let target_workgroups = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 256,
            wgpu::DeviceType::IntegratedGpu | wgpu::DeviceType::VirtualGpu => 256,
            _ => 64,
        };
        Self {
            target_workgroups,
            workgroup_size: 0,
            subgroup_workgroup_size: subgroup_workgroup_size(head_dim),
            subgroup_short_workgroup_size: SUBGROUP_SHORT_WORKGROUP_SIZE,
            subgroup_short_max_keys: SUBGROUP_SHORT_MAX_KEYS,
            direct_max_keys: 0,
            blocks: 0,
            serial: info.device_type == wgpu::DeviceType::Cpu,
            rows: SUBGROUP_ROWS,
            ahead: SUBGROUP_AHEAD,
            profile: 0,
        }
        .with_shape(coop_workgroup_size(head_dim), COOP_BLOCKS)
    }

    /// The same tuning with another workgroup size and tiles per block; the single-chunk limit
    /// follows the sub-chunk size (two sub-chunks).
    pub fn with_shape(self, workgroup_size: u32, blocks: u32) -> Self {
        Self {
            workgroup_size,
            blocks,
            direct_max_keys: COOP_DIRECT_MAX_SUBS * workgroup_size / 32 * 16 * blocks,
            ..self
        }
    }

    /// Keys per sub-chunk: one block of `blocks` 16-key tiles per subgroup of 32.
    pub fn sub_keys(&self) -> u32 {
        self.workgroup_size / 32 * 16 * self.blocks
    }
}

/// How the subgroup decode kernel (decode_subgroup.wgsl) lays out one layer: its specialisation
/// constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubgroupShape {
    /// Lanes that share one K/V row (`L` = head_dim / 8).
    pub lanes: u32,
    /// Query rows per workgroup (`R`): the GQA group rounded up to a power of two, from
    /// `lanes / 4` to 8.
    pub rows: u32,
    /// Invocations per workgroup (`WG`).
    pub workgroup_size: u32,
    /// Rows merged per round of the workgroup's final merge (`MERGE_ROWS`).
    pub merge_rows: u32,
    /// Steps ahead that K/V are loaded (`AHEAD`).
    pub ahead: u32,
}

impl SubgroupShape {
    /// The layout for a head dim (d/8 lanes per row), rows per workgroup and workgroup size: the
    /// merge takes as many rows per round as fit its workgroup memory, a power of two.
    pub fn new(head_dim: u32, rows: u32, workgroup_size: u32) -> Self {
        let lanes = head_dim / 8;
        let slots = workgroup_size / lanes;
        let fit = (SUBGROUP_MERGE_BYTES / 4 / (slots * head_dim)).clamp(1, rows);
        Self {
            lanes,
            rows,
            workgroup_size,
            merge_rows: 1 << (31 - fit.leading_zeros()),
            ahead: SUBGROUP_AHEAD,
        }
    }

    /// Keys one workgroup takes per step: every lane group takes `lanes / rows` keys.
    pub fn block_keys(&self) -> u32 {
        self.workgroup_size / self.rows
    }

    fn slots(&self) -> u32 {
        self.workgroup_size / self.lanes
    }

    /// Workgroup memory of decode_subgroup.wgsl (keep in step with its arrays): per lane group a
    /// (max, sum) per row, and its outputs of one round of rows.
    fn workgroup_bytes(&self, head_dim: u32) -> u32 {
        self.slots() * self.rows * 8 + self.slots() * self.merge_rows * head_dim * 4
    }
}

/// Head dims the subgroup decode kernel takes: one 16-byte word of a K/V row per lane.
const SUBGROUP_HEAD_DIMS: [u32; 4] = [32, 64, 128, 256];

/// Whether subgroups of `min..=max` lanes hold a lane group of the subgroup decode kernel for
/// `head_dim` (head_dim / 8 lanes, within the smallest subgroup).
fn subgroup_decode_fits(min: u32, max: u32, head_dim: u32) -> bool {
    SUBGROUP_HEAD_DIMS.contains(&head_dim) && head_dim / 8 <= min && max.is_power_of_two()
}

/// The subgroup decode kernel's layout for a layer on an adapter, or why it cannot serve it.
pub fn subgroup_decode_shape(
    gpu: &Gpu,
    cfg: &AttentionConfig,
    tuning: &DecodeTuning,
) -> std::result::Result<SubgroupShape, String> {
    // The subgroup barrier feature stands for a native backend: the kernel reads `subgroup_id`,
    // which WebGPU's WGSL does not have.
    if !gpu.has_subgroups() || !gpu.has_subgroup_barrier() {
        return Err("the adapter has no native subgroups".into());
    }
    if cfg.kv_dtype != KvDtype::F16 {
        return Err("K/V are f32 (the subgroup decode kernel reads f16)".into());
    }
    // One 16-byte word (8 dims) per lane of a row.
    let lanes = cfg.head_dim / 8;
    if !SUBGROUP_HEAD_DIMS.contains(&cfg.head_dim) {
        return Err(format!(
            "head_dim {} (the subgroup decode kernel takes 32, 64, 128 or 256)",
            cfg.head_dim
        ));
    }
    let (lo, hi) = (gpu.info.subgroup_min_size, gpu.info.subgroup_max_size);
    if !subgroup_decode_fits(lo, hi, cfg.head_dim) {
        return Err(format!(
            "subgroups of {lo}..{hi} lanes (head_dim {} needs at least {lanes})",
            cfg.head_dim
        ));
    }
    let wg = tuning.subgroup_workgroup_size;
    if ![64, 128, 256].contains(&wg) || !wg.is_multiple_of(hi) {
        return Err(format!(
            "workgroup size {wg} (expected 64, 128 or 256, whole subgroups of up to {hi})"
        ));
    }
    let max_rows = match tuning.rows {
        0 => SUBGROUP_MAX_ROWS,
        r if [1, 2, 4, 8].contains(&r) => r,
        r => return Err(format!("rows {r} (expected 1, 2, 4 or 8)")),
    };
    // At most four keys per lane group and step.
    let rows = cfg
        .group()
        .next_power_of_two()
        .min(max_rows)
        .clamp(lanes / 4, lanes.min(SUBGROUP_MAX_ROWS));
    if tuning.ahead > SUBGROUP_MAX_AHEAD {
        return Err(format!(
            "ahead {} (expected 0 to {SUBGROUP_MAX_AHEAD} steps)",
            tuning.ahead
        ));
    }
    let shape = SubgroupShape {
        ahead: tuning.ahead,
        ..SubgroupShape::new(cfg.head_dim, rows, wg)
    };
    match workgroup_memory_unavailable(gpu, shape.workgroup_bytes(cfg.head_dim)) {
        Some(why) => Err(why),
        None => Ok(shape),
    }
}

/// The tuning of the subgroup decode kernel's short-cache pipeline, where it has one (another
/// workgroup size than the long caches').
fn short_tuning(tuning: &DecodeTuning) -> Option<DecodeTuning> {
    let wg = tuning.subgroup_short_workgroup_size;
    (wg != 0 && wg != tuning.subgroup_workgroup_size).then_some(DecodeTuning {
        subgroup_workgroup_size: wg,
        ..*tuning
    })
}

/// The subgroup decode kernel's pipeline for a layout.
fn subgroup_pipeline(
    gpu: &Gpu,
    cfg: &AttentionConfig,
    shape: &SubgroupShape,
) -> Result<Arc<wgpu::ComputePipeline>> {
    gpu.pipeline(
        &ShaderSpec::new("decode_subgroup")
            .with("HEAD_DIM", Const::U32(cfg.head_dim))
            .with("WG", Const::U32(shape.workgroup_size))
            .with("R", Const::U32(shape.rows))
            .with("MERGE_ROWS", Const::U32(shape.merge_rows))
            .with("AHEAD", Const::U32(shape.ahead)),
    )
}

/// The subgroup decode kernel's plan: like the cooperative kernel's, in blocks of
/// [`SubgroupShape::block_keys`]; a single chunk writes the output itself where the rows of a
/// workgroup hold whole DIFF V2 pairs in each merge round.
fn plan_subgroup(
    cfg: &AttentionConfig,
    call: &AttentionCall,
    shape: &SubgroupShape,
    tuning: &DecodeTuning,
) -> Plan {
    let group = cfg.group();
    let head_splits = group.div_ceil(shape.rows);
    let per_chunk = cfg.kv_heads * head_splits * call.n_queries;
    let blocks = call.seq_len.div_ceil(shape.block_keys()).max(1);
    let mut n_chunks = tuning
        .target_workgroups
        .div_ceil(per_chunk.max(1))
        .clamp(1, blocks);
    let pairs = cfg.mode == Mode::Standard || (group.is_multiple_of(2) && shape.merge_rows >= 2);
    let can_write = head_splits == 1 && pairs;
    // A short cache in one chunk saves the merge pass, which only pays where the chunk writes the
    // output itself.
    if can_write && call.seq_len <= tuning.direct_max_keys {
        n_chunks = 1;
    }
    let direct = n_chunks == 1 && can_write;
    Plan {
        kernel: Kernel::DecodeSubgroup,
        n_chunks,
        heads_per_wg: shape.rows,
        head_splits,
        rows_per_wg: 1,
        chunk_len: shape.block_keys(),
        direct,
        short_cache: false,
        groups: [cfg.kv_heads * head_splits, n_chunks, call.n_queries],
    }
}

/// Workgroups that take turns over the sub-chunks of one (token, head group): as many as the target
/// workgroup count asks for, never more than there are sub-chunks.
fn coop_chunks(seq_len: u32, workgroups_per_chunk: u32, tuning: &DecodeTuning) -> u32 {
    let subs = seq_len.div_ceil(tuning.sub_keys()).max(1);
    tuning
        .target_workgroups
        .div_ceil(workgroups_per_chunk.max(1))
        .clamp(1, subs)
}

/// The dispatch plan of a resolved kernel (never `Auto`; see [`AttentionOp::plan`]), with the
/// subgroup kernel's layout where it has one. Every kernel has its own arm, so that a new kernel
/// cannot fall into another's plan.
fn plan_resolved(
    cfg: &AttentionConfig,
    call: &AttentionCall,
    kernel: Kernel,
    tuning: &DecodeTuning,
    subgroup: Option<&SubgroupShape>,
) -> Plan {
    let group = cfg.group();
    match kernel {
        Kernel::DecodeSubgroup => plan_subgroup(
            cfg,
            call,
            subgroup.expect("the subgroup kernel's plan needs its layout"),
            tuning,
        ),
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
                chunk_len: DECODE_CHUNK,
                direct: false,
                short_cache: false,
                groups: [n_chunks, cfg.kv_heads * head_splits, call.n_queries],
            }
        }
        Kernel::DecodeSerial => {
            let n_chunks = call.seq_len.div_ceil(SERIAL_CHUNK).max(1);
            Plan {
                kernel,
                n_chunks,
                heads_per_wg: 1,
                head_splits: group,
                rows_per_wg: 1,
                chunk_len: SERIAL_CHUNK,
                direct: false,
                short_cache: false,
                groups: [
                    (cfg.q_heads() * n_chunks).div_ceil(SERIAL_WG),
                    1,
                    call.n_queries,
                ],
            }
        }
        Kernel::DecodeCoop => {
            let heads_per_wg = group.min(COOP_ROWS);
            let head_splits = group.div_ceil(heads_per_wg);
            // One workgroup per head group writes the output itself when the cache is short and
            // the group holds whole DIFF V2 pairs (2i, 2i + 1).
            let direct = call.seq_len <= tuning.direct_max_keys
                && head_splits == 1
                && (cfg.mode == Mode::Standard || group.is_multiple_of(2));
            let per_chunk = cfg.kv_heads * head_splits * call.n_queries;
            let n_chunks = if direct {
                1
            } else {
                coop_chunks(call.seq_len, per_chunk, tuning)
            };
            // Workgroup `c` of a head group takes sub-chunks c, c + n_chunks, ...: the workgroups
            // in flight read neighbouring memory, as a grid-stride loop does.
            Plan {
                kernel,
                n_chunks,
                heads_per_wg,
                head_splits,
                rows_per_wg: 1,
                chunk_len: tuning.sub_keys(),
                direct,
                short_cache: false,
                groups: [cfg.kv_heads * head_splits, n_chunks, call.n_queries],
            }
        }
        Kernel::FlashCoop => Plan {
            kernel,
            n_chunks: 1,
            heads_per_wg: 1,
            head_splits: 1,
            rows_per_wg: COOP_PREFILL_ROWS,
            chunk_len: call.seq_len,
            direct: false,
            short_cache: false,
            groups: [call.n_queries.div_ceil(COOP_PREFILL_ROWS), cfg.q_heads(), 1],
        },
        Kernel::Flash | Kernel::Auto => {
            let heads_per_wg = group.min(FLASH_WG);
            let head_splits = group.div_ceil(heads_per_wg);
            let rows_per_wg = FLASH_WG / heads_per_wg;
            Plan {
                kernel: Kernel::Flash,
                n_chunks: 1,
                heads_per_wg,
                head_splits,
                rows_per_wg,
                chunk_len: call.seq_len,
                direct: false,
                short_cache: false,
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
    decode_serial: Arc<wgpu::ComputePipeline>,
    /// The cooperative-matrix decode kernel, where the adapter and the layer allow it.
    decode_coop: Option<Arc<wgpu::ComputePipeline>>,
    /// The cooperative-matrix prefill kernel, where the adapter and the layer allow it.
    flash_coop: Option<Arc<wgpu::ComputePipeline>>,
    /// The subgroup decode kernel and its layout, where the adapter and the layer allow it.
    decode_subgroup: Option<(Arc<wgpu::ComputePipeline>, SubgroupShape)>,
    /// The same kernel at the short-cache workgroup size, where that differs.
    decode_subgroup_short: Option<(Arc<wgpu::ComputePipeline>, SubgroupShape)>,
    combine: Arc<wgpu::ComputePipeline>,
    /// The barrier-free second pass (combine_serial.wgsl), for CPU adapters.
    combine_serial: Arc<wgpu::ComputePipeline>,
    tuning: DecodeTuning,
    scratch: Option<(wgpu::Buffer, wgpu::Buffer)>,
    no_lam: wgpu::Buffer,
}

/// Subgroups the tensor-core decode kernel can run with: exactly 32 lanes (its softmax pairs lanes
/// 2r and 2r + 1 to the rows of a 16x16 tile).
fn decode_coop_subgroups(fixed_size: Option<u32>) -> bool {
    fixed_size == Some(32)
}

/// Subgroups the tensor-core prefill kernel can run with: exactly 32 lanes, four per workgroup.
fn prefill_coop_subgroups(fixed_size: Option<u32>) -> bool {
    fixed_size == Some(32)
}

/// The attention kernels diffattn runs on an adapter, fastest first, as `diffattn adapters`
/// prints them (what `Kernel::Auto` picks from, given the layer's K/V type).
pub fn adapter_paths(a: &crate::gpu::AdapterSummary) -> Vec<&'static str> {
    let (lo, hi) = a.subgroup_sizes;
    let fixed = (a.subgroups && lo == hi && lo > 0).then_some(lo);
    let coop = a.coop_f16_16x16 && a.shader_f16;
    let mut paths = vec![];
    if a.subgroups && a.subgroup_barrier && subgroup_decode_fits(lo, hi, 64) {
        // The CLI's probe layer (d=64); larger head dims need wider subgroups.
        paths.push(if subgroup_decode_fits(lo, hi, 128) {
            "decode-subgroup (subgroup shuffles, f16 K/V, head dims 32-128)"
        } else {
            "decode-subgroup (subgroup shuffles, f16 K/V, head dims 32-64)"
        });
    }
    if coop && decode_coop_subgroups(fixed) {
        paths.push("decode-coop (tensor cores, f16 K/V)");
    }
    paths.push("decode (portable)");
    if coop && prefill_coop_subgroups(fixed) {
        paths.push("flash-coop (tensor cores, f16 K/V)");
    }
    paths.push("flash (portable)");
    paths
}

/// `None` if `bytes` of workgroup memory fit the adapter, else why not.
fn workgroup_memory_unavailable(gpu: &Gpu, bytes: u32) -> Option<String> {
    let limit = gpu.limits.max_compute_workgroup_storage_size;
    (bytes > limit)
        .then(|| format!("needs {bytes} bytes of workgroup memory; the adapter has {limit}"))
}

/// What both tensor-core kernels need: 16x16 f16 matrices, f16 K/V, whole 16-column blocks.
fn coop_unavailable(gpu: &Gpu, cfg: &AttentionConfig) -> Option<String> {
    if !gpu.coop_f16 {
        return Some("the adapter has no 16x16 f16 cooperative matrices".into());
    }
    if cfg.kv_dtype != KvDtype::F16 {
        return Some("K/V are f32 (the tensor-core kernels read f16)".into());
    }
    if !cfg.head_dim.is_multiple_of(16) {
        return Some(format!("head_dim {} is not a multiple of 16", cfg.head_dim));
    }
    None
}

/// Why the cooperative-matrix decode kernel cannot serve a layer on an adapter, or `None` if it can.
pub fn coop_decode_unavailable(
    gpu: &Gpu,
    cfg: &AttentionConfig,
    tuning: &DecodeTuning,
) -> Option<String> {
    if let Some(why) = coop_unavailable(gpu, cfg) {
        return Some(why);
    }
    if !decode_coop_subgroups(gpu.fixed_subgroup_size()) {
        return Some("subgroups are not of one fixed size of 32".into());
    }
    if !gpu.has_subgroup_barrier() {
        return Some("no subgroup barrier".into());
    }
    if !cfg.head_dim.is_multiple_of(16) || cfg.head_dim > COOP_DECODE_MAX_HEAD_DIM {
        return Some(format!(
            "head_dim {} (the tensor-core decode kernel takes multiples of 16 up to \
             {COOP_DECODE_MAX_HEAD_DIM})",
            cfg.head_dim
        ));
    }
    if ![1, 2].contains(&tuning.blocks) {
        return Some(format!("blocks {} (expected 1 or 2)", tuning.blocks));
    }
    if ![64, 128, 256].contains(&tuning.workgroup_size) {
        return Some(format!(
            "workgroup size {} (expected 64, 128 or 256)",
            tuning.workgroup_size
        ));
    }
    workgroup_memory_unavailable(
        gpu,
        coop_workgroup_bytes(cfg.head_dim, tuning.workgroup_size / 32, tuning.blocks),
    )
}

/// Why the cooperative-matrix prefill kernel cannot serve a layer on an adapter, or `None` if it can.
pub fn coop_prefill_unavailable(gpu: &Gpu, cfg: &AttentionConfig) -> Option<String> {
    if let Some(why) = coop_unavailable(gpu, cfg) {
        return Some(why);
    }
    // Four subgroups of 32 own 16 rows each, and each keeps up to eight 16-column output blocks.
    if !prefill_coop_subgroups(gpu.fixed_subgroup_size()) {
        return Some("subgroups are not exactly 32 wide".into());
    }
    if cfg.head_dim > 128 {
        return Some(format!(
            "head_dim {} (the tensor-core prefill kernel takes up to 128)",
            cfg.head_dim
        ));
    }
    workgroup_memory_unavailable(gpu, coop_prefill_workgroup_bytes(cfg.head_dim))
}

/// Workgroup memory of flash_coop.wgsl (keep in step with its arrays): queries, one K/V tile,
/// scores (f32) and probabilities (f16), one 16x20 output block per row tile.
fn coop_prefill_workgroup_bytes(head_dim: u32) -> u32 {
    let (d, bc, rows) = (head_dim + 8, COOP_PREFILL_KEYS, COOP_PREFILL_ROWS);
    rows * d * 2 + bc * d * 2 + rows * (bc + 8) * 6 + rows * 20 * 4
}

/// Workgroup memory of decode_coop.wgsl (keep in step with its arrays): queries; per subgroup a
/// score and a probability corner and its (max, sum) rows; the staged last block's K and V.
fn coop_workgroup_bytes(head_dim: u32, subgroups: u32, blocks: u32) -> u32 {
    let rows = COOP_ROWS;
    let keys = 16 * blocks;
    let q = rows * (head_dim + 8) * 2;
    let corners = subgroups * rows * ((keys + 4) * 4 + (keys + 8) * 2 + 8);
    let tail = 2 * keys * head_dim * 2;
    q + corners + tail
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
                .with("KV_F16", f16)
                // The kernel's reductions split its invocations evenly over MAX_GW heads.
                .with(
                    "MAX_GW",
                    Const::U32(cfg.group().min(DECODE_MAX_HEADS_PER_WG).next_power_of_two()),
                ),
        )?;
        let decode_serial = gpu.pipeline(
            &ShaderSpec::new("decode_serial")
                .with("HEAD_DIM", d)
                .with("KV_F16", f16)
                .with("CHUNK", Const::U32(SERIAL_CHUNK))
                .with("WG", Const::U32(SERIAL_WG)),
        )?;
        let combine = gpu.pipeline(&ShaderSpec::new("diff_combine").with("HEAD_DIM", d))?;
        let combine_serial = gpu.pipeline(
            &ShaderSpec::new("combine_serial")
                .with("HEAD_DIM", d)
                .with("WG", Const::U32(SERIAL_WG)),
        )?;
        let no_lam = gpu.storage("lam (unused)", 16)?;
        let mut op = Self {
            cfg,
            flash,
            decode,
            decode_serial,
            decode_coop: None,
            flash_coop: None,
            decode_subgroup: None,
            decode_subgroup_short: None,
            combine,
            combine_serial,
            tuning: DecodeTuning::for_layer(&gpu.info, cfg.head_dim),
            scratch: None,
            no_lam,
        };
        op.build_fast_paths(gpu)?;
        Ok(op)
    }

    /// The kernels that only some adapters run, for the current tuning.
    fn build_fast_paths(&mut self, gpu: &Gpu) -> Result<()> {
        self.decode_coop = None;
        self.flash_coop = None;
        self.decode_subgroup = None;
        self.decode_subgroup_short = None;
        if let Ok(shape) = subgroup_decode_shape(gpu, &self.cfg, &self.tuning) {
            self.decode_subgroup = Some((subgroup_pipeline(gpu, &self.cfg, &shape)?, shape));
            if let Some(short) = short_tuning(&self.tuning)
                && let Ok(shape) = subgroup_decode_shape(gpu, &self.cfg, &short)
            {
                self.decode_subgroup_short =
                    Some((subgroup_pipeline(gpu, &self.cfg, &shape)?, shape));
            }
        }
        if coop_prefill_unavailable(gpu, &self.cfg).is_none() {
            self.flash_coop = Some(
                gpu.pipeline(
                    &ShaderSpec::new("flash_coop")
                        .with("HEAD_DIM", Const::U32(self.cfg.head_dim))
                        .with("BC", Const::U32(COOP_PREFILL_KEYS)),
                )?,
            );
        }
        if coop_decode_unavailable(gpu, &self.cfg, &self.tuning).is_none() {
            self.decode_coop = Some(
                gpu.pipeline(
                    &ShaderSpec::new("decode_coop")
                        .with("HEAD_DIM", Const::U32(self.cfg.head_dim))
                        .with("WG", Const::U32(self.tuning.workgroup_size))
                        .with("BLOCKS", Const::U32(self.tuning.blocks))
                        .with("PROFILE", Const::U32(self.tuning.profile)),
                )?,
            );
        }
        Ok(())
    }

    /// Changes how the fast decode kernels cut the cache (benchmarks and tuning); an invalid
    /// sub-chunk size is refused with the reason.
    pub fn set_decode_tuning(&mut self, gpu: &Gpu, tuning: DecodeTuning) -> Result<()> {
        if self.decode_coop.is_some()
            && let Some(why) = coop_decode_unavailable(gpu, &self.cfg, &tuning)
        {
            return Err(Error::config(format!("decode tuning: {why}")));
        }
        if self.decode_subgroup.is_some() {
            let short = short_tuning(&tuning);
            for t in std::iter::once(&tuning).chain(short.as_ref()) {
                if let Err(why) = subgroup_decode_shape(gpu, &self.cfg, t) {
                    return Err(Error::config(format!("decode tuning: {why}")));
                }
            }
        }
        let rebuild = tuning.profile != self.tuning.profile
            || tuning.workgroup_size != self.tuning.workgroup_size
            || tuning.subgroup_workgroup_size != self.tuning.subgroup_workgroup_size
            || tuning.subgroup_short_workgroup_size != self.tuning.subgroup_short_workgroup_size
            || tuning.blocks != self.tuning.blocks
            || tuning.rows != self.tuning.rows
            || tuning.ahead != self.tuning.ahead;
        self.tuning = DecodeTuning {
            target_workgroups: tuning.target_workgroups.max(1),
            ..tuning
        };
        if rebuild {
            self.build_fast_paths(gpu)?;
        }
        Ok(())
    }

    /// The first-pass kernels this op can run on its adapter, fastest first per family.
    pub fn paths(&self) -> Vec<Kernel> {
        let mut paths = vec![];
        if self.decode_subgroup.is_some() {
            paths.push(Kernel::DecodeSubgroup);
        }
        if self.decode_coop.is_some() {
            paths.push(Kernel::DecodeCoop);
        }
        // Fastest first: the serial kernel on CPU adapters, the barrier kernel elsewhere.
        if self.tuning.serial {
            paths.extend([Kernel::DecodeSerial, Kernel::Decode]);
        } else {
            paths.extend([Kernel::Decode, Kernel::DecodeSerial]);
        }
        if self.flash_coop.is_some() {
            paths.push(Kernel::FlashCoop);
        }
        paths.push(Kernel::Flash);
        paths
    }

    /// The dispatch plan for a call: `Auto` takes the fastest available kernel; asking for a kernel
    /// the adapter cannot run is an error naming why.
    pub fn plan(&self, call: &AttentionCall, kernel: Kernel) -> Result<Plan> {
        let kernel = match kernel {
            Kernel::Auto if call.n_queries <= DECODE_MAX_QUERIES => {
                if self.decode_subgroup.is_some() && !self.tuning.serial {
                    Kernel::DecodeSubgroup
                } else if self.decode_coop.is_some() {
                    Kernel::DecodeCoop
                } else if self.tuning.serial {
                    Kernel::DecodeSerial
                } else {
                    Kernel::Decode
                }
            }
            Kernel::Auto if self.flash_coop.is_some() => Kernel::FlashCoop,
            Kernel::Auto => Kernel::Flash,
            Kernel::FlashCoop if self.flash_coop.is_none() => {
                return Err(Error::Unsupported(
                    "the cooperative-matrix prefill kernel is not available for this layer on this \
                     adapter (see `diffattn adapters`)"
                        .into(),
                ));
            }
            Kernel::DecodeSubgroup if self.decode_subgroup.is_none() => {
                return Err(Error::Unsupported(
                    "the subgroup decode kernel is not available for this layer on this adapter \
                     (see `diffattn adapters`)"
                        .into(),
                ));
            }
            Kernel::DecodeCoop if self.decode_coop.is_none() => {
                return Err(Error::Unsupported(
                    "the cooperative-matrix decode kernel is not available for this layer on this \
                     adapter (see `diffattn adapters`)"
                        .into(),
                ));
            }
            k => k,
        };
        let short_cache = kernel == Kernel::DecodeSubgroup
            && self.decode_subgroup_short.is_some()
            && call.seq_len <= self.tuning.subgroup_short_max_keys;
        let subgroup = if short_cache {
            self.decode_subgroup_short.as_ref()
        } else {
            self.decode_subgroup.as_ref()
        };
        let plan = plan_resolved(
            &self.cfg,
            call,
            kernel,
            &self.tuning,
            subgroup.map(|(_, shape)| shape),
        );
        Ok(Plan {
            short_cache,
            ..plan
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

    /// Partial rows (query row x query head x chunk) a call writes.
    fn partial_rows(&self, call: &AttentionCall, plan: &Plan) -> u64 {
        call.n_queries as u64 * self.cfg.q_heads() as u64 * plan.n_chunks as u64
    }

    fn ensure_scratch(&mut self, gpu: &Gpu, rows: u64) -> Result<()> {
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

    /// Allocates the partials for every call of up to `max_queries` query rows over up to
    /// `max_seq` keys (any kernel `Auto` may pick), so that such calls allocate nothing.
    pub fn reserve(&mut self, gpu: &Gpu, max_queries: u32, max_seq: u32) -> Result<()> {
        let mut rows = 0;
        // Split counts grow with the cache length, so the longest cache bounds each row count
        // of a pipeline; the short-cache one has its own longest cache.
        let short = max_seq.clamp(1, self.tuning.subgroup_short_max_keys.max(1));
        for n in 1..=max_queries.max(1) {
            for seq_len in [max_seq.max(1), short] {
                let call = AttentionCall {
                    n_queries: n,
                    seq_len,
                    causal: false,
                    past_len: 0,
                };
                let plan = self.plan(&call, Kernel::Auto)?;
                rows = rows.max(self.partial_rows(&call, &plan));
            }
        }
        self.ensure_scratch(gpu, rows)
    }

    /// The parameter block of one call.
    pub fn params(&self, call: &AttentionCall, plan: &Plan) -> Params {
        let cfg = &self.cfg;
        Params {
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
            chunk_len: plan.chunk_len,
            direct: plan.direct as u32,
        }
    }

    fn first_pipeline(&self, kernel: Kernel, short_cache: bool) -> &Arc<wgpu::ComputePipeline> {
        match kernel {
            Kernel::DecodeSubgroup if short_cache => {
                &self
                    .decode_subgroup_short
                    .as_ref()
                    .expect("plan checked the path")
                    .0
            }
            Kernel::Decode => &self.decode,
            Kernel::DecodeSerial => &self.decode_serial,
            Kernel::DecodeCoop => self.decode_coop.as_ref().expect("plan checked the path"),
            Kernel::FlashCoop => self.flash_coop.as_ref().expect("plan checked the path"),
            Kernel::DecodeSubgroup => {
                &self
                    .decode_subgroup
                    .as_ref()
                    .expect("plan checked the path")
                    .0
            }
            _ => &self.flash,
        }
    }

    /// Bind groups for calls on fixed buffers, with the parameter block at binding 0 taken from
    /// `uniform` (an arena, or one block) at the offset given to [`AttentionOp::record`]. Uses the
    /// partials allocated by [`AttentionOp::reserve`] (or the last `encode`).
    pub fn bind(
        &self,
        gpu: &Gpu,
        uniform: &wgpu::Buffer,
        bufs: &AttentionBuffers,
    ) -> Result<AttentionBinding> {
        let (part_o, part_ml) = self.scratch.as_ref().ok_or_else(|| {
            Error::config("attention partials not allocated: call AttentionOp::reserve first")
        })?;
        if self.cfg.mode == Mode::Diff && bufs.lam.is_none() {
            return Err(Error::shape("lam", "a buffer in DIFF V2 mode", "no buffer"));
        }
        let lam = bufs.lam.unwrap_or(&self.no_lam);
        let mut pipelines: Vec<(Kernel, bool)> =
            self.paths().into_iter().map(|k| (k, false)).collect();
        if self.decode_subgroup_short.is_some() {
            pipelines.push((Kernel::DecodeSubgroup, true));
        }
        let first = pipelines
            .into_iter()
            .map(|(k, short)| {
                let p = self.first_pipeline(k, short);
                let mut list = vec![uniform, bufs.q, bufs.k, bufs.v, part_o, part_ml];
                // The fast decode kernels write the output themselves on a single chunk.
                if matches!(k, Kernel::DecodeCoop | Kernel::DecodeSubgroup) {
                    list.extend([lam, bufs.out]);
                }
                (k, short, gpu.bind(p, &list))
            })
            .collect();
        let combine = gpu.bind(&self.combine, &[uniform, part_o, part_ml, lam, bufs.out]);
        let combine_serial = gpu.bind(
            &self.combine_serial,
            &[uniform, part_o, part_ml, lam, bufs.out],
        );
        Ok(AttentionBinding {
            first,
            combine,
            combine_serial,
            partial_rows: part_ml.size() / 8,
        })
    }

    /// Records both passes of one call into an open compute pass, its parameter block (from
    /// [`AttentionOp::params`]) at `offset` of the bound uniform. Nothing is created.
    pub fn record(
        &self,
        gpu: &Gpu,
        pass: &mut wgpu::ComputePass,
        binding: &AttentionBinding,
        call: &AttentionCall,
        plan: &Plan,
        offset: u32,
    ) -> Result<()> {
        call.validate()?;
        gpu.check_dispatch("attention", plan.groups)?;
        if self.partial_rows(call, plan) > binding.partial_rows {
            return Err(Error::config(format!(
                "attention call of {} queries over {} keys needs more partials than were reserved",
                call.n_queries, call.seq_len
            )));
        }
        let first = binding
            .first
            .iter()
            .find(|(k, short, _)| *k == plan.kernel && *short == plan.short_cache)
            .map(|(_, _, b)| b)
            .ok_or_else(|| Error::Unsupported(format!("kernel {}", plan.kernel.name())))?;
        pass.set_pipeline(self.first_pipeline(plan.kernel, plan.short_cache));
        pass.set_bind_group(0, first, &[offset]);
        pass.dispatch_workgroups(plan.groups[0], plan.groups[1], plan.groups[2]);
        if !plan.direct && self.tuning.profile & 32 == 0 {
            let rows = call.n_queries * self.cfg.heads;
            let (pipeline, bind, groups) = if self.serial_combine(plan) {
                let invocations = rows * (self.cfg.head_dim / 4);
                let groups = grid_2d(invocations.div_ceil(SERIAL_WG));
                (&self.combine_serial, &binding.combine_serial, groups)
            } else {
                (&self.combine, &binding.combine, grid_2d(rows))
            };
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind, &[offset]);
            pass.dispatch_workgroups(groups[0], groups[1], 1);
        }
        Ok(())
    }

    /// Whether the second pass of `plan` is the barrier-free one: after the serial decode kernel,
    /// and after the portable prefill kernel on CPU adapters (where diff_combine.wgsl's barriers
    /// cost more than the merge; the barrier decode kernel keeps diff_combine.wgsl everywhere, so
    /// both merges stay under test on every adapter).
    fn serial_combine(&self, plan: &Plan) -> bool {
        plan.kernel == Kernel::DecodeSerial || (self.tuning.serial && plan.kernel == Kernel::Flash)
    }

    /// Records both passes of one call into `encoder`, in one compute pass (with the given
    /// timestamp writes, for benchmarks). Makes its own parameter block and bind groups: for single
    /// calls; a model records through [`AttentionOp::bind`] and [`AttentionOp::record`] instead.
    pub fn encode(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        call: &AttentionCall,
        kernel: Kernel,
        bufs: &AttentionBuffers,
        timestamps: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<Plan> {
        let plan = self.plan(call, kernel)?;
        self.check(gpu, call, &plan, bufs)?;
        self.ensure_scratch(gpu, self.partial_rows(call, &plan))?;
        let uniform = gpu.uniform("attention params", &self.params(call, &plan));
        let binding = self.bind(gpu, &uniform, bufs)?;
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("diff attention"),
            timestamp_writes: timestamps,
        });
        self.record(gpu, &mut pass, &binding, call, &plan, 0)?;
        Ok(plan)
    }
}

/// One layer's attention bind groups, made once (see [`AttentionOp::bind`]).
pub struct AttentionBinding {
    /// Per first-pass pipeline (kernel, short-cache variant): its bind group.
    first: Vec<(Kernel, bool, wgpu::BindGroup)>,
    combine: wgpu::BindGroup,
    combine_serial: wgpu::BindGroup,
    partial_rows: u64,
}

/// Spreads `groups` workgroups over x and y so that neither exceeds the portable 65535.
pub(crate) fn grid_2d(groups: u32) -> [u32; 2] {
    let x = groups.clamp(1, 32768);
    [x, groups.div_ceil(x).max(1)]
}

/// Runs one attention call on host data: uploads, runs both passes (output poisoned with NaN first,
/// so an unwritten element cannot pass a check), reads back `out` (N, h, d). A non-finite output
/// element (inputs that overflow f32) is [`Error::NonFinite`], not data.
pub async fn attention(
    gpu: &Gpu,
    cfg: &AttentionConfig,
    call: &AttentionCall,
    x: &HostInputs<'_>,
    kernel: Kernel,
) -> Result<Vec<f32>> {
    let mut op = AttentionOp::new(gpu, *cfg)?;
    attention_with(gpu, &mut op, call, x, kernel).await
}

/// [`attention`] through an existing op (with its tuning).
pub async fn attention_with(
    gpu: &Gpu,
    op: &mut AttentionOp,
    call: &AttentionCall,
    x: &HostInputs<'_>,
    kernel: Kernel,
) -> Result<Vec<f32>> {
    let cfg = op.config();
    check_host(cfg, call, x)?;
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
    let out = gpu.read_f32(&out, out_len).await?;
    // Inputs whose products overflow f32 give inf or NaN: an error, never data.
    Error::check_finite("the attention output", &out)?;
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning(target_workgroups: u32) -> DecodeTuning {
        DecodeTuning {
            target_workgroups,
            // Eight subgroups: sub-chunks of 128 keys.
            workgroup_size: 256,
            subgroup_workgroup_size: 256,
            subgroup_short_workgroup_size: 0,
            subgroup_short_max_keys: 0,
            direct_max_keys: 256,
            blocks: 1,
            serial: false,
            rows: 0,
            ahead: 0,
            profile: 0,
        }
    }

    #[test]
    fn the_short_cache_pipeline_exists_only_for_another_workgroup_size() {
        let long = DecodeTuning {
            subgroup_short_workgroup_size: 128,
            subgroup_short_max_keys: 8192,
            ..tuning(256)
        };
        let short = short_tuning(&long).expect("128 differs from 256");
        assert_eq!(short.subgroup_workgroup_size, 128);
        assert_eq!(
            DecodeTuning {
                subgroup_workgroup_size: 256,
                ..short
            },
            long
        );
        for wg in [0, 256] {
            let same = DecodeTuning {
                subgroup_short_workgroup_size: wg,
                ..long
            };
            assert_eq!(short_tuning(&same), None);
        }
    }

    #[test]
    fn coop_split_count_follows_the_target_and_never_exceeds_the_sub_chunks() {
        // 65536 keys in 512 sub-chunks of 128; 8 KV heads: 1024 workgroups ask for 128 chunks.
        assert_eq!(coop_chunks(65536, 8, &tuning(1024)), 128);
        // A short cache has fewer sub-chunks than the target would split it into.
        assert_eq!(coop_chunks(1000, 8, &tuning(1024)), 8);
        assert_eq!(coop_chunks(1, 8, &tuning(1024)), 1);
        // A target below one workgroup per head group still gives one chunk.
        assert_eq!(coop_chunks(65536, 64, &tuning(4)), 1);
    }

    #[test]
    fn short_caches_decode_in_one_chunk_without_a_merge_pass() {
        let plan_for = |mode, heads, kv_heads, seq_len| {
            let cfg = AttentionConfig {
                kv_dtype: KvDtype::F16,
                ..AttentionConfig::new(mode, heads, kv_heads, 64)
            };
            let call = AttentionCall {
                n_queries: 1,
                seq_len,
                causal: true,
                past_len: seq_len - 1,
            };
            plan_resolved(&cfg, &call, Kernel::DecodeCoop, &tuning(1024), None)
        };
        let short = plan_for(Mode::Diff, 6, 2, 256);
        assert!(short.direct);
        assert_eq!(short.n_chunks, 1);
        assert!(!plan_for(Mode::Diff, 6, 2, 257).direct);
        assert!(plan_for(Mode::Standard, 3, 1, 100).direct);
        // More than 16 query heads per KV head take two workgroups per group.
        assert!(!plan_for(Mode::Diff, 16, 1, 100).direct);
    }

    #[test]
    fn subgroup_plan_writes_directly_only_where_one_workgroup_holds_the_pairs() {
        let shape = SubgroupShape {
            lanes: 8,
            rows: 4,
            workgroup_size: 128,
            merge_rows: 4,
            ahead: 1,
        };
        let call = |seq_len| AttentionCall {
            n_queries: 1,
            seq_len,
            causal: true,
            past_len: seq_len - 1,
        };
        // DIFF V2 group of 4 (h=4, h_kv=2): one workgroup per group.
        let small = AttentionConfig::new(Mode::Diff, 4, 2, 64);
        let p = plan_subgroup(&small, &call(200), &shape, &tuning(1024));
        assert!(p.direct && p.n_chunks == 1, "{p:?}");
        assert_eq!(p.groups, [2, 1, 1]);
        let p = plan_subgroup(&small, &call(5000), &shape, &tuning(1024));
        assert!(!p.direct && p.n_chunks == 157, "{p:?}");
        assert_eq!((p.chunk_len, p.heads_per_wg), (32, 4));
        // A group of 8 over two workgroups: a short cache still takes several chunks (the merge
        // pass runs anyway), and never writes the output itself.
        let wide = AttentionConfig::new(Mode::Diff, 8, 2, 64);
        let p = plan_subgroup(&wide, &call(200), &shape, &tuning(1024));
        assert!(!p.direct && p.n_chunks == 7, "{p:?}");
        assert_eq!((p.head_splits, p.groups), (2, [4, 7, 1]));
        // DIFF V2 pairs need two rows per merge round.
        let one_row = SubgroupShape {
            merge_rows: 1,
            ..shape
        };
        assert!(!plan_subgroup(&small, &call(200), &one_row, &tuning(1024)).direct);
        let std = AttentionConfig::new(Mode::Standard, 4, 2, 64);
        assert!(plan_subgroup(&std, &call(200), &one_row, &tuning(1024)).direct);
    }

    #[test]
    fn coop_decode_plan_puts_kv_heads_fastest() {
        let cfg = AttentionConfig {
            kv_dtype: KvDtype::F16,
            ..AttentionConfig::new(Mode::Diff, 32, 8, 128)
        };
        let call = AttentionCall {
            n_queries: 1,
            seq_len: 65536,
            causal: true,
            past_len: 65535,
        };
        let plan = plan_resolved(&cfg, &call, Kernel::DecodeCoop, &tuning(1024), None);
        assert_eq!(plan.heads_per_wg, 8);
        assert_eq!(plan.groups, [8, 128, 1]);
        assert_eq!(plan.n_chunks, 128);
    }

    #[test]
    fn params_block_is_sixteen_words() {
        assert_eq!(std::mem::size_of::<Params>(), 64);
        assert_eq!(Params::FIELDS.len(), 16);
    }
}
