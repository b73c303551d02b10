// The language model: loading a model directory with byte-level progress (through the browser
// cache, cache.js), streaming generation, attention maps. The weights travel fetch -> wasm heap (one copy, written chunk by chunk as the
// bytes arrive, so JS never holds a whole file) -> GPU buffers; the wasm copy is freed after the
// upload unless attention maps are wanted.
import { raw, ready, call, adopt, DiffAttnError, withBrowserAdapter } from './core.js';
import { ModelFiles, modelCache } from './cache.js';

const CONFIG = 'config.json';
const INDEX = 'model.safetensors.index.json';
const SINGLE = 'model.safetensors';
const TOKENIZER = 'tokenizer.json';

function baseHref(base) {
  const href = base instanceof URL ? base.href : String(base);
  const abs = new URL(href, globalThis.location?.href);
  if (!abs.pathname.endsWith('/')) abs.pathname += '/';
  return abs;
}

const isUrlish = (x) => x instanceof URL || (typeof x === 'string' && !x.trimStart().startsWith('{'));

function asText(x) {
  if (typeof x === 'string') return x;
  if (x instanceof ArrayBuffer || ArrayBuffer.isView(x)) return new TextDecoder().decode(x);
  return JSON.stringify(x);
}

function asBytes(x) {
  if (x instanceof Uint8Array) return x;
  if (x instanceof ArrayBuffer) return new Uint8Array(x);
  if (ArrayBuffer.isView(x)) return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  return null;
}

/** Shard file names from an index's weight_map, in a stable order. */
function shardNames(indexText, url) {
  let map;
  try {
    map = JSON.parse(indexText).weight_map;
  } catch (e) {
    throw new DiffAttnError(`${url}: not valid JSON (${e.message})`, 'Format');
  }
  if (!map || typeof map !== 'object') throw new DiffAttnError(`${url}: no weight_map object`, 'Format');
  return [...new Set(Object.values(map))].sort();
}

/** Streams one opened file into a new shard of the loader, chunk by chunk. */
async function streamInto(loader, files, file, name, onBytes) {
  if (file.size === null) {
    // Unknown size: the body is buffered in JS once, then copied in.
    const buf = await files.bytes(file);
    const idx = loader.addShard(name, buf.length);
    loader.write(idx, 0, buf);
    onBytes(buf.length);
    return;
  }
  const idx = loader.addShard(name, file.size);
  let offset = 0;
  await files.consume(file, (value) => {
    if (offset + value.length > file.size) {
      throw new DiffAttnError(`${name}: more than the ${file.size} bytes announced`, 'Io');
    }
    loader.write(idx, offset, value);
    offset += value.length;
    onBytes(value.length);
  });
}

const GGUF_MAGIC = [0x47, 0x47, 0x55, 0x46]; // "GGUF"

/** A GGUF source: `{url}` for a URL whose path ends in .gguf, `{bytes}` for GGUF data, else null. */
function ggufSource(source) {
  if (typeof source === 'string' || source instanceof URL) {
    const url = new URL(String(source), globalThis.location?.href);
    return url.pathname.toLowerCase().endsWith('.gguf') ? { url } : null;
  }
  const bytes = asBytes(source);
  if (!bytes) return null;
  if (bytes.length < 4 || GGUF_MAGIC.some((b, i) => bytes[i] !== b)) {
    throw new DiffAttnError('Engine.load: the bytes given are not a GGUF file (no "GGUF" magic)', 'Format');
  }
  return { bytes };
}

/**
 * Loads a GGUF file: config, tokenizer and chat template are in its metadata, so it is one
 * download (kept in the browser cache, hashed on its first complete download) and one shard. The
 * adapter's limits are checked by the build, once the header is there to say the sizes.
 */
async function loadGguf({ url, bytes }, loader, files, { progress, signal, kvDtype, context, attentionMaps }) {
  // The loader takes a single shard whose name ends in .gguf as a whole GGUF model.
  const name = url ? decodeURIComponent(url.pathname.split('/').pop()) : 'model.gguf';
  progress({ phase: 'download', loaded: 0, total: bytes?.length ?? 0, file: null, fromCache: false });
  if (bytes) {
    const idx = loader.addShard(name, bytes.length);
    loader.write(idx, 0, bytes);
    progress({ phase: 'download', loaded: bytes.length, total: bytes.length, file: name, fromCache: false });
  } else {
    const file = await files.open(url);
    let loaded = 0;
    await streamInto(loader, files, file, name, (n) => {
      loaded += n;
      progress({ phase: 'download', loaded, total: Math.max(file.size ?? 0, loaded), file: name, fromCache: file.fromCache });
    });
  }
  signal?.throwIfAborted();
  const model = await call(() =>
    loader.build(kvDtype === 'f16', context ?? 0, attentionMaps, (done, all) =>
      progress({ phase: 'upload', loaded: done, total: all, file: null, fromCache: false }),
    ),
  );
  return new Engine(model);
}

function chatMessages(messages) {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new DiffAttnError('chat: messages must be a non-empty array of {role, content}', 'Config');
  }
  return JSON.stringify(
    messages.map((m, i) => {
      if (!m || typeof m.role !== 'string' || typeof m.content !== 'string') {
        throw new DiffAttnError(`chat: message ${i} needs a string role and content`, 'Config');
      }
      return { role: m.role, content: m.content };
    }),
  );
}

// `logitBias` as [[id, bias], ...] for the wasm side: from an object or Map of id -> bias, or an
// array of pairs. -Infinity (a ban) goes as null, which JSON can hold.
function logitBias(bias) {
  if (bias === undefined || bias === null) return [];
  const pairs = bias instanceof Map ? [...bias] : Array.isArray(bias) ? bias : Object.entries(bias);
  return pairs.map((pair, i) => {
    const [id, b] = Array.isArray(pair) ? pair : [undefined, undefined];
    const n = Number(id);
    if (!Number.isInteger(n) || n < 0 || typeof b !== 'number' || Number.isNaN(b) || b === Infinity) {
      throw new DiffAttnError(`generate: logitBias entry ${i} must map a token id to a number or -Infinity`, 'Config');
    }
    return [n, b === -Infinity ? null : b];
  });
}

function sampling(opts) {
  const temperature = opts.temperature ?? 0.8;
  const o = {
    max_tokens: opts.maxTokens ?? 128,
    temperature,
    top_k: opts.topK ?? 40,
    top_p: opts.topP ?? 0.95,
    // Greedy (temperature 0) is plain argmax unless a penalty is asked for, as in the CLI.
    repeat_penalty: opts.repeatPenalty ?? (temperature <= 0 ? 1 : 1.1),
    repeat_last_n: opts.repeatLastN ?? 64,
    seed: opts.seed ?? Math.floor(Math.random() * 2 ** 32),
    top_logprobs: opts.topLogprobs ?? 0,
  };
  for (const [k, v] of Object.entries(o)) {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
      throw new DiffAttnError(`generate: ${k} must be a non-negative number (got ${v})`, 'Config');
    }
  }
  if (!Number.isInteger(o.top_logprobs) || o.top_logprobs > 20) {
    throw new DiffAttnError(`generate: topLogprobs must be an integer from 0 to 20 (got ${o.top_logprobs})`, 'Config');
  }
  return { ...o, stop: opts.stop ?? [], stop_at_eos: opts.stopAtEos ?? true, logit_bias: logitBias(opts.logitBias) };
}

export class Engine {
  #model;
  #busy = false;
  #stats = null;

  constructor(model) {
    this.#model = model;
  }

  /**
   * Loads a model: a URL to a `.gguf` file or GGUF bytes (config, tokenizer and chat template
   * from its metadata), a directory URL (with config.json, tokenizer.json and model.safetensors or
   * model.safetensors.index.json plus its shards, and optionally manifest.json) or
   * `{config, weights, tokenizer}` given as URLs or data. Files fetched from URLs are kept in the
   * browser's Cache API unless `cache: false` (see `modelCache`). `onProgress({phase, loaded,
   * total, file, fromCache})` sees 'download' then 'upload' bytes.
   */
  static async load(source, { onProgress, signal, kvDtype = 'f32', context, attentionMaps = false, cache = true, onCacheError, wasmUrl } = {}) {
    await ready(wasmUrl);
    const progress = onProgress ?? (() => {});
    const files = new ModelFiles({ signal, cache, onCacheError });
    const loader = new raw.ModelLoader();
    try {
      const gguf = ggufSource(source);
      if (gguf) return await loadGguf(gguf, loader, files, { progress, signal, kvDtype, context, attentionMaps });
      let cfgSrc, tokSrc, weightSrc, base = null;
      if (typeof source === 'string' || source instanceof URL) {
        base = baseHref(source);
        cfgSrc = new URL(CONFIG, base);
        tokSrc = new URL(TOKENIZER, base);
        weightSrc = base;
      } else if (source && typeof source === 'object') {
        ({ config: cfgSrc, tokenizer: tokSrc, weights: weightSrc } = source);
        if (cfgSrc == null || tokSrc == null || weightSrc == null) {
          throw new DiffAttnError('Engine.load: the source needs config, weights and tokenizer', 'Config');
        }
      } else {
        throw new DiffAttnError('Engine.load: pass a model directory URL or {config, weights, tokenizer}', 'Config');
      }
      const resolve = (u) => new URL(String(u), globalThis.location?.href);
      if (base) await files.loadManifest(base);

      // The config alone says how large the buffers will be: check it against the adapter's
      // limits before downloading any weights.
      const cfgFile = isUrlish(cfgSrc) ? await files.open(resolve(cfgSrc)) : null;
      const configText = cfgFile ? new TextDecoder().decode(await files.bytes(cfgFile)) : asText(cfgSrc);
      await call(() => raw.checkModelConfig(configText, kvDtype === 'f16', context ?? 0));
      loader.setConfig(configText);

      // Collect the weight sources: files (streamed) or buffers (copied).
      const parts = [];
      if (base && weightSrc === base) {
        const indexUrl = new URL(INDEX, base);
        // With a manifest, it says whether the model is sharded; without, a 404 says it.
        const idx = files.listed(indexUrl.href) === false ? null : await files.open(indexUrl, { optional: true });
        const names = idx ? shardNames(new TextDecoder().decode(await files.bytes(idx)), indexUrl.href) : [SINGLE];
        for (const n of names) parts.push({ name: n, url: new URL(n, base) });
      } else {
        for (const w of Array.isArray(weightSrc) ? weightSrc : [weightSrc]) {
          const bytes = asBytes(w);
          if (bytes) parts.push({ name: `weights[${parts.length}]`, bytes });
          else if (isUrlish(w)) parts.push({ name: String(w), url: resolve(w) });
          else throw new DiffAttnError('Engine.load: weights must be URLs or ArrayBuffer/Uint8Array data', 'Config');
        }
      }
      // Opened together (cached copies are verified here), read one after the other: a response
      // not yet read waits in the network layer, not in JS memory.
      const tokUrl = isUrlish(tokSrc) ? resolve(tokSrc) : null;
      const [tokFile, ...opened] = await Promise.all([
        tokUrl ? files.open(tokUrl) : null,
        ...parts.map((p) => (p.url ? files.open(p.url) : null)),
      ]);
      let total = tokFile?.size ?? 0;
      parts.forEach((p, i) => (total += p.bytes ? p.bytes.length : (opened[i].size ?? 0)));
      let loaded = 0;
      const tick = (file, fromCache) => (n) => {
        loaded += n;
        progress({ phase: 'download', loaded, total: Math.max(total, loaded), file, fromCache });
      };
      progress({ phase: 'download', loaded: 0, total, file: null, fromCache: false });

      const tokBytes = tokFile ? await files.bytes(tokFile) : new TextEncoder().encode(asText(tokSrc));
      tick(TOKENIZER, Boolean(tokFile?.fromCache))(tokFile ? tokBytes.length : 0);
      loader.setTokenizer(tokBytes);
      for (const [i, p] of parts.entries()) {
        if (p.bytes) {
          const idx = loader.addShard(p.name, p.bytes.length);
          loader.write(idx, 0, p.bytes);
          tick(p.name, false)(p.bytes.length);
        } else {
          await streamInto(loader, files, opened[i], p.name, tick(p.name, opened[i].fromCache));
        }
        signal?.throwIfAborted();
      }

      const model = await call(() =>
        loader.build(kvDtype === 'f16', context ?? 0, attentionMaps, (done, all) =>
          progress({ phase: 'upload', loaded: done, total: all, file: null, fromCache: false }),
        ),
      );
      return new Engine(model);
    } catch (e) {
      throw adopt(e);
    } finally {
      loader.free();
    }
  }

  /** The browser model cache (the same object as the `modelCache` export). */
  static get cache() {
    return modelCache;
  }

  /** The browser model cache (the same object as the `modelCache` export). */
  get cache() {
    return modelCache;
  }

  /** Adapter, features used (f16 or f32 path), limits and the model config. */
  info() {
    const info = this.#model.info();
    return { ...info, gpu: withBrowserAdapter(info.gpu) };
  }

  /** Counts and timings of the last generation (null before the first). */
  get stats() {
    return this.#stats;
  }

  /** Token ids of `text` as the model sees a prompt. */
  encode(text) {
    return Array.from(this.#model.encode(text));
  }

  /**
   * Streams `{text, id, index}` pieces. Aborting `signal` stops it at the next token and the
   * iteration throws the signal's reason; breaking out of the loop also stops it. Either way the
   * engine stays usable.
   */
  generate(prompt, opts = {}) {
    return this.#stream((params, cancel, onPiece) => this.#model.generate(String(prompt), params, cancel, onPiece), opts);
  }

  /**
   * Replies to `messages` (`[{role, content}]`: an optional leading system message, then user and
   * assistant turns, the last the user's) in the model's chat template, streaming pieces as
   * `generate` does, with the same options. The engine keeps the conversation's KV cache: pass the
   * history back with the reply and the next user message, and only the new tokens are prefilled
   * (`stats.promptTokens`). When the history does not fit the context with room for `maxTokens`,
   * the oldest turns are dropped first; the system prompt is kept. `generate` in between costs
   * the cache, not correctness.
   */
  chat(messages, opts = {}) {
    const text = chatMessages(messages);
    return this.#stream((params, cancel, onPiece) => this.#model.chat(text, params, cancel, onPiece), opts);
  }

  async *#stream(start, opts) {
    if (this.#busy) throw new DiffAttnError('this engine is already generating: finish or abort that first', 'Busy');
    const { signal } = opts;
    signal?.throwIfAborted();
    const params = JSON.stringify(sampling(opts));
    this.#busy = true;
    const cancel = new raw.CancelFlag();
    const queue = [];
    let wake = null;
    let finished = false;
    let error = null;
    let result = null;
    const notify = () => {
      if (wake) wake();
      wake = null;
    };
    const t0 = performance.now();
    let tFirst = null;
    let tLast = null;
    let n = 0;
    const wantTop = (opts.topLogprobs ?? 0) > 0;
    const onPiece = (id, text, logprob, flat) => {
      const now = performance.now();
      tFirst ??= now;
      tLast = now;
      const piece = { id, text, index: n++, logprob };
      if (wantTop) {
        piece.top = [];
        for (let i = 0; i + 1 < flat.length; i += 2) piece.top.push({ id: flat[i], logprob: flat[i + 1] });
      }
      queue.push(piece);
      notify();
    };
    const onAbort = () => {
      cancel.cancel();
      notify();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    const run = start(params, cancel, onPiece)
      .then((r) => (result = r), (e) => (error = adopt(e)))
      .finally(() => {
        finished = true;
        notify();
      });
    try {
      for (;;) {
        signal?.throwIfAborted();
        if (queue.length) {
          yield queue.shift();
          continue;
        }
        if (finished) break;
        await new Promise((r) => (wake = r));
      }
      if (error) throw error;
    } finally {
      // A no-op after a normal end; stops the Rust loop when the consumer left early.
      cancel.cancel();
      await run;
      cancel.free();
      signal?.removeEventListener('abort', onAbort);
      const decodeS = n > 1 ? (tLast - tFirst) / 1000 : 0;
      this.#stats = {
        promptTokens: result?.prompt_tokens ?? null,
        generated: n,
        stopReason: signal?.aborted ? 'cancelled' : (result?.stop_reason ?? (error ? 'error' : 'cancelled')),
        firstTokenMs: tFirst === null ? null : tFirst - t0,
        decodeTokensPerSecond: decodeS > 0 ? (n - 1) / decodeS : null,
        totalMs: performance.now() - t0,
        contextTokens: result?.context_tokens ?? null,
      };
      this.#busy = false;
    }
  }

  /**
   * For one layer and output head over the prompt's tokens: the two softmax maps (query heads
   * 2*head and 2*head+1), lambda per query token, and their difference p1 - lambda * p2; each
   * map row-major (T, T). Needs `attentionMaps: true` at load. Computed on the CPU in wasm.
   */
  attentionMaps(prompt, { layer = 0, head = 0 } = {}) {
    if (this.#busy) throw new DiffAttnError('this engine is generating: attention maps can be computed after it', 'Busy');
    try {
      return this.#model.attentionMaps(prompt, layer, head);
    } catch (e) {
      throw adopt(e);
    }
  }

  /** Frees the GPU buffers now instead of at garbage collection. */
  dispose() {
    this.#model.free();
  }
}
