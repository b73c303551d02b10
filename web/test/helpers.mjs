// Shared by the browser tests: the demo server, Chromium, the native CLI and safetensors files.
import { before, after } from 'node:test';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { start } from '../../www/serve.mjs';

export const webDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const rootDir = resolve(webDir, '..');
export const artefacts = join(webDir, 'test-results');
mkdirSync(artefacts, { recursive: true });

// Mesa warns on every start without a private runtime dir (mkdtemp makes it 0700).
process.env.XDG_RUNTIME_DIR ??= mkdtempSync(join(tmpdir(), 'diffattn-xdg-'));

export function tmp() {
  return mkdtempSync(join(tmpdir(), 'diffattn-web-'));
}

export async function server() {
  return start({ port: 0 });
}

// Chromium blocklists CPU adapters: --enable-unsafe-webgpu is what makes SwiftShader available.
// Without the background-networking flags Chromium keeps dialling out on a closed network.
export async function browser({ webgpu = true } = {}) {
  const args = ['--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];
  if (webgpu) args.push('--enable-unsafe-webgpu');
  return chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, args });
}

/**
 * A page with console errors collected (and echoed when DEBUG is set); `initScript` (a function)
 * runs in the page before any of its own scripts.
 */
export async function open(b, url, initScript) {
  const page = await b.newPage();
  if (initScript) await page.addInitScript(initScript);
  const log = [];
  page.on('console', (m) => {
    log.push(`${m.type()}: ${m.text()}`);
    if (process.env.DEBUG) console.log(`[page] ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
  page.log = log;
  await page.goto(url);
  return page;
}

/** Waits until the page's state is one of `states` (or 'error', which fails with its message). */
export async function waitState(page, states, timeout = 240_000) {
  await page.waitForFunction((s) => s.includes(window.__diffattn?.state) || window.__diffattn?.state === 'error', states, { timeout, polling: 100 });
  const st = await page.evaluate(() => window.__diffattn);
  if (st.state === 'error' && !states.includes('error')) throw new Error(`page error: ${st.error}\n${page.log.join('\n')}`);
  return st;
}

// The native CLI: DIFFATTN_BIN when set, else `cargo run` (the debug build `cargo test` made).
export function native(args) {
  const bin = process.env.DIFFATTN_BIN;
  const [cmd, full] = bin ? [bin, args] : ['cargo', ['run', '--quiet', '--bin', 'diffattn', '--', ...args]];
  return execFileSync(cmd, full, { cwd: rootDir, encoding: 'utf8', maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'inherit'] });
}

/** The token objects (`{id, text, logprob, margin?, top?}`) of the native CLI's `generate --json` output. */
export function nativeTokens(out) {
  return out
    .split('\n')
    .filter((l) => l.trim().startsWith('{'))
    .map((l) => JSON.parse(l))
    .filter((o) => Number.isInteger(o.id));
}

// The native CLI's greedy ids for the shipped model, with the settings the browser tests use
// (temperature 0 with the explicit penalty of 1.1, seed 1): the ids every browser path must match.
export function nativeGreedyIds(prompt, n) {
  const out = native([
    'generate', '--model', 'models/diffv2-small', '--prompt', prompt, '--max-tokens', String(n), '--json',
    '--temperature', '0', '--repeat-penalty', '1.1', '--seed', '1',
  ]);
  return nativeTokens(out).map((o) => o.id);
}

/**
 * Plain greedy decoding (no penalty, past EOS) of `n` tokens by the native CLI for `model` (a
 * directory or a .gguf path): `[{id, margin}]`, margin being the gap between the step's two
 * largest logits (null where there is none), which says where another engine may pick otherwise.
 */
export function nativeGreedyMargins(model, prompt, n, { context = 512 } = {}) {
  const out = native([
    'generate', '--model', model, '--prompt', prompt, '--max-tokens', String(n), '--json', '--margins',
    '--temperature', '0', '--repeat-penalty', '1', '--ignore-eos', '--context', String(context),
  ]);
  return nativeTokens(out).map(({ id, margin }) => ({ id, margin }));
}

export function writeSafetensors(path, tensors) {
  const header = {};
  let offset = 0;
  for (const [name, { shape, data }] of Object.entries(tensors)) {
    header[name] = { dtype: 'F32', shape, data_offsets: [offset, offset + data.byteLength] };
    offset += data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const buf = Buffer.alloc(8 + json.length + offset);
  buf.writeBigUInt64LE(BigInt(json.length), 0);
  buf.write(json, 8, 'utf8');
  let at = 8 + json.length;
  for (const { data } of Object.values(tensors)) {
    Buffer.from(data.buffer, data.byteOffset, data.byteLength).copy(buf, at);
    at += data.byteLength;
  }
  writeFileSync(path, buf);
}

export function readSafetensors(path) {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [a, b] = t.data_offsets;
    const bytes = buf.subarray(8 + n + a, 8 + n + b);
    const copy = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    // F32, or F64 (what `diffattn attn --reference` writes).
    const Type = { F32: Float32Array, F64: Float64Array }[t.dtype];
    if (!Type) throw new Error(`${path}: tensor ${name} is ${t.dtype}; expected F32 or F64`);
    out[name] = { shape: t.shape, dtype: t.dtype, data: new Type(copy) };
  }
  return out;
}

/** Seeded uniform values in [-1, 1): mulberry32. */
export function random(seed, n) {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 0) / 2 ** 31 - 1;
  }
  return out;
}

export function relL2(got, want) {
  let num = 0;
  let den = 0;
  for (let i = 0; i < want.length; i++) {
    const d = got[i] - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  return Math.sqrt(num / den);
}

// Hooks that start the demo server and a browser and open the page with no model loaded, for a
// test file's tests to share: `fixture.page` is set once the page is ready. With `enabled` false
// (a test file whose input is missing) nothing starts; `initScript` as for open().
// `fixture.browser` and `fixture.url` (the server's) open further pages; a file's own `before`
// hook awaits `fixture.ready()` first (the runner does not order root hooks after one another).
export function demoPage({ enabled = true, initScript } = {}) {
  let started = null;
  const fixture = { page: null, browser: null, url: null, ready: () => (started ??= start()) };
  let srv, b;
  const start = async () => {
    srv = await server();
    b = await browser();
    Object.assign(fixture, { browser: b, url: srv.url });
    fixture.page = await open(b, `${srv.url}?model=none`, initScript);
    await waitState(fixture.page, ['ready']);
  };
  before(async () => {
    if (enabled) await fixture.ready();
  });
  after(async () => {
    await b?.close();
    srv?.server.close();
  });
  return fixture;
}
