//! The model in the browser: a loader the JS side streams fetched bytes into, the loaded model
//! with its generation loop, and a cancel flag an AbortSignal sets.

use super::{gpu, gpu_info_value, js_error, json_to_js, maps};
use crate::attention::KvDtype;
use crate::chat::{Conversation, Message};
use crate::error::Error;
use crate::generate::{GenerateOptions, Generation, TextModel};
use crate::gpu::Gpu;
use crate::model::weights::{WeightDtype, expected_tensors};
use crate::model::{Config, Engine, EngineOptions, HostWeights, ModelSource, Shard};
use crate::sample::SamplingParams;
use crate::tokenizer::Tokenizer;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wasm_bindgen::prelude::*;

fn parse_config(text: &str) -> Result<Config, Error> {
    let cfg = Config::from_json("config.json", text)?;
    cfg.validate()?;
    Ok(cfg)
}

/// Checks a config against the adapter's limits before anything is downloaded: every weight at
/// its smallest storage (16-bit) and the per-layer KV cache must fit one buffer binding, except
/// the embedding and the output head, which are split across bindings by rows.
fn check_limits(g: &Gpu, cfg: &Config, kv_f16: bool, context: u32) -> Result<(), Error> {
    for (name, shape) in expected_tensors(cfg) {
        let bytes = shape.iter().map(|&s| s as u64).product::<u64>() * 2;
        if crate::model::plan::splits_by_rows(&name) {
            let rows = shape[0] as u64;
            crate::model::plan::rows_per_part(g, &name, rows, bytes / rows.max(1))?;
        } else {
            g.check_binding(&name, bytes)?;
        }
    }
    let ctx = if context == 0 {
        cfg.max_position_embeddings
    } else {
        context.min(cfg.max_position_embeddings)
    };
    let kv_bytes = if kv_f16 { 2 } else { 4 };
    let per_layer = ctx as u64 * cfg.num_key_value_heads as u64 * cfg.head_dim as u64 * kv_bytes;
    g.check_binding("KV cache (one layer's keys)", per_layer)?;
    Ok(())
}

/// Parses `config.json` and checks it against the adapter's limits; returns the config.
#[wasm_bindgen(js_name = checkModelConfig)]
pub async fn check_model_config(
    text: String,
    kv_f16: bool,
    context: u32,
) -> Result<JsValue, JsValue> {
    let cfg = parse_config(&text).map_err(js_error)?;
    let g = gpu().await?;
    check_limits(&g, &cfg, kv_f16, context).map_err(js_error)?;
    Ok(json_to_js(&serde_json::to_value(&cfg).unwrap_or_default()))
}

/// Collects a model's files. Weight shards are allocated once at their announced size and filled
/// chunk by chunk as the fetch delivers them, so the wasm heap holds exactly one copy.
#[wasm_bindgen]
#[derive(Default)]
pub struct ModelLoader {
    config: Option<String>,
    shards: Vec<Shard>,
    tokenizer: Option<Vec<u8>>,
}

#[wasm_bindgen]
impl ModelLoader {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Self {
        Self::default()
    }

    #[wasm_bindgen(js_name = setConfig)]
    pub fn set_config(&mut self, text: String) {
        self.config = Some(text);
    }

    #[wasm_bindgen(js_name = setTokenizer)]
    pub fn set_tokenizer(&mut self, bytes: Vec<u8>) {
        self.tokenizer = Some(bytes);
    }

    /// Allocates a shard of `size` bytes; returns its index for `write`.
    #[wasm_bindgen(js_name = addShard)]
    pub fn add_shard(&mut self, name: String, size: usize) -> Result<usize, JsValue> {
        let mut bytes = Vec::new();
        // A clear error instead of an abort when the wasm heap (4 GiB at most) cannot take it.
        bytes.try_reserve_exact(size).map_err(|_| {
            js_error(Error::OutOfMemory(format!(
                "the wasm heap, allocating {size} bytes for weight file {name}"
            )))
        })?;
        bytes.resize(size, 0);
        self.shards.push(Shard { name, bytes });
        Ok(self.shards.len() - 1)
    }

    /// Copies a fetched chunk into shard `index` at `offset`.
    pub fn write(&mut self, index: usize, offset: usize, chunk: &[u8]) -> Result<(), JsValue> {
        let shard = self
            .shards
            .get_mut(index)
            .ok_or_else(|| js_error(Error::config(format!("no shard {index}"))))?;
        let end = offset + chunk.len();
        if end > shard.bytes.len() {
            return Err(js_error(Error::Format {
                path: shard.name.clone(),
                message: format!("more data than the announced {} bytes", shard.bytes.len()),
            }));
        }
        shard.bytes[offset..end].copy_from_slice(chunk);
        Ok(())
    }

    /// Parses and checks everything, then uploads the weights. `on_progress(done, total)` sees the
    /// uploaded bytes. With `keep_weights` the host copy stays for attention maps; without, it is
    /// freed once the GPU has its own.
    pub fn build(
        &mut self,
        kv_f16: bool,
        context: u32,
        keep_weights: bool,
        on_progress: js_sys::Function,
    ) -> js_sys::Promise {
        // A single `.gguf` shard is a whole GGUF model (config and tokenizer inside).
        let gguf = (self.shards.len() == 1 && self.shards[0].name.ends_with(".gguf"))
            .then(|| self.shards.pop().map(|s| s.bytes))
            .flatten();
        let source = ModelSource {
            origin: "model".into(),
            config_json: self.config.take().unwrap_or_default(),
            shards: std::mem::take(&mut self.shards),
            tokenizer_json: self.tokenizer.take(),
            gguf,
        };
        wasm_bindgen_futures::future_to_promise(async move {
            let g = gpu().await?;
            let state =
                build(g, source, kv_f16, context, keep_weights, &on_progress).map_err(js_error)?;
            Ok(WasmModel {
                inner: Rc::new(RefCell::new(state)),
            }
            .into())
        })
    }
}

fn build(
    g: Arc<Gpu>,
    source: ModelSource,
    kv_f16: bool,
    context: u32,
    keep_weights: bool,
    on_progress: &js_sys::Function,
) -> Result<ModelState, Error> {
    let (cfg, weights, tokenizer_json) = source.parse()?;
    let tokenizer_json = tokenizer_json.ok_or_else(|| Error::NotFound {
        what: "tokenizer.json".into(),
        path: "model/tokenizer.json".into(),
    })?;
    let tokenizer = Tokenizer::from_bytes(&tokenizer_json)?;
    tokenizer.check_model_vocab(cfg.vocab_size)?;
    let opts = EngineOptions {
        kv_dtype: if kv_f16 { KvDtype::F16 } else { KvDtype::F32 },
        context: (context > 0).then_some(context),
        ..Default::default()
    };
    let mut progress = |done: u64, total: u64| {
        let _ = on_progress.call2(
            &JsValue::NULL,
            &(done as f64).into(),
            &(total as f64).into(),
        );
    };
    let engine = Engine::new(g, &cfg, &weights, opts, &mut progress)?;
    let weight_dtype = weights
        .info("model.embed_tokens.weight")
        .map(|i| i.dtype)
        .unwrap_or(WeightDtype::F32);
    Ok(ModelState {
        model: TextModel { engine, tokenizer },
        weights: keep_weights.then_some(weights),
        weight_dtype,
        conversation: None,
    })
}

struct ModelState {
    model: TextModel,
    /// The host copy of the weights, kept only for attention maps.
    weights: Option<HostWeights>,
    weight_dtype: WeightDtype,
    /// The chat in progress: what of it the KV cache holds (made on the first `chat` call).
    conversation: Option<Conversation>,
}

/// Set from JS (an AbortSignal's listener) to stop a generation at the next token.
#[wasm_bindgen]
#[derive(Default)]
pub struct CancelFlag(Arc<AtomicBool>);

#[wasm_bindgen]
impl CancelFlag {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sampling and stopping as the JS side sends them (snake_case JSON).
#[derive(serde::Deserialize)]
struct JsGenerate {
    max_tokens: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    repeat_penalty: f32,
    repeat_last_n: usize,
    seed: u64,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(default = "yes")]
    stop_at_eos: bool,
    /// (token id, bias) pairs; a bias of null bans the token (JSON has no -inf).
    #[serde(default)]
    logit_bias: Vec<(u32, Option<f32>)>,
    #[serde(default)]
    top_logprobs: usize,
}

fn yes() -> bool {
    true
}

impl JsGenerate {
    /// The library's options; the cache is kept only by a chat (`Conversation` sets it).
    fn options(self) -> GenerateOptions {
        GenerateOptions {
            max_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: self.repeat_last_n,
                seed: self.seed,
                logit_bias: self
                    .logit_bias
                    .into_iter()
                    .map(|(id, b)| (id, b.unwrap_or(f32::NEG_INFINITY)))
                    .collect(),
            },
            stop: self.stop,
            stop_at_eos: self.stop_at_eos,
            keep_cache: false,
            pick_on_gpu: true,
            top_logprobs: self.top_logprobs,
        }
    }
}

/// Streams `generation` to `on_piece(id, text, logprob, top)` (`top` a flat array of id,
/// log-probability pairs); returns the reply's text and ids and the
/// summary JS receives.
async fn stream(
    generation: &mut Generation<'_>,
    on_piece: &js_sys::Function,
) -> Result<(String, Vec<u32>, serde_json::Value), JsValue> {
    let mut text = String::new();
    let mut ids = Vec::new();
    while let Some(piece) = generation.next_piece().await {
        let piece = piece.map_err(js_error)?;
        text.push_str(&piece.text);
        ids.push(piece.id);
        let top = js_sys::Float64Array::new_with_length(2 * piece.top.len() as u32);
        for (i, a) in piece.top.iter().enumerate() {
            top.set_index(2 * i as u32, a.id as f64);
            top.set_index(2 * i as u32 + 1, a.logprob as f64);
        }
        let args = js_sys::Array::new();
        args.push(&piece.id.into());
        args.push(&piece.text.into());
        args.push(&(piece.logprob as f64).into());
        args.push(&top.into());
        on_piece.apply(&JsValue::NULL, &args)?;
    }
    let stats = generation.stats();
    let out = serde_json::json!({
        "stop_reason": generation.stop_reason(),
        "prompt_tokens": stats.prompt_tokens,
        "generated": stats.generated,
    });
    Ok((text, ids, out))
}

/// A loaded model. Shared behind `Rc<RefCell>` so that the futures handed to JS can own a handle:
/// one generation at a time, and a second call while one runs gets a clear error.
#[wasm_bindgen]
pub struct WasmModel {
    inner: Rc<RefCell<ModelState>>,
}

fn busy() -> JsValue {
    js_error(Error::Model(
        "the engine is busy with another generation".into(),
    ))
}

#[wasm_bindgen]
impl WasmModel {
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let st = self.inner.try_borrow().map_err(|_| busy())?;
        let engine = &st.model.engine;
        let g = engine.gpu();
        let kv = match engine.options().kv_dtype {
            KvDtype::F16 => "f16",
            KvDtype::F32 => "f32",
        };
        let wd = st.weight_dtype.name();
        let path = if st.weight_dtype == WeightDtype::F32 {
            "f32 weights, f32 arithmetic".to_string()
        } else if st.weight_dtype.is_quantized() {
            // Block types stay blocks on the GPU (dequant.wgsl, f16 scales from u32 words).
            format!("{wd} weights dequantized in WGSL, f32 arithmetic")
        } else {
            // The shaders unpack 16-bit weights from u32 words: no shader-f16 feature is needed.
            format!("{wd} weights unpacked in WGSL, f32 arithmetic")
        };
        let cfg = serde_json::to_value(engine.config()).unwrap_or_default();
        let info = serde_json::json!({
            "config": cfg,
            "context": engine.context(),
            "weightDtype": wd,
            "kvDtype": kv,
            "path": format!("{path}, {kv} KV cache"),
            "attentionMaps": st.weights.is_some(),
        });
        let out = json_to_js(&info);
        js_sys::Reflect::set(&out, &"gpu".into(), &gpu_info_value(g))?;
        Ok(out)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, JsValue> {
        let st = self.inner.try_borrow().map_err(|_| busy())?;
        st.model.encode(text).map_err(js_error)
    }

    /// Generates after `prompt`, calling `on_piece(id, text)` per token; resolves with
    /// `{stop_reason, prompt_tokens, generated}` when it ends (or is cancelled).
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn generate(
        &self,
        prompt: String,
        params: &str,
        cancel: &CancelFlag,
        on_piece: js_sys::Function,
    ) -> js_sys::Promise {
        let inner = self.inner.clone();
        let flag = cancel.0.clone();
        let params: Result<JsGenerate, _> = serde_json::from_str(params);
        wasm_bindgen_futures::future_to_promise(async move {
            let p =
                params.map_err(|e| js_error(Error::config(format!("generation options: {e}"))))?;
            // The borrow is held for the whole generation on purpose: it is the engine's busy
            // lock, and every other entry point uses try_borrow and reports Busy.
            let mut st = inner.try_borrow_mut().map_err(|_| busy())?;
            // A plain generation overwrites the cache from position 0: a chat's record of what
            // the cache holds would be wrong after it, so the next chat starts afresh.
            st.conversation = None;
            let mut generation: Generation<'_> = st
                .model
                .generate(&prompt, p.options())
                .map_err(js_error)?
                .with_cancel(flag);
            let (_, _, out) = stream(&mut generation, &on_piece).await?;
            Ok(json_to_js(&out))
        })
    }

    /// Replies to `messages` (JSON `[{role, content}]`, the last the user's) in the model's chat
    /// template, streaming like `generate`; resolves with `generate`'s summary plus
    /// `context_tokens`, the positions the cache holds after the reply. The cache of the previous
    /// call is kept: only what the rendered prompt does not share with it is prefilled
    /// (`prompt_tokens`), and the oldest turns are dropped when the history does not fit.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn chat(
        &self,
        messages: &str,
        params: &str,
        cancel: &CancelFlag,
        on_piece: js_sys::Function,
    ) -> js_sys::Promise {
        let inner = self.inner.clone();
        let flag = cancel.0.clone();
        let params: Result<JsGenerate, _> = serde_json::from_str(params);
        let messages: Result<Vec<Message>, _> = serde_json::from_str(messages);
        wasm_bindgen_futures::future_to_promise(async move {
            let p =
                params.map_err(|e| js_error(Error::config(format!("generation options: {e}"))))?;
            let messages = messages.map_err(|e| {
                js_error(Error::config(format!(
                    "chat: messages must be [{{role, content}}] ({e})"
                )))
            })?;
            // Held for the whole reply: the busy lock, as in `generate`.
            let mut guard = inner.try_borrow_mut().map_err(|_| busy())?;
            let st = &mut *guard;
            if st.conversation.is_none() {
                st.conversation = Some(Conversation::new(&st.model, None).map_err(js_error)?);
            }
            let Some(conversation) = st.conversation.as_mut() else {
                return Err(js_error(Error::Model("chat: no conversation".into())));
            };
            let mut generation = conversation
                .reply_to(&mut st.model, &messages, p.options())
                .map_err(js_error)?
                .with_cancel(flag);
            let streamed = stream(&mut generation, &on_piece).await;
            drop(generation);
            let position = st.model.engine.position();
            // Recorded on failure and cancellation too: the cache then holds part of a reply,
            // and the ids say exactly which part, so the next turn reuses what still matches.
            let (text, ids, mut out) = match streamed {
                Ok(s) => s,
                Err(e) => {
                    conversation.record_reply("", &[], position);
                    return Err(e);
                }
            };
            conversation.record_reply(&text, &ids, position);
            out["context_tokens"] = position.into();
            Ok(json_to_js(&out))
        })
    }

    /// The two softmax maps, lambda and their difference for one layer and head over the
    /// prompt's tokens (see `maps`).
    #[wasm_bindgen(js_name = attentionMaps)]
    pub fn attention_maps(&self, prompt: &str, layer: u32, head: u32) -> Result<JsValue, JsValue> {
        let st = self.inner.try_borrow().map_err(|_| busy())?;
        let weights = st.weights.as_ref().ok_or_else(|| {
            js_error(Error::config(
                "attention maps need the model loaded with {attentionMaps: true}",
            ))
        })?;
        let model = &st.model;
        let ids = model.encode(prompt).map_err(js_error)?;
        let m = maps::attention_maps(model.engine.config(), weights, &ids, layer, head)
            .map_err(js_error)?;
        let tokens: Vec<String> = ids
            .iter()
            .map(|&id| {
                model
                    .tokenizer
                    .decode_with_special(&[id])
                    .unwrap_or_default()
            })
            .collect();
        let out = js_sys::Object::new();
        let set = |k: &str, v: JsValue| js_sys::Reflect::set(&out, &k.into(), &v);
        set("tokens", serde_wasm(&tokens))?;
        set("ids", js_sys::Uint32Array::from(&ids[..]).into())?;
        set("p1", js_sys::Float32Array::from(&m.p1[..]).into())?;
        set("p2", js_sys::Float32Array::from(&m.p2[..]).into())?;
        set("lambda", js_sys::Float32Array::from(&m.lambda[..]).into())?;
        set("diff", js_sys::Float32Array::from(&m.diff[..]).into())?;
        Ok(out.into())
    }
}

fn serde_wasm<T: serde::Serialize>(v: &T) -> JsValue {
    json_to_js(&serde_json::to_value(v).unwrap_or_default())
}
