//! `diffattn bench`: kernel timings, with GPU timestamps where the adapter has them.

use anyhow::Result;
use diffattn::attention::{
    self, AttentionBuffers, AttentionCall, AttentionConfig, AttentionOp, Kernel, KvDtype, Mode,
};
use diffattn::testing::Rng;
use diffattn::{Gpu, GpuOptions};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Time one attention call (both passes).
    Attention(AttentionBench),
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
    /// Timed repetitions (after 3 warm-up runs); the median is reported.
    #[arg(long, default_value_t = 20)]
    repeats: u32,
    #[arg(long)]
    json: bool,
}

struct Timing {
    median_s: f64,
    timer: &'static str,
}

/// Times `repeats` runs of one call, one compute pass each.
fn time_call(
    gpu: &Gpu,
    op: &mut AttentionOp,
    call: &AttentionCall,
    bufs: &AttentionBuffers,
    repeats: u32,
) -> Result<Timing> {
    for _ in 0..3 {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        op.encode(gpu, &mut enc, call, Kernel::Auto, bufs, None)?;
        gpu.queue.submit([enc.finish()]);
    }
    gpu.wait()?;
    gpu.take_error("bench warm-up")?;
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
            op.encode(gpu, &mut enc, call, Kernel::Auto, bufs, Some(writes))?;
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
        for _ in 0..repeats {
            let start = std::time::Instant::now();
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            op.encode(gpu, &mut enc, call, Kernel::Auto, bufs, None)?;
            gpu.queue.submit([enc.finish()]);
            gpu.wait()?;
            times.push(start.elapsed().as_secs_f64());
        }
    }
    gpu.take_error("bench")?;
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(Timing {
        median_s: times[times.len() / 2],
        timer: if gpu.has_timestamps() {
            "gpu-timestamps"
        } else {
            "wall-clock"
        },
    })
}

struct Row {
    variant: &'static str,
    kernel: String,
    seconds: f64,
    gb_s: f64,
    tflop_s: f64,
    timer: &'static str,
}

fn bench_variant(gpu: &Gpu, b: &AttentionBench, mode: Mode, variant: &'static str) -> Result<Row> {
    let kv_dtype = KvDtype::parse(&b.kv_dtype)?;
    let cfg = AttentionConfig {
        heads: b.heads,
        kv_heads: b.kv_heads,
        head_dim: b.head_dim,
        mode,
        kv_dtype,
        scale: None,
    };
    let prefill = match b.mode.as_str() {
        "prefill" => true,
        "decode" => false,
        other => anyhow::bail!("unknown bench mode `{other}` (expected decode or prefill)"),
    };
    let n = b.queries.unwrap_or(if prefill { b.seq } else { 1 });
    let call = AttentionCall {
        n_queries: n,
        seq_len: b.seq,
        causal: true,
        past_len: if prefill { 0 } else { b.seq.saturating_sub(n) },
    };
    cfg.validate()?;
    call.validate()?;
    let sh = attention::shapes(&cfg, &call);
    let mut rng = Rng::new(7);
    let q = gpu.storage_init("q", bytemuck::cast_slice(&rng.normals(sh.q.0, 1.0)))?;
    let kv = rng.normals(sh.kv.0, 1.0);
    let k = gpu.storage_init("k", &attention::kv_bytes(&kv, kv_dtype))?;
    let v = gpu.storage_init("v", &attention::kv_bytes(&kv, kv_dtype))?;
    let lam = gpu.storage_init(
        "lam",
        bytemuck::cast_slice(&rng.normals(sh.lam.0.max(1), 1.0)),
    )?;
    let out = gpu.storage("out", sh.out.0 as u64 * 4)?;
    let mut op = AttentionOp::new(gpu, cfg)?;
    let bufs = AttentionBuffers {
        q: &q,
        k: &k,
        v: &v,
        lam: Some(&lam),
        out: &out,
    };
    let plan = attention::plan(&cfg, &call, Kernel::Auto);
    let t = time_call(gpu, &mut op, &call, &bufs, b.repeats.max(1))?;

    // Work actually done: each query row attends to the keys its causal mask lets it see.
    let visible: f64 = (0..n as u64)
        .map(|r| (call.past_len as u64 + r + 1).min(b.seq as u64) as f64)
        .sum();
    let flops = 4.0 * visible * cfg.q_heads() as f64 * b.head_dim as f64;
    let kv_bytes = 2.0 * sh.kv.0 as f64 * kv_dtype.bytes() as f64;
    let io_bytes = 4.0 * (sh.q.0 + sh.out.0 + sh.lam.0) as f64;
    Ok(Row {
        variant,
        kernel: format!("{:?}", plan.kernel).to_lowercase(),
        seconds: t.median_s,
        gb_s: (kv_bytes + io_bytes) / t.median_s / 1e9,
        tflop_s: flops / t.median_s / 1e12,
        timer: t.timer,
    })
}

pub fn run(cmd: &BenchCommand, opts: &GpuOptions) -> Result<()> {
    let BenchCommand::Attention(b) = cmd;
    let gpu = super::open_gpu(opts)?;
    let variants: Vec<(Mode, &'static str)> = match b.variant.as_str() {
        "diff" => vec![(Mode::Diff, "diff")],
        "standard" => vec![(Mode::Standard, "standard")],
        "both" => vec![(Mode::Diff, "diff"), (Mode::Standard, "standard")],
        other => anyhow::bail!("unknown variant `{other}` (expected diff, standard or both)"),
    };
    let rows: Vec<Row> = variants
        .iter()
        .map(|&(m, name)| bench_variant(&gpu, b, m, name))
        .collect::<Result<_>>()?;
    let adapter = gpu.describe();
    for r in &rows {
        if b.json {
            println!(
                "{}",
                serde_json::json!({
                    "bench": "attention", "mode": b.mode, "variant": r.variant, "kernel": r.kernel,
                    "heads": b.heads, "kv_heads": b.kv_heads, "head_dim": b.head_dim, "seq": b.seq,
                    "queries": b.queries.unwrap_or(if b.mode == "prefill" { b.seq } else { 1 }),
                    "kv_dtype": b.kv_dtype, "median_us": r.seconds * 1e6, "gb_s": r.gb_s,
                    "tflop_s": r.tflop_s, "timer": r.timer, "adapter": adapter,
                })
            );
        } else {
            println!(
                "{:<8} {:<6} {} h={} kv={} d={} S={} {}: {:>10.1} us  {:>8.1} GB/s  {:>7.3} TFLOP/s  ({})",
                r.variant,
                r.kernel,
                b.mode,
                b.heads,
                b.kv_heads,
                b.head_dim,
                b.seq,
                b.kv_dtype,
                r.seconds * 1e6,
                r.gb_s,
                r.tflop_s,
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
