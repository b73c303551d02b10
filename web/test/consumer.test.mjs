// The package as a user gets it: `npm pack`, installed from the tarball into a fresh project,
// type-checked with tsc against its .d.ts, bundled by Vite, served from 127.0.0.1 and run in
// headless Chromium: greedy ids equal the native CLI's, on the main thread, in the worker entry and
// with explicit wasmUrl/workerUrl; the browser model cache (second load from disk, corrupted and
// partial entries refetched, a truncated download never kept, quota errors reported).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, createReadStream, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join, normalize, sep } from 'node:path';
import { build } from 'vite';
import { browser, nativeGreedyIds, rootDir, tmp, webDir } from './helpers.mjs';

const PROMPT = 'Once upon a time, there was a little girl named Lily. She';
const N = 24;
const SHORT = 8;
const MODEL_DIR = join(rootDir, 'models', 'diffv2-small');
const SHARD1 = 'model-00001-of-00002.safetensors';
const SHARD2 = 'model-00002-of-00002.safetensors';

let project, dist, srv, b, nativeIds, pack;
const requests = [];
// Test hooks of the server: files under /nomanifest/ whose body is cut short.
const truncate = new Set();

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.json': 'application/json' };

// The app's static server: dist/ at /, the shipped model at /models/diffv2-small/, and the same
// model without its manifest at /nomanifest/ (the path of a model that has none). No caching
// headers a browser could reuse: every load the page does not take from its own cache is a request.
function serve() {
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    let file = null;
    let name = null;
    if (path.startsWith('/models/diffv2-small/')) file = join(MODEL_DIR, (name = path.slice(21)));
    else if (path.startsWith('/nomanifest/')) {
      name = path.slice(12);
      if (name !== 'manifest.json') file = join(MODEL_DIR, name);
    } else file = join(dist, path === '/' ? 'index.html' : path.slice(1));
    const safe = file && normalize(file) === file && (file.startsWith(MODEL_DIR + sep) || file.startsWith(dist + sep));
    let st = null;
    try {
      st = safe ? statSync(file) : null;
    } catch {
      st = null;
    }
    requests.push({ path, status: st?.isFile() ? 200 : 404 });
    if (!st?.isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      return res.end('not found\n');
    }
    res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'content-length': st.size, 'cache-control': 'no-store' });
    if (path.startsWith('/nomanifest/') && truncate.has(name)) {
      // Half the announced body, then the connection drops: what a flaky network delivers.
      const half = createReadStream(file, { end: Math.floor(st.size / 2) });
      half.on('end', () => res.destroy());
      half.pipe(res, { end: false });
      return;
    }
    createReadStream(file).pipe(res);
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok({ server, url: `http://127.0.0.1:${server.address().port}/` })));
}

function modelRequests(prefix = '/models/diffv2-small/') {
  return requests.filter((r) => r.path.startsWith(prefix)).map((r) => r.path.slice(prefix.length));
}

/** A fresh page of the built app in `context` (one context = one browser profile's storage). */
async function page(context) {
  const p = await context.newPage();
  p.log = [];
  p.on('console', (m) => {
    p.log.push(`${m.type()}: ${m.text()}`);
    if (process.env.DEBUG) console.log(`[page] ${m.type()}: ${m.text()}`);
  });
  p.on('pageerror', (e) => p.log.push(`pageerror: ${e.message}`));
  await p.goto(srv.url);
  await p.waitForFunction(() => window.app, null, { timeout: 60_000 });
  return p;
}

async function run(p, mode, maxTokens = SHORT, model) {
  const r = await p.evaluate(([m, prompt, n, dir]) => window.app.run(m, prompt, n, dir), [mode, PROMPT, maxTokens, model]);
  if (r.error) throw new Error(`${mode}: ${r.error.kind}: ${r.error.message}\n${p.log.join('\n')}`);
  assert.deepEqual(r.ids, nativeIds.slice(0, maxTokens), `${mode}: greedy ids`);
  return r;
}

const sha256 = (path) => createHash('sha256').update(readFileSync(path)).digest('hex');
// What load progress counts: the tokenizer and the weights (config and index are a few kB).
const modelBytes = [SHARD1, SHARD2, 'tokenizer.json'].reduce((n, f) => n + statSync(join(MODEL_DIR, f)).size, 0);

before(async () => {
  // pkg/ is built by `pretest`; packing again would rebuild it for nothing.
  const packDir = tmp();
  pack = JSON.parse(execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', packDir], { cwd: webDir, encoding: 'utf8' }))[0];
  const tarball = join(packDir, pack.filename);

  project = tmp();
  cpSync(join(webDir, 'test', 'consumer'), project, { recursive: true });
  writeFileSync(
    join(project, 'package.json'),
    JSON.stringify({ name: 'diffattn-consumer', private: true, type: 'module', dependencies: { diffattn: `file:${tarball}` } }, null, 2),
  );
  // The package has no dependencies: installing its tarball needs no registry.
  execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: project, stdio: 'inherit' });

  nativeIds = nativeGreedyIds(PROMPT, N);
  assert.equal(nativeIds.length, N);
});

after(async () => {
  await b?.close();
  srv?.server.close();
  if (project && !process.env.KEEP) rmSync(project, { recursive: true, force: true });
});

test('the tarball installs into a fresh project, type-checks with tsc and bundles with Vite', async () => {
  const installed = join(project, 'node_modules', 'diffattn');
  assert.ok(existsSync(join(installed, 'pkg', 'diffattn_bg.wasm')), 'the installed package has its wasm');
  assert.ok(!existsSync(join(installed, 'Cargo.toml')) && !existsSync(join(installed, 'test')));

  // tsc of web/'s pinned typescript, run in the app: it resolves `diffattn` through the installed
  // package's exports map, as an app's own tsc would.
  const tsc = join(webDir, 'node_modules', 'typescript', 'bin', 'tsc');
  try {
    execFileSync(process.execPath, [tsc, '--noEmit', '-p', 'tsconfig.json'], { cwd: project, encoding: 'utf8' });
  } catch (e) {
    assert.fail(`tsc --noEmit failed:\n${e.stdout}${e.stderr}`);
  }

  dist = join(project, 'dist');
  // Vite's defaults, as in an app with no vite.config.js.
  await build({ root: project, configFile: false, logLevel: 'warn', build: { outDir: dist, emptyOutDir: true } });
  const assets = readdirSync(join(dist, 'assets'));
  // Vite followed both `new URL(..., import.meta.url)`: the wasm is an asset and the worker a chunk.
  assert.ok(assets.some((f) => f.endsWith('.wasm')), `assets: ${assets}`);
  assert.ok(assets.some((f) => /^worker-.*\.js$/.test(f)), `assets: ${assets}`);

  // What an app bundled without that support serves instead: the package's files copied into
  // its static folder (no wasm beside the worker, so only an explicit wasmUrl can find it).
  const vendor = join(dist, 'vendor', 'diffattn');
  mkdirSync(join(vendor, 'pkg'), { recursive: true });
  cpSync(join(installed, 'src'), join(vendor, 'src'), { recursive: true });
  cpSync(join(installed, 'pkg', 'diffattn.js'), join(vendor, 'pkg', 'diffattn.js'));
  mkdirSync(join(dist, 'custom'));
  cpSync(join(installed, 'pkg', 'diffattn_bg.wasm'), join(dist, 'custom', 'engine.wasm'));

  srv = await serve();
  b = await browser();
  console.log(`# npm tarball: ${pack.size} bytes packed, ${pack.unpackedSize} unpacked`);
});

let profile;
let firstLoadMs;

test(`main thread: greedy ids equal the native CLI, and the first load fills the cache`, async () => {
  profile = await b.newContext();
  const p = await page(profile);
  requests.length = 0;
  const r = await run(p, 'main', N);
  const got = modelRequests().sort();
  assert.deepEqual(got, ['config.json', 'manifest.json', SHARD1, SHARD2, 'model.safetensors.index.json', 'tokenizer.json']);
  assert.equal(r.cachedBytes, 0);
  assert.equal(r.downloadedBytes, modelBytes);
  const listed = await p.evaluate(() => window.app.list());
  const manifest = JSON.parse(readFileSync(join(MODEL_DIR, 'manifest.json'), 'utf8')).files;
  assert.equal(listed.length, 5);
  for (const f of listed) {
    const name = new URL(f.url).pathname.split('/').pop();
    assert.equal(f.verifiedBy, 'manifest', name);
    assert.equal(f.size, statSync(join(MODEL_DIR, name)).size, name);
    assert.equal(f.sha256, manifest[name].sha256, name);
  }
  assert.ok(await p.evaluate(() => window.app.sameCache));
  firstLoadMs = r.loadMs;
  await p.close();
});

test('second load, through the worker entry, reads no model bytes from the network', async () => {
  const p = await page(profile);
  requests.length = 0;
  const r = await run(p, 'worker', N);
  // Only the manifest is asked for (that is how a changed model would be noticed).
  assert.deepEqual(modelRequests(), ['manifest.json']);
  assert.equal(r.downloadedBytes, 0);
  assert.equal(r.cachedBytes, modelBytes);
  console.log(`# model load: first ${firstLoadMs.toFixed(0)} ms (network), second ${r.loadMs.toFixed(0)} ms (browser cache, verified by SHA-256), ${modelBytes} bytes`);
  await p.close();
});

test('explicit wasmUrl and workerUrl are the files fetched', async () => {
  for (const mode of ['explicit-worker', 'explicit-main']) {
    const p = await page(profile);
    requests.length = 0;
    await run(p, mode);
    const paths = requests.map((q) => q.path);
    assert.ok(paths.includes('/custom/engine.wasm'), `${mode}: ${paths}`);
    assert.ok(!paths.some((q) => q.startsWith('/assets/') && q.endsWith('.wasm')), `${mode} fetched the bundled wasm: ${paths}`);
    if (mode === 'explicit-worker') {
      assert.ok(paths.includes('/vendor/diffattn/src/worker.js'), paths.join(' '));
      assert.ok(!paths.some((q) => /^\/assets\/worker-/.test(q)), paths.join(' '));
    }
    await p.close();
  }
});

test('a corrupted or partial cache entry is detected by size and hash and fetched again', async () => {
  const p = await page(profile);
  await p.evaluate(async ([s2]) => {
    const data = await caches.open('diffattn-models-v1');
    const base = new URL('/models/diffv2-small/', location.href).href;
    // Same length, one flipped byte: only the hash can tell.
    const shard = new Uint8Array(await (await data.match(base + s2)).arrayBuffer());
    shard[shard.length >> 1] ^= 0x40;
    await data.put(base + s2, new Response(shard));
    // Cut short: the size tells.
    const tok = await (await data.match(base + 'tokenizer.json')).text();
    await data.put(base + 'tokenizer.json', new Response(tok.slice(0, 1000)));
  }, [SHARD2]);
  requests.length = 0;
  const r = await run(p, 'main');
  assert.deepEqual(modelRequests().sort(), ['manifest.json', SHARD2, 'tokenizer.json']);
  assert.equal(r.downloadedBytes, statSync(join(MODEL_DIR, SHARD2)).size + statSync(join(MODEL_DIR, 'tokenizer.json')).size);
  // The refetched copies replaced the bad ones: the next load is all cache again.
  requests.length = 0;
  const again = await run(p, 'main');
  assert.deepEqual(modelRequests(), ['manifest.json']);
  assert.equal(again.downloadedBytes, 0);
  console.log(`# model load on the main thread from the browser cache: ${again.loadMs.toFixed(0)} ms (first, from the network: ${firstLoadMs.toFixed(0)} ms)`);
  await p.close();
});

test('without a manifest: a truncated download is never stored, the hash of the first complete one is', async () => {
  const p = await page(profile);
  truncate.add(SHARD2);
  requests.length = 0;
  const failed = await p.evaluate(([prompt]) => window.app.run('main', prompt, 1, '/nomanifest/'), [PROMPT]);
  truncate.clear();
  assert.ok(failed.error, 'a truncated shard must fail the load');
  assert.equal(failed.error.kind, 'Io', failed.error.message);
  const listed = (await p.evaluate(() => window.app.list())).filter((f) => f.url.includes('/nomanifest/'));
  const names = listed.map((f) => new URL(f.url).pathname.split('/').pop());
  assert.ok(!names.includes(SHARD2), `the truncated shard was cached: ${names}`);
  // The files that did arrive whole are kept, with the hash computed as they arrived.
  for (const f of listed) {
    const name = new URL(f.url).pathname.split('/').pop();
    assert.equal(f.verifiedBy, 'download');
    assert.equal(f.sha256, sha256(join(MODEL_DIR, name)), name);
  }

  requests.length = 0;
  await run(p, 'main', SHORT, '/nomanifest/');
  assert.ok(modelRequests('/nomanifest/').includes(SHARD2));
  assert.ok(!modelRequests('/nomanifest/').includes(SHARD1), 'shard 1 was cached by the failed load');
  const s2 = (await p.evaluate(() => window.app.list())).find((f) => f.url.endsWith(`/nomanifest/${SHARD2}`));
  assert.equal(s2?.sha256, sha256(join(MODEL_DIR, SHARD2)));

  // The stored hash is what a later load checks: a corrupted copy is refetched.
  await p.evaluate(async ([s1]) => {
    const data = await caches.open('diffattn-models-v1');
    const url = new URL(`/nomanifest/${s1}`, location.href).href;
    const bytes = new Uint8Array(await (await data.match(url)).arrayBuffer());
    bytes[12345] ^= 1;
    await data.put(url, new Response(bytes));
  }, [SHARD1]);
  requests.length = 0;
  await run(p, 'main', SHORT, '/nomanifest/');
  assert.deepEqual(modelRequests('/nomanifest/').filter((n) => n.endsWith('.safetensors')), [SHARD1]);
  await p.close();
});

test('modelCache.delete and clear', async () => {
  const p = await page(profile);
  const r = await p.evaluate(async ([s1]) => {
    const before = (await window.app.list()).length;
    const one = await window.app.cache.delete(`/models/diffv2-small/${s1}`);
    const model = await window.app.cache.delete('/nomanifest/');
    const left = (await window.app.list()).length;
    await window.app.cache.clear();
    return { before, one, model, left, after: (await window.app.list()).length };
  }, [SHARD1]);
  assert.deepEqual(r, { before: 10, one: 1, model: 5, left: 4, after: 0 });
  await p.close();
});

test('a full storage quota is reported clearly and the model still loads', async () => {
  const context = await b.newContext();
  const p = await page(context);
  await p.evaluate(() => {
    Cache.prototype.put = function () {
      return Promise.reject(new DOMException('The quota has been exceeded.', 'QuotaExceededError'));
    };
  });
  const r = await run(p, 'main');
  assert.equal(r.downloadedBytes, modelBytes);
  assert.ok(r.cacheErrors.length >= 1);
  for (const e of r.cacheErrors) {
    assert.equal(e.kind, 'Quota');
    assert.match(e.message, /storage quota is exhausted: .+ was not cached.*The model still loads/);
  }
  assert.ok(r.cacheErrors.some((e) => e.message.includes(SHARD1)), r.cacheErrors.map((e) => e.message).join('\n'));
  assert.deepEqual(await p.evaluate(() => window.app.list()), []);
  await context.close();
});
