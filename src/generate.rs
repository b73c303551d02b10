//! Text generation: a model plus its tokenizer, and a streaming generation loop that yields
//! text pieces as tokens are produced.
//!
//! ```no_run
//! # use diffattn::generate::*; use std::sync::Arc;
//! # fn f(gpu: Arc<diffattn::Gpu>) -> diffattn::Result<()> {
//! let mut model = TextModel::from_dir(gpu, "models/diffv2-small".as_ref(), Default::default(), &mut |_, _| {})?;
//! for piece in model.generate("Once upon a time", GenerateOptions::default())? {
//!     print!("{}", piece?.text);
//! }
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{Engine, EngineOptions, ModelSource, Sampled};
use crate::sample::{self, Alternative, MAX_TOP_LOGPROBS, Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A model ready to generate text.
pub struct TextModel {
    pub engine: Engine,
    pub tokenizer: Tokenizer,
}

impl TextModel {
    /// Builds the engine and tokenizer from in-memory files. `progress(done, total)` reports
    /// weight bytes uploaded to the GPU.
    pub fn from_source(
        gpu: Arc<Gpu>,
        source: ModelSource,
        opts: EngineOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        let origin = source.origin.clone();
        let (cfg, weights, tokenizer_json) = source.parse()?;
        let tokenizer_json = tokenizer_json.ok_or_else(|| Error::NotFound {
            what: "tokenizer.json".into(),
            path: format!("{origin}/tokenizer.json"),
        })?;
        let tokenizer = Tokenizer::from_bytes(&tokenizer_json)?;
        tokenizer.check_model_vocab(cfg.vocab_size)?;
        let engine = Engine::new(gpu, &cfg, &weights, opts, progress)?;
        Ok(Self { engine, tokenizer })
    }

    /// Reads a model directory and builds it; `progress` sees reading and uploading in turn.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(
        gpu: Arc<Gpu>,
        dir: &std::path::Path,
        opts: EngineOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        let source = ModelSource::read(dir, progress)?;
        Self::from_source(gpu, source, opts, progress)
    }

    /// Prompt ids: the text's tokens after the model's BOS (if it has one). An empty prompt
    /// without a BOS starts from the EOS token, which separates documents in training, so the
    /// model begins a fresh document.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let cfg = self.engine.config();
        let ids = self.tokenizer.encode(prompt, cfg.bos_token_id)?;
        if ids.is_empty()
            && let Some(eos) = cfg.eos_token_id
        {
            return Ok(vec![eos]);
        }
        Ok(ids)
    }

    /// Starts generating after `prompt`.
    pub fn generate(&mut self, prompt: &str, opts: GenerateOptions) -> Result<Generation<'_>> {
        let ids = self.encode(prompt)?;
        Ok(Generation::new(
            &mut self.engine,
            &self.tokenizer,
            ids,
            opts,
        ))
    }
}

/// What to generate and when to stop.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops when the text contains one of these; the stop string is not emitted.
    pub stop: Vec<String>,
    /// Stop when the model produces its eos_token_id (the EOS token is not emitted as text).
    pub stop_at_eos: bool,
    /// Continue after what the engine's cache holds instead of starting from an empty cache.
    pub keep_cache: bool,
    /// Pick tokens on the GPU where the sampling settings allow it
    /// ([`SamplingParams::runs_on_gpu`]), several steps per submission, reading back ids instead
    /// of logits. Off, every step reads the logits and the CPU sampler picks (for greedy decoding
    /// the same ids; for sampling the same distribution from another random stream).
    pub pick_on_gpu: bool,
    /// Alternatives each piece lists ([`Piece::top`]): the most likely tokens of its step with
    /// their log-probabilities, 0 (none) to [`MAX_TOP_LOGPROBS`].
    pub top_logprobs: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            stop_at_eos: true,
            keep_cache: false,
            pick_on_gpu: true,
            top_logprobs: 0,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    StopString,
    MaxTokens,
    /// The KV cache is full: the context limit, a normal end and not an error.
    ContextFull,
    Cancelled,
    /// A call returned an error (the error itself was returned then).
    Error,
}

/// One generated token and the text it completes (possibly empty while a character or a
/// possible stop string is incomplete).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Piece {
    /// The token id.
    pub id: u32,
    /// The text it completes.
    pub text: String,
    /// Its log-probability under the model's own distribution (the raw logits: before any bias,
    /// penalty, temperature or truncation).
    pub logprob: f32,
    /// The step's most likely tokens under the same distribution, most likely first (ties to
    /// the lower id), as many as [`GenerateOptions::top_logprobs`] asks for.
    pub top: Vec<Alternative>,
}

/// Counts and timings of one generation.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated: usize,
    pub prefill_s: f64,
    /// Forward passes of generated tokens (one per token after the first).
    pub decode_steps: usize,
    pub decode_s: f64,
    /// GPU time of the decode submissions (timestamps), where the adapter has timestamps.
    pub decode_gpu_s: Option<f64>,
    /// Submissions the decode steps took (several steps share one when tokens are picked on the
    /// GPU).
    pub decode_submits: usize,
}

impl Stats {
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_s)
    }

    pub fn decode_tok_s(&self) -> f64 {
        rate(self.decode_steps, self.decode_s)
    }

    /// GPU milliseconds per decode step, where timestamps exist.
    pub fn gpu_ms_per_token(&self) -> Option<f64> {
        let s = self.decode_gpu_s?;
        (self.decode_steps > 0).then(|| s * 1e3 / self.decode_steps as f64)
    }
}

fn rate(n: usize, s: f64) -> f64 {
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

#[cfg(not(target_arch = "wasm32"))]
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

#[cfg(not(target_arch = "wasm32"))]
fn since(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

// std::time::Instant panics in the browser; timings there come from the JS side.
#[cfg(target_arch = "wasm32")]
#[derive(Clone, Copy)]
struct NoClock;

#[cfg(target_arch = "wasm32")]
fn now() -> NoClock {
    NoClock
}

#[cfg(target_arch = "wasm32")]
fn since(_: NoClock) -> f64 {
    0.0
}

/// A generation in progress: call [`Generation::next_piece`] (or iterate, natively) until it
/// returns `None`, then [`Generation::stop_reason`] says why it ended. Dropping it early, or
/// setting the cancel flag, leaves the engine usable: its cache holds the prompt and every
/// generated token except the last.
pub struct Generation<'a> {
    engine: &'a mut Engine,
    tokenizer: &'a Tokenizer,
    opts: GenerateOptions,
    sampler: Sampler,
    detok: StreamDecoder,
    prompt: Vec<u32>,
    history: Vec<u32>,
    logits: Option<Vec<f32>>,
    /// The prompt has been run.
    started: bool,
    /// Greedy decoding with the token picked on the GPU, several steps per submission.
    on_gpu: bool,
    /// Tokens the GPU picked and fed that were not handed out yet (the cache runs ahead by them).
    picked: VecDeque<Sampled>,
    /// Steps of the next GPU submission: 1 at first so that the first tokens stream at once, then
    /// doubling up to MAX_STEPS.
    batch: u32,
    /// The last sampled token, not yet fed to the engine.
    unfed: Option<u32>,
    held: String,
    stop: Option<StopReason>,
    cancel: Arc<AtomicBool>,
    stats: Stats,
}

impl<'a> Generation<'a> {
    pub fn new(
        engine: &'a mut Engine,
        tokenizer: &'a Tokenizer,
        prompt: Vec<u32>,
        opts: GenerateOptions,
    ) -> Self {
        let sampler = Sampler::new(opts.sampling.clone());
        let on_gpu = opts.pick_on_gpu && opts.sampling.runs_on_gpu();
        Self {
            detok: StreamDecoder::new(&prompt),
            history: prompt.clone(),
            stats: Stats {
                prompt_tokens: prompt.len(),
                ..Default::default()
            },
            engine,
            tokenizer,
            opts,
            sampler,
            prompt,
            logits: None,
            started: false,
            on_gpu,
            picked: VecDeque::new(),
            batch: 1,
            unfed: None,
            held: String::new(),
            stop: None,
            cancel: Arc::default(),
        }
    }

    /// Uses `flag` as the cancel flag (set it from anywhere to stop at the next token).
    pub fn with_cancel(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = flag;
        self
    }

    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Prompt and generated ids so far.
    pub fn ids(&self) -> &[u32] {
        &self.history
    }

    /// The logits the last handed-out token was picked from (raw, before any repetition penalty
    /// or temperature), where the CPU picked it: with [`GenerateOptions::pick_on_gpu`] off or
    /// sampling settings the GPU does not run. `None` before the first token and while the GPU
    /// picks, since then no logits are read back.
    pub fn last_logits(&self) -> Option<&[f32]> {
        if self.on_gpu || self.stats.generated == 0 {
            return None;
        }
        self.logits.as_deref()
    }

    fn finish(&mut self, reason: StopReason) -> Result<String> {
        self.stop = Some(reason);
        let mut rest = std::mem::take(&mut self.held);
        rest.push_str(&self.detok.flush(self.tokenizer)?);
        Ok(rest)
    }

    /// The next token and its text; `None` once generation has ended.
    pub async fn next_piece(&mut self) -> Option<Result<Piece>> {
        match self.advance().await {
            Ok(p) => p.map(Ok),
            Err(e) => {
                self.stop = Some(StopReason::Error);
                Some(Err(e))
            }
        }
    }

    async fn advance(&mut self) -> Result<Option<Piece>> {
        if self.stop.is_some() {
            return Ok(None);
        }
        if self.cancel.load(Ordering::Relaxed) {
            self.stop = Some(StopReason::Cancelled);
            return Ok(None);
        }
        if !self.started {
            self.run_prompt().await?;
            if self.stop.is_some() {
                return Ok(None);
            }
        } else if self.on_gpu {
            if self.picked.is_empty() {
                self.decode_on_gpu().await?;
            }
        } else if let Some(id) = self.unfed.take() {
            let t = now();
            self.logits = Some(self.engine.step(id).await?);
            self.stats.decode_s += since(t);
            self.stats.decode_steps += 1;
            self.stats.decode_submits += 1;
        }
        if self.stats.generated >= self.opts.max_tokens {
            self.stop = Some(StopReason::MaxTokens);
            return Ok(None);
        }
        let Sampled { id, logprob, top } = if self.on_gpu {
            let s = self
                .picked
                .pop_front()
                .ok_or_else(|| Error::config("no token was picked (internal)"))?;
            // The last picked token is not in the cache yet, unless a started submission feeds it.
            self.unfed =
                (self.picked.is_empty() && self.engine.started_steps() == 0).then_some(s.id);
            s
        } else {
            let logits = self.logits.as_ref().expect("logits computed above");
            // Sampling is part of a token's cost: it counts towards the step that made the logits.
            let t = now();
            let id = self.sampler.sample(logits, &self.history);
            let (logprob, top) = sample::step_logprobs(logits, id, self.opts.top_logprobs);
            let s = Sampled { id, logprob, top };
            if self.stats.generated == 0 {
                self.stats.prefill_s += since(t);
            } else {
                self.stats.decode_s += since(t);
            }
            self.unfed = Some(id);
            s
        };
        self.history.push(id);
        self.stats.generated += 1;
        // Called once, on whichever path ends this step.
        let piece = move |text| {
            Some(Piece {
                id,
                text,
                logprob,
                top,
            })
        };

        if self.opts.stop_at_eos && Some(id) == self.engine.config().eos_token_id {
            let text = self.finish(StopReason::Eos)?;
            return Ok(piece(text));
        }
        let new = self.detok.push(self.tokenizer, id)?;
        self.held.push_str(&new);
        if let Some(cut) = self
            .opts
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let text = self.held[..cut].to_string();
            self.held.clear();
            self.stop = Some(StopReason::StopString);
            return Ok(piece(text));
        }
        if self.stats.generated >= self.opts.max_tokens {
            let text = self.finish(StopReason::MaxTokens)?;
            return Ok(piece(text));
        }
        if self.cache_position() >= self.engine.context() {
            let text = self.finish(StopReason::ContextFull)?;
            return Ok(piece(text));
        }
        // Hold back a tail that could still grow into a stop string.
        let keep = held_tail(&self.held, &self.opts.stop);
        let emit = self.held.len() - keep;
        let text = self.held[..emit].to_string();
        self.held.drain(..emit);
        Ok(piece(text))
    }

    /// Position of the next token to feed: the engine's, less the picked tokens it ran ahead by.
    fn cache_position(&self) -> u32 {
        self.engine.position() - self.picked.len() as u32 - self.engine.started_steps()
    }

    async fn run_prompt(&mut self) -> Result<()> {
        if !self.opts.keep_cache {
            self.engine.reset();
        }
        if self.prompt.is_empty() {
            return Err(Error::config(
                "the prompt is empty and the model has no bos_token_id to start from",
            ));
        }
        // A prompt the context cannot hold is the caller's to shorten (or to run with a longer
        // context): an error, not an empty answer that looks like a finished one.
        let (position, context) = (self.engine.position() as usize, self.engine.context());
        if position + self.prompt.len() > context as usize {
            return Err(Error::Model(format!(
                "the prompt ({} tokens) does not fit the context: {} of its {context} positions \
                 are free (shorten the prompt or raise the context)",
                self.prompt.len(),
                context as usize - position
            )));
        }
        self.opts.sampling.check(self.engine.config().vocab_size)?;
        if self.opts.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(Error::config(format!(
                "top_logprobs {} (at most {MAX_TOP_LOGPROBS})",
                self.opts.top_logprobs
            )));
        }
        let t = now();
        if self.on_gpu {
            self.engine.set_gpu_sampling(Some(&self.opts.sampling))?;
            self.engine.set_top_logprobs(self.opts.top_logprobs)?;
            let first = self.engine.prefill_pick(&self.prompt).await?;
            self.picked.push_back(first);
        } else {
            self.logits = Some(self.engine.prefill(&self.prompt).await?);
        }
        self.stats.prefill_s = since(t);
        self.started = true;
        Ok(())
    }

    /// Steps of the next GPU submission: as many as the batch size, the tokens still wanted
    /// (beyond those picked or started) and the context allow; 0 when none are needed.
    fn next_steps(&mut self) -> u32 {
        let coming = self.picked.len() + self.engine.started_steps() as usize;
        let wanted = self
            .opts
            .max_tokens
            .saturating_sub(self.stats.generated + coming) as u32;
        let room = self.engine.context() - self.engine.position();
        let steps = self.batch.min(wanted).min(room);
        if steps > 0 {
            self.batch = (self.batch * 2).min(crate::model::plan::MAX_STEPS);
        }
        steps
    }

    /// Reads the next submission of GPU-picked steps, keeping one more running meanwhile (fed on
    /// the GPU with the last token of the one being read), so that the host's recording and
    /// reading overlap the GPU's work.
    async fn decode_on_gpu(&mut self) -> Result<()> {
        let t = now();
        if self.engine.started_steps() == 0 {
            let Some(id) = self.unfed.take() else {
                return Err(Error::config("no token to feed (internal)"));
            };
            let steps = self.next_steps().max(1);
            self.engine.decode_pick_start(Some(id), steps)?;
            self.stats.decode_steps += steps as usize;
            self.stats.decode_submits += 1;
        }
        let steps = self.next_steps();
        if steps > 0 {
            self.engine.decode_pick_start(None, steps)?;
            self.stats.decode_steps += steps as usize;
            self.stats.decode_submits += 1;
        }
        let picked = self.engine.decode_pick_finish().await?;
        self.stats.decode_s += since(t);
        if let Some(g) = self.engine.last_gpu_seconds() {
            *self.stats.decode_gpu_s.get_or_insert(0.0) += g;
        }
        self.picked.extend(picked);
        Ok(())
    }

    /// Blocking form of [`Generation::next_piece`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn next_blocking(&mut self) -> Option<Result<Piece>> {
        pollster::block_on(self.next_piece())
    }
}

impl Drop for Generation<'_> {
    /// Tokens the GPU ran ahead by leave the cache, so that it holds the prompt and every handed-out
    /// token but the last, as after CPU sampling.
    fn drop(&mut self) {
        let keep = self.cache_position();
        self.engine.truncate(keep);
    }
}

/// The gap between the largest and the second-largest logit: how near greedy decoding came to
/// picking another token (0 for a tie). `None` for fewer than two logits or a NaN among them,
/// where no gap is meaningful.
pub fn top2_margin(logits: &[f32]) -> Option<f32> {
    if logits.len() < 2 || logits.iter().any(|x| x.is_nan()) {
        return None;
    }
    let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in logits {
        if x > first {
            second = first;
            first = x;
        } else if x > second {
            second = x;
        }
    }
    Some(first - second)
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix of a stop string.
fn held_tail(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if i > best && text.ends_with(&s[..i]) {
                best = i;
            }
        }
    }
    best
}

#[cfg(not(target_arch = "wasm32"))]
impl Iterator for Generation<'_> {
    type Item = Result<Piece>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_blocking()
    }
}
