import type { ModelSource, LoadOptions, EngineInfo, GenerateOptions, Piece, GenerationStats, AttentionMaps, DiffAttentionArgs, GpuInfo } from './index.js';

/** The Engine API with the engine in a module Web Worker (decoding off the main thread). */
export class WorkerEngine {
  static load(source: ModelSource, options?: LoadOptions): Promise<WorkerEngine>;
  info(): EngineInfo;
  readonly stats: GenerationStats | null;
  encode(text: string): Promise<number[]>;
  generate(prompt: string, options?: GenerateOptions): AsyncGenerator<Piece, void, undefined>;
  attentionMaps(prompt: string, options?: { layer?: number; head?: number }): Promise<AttentionMaps>;
  diffAttention(args: DiffAttentionArgs): Promise<Float32Array>;
  gpuInfo(): Promise<GpuInfo>;
  terminate(): void;
}
