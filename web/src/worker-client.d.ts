import type { ModelSource, LoadOptions, EngineInfo, GenerateOptions, Piece, GenerationStats, ChatMessage, AttentionMaps, DiffAttentionArgs, GpuInfo, ModelCache } from './index.js';

export interface WorkerLoadOptions extends LoadOptions {
  /** The module worker script, `diffattn/worker-entry` as the app serves it, for bundlers that do
   * not rewrite `new Worker(new URL('./worker.js', import.meta.url))`. */
  workerUrl?: string | URL;
}

/** The Engine API with the engine in a module Web Worker (decoding off the main thread). */
export class WorkerEngine {
  static load(source: ModelSource, options?: WorkerLoadOptions): Promise<WorkerEngine>;
  /** The same object as `modelCache`: the page and the worker share the cache. */
  static readonly cache: ModelCache;
  readonly cache: ModelCache;
  info(): EngineInfo;
  readonly stats: GenerationStats | null;
  encode(text: string): Promise<number[]>;
  generate(prompt: string, options?: GenerateOptions): AsyncGenerator<Piece, void, undefined>;
  /** As `Engine.chat`, in the worker; the conversation's KV cache is kept there between turns. */
  chat(messages: ChatMessage[], options?: GenerateOptions): AsyncGenerator<Piece, void, undefined>;
  attentionMaps(prompt: string, options?: { layer?: number; head?: number }): Promise<AttentionMaps>;
  diffAttention(args: DiffAttentionArgs): Promise<Float32Array>;
  gpuInfo(): Promise<GpuInfo>;
  terminate(): void;
}
