// A small app as a user of the npm package writes it: the package imported by name, bundled by
// Vite. The test drives it through window.app.
import { Engine, modelCache, DiffAttnError, type LoadProgress, type CachedFile } from 'diffattn';
import { WorkerEngine } from 'diffattn/worker';

const MODEL = '/models/diffv2-small/';

export type Mode = 'main' | 'worker' | 'explicit-main' | 'explicit-worker';

export interface RunResult {
  ids: number[];
  loadMs: number;
  cachedBytes: number;
  downloadedBytes: number;
  cacheErrors: { kind: string; message: string }[];
  error: { kind: string | null; message: string } | null;
}

async function run(mode: Mode, prompt: string, maxTokens: number, model: string = MODEL): Promise<RunResult> {
  const out: RunResult = { ids: [], loadMs: 0, cachedBytes: 0, downloadedBytes: 0, cacheErrors: [], error: null };
  let last = 0;
  const onProgress = (p: LoadProgress) => {
    if (p.phase !== 'download') return;
    // Progress is cumulative over the files: attribute each step to where its bytes came from.
    const step = p.loaded - last;
    last = p.loaded;
    if (p.fromCache) out.cachedBytes += step;
    else out.downloadedBytes += step;
  };
  const onCacheError = (e: DiffAttnError) => out.cacheErrors.push({ kind: e.kind, message: e.message });
  // The explicit URLs are what an app bundled by a tool that leaves `new URL(..., import.meta.url)`
  // alone passes: files it copied to its own static folder.
  const wasmUrl = '/custom/engine.wasm';
  const t0 = performance.now();
  try {
    const engine =
      mode === 'main'
        ? await Engine.load(model, { onProgress, onCacheError })
        : mode === 'worker'
          ? await WorkerEngine.load(model, { onProgress, onCacheError })
          : mode === 'explicit-main'
            ? await Engine.load(model, { onProgress, onCacheError, wasmUrl })
            : await WorkerEngine.load(model, { onProgress, onCacheError, wasmUrl, workerUrl: '/vendor/diffattn/src/worker.js' });
    out.loadMs = performance.now() - t0;
    for await (const piece of engine.generate(prompt, { maxTokens, temperature: 0, repeatPenalty: 1.1, seed: 1 })) out.ids.push(piece.id);
    if (engine instanceof WorkerEngine) engine.terminate();
    else engine.dispose();
  } catch (e) {
    const err = e as Error;
    out.error = { kind: e instanceof DiffAttnError ? e.kind : null, message: err.message };
  }
  return out;
}

async function list(): Promise<CachedFile[]> {
  return modelCache.list();
}

declare global {
  interface Window {
    app: { run: typeof run; list: typeof list; cache: typeof modelCache; sameCache: boolean };
  }
}

window.app = { run, list, cache: modelCache, sameCache: Engine.cache === modelCache && WorkerEngine.cache === modelCache };
document.getElementById('state')!.textContent = 'ready';
