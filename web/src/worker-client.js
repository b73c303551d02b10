// The page side of the Web Worker entry: the same API as Engine, with the engine in a worker.
//   import { WorkerEngine } from 'diffattn/worker';
//   const engine = await WorkerEngine.load('/models/diffv2-small/', { onProgress });
import { DiffAttnError } from './core.js';
import { modelCache } from './cache.js';

function rebuild(err) {
  if (err.name === 'AbortError') return new DOMException(err.message, 'AbortError');
  const e = err.name === 'DiffAttnError' ? new DiffAttnError(err.message, err.kind) : new Error(err.message);
  if (err.name !== 'DiffAttnError') e.name = err.name;
  return e;
}

// URLs are resolved against the page: inside the worker, relative URLs would resolve against the
// worker script instead.
function absolute(x) {
  if (x instanceof URL) return x.href;
  if (typeof x === 'string' && !x.trimStart().startsWith('{')) return new URL(x, location.href).href;
  if (Array.isArray(x)) return x.map(absolute);
  return x;
}

function absoluteSource(source) {
  if (typeof source === 'string' || source instanceof URL) return absolute(source);
  // GGUF bytes travel as they are (structured clone copies them into the worker).
  if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) return source;
  const { config, weights, tokenizer } = source ?? {};
  return { config: absolute(config), weights: absolute(weights), tokenizer: absolute(tokenizer) };
}

export class WorkerEngine {
  #worker;
  #next = 1;
  #handlers = new Map();
  #info = null;
  #stats = null;

  constructor(worker) {
    this.#worker = worker;
    worker.onmessage = ({ data }) => this.#handlers.get(data.id)?.(data);
    worker.onerror = (ev) => {
      const err = new DiffAttnError(`the diffattn worker failed: ${ev.message ?? 'script error'}`, 'Worker');
      for (const h of this.#handlers.values()) h({ error: { message: err.message, name: 'DiffAttnError', kind: 'Worker' } });
    };
  }

  /**
   * Starts a worker and loads the model in it; arguments as Engine.load, plus `workerUrl`: the
   * module worker script (`diffattn/worker-entry`) for bundlers that do not rewrite
   * `new Worker(new URL(..., import.meta.url))`.
   */
  static async load(source, { onProgress, signal, onCacheError, workerUrl, wasmUrl, ...options } = {}) {
    // The literal `new Worker(new URL(...))` form is what Vite and webpack recognise and bundle.
    const worker = workerUrl
      ? new Worker(absolute(workerUrl), { type: 'module' })
      : new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    const engine = new WorkerEngine(worker);
    if (wasmUrl) options.wasmUrl = absolute(wasmUrl);
    try {
      engine.#info = await engine.#request({ op: 'load', source: absoluteSource(source), options }, { onProgress, signal, onCacheError });
    } catch (e) {
      worker.terminate();
      throw e;
    }
    return engine;
  }

  #send(msg, onMessage) {
    const id = this.#next++;
    this.#handlers.set(id, onMessage);
    this.#worker.postMessage({ id, ...msg });
    return id;
  }

  #request(msg, { onProgress, signal, onCacheError } = {}) {
    return new Promise((resolve, reject) => {
      const id = this.#send(msg, (m) => {
        if (m.progress) return onProgress?.(m.progress);
        if (m.cacheError) {
          const e = rebuild(m.cacheError);
          return onCacheError ? onCacheError(e) : console.warn(e.message);
        }
        this.#handlers.delete(id);
        if (m.error) reject(rebuild(m.error));
        else resolve(m.result);
      });
      signal?.addEventListener('abort', () => this.#send({ op: 'abort', target: id }, () => {}), { once: true });
    });
  }

  /** The browser model cache; the page and the worker share it (the `modelCache` export). */
  static get cache() {
    return modelCache;
  }

  /** The browser model cache (the same object as `WorkerEngine.cache`). */
  get cache() {
    return modelCache;
  }

  info() {
    return this.#info;
  }

  get stats() {
    return this.#stats;
  }

  encode(text) {
    return this.#request({ op: 'encode', text });
  }

  /** As Engine.generate; pieces are posted from the worker as they are produced. */
  generate(prompt, { signal, ...options } = {}) {
    return this.#stream({ op: 'generate', prompt, options }, signal);
  }

  /**
   * As Engine.chat: the conversation's KV cache lives in the worker's engine, so a next turn
   * prefills only its new tokens there too.
   */
  chat(messages, { signal, ...options } = {}) {
    return this.#stream({ op: 'chat', messages, options }, signal);
  }

  async *#stream(msg, signal) {
    signal?.throwIfAborted();
    const queue = [];
    let wake = null;
    let end = null;
    const id = this.#send(msg, (m) => {
      if (m.piece) queue.push(m.piece);
      else end = m;
      wake?.();
      wake = null;
    });
    const abort = () => this.#send({ op: 'abort', target: id }, () => {});
    signal?.addEventListener('abort', abort, { once: true });
    try {
      for (;;) {
        signal?.throwIfAborted();
        if (queue.length) {
          yield queue.shift();
          continue;
        }
        if (end) break;
        await new Promise((r) => (wake = r));
      }
      if (end.error) throw rebuild(end.error);
      this.#stats = end.result;
    } finally {
      if (!end) {
        // Left early: stop the worker's loop and wait for it, so the next call finds it idle.
        abort();
        await new Promise((r) => {
          const check = () => (end ? r() : (wake = check));
          check();
        });
        this.#stats = end.result ?? this.#stats;
      }
      this.#handlers.delete(id);
      signal?.removeEventListener('abort', abort);
    }
  }

  /** As Engine.attentionMaps, but returns a Promise. */
  attentionMaps(prompt, options = {}) {
    return this.#request({ op: 'maps', prompt, options });
  }

  diffAttention(args) {
    return this.#request({ op: 'diffAttention', args });
  }

  gpuInfo() {
    return this.#request({ op: 'gpuInfo' });
  }

  /** Stops the worker (and frees its GPU memory). */
  terminate() {
    this.#worker.terminate();
  }
}
