//! The GPU forward pass: load (weights uploaded, the plan built once), then steps that only write
//! their parameter slots, record and submit.
//!
//! Three ways to run the model:
//! - [`Engine::prefill`] / [`Engine::step`] return the last position's logits (the CPU sampler,
//!   attention maps, model checks);
//! - [`Engine::prefill_pick`] runs a prompt and picks the next token on the GPU;
//! - [`Engine::decode_pick`] runs up to [`MAX_STEPS`] decode steps in one submission, each
//!   step's token chosen on the GPU and fed to the next without a round trip; only the ids (and
//!   their log-probabilities) come back.
//!
//! A submission is one compute pass: each step has two slots of one uniform arena (its `Step`
//! block and its attention parameters), bound with dynamic offsets.

use super::config::Config;
use super::plan::{
    self, ALTERNATIVES_AT, Buffers, GreedyParams, MAX_PENALTY_WINDOW, MAX_STEPS, Pick, Picking,
    Plan, READBACK_BYTES, SAMPLED_BYTES, SampleParams, TopParams, Tuning,
};
use super::weights::HostWeights;
use crate::attention::{AttentionCall, Kernel, KvDtype};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::readback::map_read;
use crate::sample::{Alternative, MAX_TOP_LOGPROBS, SamplingParams};
use std::sync::Arc;

/// How the engine is set up on the GPU.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Storage type of the KV cache (f16 halves its memory; arithmetic stays f32).
    pub kv_dtype: KvDtype,
    /// Context length to allocate the cache for; at most (and by default) max_position_embeddings.
    pub context: Option<u32>,
    /// Prompt tokens per forward chunk; bounds the activation buffers. 512 by default: fewer,
    /// larger products keep a big GPU busy (on the H200 a 454-token prompt of the shipped model
    /// took 3.5 ms in one chunk, 6.2 ms in chunks of 128).
    pub prefill_chunk: u32,
    /// Lanes per output row in the decode matrix-vector kernel (1 to 64, a power of two);
    /// `None` picks by adapter: 16 on GPUs, 1 on CPU adapters.
    pub matvec_lanes: Option<u32>,
    /// With one lane per row (CPU adapters): output rows per invocation of the barrier-free
    /// decode product (`matvec_serial`, 1 to 8), so that each load of the activations serves
    /// several rows; `None` picks 4.
    pub matvec_rows: Option<u32>,
    /// Prefill with the token-blocked kernel (`gemm`: matvec's layout, each weight load serving
    /// 8 tokens) rather than the barrier-free `gemm_direct`; `None` picks by adapter: blocked on
    /// GPUs, direct on CPU adapters.
    pub tiled_gemm: Option<bool>,
    /// Prompt products of f16 weights on cooperative matrices (tensor cores; activations rounded
    /// to f16, sums in f32). `None` turns them on where the adapter has them (faster on the H200
    /// with the default prompt chunk; see docs/BENCHMARKS.md); `Some(true)` on an adapter
    /// without them is an error.
    pub coop_gemm: Option<bool>,
    /// Fold each RMSNorm into the one-token product that reads it (the decode step's q/k/v/lambda
    /// and gate/up products, and the LM head): one dispatch fewer per norm, the sum of squares
    /// gathered beside the products. `None` folds on GPUs, not on CPU adapters: there the sum of
    /// squares is arithmetic the CPU pays for in every invocation (lavapipe, shipped model:
    /// 66-68 tok/s folded against 72-76 separate), while a dispatch costs little.
    pub fold_norm: Option<bool>,
    /// Apply SwiGLU inside the decode step's gate/up product (its weight rows are uploaded as
    /// interleaved gate/up pairs): one dispatch fewer per layer. `None` fuses wherever the pairs
    /// fit the kernel (at most 32 lanes per row, or an even `matvec_rows`).
    pub fuse_swiglu: Option<bool>,
    /// Decode attention with the barrier-free serial kernel where no tensor-core one runs.
    /// `None` picks by adapter: serial on CPU adapters, where each barrier is a context switch;
    /// `Some(false)` there runs what a GPU runs (the subgroup kernel for f16 K/V where the
    /// adapter's subgroups take the layer, else the portable one).
    pub serial_attention: Option<bool>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            kv_dtype: KvDtype::F32,
            context: None,
            prefill_chunk: 512,
            matvec_lanes: None,
            matvec_rows: None,
            tiled_gemm: None,
            coop_gemm: None,
            fold_norm: None,
            fuse_swiglu: None,
            serial_attention: None,
        }
    }
}

impl EngineOptions {
    /// The kernel choices these options make on an adapter.
    fn tuning(&self, gpu: &Gpu) -> Result<Tuning> {
        // CPU adapters (lavapipe, SwiftShader) pay dearly for barriers: they get one lane per
        // row and the barrier-free many-row kernel (measured: 2.8x faster decode on lavapipe).
        let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
        let lanes = match self.matvec_lanes {
            Some(l) if l.is_power_of_two() && l <= 64 => l,
            Some(l) => {
                return Err(Error::config(format!(
                    "matvec_lanes = {l} (expected a power of two from 1 to 64)"
                )));
            }
            None if cpu => 1,
            None => 16,
        };
        let serial_rows = match self.matvec_rows {
            Some(r) if (1..=8).contains(&r) => r,
            Some(r) => {
                return Err(Error::config(format!(
                    "matvec_rows = {r} (expected 1 to 8)"
                )));
            }
            None => 4,
        };
        let coop_missing = super::plan::coop_gemm_unavailable(gpu);
        let coop_gemm = match (self.coop_gemm, coop_missing) {
            (Some(true), Some(why)) => {
                return Err(Error::config(format!(
                    "coop_gemm requested, but the adapter cannot run it: {why}"
                )));
            }
            (Some(on), _) => on,
            // On where the adapter has it: with prompt chunks of 512 tokens it beat the
            // token-blocked SIMT kernel on the H200 (454-token prompt of the shipped model 3.05
            // against 3.50 ms; SmolLM2's shape 18.3 against 25.1 ms); with chunks of 128 it lost.
            (None, missing) => missing.is_none(),
        };
        Ok(Tuning {
            lanes,
            serial_rows,
            // A tree of 16 needs 4 barrier rounds where 256 need 8, each a context switch per
            // lane group on a CPU adapter.
            sample_wg: if cpu { 16 } else { 256 },
            tiled: self.tiled_gemm.unwrap_or(!cpu),
            coop_gemm,
            fold_norm: self.fold_norm.unwrap_or(!cpu),
            fuse_swiglu: self.fuse_swiglu.unwrap_or(true),
            serial_attention: self.serial_attention,
        })
    }
}

/// A token chosen on the GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub id: u32,
    /// Its log-probability under the model's distribution (before any sampling transform).
    pub logprob: f32,
    /// The most likely tokens of the step under the same distribution, most likely first, as
    /// many as [`Engine::set_top_logprobs`] asked for (none by default).
    pub top: Vec<Alternative>,
}

/// What a submission ends with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// The last position's logits, copied for the host.
    Logits,
    /// A token chosen on the GPU after every step (by the engine's [`Pick`]).
    Pick,
}

/// A decode submission started and not yet read back.
struct InFlight {
    steps: u32,
    /// Alternatives per step it lists.
    alternatives: u32,
    readback: usize,
    submission: wgpu::SubmissionIndex,
}

/// A loaded model on the GPU, with its KV cache.
pub struct Engine {
    gpu: Arc<Gpu>,
    cfg: Config,
    opts: EngineOptions,
    context: u32,
    past_len: u32,
    bufs: Buffers,
    plan: Plan,
    last_gpu_s: Option<f64>,
    /// Started decode submissions, oldest first (at most two).
    in_flight: std::collections::VecDeque<InFlight>,
    /// The read-back buffer the next submission copies to.
    next_readback: usize,
    /// How tokens are picked on the GPU.
    pick: Pick,
    /// Alternatives each picking step lists (0: none).
    alternatives: u32,
    /// The logit bias buffer holds a bias (else zeros).
    bias_set: bool,
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
        let tuning = opts.tuning(g)?;
        let context = opts
            .context
            .unwrap_or(cfg.max_position_embeddings)
            .clamp(1, cfg.max_position_embeddings);
        let chunk = opts.prefill_chunk.min(context);
        let gpu_weights = plan::upload_weights(g, cfg, weights, progress)?;
        let bufs = Buffers::new(g, cfg, context, chunk, opts.kv_dtype)?;
        let plan = Plan::new(g, cfg, tuning, gpu_weights, &bufs)?;
        g.take_error("model load")?;
        Ok(Self {
            cfg: cfg.clone(),
            opts,
            context,
            past_len: 0,
            bufs,
            plan,
            last_gpu_s: None,
            in_flight: Default::default(),
            next_readback: 0,
            pick: Pick::Greedy,
            alternatives: 0,
            bias_set: false,
            gpu,
        })
    }

    /// How many storage bindings the embedding table and the output head span: (1, 1) unless a
    /// tensor exceeds the adapter's binding limit and is split by rows (a gather or a product
    /// dispatch per part).
    pub fn row_parts(&self) -> (usize, usize) {
        self.plan.row_parts()
    }

    /// Bytes of the weight buffers on the GPU: the file's tensors as stored (block types stay
    /// blocks), norms widened to f32, and where a fused gate/up pair mixes types, that pair in
    /// f32.
    pub fn weight_bytes(&self) -> u64 {
        self.plan.weight_bytes()
    }

    /// The attention kernels the layers' op can run here, fastest first (what `Auto` picks
    /// from; the op's own choice on CPU adapters aside, see `EngineOptions::serial_attention`).
    pub fn attention_paths(&self) -> Vec<Kernel> {
        self.plan.attention.paths()
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

    /// GPU time of the last submission (from timestamps around its compute pass), where the
    /// adapter has timestamps. After [`Engine::prefill`] with several submissions, the last one's.
    pub fn last_gpu_seconds(&self) -> Option<f64> {
        self.last_gpu_s
    }

    /// Bytes of GPU memory the KV cache holds.
    pub fn cache_bytes(&self) -> u64 {
        self.bufs.cache.bytes()
    }

    /// Empties the cache; the next call starts at position 0. Old entries need no clearing:
    /// attention never reads past the current position. Started decode submissions are forgotten.
    pub fn reset(&mut self) {
        self.forget_started();
        self.past_len = 0;
    }

    /// Drops cached positions from `len` on (e.g. to retry from a shorter prefix, or to drop tokens
    /// decoded ahead). Started decode submissions are forgotten.
    pub fn truncate(&mut self, len: u32) {
        self.forget_started();
        self.past_len = self.past_len.min(len);
    }

    /// How [`Engine::prefill_pick`] and the decode submissions pick tokens: `None` (the default)
    /// or plain-greedy settings take the most likely token; other settings draw from the CPU
    /// sampler's distribution with a random number keyed by (seed, position), so a seeded run does
    /// not depend on how steps are grouped into submissions. Settings the GPU sampler cannot take
    /// (see [`SamplingParams::runs_on_gpu`]) are refused.
    pub fn set_gpu_sampling(&mut self, params: Option<&SamplingParams>) -> Result<()> {
        let Some(p) = params.filter(|p| !p.is_plain_greedy()) else {
            self.set_logit_bias(None);
            self.set_greedy_penalty(0, 1.0);
            self.pick = Pick::Greedy;
            return Ok(());
        };
        p.check(self.cfg.vocab_size)?;
        if !p.runs_on_gpu() {
            return Err(Error::config(format!(
                "these sampling settings run on the CPU only (temperature {}, top_p {}, repetition \
                 penalty {} over {} tokens; the GPU takes windows of 1 to {MAX_PENALTY_WINDOW})",
                p.temperature, p.top_p, p.repeat_penalty, p.repeat_last_n
            )));
        }
        let penalise = p.repeat_penalty != 1.0;
        let biased = self.set_logit_bias(p.dense_bias(self.cfg.vocab_size)) as u32;
        if p.is_greedy() {
            // Argmax of the penalised logits: the greedy kernel, with its penalty window.
            self.set_greedy_penalty(p.repeat_last_n as u32, p.repeat_penalty);
            self.pick = Pick::Greedy;
            return Ok(());
        }
        let block = SampleParams {
            vocab: self.cfg.vocab_size,
            top_k: p.top_k.min(self.cfg.vocab_size as usize) as u32,
            last_n: if penalise { p.repeat_last_n as u32 } else { 0 },
            seed_lo: p.seed as u32,
            seed_hi: (p.seed >> 32) as u32,
            temperature: p.temperature,
            top_p: p.top_p,
            penalty: if penalise { p.repeat_penalty } else { 1.0 },
            biased,
            ..Default::default()
        };
        self.gpu
            .queue
            .write_buffer(&self.plan.sample_params, 0, bytemuck::bytes_of(&block));
        self.pick = Pick::Sample;
        Ok(())
    }

    /// The greedy kernel's repetition penalty: `penalty` over the last `last_n` tokens (0 or a
    /// penalty of 1: none), with the logit bias where one is set.
    fn set_greedy_penalty(&mut self, last_n: u32, penalty: f32) {
        let block = GreedyParams {
            vocab: self.cfg.vocab_size,
            last_n,
            penalty,
            biased: self.bias_set as u32,
        };
        self.gpu
            .queue
            .write_buffer(&self.plan.greedy_params, 0, bytemuck::bytes_of(&block));
    }

    /// Writes the dense logit bias (one value per vocabulary entry), or clears a bias left from
    /// earlier settings; returns whether one is set. The buffer is written only when it changes
    /// from or to none, or between biases, never per step.
    fn set_logit_bias(&mut self, dense: Option<Vec<f32>>) -> bool {
        match dense {
            Some(values) => {
                self.gpu.queue.write_buffer(
                    &self.bufs.logit_bias,
                    0,
                    bytemuck::cast_slice(&values),
                );
                self.bias_set = true;
            }
            None if self.bias_set => {
                let zeros = vec![0.0f32; self.cfg.vocab_size as usize];
                self.gpu
                    .queue
                    .write_buffer(&self.bufs.logit_bias, 0, bytemuck::cast_slice(&zeros));
                self.bias_set = false;
            }
            None => {}
        }
        self.bias_set
    }

    /// How many alternatives each token picked on the GPU lists ([`Sampled::top`]): the most
    /// likely tokens of its step with their log-probabilities, 0 (the default) to
    /// [`MAX_TOP_LOGPROBS`]. Asking costs one more small kernel per step and a larger read-back.
    pub fn set_top_logprobs(&mut self, n: usize) -> Result<()> {
        if n > MAX_TOP_LOGPROBS {
            return Err(Error::config(format!(
                "{n} alternatives per token asked for (at most {MAX_TOP_LOGPROBS})"
            )));
        }
        let block = TopParams {
            vocab: self.cfg.vocab_size,
            n: n as u32,
            ..Default::default()
        };
        self.gpu
            .queue
            .write_buffer(&self.plan.top_params, 0, bytemuck::bytes_of(&block));
        self.alternatives = n as u32;
        Ok(())
    }

    /// What the picking steps of a submission run after the head.
    fn picking(&self) -> Picking {
        Picking {
            pick: self.pick,
            alternatives: self.alternatives > 0,
        }
    }

    /// Decode steps started with [`Engine::decode_pick_start`] and not yet finished.
    pub fn started_steps(&self) -> u32 {
        self.in_flight.iter().map(|f| f.steps).sum()
    }

    /// Forgets started decode submissions without reading them (they still run; their cache
    /// positions stay counted until a reset or truncate).
    fn forget_started(&mut self) {
        self.in_flight.clear();
    }

    fn check_idle(&self) -> Result<()> {
        if self.in_flight.is_empty() {
            Ok(())
        } else {
            Err(Error::config(
                "finish (or truncate away) the started decode submissions first",
            ))
        }
    }

    fn check_tokens(&self, ids: &[u32], extra: u32) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::config("prefill needs at least one token"));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t >= self.cfg.vocab_size) {
            return Err(Error::Model(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.cfg.vocab_size
            )));
        }
        let needed = self.past_len as u64 + ids.len() as u64 + extra as u64;
        if needed > self.context as u64 {
            return Err(Error::Model(format!(
                "{} tokens at position {} exceed the context of {} positions",
                ids.len() as u64 + extra as u64,
                self.past_len,
                self.context
            )));
        }
        Ok(())
    }

    /// Runs `ids` through the model at the cache's position, in chunks, and returns the logits
    /// of the last one. Fails without touching the cache when the tokens do not fit the context.
    pub async fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.check_idle()?;
        self.check_tokens(ids, 0)?;
        let (_, readback) = self.run_prompt(ids, Tail::Logits)?;
        self.read_logits(readback).await
    }

    /// Feeds one token; returns the logits for the next.
    pub async fn step(&mut self, id: u32) -> Result<Vec<f32>> {
        self.prefill(&[id]).await
    }

    /// Runs `ids` like [`Engine::prefill`] and picks the most likely next token on the GPU (the
    /// lowest id on a tie); only the id and its log-probability are read back.
    pub async fn prefill_pick(&mut self, ids: &[u32]) -> Result<Sampled> {
        self.check_idle()?;
        self.check_tokens(ids, 0)?;
        let (slot, readback) = self.run_prompt(ids, Tail::Pick)?;
        let alternatives = self.alternatives;
        let mut out = self
            .read_sampled(readback, slot..slot + 1, alternatives, None)
            .await?;
        out.pop()
            .ok_or_else(|| Error::config("no token was picked (internal)"))
    }

    /// Feeds `first`, then each token the GPU picks (greedily) to the next step, `steps` times
    /// in one submission (1 to [`MAX_STEPS`]); returns the `steps` picked tokens. The cache then
    /// holds `first` and every picked token but the last (position + `steps`); to keep fewer,
    /// [`Engine::truncate`].
    pub async fn decode_pick(&mut self, first: u32, steps: u32) -> Result<Vec<Sampled>> {
        if !self.in_flight.is_empty() {
            return Err(Error::config(
                "decode_pick: finish the started decode submissions first",
            ));
        }
        self.decode_pick_start(Some(first), steps)?;
        self.decode_pick_finish().await
    }

    /// Starts `steps` greedy decode steps (1 to [`MAX_STEPS`]) in one submission without waiting
    /// for them. `first` is the token to feed; `None` feeds the last token the previous started
    /// submission picks, on the GPU, so that a second submission runs while the host reads the
    /// first's tokens ([`Engine::decode_pick_finish`]). At most two can be started at once.
    pub fn decode_pick_start(&mut self, first: Option<u32>, steps: u32) -> Result<()> {
        if !(1..=MAX_STEPS).contains(&steps) {
            return Err(Error::config(format!(
                "decode: {steps} steps (1 to {MAX_STEPS} per submission)"
            )));
        }
        if self.in_flight.len() >= 2 {
            return Err(Error::config("decode: two submissions are already started"));
        }
        let gpu = self.gpu.clone();
        match first {
            Some(id) => {
                self.check_tokens(&[id], steps - 1)?;
                gpu.queue
                    .write_buffer(&self.bufs.ids, 0, bytemuck::bytes_of(&id));
            }
            None if self.in_flight.is_empty() => {
                return Err(Error::config(
                    "decode: no started submission to take the first token from",
                ));
            }
            // The sampler of every step also leaves its token at ids[0]: the next input.
            None => self.check_tokens(&[0], steps - 1)?,
        }
        let past = self.past_len;
        let calls: Vec<(AttentionCall, u32)> =
            (0..steps).map(|i| (causal_call(past + i, 1), i)).collect();
        let (submission, readback) = self.submit(&calls, Tail::Pick)?;
        self.past_len += steps;
        self.in_flight.push_back(InFlight {
            steps,
            alternatives: self.alternatives,
            readback,
            submission,
        });
        Ok(())
    }

    /// Waits for the oldest started decode submission and returns its picked tokens.
    pub async fn decode_pick_finish(&mut self) -> Result<Vec<Sampled>> {
        let f = self
            .in_flight
            .pop_front()
            .ok_or_else(|| Error::config("decode: no started submission to finish"))?;
        self.read_sampled(f.readback, 0..f.steps, f.alternatives, Some(f.submission))
            .await
    }

    /// Times each stage of one decode step feeding `id` at the cache's position (the embedding,
    /// each layer's ops and attention, the head, the current picking kernel), each in its own
    /// compute pass between two GPU timestamps; returns (label, seconds) in order. The position
    /// does not advance: the step's cache entry is overwritten by the next real step. Needs an
    /// adapter with timestamps. The sum exceeds a real step's GPU time by the passes' own cost.
    pub async fn profile_step(&mut self, id: u32) -> Result<Vec<(&'static str, f64)>> {
        self.check_idle()?;
        self.check_tokens(&[id], 0)?;
        let gpu = self.gpu.clone();
        let stages = self.plan.profiled_stages(Some(self.picking())) as u32;
        let queries = gpu
            .timestamp_queries("profile timestamps", 2 * stages)
            .ok_or_else(|| {
                Error::Unsupported("profiling needs an adapter with timestamp queries".into())
            })?;
        let bytes = 16 * stages as u64;
        let resolve = gpu.buffer(
            "profile resolve",
            bytes,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        );
        let readback = gpu.readback_buffer("profile read-back", bytes);
        gpu.queue
            .write_buffer(&self.bufs.ids, 0, bytemuck::bytes_of(&id));
        let call = causal_call(self.past_len, 1);
        self.plan.set_slot(&mut self.bufs.arena, 0, &call, 0)?;
        self.bufs.arena.upload(&gpu, 2);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        let labels = self.plan.record_profiled(
            &gpu,
            &mut enc,
            &queries,
            &self.bufs.arena,
            0,
            &call,
            Some(self.picking()),
        )?;
        enc.resolve_query_set(&queries, 0..2 * stages, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &readback, 0, bytes);
        let index = gpu.queue.submit([enc.finish()]);
        gpu.take_error("profiled step")?;
        let words = map_read(&gpu, &readback, bytes, Some(index)).await?;
        let ticks: &[u64] = bytemuck::cast_slice(&words);
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        Ok(labels
            .into_iter()
            .zip(ticks.chunks(2))
            .map(|(l, t)| (l, t[1].saturating_sub(t[0]) as f64 * period))
            .collect())
    }

    /// Blocking [`Engine::profile_step`] for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile_step_blocking(&mut self, id: u32) -> Result<Vec<(&'static str, f64)>> {
        pollster::block_on(self.profile_step(id))
    }

    /// Records the prompt in submissions of up to [`MAX_STEPS`] chunks; the last ends with `tail`.
    /// Returns the arena slot of the last chunk and the read-back buffer of its submission.
    fn run_prompt(&mut self, ids: &[u32], tail: Tail) -> Result<(u32, usize)> {
        let chunk = self.bufs.chunk as usize;
        let per_submit = chunk * MAX_STEPS as usize;
        let n_submits = ids.len().div_ceil(per_submit);
        let (mut slot, mut readback) = (0, 0);
        for (s, part) in ids.chunks(per_submit).enumerate() {
            let gpu = self.gpu.clone();
            gpu.queue
                .write_buffer(&self.bufs.ids, 0, bytemuck::cast_slice(part));
            let past = self.past_len;
            // The penalty window of the GPU sampler reads the prompt from here.
            gpu.queue.write_buffer(
                &self.bufs.history,
                past as u64 * 4,
                bytemuck::cast_slice(part),
            );
            let calls: Vec<(AttentionCall, u32)> = part
                .chunks(chunk)
                .enumerate()
                .map(|(c, piece)| {
                    let at = (c * chunk) as u32;
                    (causal_call(past + at, piece.len() as u32), at)
                })
                .collect();
            let last = s + 1 == n_submits;
            // Earlier submissions only fill the cache; the last one also makes what was asked.
            readback = self
                .submit(&calls, if last { tail } else { Tail::Logits })?
                .1;
            // A failed submission does not advance the position: the chunks before it stay usable.
            self.past_len += part.len() as u32;
            slot = calls.len() as u32 - 1;
        }
        Ok((slot, readback))
    }

    /// Records forward chunks (call, ids offset) into one compute pass and submits it. With
    /// `Tail::Logits` only the last chunk runs the head; with `Tail::Pick` every chunk that ends
    /// a step picks a token (every decode step; the last prompt chunk).
    fn submit(
        &mut self,
        calls: &[(AttentionCall, u32)],
        tail: Tail,
    ) -> Result<(wgpu::SubmissionIndex, usize)> {
        let gpu = self.gpu.clone();
        let decoding = tail == Tail::Pick && calls.iter().all(|(c, _)| c.n_queries == 1);
        for (slot, (call, ids_offset)) in calls.iter().enumerate() {
            self.plan
                .set_slot(&mut self.bufs.arena, slot as u32, call, *ids_offset)?;
        }
        self.bufs.arena.upload(&gpu, 2 * calls.len() as u32);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let timestamp_writes =
                self.bufs
                    .timestamps
                    .as_ref()
                    .map(|(q, _)| wgpu::ComputePassTimestampWrites {
                        query_set: q,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    });
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("forward"),
                timestamp_writes,
            });
            for (slot, (call, _)) in calls.iter().enumerate() {
                let last = slot + 1 == calls.len();
                let pick = (tail == Tail::Pick && (decoding || last)).then_some(self.picking());
                let logits = tail == Tail::Logits && last;
                self.plan.record_forward(
                    &gpu,
                    &mut pass,
                    &self.bufs.arena,
                    slot as u32,
                    call,
                    logits,
                    pick,
                )?;
            }
        }
        let b = &self.bufs;
        let readback = &b.sampled_readback[self.next_readback];
        if let Some((q, resolve)) = &b.timestamps {
            enc.resolve_query_set(q, 0..2, resolve, 0);
            enc.copy_buffer_to_buffer(resolve, 0, readback, SAMPLED_BYTES, 16);
        }
        match tail {
            Tail::Logits => enc.copy_buffer_to_buffer(
                b.logits(),
                0,
                &b.logits_readback,
                0,
                b.logits_readback.size(),
            ),
            Tail::Pick => {
                enc.copy_buffer_to_buffer(&b.sampled, 0, readback, 0, SAMPLED_BYTES);
                if self.alternatives > 0 {
                    let bytes = calls.len() as u64 * MAX_TOP_LOGPROBS as u64 * 8;
                    enc.copy_buffer_to_buffer(&b.alternatives, 0, readback, ALTERNATIVES_AT, bytes);
                }
            }
        }
        let index = gpu.queue.submit([enc.finish()]);
        gpu.take_error("forward pass")?;
        let used = self.next_readback;
        self.next_readback = 1 - used;
        Ok((index, used))
    }

    /// The GPU time of the last submission from its two timestamps (read with the sampled ids).
    fn note_gpu_time(&mut self, words: &[u8]) {
        if self.bufs.timestamps.is_none() {
            return;
        }
        let at = SAMPLED_BYTES as usize;
        let ts: &[u64] = bytemuck::cast_slice(&words[at..at + 16]);
        let ticks = ts[1].saturating_sub(ts[0]);
        let period = self.gpu.queue.get_timestamp_period() as f64;
        self.last_gpu_s = Some(ticks as f64 * period * 1e-9);
    }

    /// The picked tokens of `slots` from a read-back, each with `alternatives` alternatives.
    async fn read_sampled(
        &mut self,
        readback: usize,
        slots: std::ops::Range<u32>,
        alternatives: u32,
        submission: Option<wgpu::SubmissionIndex>,
    ) -> Result<Vec<Sampled>> {
        let gpu = self.gpu.clone();
        let buffer = &self.bufs.sampled_readback[readback];
        let size = if alternatives > 0 {
            READBACK_BYTES
        } else {
            ALTERNATIVES_AT
        };
        let bytes = map_read(&gpu, buffer, size, submission).await?;
        self.note_gpu_time(&bytes);
        let words: &[[u32; 4]] = bytemuck::cast_slice(&bytes[..SAMPLED_BYTES as usize]);
        let listed: &[[u32; 2]] = bytemuck::cast_slice(&bytes[ALTERNATIVES_AT as usize..]);
        let mut out = Vec::with_capacity(slots.len());
        for s in slots {
            let [id, logprob, flags, _] = words[s as usize];
            if flags != 0 {
                // A NaN or infinite logit is an error, never a token.
                return Err(Error::NonFinite {
                    what: format!("the logits of step {s}"),
                    index: 0,
                    value: f32::NAN,
                });
            }
            let at = s as usize * MAX_TOP_LOGPROBS;
            let top = listed
                .get(at..at + alternatives as usize)
                .unwrap_or_default()
                .iter()
                // Fewer finite logits than asked for leave entries without an id.
                .take_while(|[id, _]| *id != u32::MAX)
                .map(|&[id, lp]| Alternative {
                    id,
                    logprob: f32::from_bits(lp),
                })
                .collect();
            out.push(Sampled {
                id,
                logprob: f32::from_bits(logprob),
                top,
            });
        }
        Ok(out)
    }

    async fn read_logits(&mut self, readback: usize) -> Result<Vec<f32>> {
        let gpu = self.gpu.clone();
        let vocab = self.cfg.vocab_size as u64;
        if self.bufs.timestamps.is_some() {
            let buffer = &self.bufs.sampled_readback[readback];
            let bytes = map_read(&gpu, buffer, ALTERNATIVES_AT, None).await?;
            self.note_gpu_time(&bytes);
        }
        let bytes = map_read(&gpu, &self.bufs.logits_readback, vocab * 4, None).await?;
        let logits: Vec<f32> = bytemuck::cast_slice(&bytes).to_vec();
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

    /// Blocking [`Engine::prefill_pick`] for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn prefill_pick_blocking(&mut self, ids: &[u32]) -> Result<Sampled> {
        pollster::block_on(self.prefill_pick(ids))
    }

    /// Blocking [`Engine::decode_pick_finish`] for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_pick_finish_blocking(&mut self) -> Result<Vec<Sampled>> {
        pollster::block_on(self.decode_pick_finish())
    }

    /// Blocking [`Engine::decode_pick`] for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_pick_blocking(&mut self, first: u32, steps: u32) -> Result<Vec<Sampled>> {
        pollster::block_on(self.decode_pick(first, steps))
    }
}

/// The causal attention call of `n` tokens at position `past`.
fn causal_call(past: u32, n: u32) -> AttentionCall {
    AttentionCall {
        n_queries: n,
        seq_len: past + n,
        causal: true,
        past_len: past,
    }
}
