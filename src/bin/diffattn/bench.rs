//! `diffattn bench`: kernel timings, with GPU timestamps where the adapter has them.

use anyhow::{Context, Result};
use diffattn::attention::{
    self, AttentionBuffers, AttentionCall, AttentionConfig, AttentionOp, DecodeTuning, Kernel,
    KvDtype, Mode,
};
use diffattn::gpu::ShaderSpec;
use diffattn::util::Rng;
use diffattn::{Gpu, GpuOptions};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Time one attention call (both passes).
    Attention(AttentionBench),
    /// Measure the read and copy bandwidth the attention rows are compared with.
    Bandwidth(BandwidthBench),
    /// Time the prompt product y = x W^T (f32 x, f16 W) on the tensor cores and on the SIMT
    /// kernel, and the tensor-core ceiling (f16 x and W loaded straight into matrices) that the
    /// prefill rows are compared with.
    Gemm(GemmBench),
    /// Time a model: prefill, first token, decode tok/s (batch 1, greedy), GPU and host time per token.
    Generate(crate::bench_generate::GenerateBench),
}

#[derive(clap::Args, Clone)]
pub struct AttentionBench {
    /// decode: N query rows at the end of a cache of S keys; prefill: N = S rows, causal from 0.
    #[arg(long, default_value = "decode")]
    mode: String,
    /// diff, standard, or both (side by side, with the ratio).
    #[arg(long, default_value = "both")]
    variant: String,
    /// Output heads h (DIFF V2 runs 2h query heads).
    #[arg(long, default_value_t = 16)]
    heads: u32,
    #[arg(long, default_value_t = 4)]
    kv_heads: u32,
    #[arg(long, default_value_t = 64)]
    head_dim: u32,
    /// KV length S.
    #[arg(long, default_value_t = 16384)]
    seq: u32,
    /// Query rows (decode default 1; prefill default S).
    #[arg(long)]
    queries: Option<u32>,
    #[arg(long, default_value = "f32")]
    kv_dtype: String,
    /// Timed repetitions (after 300 ms of warm-up); the median is reported.
    #[arg(long, default_value_t = 20)]
    repeats: u32,
    /// Copies of K/V cycled through between repeats, so that no repeat finds the cache in L2:
    /// a number, or `auto` (enough copies for 256 MiB, at most 512).
    #[arg(long, default_value = "1")]
    rotate: String,
    /// First-pass kernel: auto (fastest available), decode, decode-serial, decode-coop,
    /// decode-subgroup, flash or flash-coop.
    #[arg(long, default_value = "auto")]
    kernel: String,
    /// Longest cache the cooperative decode kernel takes in one chunk, without a merge pass
    /// (tuning; 0: never).
    #[arg(long)]
    direct_max_keys: Option<u32>,
    /// Workgroups per call the decode split count aims for (tuning).
    #[arg(long)]
    target_workgroups: Option<u32>,
    /// Invocations per workgroup of the cooperative and the subgroup decode kernels, 64, 128 or
    /// 256, at every cache length (tuning; by default the subgroup kernel takes 128 for caches of
    /// up to 8192 keys).
    #[arg(long)]
    workgroup_size: Option<u32>,
    /// 16-key tiles per subgroup step of the cooperative decode kernel, 1 or 2 (tuning).
    #[arg(long)]
    blocks: Option<u32>,
    /// Query rows per workgroup of the subgroup decode kernel at most, 1, 2, 4 or 8 (tuning).
    #[arg(long)]
    rows: Option<u32>,
    /// Steps ahead that the subgroup decode kernel loads K/V, 0, 1 or 2 (tuning).
    #[arg(long)]
    ahead: Option<u32>,
    /// Measurement only: stages of the cooperative decode kernel to leave out (bits; results are
    /// wrong by design).
    #[arg(long, hide = true, default_value_t = 0)]
    profile: u32,
    /// Measurement only: time each variant this many times in the process, each with a fresh
    /// operator (its own pipelines, scratch and query buffers), to tell a slow pipeline from a
    /// slow process.
    #[arg(long, hide = true, default_value_t = 1)]
    instances: u32,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Clone)]
pub struct BandwidthBench {
    /// Buffer size in MiB (capped by the adapter's binding limit).
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    #[arg(long, default_value_t = 20)]
    repeats: u32,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Clone)]
pub struct GemmBench {
    /// Token rows of x.
    #[arg(long, default_value_t = 4096)]
    m: u32,
    /// Outputs (rows of W).
    #[arg(long, default_value_t = 4096)]
    n: u32,
    /// Inner dimension (a multiple of 8).
    #[arg(long, default_value_t = 4096)]
    k: u32,
    /// gemm_coop (the engine's tensor-core product), gemm (SIMT), ceiling (gemm_ceiling.wgsl
    /// with --tiles and --subgroups), or all (both products and the ceiling in several shapes).
    #[arg(long, default_value = "all")]
    kernel: String,
    /// The ceiling kernel's 16x16 tiles per subgroup, MxN: 1x1, 1x2, 2x2, 2x4, 4x2 or 4x4.
    #[arg(long, default_value = "2x4")]
    tiles: String,
    /// The ceiling kernel's subgroups per workgroup (side by side along N): 1, 2, 4 or 8.
    #[arg(long, default_value_t = 2)]
    subgroups: u32,
    #[arg(long, default_value_t = 10)]
    repeats: u32,
    #[arg(long)]
    json: bool,
}

/// Wall time of warm-up before each timed series.
const WARM_UP_MS: u64 = 300;
/// Wall time of warm-up before the first timed series of a process. On the H200 the first
/// ~0.5 s of work after the GPU idled ran the decode kernel up to 3.5x slower in about one
/// process of five (at the reported 1,980 MHz), a state that held through 300 ms of warm-up and
/// two agreeing series; after 1.5 s it never showed (0 of 14 processes, 3 of 14 with 300 ms).
const FIRST_WARM_UP_MS: u64 = 1500;

/// Whether this process has already warmed the GPU up once.
static WARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// GPU timestamps of `repeats` compute passes recorded by `record(pass_index, timestamp_writes)`,
/// or wall-clock times per submit where the adapter has no timestamps.
fn time_passes(
    gpu: &Gpu,
    repeats: u32,
    mut record: impl FnMut(
        u32,
        &mut wgpu::CommandEncoder,
        Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()>,
) -> Result<(f64, &'static str)> {
    // Warm up for a fixed wall time, not a fixed count: a GPU idling at a low clock takes tens of
    // milliseconds of load to reach its working clock, and short kernels would otherwise be timed
    // on the way up.
    let start = std::time::Instant::now();
    let trace = std::env::var_os("DIFFATTN_BENCH_TRACE").is_some();
    let mut r = 0;
    let first = !WARMED.swap(true, std::sync::atomic::Ordering::Relaxed);
    let warm_up_ms = if first { FIRST_WARM_UP_MS } else { WARM_UP_MS };
    while r < 3 || start.elapsed() < std::time::Duration::from_millis(warm_up_ms) {
        let batch = std::time::Instant::now();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for _ in 0..8 {
            record(r, &mut enc, None)?;
            r += 1;
        }
        gpu.queue.submit([enc.finish()]);
        gpu.wait()?;
        if trace {
            eprintln!(
                "trace warm-up +{:.1} ms: 8 calls in {:.1} us each",
                start.elapsed().as_secs_f64() * 1e3,
                batch.elapsed().as_secs_f64() * 1e6 / 8.0
            );
        }
    }
    gpu.take_error("bench warm-up")?;
    // The warm-up is a fixed wall time, and a GPU may still be raising its clock after it: timed
    // series repeat until two in a row agree within 3%, and the last one counts.
    let mut last: Option<f64> = None;
    let mut times = Vec::new();
    for _ in 0..MAX_SERIES {
        times = series(gpu, repeats, &mut record)?;
        let median = times[times.len() / 2];
        if trace {
            eprintln!(
                "trace series +{:.1} ms: median {:.1} us",
                start.elapsed().as_secs_f64() * 1e3,
                median * 1e6
            );
        }
        if last.is_some_and(|m| (median - m).abs() <= 0.03 * m) {
            break;
        }
        last = Some(median);
    }
    let timer = if gpu.has_timestamps() {
        "gpu-timestamps"
    } else {
        "wall-clock"
    };
    Ok((times[times.len() / 2], timer))
}

/// Timed series of a benchmark at most, until two in a row agree.
const MAX_SERIES: usize = 8;

/// One timed series of `repeats` calls, sorted.
fn series(
    gpu: &Gpu,
    repeats: u32,
    record: &mut impl FnMut(
        u32,
        &mut wgpu::CommandEncoder,
        Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()>,
) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    if gpu.has_timestamps() {
        let count = 2 * repeats;
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("bench"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: count as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for r in 0..repeats {
            let writes = wgpu::ComputePassTimestampWrites {
                query_set: &set,
                beginning_of_pass_write_index: Some(2 * r),
                end_of_pass_write_index: Some(2 * r + 1),
            };
            record(r, &mut enc, Some(writes))?;
        }
        enc.resolve_query_set(&set, 0..count, &resolve, 0);
        gpu.queue.submit([enc.finish()]);
        let raw = pollster::block_on(diffattn::gpu::read_buffer(
            gpu,
            &resolve,
            0,
            count as u64 * 8,
        ))?;
        let ticks: &[u64] = bytemuck::cast_slice(&raw);
        let period = gpu.queue.get_timestamp_period() as f64;
        for r in 0..repeats as usize {
            times.push(ticks[2 * r + 1].saturating_sub(ticks[2 * r]) as f64 * period * 1e-9);
        }
    } else {
        for r in 0..repeats {
            let start = std::time::Instant::now();
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            record(r, &mut enc, None)?;
            gpu.queue.submit([enc.finish()]);
            gpu.wait()?;
            times.push(start.elapsed().as_secs_f64());
        }
    }
    gpu.take_error("bench")?;
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times)
}

struct Row {
    variant: &'static str,
    instance: u32,
    kernel: &'static str,
    seconds: f64,
    gb_s: f64,
    tflop_s: f64,
    kv_bytes: f64,
    chunks: u32,
    /// The subgroup decode kernel ran its short-cache pipeline.
    short_cache: bool,
    timer: &'static str,
}

/// The K/V copies every variant of one run reads, allocated once before any of them so that all
/// variants time the same memory (and no variant's buffers are carved from what another freed).
struct KvSet {
    k: Vec<wgpu::Buffer>,
    v: Vec<wgpu::Buffer>,
}

fn rotate_count(spec: &str, kv_bytes: u64) -> Result<usize> {
    if spec == "auto" {
        return Ok(((256u64 << 20).div_ceil(kv_bytes.max(1))).clamp(1, 512) as usize);
    }
    let n: usize = spec
        .parse()
        .with_context(|| format!("--rotate {spec}: expected a number or auto"))?;
    Ok(n.max(1))
}

fn kv_set(gpu: &Gpu, b: &AttentionBench, kv_dtype: KvDtype, copies: usize) -> Result<KvSet> {
    let elems = b.seq as usize * b.kv_heads as usize * b.head_dim as usize;
    let mut rng = Rng::new(7);
    let kv = attention::kv_bytes(&rng.normals(elems, 1.0), kv_dtype);
    let mut set = KvSet {
        k: vec![],
        v: vec![],
    };
    for _ in 0..copies {
        set.k.push(gpu.storage_init("k", &kv)?);
        set.v.push(gpu.storage_init("v", &kv)?);
    }
    gpu.wait()?;
    Ok(set)
}

fn bench_variant(
    gpu: &Gpu,
    b: &AttentionBench,
    kvs: &KvSet,
    mode: Mode,
    variant: &'static str,
) -> Result<Row> {
    let kv_dtype = KvDtype::parse(&b.kv_dtype)?;
    let cfg = AttentionConfig {
        heads: b.heads,
        kv_heads: b.kv_heads,
        head_dim: b.head_dim,
        mode,
        kv_dtype,
        scale: None,
    };
    let call = bench_call(b)?;
    cfg.validate()?;
    call.validate()?;
    let sh = attention::shapes(&cfg, &call);
    let mut rng = Rng::new(11);
    let q = gpu.storage_init("q", bytemuck::cast_slice(&rng.normals(sh.q.0, 1.0)))?;
    let lam = gpu.storage_init(
        "lam",
        bytemuck::cast_slice(&rng.normals(sh.lam.0.max(1), 1.0)),
    )?;
    let out = gpu.storage("out", sh.out.0 as u64 * 4)?;
    let mut op = AttentionOp::new(gpu, cfg)?;
    if b.direct_max_keys.is_some()
        || b.target_workgroups.is_some()
        || b.workgroup_size.is_some()
        || b.blocks.is_some()
        || b.rows.is_some()
        || b.ahead.is_some()
        || b.profile != 0
    {
        let default = DecodeTuning::for_layer(&gpu.info, b.head_dim);
        let shaped = default.with_shape(
            b.workgroup_size.unwrap_or(default.workgroup_size),
            b.blocks.unwrap_or(default.blocks),
        );
        op.set_decode_tuning(
            gpu,
            DecodeTuning {
                direct_max_keys: b.direct_max_keys.unwrap_or(shaped.direct_max_keys),
                target_workgroups: b.target_workgroups.unwrap_or(default.target_workgroups),
                rows: b.rows.unwrap_or(default.rows),
                ahead: b.ahead.unwrap_or(default.ahead),
                subgroup_workgroup_size: b
                    .workgroup_size
                    .unwrap_or(default.subgroup_workgroup_size),
                // A named workgroup size is timed at every cache length.
                subgroup_short_workgroup_size: if b.workgroup_size.is_some() {
                    0
                } else {
                    default.subgroup_short_workgroup_size
                },
                profile: b.profile,
                ..shaped
            },
        )?;
    }
    let kernel = Kernel::parse(&b.kernel)?;
    let plan = op.plan(&call, kernel)?;
    let copies = kvs.k.len();
    let (median_s, timer) = time_passes(gpu, b.repeats.max(1), |r, enc, ts| {
        let i = r as usize % copies;
        let bufs = AttentionBuffers {
            q: &q,
            k: &kvs.k[i],
            v: &kvs.v[i],
            lam: Some(&lam),
            out: &out,
        };
        op.encode(gpu, enc, &call, kernel, &bufs, ts)?;
        Ok(())
    })?;

    // Work actually done: each query row attends to the keys its causal mask lets it see.
    let n = call.n_queries;
    let visible: f64 = (0..n as u64)
        .map(|r| (call.past_len as u64 + r + 1).min(b.seq as u64) as f64)
        .sum();
    let flops = 4.0 * visible * cfg.q_heads() as f64 * b.head_dim as f64;
    let kv_bytes = 2.0 * sh.kv.0 as f64 * kv_dtype.bytes() as f64;
    let io_bytes = 4.0 * (sh.q.0 + sh.out.0 + sh.lam.0) as f64;
    Ok(Row {
        variant,
        instance: 0,
        kernel: plan.kernel.name(),
        seconds: median_s,
        gb_s: (kv_bytes + io_bytes) / median_s / 1e9,
        tflop_s: flops / median_s / 1e12,
        kv_bytes,
        chunks: plan.n_chunks,
        short_cache: plan.short_cache,
        timer,
    })
}

fn bench_call(b: &AttentionBench) -> Result<AttentionCall> {
    let prefill = match b.mode.as_str() {
        "prefill" => true,
        "decode" => false,
        other => anyhow::bail!("unknown bench mode `{other}` (expected decode or prefill)"),
    };
    let n = b.queries.unwrap_or(if prefill { b.seq } else { 1 });
    Ok(AttentionCall {
        n_queries: n,
        seq_len: b.seq,
        causal: true,
        past_len: if prefill { 0 } else { b.seq.saturating_sub(n) },
    })
}

fn run_attention(b: &AttentionBench, opts: &GpuOptions) -> Result<()> {
    let gpu = super::open_gpu(opts)?;
    let variants: Vec<(Mode, &'static str)> = match b.variant.as_str() {
        "diff" => vec![(Mode::Diff, "diff")],
        "standard" => vec![(Mode::Standard, "standard")],
        "both" => vec![(Mode::Diff, "diff"), (Mode::Standard, "standard")],
        other => anyhow::bail!("unknown variant `{other}` (expected diff, standard or both)"),
    };
    let kv_dtype = KvDtype::parse(&b.kv_dtype)?;
    let kv_bytes = 2 * b.seq as u64 * b.kv_heads as u64 * b.head_dim as u64 * kv_dtype.bytes();
    let copies = rotate_count(&b.rotate, kv_bytes)?;
    let kvs = kv_set(&gpu, b, kv_dtype, copies)?;
    let mut rows: Vec<Row> = Vec::new();
    for instance in 0..b.instances.max(1) {
        for &(m, name) in &variants {
            rows.push(Row {
                instance,
                ..bench_variant(&gpu, b, &kvs, m, name)?
            });
        }
    }
    let adapter = gpu.describe();
    let queries = bench_call(b)?.n_queries;
    for r in &rows {
        if b.json {
            println!(
                "{}",
                serde_json::json!({
                    "bench": "attention", "mode": b.mode, "variant": r.variant, "kernel": r.kernel,
                    "path": r.kernel, "heads": b.heads, "kv_heads": b.kv_heads,
                    "head_dim": b.head_dim, "seq": b.seq, "queries": queries,
                    "kv_dtype": b.kv_dtype, "median_us": r.seconds * 1e6, "gb_s": r.gb_s,
                    "tflop_s": r.tflop_s, "kv_bytes": r.kv_bytes, "rotate": copies,
                    "chunks": r.chunks, "short_cache": r.short_cache, "timer": r.timer,
                    "instance": r.instance,
                    "adapter": adapter,
                })
            );
        } else {
            println!(
                "{:<8} {:<11} {} h={} kv={} d={} S={} {} x{copies} #{}: {:>10.1} us  {:>8.1} GB/s  {:>7.3} TFLOP/s  ({} chunks, {})",
                r.variant,
                r.kernel,
                b.mode,
                b.heads,
                b.kv_heads,
                b.head_dim,
                b.seq,
                b.kv_dtype,
                r.instance,
                r.seconds * 1e6,
                r.gb_s,
                r.tflop_s,
                r.chunks,
                r.timer
            );
        }
    }
    if let [d, s] = &rows[..] {
        let ratio = d.seconds / s.seconds;
        if b.json {
            println!(
                "{}",
                serde_json::json!({"ratio_diff_over_standard": ratio, "adapter": adapter})
            );
        } else {
            println!("diff / standard time: {ratio:.3} (same h_kv, same run) on {adapter}");
        }
    }
    Ok(())
}

fn run_bandwidth(b: &BandwidthBench, opts: &GpuOptions) -> Result<()> {
    let gpu = super::open_gpu(opts)?;
    let limit = gpu
        .limits
        .max_storage_buffer_binding_size
        .min(gpu.limits.max_buffer_size);
    let bytes = (b.mib << 20).min(limit) / 16 * 16;
    let src = gpu.storage("bandwidth src", bytes)?;
    let dst = gpu.storage("bandwidth dst", bytes)?;
    let ones = vec![1.0f32; (bytes / 4) as usize];
    gpu.queue.write_buffer(&src, 0, bytemuck::cast_slice(&ones));
    drop(ones);
    let read = gpu.pipeline(&ShaderSpec::new("bandwidth").entry("read_sum"))?;
    let copy = gpu.pipeline(&ShaderSpec::new("bandwidth").entry("copy"))?;
    let groups = 4096u32.min(gpu.limits.max_compute_workgroups_per_dimension);
    let time = |pipeline: &wgpu::ComputePipeline| -> Result<f64> {
        let bg = gpu.bind(pipeline, &[&src, &dst]);
        let (t, _) = time_passes(&gpu, b.repeats.max(1), |_, enc, ts| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("bandwidth"),
                timestamp_writes: ts,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(groups, 1, 1);
            Ok(())
        })?;
        Ok(t)
    };
    let read_s = time(&read)?;
    let copy_s = time(&copy)?;
    let (one_s, two_s) = dispatch_floor(&gpu, &src, &dst, b.repeats.max(1))?;
    let read_gb_s = bytes as f64 / read_s / 1e9;
    let copy_gb_s = 2.0 * bytes as f64 / copy_s / 1e9;
    let adapter = gpu.describe();
    if b.json {
        println!(
            "{}",
            serde_json::json!({"bench": "bandwidth", "read_gb_s": read_gb_s,
                "copy_gb_s": copy_gb_s, "bytes": bytes, "adapter": adapter,
                "one_dispatch_us": one_s * 1e6, "two_dispatches_us": two_s * 1e6})
        );
    } else {
        println!(
            "read {read_gb_s:.1} GB/s, copy {copy_gb_s:.1} GB/s (read + write) over {} MiB on {adapter}",
            bytes >> 20
        );
        println!(
            "a pass of one tiny dispatch {:.1} us, of two dependent ones {:.1} us",
            one_s * 1e6,
            two_s * 1e6
        );
    }
    Ok(())
}

/// The fixed cost of a compute pass holding one tiny dispatch, and two where the second reads what
/// the first wrote (an attention call's first pass and merge pass): the floor of a short call.
fn dispatch_floor(
    gpu: &Gpu,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    repeats: u32,
) -> Result<(f64, f64)> {
    let touch = gpu.pipeline(&ShaderSpec::new("bandwidth").entry("touch"))?;
    let forward = gpu.bind(&touch, &[src, dst]);
    let back = gpu.bind(&touch, &[dst, src]);
    let floor = |dispatches: usize| -> Result<f64> {
        let (t, _) = time_passes(gpu, repeats, |_, enc, ts| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("dispatch floor"),
                timestamp_writes: ts,
            });
            pass.set_pipeline(&touch);
            for bg in [&forward, &back].into_iter().take(dispatches) {
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(1, 1, 1);
            }
            Ok(())
        })?;
        Ok(t)
    };
    Ok((floor(1)?, floor(2)?))
}

/// A shape of the ceiling kernel: (tiles per subgroup M x N, subgroups per workgroup).
type CeilingShape = ((u32, u32), u32);

/// The ceiling kernel's shapes `--kernel all` times.
const CEILING_SHAPES: [CeilingShape; 6] = [
    ((2, 2), 1),
    ((2, 4), 1),
    ((2, 4), 2),
    ((4, 4), 1),
    ((4, 2), 4),
    ((2, 4), 4),
];

/// `MxN` tiles of the ceiling kernel, one of the shapes the translation test checks.
fn parse_tiles(s: &str) -> Result<(u32, u32)> {
    let bad = || anyhow::anyhow!("--tiles {s}: expected 1x1, 1x2, 2x2, 2x4, 4x2 or 4x4");
    let (a, b) = s.split_once('x').ok_or_else(bad)?;
    let t = (
        a.parse::<u32>().map_err(|_| bad())?,
        b.parse::<u32>().map_err(|_| bad())?,
    );
    if [(1, 1), (1, 2), (2, 2), (2, 4), (4, 2), (4, 4)].contains(&t) {
        Ok(t)
    } else {
        Err(bad())
    }
}

/// Output entries of a timed product checked against float64 (a timing of a wrong kernel is no
/// timing).
const GEMM_CHECKS: usize = 256;

fn run_gemm(b: &GemmBench, opts: &GpuOptions) -> Result<()> {
    use diffattn::gpu::{Const, UniformArena};
    use diffattn::model::plan::MatmulParams;
    anyhow::ensure!(
        b.m > 0 && b.n > 0 && b.k > 0 && b.k.is_multiple_of(8),
        "--m, --n and --k must be positive and --k a multiple of 8"
    );
    let one_ceiling = (parse_tiles(&b.tiles)?, b.subgroups);
    anyhow::ensure!(
        [1, 2, 4, 8].contains(&b.subgroups),
        "--subgroups {}: expected 1, 2, 4 or 8",
        b.subgroups
    );
    let kernels: Vec<(&str, Option<CeilingShape>)> = match b.kernel.as_str() {
        "all" => {
            let mut v = vec![("gemm_coop", None), ("gemm", None)];
            v.extend(CEILING_SHAPES.iter().map(|&c| ("ceiling", Some(c))));
            v
        }
        "gemm_coop" | "gemm" => vec![(b.kernel.as_str(), None)],
        "ceiling" => vec![("ceiling", Some(one_ceiling))],
        other => anyhow::bail!("--kernel {other}: expected gemm_coop, gemm, ceiling or all"),
    };
    let gpu = super::open_gpu(opts)?;
    let (m, n, k) = (b.m as usize, b.n as usize, b.k as usize);
    let mut rng = Rng::new(0x6E44);
    let x = rng.normals(m * k, 1.0);
    let w: Vec<half::f16> = rng
        .normals(n * k, 0.1)
        .into_iter()
        .map(half::f16::from_f32)
        .collect();
    let xb = gpu.storage_init("gemm x", bytemuck::cast_slice(&x))?;
    let x16: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
    let xb16 = gpu.storage_init("gemm x f16", bytemuck::cast_slice(&x16))?;
    drop(x16);
    let dims = gpu.uniform("gemm dims", &[b.m, b.n, b.k, 0u32]);
    let wb = gpu.storage_init("gemm W", bytemuck::cast_slice(&w))?;
    let yb = gpu.storage("gemm y", (m * n * 4) as u64)?;
    let no_norm = gpu.storage("gemm no norm", 16)?;
    let mut arena = UniformArena::new(&gpu, "gemm step", 1);
    arena.set(0, &[b.m, 0u32, 0, 0]);
    arena.upload(&gpu, 1);
    let params = gpu.uniform(
        "gemm params",
        &MatmulParams {
            k: b.k,
            n: b.n,
            y_stride: b.n,
            ..Default::default()
        },
    );
    // Sampled outputs and their float64 values.
    let picks: Vec<(usize, usize)> = (0..GEMM_CHECKS)
        .map(|_| {
            let t = (rng.uniform() * m as f64) as usize % m;
            let o = (rng.uniform() * n as f64) as usize % n;
            (t, o)
        })
        .collect();
    let want: Vec<f64> = picks
        .iter()
        .map(|&(t, o)| {
            (0..k)
                .map(|i| x[t * k + i] as f64 * w[o * k + i].to_f64())
                .sum()
        })
        .collect();
    // A row that did not run: printed as such, and the next kernel still runs.
    let error_row = |label: &str, msg: String| {
        if b.json {
            println!(
                "{}",
                serde_json::json!({"bench": "gemm", "kernel": label, "m": b.m, "n": b.n,
                    "k": b.k, "error": msg})
            );
        } else {
            println!("{label}: {msg}");
        }
    };
    let mut wrong = vec![];
    for (kernel, ceiling) in kernels {
        let label = match ceiling {
            Some(((tm, tn), sg)) => format!("ceiling {tm}x{tn} x{sg}"),
            None => kernel.to_string(),
        };
        if kernel != "gemm"
            && let Some(why) = diffattn::model::plan::coop_gemm_unavailable(&gpu)
        {
            error_row(&label, format!("not available on this adapter ({why})"));
            continue;
        }
        if let Some(((tm, tn), sg)) = ceiling {
            let (bm, bn) = (tm * 16, tn * 16 * sg);
            if !b.m.is_multiple_of(bm) || !b.n.is_multiple_of(bn) || !b.k.is_multiple_of(16) {
                error_row(
                    &label,
                    format!(
                        "--m, --n and --k must be multiples of {bm}, {bn} and 16 for these tiles"
                    ),
                );
                continue;
            }
        }
        // The grids of plan.rs: gemm_coop 64 x 64 blocks; matmul.wgsl's gemm 4 outputs per
        // workgroup and 8 tokens per layer of the grid.
        let (spec, groups, with_norm) = match (kernel, ceiling) {
            ("gemm_coop", _) => (
                ShaderSpec::new("gemm_coop"),
                [b.n.div_ceil(64), b.m.div_ceil(64), 1],
                false,
            ),
            (_, Some(((tm, tn), sg))) => (
                ShaderSpec::new("gemm_ceiling")
                    .with("TM", Const::U32(tm))
                    .with("TN", Const::U32(tn))
                    .with("SG", Const::U32(sg))
                    .with("WG", Const::U32(32 * sg)),
                [b.n / (tn * 16 * sg), b.m / (tm * 16), 1],
                false,
            ),
            _ => (
                ShaderSpec::new("matmul")
                    .with(
                        "WEIGHT_DTYPE",
                        Const::U32(diffattn::model::WeightDtype::F16.shader_code()),
                    )
                    .with("TB", Const::U32(8))
                    .entry("gemm"),
                [b.n.div_ceil(4), 1, b.m.div_ceil(8)],
                true,
            ),
        };
        let pipeline = gpu.pipeline(&spec)?;
        let mut buffers = if ceiling.is_some() {
            vec![&dims, &xb16, &wb, &yb]
        } else {
            vec![arena.buffer(), &params, &xb, &wb, &yb]
        };
        if with_norm {
            buffers.push(&no_norm);
        }
        let bind = gpu.bind(&pipeline, &buffers);
        gpu.poison(&yb);
        let (t, timer) = time_passes(&gpu, b.repeats.max(1), |_, enc, ts| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("gemm"),
                timestamp_writes: ts,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[0]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            Ok(())
        })?;
        let y = pollster::block_on(diffattn::gpu::read_buffer(&gpu, &yb, 0, (m * n * 4) as u64))?;
        let y: &[f32] = bytemuck::cast_slice(&y);
        let (mut err2, mut ref2) = (0f64, 0f64);
        for (&(tk, o), &v) in picks.iter().zip(&want) {
            let got = y[tk * n + o] as f64;
            err2 += (got - v).powi(2);
            ref2 += v * v;
        }
        let rel = if err2.is_finite() {
            (err2 / ref2.max(f64::MIN_POSITIVE)).sqrt()
        } else {
            f64::INFINITY
        };
        // The tensor-core kernels round x to f16 (~5e-4 relative per element); gemm widens W
        // exactly.
        let tol = if kernel == "gemm" { 1e-5 } else { 3e-3 };
        if rel.is_nan() || rel > tol {
            error_row(
                &label,
                format!(
                    "{GEMM_CHECKS} sampled outputs off float64 by {rel:.3e} relative L2 (tolerance {tol:.0e}); not timed"
                ),
            );
            wrong.push(label);
            continue;
        }
        let tflop_s = 2.0 * m as f64 * n as f64 * k as f64 / t / 1e12;
        if b.json {
            println!(
                "{}",
                serde_json::json!({"bench": "gemm", "kernel": label, "m": b.m, "n": b.n,
                    "k": b.k, "median_us": t * 1e6, "tflop_s": tflop_s, "rel_l2": rel,
                    "timer": timer, "adapter": gpu.describe()})
            );
        } else {
            println!(
                "{label}: {m} x {n} x {k} in {:.1} us, {tflop_s:.2} TFLOP/s (sampled outputs within {rel:.1e} of float64; {timer})",
                t * 1e6
            );
        }
    }
    anyhow::ensure!(
        wrong.is_empty(),
        "wrong results (not timed): {}",
        wrong.join(", ")
    );
    Ok(())
}

pub fn run(cmd: &BenchCommand, opts: &GpuOptions, process_start: std::time::Instant) -> Result<()> {
    match cmd {
        BenchCommand::Gemm(b) => run_gemm(b, opts),
        BenchCommand::Attention(b) => run_attention(b, opts),
        BenchCommand::Bandwidth(b) => run_bandwidth(b, opts),
        BenchCommand::Generate(b) => crate::bench_generate::run(b, opts, process_start),
    }
}
