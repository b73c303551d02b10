// The package's core: wasm loading, the WebGPU check, errors and the kernel API. pkg/ holds the
// generated wasm-bindgen glue this wraps; index.js is the public entry.
import initWasm, * as raw from '../pkg/diffattn.js';

/** Errors from this package: `kind` names the cause (the Rust error variant, or NoWebGPU, Busy). */
export class DiffAttnError extends Error {
  constructor(message, kind) {
    super(message);
    this.name = 'DiffAttnError';
    this.kind = kind;
  }
}

// Errors thrown by the wasm side are plain JS Errors named DiffAttnError with a `kind`; give them
// the class too, so that `instanceof DiffAttnError` holds whichever side threw.
function adopt(e) {
  if (e instanceof Error && e.name === 'DiffAttnError' && !(e instanceof DiffAttnError)) {
    Object.setPrototypeOf(e, DiffAttnError.prototype);
  }
  if (e instanceof WebAssembly.RuntimeError) {
    return new DiffAttnError(`internal error in the wasm module (${e.message}); reload the page`, 'Panic');
  }
  return e;
}

async function call(f) {
  try {
    return await f();
  } catch (e) {
    throw adopt(e);
  }
}

const ENABLE_HINT =
  'Use a browser with WebGPU enabled (Chrome or Edge 113+, Safari 26+, Firefox 141+) on a page served ' +
  'over https or from localhost. In Chromium on Linux, or where the GPU is blocklisted, start it with ' +
  '--enable-unsafe-webgpu (or turn on chrome://flags/#enable-unsafe-webgpu).';

// The adapter request is bounded in time: a page must show an error, never hang, when a browser
// offers WebGPU but cannot deliver an adapter.
const ADAPTER_TIMEOUT_MS = 15000;

let webgpuChecked = null;
let browserAdapter = null;

/** What the browser says about its adapter (wgpu's view of it on the web has no name). */
export function browserAdapterInfo() {
  return browserAdapter;
}

/**
 * Checks that WebGPU can give us an adapter; throws a DiffAttnError of kind `NoWebGPU` saying what
 * to enable when it cannot.
 */
export function checkWebGPU() {
  webgpuChecked ??= (async () => {
    const gpu = globalThis.navigator?.gpu;
    if (!gpu) {
      throw new DiffAttnError(`WebGPU is not available in this browser (navigator.gpu is missing). ${ENABLE_HINT}`, 'NoWebGPU');
    }
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => resolve('timeout'), ADAPTER_TIMEOUT_MS);
    });
    let adapter;
    try {
      adapter = await Promise.race([gpu.requestAdapter({ powerPreference: 'high-performance' }), timeout]);
    } catch (e) {
      throw new DiffAttnError(`WebGPU is not available: requestAdapter() failed (${e.message}). ${ENABLE_HINT}`, 'NoWebGPU');
    } finally {
      clearTimeout(timer);
    }
    if (adapter === 'timeout') {
      throw new DiffAttnError(`WebGPU is not available: no adapter within ${ADAPTER_TIMEOUT_MS / 1000} s. ${ENABLE_HINT}`, 'NoWebGPU');
    }
    if (!adapter) {
      throw new DiffAttnError(
        `WebGPU is not available: the browser has WebGPU but offers no GPU adapter (the GPU or its driver is blocklisted, or WebGPU is disabled). ${ENABLE_HINT}`,
        'NoWebGPU',
      );
    }
    const i = adapter.info ?? {};
    browserAdapter = {
      vendor: i.vendor ?? '',
      architecture: i.architecture ?? '',
      device: i.device ?? '',
      description: i.description ?? '',
      isFallbackAdapter: Boolean(i.isFallbackAdapter ?? adapter.isFallbackAdapter),
      features: [...adapter.features].sort(),
    };
  })();
  // A failed check is retried next time: the user may have changed a setting.
  webgpuChecked.catch(() => {
    webgpuChecked = null;
  });
  return webgpuChecked;
}

let wasmReady = null;

/**
 * Loads the wasm module (once). Optional: every API function calls it. `wasm` overrides where the
 * .wasm file is fetched from (default: next to the glue, in this package's pkg/).
 */
export async function init({ wasm } = {}) {
  wasmReady ??= initWasm(wasm ? { module_or_path: wasm } : undefined);
  try {
    await wasmReady;
  } catch (e) {
    wasmReady = null;
    throw e;
  }
}

// `wasm`: where to fetch the .wasm from, for bundlers that do not rewrite the glue's
// `new URL('diffattn_bg.wasm', import.meta.url)`; the first load decides.
async function ready(wasm) {
  await checkWebGPU();
  await init({ wasm });
}

/** The adapter, its features and limits, as the Rust side sees them. */
export async function gpuInfo() {
  await ready();
  return withBrowserAdapter(await call(() => raw.gpuInfo()));
}

/** Adds the browser's adapter description to the Rust side's GPU info. */
export function withBrowserAdapter(g) {
  const b = browserAdapter;
  if (!b) return g;
  const name = [b.vendor, b.architecture, b.device, b.description].filter(Boolean).join(' ');
  const fallback = b.isFallbackAdapter ? ', fallback adapter' : '';
  return { ...g, adapter: g.adapter || name, browser: b, description: `${g.adapter || name || 'unnamed adapter'} (WebGPU${fallback}, ${g.deviceType})` };
}

function f32(name, a, optional = false) {
  if (a === undefined || a === null) {
    if (optional) return new Float32Array(0);
    throw new DiffAttnError(`diffAttention: \`${name}\` is required (a Float32Array)`, 'Shape');
  }
  if (!(a instanceof Float32Array)) {
    throw new DiffAttnError(`diffAttention: \`${name}\` must be a Float32Array`, 'Shape');
  }
  return a;
}

function u32(name, x, dflt) {
  const v = x ?? dflt;
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new DiffAttnError(`diffAttention: \`${name}\` must be a non-negative integer (got ${x})`, 'Config');
  }
  return v;
}

/**
 * One DIFF V2 attention call, in the Rust API's token-major layouts:
 * q (N, 2h, d) (or (N, h, d) with mode 'standard'), k and v (S, h_kv, d), lam (N, h) pre-sigmoid;
 * returns out (N, h, d) as a Float32Array. With `causal`, query row n sits at position pastLen + n.
 */
export async function diffAttention({ q, k, v, lam, heads, kvHeads, headDim, causal = false, pastLen = 0, mode = 'diff', scale } = {}) {
  if (mode !== 'diff' && mode !== 'standard') {
    throw new DiffAttnError(`diffAttention: mode must be 'diff' or 'standard' (got ${mode})`, 'Config');
  }
  if (scale !== undefined) {
    throw new DiffAttnError('diffAttention: a custom scale is not supported from JS (1/sqrt(headDim) is used)', 'Unsupported');
  }
  const standard = mode === 'standard';
  const args = [
    f32('q', q), f32('k', k), f32('v', v), f32('lam', lam, standard),
    u32('heads', heads), u32('kvHeads', kvHeads ?? heads), u32('headDim', headDim),
    Boolean(causal), u32('pastLen', pastLen, 0), standard,
  ];
  await ready();
  return call(() => raw.diffAttentionRaw(...args));
}

export { raw, ready, call, adopt };
