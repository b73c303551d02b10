//! The GPU forward pass: weights in GPU buffers, a preallocated KV cache, and `prefill`/`step`
//! returning the last position's logits.
//!
//! Everything that does not change between calls is built once at load: buffers, pipelines, the
//! per-dispatch parameter uniforms and every bind group. What changes per call (token ids, the
//! number of tokens, the cache position) goes through one `ids` buffer and one `Step` uniform
//! written before each submit, so a decode step records one command buffer, submits once and
//! reads back only the logits.

use super::cache::KvCache;
use super::config::Config;
use super::weights::{HostWeights, WeightDtype};
use crate::attention::{
    AttentionBuffers, AttentionCall, AttentionConfig, AttentionOp, Kernel, KvDtype, Mode, grid_2d,
};
use crate::error::{Error, Result};
use crate::gpu::{Const, Gpu, ShaderSpec};
use std::sync::Arc;

/// How the engine is set up on the GPU.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Storage type of the KV cache (f16 halves its memory; arithmetic stays f32).
    pub kv_dtype: KvDtype,
    /// Context length to allocate the cache for; at most (and by default) max_position_embeddings.
    pub context: Option<u32>,
    /// Prompt tokens per forward chunk; bounds the activation buffers.
    pub prefill_chunk: u32,
    /// Lanes per output row in the decode matrix-vector kernel (1 to 64, a power of two);
    /// `None` picks by adapter: 16 on GPUs, 1 on CPU adapters.
    pub matvec_lanes: Option<u32>,
    /// Prefill with the tiled workgroup-memory kernel (`gemm`) rather than the barrier-free
    /// `gemm_direct`; `None` picks by adapter: tiled on GPUs, direct on CPU adapters.
    pub tiled_gemm: Option<bool>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            kv_dtype: KvDtype::F32,
            context: None,
            prefill_chunk: 128,
            matvec_lanes: None,
            tiled_gemm: None,
        }
    }
}

/// The per-call values every model shader reads (same layout as `Step` in the WGSL files).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StepUniform {
    n_tokens: u32,
    past_len: u32,
    pad0: u32,
    pad1: u32,
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
    /// A matmul with `n` outputs per row: matvec for one row, tiled gemm otherwise.
    Matmul {
        n: u32,
        last_only: bool,
        rows_per_group: u32,
        /// The many-row kernel is `gemm_direct` rather than the tiled `gemm`.
        direct: bool,
    },
}

/// One prepared dispatch. `gemm` holds the tiled variant of a matmul (its own pipeline, hence
/// its own bind group: auto-derived layouts are not shared between pipelines).
struct Op {
    label: &'static str,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind: wgpu::BindGroup,
    gemm: Option<(Arc<wgpu::ComputePipeline>, wgpu::BindGroup)>,
    grid: Grid,
}

impl Op {
    fn record(&self, gpu: &Gpu, pass: &mut wgpu::ComputePass, n_tokens: u32) -> Result<()> {
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
                direct,
            } => {
                let rows = if last_only { 1 } else { n_tokens };
                match &self.gemm {
                    Some((p, b)) if rows > 1 && direct => {
                        let g = grid_2d((rows.div_ceil(4) * n.div_ceil(4)).div_ceil(64));
                        (p, b, [g[0], g[1], 1])
                    }
                    Some((p, b)) if rows > 1 => (p, b, [n.div_ceil(64), rows.div_ceil(64), 1]),
                    _ => {
                        let g = grid_2d(n.div_ceil(rows_per_group));
                        (&self.pipeline, &self.bind, [g[0], g[1], 1])
                    }
                }
            }
        };
        gpu.check_dispatch(self.label, groups)?;
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        Ok(())
    }
}

/// Per-layer dispatches before and after attention.
struct LayerOps {
    pre: Vec<Op>,
    post: Vec<Op>,
}

/// Activation buffers, sized for one prefill chunk.
struct Activations {
    x: wgpu::Buffer,
    a: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    lam: Option<wgpu::Buffer>,
    att: wgpu::Buffer,
    gate: wgpu::Buffer,
    up: wgpu::Buffer,
    last: wgpu::Buffer,
    logits: wgpu::Buffer,
}

/// A loaded model on the GPU, with its KV cache.
pub struct Engine {
    gpu: Arc<Gpu>,
    cfg: Config,
    opts: EngineOptions,
    context: u32,
    past_len: u32,
    step_uniform: wgpu::Buffer,
    ids: wgpu::Buffer,
    act: Activations,
    cache: KvCache,
    embed: Op,
    layers: Vec<LayerOps>,
    head: Vec<Op>,
    attention: AttentionOp,
    staging: wgpu::Buffer,
    // Weight and parameter buffers: held so that they outlive the bind groups that use them.
    _keep: Vec<wgpu::Buffer>,
}

fn storage_f32(gpu: &Gpu, label: &str, values: usize) -> Result<wgpu::Buffer> {
    gpu.storage(label, values as u64 * 4)
}

/// A 16-byte parameter block.
fn params4(gpu: &Gpu, label: &str, v: [u32; 4]) -> wgpu::Buffer {
    gpu.uniform(label, &v)
}

impl Engine {
    /// Uploads the weights and builds the whole forward pass. `progress(done, total)` reports
    /// weight bytes uploaded.
    pub fn new(
        gpu: Arc<Gpu>,
        cfg: &Config,
        weights: &HostWeights,
        opts: EngineOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        cfg.validate()?;
        weights.check(cfg)?;
        if opts.prefill_chunk == 0 {
            return Err(Error::config("prefill_chunk must be at least 1"));
        }
        let g = gpu.as_ref();
        let context = opts
            .context
            .unwrap_or(cfg.max_position_embeddings)
            .clamp(1, cfg.max_position_embeddings);
        let chunk = opts.prefill_chunk.min(context) as usize;
        let d_model = cfg.hidden_size as usize;
        let hd = cfg.head_dim as usize;
        let q_width = cfg.q_heads() as usize * hd;
        let kv_width = cfg.num_key_value_heads as usize * hd;
        let heads = cfg.num_attention_heads as usize;
        let inter = cfg.intermediate_size as usize;
        let vocab = cfg.vocab_size as usize;
        let diff = cfg.mode() == Mode::Diff;
        // CPU adapters (lavapipe, SwiftShader) pay dearly for barriers: they get one lane per
        // row and the barrier-free many-row kernel (measured: 2.8x faster decode on lavapipe).
        let cpu = g.info.device_type == wgpu::DeviceType::Cpu;
        let lanes = match opts.matvec_lanes {
            Some(l) if l.is_power_of_two() && l <= 64 => l,
            Some(l) => {
                return Err(Error::config(format!(
                    "matvec_lanes = {l} (expected a power of two from 1 to 64)"
                )));
            }
            None if cpu => 1,
            None => 16,
        };
        let tiled = opts.tiled_gemm.unwrap_or(!cpu);

        // Weights first: when a model is too large, the message names the tensor at fault.
        for name in weights.names() {
            let (_, raw) = weights.raw(name)?;
            g.check_binding(name, raw.len() as u64)?;
        }
        let total = weights.total_bytes();
        let mut done = 0u64;
        progress(0, total);
        let mut keep = Vec::new();

        let step_uniform = g.uniform(
            "step",
            &StepUniform {
                n_tokens: 0,
                past_len: 0,
                pad0: 0,
                pad1: 0,
            },
        );
        let ids = g.storage("token ids", chunk as u64 * 4)?;
        let act = Activations {
            x: storage_f32(g, "hidden state", chunk * d_model)?,
            a: storage_f32(g, "normed hidden state", chunk * d_model)?,
            q: storage_f32(g, "queries", chunk * q_width)?,
            k: storage_f32(g, "keys", chunk * kv_width)?,
            v: storage_f32(g, "values", chunk * kv_width)?,
            lam: if diff {
                Some(storage_f32(g, "lambda logits", chunk * heads)?)
            } else {
                None
            },
            att: storage_f32(g, "attention output", chunk * heads * hd)?,
            gate: storage_f32(g, "mlp gate", chunk * inter)?,
            up: storage_f32(g, "mlp up", chunk * inter)?,
            last: storage_f32(g, "final norm", d_model)?,
            logits: storage_f32(g, "logits", vocab)?,
        };
        let cache = KvCache::new(g, cfg, context, opts.kv_dtype)?;

        // RoPE (cos, sin) per position and pair, in float64, rounded once.
        let half = hd / 2;
        let mut rope = Vec::with_capacity(context as usize * half * 2);
        for pos in 0..context as usize {
            for i in 0..half {
                let inv_freq = cfg.rope_theta.powf(-2.0 * i as f64 / hd as f64);
                let angle = pos as f64 * inv_freq;
                rope.push(angle.cos() as f32);
                rope.push(angle.sin() as f32);
            }
        }
        let rope_table = g.storage_init("rope table", bytemuck::cast_slice(&rope))?;

        let mut upload = |name: &str| -> Result<(wgpu::Buffer, WeightDtype)> {
            let (info, raw) = weights.raw(name)?;
            let buf = g.storage_init(name, raw)?;
            done += raw.len() as u64;
            progress(done, total);
            Ok((buf, info.dtype))
        };
        let upload_f32 = |name: &str, g: &Gpu| -> Result<wgpu::Buffer> {
            let v = weights.to_f32(name)?;
            g.storage_init(name, bytemuck::cast_slice(&v))
        };

        let su = &step_uniform;
        let elementwise = |name: &'static str,
                           consts: Vec<(&'static str, Const)>,
                           params: &wgpu::Buffer,
                           bufs: &[&wgpu::Buffer],
                           per_token: u32|
         -> Result<Op> {
            let mut spec = ShaderSpec::new(name);
            spec.consts = consts;
            let pipeline = g.pipeline(&spec)?;
            let mut all = vec![su, params];
            all.extend_from_slice(bufs);
            let bind = g.bind(&pipeline, &all);
            Ok(Op {
                label: name,
                pipeline,
                bind,
                gemm: None,
                grid: Grid::Elements { per_token },
            })
        };
        let matmul = |label: &'static str,
                      w: &wgpu::Buffer,
                      dtype: WeightDtype,
                      (k, n): (usize, usize),
                      x: &wgpu::Buffer,
                      y: &wgpu::Buffer,
                      accumulate: bool,
                      last_only: bool,
                      keep: &mut Vec<wgpu::Buffer>|
         -> Result<Op> {
            let params = params4(
                g,
                label,
                [k as u32, n as u32, accumulate as u32, last_only as u32],
            );
            let spec = ShaderSpec::new("matmul")
                .with("WEIGHT_DTYPE", Const::U32(dtype.shader_code()))
                .with("LANES", Const::U32(lanes));
            let mv = g.pipeline(&spec.clone().entry("matvec"))?;
            let bind = g.bind(&mv, &[su, &params, x, w, y]);
            let gemm = if last_only {
                None
            } else {
                let p = g.pipeline(&spec.entry(if tiled { "gemm" } else { "gemm_direct" }))?;
                let b = g.bind(&p, &[su, &params, x, w, y]);
                Some((p, b))
            };
            keep.push(params);
            Ok(Op {
                label,
                pipeline: mv,
                bind,
                gemm,
                grid: Grid::Matmul {
                    n: n as u32,
                    last_only,
                    rows_per_group: 64 / lanes,
                    direct: !tiled,
                },
            })
        };
        let rmsnorm = |w: &wgpu::Buffer,
                       x: &wgpu::Buffer,
                       out: &wgpu::Buffer,
                       last_only: bool,
                       keep: &mut Vec<wgpu::Buffer>|
         -> Result<Op> {
            let params = params4(
                g,
                "rmsnorm",
                [
                    d_model as u32,
                    (cfg.rms_norm_eps as f32).to_bits(),
                    last_only as u32,
                    0,
                ],
            );
            let pipeline = g.pipeline(&ShaderSpec::new("rmsnorm"))?;
            let bind = g.bind(&pipeline, &[su, &params, x, w, out]);
            keep.push(params);
            Ok(Op {
                label: "rmsnorm",
                pipeline,
                bind,
                gemm: None,
                grid: if last_only { Grid::Single } else { Grid::Rows },
            })
        };

        let (embed_buf, embed_dtype) = upload("model.embed_tokens.weight")?;
        let embed_params = params4(g, "embed", [d_model as u32, 0, 0, 0]);
        let embed = elementwise(
            "embed",
            vec![("WEIGHT_DTYPE", Const::U32(embed_dtype.shader_code()))],
            &embed_params,
            &[&ids, &embed_buf, &act.x],
            d_model as u32,
        )?;
        keep.push(embed_params);

        let rope_q = params4(g, "rope q", [cfg.q_heads(), half as u32, 0, 0]);
        let rope_k = params4(g, "rope k", [cfg.num_key_value_heads, half as u32, 0, 0]);
        let kv_params = params4(g, "kv append", [kv_width as u32, 0, 0, 0]);
        let swiglu_params = params4(g, "swiglu", [inter as u32, 0, 0, 0]);
        let kv_f16 = vec![("KV_F16", Const::Bool(opts.kv_dtype == KvDtype::F16))];
        let kv_items = match opts.kv_dtype {
            KvDtype::F16 => kv_width as u32 / 2,
            KvDtype::F32 => kv_width as u32,
        };

        let mut layers = Vec::new();
        for l in 0..cfg.num_hidden_layers as usize {
            let p = format!("model.layers.{l}");
            let ln_in = upload_f32(&format!("{p}.input_layernorm.weight"), g)?;
            let ln_post = upload_f32(&format!("{p}.post_attention_layernorm.weight"), g)?;
            let (wq, tq) = upload(&format!("{p}.self_attn.q_proj.weight"))?;
            let (wk, tk) = upload(&format!("{p}.self_attn.k_proj.weight"))?;
            let (wv, tv) = upload(&format!("{p}.self_attn.v_proj.weight"))?;
            let (wo, to) = upload(&format!("{p}.self_attn.o_proj.weight"))?;
            let lam = if diff {
                Some(upload(&format!("{p}.self_attn.lambda_proj.weight"))?)
            } else {
                None
            };
            let (wg, tg) = upload(&format!("{p}.mlp.gate_proj.weight"))?;
            let (wu, tu) = upload(&format!("{p}.mlp.up_proj.weight"))?;
            let (wd, td) = upload(&format!("{p}.mlp.down_proj.weight"))?;
            let (kc, vc) = cache.layer(l);

            let mut pre = vec![rmsnorm(&ln_in, &act.x, &act.a, false, &mut keep)?];
            pre.push(matmul(
                "q_proj",
                &wq,
                tq,
                (d_model, q_width),
                &act.a,
                &act.q,
                false,
                false,
                &mut keep,
            )?);
            pre.push(matmul(
                "k_proj",
                &wk,
                tk,
                (d_model, kv_width),
                &act.a,
                &act.k,
                false,
                false,
                &mut keep,
            )?);
            pre.push(matmul(
                "v_proj",
                &wv,
                tv,
                (d_model, kv_width),
                &act.a,
                &act.v,
                false,
                false,
                &mut keep,
            )?);
            if let (Some((wl, tl)), Some(lam_buf)) = (&lam, &act.lam) {
                pre.push(matmul(
                    "lambda_proj",
                    wl,
                    *tl,
                    (d_model, heads),
                    &act.a,
                    lam_buf,
                    false,
                    false,
                    &mut keep,
                )?);
            }
            pre.push(elementwise(
                "rope",
                vec![],
                &rope_q,
                &[&rope_table, &act.q],
                cfg.q_heads() * half as u32,
            )?);
            pre.push(elementwise(
                "rope",
                vec![],
                &rope_k,
                &[&rope_table, &act.k],
                cfg.num_key_value_heads * half as u32,
            )?);
            pre.push(elementwise(
                "kv_append",
                kv_f16.clone(),
                &kv_params,
                &[&act.k, kc],
                kv_items,
            )?);
            pre.push(elementwise(
                "kv_append",
                kv_f16.clone(),
                &kv_params,
                &[&act.v, vc],
                kv_items,
            )?);

            let mut post = vec![matmul(
                "o_proj",
                &wo,
                to,
                (heads * hd, d_model),
                &act.att,
                &act.x,
                true,
                false,
                &mut keep,
            )?];
            post.push(rmsnorm(&ln_post, &act.x, &act.a, false, &mut keep)?);
            post.push(matmul(
                "gate_proj",
                &wg,
                tg,
                (d_model, inter),
                &act.a,
                &act.gate,
                false,
                false,
                &mut keep,
            )?);
            post.push(matmul(
                "up_proj",
                &wu,
                tu,
                (d_model, inter),
                &act.a,
                &act.up,
                false,
                false,
                &mut keep,
            )?);
            post.push(elementwise(
                "swiglu",
                vec![],
                &swiglu_params,
                &[&act.gate, &act.up],
                inter as u32,
            )?);
            post.push(matmul(
                "down_proj",
                &wd,
                td,
                (inter, d_model),
                &act.gate,
                &act.x,
                true,
                false,
                &mut keep,
            )?);
            layers.push(LayerOps { pre, post });
            keep.extend([ln_in, ln_post, wq, wk, wv, wo, wg, wu, wd]);
            keep.extend(lam.map(|(b, _)| b));
        }

        let norm = upload_f32("model.norm.weight", g)?;
        let mut head = vec![rmsnorm(&norm, &act.x, &act.last, true, &mut keep)?];
        if cfg.tie_word_embeddings {
            head.push(matmul(
                "lm_head",
                &embed_buf,
                embed_dtype,
                (d_model, vocab),
                &act.last,
                &act.logits,
                false,
                true,
                &mut keep,
            )?);
        } else {
            let (wh, th) = upload("lm_head.weight")?;
            head.push(matmul(
                "lm_head",
                &wh,
                th,
                (d_model, vocab),
                &act.last,
                &act.logits,
                false,
                true,
                &mut keep,
            )?);
            keep.push(wh);
        }
        keep.extend([
            norm,
            embed_buf,
            rope_table,
            rope_q,
            rope_k,
            kv_params,
            swiglu_params,
        ]);

        let mut att_cfg = AttentionConfig::new(
            cfg.mode(),
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        att_cfg.kv_dtype = opts.kv_dtype;
        let attention = AttentionOp::new(g, att_cfg)?;
        let staging = g.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("logits read-back"),
            size: (vocab as u64 * 4).next_multiple_of(16),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        g.take_error("model load")?;
        Ok(Self {
            cfg: cfg.clone(),
            opts,
            context,
            past_len: 0,
            step_uniform,
            ids,
            act,
            cache,
            embed,
            layers,
            head,
            attention,
            staging,
            _keep: keep,
            gpu,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Tokens the cache holds (the next token's position).
    pub fn position(&self) -> u32 {
        self.past_len
    }

    /// Positions the cache was allocated for.
    pub fn context(&self) -> u32 {
        self.context
    }

    /// Empties the cache; the next call starts at position 0. Old entries need no clearing:
    /// attention never reads past the current position.
    pub fn reset(&mut self) {
        self.past_len = 0;
    }

    /// Drops cached positions from `len` on (e.g. to retry from a shorter prefix).
    pub fn truncate(&mut self, len: u32) {
        self.past_len = self.past_len.min(len);
    }

    /// Runs `ids` through the model at the cache's position, in chunks, and returns the logits
    /// of the last one. Fails without touching the cache when the tokens do not fit the context.
    pub async fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::config("prefill needs at least one token"));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t >= self.cfg.vocab_size) {
            return Err(Error::Model(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.cfg.vocab_size
            )));
        }
        let needed = self.past_len as u64 + ids.len() as u64;
        if needed > self.context as u64 {
            return Err(Error::Model(format!(
                "{} tokens at position {} exceed the context of {} positions",
                ids.len(),
                self.past_len,
                self.context
            )));
        }
        let chunk = self.opts.prefill_chunk.min(self.context) as usize;
        let n_chunks = ids.len().div_ceil(chunk);
        for (i, part) in ids.chunks(chunk).enumerate() {
            let last = i + 1 == n_chunks;
            // A failed chunk does not advance the position, so the chunks before it stay usable.
            self.forward_chunk(part, last)?;
        }
        self.read_logits().await
    }

    /// Feeds one token; returns the logits for the next.
    pub async fn step(&mut self, id: u32) -> Result<Vec<f32>> {
        self.prefill(&[id]).await
    }

    fn forward_chunk(&mut self, ids: &[u32], logits: bool) -> Result<()> {
        let gpu = self.gpu.clone();
        let n = ids.len() as u32;
        let past = self.past_len;
        gpu.queue
            .write_buffer(&self.ids, 0, bytemuck::cast_slice(ids));
        gpu.queue.write_buffer(
            &self.step_uniform,
            0,
            bytemuck::bytes_of(&StepUniform {
                n_tokens: n,
                past_len: past,
                pad0: 0,
                pad1: 0,
            }),
        );
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        let call = AttentionCall {
            n_queries: n,
            seq_len: past + n,
            causal: true,
            past_len: past,
        };
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.embed.record(&gpu, &mut pass, n)?;
        }
        for (l, layer) in self.layers.iter().enumerate() {
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for op in &layer.pre {
                    op.record(&gpu, &mut pass, n)?;
                }
            }
            let (k, v) = self.cache.layer(l);
            self.attention.encode(
                &gpu,
                &mut enc,
                &call,
                Kernel::Auto,
                &AttentionBuffers {
                    q: &self.act.q,
                    k,
                    v,
                    lam: self.act.lam.as_ref(),
                    out: &self.act.att,
                },
                None,
            )?;
            let mut pass = enc.begin_compute_pass(&Default::default());
            for op in &layer.post {
                op.record(&gpu, &mut pass, n)?;
            }
        }
        if logits {
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for op in &self.head {
                    op.record(&gpu, &mut pass, n)?;
                }
            }
            enc.copy_buffer_to_buffer(&self.act.logits, 0, &self.staging, 0, self.staging.size());
        }
        gpu.queue.submit([enc.finish()]);
        gpu.take_error("forward pass")?;
        self.past_len += n;
        Ok(())
    }

    async fn read_logits(&self) -> Result<Vec<f32>> {
        let gpu = &self.gpu;
        let (send, recv) = crate::gpu::readback::channel();
        self.staging.slice(..).map_async(wgpu::MapMode::Read, send);
        gpu.wait()?;
        recv.await.map_err(|e| Error::Readback(e.to_string()))?;
        let logits: Vec<f32> = {
            let view = self
                .staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Readback(e.to_string()))?;
            bytemuck::cast_slice(&view[..self.cfg.vocab_size as usize * 4]).to_vec()
        };
        self.staging.unmap();
        gpu.take_error("logits read-back")?;
        // A NaN or infinite logit is an error, never a token.
        Error::check_finite("the logits", &logits)?;
        Ok(logits)
    }

    /// Blocking [`Engine::prefill`] for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn prefill_blocking(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        pollster::block_on(self.prefill(ids))
    }

    /// Blocking [`Engine::step`] for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step_blocking(&mut self, id: u32) -> Result<Vec<f32>> {
        pollster::block_on(self.step(id))
    }
}
