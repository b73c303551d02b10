// Types of the diffattn package (ES module).

/** Errors from this package. `kind` names the cause: a Rust error variant such as `Limit`,
 * `Shape`, `Config`, `Format`, `NotFound`, `Tokenizer`, `Model`, `OutOfMemory`, `DeviceLost`, or
 * `NoWebGPU`, `Busy`, `Io`, `Panic`, and from the model cache `Integrity` (a download that does not
 * match manifest.json), `Quota`, `Cache`, `Unsupported`. */
export class DiffAttnError extends Error {
  name: 'DiffAttnError';
  kind: string;
  constructor(message: string, kind: string);
}

/** Resolves when WebGPU gives an adapter; rejects with kind `NoWebGPU` saying what to enable. */
export function checkWebGPU(): Promise<void>;

/** Loads the wasm module once (every function calls it; call it to choose the .wasm URL). */
export function init(options?: { wasm?: string | URL | Response | BufferSource | WebAssembly.Module }): Promise<void>;

export interface GpuInfo {
  adapter: string;
  backend: string;
  deviceType: string;
  driver: string;
  description: string;
  features: { shaderF16: boolean; subgroups: boolean; timestampQuery: boolean };
  limits: {
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    maxComputeWorkgroupStorageSize: number;
    maxComputeInvocationsPerWorkgroup: number;
    maxComputeWorkgroupsPerDimension: number;
  };
  /** The browser's own description of the adapter (GPUAdapterInfo). */
  browser?: { vendor: string; architecture: string; device: string; description: string; isFallbackAdapter: boolean; features: string[] };
}

export function gpuInfo(): Promise<GpuInfo>;

export interface DiffAttentionArgs {
  /** (N, 2h, d) in 'diff' mode, (N, h, d) in 'standard' mode; N follows from the length. */
  q: Float32Array;
  /** (S, h_kv, d); S follows from the length. */
  k: Float32Array;
  /** (S, h_kv, d). */
  v: Float32Array;
  /** (N, h) pre-sigmoid lambda logits; not used in 'standard' mode. */
  lam?: Float32Array;
  /** Output heads h. */
  heads: number;
  /** KV heads h_kv (default: heads); heads must be a multiple. */
  kvHeads?: number;
  /** Head dim d: a multiple of 8 from 8 to 256. */
  headDim: number;
  /** Query row n sits at position pastLen + n and sees keys 0..=pastLen + n. */
  causal?: boolean;
  pastLen?: number;
  mode?: 'diff' | 'standard';
}

/** One attention call on the GPU; returns out (N, h, d). */
export function diffAttention(args: DiffAttentionArgs): Promise<Float32Array>;

export interface ModelConfig {
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  intermediate_size: number;
  rope_theta: number;
  rms_norm_eps: number;
  max_position_embeddings: number;
  tie_word_embeddings: boolean;
  attention: 'diff_v2' | 'standard';
  /** Which RoPE pairs the Q and K rows rotate: adjacent (2i, 2i + 1) or half-split (i, i + d/2,
   * Hugging Face Llama's; reordered at load). Required unless `architectures` names LlamaForCausalLM. */
  rope_pairs?: 'adjacent' | 'half';
  architectures?: string[];
  bos_token_id?: number | null;
  eos_token_id?: number | null;
}

export interface LoadProgress {
  phase: 'download' | 'upload';
  loaded: number;
  total: number;
  file: string | null;
  /** Whether these bytes came from the browser model cache (false for downloads and uploads). */
  fromCache: boolean;
}

type Url = string | URL;
type Bytes = ArrayBuffer | ArrayBufferView;

export type ModelSource =
  /** A model directory URL, or a URL whose path ends in `.gguf` (one GGUF file: config,
   * tokenizer and chat template come from its metadata). */
  | Url
  /** A GGUF file's bytes. */
  | Bytes
  | {
      config: Url | string | ModelConfig;
      /** One safetensors file, or shards, as URLs or bytes. */
      weights: Url | Bytes | Array<Url | Bytes>;
      /** tokenizer.json as a URL, its text, bytes or parsed object. */
      tokenizer: Url | string | Bytes | object;
    };

export interface LoadOptions {
  onProgress?: (p: LoadProgress) => void;
  signal?: AbortSignal;
  /** Keep fetched model files in the Cache API and load them from it next time (default true;
   * without effect where the Cache API is missing, e.g. outside a secure context). */
  cache?: boolean;
  /** Called when a file could not be cached (kind `Quota` when the storage quota is exhausted,
   * else `Cache`); the load goes on from the network. Default: console.warn of the message. */
  onCacheError?: (e: DiffAttnError) => void;
  /** Where to fetch diffattn_bg.wasm from, for bundlers that do not rewrite
   * `new URL('diffattn_bg.wasm', import.meta.url)` (esbuild, for one). The first load decides. */
  wasmUrl?: string | URL;
  /** KV cache storage (default 'f32'). */
  kvDtype?: 'f32' | 'f16';
  /** Context to allocate (default: max_position_embeddings). */
  context?: number;
  /** Keep a host copy of the weights for attentionMaps() (default false). */
  attentionMaps?: boolean;
}

export interface EngineInfo {
  gpu: GpuInfo;
  config: ModelConfig;
  context: number;
  /** Storage type of the embedding table (a GGUF file's matrices may differ among themselves). */
  weightDtype: 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q4_0' | 'q4_1' | 'q4_k' | 'q6_k';
  kvDtype: 'f32' | 'f16';
  /** The numeric path in use, e.g. "f16 weights unpacked in WGSL, f32 arithmetic, f32 KV cache". */
  path: string;
  attentionMaps: boolean;
}

export interface GenerateOptions {
  maxTokens?: number;
  /** 0 is greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  /** Default 1.1 when sampling, 1 (none) when temperature is 0. */
  repeatPenalty?: number;
  repeatLastN?: number;
  seed?: number;
  stop?: string[];
  stopAtEos?: boolean;
  /** Added to token logits before sampling (greedy included): token id -> bias, as an object, a
   * Map or [id, bias] pairs; -Infinity bans the token. Ids must lie in the vocabulary, finite
   * biases within 1e6 in magnitude. */
  logitBias?: Record<number, number> | Map<number, number> | Array<[number, number]>;
  /** List each piece's most likely alternatives (`Piece.top`), 0 (default) to 20. */
  topLogprobs?: number;
  /** Aborting stops generation at the next token; the iteration then throws the signal's reason. */
  signal?: AbortSignal;
}

export interface Piece {
  id: number;
  /** Text this token completes (may be empty while a character is incomplete). */
  text: string;
  index: number;
  /** Natural-log probability of the token under the model's own distribution (raw logits,
   * before bias, penalty, temperature or truncation). */
  logprob: number;
  /** With `topLogprobs`: the step's most likely tokens under the same distribution, most likely
   * first. */
  top?: Array<{ id: number; logprob: number }>;
}

export interface GenerationStats {
  promptTokens: number | null;
  generated: number;
  stopReason: 'eos' | 'stop_string' | 'max_tokens' | 'context_full' | 'cancelled' | 'error';
  firstTokenMs: number | null;
  decodeTokensPerSecond: number | null;
  totalMs: number;
  /** After `chat`: the positions the KV cache holds (the conversation so far); null after
   * `generate`. */
  contextTokens: number | null;
}

/** One message of a chat: an optional first `system` message, then `user` and `assistant` turns. */
export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface AttentionMaps {
  tokens: string[];
  ids: Uint32Array;
  /** (T, T) row-major: softmax of query head 2*head. */
  p1: Float32Array;
  /** (T, T): softmax of query head 2*head + 1. */
  p2: Float32Array;
  /** (T): sigmoid lambda per query token. */
  lambda: Float32Array;
  /** (T, T): p1 - lambda * p2. */
  diff: Float32Array;
}

/** One complete, verified file in the browser model cache. */
export interface CachedFile {
  url: string;
  size: number;
  sha256: string;
  /** 'manifest': checked against the model's manifest.json; 'download': hashed after the first
   * complete download (the model has no manifest). */
  verifiedBy: 'manifest' | 'download';
  /** ISO 8601 time it was stored. */
  storedAt: string;
}

/** The cached model files of this origin, shared by pages and workers. */
export interface ModelCache {
  list(): Promise<CachedFile[]>;
  /** Deletes a file (its URL) or a whole model (a directory URL ending in '/'); resolves to the
   * number of files removed. */
  delete(url: string | URL): Promise<number>;
  clear(): Promise<void>;
}

export const modelCache: ModelCache;

export class Engine {
  static load(source: ModelSource, options?: LoadOptions): Promise<Engine>;
  /** The same object as `modelCache`. */
  static readonly cache: ModelCache;
  readonly cache: ModelCache;
  info(): EngineInfo;
  readonly stats: GenerationStats | null;
  encode(text: string): number[];
  generate(prompt: string, options?: GenerateOptions): AsyncGenerator<Piece, void, undefined>;
  /** The assistant's reply to `messages` (the last one the user's) in the model's chat template,
   * streamed like `generate`. The KV cache of the conversation is kept between calls, so a turn
   * that passes the history back prefills only its new tokens (`stats.promptTokens`); history
   * that does not fit the context is dropped oldest turn first, the system message kept. Needs a
   * model with a chat template (GGUF files carry one). */
  chat(messages: ChatMessage[], options?: GenerateOptions): AsyncGenerator<Piece, void, undefined>;
  attentionMaps(prompt: string, options?: { layer?: number; head?: number }): AttentionMaps;
  dispose(): void;
}
