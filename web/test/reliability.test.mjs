// Reliability in the browser: a GPU device destroyed mid-generation gives the page a typed error and
// a reloaded engine works (on the main thread and in the worker); 200 aborted generations in a row leave the engine usable
// and its memory flat (wasm memory and the JS heap, read through the DevTools protocol).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { demoPage } from './helpers.mjs';

// Every device the page opens is kept where the test can destroy it, as a driver reset would.
const fixture = demoPage({
  initScript: () => {
    // What both lost-device tests run: five greedy tokens, and a promise's error as plain data.
    window.__lost = {
      greedy: async (engine) => {
        const ids = [];
        for await (const p of engine.generate('The cat', { maxTokens: 5, temperature: 0 })) ids.push(p.id);
        return ids;
      },
      failure: async (promise) => {
        try {
          await promise;
          return null;
        } catch (e) {
          return { name: e.name, kind: e.kind, message: e.message };
        }
      },
    };
    window.__devices = [];
    const request = GPUAdapter.prototype.requestDevice;
    GPUAdapter.prototype.requestDevice = async function (...args) {
      const device = await request.apply(this, args);
      window.__devices.push(device);
      return device;
    };
  },
});

const MODEL = '/models/diffv2-small/';
const ABORTS = 200;
const WARM_UP = 20;
// Bounds on growth from the end of the warm-up to the end of the aborts. Wasm memory only grows,
// so a leak of even 100 bytes per aborted generation would show as pages added; the JS heap is
// measured after a forced collection and may drift by what V8 and the page keep caching.
const WASM_GROWTH_MAX = 1 << 20;
const HEAP_GROWTH_MAX = 4 << 20;

test('a device destroyed mid-generation is a DeviceLost error, and a reloaded engine works', async () => {
  const r = await fixture.page.evaluate(async (MODEL) => {
    const { greedy, failure } = window.__lost;
    const engine = await window.diffattn.Engine.load(MODEL);
    const before = await greedy(engine);
    const device = window.__devices.at(-1);
    const it = engine.generate('Once upon a time', { maxTokens: 200, temperature: 0 });
    const pieces = [(await it.next()).value.id, (await it.next()).value.id];
    device.destroy();
    const lost = await failure((async () => {
      while (!(await it.next()).done) pieces.push('after');
    })());
    // The same engine keeps failing instead of hanging or answering from a dead device.
    const again = await failure(greedy(engine));
    engine.dispose();
    const reloaded = await window.diffattn.Engine.load(MODEL);
    const after = await greedy(reloaded);
    reloaded.dispose();
    return { before, after, pieces: pieces.length, lost, again, devices: window.__devices.length };
  }, MODEL);
  assert.ok(r.lost, 'generation went on after the device was destroyed');
  assert.equal(r.lost.name, 'DiffAttnError', r.lost.message);
  assert.equal(r.lost.kind, 'DeviceLost', r.lost.message);
  assert.match(r.lost.message, /^the GPU device was lost: /);
  assert.ok(r.again, 'the engine on the lost device generated again');
  assert.equal(r.again.kind, 'DeviceLost', r.again.message);
  assert.ok(r.devices >= 2, 'the reloaded engine did not open a new device');
  assert.equal(r.before.length, 5);
  assert.deepEqual(r.after, r.before, 'the reloaded engine gives other tokens');
});

test('in the worker, a device destroyed mid-generation is a DeviceLost error, and a new worker engine works', async () => {
  const r = await fixture.page.evaluate(async (MODEL) => {
    // The page's workers, so that the test can reach the one WorkerEngine starts.
    const workers = [];
    const PageWorker = window.Worker;
    window.Worker = class extends PageWorker {
      constructor(...args) {
        super(...args);
        workers.push(this);
      }
    };
    const { greedy, failure } = window.__lost;
    try {
      const { WorkerEngine } = window.diffattn;
      const workerUrl = '/node_modules/diffattn/test/fixtures/lost-device-worker.js';
      const engine = await WorkerEngine.load(MODEL, { workerUrl });
      const before = await greedy(engine);
      const it = engine.generate('Once upon a time', { maxTokens: 200, temperature: 0 });
      const pieces = [(await it.next()).value.id, (await it.next()).value.id];
      workers.at(-1).postMessage({ id: -1, op: 'destroyDevices' });
      const lost = await failure((async () => {
        while (!(await it.next()).done) pieces.push('after');
      })());
      const again = await failure(greedy(engine));
      engine.terminate();
      const reloaded = await WorkerEngine.load(MODEL);
      const after = await greedy(reloaded);
      reloaded.terminate();
      return { before, after, pieces: pieces.length, lost, again, workers: workers.length };
    } finally {
      window.Worker = PageWorker;
    }
  }, MODEL);
  assert.ok(r.lost, `generation went on after the device was destroyed (${r.pieces} pieces)`);
  assert.equal(r.lost.name, 'DiffAttnError', r.lost.message);
  assert.equal(r.lost.kind, 'DeviceLost', r.lost.message);
  assert.match(r.lost.message, /^the GPU device was lost: /);
  assert.ok(r.again, 'the worker engine on the lost device generated again');
  assert.equal(r.again.kind, 'DeviceLost', r.again.message);
  assert.equal(r.workers, 2);
  assert.equal(r.before.length, 5);
  assert.deepEqual(r.after, r.before, 'the new worker engine gives other tokens');
});

test(`${ABORTS} aborted generations leave the engine usable and its memory flat`, async (t) => {
  const { page } = fixture;
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('HeapProfiler.enable');
  const measure = async () => {
    await cdp.send('HeapProfiler.collectGarbage');
    const heap = await cdp.send('Runtime.getHeapUsage');
    const wasm = await page.evaluate(async () => {
      // The glue's init returns the instance's exports once loaded (it loads nothing again).
      const glue = await import('/node_modules/diffattn/pkg/diffattn.js');
      return (await glue.default()).memory.buffer.byteLength;
    });
    return { heap: heap.usedSize, wasm };
  };
  await page.evaluate(async (MODEL) => {
    window.__engine = await window.diffattn.Engine.load(MODEL);
    const ids = [];
    for await (const p of window.__engine.generate('The cat', { maxTokens: 4, temperature: 0 })) ids.push(p.id);
    window.__greedy = ids;
  }, MODEL);
  // Each run: a short prompt, one token, then an abort (two tokens at most, to keep the test short);
  // the iteration must end with the signal's AbortError.
  const aborts = (n, from) =>
    page.evaluate(
      async ({ n, from }) => {
        const engine = window.__engine;
        for (let i = from; i < from + n; i++) {
          const ac = new AbortController();
          const it = engine.generate(`Run ${i}`, { maxTokens: 2, signal: ac.signal, seed: i, temperature: 0.8 });
          await it.next();
          ac.abort();
          let ended = null;
          try {
            while (!(await it.next()).done);
          } catch (e) {
            ended = e.name;
          }
          if (ended !== 'AbortError') throw new Error(`run ${i}: ended with ${ended}, not an AbortError`);
          if (engine.stats.stopReason !== 'cancelled') throw new Error(`run ${i}: stop reason ${engine.stats.stopReason}`);
        }
      },
      { n, from },
    );
  await aborts(WARM_UP, 0);
  const warm = await measure();
  await aborts(ABORTS, WARM_UP);
  const end = await measure();
  const after = await page.evaluate(async () => {
    const ids = [];
    for await (const p of window.__engine.generate('The cat', { maxTokens: 4, temperature: 0 })) ids.push(p.id);
    window.__engine.dispose();
    return { ids, greedy: window.__greedy };
  });
  t.diagnostic(`after ${WARM_UP} warm-up runs: wasm ${warm.wasm} B, JS heap ${warm.heap} B; after ${ABORTS} more: wasm ${end.wasm} B, JS heap ${end.heap} B`);
  assert.deepEqual(after.ids, after.greedy, 'greedy tokens changed after the aborts');
  assert.ok(end.wasm - warm.wasm <= WASM_GROWTH_MAX, `wasm memory grew by ${end.wasm - warm.wasm} B`);
  assert.ok(end.heap - warm.heap <= HEAP_GROWTH_MAX, `JS heap grew by ${end.heap - warm.heap} B`);
});
