// Browser speed, a benchmark and not a test: SmolLM2-135M-Instruct (the real Q4_1 GGUF) in one
// headless Chromium, diffattn on WebGPU (SwiftShader where there is no GPU) beside @wllama/wllama
// (llama.cpp compiled to WASM, on the CPU; pinned in package.json) with 1 and 2 threads, on the
// same file, prompt and token count. Prefill and decode tokens per second, the median of R runs
// after one warm-up run, as JSON lines on stdout.
//
//   cd web && npm run -s build && node bench/browser.mjs [--prompt-tokens 64] [--tokens 64]
//       [--repeats 3] [--threads 1,2] [--wllama-webgpu] [--log]
//
// The model comes from target/models/, where `cargo test --test gguf` (or bench/cpu.sh) puts it.
// The page is served cross-origin isolated (COOP/COEP), without which wllama cannot run threads.
// diffattn's prefill rate is the prompt's tokens over the time to the first token (the prefill
// and the first pick); wllama's are llama.cpp's own timings (prompt and predicted per second).
// `--wllama-webgpu` adds a row of wllama on its WebGPU backend (the same SwiftShader adapter);
// `--log` echoes llama.cpp's lines on backends and offloaded layers to stderr.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { rootDir, webDir, browser, open, waitState } from '../test/helpers.mjs';
import { start } from '../../www/serve.mjs';

const FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const model = join(rootDir, 'target', 'models', FILE);
if (!existsSync(model)) {
  console.error(`${model} is missing: run \`cargo test --test gguf\` (or bench/cpu.sh) to fetch it`);
  process.exit(2);
}

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
}
const P = Number(arg('prompt-tokens', 64));
const N = Number(arg('tokens', 64));
const R = Number(arg('repeats', 3));
const THREADS = String(arg('threads', '1,2')).split(',').filter(Boolean).map(Number);
const WEBGPU = process.argv.includes('--wllama-webgpu');
// llama.cpp's own log lines about backends and offloading, to stderr (where its layers ran).
const LOG = process.argv.includes('--log');

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const wllamaDir = join(webDir, 'node_modules', '@wllama', 'wllama');
const wllamaVersion = JSON.parse(readFileSync(join(wllamaDir, 'package.json'), 'utf8')).version;
const srv = await start({ port: 0, isolated: true, mounts: [['/wllama/', join(wllamaDir, 'esm')]] });
const b = await browser();
const url = `/target-models/${FILE}`;
const rows = [];
try {
  const page = await open(b, `${srv.url}?model=none`);
  if (LOG) page.on('console', (m) => /offload|webgpu|backend|CPU_REPACK|buffer size/i.test(m.text()) && console.error(`[wllama] ${m.text()}`));
  await waitState(page, ['ready']);
  const isolated = await page.evaluate(() => globalThis.crossOriginIsolated);
  const chromium = b.version();

  // A prompt of exactly P tokens for diffattn's tokenizer (the same ids llama.cpp's gives for
  // this file, tests/gguf.rs): words repeated until long enough, then cut at a token boundary.
  const d = await page.evaluate(
    async ({ url, P, N, R }) => {
      const { Engine } = window.diffattn;
      const engine = await Engine.load(url, { context: 512, cache: false });
      const base = 'The quick brown fox jumps over the lazy dog while the farmer counts his sheep in the field. ';
      let text = base;
      while (engine.encode(text).length < P + 8) text += base;
      let words = text.split(' ');
      while (engine.encode(words.join(' ')).length > P) words = words.slice(0, -1);
      const prompt = words.join(' ');
      const run = async (n) => {
        for await (const _ of engine.generate(prompt, { temperature: 0, maxTokens: n, stopAtEos: false }));
        return engine.stats;
      };
      await run(4);
      const runs = [];
      for (let i = 0; i < R; i++) runs.push(await run(N));
      const info = engine.info();
      engine.dispose();
      return { prompt, promptTokens: runs[0].promptTokens, runs, adapter: info.gpu.description, path: info.path };
    },
    { url, P, N, R },
  );
  rows.push({
    engine: 'diffattn',
    backend: `WebGPU (${d.adapter})`,
    prompt_tokens: d.promptTokens,
    tokens: N,
    prefill_tok_s: median(d.runs.map((s) => s.promptTokens / (s.firstTokenMs / 1000))),
    decode_tok_s: median(d.runs.map((s) => s.decodeTokensPerSecond)),
    first_token_ms: median(d.runs.map((s) => s.firstTokenMs)),
    path: d.path,
    chromium,
  });
  console.log(JSON.stringify(rows.at(-1)));

  const configs = THREADS.map((t) => ({ threads: t, webgpu: false }));
  if (WEBGPU) configs.push({ threads: 1, webgpu: true });
  for (const { threads, webgpu } of configs) {
    const w = await page.evaluate(
      async ({ url, prompt, N, R, threads, webgpu, log }) => {
        const { Wllama } = await import('/wllama/index.js');
        const wllama = new Wllama({ default: '/wllama/wasm/wllama.wasm' }, { suppressNativeLog: !log });
        const blob = await (await fetch(url)).blob();
        await wllama.loadModel([blob], { n_ctx: 512, n_threads: threads, ...(webgpu ? {} : { n_gpu_layers: 0 }) });
        const run = async (n) =>
          (await wllama.createCompletion({ prompt, max_tokens: n, temp: 0, ignore_eos: true, cache_prompt: false })).timings;
        await run(4);
        const runs = [];
        for (let i = 0; i < R; i++) runs.push(await run(N));
        const multi = wllama.isMultithread?.() ?? null;
        const used = wllama.getNumThreads?.() ?? null;
        await wllama.exit();
        return { runs, multi, used };
      },
      { url, prompt: d.prompt, N, R, threads, webgpu, log: LOG },
    );
    rows.push({
      engine: `wllama ${wllamaVersion}`,
      backend: webgpu ? `WebGPU (${d.adapter})` : `WASM CPU, ${w.used ?? threads} thread(s)${w.multi === false && threads > 1 ? ' (threads unavailable)' : ''}`,
      prompt_tokens: w.runs[0].prompt_n,
      tokens: w.runs[0].predicted_n,
      prefill_tok_s: median(w.runs.map((t) => t.prompt_per_second)),
      decode_tok_s: median(w.runs.map((t) => t.predicted_per_second)),
      first_token_ms: median(w.runs.map((t) => t.prompt_ms)),
      cross_origin_isolated: isolated,
      chromium,
    });
    console.log(JSON.stringify(rows.at(-1)));
  }
} finally {
  await b.close();
  srv.server.close();
}
